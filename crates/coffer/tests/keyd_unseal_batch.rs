//! keyd's `UnsealBatch` against a real `coffer keyd serve` (sim) over real TCP and mutual
//! attested TLS: each item decided by Unseal's rules, answered in order and audited with the
//! caller's measurement, the location and the value's binding; the whole call refused for a
//! bad size, an unattested caller or an exhausted rate budget; and the client splitting a
//! pod's worth of values over several calls.

mod common;

use std::path::Path;

use coffer_keyd_client::pb;
use coffer_keyd_client::{KeydClient, MAX_UNSEAL_BATCH_ITEMS};
use coffer_platform::sim::{executable_measurement, SimPlatform};
use coffer_sealed::bundle::KeyBundle;
use coffer_sealed::{Binding, Location, Scope, SealingKeyPair};
use common::keyd::{
    audit_records, bundle, client, client_options, create_keyd_data, free_addr, location,
    pb_location, seal_to, sim_role_policy, KeydProcess,
};
use tonic::Code;

/// A plaintext prefix that must never show up in keyd's log or audit log.
const SECRET: &str = "batch-s3cr3t-4b9e";

/// Role `app` may unseal Secret `db` in namespace `payments` of keyring `apps`; nothing else.
const CONFIG: &str = "keyrings:
  apps:
    unseal:
      - role: app
        namespaces: [\"payments\"]
        secrets: [\"db\"]
  plain:
    wrap: [app]
";

/// Starts keyd (keyrings `apps` and `plain`, [`CONFIG`]) with `extra` flags and a policy giving
/// role `app` to the sim platform in `<dir>/app`; returns keyd and the app's platform.
fn start(dir: &Path, extra: &[&str]) -> (KeydProcess, SimPlatform) {
    let data = dir.join("keyd");
    create_keyd_data(&data, &["apps", "plain"]);
    let app = dir.join("app");
    let policy = sim_role_policy(dir, "app", &app);
    let config = dir.join("keyd.yaml");
    std::fs::write(&config, CONFIG).unwrap();
    let keyd = KeydProcess::start(&data, free_addr(), &policy, &config, extra);
    (keyd, SimPlatform::open_or_create(&app).unwrap())
}

fn item(sealed: &str, at: Option<&Location>) -> pb::UnsealItem {
    pb::UnsealItem {
        sealed: sealed.into(),
        location: at.and_then(pb_location),
    }
}

fn batch(keyring: &str, items: Vec<pb::UnsealItem>) -> pb::UnsealBatchRequest {
    pb::UnsealBatchRequest {
        keyring: keyring.into(),
        items,
    }
}

/// `sealed` with one character of its ciphertext changed.
fn tampered(sealed: &str) -> String {
    let mut bytes = sealed.as_bytes().to_vec();
    let i = bytes.len() - 12;
    bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
    String::from_utf8(bytes).unwrap()
}

/// What one item must come back as: its plaintext, or its code and part of keyd's reason.
enum Expect {
    Plain(String),
    Refused(Code, String),
}

fn assert_secret_never_logged(keyd: &KeydProcess) {
    assert!(!keyd.log_text().contains(SECRET), "keyd logged a plaintext");
    let audit = std::fs::read_to_string(keyd.data.join("audit.log")).unwrap();
    assert!(!audit.contains(SECRET), "the audit log holds a plaintext");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mixed_batch_is_answered_item_by_item_in_order_and_every_item_is_audited() {
    let dir = tempfile::tempdir().unwrap();
    let (keyd, app) = start(dir.path(), &[]);
    let signer = keyd.signer();
    let mut public = client(keyd.addr, &signer, None).await;
    let mut attested = client(keyd.addr, &signer, Some(&app)).await;
    let apps: KeyBundle = bundle(&mut public, "apps", &signer).await;

    let at = location("payments", "db", "password");
    let plain = |n: u32| format!("{SECRET}-{n}");
    let strict = seal_to(&apps, Scope::Strict, &at, plain(0).as_bytes());
    let namespace = seal_to(&apps, Scope::Namespace, &at, plain(1).as_bytes());
    let cluster = seal_to(&apps, Scope::Cluster, &at, plain(2).as_bytes());
    let stranger = SealingKeyPair::generate().unwrap();
    let unknown = coffer_sealed::seal(
        "apps",
        stranger.public(),
        &Binding::new(Scope::Strict, &at).unwrap(),
        plain(3).as_bytes(),
    )
    .unwrap()
    .to_text();

    let denied = |why: &str| Expect::Refused(Code::PermissionDenied, why.into());
    let cases: Vec<(String, Option<Location>, Expect)> = vec![
        (strict.clone(), Some(at.clone()), Expect::Plain(plain(0))),
        (
            strict.clone(),
            Some(location("shop", "db", "password")),
            denied("may not be used at shop/db/password"),
        ),
        (
            strict.clone(),
            Some(location("payments", "cache", "password")),
            denied("may not be used at payments/cache/password"),
        ),
        (
            strict.clone(),
            Some(location("payments", "db", "username")),
            denied("may not be used at payments/db/username"),
        ),
        (
            cluster.clone(),
            Some(location("payments", "api", "token")),
            denied("no grant under keyrings.apps.unseal"),
        ),
        (
            tampered(&strict),
            Some(at.clone()),
            Expect::Refused(Code::InvalidArgument, "does not open".into()),
        ),
        (
            unknown,
            Some(at.clone()),
            Expect::Refused(Code::NotFound, stranger.id().to_string()),
        ),
        (
            strict.clone(),
            None,
            Expect::Refused(Code::InvalidArgument, "location is missing".into()),
        ),
        (
            strict.clone(),
            Some(location("Payments", "db", "password")),
            Expect::Refused(Code::InvalidArgument, "invalid location".into()),
        ),
        (
            "coffer.v1.AAAA".into(),
            Some(at.clone()),
            Expect::Refused(Code::InvalidArgument, "not a sealed value".into()),
        ),
        (
            namespace.clone(),
            Some(location("payments", "db", "url")),
            Expect::Plain(plain(1)),
        ),
    ];

    let before = audit_records(&keyd.data).len();
    let results = attested
        .unseal_batch(batch(
            "apps",
            cases
                .iter()
                .map(|(sealed, at, _)| item(sealed, at.as_ref()))
                .collect(),
        ))
        .await
        .unwrap()
        .into_inner()
        .results;
    assert_eq!(results.len(), cases.len());
    for (i, ((_, _, expect), result)) in cases.iter().zip(&results).enumerate() {
        match (expect, result.result.as_ref().unwrap()) {
            (Expect::Plain(p), pb::unseal_result::Result::Plaintext(got)) => {
                assert_eq!(got, p.as_bytes(), "item {i}")
            }
            (Expect::Refused(code, why), pb::unseal_result::Result::Error(e)) => {
                assert_eq!(Code::from(e.code as i32), *code, "item {i}: {e:?}");
                assert!(e.message.contains(why.as_str()), "item {i}: {e:?}");
            }
            (_, other) => panic!("item {i}: unexpected {other:?}"),
        }
    }

    // One record per item, in the batch's order, each with the caller's verified measurement,
    // where the value was found, the binding it carries, and the item's own result.
    let records = audit_records(&keyd.data);
    let records = &records[before..];
    assert_eq!(records.len(), cases.len(), "{records:#?}");
    let measurement = hex::encode(executable_measurement().unwrap());
    for (i, ((sealed, at, expect), record)) in cases.iter().zip(records).enumerate() {
        assert_eq!(record["event"], "unseal", "item {i}: {record}");
        assert_eq!(record["keyring"], "apps", "item {i}: {record}");
        assert_eq!(record["caller"]["tee"], "sim", "item {i}: {record}");
        assert_eq!(record["caller"]["measurement"], measurement.as_str());
        assert_eq!(record["caller"]["role"], "app", "item {i}: {record}");
        match expect {
            Expect::Plain(_) => assert_eq!(record["result"], "ok", "item {i}: {record}"),
            Expect::Refused(code, why) => {
                let result = if *code == Code::PermissionDenied {
                    "denied"
                } else {
                    "error"
                };
                assert_eq!(record["result"], result, "item {i}: {record}");
                assert!(
                    record["reason"].as_str().unwrap().contains(why.as_str()),
                    "item {i}: {record}"
                );
            }
        }
        // A value that does not parse has no binding; a missing location is not one.
        if let Ok(value) = coffer_sealed::SealedValue::parse(sealed) {
            assert_eq!(
                record["binding"],
                value.binding().to_string(),
                "item {i}: {record}"
            );
            if let Some(at) = at.as_ref().filter(|at| at.namespace != "Payments") {
                let place = format!("{}/{}/{}", at.namespace, at.secret, at.key);
                assert_eq!(record["location"], place.as_str(), "item {i}: {record}");
            }
        } else {
            assert!(record["binding"].is_null(), "item {i}: {record}");
        }
    }
    assert_eq!(records[1]["binding"], "strict payments/db/password");
    assert_eq!(records[10]["binding"], "namespace payments");

    assert_secret_never_logged(&keyd);
    let (verified, out, err) = common::keyd::audit_verify(&keyd.data);
    assert!(verified, "{out}{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_batches_are_refused_for_their_size_caller_keyring_or_rate_and_nothing_is_unsealed() {
    let dir = tempfile::tempdir().unwrap();
    let (keyd, app) = start(
        dir.path(),
        &[
            "--rate-limit",
            "1",
            "--rate-burst",
            "20",
            "--max-message-bytes",
            "65536",
        ],
    );
    let signer = keyd.signer();
    let mut public = client(keyd.addr, &signer, None).await;
    let mut attested = client(keyd.addr, &signer, Some(&app)).await;
    let apps = bundle(&mut public, "apps", &signer).await;
    let at = location("payments", "db", "password");
    let sealed = seal_to(&apps, Scope::Strict, &at, SECRET.as_bytes());

    // 0 and 257 items: refused before anything is decided, or counted against the budget.
    for n in [0, MAX_UNSEAL_BATCH_ITEMS + 1] {
        let items = vec![item(&sealed, Some(&at)); n];
        let status = attested
            .unseal_batch(batch("apps", items))
            .await
            .expect_err("keyd took a batch of a size it must refuse");
        assert_eq!(status.code(), Code::InvalidArgument, "{n}: {status:?}");
        assert!(
            status
                .message()
                .contains(&format!("has {n} items; send 1 to 256")),
            "{status:?}"
        );
    }

    // A batch over --max-message-bytes is refused before it is read: nothing decided, nothing
    // audited, no rate token taken.
    let before = audit_records(&keyd.data).len();
    let big = seal_to(&apps, Scope::Strict, &at, &[b'x'; 8 << 10]);
    let status = attested
        .unseal_batch(batch("apps", vec![item(&big, Some(&at)); 10]))
        .await
        .expect_err("keyd took a batch over its message limit");
    assert!(
        matches!(status.code(), Code::OutOfRange | Code::ResourceExhausted),
        "{status:?}"
    );
    assert_eq!(audit_records(&keyd.data).len(), before);

    // No attestation: the whole call is refused, and audited once.
    let before = audit_records(&keyd.data).len();
    let status = public
        .unseal_batch(batch("apps", vec![item(&sealed, Some(&at)); 3]))
        .await
        .expect_err("keyd unsealed for an unattested caller");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(
        status.message().contains("presented no certificate"),
        "{status:?}"
    );
    let records = audit_records(&keyd.data);
    assert_eq!(records.len(), before + 1, "{records:#?}");
    assert_eq!(records[before]["result"], "denied");
    assert_eq!(records[before]["caller"]["tee"], "none");

    // A keyring the role may not unseal from.
    let status = attested
        .unseal_batch(batch("plain", vec![item(&sealed, Some(&at))]))
        .await
        .expect_err("keyd unsealed from a keyring without a grant");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(
        status.message().contains("keyrings.plain.unseal"),
        "{status:?}"
    );

    // Each item takes a token: a batch bigger than what is left of the burst is refused whole,
    // with nothing unsealed and nothing audited; a small one still passes.
    let before = audit_records(&keyd.data).len();
    let status = attested
        .unseal_batch(batch("apps", vec![item(&sealed, Some(&at)); 40]))
        .await
        .expect_err("keyd took a batch over the caller's rate budget");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("per-caller rate limit"),
        "{status:?}"
    );
    assert_eq!(audit_records(&keyd.data).len(), before);
    let results = attested
        .unseal_batch(batch("apps", vec![item(&sealed, Some(&at)); 2]))
        .await
        .unwrap()
        .into_inner()
        .results;
    assert!(results.iter().all(|r| matches!(
        r.result,
        Some(pb::unseal_result::Result::Plaintext(ref p)) if p == SECRET.as_bytes()
    )));
    assert_secret_never_logged(&keyd);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_splits_a_large_batch_and_returns_every_result_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let (keyd, _) = start(dir.path(), &[]);
    let signer = keyd.signer();
    let mut public = client(keyd.addr, &signer, None).await;
    let apps = bundle(&mut public, "apps", &signer).await;

    // 300 values: more than keyd takes in one call, so a client that did not split is refused.
    let n = 300;
    assert!(n > MAX_UNSEAL_BATCH_ITEMS);
    let places: Vec<Location> = (0..n)
        .map(|i| location("payments", "db", &format!("key-{i}")))
        .collect();
    let mut sealed: Vec<String> = places
        .iter()
        .enumerate()
        .map(|(i, at)| seal_to(&apps, Scope::Strict, at, format!("{SECRET}-{i}").as_bytes()))
        .collect();
    // One refused item in each call keeps per-item results in their places.
    sealed[7] = tampered(&sealed[7]);
    sealed[280] = tampered(&sealed[280]);
    let items: Vec<(&str, &Location)> = sealed.iter().map(String::as_str).zip(&places).collect();

    let mut keyd_client =
        KeydClient::connect(keyd.addr, client_options(&dir.path().join("app"), &signer))
            .await
            .unwrap();
    let before = audit_records(&keyd.data).len();
    let results = keyd_client.unseal_batch("apps", &items).await.unwrap();
    assert_eq!(results.len(), n);
    for (i, result) in results.iter().enumerate() {
        match result {
            Ok(plain) if i != 7 && i != 280 => {
                assert_eq!(plain.as_slice(), format!("{SECRET}-{i}").as_bytes())
            }
            Err(refusal) if i == 7 || i == 280 => {
                assert_eq!(refusal.code, Code::InvalidArgument, "{i}: {refusal:?}");
                assert!(refusal.message.contains("does not open"), "{refusal:?}");
            }
            other => panic!("item {i}: {:?}", other.as_ref().map(|_| "plaintext")),
        }
    }
    let records = audit_records(&keyd.data);
    let locations: Vec<&str> = records[before..]
        .iter()
        .map(|r| r["location"].as_str().unwrap())
        .collect();
    let expected: Vec<String> = (0..n).map(|i| format!("payments/db/key-{i}")).collect();
    assert_eq!(locations, expected);
    assert_secret_never_logged(&keyd);
}
