//! The committed test vectors (`tests/vectors.json`, reproduced in docs/sealed-values.md),
//! checked with this crate and with a second, independent HPKE implementation (`hpke-rs` on its
//! RustCrypto provider), which also seals a value this crate must open.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use coffer_sealed::{
    open, Binding, Location, Scope, SealedValue, SealingKeyPair, SealingPublicKey, HPKE_INFO,
};
use hpke_rs::hpke_types::{AeadAlgorithm, KdfAlgorithm, KemAlgorithm};
use hpke_rs::rustcrypto::HpkeRustCrypto;
use hpke_rs::{Hpke, HpkePrivateKey, HpkePublicKey, Mode};
use serde_json::Value;
use zeroize::Zeroizing;

fn vectors() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/vectors.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn field<'a>(v: &'a Value, name: &str) -> &'a str {
    v[name]
        .as_str()
        .unwrap_or_else(|| panic!("vector field {name}"))
}

fn bytes(v: &Value, name: &str) -> Vec<u8> {
    hex::decode(field(v, name)).unwrap()
}

fn independent() -> Hpke<HpkeRustCrypto> {
    Hpke::new(
        Mode::Base,
        KemAlgorithm::DhKem25519,
        KdfAlgorithm::HkdfSha256,
        AeadAlgorithm::Aes256Gcm,
    )
}

/// The header as docs/sealed-values.md specifies it, built without the crate.
fn spec_header(scope: u8, strings: [&str; 5]) -> Vec<u8> {
    let mut out = vec![1, scope];
    for s in strings {
        out.push(u8::try_from(s.len()).unwrap());
        out.extend_from_slice(s.as_bytes());
    }
    out
}

fn scope_byte(name: &str) -> u8 {
    match name {
        "strict" => 1,
        "namespace" => 2,
        "cluster" => 3,
        other => panic!("scope {other}"),
    }
}

#[test]
fn the_suite_is_the_documented_one() {
    let v = vectors();
    assert_eq!(
        (
            v["kem_id"].as_u64(),
            v["kdf_id"].as_u64(),
            v["aead_id"].as_u64()
        ),
        (Some(32), Some(1), Some(2))
    );
    assert_eq!(bytes(&v, "info"), b"coffer sealed value v1");
    assert_eq!(HPKE_INFO, b"coffer sealed value v1");
    assert!(v["vectors"].as_array().unwrap().len() >= 4);
}

#[test]
fn vectors_open_with_this_crate() {
    for v in vectors()["vectors"].as_array().unwrap() {
        let name = field(v, "name");
        let pair = SealingKeyPair::derive(&bytes(v, "ikm_r"));
        assert_eq!(pair.private_bytes().to_vec(), bytes(v, "sk_r"), "{name}");
        assert_eq!(pair.public().bytes().to_vec(), bytes(v, "pk_r"), "{name}");
        assert_eq!(pair.id(), field(v, "key_id"), "{name}");
        let from_sk =
            SealingKeyPair::from_private(Zeroizing::new(bytes(v, "sk_r").try_into().unwrap()));
        assert_eq!(from_sk.public(), pair.public());

        let value = SealedValue::parse(field(v, "sealed")).unwrap();
        assert_eq!(value.keyring(), field(v, "keyring"), "{name}");
        assert_eq!(value.key_id(), field(v, "key_id"), "{name}");
        assert_eq!(value.binding().scope().name(), field(v, "scope"), "{name}");
        assert_eq!(
            value.binding().namespace().unwrap_or(""),
            field(v, "namespace")
        );
        assert_eq!(value.binding().secret().unwrap_or(""), field(v, "secret"));
        assert_eq!(value.binding().key().unwrap_or(""), field(v, "key"));
        assert_eq!(value.header(), bytes(v, "header"), "{name}");
        assert_eq!(value.enc().to_vec(), bytes(v, "enc"), "{name}");
        assert_eq!(value.ciphertext(), bytes(v, "ciphertext"), "{name}");
        assert_eq!(value.to_text(), field(v, "sealed"), "{name}");
        assert_eq!(
            open(&value, &pair).unwrap().to_vec(),
            bytes(v, "plaintext"),
            "{name}"
        );
    }
}

#[test]
fn vectors_open_with_an_independent_hpke() {
    let hpke = independent();
    for v in vectors()["vectors"].as_array().unwrap() {
        let name = field(v, "name");
        // The wire format by hand: prefix, base64url without padding, header || enc || ct.
        let text = field(v, "sealed");
        let decoded = URL_SAFE_NO_PAD
            .decode(text.strip_prefix("coffer.v1.").unwrap())
            .unwrap();
        let header = spec_header(
            scope_byte(field(v, "scope")),
            [
                field(v, "keyring"),
                field(v, "key_id"),
                field(v, "namespace"),
                field(v, "secret"),
                field(v, "key"),
            ],
        );
        assert_eq!(header, bytes(v, "header"), "{name}");
        assert!(decoded.starts_with(&header), "{name}");
        let (enc, ct) = decoded[header.len()..].split_at(32);
        assert_eq!(enc, bytes(v, "enc"), "{name}");
        assert_eq!(ct, bytes(v, "ciphertext"), "{name}");

        // The recipient key pair from its seed, by the other implementation.
        let derived = hpke.derive_key_pair(&bytes(v, "ikm_r")).unwrap();
        let (sk, pk) = derived.into_keys();
        assert_eq!(pk.as_slice(), bytes(v, "pk_r"), "{name}");
        // The ephemeral key is DeriveKeyPair(ikm_e): its public half is enc.
        let (_, pk_e) = hpke
            .derive_key_pair(&bytes(v, "ikm_e"))
            .unwrap()
            .into_keys();
        assert_eq!(pk_e.as_slice(), enc, "{name}");

        let plaintext = hpke
            .open(enc, &sk, HPKE_INFO, &header, ct, None, None, None)
            .unwrap();
        assert_eq!(plaintext, bytes(v, "plaintext"), "{name}");
        let sk_r = HpkePrivateKey::new(bytes(v, "sk_r"));
        let plaintext = hpke
            .open(enc, &sk_r, HPKE_INFO, &header, ct, None, None, None)
            .unwrap();
        assert_eq!(plaintext, bytes(v, "plaintext"), "{name}");

        // The header is the aad: any other binding fails to open.
        let moved = spec_header(3, [field(v, "keyring"), field(v, "key_id"), "", "", ""]);
        if moved != header {
            assert!(hpke
                .open(enc, &sk, HPKE_INFO, &moved, ct, None, None, None)
                .is_err());
        }
    }
}

#[test]
fn an_independent_hpke_seals_what_this_crate_opens() {
    let mut hpke = independent();
    let pair = SealingKeyPair::generate().unwrap();
    let location = Location {
        namespace: "prod".into(),
        secret: "api".into(),
        key: "token".into(),
    };
    let header = spec_header(1, ["apps", pair.id(), "prod", "api", "token"]);
    let pk = HpkePublicKey::new(pair.public().bytes().to_vec());
    let (enc, ct) = hpke
        .seal(
            &pk,
            HPKE_INFO,
            &header,
            b"sealed elsewhere",
            None,
            None,
            None,
        )
        .unwrap();
    let mut wire = header;
    wire.extend_from_slice(&enc);
    wire.extend_from_slice(&ct);
    let text = format!("coffer.v1.{}", URL_SAFE_NO_PAD.encode(&wire));

    let value = SealedValue::parse(&text).unwrap();
    assert_eq!(
        value.binding(),
        &Binding::new(Scope::Strict, &location).unwrap()
    );
    assert_eq!(&open(&value, &pair).unwrap()[..], b"sealed elsewhere");
    assert_eq!(value.to_text(), text);

    // And the reverse of the same key: this crate seals, the other opens.
    let binding = Binding::new(Scope::Namespace, &location).unwrap();
    let sealed = coffer_sealed::seal("apps", pair.public(), &binding, b"both ways").unwrap();
    let sk = HpkePrivateKey::new(pair.private_bytes().to_vec());
    let opened = hpke
        .open(
            sealed.enc(),
            &sk,
            HPKE_INFO,
            &sealed.header(),
            sealed.ciphertext(),
            None,
            None,
            None,
        )
        .unwrap();
    assert_eq!(opened, b"both ways");
    let _: &SealingPublicKey = pair.public();
}

/// The independent implementation itself against the CFRG vector of this suite (mode_base,
/// 0x0020/0x0001/0x0002), so a pass above means two correct implementations agree.
#[test]
fn the_independent_hpke_matches_the_cfrg_vector() {
    let hpke = independent();
    let (sk, pk) = hpke
        .derive_key_pair(
            &hex::decode("dac33b0e9db1b59dbbea58d59a14e7b5896e9bdf98fad6891e99d1686492b9ee")
                .unwrap(),
        )
        .unwrap()
        .into_keys();
    assert_eq!(
        hex::encode(pk.as_slice()),
        "430f4b9859665145a6b1ba274024487bd66f03a2dd577d7753c68d7d7d00c00c"
    );
    let pt = hpke
        .open(
            &hex::decode("6c93e09869df3402d7bf231bf540fadd35cd56be14f97178f0954db94b7fc256")
                .unwrap(),
            &sk,
            &hex::decode("4f6465206f6e2061204772656369616e2055726e").unwrap(),
            b"Count-0",
            &hex::decode(
                "e5d84cd531cfb583096e7cfa9641bd3079cf3a91cda813c52deb5f512be9931980a41de125a925cdad859d5b7a",
            )
            .unwrap(),
            None,
            None,
            None,
        )
        .unwrap();
    assert_eq!(pt, b"Beauty is truth, truth beauty");
}

/// docs/sealed-values.md reproduces every committed vector and states the real limits.
#[test]
fn the_docs_reproduce_the_vectors() {
    let docs = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/sealed-values.md"
    ))
    .unwrap();
    for v in vectors()["vectors"].as_array().unwrap() {
        for name in ["sealed", "header", "enc", "ciphertext", "sk_r", "ikm_e"] {
            assert!(
                docs.contains(field(v, name)),
                "docs/sealed-values.md lacks {name} of vector {:?}",
                field(v, "name")
            );
        }
    }
    assert!(docs.contains(&format!(
        "at most {} are accepted",
        coffer_sealed::MAX_SEALED_TEXT_LEN
    )));
    assert!(docs.contains(&hex::encode(HPKE_INFO)));
}
