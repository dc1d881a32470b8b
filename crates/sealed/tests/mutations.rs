//! Random mutations of sealed values and key bundles: parsing never panics, a mutated value
//! never opens, and a bundle whose committed body changed never passes `check_pinned`.
//!
//! A fixed-seed generator keeps failures reproducible; the counts keep a debug build quick.

use std::time::{Duration, SystemTime};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use coffer_sealed::bundle::{timestamp, BundleBody, BundleKey, KeyBundle, BUNDLE_FORMAT};
use coffer_sealed::{open, seal, Binding, Location, Scope, SealedValue, SealingKeyPair};

/// xorshift64*: enough to spread mutations; not for anything secret.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// One random edit of `bytes`: flip a bit, set a byte, delete, insert, truncate or duplicate
/// a run.
fn mutate(rng: &mut Rng, bytes: &[u8], alphabet: &[u8]) -> Vec<u8> {
    let mut out = bytes.to_vec();
    let at = rng.below(out.len());
    match rng.below(6) {
        0 if !out.is_empty() => out[at] ^= 1 << rng.below(8),
        1 if !out.is_empty() => out[at] = alphabet[rng.below(alphabet.len())],
        2 if !out.is_empty() => {
            out.remove(at);
        }
        3 => out.insert(at, alphabet[rng.below(alphabet.len())]),
        4 => out.truncate(at),
        _ => {
            let end = (at + 1 + rng.below(16)).min(out.len());
            let run = out[at..end].to_vec();
            out.splice(at..at, run);
        }
    }
    out
}

fn sealed(pair: &SealingKeyPair, scope: Scope) -> SealedValue {
    let location = Location {
        namespace: "prod".into(),
        secret: "db".into(),
        key: "password".into(),
    };
    seal(
        "apps",
        pair.public(),
        &Binding::new(scope, &location).unwrap(),
        b"hunter2",
    )
    .unwrap()
}

#[test]
fn mutated_sealed_text_never_panics_and_never_opens() {
    let pair = SealingKeyPair::derive(b"mutation test recipient key seed");
    let mut rng = Rng(0x5eed_0001);
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_=+/. \xff";
    let mut tried = 0;
    for scope in [Scope::Strict, Scope::Namespace, Scope::Cluster] {
        let original = sealed(&pair, scope).to_text();
        for _ in 0..600 {
            let bytes = mutate(&mut rng, original.as_bytes(), alphabet);
            let Ok(text) = String::from_utf8(bytes) else {
                continue;
            };
            if text == original {
                continue;
            }
            if let Ok(value) = SealedValue::parse(&text) {
                tried += 1;
                assert!(open(&value, &pair).is_err(), "mutation opened: {text}");
            }
        }
    }
    // Not vacuous: many mutations parse and are refused by HPKE, not by the parser.
    assert!(tried > 100, "only {tried} mutations parsed");
}

#[test]
fn mutated_sealed_bytes_never_panic_and_never_open() {
    let pair = SealingKeyPair::derive(b"mutation test recipient key seed");
    let mut rng = Rng(0x5eed_0002);
    let all: Vec<u8> = (0..=255).collect();
    let mut tried = 0;
    for scope in [Scope::Strict, Scope::Namespace, Scope::Cluster] {
        let text = sealed(&pair, scope).to_text();
        let original = URL_SAFE_NO_PAD
            .decode(text.strip_prefix("coffer.v1.").unwrap())
            .unwrap();
        for _ in 0..600 {
            let bytes = mutate(&mut rng, &original, &all);
            if bytes == original {
                continue;
            }
            let text = format!("coffer.v1.{}", URL_SAFE_NO_PAD.encode(&bytes));
            if let Ok(value) = SealedValue::parse(&text) {
                tried += 1;
                assert_eq!(value.to_text(), text, "parsing is canonical");
                assert!(open(&value, &pair).is_err(), "mutation opened: {text}");
            }
        }
    }
    assert!(tried > 100, "only {tried} mutations parsed");
}

#[test]
fn mutated_bundles_never_panic_and_altered_bodies_never_pass() {
    let dir = tempfile::tempdir().unwrap();
    let platform = coffer_platform::sim::SimPlatform::open_or_create(dir.path()).unwrap();
    let now = SystemTime::now();
    let pair = SealingKeyPair::derive(b"mutation test bundle key seed...");
    let body = BundleBody {
        format: BUNDLE_FORMAT,
        keyring: "apps".into(),
        instance: "keyd-0011223344556677".into(),
        issued: timestamp(now),
        expires: timestamp(now + Duration::from_secs(86400)),
        keys: vec![BundleKey::new(pair.public(), timestamp(now), true)],
    };
    let bundle = KeyBundle::attest(body, &platform).unwrap();
    let json = bundle.to_json();
    let mut rng = Rng(0x5eed_0003);
    let alphabet = b"{}[]\":,0123456789abcdefsk-truefalsnul \n\\";
    let mut altered = 0;
    for _ in 0..3000 {
        let bytes = mutate(&mut rng, &json, alphabet);
        if let Ok(parsed) = KeyBundle::from_json(&bytes) {
            if parsed.body != bundle.body {
                altered += 1;
                assert!(parsed.check_pinned(now).is_err(), "altered body passed");
            }
        }
    }
    assert!(
        altered > 10,
        "only {altered} mutations made a parseable, altered body"
    );
}
