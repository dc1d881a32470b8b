//! Role policy (being written).
