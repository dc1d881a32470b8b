//! Unit tests: parsing, bounds and every error variant. The independent, ring-based check of the
//! cryptography is in `tests/apiserver_roundtrip.rs`.

use super::*;

const ETCD_KEY: &str = "/registry/secrets/default/db";
const SEED: [u8; 32] = [7; 32];
const KEY: [u8; 32] = [9; 32];

fn object(source_type: EncryptedDekSourceType, encrypted_data: Vec<u8>) -> EncryptedObject {
    EncryptedObject {
        encrypted_data,
        key_id: "key-1".into(),
        encrypted_dek_source: vec![0xAA; 40],
        annotations: HashMap::from([("version.coffer.io".to_owned(), b"1".to_vec())]),
        encrypted_dek_source_type: source_type as i32,
    }
}

fn raw(provider: &str, obj: &EncryptedObject) -> Vec<u8> {
    let mut out = KMS_V2_PREFIX.to_vec();
    out.extend_from_slice(provider.as_bytes());
    out.push(b':');
    out.extend_from_slice(&obj.encode_to_vec());
    out
}

/// Seals with the aes-gcm crate, in kube-apiserver's layout.
fn seal<C: AeadInPlace<NonceSize = U12> + KeyInit>(
    key: &[u8],
    nonce: [u8; 12],
    aad: &[u8],
    pt: &[u8],
) -> Vec<u8> {
    let cipher = C::new_from_slice(key).expect("key length");
    let mut buf = pt.to_vec();
    let tag = cipher
        .encrypt_in_place_detached(&GenericArray::from(nonce), aad, &mut buf)
        .expect("seal");
    let mut out = nonce.to_vec();
    out.extend_from_slice(&buf);
    out.extend_from_slice(&tag);
    out
}

fn seed_data(seed: &[u8], info: [u8; 32], aad: &[u8], pt: &[u8]) -> Vec<u8> {
    let hk = Hkdf::<Sha256>::from_prk(seed).expect("prk");
    let mut key = [0u8; 32];
    hk.expand(&info, &mut key).expect("expand");
    let mut out = info.to_vec();
    out.extend(seal::<Aes256Gcm>(&key, [3; 12], aad, pt));
    out
}

fn seed_value(pt: &[u8]) -> Vec<u8> {
    let data = seed_data(&SEED, [5; 32], ETCD_KEY.as_bytes(), pt);
    raw(
        "coffer",
        &object(EncryptedDekSourceType::HkdfSha256XnonceAesGcmSeed, data),
    )
}

type UnwrapResult = Result<Zeroizing<Vec<u8>>, Box<dyn std::error::Error + Send + Sync>>;

fn ok_unwrap(
    source: &'static [u8],
) -> impl FnOnce(&str, &[u8], &HashMap<String, Vec<u8>>) -> UnwrapResult {
    move |_, _, _| Ok(Zeroizing::new(source.to_vec()))
}

fn parse_err(raw: &[u8]) -> EnvelopeError {
    parse_etcd_value(raw).expect_err("should be refused")
}

#[test]
fn parses_provider_and_object() {
    let obj = object(EncryptedDekSourceType::AesGcmKey, vec![1; 40]);
    let parsed = parse_etcd_value(&raw("my-kms.v2_provider", &obj)).unwrap();
    assert_eq!(parsed.provider, "my-kms.v2_provider");
    assert_eq!(parsed.object, obj);
}

#[test]
fn provider_name_may_be_any_utf8_without_colon() {
    let obj = object(EncryptedDekSourceType::AesGcmKey, vec![1; 40]);
    let parsed = parse_etcd_value(&raw("clé secrète", &obj)).unwrap();
    assert_eq!(parsed.provider, "clé secrète");
}

#[test]
fn unencrypted_protobuf_is_named() {
    let err = parse_err(b"k8s\x00\x0a\x0d\x0a\x02v1\x12\x06Secret");
    assert_eq!(err, EnvelopeError::NotKmsV2(StoredAs::UnencryptedProtobuf));
    let text = err.to_string();
    assert!(
        text.contains("not a KMS v2 value; it is stored unencrypted"),
        "{text}"
    );
}

#[test]
fn unencrypted_json_and_cbor_are_named() {
    assert_eq!(
        parse_err(br#"{"kind":"Secret"}"#),
        EnvelopeError::NotKmsV2(StoredAs::UnencryptedJson)
    );
    assert_eq!(
        parse_err(&[0xd9, 0xd9, 0xf7, 0xa1]),
        EnvelopeError::NotKmsV2(StoredAs::UnencryptedCbor)
    );
}

#[test]
fn other_providers_are_named() {
    for (value, kind) in [
        (&b"k8s:enc:aescbc:v1:key1:\x00\x01"[..], "aescbc:v1"),
        (b"k8s:enc:aesgcm:v1:key1:\xff", "aesgcm:v1"),
        (b"k8s:enc:secretbox:v1:key1:", "secretbox:v1"),
        (b"k8s:enc:kms:v1:vault:\x00\x10", "kms:v1"),
    ] {
        let err = parse_err(value);
        assert_eq!(
            err,
            EnvelopeError::NotKmsV2(StoredAs::OtherProvider {
                provider_type: kind.into()
            })
        );
        let text = err.to_string();
        assert!(
            text.contains(&format!(
                "not a KMS v2 value; it is stored with provider type {kind}"
            )),
            "{text}"
        );
    }
}

#[test]
fn unrecognised_values_are_refused() {
    for value in [
        &b""[..],
        b"k8s",
        b"hello",
        b"azhzOmVuYzprbXM6djI6",       // base64 of the prefix
        b"k8s:enc:",                   // no provider type
        b"k8s:enc:aescbc",             // no version
        b"k8s:enc:aes cbc:v1:",        // implausible type
        b"K8S:ENC:KMS:V2:coffer:\x0a", // wrong case
    ] {
        assert_eq!(
            parse_err(value),
            EnvelopeError::NotKmsV2(StoredAs::Unrecognised),
            "{value:?}"
        );
    }
}

#[test]
fn value_ending_inside_prefix_is_a_bad_provider_name() {
    for value in [&b"k8s:enc:k"[..], b"k8s:enc:kms:v2", b"k8s:enc:kms:v2:"] {
        assert!(
            matches!(parse_err(value), EnvelopeError::InvalidProviderName(_)),
            "{value:?}"
        );
    }
}

#[test]
fn bad_provider_names_are_refused() {
    let body = object(EncryptedDekSourceType::AesGcmKey, vec![1; 40]).encode_to_vec();
    let mut empty = KMS_V2_PREFIX.to_vec();
    empty.push(b':');
    empty.extend_from_slice(&body);
    assert_eq!(
        parse_err(&empty),
        EnvelopeError::InvalidProviderName("the provider name is empty")
    );

    let mut unterminated = KMS_V2_PREFIX.to_vec();
    unterminated.extend_from_slice(b"coffer");
    assert_eq!(
        parse_err(&unterminated),
        EnvelopeError::InvalidProviderName("no ':' ends the provider name")
    );

    let mut not_utf8 = KMS_V2_PREFIX.to_vec();
    not_utf8.extend_from_slice(b"co\xfffer:");
    not_utf8.extend_from_slice(&body);
    assert_eq!(
        parse_err(&not_utf8),
        EnvelopeError::InvalidProviderName("the provider name is not UTF-8")
    );
}

#[test]
fn protobuf_garbage_is_a_decode_error() {
    let mut value = KMS_V2_PREFIX.to_vec();
    value.extend_from_slice(b"coffer:\x0a\xff\xff\xff\xff\x0f");
    let err = parse_err(&value);
    assert!(matches!(err, EnvelopeError::Decode(_)), "{err:?}");
    assert!(err
        .to_string()
        .contains("not a valid EncryptedObject protobuf"));
}

#[test]
fn invalid_utf8_key_id_is_a_decode_error() {
    let mut value = KMS_V2_PREFIX.to_vec();
    value.extend_from_slice(b"coffer:");
    value.extend_from_slice(&[0x12, 0x02, 0xc3, 0x28]); // keyID = invalid UTF-8
    assert!(matches!(parse_err(&value), EnvelopeError::Decode(_)));
}

#[test]
fn unknown_source_type_is_refused() {
    let mut obj = object(EncryptedDekSourceType::AesGcmKey, vec![1; 40]);
    obj.encrypted_dek_source_type = 2;
    assert_eq!(
        parse_err(&raw("coffer", &obj)),
        EnvelopeError::UnknownSourceType(2)
    );
    obj.encrypted_dek_source_type = -1;
    assert_eq!(
        parse_err(&raw("coffer", &obj)),
        EnvelopeError::UnknownSourceType(-1)
    );
    assert_eq!(
        decrypt_object(&obj, ETCD_KEY, &KEY),
        Err(EnvelopeError::UnknownSourceType(-1))
    );
}

#[test]
fn oversize_value_is_refused_before_anything_else() {
    let mut value = KMS_V2_PREFIX.to_vec();
    value.resize(MAX_VALUE_SIZE + 1, b'x');
    assert_eq!(
        parse_err(&value),
        EnvelopeError::FieldTooLarge {
            field: Field::Value,
            size: MAX_VALUE_SIZE + 1,
            max: MAX_VALUE_SIZE
        }
    );
}

#[test]
fn value_at_the_size_limit_is_parsed() {
    let mut obj = object(EncryptedDekSourceType::AesGcmKey, Vec::new());
    // The empty field is not encoded: adding it costs a tag byte and a 4-byte length varint.
    let overhead = raw("coffer", &obj).len() + 1 + 4;
    obj.encrypted_data = vec![1; MAX_VALUE_SIZE - overhead];
    let value = raw("coffer", &obj);
    assert_eq!(value.len(), MAX_VALUE_SIZE);
    assert!(parse_etcd_value(&value).is_ok());
}

#[test]
fn key_id_bounds() {
    let mut obj = object(EncryptedDekSourceType::AesGcmKey, vec![1; 40]);
    obj.key_id = "k".repeat(MAX_KEY_ID_SIZE);
    assert!(parse_etcd_value(&raw("coffer", &obj)).is_ok());
    obj.key_id.push('k');
    assert_eq!(
        parse_err(&raw("coffer", &obj)),
        EnvelopeError::FieldTooLarge {
            field: Field::KeyId,
            size: MAX_KEY_ID_SIZE + 1,
            max: MAX_KEY_ID_SIZE
        }
    );
    obj.key_id.clear();
    assert_eq!(
        parse_err(&raw("coffer", &obj)),
        EnvelopeError::EmptyField {
            field: Field::KeyId
        }
    );
}

#[test]
fn encrypted_dek_source_bounds() {
    let mut obj = object(EncryptedDekSourceType::AesGcmKey, vec![1; 40]);
    obj.encrypted_dek_source = vec![1; MAX_ENCRYPTED_DEK_SOURCE_SIZE];
    assert!(parse_etcd_value(&raw("coffer", &obj)).is_ok());
    obj.encrypted_dek_source.push(1);
    assert_eq!(
        parse_err(&raw("coffer", &obj)),
        EnvelopeError::FieldTooLarge {
            field: Field::EncryptedDekSource,
            size: MAX_ENCRYPTED_DEK_SOURCE_SIZE + 1,
            max: MAX_ENCRYPTED_DEK_SOURCE_SIZE
        }
    );
    obj.encrypted_dek_source.clear();
    assert_eq!(
        parse_err(&raw("coffer", &obj)),
        EnvelopeError::EmptyField {
            field: Field::EncryptedDekSource
        }
    );
}

#[test]
fn annotation_bounds_count_keys_and_values() {
    let key = "a.example.com".to_owned();
    let mut obj = object(EncryptedDekSourceType::AesGcmKey, vec![1; 40]);
    obj.annotations = HashMap::from([(key.clone(), vec![0; MAX_ANNOTATIONS_SIZE - key.len()])]);
    assert!(parse_etcd_value(&raw("coffer", &obj)).is_ok());
    obj.annotations.insert("b.example.com".into(), Vec::new());
    assert_eq!(
        parse_err(&raw("coffer", &obj)),
        EnvelopeError::FieldTooLarge {
            field: Field::Annotations,
            size: MAX_ANNOTATIONS_SIZE + "b.example.com".len(),
            max: MAX_ANNOTATIONS_SIZE
        }
    );
}

#[test]
fn empty_annotations_are_fine() {
    let mut obj = object(EncryptedDekSourceType::AesGcmKey, vec![1; 40]);
    obj.annotations.clear();
    assert!(parse_etcd_value(&raw("coffer", &obj)).is_ok());
}

#[test]
fn annotation_keys_must_be_fully_qualified_domain_names() {
    let mut obj = object(EncryptedDekSourceType::AesGcmKey, vec![1; 40]);
    obj.annotations.insert("Version".into(), b"1".to_vec());
    obj.annotations.insert("bad_key.io".into(), b"1".to_vec());
    assert_eq!(
        parse_err(&raw("coffer", &obj)),
        EnvelopeError::InvalidAnnotationKey {
            key: "Version".into()
        }
    );
}

#[test]
fn fully_qualified_domain_names() {
    for good in [
        "a.b",
        "version.coffer.io",
        "kms.example.com.",
        "1-2.x9",
        &format!("{}.io", "a".repeat(63)),
    ] {
        assert!(is_fully_qualified_domain_name(good), "{good}");
    }
    for bad in [
        "",
        ".",
        "example",
        "example.",
        "Example.com",
        "-a.com",
        "a-.com",
        "a..com",
        ".a.com",
        "a_b.com",
        "a.com..",
        "é.com",
        &format!("{}.io", "a".repeat(64)),
        &format!("{}a", "a.".repeat(127)), // 255 characters
    ] {
        assert!(!is_fully_qualified_domain_name(bad), "{bad:?}");
    }
    // 253 characters is the most a subdomain may have; a trailing dot is not counted.
    let longest = format!("{}a", "a.".repeat(126));
    assert_eq!(longest.len(), 253);
    assert!(is_fully_qualified_domain_name(&longest));
    assert!(is_fully_qualified_domain_name(&format!("{longest}.")));
}

#[test]
fn empty_encrypted_data_is_refused() {
    let obj = object(EncryptedDekSourceType::AesGcmKey, Vec::new());
    assert_eq!(
        parse_err(&raw("coffer", &obj)),
        EnvelopeError::EmptyField {
            field: Field::EncryptedData
        }
    );
}

#[test]
fn seed_round_trip() {
    let value = seed_value(b"k8s\x00secret object");
    let out = decrypt_etcd_value(&value, ETCD_KEY, ok_unwrap(&SEED)).unwrap();
    assert_eq!(out.plaintext, b"k8s\x00secret object");
    assert_eq!(out.provider, "coffer");
    assert_eq!(out.key_id, "key-1");
    assert_eq!(
        out.source_type,
        EncryptedDekSourceType::HkdfSha256XnonceAesGcmSeed
    );
}

#[test]
fn seeds_longer_than_32_bytes_are_accepted() {
    const LONG: [u8; 80] = [4; 80];
    let data = seed_data(&LONG, [1; 32], ETCD_KEY.as_bytes(), b"x");
    let obj = object(EncryptedDekSourceType::HkdfSha256XnonceAesGcmSeed, data);
    assert_eq!(decrypt_object(&obj, ETCD_KEY, &LONG).unwrap(), b"x");
}

#[test]
fn aes_gcm_key_round_trip_for_every_key_size() {
    for key_len in [16, 24, 32] {
        let key = &KEY[..key_len];
        let data = match key_len {
            16 => seal::<Aes128Gcm>(key, [1; 12], ETCD_KEY.as_bytes(), b"payload"),
            24 => seal::<AesGcm<Aes192, U12>>(key, [1; 12], ETCD_KEY.as_bytes(), b"payload"),
            _ => seal::<Aes256Gcm>(key, [1; 12], ETCD_KEY.as_bytes(), b"payload"),
        };
        let obj = object(EncryptedDekSourceType::AesGcmKey, data);
        assert_eq!(decrypt_object(&obj, ETCD_KEY, key).unwrap(), b"payload");
    }
}

#[test]
fn empty_plaintext_round_trips() {
    let value = seed_value(b"");
    let out = decrypt_etcd_value(&value, ETCD_KEY, ok_unwrap(&SEED)).unwrap();
    assert!(out.plaintext.is_empty());
}

#[test]
fn truncated_encrypted_data_is_refused_before_unwrapping() {
    for (source_type, min) in [
        (EncryptedDekSourceType::AesGcmKey, 28),
        (EncryptedDekSourceType::HkdfSha256XnonceAesGcmSeed, 60),
    ] {
        let obj = object(source_type, vec![1; min - 1]);
        let expected = EnvelopeError::Truncated {
            source_type,
            len: min - 1,
            min,
        };
        let err = decrypt_etcd_value(&raw("coffer", &obj), ETCD_KEY, |_, _, _| {
            panic!("must not unwrap a truncated value")
        })
        .unwrap_err();
        assert_eq!(err, expected);
        assert_eq!(decrypt_object(&obj, ETCD_KEY, &KEY), Err(expected));
    }
}

#[test]
fn wrong_dek_source_lengths_are_refused() {
    let obj = object(EncryptedDekSourceType::AesGcmKey, vec![1; 40]);
    for len in [0, 1, 15, 17, 31, 33, 64] {
        assert_eq!(
            decrypt_object(&obj, ETCD_KEY, &vec![1; len]),
            Err(EnvelopeError::DekSourceLength {
                source_type: EncryptedDekSourceType::AesGcmKey,
                len,
                expected: "an AES key of 16, 24 or 32 bytes"
            })
        );
    }
    let obj = object(
        EncryptedDekSourceType::HkdfSha256XnonceAesGcmSeed,
        vec![1; 70],
    );
    for len in [0, 16, 24, 31] {
        assert_eq!(
            decrypt_object(&obj, ETCD_KEY, &vec![1; len]),
            Err(EnvelopeError::DekSourceLength {
                source_type: EncryptedDekSourceType::HkdfSha256XnonceAesGcmSeed,
                len,
                expected: "a seed of at least 32 bytes"
            })
        );
    }
}

#[test]
fn unwrap_failure_carries_the_message_chain() {
    #[derive(Debug, thiserror::Error)]
    #[error("plugin said no")]
    struct Outer(#[source] std::io::Error);

    let value = seed_value(b"x");
    let err = decrypt_etcd_value(&value, ETCD_KEY, |key_id, wrapped, annotations| {
        assert_eq!(key_id, "key-1");
        assert_eq!(wrapped, &[0xAA; 40][..]);
        assert_eq!(annotations["version.coffer.io"], b"1");
        Err(Box::new(Outer(std::io::Error::other(
            "key key-1 not in keystore",
        ))))
    })
    .unwrap_err();
    assert_eq!(
        err,
        EnvelopeError::Unwrap {
            key_id: "key-1".into(),
            message: "plugin said no: key key-1 not in keystore".into()
        }
    );
    assert!(err
        .to_string()
        .contains("plugin said no: key key-1 not in keystore"));
}

#[test]
fn wrong_etcd_key_fails_authentication_with_advice() {
    let value = seed_value(b"x");
    for key in [
        "/registry/secrets/default/other",
        "registry/secrets/default/db",
        "/registry/secrets/default/db\n",
        "",
    ] {
        let err = decrypt_etcd_value(&value, key, ok_unwrap(&SEED)).unwrap_err();
        assert_eq!(
            err,
            EnvelopeError::Authentication {
                source_type: EncryptedDekSourceType::HkdfSha256XnonceAesGcmSeed
            }
        );
        assert!(err
            .to_string()
            .contains("the etcd key given must be exactly the key the value was read from"));
    }
}

#[test]
fn wrong_seed_fails_authentication() {
    let value = seed_value(b"x");
    let err = decrypt_etcd_value(&value, ETCD_KEY, ok_unwrap(&[8; 32])).unwrap_err();
    assert!(matches!(err, EnvelopeError::Authentication { .. }));
}

#[test]
fn every_truncation_of_a_value_is_refused_without_panicking() {
    let value = seed_value(b"some plaintext");
    for len in 0..value.len() {
        let result = decrypt_etcd_value(&value[..len], ETCD_KEY, ok_unwrap(&SEED));
        assert!(result.is_err(), "truncated to {len} bytes");
    }
}

#[test]
fn random_mutations_never_panic() {
    let value = seed_value(b"some plaintext");
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for _ in 0..5000 {
        let mut mutated = value.clone();
        for _ in 0..(next() % 4 + 1) {
            let at = (next() as usize) % mutated.len();
            mutated[at] = next() as u8;
        }
        if next() % 3 == 0 {
            mutated.truncate((next() as usize) % mutated.len());
        }
        let _ = decrypt_etcd_value(&mutated, ETCD_KEY, ok_unwrap(&SEED));
        let _ = decrypt_etcd_value(&mutated, ETCD_KEY, ok_unwrap(&KEY[..16]));
    }
}

#[test]
fn debug_output_hides_plaintext_and_summarises_bytes() {
    let value = seed_value(b"TOP-SECRET-PASSWORD");
    let out = decrypt_etcd_value(&value, ETCD_KEY, ok_unwrap(&SEED)).unwrap();
    let text = format!("{out:?}");
    assert!(!text.contains("TOP-SECRET"), "{text}");
    assert!(!text.contains("84, 79, 80"), "{text}"); // "TOP" as bytes
    assert!(text.contains("plaintext_len: 19"), "{text}");

    let parsed = parse_etcd_value(&value).unwrap();
    let text = format!("{parsed:?}");
    assert!(text.contains("encrypted_dek_source_len: 40"), "{text}");
    assert!(text.contains("HKDF_SHA256_XNONCE_AES_GCM_SEED"), "{text}");
    assert!(text.contains("version.coffer.io"), "{text}");
}

#[test]
fn every_error_explains_itself() {
    let errors = [
        EnvelopeError::NotKmsV2(StoredAs::Unrecognised),
        EnvelopeError::InvalidProviderName("x"),
        parse_err(b"k8s:enc:kms:v2:c:\xff"),
        EnvelopeError::UnknownSourceType(7),
        EnvelopeError::FieldTooLarge {
            field: Field::Annotations,
            size: 2,
            max: 1,
        },
        EnvelopeError::EmptyField {
            field: Field::EncryptedData,
        },
        EnvelopeError::InvalidAnnotationKey { key: "x".into() },
        EnvelopeError::Truncated {
            source_type: EncryptedDekSourceType::AesGcmKey,
            len: 1,
            min: 28,
        },
        EnvelopeError::DekSourceLength {
            source_type: EncryptedDekSourceType::AesGcmKey,
            len: 1,
            expected: "y",
        },
        EnvelopeError::Unwrap {
            key_id: "k".into(),
            message: "m".into(),
        },
        EnvelopeError::Authentication {
            source_type: EncryptedDekSourceType::AesGcmKey,
        },
    ];
    for err in errors {
        let text = err.to_string();
        assert!(text.len() > 60, "{text}");
        assert!(!text.contains('\n'), "{text}");
    }
}
