//! Sealed values against a real `coffer keyd serve` over real TCP and attested TLS: the public
//! key bundle and Reseal for callers without a TEE, sealing-key rotation and retirement with
//! the real CLI while keyd runs, and every refusal rule of Unseal, each audited.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use coffer_keyd::pb;
use coffer_keyd::pb::key_service_client::KeyServiceClient;
use coffer_platform::sim::SimPlatform;
use coffer_sealed::bundle::KeyBundle;
use coffer_sealed::{Binding, Location, Scope, SealedValue, SealingKeyPair};
use common::keyd::{
    audit_records, bundle, client, create_keyd_data, free_addr, keyd_cli, location, pb_location,
    seal_to, signer_role_policy, sim_role_policy, KeydProcess,
};
use tonic::transport::Channel;
use tonic::Code;

/// A secret whose bytes must never show up in keyd's log or audit log.
const SECRET: &[u8] = b"s3cr3t-db-password-7f1c2a";

/// Waits until keyd serves a bundle of `keyring` whose primary is `primary` and that lists
/// exactly `keys` keys: it reloads sealing-key changes made by the CLI.
async fn await_bundle(
    c: &mut KeyServiceClient<Channel>,
    keyring: &str,
    signer: &str,
    primary: &str,
    keys: usize,
) -> KeyBundle {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let b = bundle(c, keyring, signer).await;
        if b.primary().unwrap().id() == primary && b.keys().len() == keys {
            return b;
        }
        assert!(
            Instant::now() < deadline,
            "keyd did not reload the sealing keys"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// GetKeyBundle of `keyring`, which keyd must refuse: its status.
async fn bundle_refusal(c: &mut KeyServiceClient<Channel>, keyring: &str) -> tonic::Status {
    c.get_key_bundle(pb::GetKeyBundleRequest {
        keyring: keyring.into(),
    })
    .await
    .expect_err("keyd served a bundle it must refuse")
}

/// Reseal of `sealed` under `keyring`, which keyd must refuse: its status.
async fn reseal_refusal(
    c: &mut KeyServiceClient<Channel>,
    keyring: &str,
    sealed: &str,
) -> tonic::Status {
    c.reseal(pb::ResealRequest {
        keyring: keyring.into(),
        sealed: sealed.into(),
    })
    .await
    .expect_err("keyd resealed a value it must refuse")
}

/// Unseal `request`, which keyd must refuse with `code`: the refusal's message.
async fn unseal_refusal(
    c: &mut KeyServiceClient<Channel>,
    request: pb::UnsealRequest,
    code: Code,
) -> String {
    let status = c
        .unseal(request)
        .await
        .expect_err("keyd unsealed a value it must refuse");
    assert_eq!(status.code(), code, "{status:?}");
    status.message().to_string()
}

/// [`unseal_refusal`], whose message must contain `needle`.
async fn assert_unseal_refused(
    c: &mut KeyServiceClient<Channel>,
    request: pb::UnsealRequest,
    code: Code,
    needle: &str,
) {
    let m = unseal_refusal(c, request, code).await;
    assert!(m.contains(needle), "{m}");
}

/// Rotates `keyring`'s sealing key with the CLI; returns the new key's id.
fn rotate_sealing_key(data: &Path, keyring: &str) -> String {
    keyd_cli(data, &["sealing-key", "rotate", "--keyring", keyring])
        .split_whitespace()
        .find(|w| w.starts_with("sk-"))
        .unwrap()
        .to_string()
}

/// Asserts an audit record of `event` with `result` whose reason contains `reason` (and, if
/// given, at `at`).
fn assert_audited(data: &Path, event: &str, result: &str, reason: &str, at: Option<&str>) {
    let records = audit_records(data);
    assert!(
        records.iter().any(|r| r["event"] == event
            && r["result"] == result
            && r["reason"].as_str().unwrap_or("").contains(reason)
            && at.is_none_or(|at| r["location"] == at)),
        "no audit record {event}/{result} with {reason:?} at {at:?}: {records:#?}"
    );
}

fn assert_secret_never_logged(keyd: &KeydProcess, secret: &[u8]) {
    let secret = String::from_utf8_lossy(secret).into_owned();
    assert!(
        !keyd.log_text().contains(&secret),
        "keyd logged a plaintext"
    );
    let audit = std::fs::read_to_string(keyd.data.join("audit.log")).unwrap();
    assert!(!audit.contains(&secret), "the audit log holds a plaintext");
}

fn write(path: &Path, text: &str) -> std::path::PathBuf {
    std::fs::write(path, text).unwrap();
    path.to_path_buf()
}

/// Starts keyd with keyrings `apps` and `other`, and a policy giving role `app` to the sim
/// platform in `<dir>/app`; returns keyd and the app's platform.
fn start(dir: &Path, config: &str, extra: &[&str]) -> (KeydProcess, SimPlatform) {
    let data = dir.join("keyd");
    create_keyd_data(&data, &["apps", "other", "plain"]);
    let app = dir.join("app");
    let policy = sim_role_policy(dir, "app", &app);
    let config = write(&dir.join("keyd.yaml"), config);
    let mut flags = vec!["--reload-interval", "100ms"];
    flags.extend_from_slice(extra);
    let keyd = KeydProcess::start(&data, free_addr(), &policy, &config, &flags);
    (keyd, SimPlatform::open_or_create(&app).unwrap())
}

const CONFIG: &str = "keyrings:
  apps:
    unseal:
      - role: app
        namespaces: [\"payments\"]
        secrets: [\"db-*\"]
  other:
    unseal:
      - role: app
        namespaces: [\"*\"]
  plain:
    wrap: [app]
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workstation_gets_a_verified_bundle_and_reseals_after_rotation_and_retirement() {
    let dir = tempfile::tempdir().unwrap();
    let (keyd, app) = start(dir.path(), CONFIG, &[]);
    let data = keyd.data.clone();
    let signer = keyd.signer();
    let mut public = client(keyd.addr, &signer, None).await;
    let mut attested = client(keyd.addr, &signer, Some(&app)).await;

    // The keyring's first sealing key came with `keyring create`; the bundle verifies and
    // names it.
    let listed = keyd_cli(&data, &["sealing-key", "list", "--keyring", "apps"]);
    let first = bundle(&mut public, "apps", &signer).await;
    let first_id = first.primary().unwrap().id().to_string();
    assert!(
        listed.contains(&format!("{first_id}  created")) && listed.contains("primary"),
        "{listed}"
    );
    assert_audited(&data, "key-bundle", "ok", "", None);
    let records = audit_records(&data);
    assert!(
        records
            .iter()
            .any(|r| r["event"] == "key-bundle" && r["caller"]["tee"] == "none"),
        "{records:#?}"
    );

    let at = location("payments", "db-main", "password");
    let sealed = seal_to(&first, Scope::Strict, &at, SECRET);
    // A whole Secret's worth (1 MiB) fits keyd's default message limit.
    let big_plain = vec![0x5a; coffer_sealed::MAX_PLAINTEXT_LEN];
    let big = seal_to(&first, Scope::Namespace, &at, &big_plain);

    let second = rotate_sealing_key(&data, "apps");
    await_bundle(&mut public, "apps", &signer, &second, 2).await;

    let resealed = public
        .reseal(pb::ResealRequest {
            keyring: "apps".into(),
            sealed: sealed.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resealed.key_id, second);
    let before = SealedValue::parse(&sealed).unwrap();
    let after = SealedValue::parse(&resealed.sealed).unwrap();
    assert_eq!(after.key_id(), second);
    assert_eq!(after.binding(), before.binding());
    assert_eq!(after.keyring(), "apps");
    assert_audited(&data, "reseal", "ok", "", None);

    let big_resealed = public
        .reseal(pb::ResealRequest {
            keyring: "apps".into(),
            sealed: big,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(big_resealed.key_id, second);

    // The attested workload opens both the resealed and the original value.
    for value in [&resealed.sealed, &sealed] {
        let plain = attested
            .unseal(pb::UnsealRequest {
                keyring: "apps".into(),
                sealed: value.clone(),
                location: pb_location(&at),
            })
            .await
            .unwrap()
            .into_inner()
            .plaintext;
        assert_eq!(plain, SECRET);
    }
    let plain = attested
        .unseal(pb::UnsealRequest {
            keyring: "apps".into(),
            sealed: big_resealed.sealed,
            location: pb_location(&location("payments", "db-other", "k")),
        })
        .await
        .unwrap()
        .into_inner()
        .plaintext;
    assert!(plain == big_plain);
    assert_audited(&data, "unseal", "ok", "", Some("payments/db-main/password"));

    // Public refusals: named keyring problems, bad values.
    let status = bundle_refusal(&mut public, "ghost").await;
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    let status = bundle_refusal(&mut public, "Bad_Name").await;
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let status = reseal_refusal(&mut public, "apps", "coffer.v1.not-a-value").await;
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let status = reseal_refusal(&mut public, "other", &sealed).await;
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("keyring \"apps\""), "{status:?}");

    // Retirement: never the primary; the others only with --confirm, after a warning.
    let retire = |key_id: &str, confirm: bool| {
        let mut args = vec![
            "keyd",
            "sealing-key",
            "retire",
            "--keyring",
            "apps",
            "--key-id",
            key_id,
            "--platform",
            "sim",
            "--data-dir",
            data.to_str().unwrap(),
        ];
        if confirm {
            args.push("--confirm");
        }
        common::coffer(&args)
    };
    let out = retire(&second, true);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("rotate first"),
        "{err}"
    );
    let out = retire(&first_id, false);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("Reseal them first"),
        "{err}"
    );
    let out = retire(&first_id, true);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("can no longer be unsealed"));
    let listed = keyd_cli(&data, &["sealing-key", "list", "--keyring", "apps"]);
    assert!(
        listed.contains(&format!("{first_id}  created")) && listed.contains("retired"),
        "{listed}"
    );

    await_bundle(&mut public, "apps", &signer, &second, 1).await;
    let status = reseal_refusal(&mut public, "apps", &sealed).await;
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains("was retired"), "{status:?}");
    assert_audited(&data, "reseal", "error", "was retired", None);

    assert_secret_never_logged(&keyd, SECRET);
    let (verified, out, err) = common::keyd::audit_verify(&data);
    assert!(verified, "{out}{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unseal_refuses_in_order_and_audits_every_refusal() {
    let dir = tempfile::tempdir().unwrap();
    let (keyd, app) = start(dir.path(), CONFIG, &[]);
    let data = keyd.data.clone();
    let signer = keyd.signer();
    let mut public = client(keyd.addr, &signer, None).await;
    let mut attested = client(keyd.addr, &signer, Some(&app)).await;
    let apps = bundle(&mut public, "apps", &signer).await;
    let other = bundle(&mut public, "other", &signer).await;
    let at = location("payments", "db-main", "password");
    let strict = seal_to(&apps, Scope::Strict, &at, SECRET);
    let cluster = seal_to(&apps, Scope::Cluster, &at, SECRET);

    let unseal = |keyring: &str, sealed: &str, at: Option<&Location>| pb::UnsealRequest {
        keyring: keyring.into(),
        sealed: sealed.into(),
        location: at.and_then(pb_location),
    };

    // 1. No attestation.
    assert_unseal_refused(
        &mut public,
        unseal("apps", &strict, Some(&at)),
        Code::PermissionDenied,
        "presented no certificate",
    )
    .await;
    assert_audited(&data, "unseal", "denied", "presented no certificate", None);

    // 2. A keyring name that is not one.
    assert_unseal_refused(
        &mut attested,
        unseal("Bad_Name", &strict, Some(&at)),
        Code::InvalidArgument,
        "invalid keyring name",
    )
    .await;
    assert_audited(&data, "unseal", "error", "invalid keyring name", None);

    // 3. An unknown keyring and one without a grant for the role read the same.
    let ghost = unseal_refusal(
        &mut attested,
        unseal("ghost", &strict, Some(&at)),
        Code::PermissionDenied,
    )
    .await;
    let plain = unseal_refusal(
        &mut attested,
        unseal("plain", &strict, Some(&at)),
        Code::PermissionDenied,
    )
    .await;
    assert_eq!(ghost.replace("ghost", "plain"), plain);
    assert_audited(&data, "unseal", "denied", "keyrings.plain.unseal", None);

    // 4. Malformed value, another keyring's value, no or a bad location.
    assert_unseal_refused(
        &mut attested,
        unseal("apps", "coffer.v1.AAAA", Some(&at)),
        Code::InvalidArgument,
        "not a sealed value",
    )
    .await;
    let foreign = seal_to(&other, Scope::Strict, &at, SECRET);
    assert_unseal_refused(
        &mut attested,
        unseal("apps", &foreign, Some(&at)),
        Code::InvalidArgument,
        "sealed to keyring \"other\"",
    )
    .await;
    assert_unseal_refused(
        &mut attested,
        unseal("apps", &strict, None),
        Code::InvalidArgument,
        "location is missing",
    )
    .await;
    let bad = location("Payments", "db-main", "password");
    assert_unseal_refused(
        &mut attested,
        unseal("apps", &strict, Some(&bad)),
        Code::InvalidArgument,
        "invalid location",
    )
    .await;
    assert_audited(&data, "unseal", "error", "location is missing", None);

    // 5. The binding does not admit where the value was found.
    let moved = location("payments", "db-main", "username");
    assert_unseal_refused(
        &mut attested,
        unseal("apps", &strict, Some(&moved)),
        Code::PermissionDenied,
        "may not be used at payments/db-main/username",
    )
    .await;
    assert_audited(
        &data,
        "unseal",
        "denied",
        "may not be used",
        Some("payments/db-main/username"),
    );

    // 6. The binding admits it (cluster scope) but no grant of the role covers the place.
    for place in [
        location("shop", "db-main", "password"),
        location("payments", "api-token", "token"),
    ] {
        assert_unseal_refused(
            &mut attested,
            unseal("apps", &cluster, Some(&place)),
            Code::PermissionDenied,
            "no grant under keyrings.apps.unseal",
        )
        .await;
    }
    assert_audited(
        &data,
        "unseal",
        "denied",
        "no grant",
        Some("shop/db-main/password"),
    );

    // 8. A key keyd never had.
    let stranger = SealingKeyPair::generate().unwrap();
    let unknown = coffer_sealed::seal(
        "apps",
        stranger.public(),
        &Binding::new(Scope::Strict, &at).unwrap(),
        SECRET,
    )
    .unwrap()
    .to_text();
    assert_unseal_refused(
        &mut attested,
        unseal("apps", &unknown, Some(&at)),
        Code::NotFound,
        stranger.id(),
    )
    .await;

    // 9. A value whose ciphertext was altered.
    let mut tampered = strict.clone().into_bytes();
    let i = tampered.len() - 12;
    tampered[i] = if tampered[i] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    assert_unseal_refused(
        &mut attested,
        unseal("apps", &tampered, Some(&at)),
        Code::InvalidArgument,
        "does not open",
    )
    .await;
    assert_audited(
        &data,
        "unseal",
        "error",
        "does not open",
        Some("payments/db-main/password"),
    );

    // 7. A retired key: rotate, retire the first key, wait for keyd to reload.
    let first = apps.primary().unwrap().id().to_string();
    let second = rotate_sealing_key(&data, "apps");
    keyd_cli(
        &data,
        &[
            "sealing-key",
            "retire",
            "--keyring",
            "apps",
            "--key-id",
            &first,
            "--confirm",
        ],
    );
    await_bundle(&mut public, "apps", &signer, &second, 1).await;
    assert_unseal_refused(
        &mut attested,
        unseal("apps", &strict, Some(&at)),
        Code::FailedPrecondition,
        "was retired; the value cannot be recovered",
    )
    .await;
    assert_audited(
        &data,
        "unseal",
        "error",
        "was retired",
        Some("payments/db-main/password"),
    );

    assert_secret_never_logged(&keyd, SECRET);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_calls_have_their_own_rate_limit_per_address() {
    let dir = tempfile::tempdir().unwrap();
    let (keyd, _) = start(
        dir.path(),
        CONFIG,
        &["--public-rate-per-second", "1", "--public-rate-burst", "3"],
    );
    let signer = keyd.signer();
    let mut public = client(keyd.addr, &signer, None).await;
    let mut exhausted = 0;
    for _ in 0..10 {
        match public
            .get_key_bundle(pb::GetKeyBundleRequest {
                keyring: "apps".into(),
            })
            .await
        {
            Ok(_) => {}
            Err(status) => {
                assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                assert!(
                    status.message().contains("--public-rate-per-second"),
                    "{status:?}"
                );
                exhausted += 1;
            }
        }
    }
    assert!(
        exhausted > 0,
        "ten bundles in a row passed a burst of three"
    );
}

#[test]
fn keyd_refuses_an_unseal_grant_of_an_undefined_role() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("keyd");
    let policy = signer_role_policy(dir.path(), "app", &"ab".repeat(32));
    for (config, needles) in [
        (
            "keyrings:\n  apps:\n    unseal:\n      - {role: ap, namespaces: [\"*\"]}\n",
            &["grants unseal to role \"ap\""][..],
        ),
        (
            "keyrings:\n  apps:\n    unseal:\n      - {role: app, namespaces: [\"Payments\"]}\n",
            &["namespace pattern", "line 4"][..],
        ),
    ] {
        let config = write(&dir.path().join("keyd.yaml"), config);
        let out = common::coffer(&[
            "keyd",
            "serve",
            "--platform",
            "sim",
            "--data-dir",
            data.to_str().unwrap(),
            "--listen",
            &free_addr().to_string(),
            "--policy",
            policy.to_str().unwrap(),
            "--config",
            config.to_str().unwrap(),
        ]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && needles.iter().all(|n| err.contains(n)),
            "{err}"
        );
    }
}

/// Every file under `dir` whose name marks a writer's temporary.
fn temporaries(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.to_string_lossy().contains(".tmp-") {
                out.push(path);
            }
        }
    }
    out
}

#[test]
fn a_killed_sealing_key_rotation_leaves_nothing_behind_once_keyd_starts() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("keyd");
    create_keyd_data(&data, &["apps"]);
    let before = std::fs::read(data.join("keyrings/apps/sealing-keys.json")).unwrap();
    // Killed between writing its complete temporary (a new sealed private key) and the rename.
    let mut child = std::process::Command::new(common::coffer_bin())
        .args([
            "keyd",
            "sealing-key",
            "rotate",
            "--keyring",
            "apps",
            "--platform",
            "sim",
        ])
        .arg("--data-dir")
        .arg(&data)
        .env("COFFER_TEST_ONLY_STALL_AFTER_TEMP", "sealing-keys.json")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let stalled = stderr
        .lines()
        .any(|l| l.unwrap().starts_with("coffer-test: temp complete "));
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(stalled, "the rotation never wrote its temporary");
    assert_eq!(temporaries(&data).len(), 1);
    assert_eq!(
        std::fs::read(data.join("keyrings/apps/sealing-keys.json")).unwrap(),
        before,
        "a killed rotation changed the file"
    );

    let policy = signer_role_policy(dir.path(), "app", &"ab".repeat(32));
    let config = write(
        &dir.path().join("keyd.yaml"),
        CONFIG.split("  other:").next().unwrap(),
    );
    let mut keyd = KeydProcess::start(&data, free_addr(), &policy, &config, &[]);
    assert_eq!(keyd.terminate(), Some(0), "{}", keyd.log_text());
    assert!(temporaries(&data).is_empty(), "{:?}", temporaries(&data));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyring_without_sealing_keys_says_what_to_run_and_serve_init_gives_it_one() {
    let dir = tempfile::tempdir().unwrap();
    let (mut keyd, _) = start(dir.path(), CONFIG, &[]);
    let data = keyd.data.clone();
    let signer = keyd.signer();
    keyd.terminate();
    // A keyring created before sealing keys existed.
    std::fs::remove_file(data.join("keyrings/plain/sealing-keys.json")).unwrap();
    let (policy, config) = (dir.path().join("policy.yaml"), dir.path().join("keyd.yaml"));
    let keyd = KeydProcess::start(&data, free_addr(), &policy, &config, &[]);
    let mut public = client(keyd.addr, &signer, None).await;
    let status = bundle_refusal(&mut public, "plain").await;
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(
        status
            .message()
            .contains("run coffer keyd sealing-key rotate --keyring plain"),
        "{status:?}"
    );
    let status = keyd_cli(&data, &["status"]);
    assert!(
        status.contains("no sealing key (coffer keyd sealing-key rotate --keyring plain)"),
        "{status}"
    );
    drop(keyd);
    let keyd = KeydProcess::start(&data, free_addr(), &policy, &config, &["--init"]);
    let mut public = client(keyd.addr, &signer, None).await;
    let plain = bundle(&mut public, "plain", &signer).await;
    assert_eq!(plain.keys().len(), 1);
    let status = keyd_cli(&data, &["status"]);
    assert!(
        status.contains(&format!("sealing key {}", plain.primary().unwrap().id())),
        "{status}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sealing_key_file_edited_outside_keyd_is_refused_and_keyd_keeps_its_keys() {
    let dir = tempfile::tempdir().unwrap();
    let (keyd, _) = start(dir.path(), CONFIG, &[]);
    let signer = keyd.signer();
    let mut public = client(keyd.addr, &signer, None).await;
    let primary = rotate_sealing_key(&keyd.data, "apps");
    await_bundle(&mut public, "apps", &signer, &primary, 2).await;

    // Someone with write access to keyd's disk makes clients seal to the older key.
    let path = keyd.data.join("keyrings/apps/sealing-keys.json");
    let mut file: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    file["primary"] = file["keys"][0]["id"].clone();
    assert_ne!(file["primary"], primary.as_str());
    std::fs::write(&path, serde_json::to_vec_pretty(&file).unwrap()).unwrap();

    let deadline = Instant::now() + Duration::from_secs(30);
    while !keyd.log_text().contains("modified outside keyd") {
        assert!(
            Instant::now() < deadline,
            "keyd never refused the edited file: {}",
            keyd.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        keyd.log_text().contains("still serving the previous keys"),
        "{}",
        keyd.log_text()
    );
    let served = bundle(&mut public, "apps", &signer).await;
    assert_eq!(served.primary().unwrap().id(), primary);
    assert_eq!(served.keys().len(), 2);
}
