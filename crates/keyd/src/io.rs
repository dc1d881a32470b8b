//! keyd's server connection wraps a TLS stream to carry extra state and forwards writes to it
//! unchanged, as the client pool's connection does: with the client crate's macro.

pub(crate) use coffer_keyd_client::forward_async_write;
