//! `coffer bench startup`: how long `coffer kms serve --platform sim` takes to answer its first
//! `Status` call.

use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use coffer_proto::v2;
use coffer_proto::v2::key_management_service_client::KeyManagementServiceClient;
use serde::Serialize;

use crate::conn::connect;
use crate::error::BenchError;
use crate::stats::{fmt_ms, median, ser, Timing};

/// How long a started plugin may take to answer `Status`, and to exit after SIGTERM.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause between readiness probes.
const POLL_INTERVAL: Duration = Duration::from_millis(1);
/// Longest unix socket path the kernel accepts (`sun_path` is 108 bytes including the NUL).
const MAX_SOCKET_PATH: usize = 107;

/// Arguments of `coffer bench startup`.
#[derive(clap::Args, Debug, Clone)]
pub struct StartupBenchArgs {
    /// the coffer binary to start (default: the current executable)
    #[arg(long)]
    pub exe: Option<PathBuf>,
    /// number of starts; the first creates the keystore and is reported separately
    #[arg(long, default_value_t = 20)]
    pub runs: usize,
}

/// The result of `coffer bench startup`.
///
/// Times run from spawning the process to the first successful v2 `Status` answer. `Display`
/// prints a human table; `Serialize` gives the `--json` form, with all times in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct StartupReport {
    /// The binary that was started.
    pub exe: PathBuf,
    /// Total starts, including the first.
    pub runs: usize,
    /// The first start, which creates the keystore.
    #[serde(rename = "first_run_ms", serialize_with = "ser::millis_f64")]
    pub first_run: Duration,
    /// Starts with an existing keystore: min, median, p90 (nearest rank) and max.
    #[serde(flatten)]
    pub warm: Timing,
    /// Every start with an existing keystore, in run order.
    #[serde(rename = "warm_runs_ms", serialize_with = "ser::millis_f64_vec")]
    pub warm_runs: Vec<Duration>,
    /// Median time from SIGTERM to exit, over all runs.
    #[serde(rename = "shutdown_median_ms", serialize_with = "ser::millis_f64")]
    pub shutdown_median: Duration,
    /// Slowest time from SIGTERM to exit.
    #[serde(rename = "shutdown_max_ms", serialize_with = "ser::millis_f64")]
    pub shutdown_max: Duration,
    /// Caveats (e.g. a non-zero exit status after SIGTERM).
    pub notes: Vec<String>,
}

impl StartupReport {
    /// Builds the summary from per-run timings (`startups[0]` is the first run). Returns
    /// `None` unless there are at least two runs.
    fn from_runs(
        exe: PathBuf,
        startups: &[Duration],
        shutdowns: &[Duration],
        notes: Vec<String>,
    ) -> Option<Self> {
        let (&first_run, warm) = startups.split_first()?;
        let mut down = shutdowns.to_vec();
        down.sort();
        Some(StartupReport {
            exe,
            runs: startups.len(),
            first_run,
            warm: Timing::from(warm)?,
            warm_runs: warm.to_vec(),
            shutdown_median: median(&down).unwrap_or_default(),
            shutdown_max: down.last().copied().unwrap_or_default(),
            notes,
        })
    }
}

impl fmt::Display for StartupReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "coffer bench startup: {} ({} runs, spawn to first Status)",
            self.exe.display(),
            self.runs
        )?;
        writeln!(
            f,
            "  first run  {}  (creates the keystore)",
            fmt_ms(self.first_run)
        )?;
        writeln!(
            f,
            "  next {:<4}  min {}  median {}  p90 {}  max {}",
            self.warm_runs.len(),
            fmt_ms(self.warm.min),
            fmt_ms(self.warm.median),
            fmt_ms(self.warm.p90),
            fmt_ms(self.warm.max)
        )?;
        writeln!(
            f,
            "  shutdown   median {}  max {}  (SIGTERM to exit)",
            fmt_ms(self.shutdown_median),
            fmt_ms(self.shutdown_max)
        )?;
        for note in &self.notes {
            writeln!(f, "  note       {note}")?;
        }
        Ok(())
    }
}

/// Runs `coffer bench startup`: starts `<exe> kms serve --platform sim` `runs` times against one
/// temporary state directory and times each start up to its first successful v2 `Status`.
pub fn run_startup(args: &StartupBenchArgs) -> Result<StartupReport, BenchError> {
    if args.runs < 2 {
        return Err(BenchError::InvalidArgs(
            "--runs must be at least 2 (the first run creates the keystore and is reported \
             separately)"
                .into(),
        ));
    }
    let exe = match &args.exe {
        Some(p) => p.clone(),
        None => std::env::current_exe()
            .map_err(|e| BenchError::io("cannot find the current executable; pass --exe", e))?,
    };
    if !exe.is_file() {
        return Err(BenchError::Spawn {
            exe,
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
        });
    }
    let dir = tempfile::Builder::new()
        .prefix("coffer-bench-")
        .tempdir()
        .map_err(|e| BenchError::io("cannot create a temporary state directory", e))?;
    let socket = dir.path().join("kms.sock");
    if socket.as_os_str().len() > MAX_SOCKET_PATH {
        return Err(BenchError::InvalidArgs(format!(
            "the socket path {} is longer than {MAX_SOCKET_PATH} bytes; set TMPDIR to a shorter \
             directory",
            socket.display()
        )));
    }

    let mut startups = Vec::with_capacity(args.runs);
    let mut shutdowns = Vec::with_capacity(args.runs);
    let mut notes = Vec::new();
    for run in 1..=args.runs {
        let r = one_run(&exe, dir.path(), &socket, run)?;
        startups.push(r.startup);
        shutdowns.push(r.shutdown);
        if !r.exit.success() {
            notes.push(format!("run {run}: exited with {} after SIGTERM", r.exit));
        }
    }
    StartupReport::from_runs(exe, &startups, &shutdowns, notes)
        .ok_or_else(|| BenchError::InvalidArgs("--runs must be at least 2".into()))
}

struct RunResult {
    startup: Duration,
    shutdown: Duration,
    exit: ExitStatus,
}

fn one_run(
    exe: &Path,
    state_dir: &Path,
    socket: &Path,
    run: usize,
) -> Result<RunResult, BenchError> {
    // A fresh runtime per run: dropping it closes the probe's connection before SIGTERM, so the
    // plugin's graceful shutdown does not wait for us.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| BenchError::io("cannot start a tokio runtime", e))?;
    let stderr_path = state_dir.join(format!("run-{run}.stderr"));
    let stderr = File::create(&stderr_path)
        .map_err(|e| BenchError::io(format!("cannot create {}", stderr_path.display()), e))?;

    let t0 = Instant::now();
    let mut child = Command::new(exe)
        .arg("kms")
        .arg("serve")
        .arg("--platform")
        .arg("sim")
        .arg("--state-dir")
        .arg(state_dir)
        .arg("--socket")
        .arg(socket)
        .arg("--log-level")
        .arg("warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .map_err(|source| BenchError::Spawn {
            exe: exe.to_path_buf(),
            source,
        })?;

    let startup = loop {
        if let Some(status) = child
            .try_wait()
            .map_err(|e| BenchError::io("cannot wait for the plugin", e))?
        {
            return Err(BenchError::ExitedEarly {
                exe: exe.to_path_buf(),
                run,
                status: status.to_string(),
                stderr: stderr_tail(&stderr_path),
            });
        }
        let remaining = STARTUP_TIMEOUT.saturating_sub(t0.elapsed());
        if remaining.is_zero() {
            kill_and_reap(&mut child);
            return Err(BenchError::StartupTimeout {
                exe: exe.to_path_buf(),
                socket: socket.to_path_buf(),
                run,
                timeout: STARTUP_TIMEOUT,
                stderr: stderr_tail(&stderr_path),
            });
        }
        if rt.block_on(probe(socket, remaining.min(Duration::from_secs(1)))) {
            break t0.elapsed();
        }
        std::thread::sleep(POLL_INTERVAL);
    };
    drop(rt);

    let t1 = Instant::now();
    if let Err(e) = sigterm(&child) {
        kill_and_reap(&mut child);
        return Err(BenchError::io("cannot send SIGTERM to the plugin", e));
    }
    let exit = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if t1.elapsed() < SHUTDOWN_TIMEOUT => std::thread::sleep(POLL_INTERVAL),
            Ok(None) => {
                kill_and_reap(&mut child);
                return Err(BenchError::ShutdownTimeout {
                    exe: exe.to_path_buf(),
                    run,
                    timeout: SHUTDOWN_TIMEOUT,
                    stderr: stderr_tail(&stderr_path),
                });
            }
            Err(e) => {
                kill_and_reap(&mut child);
                return Err(BenchError::io("cannot wait for the plugin", e));
            }
        }
    };
    Ok(RunResult {
        startup,
        shutdown: t1.elapsed(),
        exit,
    })
}

/// One readiness probe: connect and call v2 `Status`. True once the plugin answers.
async fn probe(socket: &Path, timeout: Duration) -> bool {
    let attempt = async {
        let channel = connect(socket, timeout).await.ok()?;
        let mut client = KeyManagementServiceClient::new(channel);
        let mut req = tonic::Request::new(v2::StatusRequest {});
        req.set_timeout(timeout);
        client.status(req).await.ok()
    };
    matches!(tokio::time::timeout(timeout, attempt).await, Ok(Some(_)))
}

fn sigterm(child: &Child) -> std::io::Result<()> {
    let pid = i32::try_from(child.id())
        .ok()
        .and_then(rustix::process::Pid::from_raw)
        .ok_or_else(|| std::io::Error::other(format!("invalid pid {}", child.id())))?;
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).map_err(std::io::Error::from)
}

pub(crate) fn kill_and_reap(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// The last lines of a run's stderr, for error messages.
pub(crate) fn stderr_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(20)..].join("\n");
    if tail.trim().is_empty() {
        "(empty)".into()
    } else {
        tail
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: &[u64]) -> Vec<Duration> {
        v.iter().map(|&m| Duration::from_millis(m)).collect()
    }

    #[test]
    fn summary_separates_the_first_run() {
        let r = StartupReport::from_runs(
            "/usr/bin/coffer".into(),
            &ms(&[250, 12, 10, 11, 30, 13]),
            &ms(&[5, 6, 4, 7, 5, 9]),
            vec![],
        )
        .unwrap();
        assert_eq!(r.runs, 6);
        assert_eq!(r.first_run, Duration::from_millis(250));
        assert_eq!(r.warm.min, Duration::from_millis(10));
        assert_eq!(r.warm.median, Duration::from_millis(12));
        assert_eq!(r.warm.p90, Duration::from_millis(30));
        assert_eq!(r.warm.max, Duration::from_millis(30));
        assert_eq!(r.warm_runs, ms(&[12, 10, 11, 30, 13]));
        assert_eq!(r.shutdown_median, Duration::from_micros(5500));
        assert_eq!(r.shutdown_max, Duration::from_millis(9));
        assert!(StartupReport::from_runs("x".into(), &ms(&[5]), &ms(&[1]), vec![]).is_none());
        assert!(StartupReport::from_runs("x".into(), &[], &[], vec![]).is_none());
    }

    #[test]
    fn display_and_json() {
        let r = StartupReport::from_runs(
            "/usr/bin/coffer".into(),
            &ms(&[250, 12, 10]),
            &ms(&[5, 6, 4]),
            vec!["run 2: exited with exit status: 1 after SIGTERM".into()],
        )
        .unwrap();
        let text = r.to_string();
        for want in [
            "/usr/bin/coffer (3 runs",
            "first run  250.0 ms",
            "min 10.0 ms  median 11.0 ms  p90 12.0 ms  max 12.0 ms",
            "shutdown   median 5.0 ms  max 6.0 ms",
            "note       run 2",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["first_run_ms"], 250.0);
        assert_eq!(v["median_ms"], 11.0);
        assert_eq!(v["warm_runs_ms"], serde_json::json!([12.0, 10.0]));
    }

    #[test]
    fn bad_arguments_are_errors() {
        let e = run_startup(&StartupBenchArgs { exe: None, runs: 1 }).unwrap_err();
        assert!(matches!(e, BenchError::InvalidArgs(_)), "{e:?}");
        let e = run_startup(&StartupBenchArgs {
            exe: Some("/nonexistent/coffer".into()),
            runs: 2,
        })
        .unwrap_err();
        assert!(e.to_string().contains("/nonexistent/coffer"), "{e}");
    }

    #[test]
    fn a_binary_that_exits_is_reported_with_its_stderr() {
        // `sh kms serve ...` fails: sh tries to run a script named "kms".
        let e = run_startup(&StartupBenchArgs {
            exe: Some("/bin/sh".into()),
            runs: 2,
        })
        .unwrap_err();
        assert!(matches!(e, BenchError::ExitedEarly { run: 1, .. }), "{e:?}");
        assert!(e.to_string().contains("kms"), "{e}");
    }
}
