//! `coffer keyd serve` as a real process: callers over real TCP with mutual attested TLS get
//! exactly what the policy and the keyring ACL grant them.

mod common;

use coffer_keyd_client::KeydClient;
use common::coffer;
use common::keyd::{
    audit_verify, client_options, create_keyd_data, free_addr, sim_role_policy, sim_signer,
    KeydProcess,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyd_process_serves_only_what_each_caller_is_granted() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("keyd");
    create_keyd_data(&data, &["cluster-a", "cluster-b"]);
    let (a, b, stranger) = (
        dir.path().join("a"),
        dir.path().join("b"),
        dir.path().join("c"),
    );
    let policy = dir.path().join("policy.yaml");
    std::fs::write(
        &policy,
        format!(
            "version: 1\nallow_simulation: true\nroles:\n  - name: kms-plugin:a\n    sim: {{ signer: [\"{}\"] }}\n  - name: kms-plugin:b\n    sim: {{ signer: [\"{}\"] }}\n",
            sim_signer(&a),
            sim_signer(&b)
        ),
    )
    .unwrap();
    let config = dir.path().join("keyd.yaml");
    std::fs::write(
        &config,
        "keyrings:\n  cluster-a:\n    wrap: [\"kms-plugin:a\"]\n    unwrap: [\"kms-plugin:a\"]\n    status: [\"kms-plugin:a\"]\n  cluster-b:\n    wrap: [\"kms-plugin:b\"]\n    unwrap: [\"kms-plugin:b\"]\n",
    )
    .unwrap();
    let metrics_addr = free_addr();
    let mut keyd = KeydProcess::start(
        &data,
        free_addr(),
        &policy,
        &config,
        &["--metrics-addr", &metrics_addr.to_string()],
    );
    let keyd_signer = keyd.signer();

    // Caller A: wrap and unwrap on its own keyring.
    let mut client_a = KeydClient::connect(keyd.addr, client_options(&a, &keyd_signer))
        .await
        .unwrap();
    let secret = [0x5au8; 32];
    let (ciphertext, key_id) = client_a.wrap("cluster-a", &secret).await.unwrap();
    let plain = client_a
        .unwrap("cluster-a", Some(&key_id), &ciphertext)
        .await
        .unwrap();
    assert_eq!(plain.as_slice(), &secret);
    assert_eq!(client_a.status("cluster-a").await.unwrap().0, key_id);

    // Caller B (role kms-plugin:b) may not unwrap cluster A's data; nothing is unwrapped.
    let mut client_b = KeydClient::connect(keyd.addr, client_options(&b, &keyd_signer))
        .await
        .unwrap();
    let err = client_b
        .unwrap("cluster-a", Some(&key_id), &ciphertext)
        .await
        .unwrap_err();
    let status = err.status().expect("a gRPC status");
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    assert!(
        status.message().contains("kms-plugin:b"),
        "{}",
        status.message()
    );
    // An unknown keyring gets the same answer as a forbidden one: no probing for names.
    let err = client_b.status("cluster-zz").await.unwrap_err();
    assert_eq!(err.status().unwrap().code(), tonic::Code::PermissionDenied);
    // ... nor rotate anything (no role has rotate).
    let err = client_a.rotate("cluster-a").await.unwrap_err();
    assert_eq!(err.status().unwrap().code(), tonic::Code::PermissionDenied);

    // A caller whose evidence maps to no role is refused, and told why.
    let mut c = KeydClient::connect(keyd.addr, client_options(&stranger, &keyd_signer))
        .await
        .unwrap();
    let err = c.status("cluster-a").await.unwrap_err();
    let status = err.status().expect("a gRPC status");
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    assert!(
        status.message().contains("attestation policy refused"),
        "{}",
        status.message()
    );

    // A client that expects another keyd refuses this one.
    let wrong = KeydClient::connect(keyd.addr, client_options(&a, &"00".repeat(32))).await;
    let wrong = match wrong {
        Ok(mut c) => c.status("cluster-a").await.map(|_| ()),
        Err(e) => Err(e),
    };
    assert!(
        wrong.is_err(),
        "client accepted a keyd its policy does not name"
    );

    // /metrics counts the calls; /healthz is ok.
    let metrics = http_get(metrics_addr, "/metrics");
    assert!(
        metrics.contains("coffer_keyd_requests_total{operation=\"unwrap\",code=\"OK\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("coffer_keyd_connections_total{result=\"refused\"}"),
        "{metrics}"
    );
    assert!(http_get(metrics_addr, "/healthz").contains("ok"));

    assert_eq!(keyd.terminate(), Some(0));
    let text = keyd.log_text();
    assert!(text.contains("SIMULATION PLATFORM"), "{text}");

    // The audit log names every call with the caller's verified identity, chains, and holds
    // no secret.
    let audit = std::fs::read_to_string(data.join("audit.log")).unwrap();
    let records: Vec<serde_json::Value> = audit
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let find = |event: &str, result: &str| {
        records
            .iter()
            .filter(|r| r["event"] == event && r["result"] == result)
            .count()
    };
    assert_eq!(find("wrap", "ok"), 1, "{audit}");
    assert_eq!(find("unwrap", "ok"), 1, "{audit}");
    assert!(find("unwrap", "denied") >= 1, "{audit}");
    assert!(find("connect", "denied") >= 1, "{audit}");
    let unwrap_ok = records
        .iter()
        .find(|r| r["event"] == "unwrap" && r["result"] == "ok")
        .unwrap();
    assert_eq!(unwrap_ok["caller"]["role"], "kms-plugin:a");
    assert_eq!(unwrap_ok["caller"]["tee"], "sim");
    assert_eq!(unwrap_ok["keyring"], "cluster-a");
    assert_eq!(unwrap_ok["key_id"], key_id.as_str());
    for needle in [hex::encode(secret), "WlpaWlpa".to_string()] {
        assert!(!audit.contains(&needle), "secret in the audit log");
        assert!(!text.contains(&needle), "secret in keyd's log");
    }
    let (ok, stdout, stderr) = audit_verify(&data);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains(&format!("{} records", records.len())),
        "{stdout}"
    );

    // Someone edits a record: verify names the line.
    let mut lines: Vec<String> = audit.lines().map(str::to_string).collect();
    let edited = lines.iter().position(|l| l.contains("\"denied\"")).unwrap();
    lines[edited] = lines[edited].replace("\"denied\"", "\"ok\"");
    std::fs::write(data.join("audit.log"), lines.join("\n") + "\n").unwrap();
    let out = coffer(&[
        "keyd",
        "audit",
        "verify",
        "--platform",
        "sim",
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("line {}", edited + 1)), "{err}");
}

fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    stream.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn keyd_refuses_bad_configuration_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("keyd");
    let args = |extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = vec!["keyd".into()];
        v.extend(extra.iter().map(|s| s.to_string()));
        v.extend(["--platform", "sim", "--data-dir", data.to_str().unwrap()].map(String::from));
        v
    };
    let run = |extra: &[&str]| {
        let a = args(extra);
        coffer(&a.iter().map(String::as_str).collect::<Vec<_>>())
    };
    // Not initialised yet: says what to run.
    let out = run(&["keyring", "create", "a"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("coffer keyd init") || err.contains("does not exist"),
        "{err}"
    );
    assert!(run(&["init"]).status.success());
    // A second init never replaces the root.
    let out = run(&["init"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));
    let out = run(&["keyring", "create", "Bad_Name"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("keyring name"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let config = dir.path().join("keyd.yaml");
    std::fs::write(&config, "keyrings:\n  a:\n    decrypt: [x]\n").unwrap();
    let policy = dir.path().join("policy.yaml");
    std::fs::write(&policy, "version: 1\nroles: []\n").unwrap();
    assert!(coffer(&[
        "keyd",
        "keyring",
        "create",
        "a",
        "--platform",
        "sim",
        "--data-dir",
        data.to_str().unwrap()
    ])
    .status
    .success());
    let out = coffer(&[
        "keyd",
        "serve",
        "--platform",
        "sim",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        data.to_str().unwrap(),
        "--policy",
        policy.to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("unknown field"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyd_enforces_rate_connection_and_size_limits() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("keyd");
    create_keyd_data(&data, &["cluster-a"]);
    let (a, other) = (dir.path().join("a"), dir.path().join("other"));
    let policy = sim_role_policy(dir.path(), "kms-plugin:a", &a);
    let config = dir.path().join("keyd.yaml");
    std::fs::write(
        &config,
        "keyrings:\n  cluster-a:\n    wrap: [\"kms-plugin:a\"]\n    status: [\"kms-plugin:a\"]\n",
    )
    .unwrap();
    let keyd = KeydProcess::start(
        &data,
        free_addr(),
        &policy,
        &config,
        &[
            "--rate-limit",
            "1",
            "--rate-burst",
            "3",
            "--max-connections",
            "1",
            "--max-message-bytes",
            "1024",
        ],
    );
    // keyd's start-up probe held the only connection slot for a moment; wait for it.
    let mut attempts = 0;
    let mut client = loop {
        match KeydClient::connect(keyd.addr, client_options(&a, &keyd.signer())).await {
            Ok(client) => break client,
            Err(e) if attempts < 50 => {
                attempts += 1;
                eprintln!("retrying: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            Err(e) => panic!("{e}"),
        }
    };

    // A message over --max-message-bytes is refused before it is parsed.
    let err = client.wrap("cluster-a", &[1; 2000]).await.unwrap_err();
    let status = err.status().expect("a gRPC status");
    assert!(
        matches!(
            status.code(),
            tonic::Code::OutOfRange | tonic::Code::ResourceExhausted
        ),
        "{status:?}"
    );

    // The burst of 3 is spent (the oversized call never reached the handler); then the
    // caller is told it is over its rate.
    let mut codes = Vec::new();
    for _ in 0..5 {
        codes.push(match client.status("cluster-a").await {
            Ok(_) => tonic::Code::Ok,
            Err(e) => e.status().unwrap().code(),
        });
    }
    assert_eq!(&codes[..3], &[tonic::Code::Ok; 3], "{codes:?}");
    assert!(
        codes[3..].contains(&tonic::Code::ResourceExhausted),
        "{codes:?}"
    );
    let err = client.status("cluster-a").await.unwrap_err();
    assert!(
        err.status().unwrap().message().contains("rate limit"),
        "{err}"
    );

    // One connection is open; a second is closed at once, and the first still works later.
    let second = async {
        let mut c = KeydClient::connect(keyd.addr, client_options(&other, &keyd.signer())).await?;
        c.status("cluster-a").await
    }
    .await;
    assert!(
        second.is_err(),
        "a connection over --max-connections was served"
    );
    assert!(
        keyd.log_text().contains("connection limit reached"),
        "{}",
        keyd.log_text()
    );
}

#[test]
fn a_crash_mid_audit_write_is_repaired_without_losing_anything() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("keyd");
    create_keyd_data(&data, &["cluster-a"]);
    let policy = dir.path().join("policy.yaml");
    std::fs::write(&policy, "version: 1\nallow_simulation: true\nroles: []\n").unwrap();
    let config = dir.path().join("keyd.yaml");
    std::fs::write(&config, "keyrings:\n  cluster-a: {}\n").unwrap();
    // One run leaves a valid log (a refused connection is audited); then a crash leaves half a
    // line behind.
    let mut keyd = KeydProcess::start(&data, free_addr(), &policy, &config, &[]);
    let code = keyd.terminate();
    assert_eq!(code, Some(0), "{}", keyd.log_text());
    let log = data.join("audit.log");
    let mut text = std::fs::read(&log).unwrap();
    text.extend_from_slice(b"{\"seq\":99,\"time\":\"2026-");
    std::fs::write(&log, &text).unwrap();

    let serve = |addr: std::net::SocketAddr| {
        coffer(&[
            "keyd",
            "serve",
            "--platform",
            "sim",
            "--listen",
            &addr.to_string(),
            "--data-dir",
            data.to_str().unwrap(),
            "--policy",
            policy.to_str().unwrap(),
            "--config",
            config.to_str().unwrap(),
        ])
    };
    let out = serve(free_addr());
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("incomplete") && err.contains("coffer keyd audit repair"),
        "{err}"
    );

    let stdout = common::keyd::keyd_cli(&data, &["audit", "repair"]);
    assert!(stdout.contains("moved to"), "{stdout}");
    let partial: Vec<_> = std::fs::read_dir(&data)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains("audit.log.partial-"))
        .collect();
    assert_eq!(partial.len(), 1);
    assert_eq!(
        std::fs::read(&partial[0]).unwrap(),
        b"{\"seq\":99,\"time\":\"2026-"
    );
    let stdout = common::keyd::keyd_cli(&data, &["audit", "verify"]);
    assert!(stdout.contains("chain intact"), "{stdout}");
    // keyd starts again and extends the chain.
    let mut keyd = KeydProcess::start(&data, free_addr(), &policy, &config, &[]);
    assert_eq!(keyd.terminate(), Some(0));
}
