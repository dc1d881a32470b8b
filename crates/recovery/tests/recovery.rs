//! Integration tests for split / open / combine of recovery shares.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use coffer_recovery::{
    combine, open_share, split, OperatorPublicKey, OperatorSecretKey, PlainShare, RecoveryError,
    SealedShare,
};
use zeroize::Zeroizing;

const INSTANCE: &str = "keyd-test-instance";

fn root() -> Zeroizing<[u8; 32]> {
    let mut r = Zeroizing::new([0u8; 32]);
    for (i, b) in r.iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(37).wrapping_add(11);
    }
    r
}

fn operators(n: usize) -> (Vec<OperatorSecretKey>, Vec<OperatorPublicKey>) {
    (0..n).map(|_| OperatorSecretKey::generate()).unzip()
}

fn setup(k: u8, n: usize) -> (Vec<OperatorSecretKey>, Vec<SealedShare>) {
    let (sks, pks) = operators(n);
    let sealed = split(&root(), INSTANCE, k, &pks).expect("split");
    (sks, sealed)
}

fn open_all(sks: &[OperatorSecretKey], sealed: &[SealedShare]) -> Vec<PlainShare> {
    sealed
        .iter()
        .zip(sks)
        .map(|(s, sk)| open_share(s, sk, INSTANCE).expect("open"))
        .collect()
}

#[test]
fn three_of_five_every_subset_recovers() {
    let (sks, sealed) = setup(3, 5);
    assert_eq!(sealed.len(), 5);
    for (i, s) in sealed.iter().enumerate() {
        assert_eq!(s.index as usize, i + 1);
        assert_eq!((s.threshold, s.total), (3, 5));
    }
    let plain = open_all(&sks, &sealed);
    let mut subsets = 0;
    for a in 0..5 {
        for b in a + 1..5 {
            for c in b + 1..5 {
                let set = [plain[a].clone(), plain[b].clone(), plain[c].clone()];
                let got = combine(&set, INSTANCE).expect("combine");
                assert_eq!(*got, *root());
                subsets += 1;
            }
        }
    }
    assert_eq!(subsets, 10);
    // More than k shares also work.
    assert_eq!(*combine(&plain, INSTANCE).unwrap(), *root());
}

#[test]
fn any_two_of_three_threshold_is_not_enough() {
    let (sks, sealed) = setup(3, 5);
    let plain = open_all(&sks, &sealed);
    for a in 0..5 {
        for b in a + 1..5 {
            let set = [plain[a].clone(), plain[b].clone()];
            match combine(&set, INSTANCE) {
                Err(RecoveryError::NotEnoughShares { have: 2, need: 3 }) => {}
                other => panic!("expected NotEnoughShares, got {other:?}"),
            }
        }
    }
    assert!(matches!(
        combine(&[], INSTANCE),
        Err(RecoveryError::NoShares)
    ));
}

#[test]
fn tampered_share_names_its_index() {
    let (sks, sealed) = setup(2, 3);
    // Flip a ciphertext bit.
    let mut bad = sealed[1].clone();
    let mut ct = B64.decode(&bad.ciphertext).unwrap();
    ct[0] ^= 1;
    bad.ciphertext = B64.encode(ct);
    let err = open_share(&bad, &sks[1], INSTANCE).unwrap_err();
    assert!(
        matches!(err, RecoveryError::Decrypt { index: 2 }),
        "{err:?}"
    );
    assert!(err.to_string().contains("share 2"));

    // Alter header fields covered by the AAD / info.
    let mut bad = sealed[1].clone();
    bad.threshold = 3;
    assert!(matches!(
        open_share(&bad, &sks[1], INSTANCE),
        Err(RecoveryError::Decrypt { index: 2 })
    ));
    let mut bad = sealed[1].clone();
    bad.root_check = B64.encode([7u8; 32]);
    assert!(matches!(
        open_share(&bad, &sks[1], INSTANCE),
        Err(RecoveryError::Decrypt { index: 2 })
    ));
    let mut bad = sealed[1].clone();
    bad.index = 3;
    assert!(matches!(
        open_share(&bad, &sks[1], INSTANCE),
        Err(RecoveryError::Decrypt { index: 3 })
    ));
    // Swapped encapsulated key from another share.
    let mut bad = sealed[1].clone();
    bad.enc = sealed[0].enc.clone();
    assert!(matches!(
        open_share(&bad, &sks[1], INSTANCE),
        Err(RecoveryError::Decrypt { index: 2 })
    ));
}

#[test]
fn share_for_another_instance_is_refused() {
    let (sks, sealed) = setup(2, 3);
    let err = open_share(&sealed[0], &sks[0], "other-instance").unwrap_err();
    assert!(
        matches!(err, RecoveryError::WrongInstance { index: 1, .. }),
        "{err:?}"
    );

    // Relabelling the instance in the file does not help: info/AAD bind it.
    let mut relabelled = sealed[0].clone();
    relabelled.instance_id = "other-instance".into();
    assert!(matches!(
        open_share(&relabelled, &sks[0], "other-instance"),
        Err(RecoveryError::Decrypt { index: 1 })
    ));

    // Opened shares of another instance are refused by combine.
    let (osks, osealed) = {
        let (sks, pks) = operators(3);
        (sks, split(&root(), "other-instance", 2, &pks).unwrap())
    };
    let other: Vec<PlainShare> = osealed
        .iter()
        .zip(&osks)
        .map(|(s, sk)| open_share(s, sk, "other-instance").unwrap())
        .collect();
    let err = combine(&other[..2], INSTANCE).unwrap_err();
    assert!(
        matches!(err, RecoveryError::WrongInstance { .. }),
        "{err:?}"
    );
}

#[test]
fn wrong_operator_key_is_refused() {
    let (sks, sealed) = setup(2, 3);
    let err = open_share(&sealed[0], &sks[1], INSTANCE).unwrap_err();
    assert!(
        matches!(err, RecoveryError::NotForThisKey { index: 1, .. }),
        "{err:?}"
    );
    // Even with a forged fingerprint, decryption with the wrong key fails.
    let mut forged = sealed[0].clone();
    forged.operator_fingerprint = sks[1].public_key().fingerprint();
    assert!(matches!(
        open_share(&forged, &sks[1], INSTANCE),
        Err(RecoveryError::Decrypt { index: 1 })
    ));
}

#[test]
fn duplicates_are_refused() {
    let (sks, sealed) = setup(2, 3);
    let plain = open_all(&sks, &sealed);
    let err = combine(&[plain[0].clone(), plain[0].clone()], INSTANCE).unwrap_err();
    assert!(
        matches!(err, RecoveryError::DuplicateIndex { index: 1 }),
        "{err:?}"
    );

    let (_, pks) = operators(2);
    let err = split(&root(), INSTANCE, 2, &[pks[0], pks[1], pks[0]]).unwrap_err();
    assert!(
        matches!(err, RecoveryError::DuplicateOperatorKey { position: 2, .. }),
        "{err:?}"
    );
}

#[test]
fn mixed_splits_are_refused() {
    let (sks, pks) = operators(3);
    let a = split(&root(), INSTANCE, 2, &pks).unwrap();
    let b = split(&root(), INSTANCE, 3, &pks).unwrap();
    let pa = open_share(&a[0], &sks[0], INSTANCE).unwrap();
    let pb = open_share(&b[1], &sks[1], INSTANCE).unwrap();
    let err = combine(&[pa.clone(), pb], INSTANCE).unwrap_err();
    assert!(
        matches!(err, RecoveryError::InconsistentShares { index: 2 }),
        "{err:?}"
    );

    // Same threshold but a different root: root checks differ.
    let other_root = Zeroizing::new([9u8; 32]);
    let c = split(&other_root, INSTANCE, 2, &pks).unwrap();
    let pc = open_share(&c[1], &sks[1], INSTANCE).unwrap();
    let err = combine(&[pa, pc], INSTANCE).unwrap_err();
    assert!(
        matches!(err, RecoveryError::InconsistentShares { index: 2 }),
        "{err:?}"
    );
}

#[test]
fn max_threshold_255_of_255() {
    let (sks, sealed) = setup(255, 255);
    let plain = open_all(&sks, &sealed);
    assert_eq!(*combine(&plain, INSTANCE).unwrap(), *root());
    assert!(matches!(
        combine(&plain[..254], INSTANCE),
        Err(RecoveryError::NotEnoughShares {
            have: 254,
            need: 255
        })
    ));
}

#[test]
fn invalid_thresholds_are_refused() {
    let (_, pks) = operators(3);
    for k in [0u8, 4] {
        let err = split(&root(), INSTANCE, k, &pks).unwrap_err();
        assert!(
            matches!(err, RecoveryError::InvalidThreshold { total: 3, .. }),
            "{err:?}"
        );
    }
    assert!(matches!(
        split(&root(), INSTANCE, 1, &[]),
        Err(RecoveryError::InvalidThreshold { total: 0, .. })
    ));
    let (_, many) = operators(256);
    assert!(matches!(
        split(&root(), INSTANCE, 2, &many),
        Err(RecoveryError::InvalidThreshold { total: 256, .. })
    ));
    assert!(matches!(
        split(&root(), "", 2, &pks),
        Err(RecoveryError::InvalidInstanceId)
    ));
}

#[test]
fn threshold_one_is_allowed_and_each_share_recovers() {
    let (sks, sealed) = setup(1, 2);
    let plain = open_all(&sks, &sealed);
    for p in &plain {
        assert_eq!(
            *combine(std::slice::from_ref(p), INSTANCE).unwrap(),
            *root()
        );
    }
}

#[test]
fn sealed_share_serde_round_trip() {
    let (sks, sealed) = setup(2, 3);
    let json = sealed[2].to_json();
    let back = SealedShare::from_json(&json).unwrap();
    assert_eq!(back, sealed[2]);
    let plain = open_share(&back, &sks[2], INSTANCE).unwrap();
    assert_eq!(plain.index(), 3);

    // Unknown fields are refused.
    let mut v: serde_json::Value = serde_json::from_str(&json).unwrap();
    v["extra"] = serde_json::json!(1);
    let err = SealedShare::from_json(&v.to_string()).unwrap_err();
    assert!(matches!(err, RecoveryError::Format { .. }), "{err:?}");

    // Newer versions are refused, by from_json and by open_share.
    let mut v: serde_json::Value = serde_json::from_str(&json).unwrap();
    v["version"] = serde_json::json!(2);
    let err = SealedShare::from_json(&v.to_string()).unwrap_err();
    assert!(
        matches!(err, RecoveryError::UnsupportedVersion { found: 2 }),
        "{err:?}"
    );
    let newer: SealedShare = serde_json::from_value(v).unwrap();
    assert!(matches!(
        open_share(&newer, &sks[2], INSTANCE),
        Err(RecoveryError::UnsupportedVersion { found: 2 })
    ));

    // Missing fields are refused.
    let mut v: serde_json::Value = serde_json::from_str(&json).unwrap();
    v.as_object_mut().unwrap().remove("enc");
    assert!(SealedShare::from_json(&v.to_string()).is_err());
}

#[test]
fn operator_key_text_round_trip() {
    let (sk, pk) = OperatorSecretKey::generate();
    let pk_text = pk.to_string();
    assert!(pk_text.starts_with("coffer-recovery-pk:"));
    assert_eq!(pk_text.parse::<OperatorPublicKey>().unwrap(), pk);

    let sk_text = sk.to_text();
    assert!(sk_text.starts_with("coffer-recovery-sk:"));
    let sk2: OperatorSecretKey = sk_text.parse().unwrap();
    assert_eq!(sk2.public_key(), pk);

    assert!("coffer-recovery-pk:AAAA"
        .parse::<OperatorPublicKey>()
        .is_err());
    assert!(pk_text
        .replace("-pk:", "-sk:")
        .parse::<OperatorPublicKey>()
        .is_err());
    assert!(pk_text.parse::<OperatorSecretKey>().is_err());
    assert!("coffer-recovery-sk:!!"
        .parse::<OperatorSecretKey>()
        .is_err());
}

#[test]
fn secrets_never_in_debug_output() {
    let (sk, _) = OperatorSecretKey::generate();
    let sk_text = sk.to_text();
    let sk_b64 = sk_text.strip_prefix("coffer-recovery-sk:").unwrap();
    let dbg = format!("{sk:?}");
    assert!(dbg.contains("redacted"));
    assert!(!dbg.contains(sk_b64));

    let (sks, sealed) = setup(2, 3);
    let plain = open_all(&sks, &sealed);
    let dbg = format!("{:?}", plain[0]);
    assert!(dbg.contains("redacted"), "{dbg}");
    assert!(!dbg.contains("value: ["), "{dbg}");
    let dbg = format!("{:?}", sealed[0]);
    assert!(!dbg.contains(&sealed[0].ciphertext), "{dbg}");

    let root_hex = hex::encode(*root());
    let err = combine(&plain[..1], INSTANCE).unwrap_err();
    assert!(!format!("{err:?} {err}").contains(&root_hex));
}
