//! Shared helpers for the kubectl-coffer integration tests: the real `kubectl` finding the
//! plugin on PATH, and the `coffer` binary (for a real keyd).
#![allow(dead_code)]

pub mod sealing;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

/// The directory holding the built `kubectl-coffer`.
pub fn plugin_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_kubectl-coffer"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// `PATH` with the plugin's directory first, so `kubectl coffer` runs this build.
pub fn plugin_path() -> String {
    format!(
        "{}:{}",
        plugin_dir().display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

/// A `kubectl <args>` command that finds the plugin through kubectl's plugin mechanism, with
/// no kubeconfig of the user's.
pub fn kubectl_command(args: &[&str]) -> Command {
    let mut command = Command::new("kubectl");
    command
        .args(args)
        .env("PATH", plugin_path())
        .env("KUBECONFIG", "/nonexistent/kubeconfig")
        .env_remove("KUBECTL_PLUGINS_PATH");
    command
}

/// Runs `kubectl <args>` with `stdin`.
pub fn run_with(mut command: Command, stdin: &[u8]) -> Output {
    command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().expect("kubectl is installed");
    let mut input = child.stdin.take().unwrap();
    let data = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&data);
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    out
}

/// Runs `kubectl <args>` with empty stdin.
pub fn kubectl(args: &[&str]) -> Output {
    run_with(kubectl_command(args), b"")
}

/// stdout and stderr as text.
pub fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs `kubectl coffer seal generic db -n apps <args>`.
pub fn seal_db(args: &[&str]) -> Output {
    kubectl(&[&["coffer", "seal", "generic", "db", "-n", "apps"][..], args].concat())
}

/// Runs `kubectl coffer inspect -f <file> --key-bundle <bundle> --check`.
pub fn inspect_check(file: &str, bundle: &Path) -> Output {
    kubectl(&[
        "coffer",
        "inspect",
        "-f",
        file,
        "--key-bundle",
        bundle.to_str().unwrap(),
        "--check",
    ])
}

/// Asserts success and returns stdout.
pub fn ok(out: &Output) -> String {
    let (stdout, stderr) = text(out);
    assert!(out.status.success(), "failed: {stderr}\nstdout: {stdout}");
    stdout
}

/// Asserts a failure with empty stdout whose stderr contains `needle`; returns stderr.
pub fn fails_with(out: &Output, needle: &str) -> String {
    let (stdout, stderr) = text(out);
    assert!(
        !out.status.success(),
        "succeeded: {stdout}\nstderr: {stderr}"
    );
    assert!(stdout.is_empty(), "printed on failure: {stdout}");
    assert!(stderr.contains(needle), "stderr lacks {needle:?}: {stderr}");
    stderr
}

/// The `coffer` binary: next to kubectl-coffer when `cargo test --workspace` built it, else
/// built once here (`cargo build -p coffer --bin coffer`), under a lock so concurrent test
/// binaries do not race.
pub fn coffer_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let bin = plugin_dir().join("coffer");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(plugin_dir().join(".coffer-test-build.lock"))
            .unwrap();
        lock.lock().unwrap();
        if !bin.exists() {
            let status = Command::new(env!("CARGO"))
                .args(["build", "-p", "coffer", "--bin", "coffer"])
                .current_dir(env!("CARGO_MANIFEST_DIR"))
                .status()
                .unwrap();
            assert!(status.success(), "building coffer failed");
        }
        assert!(bin.exists(), "{} missing after build", bin.display());
        bin
    })
    .clone()
}

/// Runs `coffer <args>`.
pub fn coffer(args: &[&str]) -> Output {
    Command::new(coffer_bin()).args(args).output().unwrap()
}

/// Every file under `dir` whose bytes contain `needle`.
pub fn files_containing(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if std::fs::read(&path)
                .unwrap()
                .windows(needle.len())
                .any(|w| w == needle)
            {
                found.push(path);
            }
        }
    }
    found
}
