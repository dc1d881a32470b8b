//! `verify-key` offline, and `fetch-key` / `reseal` against a real `coffer keyd serve` (sim).

mod common;

use common::sealing::{KeydProcess, SimKeyd};
use common::{fails_with, inspect_check, kubectl, seal_db, text};

#[test]
fn verify_key_checks_evidence_and_policy_offline() {
    let dir = tempfile::tempdir().unwrap();
    let keyd = SimKeyd::new(dir.path(), "apps", 2);
    let bundle = keyd.write_bundle(&dir.path().join("bundle.json"));
    let bundle = bundle.to_str().unwrap();
    let allow = keyd.policy(&dir.path().join("allow.yaml"), true);
    let out = kubectl(&[
        "coffer",
        "verify-key",
        "--key-bundle",
        bundle,
        "--policy",
        allow.to_str().unwrap(),
        "--keyring",
        "apps",
    ]);
    let (_, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("verified keyd: TEE sim"), "{stderr}");
    assert!(stderr.contains("SIMULATION"), "{stderr}");
    assert!(
        stderr.contains(&format!("{} (primary)", keyd.keys[1].id())),
        "{stderr}"
    );

    // A production policy refuses simulation evidence.
    let deny = keyd.policy(&dir.path().join("deny.yaml"), false);
    fails_with(
        &kubectl(&[
            "coffer",
            "verify-key",
            "--key-bundle",
            bundle,
            "--policy",
            deny.to_str().unwrap(),
        ]),
        "simulation evidence refused",
    );
    // Evidence from another identity than the policy names.
    let stranger = SimKeyd::new(&dir.path().join("stranger"), "apps", 1);
    let foreign = stranger.policy(&dir.path().join("stranger.yaml"), true);
    fails_with(
        &kubectl(&[
            "coffer",
            "verify-key",
            "--key-bundle",
            bundle,
            "--policy",
            foreign.to_str().unwrap(),
        ]),
        "does not verify",
    );
    // Another keyring than expected.
    fails_with(
        &kubectl(&[
            "coffer",
            "verify-key",
            "--key-bundle",
            bundle,
            "--policy",
            allow.to_str().unwrap(),
            "--keyring",
            "payments",
        ]),
        "is for keyring \"apps\", not \"payments\"",
    );
}

fn primary_of(path: &std::path::Path) -> String {
    let bundle =
        coffer_sealed::bundle::KeyBundle::from_json(&std::fs::read(path).unwrap()).unwrap();
    bundle.primary().unwrap().id().to_string()
}

/// `kubectl coffer reseal -f <file> --in-place` against `keyd`, trusting it by its policy.
fn reseal_in_place(file: &str, keyd: &KeydProcess) -> std::process::Output {
    kubectl(&[
        "coffer",
        "reseal",
        "-f",
        file,
        "--in-place",
        "--keyd",
        &keyd.addr,
        "--policy",
        keyd.policy.to_str().unwrap(),
    ])
}

#[test]
fn fetch_key_pins_and_reseal_moves_values_to_the_new_key() {
    let dir = tempfile::tempdir().unwrap();
    let keyd = KeydProcess::start(dir.path(), "apps");
    let policy = keyd.policy.to_str().unwrap();
    let pinned = dir.path().join("bundle.json");
    let pin = pinned.to_str().unwrap();
    let fetch = |out: &str, force: bool| {
        let mut args = vec![
            "coffer",
            "fetch-key",
            "--keyd",
            &keyd.addr,
            "--keyring",
            "apps",
            "--policy",
            policy,
            "-o",
            out,
        ];
        if force {
            args.push("--force");
        }
        kubectl(&args)
    };
    let out = fetch(pin, false);
    let (_, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("verified keyd: TEE sim") && stderr.contains("SIMULATION"),
        "{stderr}"
    );
    let first = primary_of(&pinned);
    assert!(text(&fetch(pin, false)).1.contains("unchanged"));

    // Seal offline, and online (verified on the way).
    let sealed = common::ok(&seal_db(&[
        "--from-literal",
        "pw=hunter2",
        "--from-literal",
        "user=app",
        "--key-bundle",
        pin,
    ]));
    let online = common::ok(&seal_db(&[
        "--from-literal",
        "pw=hunter2",
        "--keyd",
        &keyd.addr,
        "--keyring",
        "apps",
        "--policy",
        policy,
    ]));
    assert!(online.contains(&first));
    let file = dir.path().join("db.yaml");
    std::fs::write(&file, &sealed).unwrap();

    // Rotate; keyd's bundle changes once it reloads.
    keyd.rotate("apps");
    let fresh = dir.path().join("fresh.json");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let _ = std::fs::remove_file(&fresh);
        let out = fetch(fresh.to_str().unwrap(), false);
        if out.status.success() && primary_of(&fresh) != first {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "keyd never served the new key"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let second = primary_of(&fresh);

    // The pinned file is not replaced by a different bundle without --force.
    let before = std::fs::read(&pinned).unwrap();
    fails_with(&fetch(pin, false), "--force");
    assert_eq!(std::fs::read(&pinned).unwrap(), before);

    // inspect --check flags the old key; reseal moves every value; then --check passes.
    let f = file.to_str().unwrap();
    let stale = inspect_check(f, &fresh);
    assert_eq!(stale.status.code(), Some(1), "{}", text(&stale).0);
    let out = reseal_in_place(f, &keyd);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stdout.is_empty() && stderr.contains("re-sealed 2 value(s)"),
        "{stderr}"
    );
    let resealed = std::fs::read_to_string(f).unwrap();
    assert!(
        resealed.contains(&second) && !resealed.contains(&first),
        "{resealed}"
    );
    assert!(!resealed.contains("hunter2"));
    common::ok(&inspect_check(f, &fresh));
    assert!(common::files_containing(dir.path(), b"hunter2").is_empty());
}

#[test]
fn fetch_key_refuses_what_the_policy_refuses_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let keyd = KeydProcess::start(dir.path(), "apps");
    let strict = dir.path().join("no-sim.yaml");
    std::fs::write(
        &strict,
        std::fs::read_to_string(&keyd.policy)
            .unwrap()
            .replace("allow_simulation: true", "allow_simulation: false"),
    )
    .unwrap();
    let out_file = dir.path().join("bundle.json");
    for (keyring, policy, needle) in [
        ("apps", &strict, "simulation evidence refused"),
        ("nope", &keyd.policy, "nope"),
    ] {
        let out = kubectl(&[
            "coffer",
            "fetch-key",
            "--keyd",
            &keyd.addr,
            "--keyring",
            keyring,
            "--policy",
            policy.to_str().unwrap(),
            "-o",
            out_file.to_str().unwrap(),
        ]);
        fails_with(&out, needle);
        assert!(!out_file.exists());
    }
}

#[test]
fn fetch_key_gives_up_on_a_keyd_address_that_never_answers_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let policy = SimKeyd::new(dir.path(), "apps", 1).policy(&dir.path().join("p.yaml"), true);
    // Accepts TCP (the kernel's backlog) but never speaks TLS, like a wrong port or a
    // half-open proxy.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap().to_string();
    let out_file = dir.path().join("bundle.json");
    let fetch = |timeout: &str| {
        kubectl(&[
            "coffer",
            "fetch-key",
            "--keyd",
            &addr,
            "--keyring",
            "apps",
            "--policy",
            policy.to_str().unwrap(),
            "--timeout",
            timeout,
            "-o",
            out_file.to_str().unwrap(),
        ])
    };

    let stderr = fails_with(
        &fetch("1s"),
        &format!("keyd at {addr} did not answer within 1s"),
    );
    assert!(stderr.contains("is keyd listening there?"), "{stderr}");
    assert!(stderr.contains("firewall"), "{stderr}");
    assert!(!out_file.exists());

    for out_of_range in ["500ms", "6m"] {
        fails_with(&fetch(out_of_range), "must be between 1s and 5m");
    }
    fails_with(&fetch("soon"), "such as 10s");
    assert!(!out_file.exists());
}

#[test]
fn reseal_waits_out_keyds_rate_limit() {
    let dir = tempfile::tempdir().unwrap();
    // One certificate-less call per second, bursts of 2: re-sealing 6 values must back off.
    let keyd = KeydProcess::start_with(
        dir.path(),
        "apps",
        &["--public-rate-per-second", "1", "--public-rate-burst", "2"],
    );
    let policy = keyd.policy.to_str().unwrap();
    let literals: Vec<String> = (0..6).map(|i| format!("k{i}=value-{i}")).collect();
    let mut args = vec![
        "coffer",
        "seal",
        "generic",
        "db",
        "-n",
        "apps",
        "--keyd",
        &keyd.addr,
        "--keyring",
        "apps",
        "--policy",
        policy,
    ];
    for literal in &literals {
        args.extend(["--from-literal", literal.as_str()]);
    }
    let file = dir.path().join("db.yaml");
    std::fs::write(&file, common::ok(&kubectl(&args))).unwrap();
    let first = std::fs::read_to_string(&file).unwrap();
    keyd.rotate("apps");
    let f = file.to_str().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let out = reseal_in_place(f, &keyd);
        let (_, stderr) = text(&out);
        assert!(out.status.success(), "{stderr}");
        if stderr.contains("re-sealed 6 value(s)") {
            break;
        }
        // keyd had not reloaded the rotated keys yet: nothing was stale.
        assert!(stderr.contains("re-sealed 0 value(s)"), "{stderr}");
        assert!(
            std::time::Instant::now() < deadline,
            "keyd never served the new key"
        );
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    assert_ne!(std::fs::read_to_string(&file).unwrap(), first);
}
