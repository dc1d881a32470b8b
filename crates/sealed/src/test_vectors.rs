//! The generator of `tests/vectors.json`: every vector is sealed with this crate from fixed
//! seeds (the ephemeral key is `DeriveKeyPair(ikm_e)`), so the file is reproducible. The test
//! fails when the committed file differs; `COFFER_REGENERATE_VECTORS=1` rewrites it.

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::value::seal_with_ephemeral_ikm;
use crate::{open, Binding, Location, Scope, SealedValue, SealingKeyPair, HPKE_INFO};

const FILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/vectors.json");

struct Case {
    name: &'static str,
    scope: Scope,
    keyring: String,
    location: Location,
    plaintext: Vec<u8>,
}

fn location(namespace: &str, secret: &str, key: &str) -> Location {
    Location {
        namespace: namespace.into(),
        secret: secret.into(),
        key: key.into(),
    }
}

fn cases() -> Vec<Case> {
    let long_secret = format!("{}.{}", "s".repeat(126), "t".repeat(126));
    vec![
        Case {
            name: "strict",
            scope: Scope::Strict,
            keyring: "apps".into(),
            location: location("prod", "db-credentials", "password"),
            plaintext: b"correct horse battery staple".to_vec(),
        },
        Case {
            name: "namespace",
            scope: Scope::Namespace,
            keyring: "apps".into(),
            location: location("payments", "", ""),
            plaintext: b"s3cr3t\n".to_vec(),
        },
        Case {
            name: "cluster, binary one-byte value, all binding fields empty",
            scope: Scope::Cluster,
            keyring: "apps".into(),
            location: location("", "", ""),
            plaintext: vec![0xff],
        },
        Case {
            name: "strict, longest names",
            scope: Scope::Strict,
            keyring: "k".repeat(63),
            location: location(&"n".repeat(63), &long_secret, &"K.-_9".repeat(51)[..253]),
            plaintext: (0u8..=255).collect(),
        },
    ]
}

fn seed(label: &str) -> [u8; 32] {
    Sha256::digest(format!("coffer sealed value test vector {label}")).into()
}

fn generate() -> Value {
    let vectors: Vec<Value> = cases()
        .iter()
        .map(|case| {
            let ikm_r = seed(&format!("ikmR {}", case.keyring));
            let ikm_e = seed(&format!("ikmE {}", case.name));
            let pair = SealingKeyPair::derive(&ikm_r);
            let binding = Binding::new(case.scope, &case.location).unwrap();
            let value = seal_with_ephemeral_ikm(
                &case.keyring,
                pair.public(),
                &binding,
                &case.plaintext,
                &ikm_e,
            )
            .unwrap();
            let text = value.to_text();
            let parsed = SealedValue::parse(&text).unwrap();
            assert_eq!(&open(&parsed, &pair).unwrap()[..], &case.plaintext[..]);
            json!({
                "name": case.name,
                "keyring": case.keyring,
                "scope": case.scope.name(),
                "namespace": binding.namespace().unwrap_or(""),
                "secret": binding.secret().unwrap_or(""),
                "key": binding.key().unwrap_or(""),
                "ikm_r": hex::encode(ikm_r),
                "sk_r": hex::encode(pair.private_bytes()),
                "pk_r": hex::encode(pair.public().bytes()),
                "key_id": pair.id(),
                "ikm_e": hex::encode(ikm_e),
                "plaintext": hex::encode(&case.plaintext),
                "header": hex::encode(value.header()),
                "enc": hex::encode(value.enc()),
                "ciphertext": hex::encode(value.ciphertext()),
                "sealed": text,
            })
        })
        .collect();
    json!({
        "description": "coffer.v1 sealed-value test vectors (docs/sealed-values.md). HPKE RFC 9180 \
                        mode_base, DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-256-GCM; \
                        ikm_r/ikm_e are DeriveKeyPair inputs; aad = header; all bytes hex.",
        "kem_id": 32,
        "kdf_id": 1,
        "aead_id": 2,
        "info": hex::encode(HPKE_INFO),
        "vectors": vectors,
    })
}

#[test]
fn committed_vectors_are_reproducible() {
    let mut text = serde_json::to_string_pretty(&generate()).unwrap();
    text.push('\n');
    if std::env::var_os("COFFER_REGENERATE_VECTORS").is_some() {
        std::fs::write(FILE, &text).unwrap();
    }
    let committed = std::fs::read_to_string(FILE).unwrap_or_default();
    assert!(
        committed == text,
        "{FILE} differs from what this build generates; if the format changed on purpose, \
         rerun with COFFER_REGENERATE_VECTORS=1 and update docs/sealed-values.md"
    );
}
