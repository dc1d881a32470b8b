//! Smoke tests of the keyd benchmarks against a real `coffer keyd serve` (sim platform, real
//! TCP and attested TLS): each runs briefly and its report has the promised shape. No
//! assertion is about speed.

mod common;

use std::path::PathBuf;

use common::keyd::{
    create_keyd_data, free_addr, sim_role_policy, sim_signer, write_keyd_policy, KeydProcess,
};
use common::run::output_within;

/// keyd's configuration: role `app` may unseal values of keyring `apps` found in namespace
/// `bench`.
const CONFIG: &str = "keyrings:
  apps:
    unseal:
      - role: app
        namespaces: [\"bench\"]
";

/// A keyd with keyring `apps`, and the sim state and keyd policy of a client whose role is
/// `app`.
struct Setup {
    _dir: tempfile::TempDir,
    keyd: KeydProcess,
    client_state: PathBuf,
    keyd_policy: PathBuf,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("keyd");
    create_keyd_data(&data, &["apps"]);
    let client_state = dir.path().join("client");
    let policy = sim_role_policy(dir.path(), "app", &client_state);
    let config = dir.path().join("keyd.yaml");
    std::fs::write(&config, CONFIG).unwrap();
    let keyd = KeydProcess::start(&data, free_addr(), &policy, &config, &[]);
    let keyd_policy = dir.path().join("keyd-policy.yaml");
    write_keyd_policy(&keyd_policy, &sim_signer(&data));
    Setup {
        _dir: dir,
        keyd,
        client_state,
        keyd_policy,
    }
}

/// `coffer bench <bench> <args>` with the client flags of `s`.
fn bench(s: &Setup, bench: &str, args: &[&str]) -> std::process::Output {
    output_within(
        std::process::Command::new(common::coffer_bin())
            .args(["bench", bench, "--keyd", &s.keyd.addr.to_string()])
            .args(["--platform", "sim", "--state-dir"])
            .arg(&s.client_state)
            .arg("--keyd-policy")
            .arg(&s.keyd_policy)
            .args(args),
    )
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn assert_mode(report: &serde_json::Value, mode: &str, rpc: &str, per_call: u64) {
    let m = &report[mode];
    assert_eq!(m["rpc"], rpc, "{report:#}");
    assert_eq!(m["values_per_call"], per_call, "{report:#}");
    assert_eq!(m["errors"], serde_json::json!({}), "{report:#}");
    // Every caller starts at least one call inside the window (there is no warmup), and the
    // calls started in the window are counted when they return.
    assert!(m["calls"].as_u64().unwrap() >= 1, "{report:#}");
    assert_eq!(
        m["values"].as_u64().unwrap(),
        m["calls"].as_u64().unwrap() * per_call,
        "{report:#}"
    );
    for field in ["values_per_sec", "calls_per_sec"] {
        assert!(m[field].as_f64().unwrap() > 0.0, "{field}: {report:#}");
    }
    for field in ["p50_us", "p90_us", "p99_us", "max_us"] {
        assert!(m[field].is_u64(), "{field}: {report:#}");
    }
    for field in ["generator_cpu_cores", "keyd_cpu_cores"] {
        assert!(m[field].as_f64().unwrap() >= 0.0, "{field}: {report:#}");
    }
}

#[test]
fn keyd_unseal_reports_single_and_batched_throughput_side_by_side() {
    let s = setup();
    let common = [
        "--keyring",
        "apps",
        "--namespace",
        "bench",
        "--values",
        "3",
        "--batch",
        "5",
        "--concurrency",
        "2",
        "--duration",
        "200ms",
        "--warmup",
        "0s",
    ];
    let pid = s.keyd.child.as_ref().unwrap().id().to_string();
    let out = bench(
        &s,
        "keyd-unseal",
        &[&common[..], &["--keyd-pid", &pid, "--json"]].concat(),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["keyring"], "apps");
    assert_eq!(report["secret"], "bench/coffer-bench");
    assert_eq!(report["values"], 3);
    assert_eq!(report["concurrency"], 2);
    assert_mode(&report, "single", "Unseal", 1);
    assert_mode(&report, "batch", "UnsealBatch", 5);
    assert_eq!(report["notes"], serde_json::json!([]), "{report:#}");

    // keyd audited every value it opened for the benchmark, at its location.
    let audited = common::keyd::audit_records(&s.keyd.data)
        .iter()
        .filter(|r| {
            r["event"] == "unseal"
                && r["result"] == "ok"
                && r["location"]
                    .as_str()
                    .is_some_and(|l| l.starts_with("bench/coffer-bench/k"))
        })
        .count() as u64;
    let opened = |m: &str| report[m]["values"].as_u64().unwrap();
    assert!(
        audited >= opened("single") + opened("batch"),
        "{audited} audit records"
    );

    // The human table, one mode only.
    let out = bench(
        &s,
        "keyd-unseal",
        &[&common[..], &["--mode", "batch"]].concat(),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("UnsealBatch x5"), "{text}");
    assert!(text.contains("values/s"), "{text}");
    assert!(!text.contains("Unseal x1"), "{text}");
}

#[test]
fn keyd_unseal_without_a_grant_says_which_grant_to_add() {
    let s = setup();
    let out = bench(
        &s,
        "keyd-unseal",
        &[
            "--keyring",
            "apps",
            "--namespace",
            "elsewhere",
            "--duration",
            "100ms",
        ],
    );
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("keyrings.apps.unseal"), "{err}");
    assert!(err.contains("elsewhere/coffer-bench"), "{err}");
}

#[test]
fn run_start_times_coffer_run_against_the_app_alone_per_number_of_values() {
    let s = setup();
    // coffer run refuses a disk-backed --out; /dev/shm is tmpfs.
    let outs = tempfile::tempdir_in("/dev/shm").unwrap();
    let out = bench(
        &s,
        "run-start",
        &[
            "--keyring",
            "apps",
            "--namespace",
            "bench",
            "--values",
            "0,3",
            "--runs",
            "2",
            "--exe",
            common::coffer_bin(),
            "--out-parent",
            outs.path().to_str().unwrap(),
            "--json",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["app"], "/bin/true");
    assert_eq!(report["delivery"], "both");
    assert_eq!(report["runs"], 2);
    let rows = report["rows"].as_array().unwrap();
    let shape: Vec<(u64, u64, u64)> = rows
        .iter()
        .map(|r| {
            let n = |f: &str| r[f].as_u64().unwrap();
            (n("values"), n("env_values"), n("file_values"))
        })
        .collect();
    assert_eq!(shape, [(0, 0, 0), (3, 2, 1)], "{report:#}");
    for row in rows {
        for side in ["coffer_run", "app_alone"] {
            for field in ["min_ms", "median_ms", "p90_ms", "max_ms"] {
                assert!(row[side][field].as_f64().unwrap() > 0.0, "{report:#}");
            }
        }
        for field in ["added_median_ms", "added_p90_ms"] {
            assert!(row[field].is_f64(), "{report:#}");
        }
    }
    // The untimed check run of each row, and then every timed run, unsealed all three values.
    let audited = common::keyd::audit_records(&s.keyd.data)
        .iter()
        .filter(|r| r["event"] == "unseal" && r["result"] == "ok")
        .count();
    assert_eq!(audited, 3 * 3, "unseal audit records");
    // Every --out was removed.
    let left: Vec<_> = std::fs::read_dir("/dev/shm")
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("coffer-bench-out-")
        })
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn run_start_stops_at_a_refused_value_with_coffer_runs_reason() {
    let s = setup();
    let out = bench(
        &s,
        "run-start",
        &[
            "--keyring",
            "apps",
            "--namespace",
            "elsewhere",
            "--values",
            "1",
            "--exe",
            common::coffer_bin(),
        ],
    );
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("run-start with 1 values, run 0"), "{err}");
    assert!(err.contains("elsewhere/coffer-bench"), "{err}");
    assert!(err.contains("exit status: 77"), "{err}");
}
