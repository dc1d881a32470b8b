//! The sealed values the keyd-unseal and run-start benchmarks send: random plaintexts sealed,
//! like `kubectl coffer seal` does, to a keyring's verified key bundle.

use coffer_attest::policy::Policy;
use coffer_attest::VerifyOptions;
use coffer_keyd_client::KeydClient;
use coffer_sealed::bundle::KeyBundle;
use coffer_sealed::{Binding, Location, Scope};
use rand::distributions::Alphanumeric;
use rand::Rng;
use zeroize::Zeroizing;

use crate::error::BenchError;

/// Where the benchmark's values live: data keys `k0..kN-1` of one Secret.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    /// The keyring the values are sealed to.
    pub keyring: String,
    /// The Secret's namespace.
    pub namespace: String,
    /// The Secret's name.
    pub secret: String,
}

impl Target {
    /// The location of value `i`: data key `k<i>`.
    pub(crate) fn location(&self, i: usize) -> Location {
        Location {
            namespace: self.namespace.clone(),
            secret: self.secret.clone(),
            key: format!("k{i}"),
        }
    }
}

/// One sealed value with what it must unseal to.
pub(crate) struct SealedItem {
    /// Where the value is found (and what its strict binding names).
    pub location: Location,
    /// `coffer.v1.…`
    pub sealed: String,
    /// The random plaintext (letters and digits, so it also fits an environment variable).
    pub plaintext: Zeroizing<Vec<u8>>,
}

/// Fetches `target.keyring`'s key bundle over `client`, verifies it against the policy keyd
/// must satisfy, and seals `count` random plaintexts of `size` bytes to its primary key, each
/// with a strict binding to its own data key.
pub(crate) async fn seal_values(
    client: &mut KeydClient,
    policy: &Policy,
    verify_options: &VerifyOptions,
    target: &Target,
    count: usize,
    size: usize,
) -> Result<Vec<SealedItem>, BenchError> {
    let keyd = client.addr().to_string();
    let json = client.key_bundle(&target.keyring).await.map_err(|e| {
        BenchError::Keyd(format!(
            "GetKeyBundle of keyring {} at keyd {keyd}: {e}",
            target.keyring
        ))
    })?;
    let bad_bundle = |e: &dyn std::fmt::Display| {
        BenchError::Keyd(format!(
            "the key bundle of keyring {} from keyd {keyd}: {e}",
            target.keyring
        ))
    };
    let bundle = KeyBundle::from_json(&json).map_err(|e| bad_bundle(&e))?;
    bundle
        .check_keyring(&target.keyring)
        .map_err(|e| bad_bundle(&e))?;
    bundle
        .verify(policy, verify_options)
        .map_err(|e| bad_bundle(&e))?;
    let key = bundle.primary().map_err(|e| bad_bundle(&e))?;
    let mut rng = rand::thread_rng();
    (0..count)
        .map(|i| {
            let location = target.location(i);
            let binding = Binding::new(Scope::Strict, &location).map_err(|e| {
                BenchError::InvalidArgs(format!(
                    "--namespace {} --secret {}: {e}",
                    target.namespace, target.secret
                ))
            })?;
            let plaintext: Zeroizing<Vec<u8>> =
                Zeroizing::new((&mut rng).sample_iter(Alphanumeric).take(size).collect());
            let sealed = coffer_sealed::seal(&target.keyring, &key, &binding, &plaintext)
                .map_err(|e| BenchError::InvalidArgs(format!("cannot seal a value: {e}")))?
                .to_text();
            Ok(SealedItem {
                location,
                sealed,
                plaintext,
            })
        })
        .collect()
}
