//! `coffer bench run-start`: the time `coffer run` adds to a pod's start — attesting to keyd,
//! unsealing the pod's values in one batch, writing the unsealed files and starting the app —
//! for a few numbers of sealed values, against the app started alone.
//!
//! The values are delivered as the kubelet delivers them: environment variables holding
//! `coffer.v1.…` and a Secret volume in the kubelet's `..data` symlink layout. Each timed
//! `coffer run … -- APP` is paired with a run of `APP` alone, so drift on a noisy machine
//! affects both sides alike.

use std::ffi::OsString;
use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use coffer_keyd_client::{KeydAddr, KeydClient, KeydClientOptions, MAX_PLAINTEXT_LEN};
use serde::Serialize;

use crate::error::BenchError;
use crate::sealing::{seal_values, SealedItem, Target};
use crate::startup::{kill_and_reap, stderr_tail};
use crate::stats::{fmt_ms, ser, Timing};

/// How long one run (of `coffer run` or of the app alone) may take before it is killed.
const RUN_TIMEOUT: Duration = Duration::from_secs(120);
/// Pause between checks whether a run has exited: small against a process start.
const POLL_INTERVAL: Duration = Duration::from_micros(200);
/// The prefix of the environment variables that carry sealed values.
const ENV_PREFIX: &str = "COFFER_BENCH_K";
/// Most values one row may have (they are unsealed in batches of at most 256).
const MAX_VALUES: usize = 10_000;

/// How the sealed values reach `coffer run`.
#[derive(clap::ValueEnum, Serialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Delivery {
    /// All as environment variables (`secretKeyRef`).
    Env,
    /// All as files of one mounted Secret volume.
    Files,
    /// Half as environment variables (rounded up), the rest as files.
    Both,
}

/// Arguments of `coffer bench run-start`.
#[derive(clap::Args, Debug, Clone)]
pub struct RunStartBenchArgs {
    /// keyd's address (host:port)
    #[arg(long, value_name = "HOST:PORT")]
    pub keyd: KeydAddr,
    /// the keyring the values are sealed to; keyd's `keyrings.<name>.unseal` must grant the
    /// workload's role --namespace and --secret
    #[arg(long)]
    pub keyring: String,
    /// the pod's namespace (passed to `coffer run --namespace`)
    #[arg(long, default_value = "default")]
    pub namespace: String,
    /// the Secret the values are sealed for (data keys k0, k1, ...)
    #[arg(long, default_value = "coffer-bench")]
    pub secret: String,
    /// numbers of sealed values to measure, one row each (0: `coffer run` with nothing to
    /// unseal, which does not contact keyd)
    #[arg(long, value_delimiter = ',', default_value = "1,10,100")]
    pub values: Vec<usize>,
    /// how the values are delivered
    #[arg(long, value_enum, default_value = "both")]
    pub delivery: Delivery,
    /// bytes of each plaintext (random letters and digits)
    #[arg(long, default_value_t = 32)]
    pub value_size: usize,
    /// timed runs per row, each paired with a run of the app alone
    #[arg(long, default_value_t = 20)]
    pub runs: usize,
    /// the coffer binary to run (default: the current executable)
    #[arg(long)]
    pub exe: Option<PathBuf>,
    /// the app `coffer run` starts (no arguments)
    #[arg(long, default_value = "/bin/true")]
    pub app: PathBuf,
    /// a tmpfs directory under which each run's --out is made (`coffer run` refuses a
    /// disk-backed --out)
    #[arg(long, default_value = "/dev/shm")]
    pub out_parent: PathBuf,
    /// limit on connecting to keyd and on each call while sealing the values
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// print the report as JSON
    #[arg(long)]
    pub json: bool,
}

/// One number of values: `coffer run … -- APP` against `APP` alone, spawn to exit.
#[derive(Debug, Clone, Serialize)]
pub struct RunStartRow {
    /// Sealed values the pod has.
    pub values: usize,
    /// Of which delivered as environment variables.
    pub env_values: usize,
    /// Of which delivered as files of a Secret volume.
    pub file_values: usize,
    /// `coffer run … -- APP`.
    pub coffer_run: Timing,
    /// `APP` alone.
    pub app_alone: Timing,
    /// Median of `coffer_run` minus median of `app_alone`: what `coffer run` adds.
    #[serde(rename = "added_median_ms", serialize_with = "ser::millis_f64")]
    pub added_median: Duration,
    /// p90 of `coffer_run` minus p90 of `app_alone`.
    #[serde(rename = "added_p90_ms", serialize_with = "ser::millis_f64")]
    pub added_p90: Duration,
}

impl RunStartRow {
    fn new(
        values: usize,
        (env_values, file_values): (usize, usize),
        coffer_run: &[Duration],
        app_alone: &[Duration],
    ) -> Option<RunStartRow> {
        let coffer_run = Timing::from(coffer_run)?;
        let app_alone = Timing::from(app_alone)?;
        Some(RunStartRow {
            values,
            env_values,
            file_values,
            added_median: coffer_run.median.saturating_sub(app_alone.median),
            added_p90: coffer_run.p90.saturating_sub(app_alone.p90),
            coffer_run,
            app_alone,
        })
    }
}

/// The result of `coffer bench run-start`.
///
/// `Display` prints a human table; `Serialize` gives the `--json` form, times in ms.
#[derive(Debug, Clone, Serialize)]
pub struct RunStartReport {
    /// The coffer binary.
    pub exe: PathBuf,
    /// The app.
    pub app: PathBuf,
    /// keyd's address.
    pub keyd: String,
    /// Where the values were sealed for: `namespace/secret`.
    pub secret: String,
    /// How the values were delivered.
    pub delivery: Delivery,
    /// Timed runs per row.
    pub runs: usize,
    /// One row per number of values.
    pub rows: Vec<RunStartRow>,
}

impl fmt::Display for RunStartReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "coffer bench run-start: {} run -- {}, keyd {}, values of {}",
            self.exe.display(),
            self.app.display(),
            self.keyd,
            self.secret
        )?;
        writeln!(
            f,
            "  {} runs per row, spawn to exit, each paired with {} alone",
            self.runs,
            self.app.display()
        )?;
        writeln!(
            f,
            "  {:>6} {:>4} {:>5}  {:>21}  {:>21}  {:>21}",
            "values",
            "env",
            "files",
            "coffer run p50 / p90",
            "app alone p50 / p90",
            "added p50 / p90"
        )?;
        for r in &self.rows {
            let pair = |a: Duration, b: Duration| format!("{} / {}", fmt_ms(a), fmt_ms(b));
            writeln!(
                f,
                "  {:>6} {:>4} {:>5}  {:>21}  {:>21}  {:>21}",
                r.values,
                r.env_values,
                r.file_values,
                pair(r.coffer_run.median, r.coffer_run.p90),
                pair(r.app_alone.median, r.app_alone.p90),
                pair(r.added_median, r.added_p90)
            )?;
        }
        Ok(())
    }
}

impl Delivery {
    /// How many of `n` values go into the environment and how many into files.
    fn split(self, n: usize) -> (usize, usize) {
        match self {
            Delivery::Env => (n, 0),
            Delivery::Files => (0, n),
            Delivery::Both => (n.div_ceil(2), n / 2),
        }
    }
}

fn validate(args: &RunStartBenchArgs) -> Result<(), BenchError> {
    let bad = |m: String| Err(BenchError::InvalidArgs(m));
    if args.values.is_empty() || args.values.iter().any(|&n| n > MAX_VALUES) {
        return bad(format!(
            "--values takes a comma-separated list of counts from 0 to {MAX_VALUES}, e.g. 1,10,100"
        ));
    }
    if args.runs == 0 {
        return bad("--runs must be at least 1".into());
    }
    if !(1..=MAX_PLAINTEXT_LEN).contains(&args.value_size) {
        return bad(format!(
            "--value-size must be 1 to {MAX_PLAINTEXT_LEN} bytes"
        ));
    }
    if args.timeout.is_zero() || args.timeout > Duration::from_secs(3600) {
        return bad("--timeout must be longer than 0s and at most 1h".into());
    }
    Ok(())
}

/// Runs `coffer bench run-start`. `client` gives the options of the connection the values are
/// sealed over (the key bundle is verified against its policy); `run_flags` are the `coffer
/// run` flags that say how the workload attests and checks keyd (`--keyd-policy`,
/// `--platform`, `--state-dir` and collateral sources), added to each run after `--keyd`.
pub fn run_run_start(
    args: &RunStartBenchArgs,
    client: impl Fn() -> KeydClientOptions,
    run_flags: &[OsString],
) -> Result<RunStartReport, BenchError> {
    validate(args)?;
    let exe = match &args.exe {
        Some(p) => p.clone(),
        None => std::env::current_exe()
            .map_err(|e| BenchError::io("cannot find the current executable; pass --exe", e))?,
    };
    for program in [&exe, &args.app] {
        if !program.is_file() {
            return Err(BenchError::Spawn {
                exe: program.clone(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
            });
        }
    }
    let target = Target {
        keyring: args.keyring.clone(),
        namespace: args.namespace.clone(),
        secret: args.secret.clone(),
    };
    let most = args.values.iter().copied().max().unwrap_or(0);
    let items = if most == 0 {
        Vec::new()
    } else {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| BenchError::io("cannot start a tokio runtime", e))?;
        rt.block_on(async {
            let options = client();
            let (policy, verify_options) = (options.policy.clone(), options.verify_options.clone());
            let mut c = KeydClient::connect_within(args.keyd.clone(), options, args.timeout)
                .await
                .map_err(|e| {
                    BenchError::Keyd(format!("connecting to keyd at {}: {e}", args.keyd))
                })?;
            seal_values(
                &mut c,
                &policy,
                &verify_options,
                &target,
                most,
                args.value_size,
            )
            .await
        })?
    };

    let work = tempfile::Builder::new()
        .prefix("coffer-bench-run-")
        .tempdir()
        .map_err(|e| BenchError::io("cannot create a temporary directory", e))?;
    let outs = tempfile::Builder::new()
        .prefix("coffer-bench-out-")
        .tempdir_in(&args.out_parent)
        .map_err(|e| {
            BenchError::io(
                format!(
                    "cannot create a directory in --out-parent {} (pass a tmpfs directory)",
                    args.out_parent.display()
                ),
                e,
            )
        })?;
    let bench = Bench {
        args,
        exe: &exe,
        run_flags,
        target: &target,
        work: work.path(),
        outs: outs.path(),
    };
    let mut rows = Vec::with_capacity(args.values.len());
    for &n in &args.values {
        rows.push(bench.row(&items[..n])?);
    }
    Ok(RunStartReport {
        exe,
        app: args.app.clone(),
        keyd: args.keyd.to_string(),
        secret: format!("{}/{}", args.namespace, args.secret),
        delivery: args.delivery,
        runs: args.runs,
        rows,
    })
}

/// What every run of one benchmark shares.
struct Bench<'a> {
    args: &'a RunStartBenchArgs,
    exe: &'a Path,
    run_flags: &'a [OsString],
    target: &'a Target,
    /// Holds the Secret volumes (ciphertext only) and the runs' stderr.
    work: &'a Path,
    /// Holds each run's --out.
    outs: &'a Path,
}

/// One pod: its environment and its Secret volume, as the kubelet would deliver them.
struct Pod<'a> {
    env: Vec<(String, &'a SealedItem)>,
    files: &'a [SealedItem],
    volume: PathBuf,
}

impl Bench<'_> {
    fn row(&self, items: &[SealedItem]) -> Result<RunStartRow, BenchError> {
        let n = items.len();
        let (env_n, files_n) = self.args.delivery.split(n);
        let pod = Pod {
            env: items[..env_n]
                .iter()
                .enumerate()
                .map(|(i, item)| (format!("{ENV_PREFIX}{i}"), item))
                .collect(),
            files: &items[env_n..],
            volume: self
                .work
                .join(format!("volume-{n}"))
                .join(&self.target.secret),
        };
        if files_n > 0 {
            write_volume(&pod.volume, pod.files)?;
        }
        // An untimed first run, which also checks that the app gets every plaintext.
        self.check(&pod, n)?;
        let mut coffer_run = Vec::with_capacity(self.args.runs);
        let mut app_alone = Vec::with_capacity(self.args.runs);
        for run in 1..=self.args.runs {
            let mut alone = Command::new(&self.args.app);
            app_alone.push(self.time(&mut alone, n, run)?);
            let out = self.outs.join(format!("{n}-{run}"));
            let mut wrapped = self.coffer_run(&pod, &out, &self.args.app)?;
            coffer_run.push(self.time(&mut wrapped, n, run)?);
            remove_out(&out)?;
        }
        RunStartRow::new(n, (env_n, files_n), &coffer_run, &app_alone)
            .ok_or_else(|| BenchError::InvalidArgs("--runs must be at least 1".into()))
    }

    /// `coffer run` for `pod`, unsealed files into `out`, starting `app`.
    fn coffer_run(&self, pod: &Pod, out: &Path, app: &Path) -> Result<Command, BenchError> {
        let mut cmd = Command::new(self.exe);
        cmd.args(["--log-level", "warn", "run", "--keyd"])
            .arg(self.args.keyd.to_string())
            .args(self.run_flags)
            .arg("--namespace")
            .arg(&self.target.namespace)
            .arg("--env");
        // Only what the kubelet would set, so the parent's environment changes nothing.
        cmd.env_clear();
        if let Some(path) = std::env::var_os("PATH") {
            cmd.env("PATH", path);
        }
        for (var, item) in &pod.env {
            cmd.env(var, &item.sealed);
        }
        if !pod.files.is_empty() {
            std::fs::create_dir(out)
                .map_err(|e| BenchError::io(format!("cannot create {}", out.display()), e))?;
            let mut files = OsString::from(format!("{}=", self.target.secret));
            files.push(&pod.volume);
            cmd.arg("--files").arg(files).arg("--out").arg(out);
        }
        cmd.arg("--").arg(app);
        Ok(cmd)
    }

    /// Runs `cmd` to its end; the time from spawn to exit. A failure is an error naming the
    /// row and run, with the tail of its stderr.
    fn time(&self, cmd: &mut Command, n: usize, run: usize) -> Result<Duration, BenchError> {
        let stderr_path = self.work.join(format!("run-{n}.stderr"));
        let stderr = File::create(&stderr_path)
            .map_err(|e| BenchError::io(format!("cannot create {}", stderr_path.display()), e))?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        let t0 = Instant::now();
        let mut child = cmd.spawn().map_err(|source| BenchError::Spawn {
            exe: PathBuf::from(cmd.get_program()),
            source,
        })?;
        let status = wait(&mut child, t0)?;
        let elapsed = t0.elapsed();
        if !status.success() {
            return Err(BenchError::RunFailed {
                values: n,
                run,
                status: status.to_string(),
                stderr: stderr_tail(&stderr_path),
            });
        }
        Ok(elapsed)
    }

    /// Runs `coffer run … -- env` once for `pod` and checks that the app's environment and
    /// the files in --out hold exactly the plaintexts that were sealed.
    fn check(&self, pod: &Pod, n: usize) -> Result<(), BenchError> {
        let out = self.outs.join(format!("{n}-check"));
        let env = ["/usr/bin/env", "/bin/env"]
            .into_iter()
            .map(Path::new)
            .find(|p| p.is_file())
            .ok_or_else(|| {
                BenchError::InvalidArgs(
                    "there is no /usr/bin/env to check the app's environment with".into(),
                )
            })?;
        let mut cmd = self.coffer_run(pod, &out, env)?;
        let stderr_path = self.work.join(format!("run-{n}.stderr"));
        let stderr = File::create(&stderr_path)
            .map_err(|e| BenchError::io(format!("cannot create {}", stderr_path.display()), e))?;
        let output = cmd
            .stdin(Stdio::null())
            .stderr(stderr)
            .output()
            .map_err(|source| BenchError::Spawn {
                exe: self.exe.to_path_buf(),
                source,
            })?;
        let stdout = zeroize::Zeroizing::new(output.stdout);
        let failed = |what: String| BenchError::RunFailed {
            values: n,
            run: 0,
            status: what,
            stderr: stderr_tail(&stderr_path),
        };
        if !output.status.success() {
            return Err(failed(output.status.to_string()));
        }
        for (var, item) in &pod.env {
            let mut line = format!("{var}=").into_bytes();
            line.extend_from_slice(&item.plaintext);
            let line = zeroize::Zeroizing::new(line);
            if !stdout.split(|&b| b == b'\n').any(|l| l == line.as_slice()) {
                return Err(failed(format!(
                    "the app's environment lacks the plaintext of {var}"
                )));
            }
        }
        let dir = out.join(self.target.secret.as_str());
        for item in pod.files {
            let path = dir.join(&item.location.key);
            let got = zeroize::Zeroizing::new(std::fs::read(&path).unwrap_or_default());
            if got.as_slice() != item.plaintext.as_slice() {
                return Err(failed(format!(
                    "{} does not hold the plaintext of {}",
                    path.display(),
                    item.location.key
                )));
            }
        }
        remove_out(&out)
    }
}

fn wait(child: &mut Child, t0: Instant) -> Result<ExitStatus, BenchError> {
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Ok(status),
            Ok(None) if t0.elapsed() < RUN_TIMEOUT => std::thread::sleep(POLL_INTERVAL),
            Ok(None) => {
                kill_and_reap(child);
                return Err(BenchError::io(
                    "a run did not exit",
                    std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("killed after {}", humantime::format_duration(RUN_TIMEOUT)),
                    ),
                ));
            }
            Err(e) => {
                kill_and_reap(child);
                return Err(BenchError::io("cannot wait for a run", e));
            }
        }
    }
}

/// Removes a run's --out (on tmpfs: it would fill memory over hundreds of runs).
fn remove_out(out: &Path) -> Result<(), BenchError> {
    match std::fs::remove_dir_all(out) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(BenchError::io(
            format!("cannot remove {}", out.display()),
            e,
        )),
        _ => Ok(()),
    }
}

/// Writes a Secret volume the way the kubelet does: the files in a `..<timestamp>` directory,
/// a `..data` symlink to it, and one `KEY -> ..data/KEY` symlink per key.
fn write_volume(dir: &Path, items: &[SealedItem]) -> Result<(), BenchError> {
    let io = |what: &str, path: &Path, e| BenchError::io(format!("{what} {}", path.display()), e);
    let version = "..2026_01_01_00_00_00.000000001";
    let data = dir.join(version);
    std::fs::create_dir_all(&data).map_err(|e| io("cannot create", &data, e))?;
    for item in items {
        let file = data.join(&item.location.key);
        std::fs::write(&file, &item.sealed).map_err(|e| io("cannot write", &file, e))?;
        let link = dir.join(&item.location.key);
        std::os::unix::fs::symlink(Path::new("..data").join(&item.location.key), &link)
            .map_err(|e| io("cannot create", &link, e))?;
    }
    let link = dir.join("..data");
    std::os::unix::fs::symlink(version, &link).map_err(|e| io("cannot create", &link, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: &[u64]) -> Vec<Duration> {
        v.iter().map(|&m| Duration::from_millis(m)).collect()
    }

    #[test]
    fn rows_subtract_the_app_alone() {
        let r = RunStartRow::new(10, (5, 5), &ms(&[40, 30, 50, 35]), &ms(&[2, 1, 3, 1])).unwrap();
        assert_eq!(r.coffer_run.median, Duration::from_micros(37_500));
        assert_eq!(r.app_alone.median, Duration::from_micros(1_500));
        assert_eq!(r.added_median, Duration::from_millis(36));
        assert_eq!(r.added_p90, Duration::from_millis(47));
        assert!(RunStartRow::new(1, (1, 0), &[], &[]).is_none());
    }

    #[test]
    fn delivery_splits_values() {
        assert_eq!(Delivery::Both.split(1), (1, 0));
        assert_eq!(Delivery::Both.split(10), (5, 5));
        assert_eq!(Delivery::Both.split(101), (51, 50));
        assert_eq!(Delivery::Env.split(10), (10, 0));
        assert_eq!(Delivery::Files.split(10), (0, 10));
    }

    #[test]
    fn display_and_json() {
        let r = RunStartReport {
            exe: "/usr/bin/coffer".into(),
            app: "/bin/true".into(),
            keyd: "127.0.0.1:7000".into(),
            secret: "default/coffer-bench".into(),
            delivery: Delivery::Both,
            runs: 4,
            rows: vec![
                RunStartRow::new(10, (5, 5), &ms(&[40, 30, 50, 35]), &ms(&[2, 1, 3, 1])).unwrap(),
            ],
        };
        let text = r.to_string();
        for want in ["values", "37.5 ms / 50.0 ms", "36.0 ms / 47.0 ms", "4 runs"] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["rows"][0]["added_median_ms"], 36.0);
        assert_eq!(v["rows"][0]["coffer_run"]["p90_ms"], 50.0);
        assert_eq!(v["delivery"], "both");
    }

    #[test]
    fn the_volume_has_the_kubelet_layout() {
        let dir = tempfile::tempdir().unwrap();
        let vol = dir.path().join("s");
        let item = SealedItem {
            location: coffer_sealed::Location {
                namespace: "ns".into(),
                secret: "s".into(),
                key: "k0".into(),
            },
            sealed: "coffer.v1.x".into(),
            plaintext: zeroize::Zeroizing::new(b"p".to_vec()),
        };
        write_volume(&vol, std::slice::from_ref(&item)).unwrap();
        let data = std::fs::read_link(vol.join("..data")).unwrap();
        assert!(data.to_str().unwrap().starts_with(".."), "{data:?}");
        assert_eq!(
            std::fs::read_link(vol.join("k0")).unwrap(),
            Path::new("..data/k0")
        );
        assert_eq!(
            std::fs::read_to_string(vol.join("k0")).unwrap(),
            "coffer.v1.x"
        );
    }

    #[test]
    fn bad_arguments_are_errors() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            args: RunStartBenchArgs,
        }
        let parse = |extra: &[&str]| {
            let mut argv = vec!["bench", "--keyd", "127.0.0.1:7000", "--keyring", "apps"];
            argv.extend_from_slice(extra);
            Cli::try_parse_from(argv).unwrap().args
        };
        let a = parse(&[]);
        assert_eq!(a.values, vec![1, 10, 100]);
        validate(&a).unwrap();
        for bad in [
            &["--runs", "0"][..],
            &["--values", "100000"],
            &["--value-size", "0"],
        ] {
            let e = validate(&parse(bad)).unwrap_err().to_string();
            assert!(e.contains(bad[0]), "{bad:?}: {e}");
        }
    }
}
