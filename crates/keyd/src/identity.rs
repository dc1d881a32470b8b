//! keyd's own attested TLS certificate, renewed before it expires: coffer-ratls's
//! [`ServerIdentity`], which `coffer kms serve --listen-tcp` presents too.

pub(crate) use coffer_ratls::{ServerIdentity, DEFAULT_RENEWAL};
