//! Attestation evidence verification, offline and in pure Rust.
//!
//! One module per TEE type (`sgx`, `tdx`, `snp`, `sim`), each behind a cargo feature and each
//! with its own claim extraction, all producing the normalised [`Claims`]. [`policy`] maps claims
//! to roles.

#![deny(missing_docs)]

pub mod claims;
pub mod policy;

pub use claims::{Claims, Measurements};
