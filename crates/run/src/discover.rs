//! TODO(i11-run)
