//! `coffer bench kms`: a closed-loop load generator that talks to a KMS plugin like
//! kube-apiserver does.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use coffer_proto::v1beta1::key_management_service_client::KeyManagementServiceClient as V1Client;
use coffer_proto::v2::key_management_service_client::KeyManagementServiceClient as V2Client;
use coffer_proto::{v1beta1, v2};
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::time::Instant;
use tonic::transport::Channel;

use crate::conn::{check_socket, connect, socket_path};
use crate::error::{code_name, describe_status, BenchError};
use crate::failover::{self, CallEvent, FailoverReport};
use crate::procfs;
use crate::stats::{self, fmt_count, fmt_latency, ser, Latencies};

/// The `version` string of the KMS v1 API (sent and expected back by kube-apiserver).
const V1_VERSION: &str = "v1beta1";

/// The RPC the load generator sends.
#[derive(clap::ValueEnum, Serialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Op {
    /// v2 `Decrypt` of one ciphertext made during setup (the API server's read path on a
    /// DEK cache miss); every plaintext is checked.
    Decrypt,
    /// v2 `Encrypt` of a fresh random 32-byte plaintext per call.
    Encrypt,
    /// v2 `Status` (the API server's health probe).
    Status,
    /// Deprecated KMS v1 (`v1beta1`) `Decrypt` of one ciphertext made during setup.
    V1Decrypt,
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Op::Decrypt => "decrypt",
            Op::Encrypt => "encrypt",
            Op::Status => "status",
            Op::V1Decrypt => "v1-decrypt",
        })
    }
}

/// Arguments of `coffer bench kms`.
#[derive(clap::Args, Debug, Clone)]
pub struct KmsBenchArgs {
    /// plugin socket (path, or unix:///path)
    #[arg(long)]
    pub socket: PathBuf,
    /// number of concurrent callers, each sending calls back-to-back (closed loop)
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// how long to measure (e.g. 10s, 1m)
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// how long to run before measuring; calls during warmup are not recorded
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub warmup: Duration,
    /// the RPC to send
    #[arg(long, value_enum, default_value = "decrypt")]
    pub op: Op,
    /// HTTP/2 connections to spread callers over, round-robin (kube-apiserver uses one)
    #[arg(long, default_value_t = 1)]
    pub connections: usize,
    /// worker threads of the load generator's runtime
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// pid of the plugin, to report its CPU use and peak RSS (VmHWM) from /proc
    #[arg(long)]
    pub plugin_pid: Option<u32>,
    /// print the report as JSON
    #[arg(long)]
    pub json: bool,
    /// per-call deadline, like the API server's (seconds, or a duration such as 500ms)
    #[arg(long, default_value = "3s", value_parser = parse_secs)]
    pub timeout: Duration,
    /// distinct DEKs to decrypt, encrypted during setup and decrypted in turn (--op decrypt;
    /// 1 to 100000): more than a plugin caches makes every Decrypt reach keyd
    #[arg(long, default_value_t = 1)]
    pub ciphertexts: usize,
    /// SIGKILL this process (e.g. a keyd replica) during the measurement and report the
    /// failover the callers saw: the longest time without an answer, the calls in flight
    #[arg(long, requires = "kill_after")]
    pub kill_pid: Option<u32>,
    /// when to kill --kill-pid, from the start of the measured window (below --duration)
    #[arg(long, requires = "kill_pid", value_parser = humantime::parse_duration)]
    pub kill_after: Option<Duration>,
}

/// Most distinct DEKs `--ciphertexts` sets up.
const MAX_CIPHERTEXTS: usize = 100_000;

/// Parses `3`, `0.5` (seconds) or a humantime duration (`3s`, `500ms`).
fn parse_secs(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if let Ok(secs) = t.parse::<f64>() {
        return Duration::try_from_secs_f64(secs)
            .map_err(|_| format!("{s:?} is not a valid number of seconds; use e.g. 3 or 500ms"));
    }
    humantime::parse_duration(t).map_err(|e| format!("{e}; use e.g. 3 or 500ms"))
}

/// The result of `coffer bench kms`.
///
/// `Display` prints a human table; `Serialize` gives the `--json` form, in which latencies are
/// in µs (`p50_us`, ...) and durations in seconds.
#[derive(Debug, Clone, Serialize)]
pub struct KmsBenchReport {
    /// The RPC that was sent.
    pub op: Op,
    /// The plugin socket.
    pub socket: PathBuf,
    /// Concurrent callers.
    pub concurrency: usize,
    /// HTTP/2 connections.
    pub connections: usize,
    /// Load generator worker threads.
    pub threads: usize,
    /// Per-call deadline.
    #[serde(rename = "timeout_secs", serialize_with = "ser::secs_f64")]
    pub timeout: Duration,
    /// Warmup before the measurement.
    #[serde(rename = "warmup_secs", serialize_with = "ser::secs_f64")]
    pub warmup: Duration,
    /// Measured wall-clock time (the requested duration plus the tail of in-flight calls).
    #[serde(rename = "elapsed_secs", serialize_with = "ser::secs_f64")]
    pub elapsed: Duration,
    /// The plugin's version as reported by v2 `Status` or v1 `Version`.
    pub plugin_version: String,
    /// The key id reported by v2 `Status` (`None` for `v1-decrypt`).
    pub key_id: Option<String>,
    /// Successful calls started in the measured window.
    pub ops: u64,
    /// `ops` divided by `elapsed`.
    pub ops_per_sec: f64,
    /// Median latency of successful calls.
    #[serde(rename = "p50_us", serialize_with = "ser::micros")]
    pub p50: Duration,
    /// 90th percentile latency.
    #[serde(rename = "p90_us", serialize_with = "ser::micros")]
    pub p90: Duration,
    /// 99th percentile latency.
    #[serde(rename = "p99_us", serialize_with = "ser::micros")]
    pub p99: Duration,
    /// 99.9th percentile latency.
    #[serde(rename = "p999_us", serialize_with = "ser::micros")]
    pub p999: Duration,
    /// Highest latency.
    #[serde(rename = "max_us", serialize_with = "ser::micros")]
    pub max: Duration,
    /// Failed calls in the measured window by gRPC code name (`DEADLINE_EXCEEDED`, ...), or
    /// `MISMATCH` (decrypted plaintext differs), `EMPTY_CIPHERTEXT`, `EMPTY_KEY_ID`,
    /// `UNHEALTHY` (Status healthz other than `ok`).
    pub errors: BTreeMap<String, u64>,
    /// CPU used by the load generator (user + system seconds per wall second).
    pub generator_cpu_cores: f64,
    /// CPU used by the plugin (user + system seconds per wall second), with `--plugin-pid`.
    pub plugin_cpu_cores: Option<f64>,
    /// The plugin's peak RSS (VmHWM) at the end of the run in KiB, with `--plugin-pid`.
    pub plugin_peak_rss_kib: Option<u64>,
    /// Distinct DEKs decrypted in turn.
    pub ciphertexts: usize,
    /// With `--kill-pid`: the failover the callers saw.
    pub failover: Option<FailoverReport>,
    /// Caveats about the run (e.g. the plugin exited).
    pub notes: Vec<String>,
}

impl KmsBenchReport {
    /// Total failed calls in the measured window.
    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }
}

impl fmt::Display for KmsBenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "coffer bench kms: {} on {}",
            self.op,
            self.socket.display()
        )?;
        writeln!(
            f,
            "  load       {} callers over {} connection(s), {} generator thread(s), {} deadline",
            self.concurrency,
            self.connections,
            self.threads,
            humantime::format_duration(self.timeout)
        )?;
        let key = self.key_id.as_deref().map(|k| format!(", key_id {k}"));
        writeln!(
            f,
            "  plugin     version {}{}",
            self.plugin_version,
            key.unwrap_or_default()
        )?;
        writeln!(
            f,
            "  window     {:.2}s after {} warmup",
            self.elapsed.as_secs_f64(),
            humantime::format_duration(self.warmup)
        )?;
        writeln!(
            f,
            "  ops        {}  ({:.0} ops/s)",
            fmt_count(self.ops),
            self.ops_per_sec
        )?;
        if self.ops == 0 {
            writeln!(f, "  latency    n/a (no successful calls)")?;
        } else {
            writeln!(
                f,
                "  latency    p50 {}  p90 {}  p99 {}  p99.9 {}  max {}",
                fmt_latency(self.p50),
                fmt_latency(self.p90),
                fmt_latency(self.p99),
                fmt_latency(self.p999),
                fmt_latency(self.max)
            )?;
        }
        if self.errors.is_empty() {
            writeln!(f, "  errors     none")?;
        } else {
            let list: Vec<String> = self
                .errors
                .iter()
                .map(|(k, v)| format!("{k} {}", fmt_count(*v)))
                .collect();
            writeln!(
                f,
                "  errors     {} ({})",
                fmt_count(self.error_count()),
                list.join(", ")
            )?;
        }
        let plugin_cpu = self
            .plugin_cpu_cores
            .map(|c| format!("{c:.2} cores"))
            .unwrap_or_else(|| "n/a (pass --plugin-pid)".to_string());
        writeln!(
            f,
            "  cpu        generator {:.2} cores, plugin {plugin_cpu}",
            self.generator_cpu_cores
        )?;
        if let Some(kib) = self.plugin_peak_rss_kib {
            writeln!(
                f,
                "  plugin rss peak {:.1} MiB ({} KiB)",
                kib as f64 / 1024.0,
                fmt_count(kib)
            )?;
        }
        if let Some(fo) = &self.failover {
            writeln!(
                f,
                "  kill       pid {} at {:.2}s: longest time without an answer {} (before the kill: {})",
                fo.pid,
                fo.killed_at.as_secs_f64(),
                fmt_latency(fo.stall),
                fmt_latency(fo.stall_before)
            )?;
            writeln!(
                f,
                "             {} calls in flight, {} failed, slowest {}; {} failed calls after the kill",
                fo.in_flight,
                fo.in_flight_failed,
                fmt_latency(fo.in_flight_max),
                fo.failed_after
            )?;
            for (name, s) in [("1s before", &fo.before), ("1s after ", &fo.after)] {
                writeln!(
                    f,
                    "             {name}: {} calls, p50 {}  p99 {}  max {}",
                    fmt_count(s.calls),
                    fmt_latency(s.p50),
                    fmt_latency(s.p99),
                    fmt_latency(s.max)
                )?;
            }
        }
        for note in &self.notes {
            writeln!(f, "  note       {note}")?;
        }
        Ok(())
    }
}

/// Runs `coffer bench kms`: connects to the plugin, sets up (Status, and for decrypt ops one
/// Encrypt), then drives `concurrency` closed-loop callers for `warmup + duration`.
///
/// Builds its own tokio runtime with `threads` workers, so call it from synchronous code.
pub fn run_kms(args: &KmsBenchArgs) -> Result<KmsBenchReport, BenchError> {
    validate(args)?;
    let socket = socket_path(&args.socket)?;
    check_socket(&socket)?;
    if let Some(pid) = args.plugin_pid {
        procfs::process_cpu(pid).map_err(|detail| BenchError::PluginProc { pid, detail })?;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads)
        .thread_name("coffer-bench")
        .enable_all()
        .build()
        .map_err(|e| BenchError::io("cannot start the load generator's tokio runtime", e))?;
    let result = rt.block_on(run_async(args, socket));
    rt.shutdown_timeout(Duration::from_secs(1));
    result
}

fn validate(args: &KmsBenchArgs) -> Result<(), BenchError> {
    let bad = |m: &str| Err(BenchError::InvalidArgs(m.to_string()));
    if args.concurrency == 0 {
        return bad("--concurrency must be at least 1");
    }
    if args.connections == 0 {
        return bad("--connections must be at least 1");
    }
    if args.threads == 0 {
        return bad("--threads must be at least 1");
    }
    if args.duration.is_zero() {
        return bad("--duration must be longer than 0s");
    }
    if args.timeout.is_zero() {
        return bad("--timeout must be longer than 0s");
    }
    // Keep `Instant + duration` arithmetic far from overflow.
    let year = Duration::from_secs(365 * 24 * 3600);
    if args.duration > year || args.warmup > year || args.timeout > year {
        return bad("--duration, --warmup and --timeout must each be under a year");
    }
    if !(1..=MAX_CIPHERTEXTS).contains(&args.ciphertexts) {
        return bad("--ciphertexts must be 1 to 100000");
    }
    if args.ciphertexts > 1 && args.op != Op::Decrypt {
        return bad("--ciphertexts applies to --op decrypt only");
    }
    if let Some(after) = args.kill_after {
        if after >= args.duration {
            return bad("--kill-after must be shorter than --duration: the kill happens inside the measured window");
        }
    }
    if args.kill_pid == Some(0) {
        return bad("--kill-pid must name a process (not 0)");
    }
    Ok(())
}

/// One encrypted DEK and what decrypting it must give.
struct Dek {
    ciphertext: Vec<u8>,
    plaintext: Vec<u8>,
    key_id: String,
    annotations: HashMap<String, Vec<u8>>,
}

/// What every caller sends; prepared during setup.
enum Work {
    Status,
    Encrypt,
    Decrypt(Vec<Dek>),
    V1Decrypt { cipher: Vec<u8>, plain: Vec<u8> },
}

struct Plan {
    work: Work,
    timeout: Duration,
    /// Calls started before this are warmup and not recorded.
    measure_start: Instant,
    /// No call is started at or after this.
    end: Instant,
}

struct Setup {
    work: Work,
    plugin_version: String,
    key_id: Option<String>,
}

async fn run_async(args: &KmsBenchArgs, socket: PathBuf) -> Result<KmsBenchReport, BenchError> {
    let connect_timeout = args.timeout.max(Duration::from_secs(1));
    let mut channels = Vec::with_capacity(args.connections);
    for _ in 0..args.connections {
        channels.push(connect(&socket, connect_timeout).await?);
    }
    let setup = setup(&channels[0], &socket, args, args.timeout).await?;

    let start = Instant::now();
    let measure_start = start + args.warmup;
    let plan = Arc::new(Plan {
        work: setup.work,
        timeout: args.timeout,
        measure_start,
        end: measure_start + args.duration,
    });
    let timeline = args.kill_pid.is_some();
    let mut tasks = Vec::with_capacity(args.concurrency);
    for i in 0..args.concurrency {
        let channel = channels[i % channels.len()].clone();
        // Callers start spread over the DEKs, so each DEK is decrypted as often as the others.
        let first = i * args.ciphertexts / args.concurrency;
        tasks.push(tokio::spawn(caller(
            channel,
            Arc::clone(&plan),
            first,
            timeline,
        )));
    }
    drop(channels);
    let kill = match (args.kill_pid, args.kill_after) {
        (Some(pid), Some(after)) => Some(tokio::spawn(kill_at(pid, measure_start + after))),
        _ => None,
    };

    tokio::time::sleep_until(measure_start).await;
    let cpu0 = procfs::self_cpu();
    let wall0 = Instant::now();
    let mut notes = Vec::new();
    let plugin_cpu0 = args.plugin_pid.and_then(|pid| match procfs::process_cpu(pid) {
        Ok(c) => Some(c),
        Err(e) => {
            notes.push(format!("plugin pid {pid}: cannot read /proc/{pid}/stat at the start of the measurement: {e}"));
            None
        }
    });

    let mut hist = stats::new_histogram()?;
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    let mut events = Vec::new();
    for task in tasks {
        let tally = match task.await {
            Ok(t) => t?,
            Err(e) => {
                *errors.entry("GENERATOR_TASK_FAILED".into()).or_default() += 1;
                notes.push(format!("a caller task failed: {e}"));
                continue;
            }
        };
        hist.add(&tally.hist)
            .map_err(|e| BenchError::Histogram(format!("{e:?}")))?;
        events.extend(tally.events);
        for (code, n) in tally.errors {
            *errors.entry(code.to_string()).or_default() += n;
        }
    }
    // CPU rates use the wall time over which CPU was actually sampled; the throughput uses the
    // planned window, because `ops` counts exactly the calls started inside it (the sampling
    // start can be late on a loaded machine, which must not inflate ops/s).
    let cpu_wall_secs = wall0.elapsed().as_secs_f64().max(1e-9);
    let cpu1 = procfs::self_cpu();
    let elapsed = plan.end.saturating_duration_since(plan.measure_start);
    let wall_secs = elapsed.as_secs_f64().max(1e-9);

    let (plugin_cpu_cores, plugin_peak_rss_kib) = match args.plugin_pid {
        None => (None, None),
        Some(pid) => {
            let cpu = match (plugin_cpu0, procfs::process_cpu(pid)) {
                (Some(c0), Ok(c1)) => Some(c1.saturating_sub(c0).as_secs_f64() / cpu_wall_secs),
                (_, Err(e)) => {
                    notes.push(format!("plugin pid {pid}: cannot read /proc/{pid}/stat at the end (did the plugin exit?): {e}"));
                    None
                }
                (None, Ok(_)) => None,
            };
            let rss = match procfs::process_peak_rss_kib(pid) {
                Ok(k) => Some(k),
                Err(e) => {
                    notes.push(format!("plugin pid {pid}: cannot read its peak RSS: {e}"));
                    None
                }
            };
            (cpu, rss)
        }
    };

    let failover = match (kill, args.kill_pid) {
        (Some(task), Some(pid)) => match task.await {
            Ok(Ok(at)) => Some(failover::analyse(
                pid,
                at.saturating_duration_since(measure_start),
                &events,
            )?),
            Ok(Err(e)) => {
                notes.push(format!("--kill-pid {pid}: cannot kill it: {e}"));
                None
            }
            Err(e) => {
                notes.push(format!("--kill-pid {pid}: the kill task failed: {e}"));
                None
            }
        },
        _ => None,
    };
    let ops = hist.len();
    if ops == 0 {
        notes.push("no call succeeded in the measured window; check the plugin's logs".into());
    }
    if args.connections > args.concurrency {
        notes.push(format!(
            "only {} of {} connections carried calls (--connections exceeds --concurrency)",
            args.concurrency, args.connections
        ));
    }
    let lat = Latencies::from_histogram(&hist);
    Ok(KmsBenchReport {
        op: args.op,
        socket,
        concurrency: args.concurrency,
        connections: args.connections,
        threads: args.threads,
        timeout: args.timeout,
        warmup: args.warmup,
        elapsed,
        plugin_version: setup.plugin_version,
        key_id: setup.key_id,
        ops,
        ops_per_sec: ops as f64 / wall_secs,
        p50: lat.p50,
        p90: lat.p90,
        p99: lat.p99,
        p999: lat.p999,
        max: lat.max,
        errors,
        generator_cpu_cores: cpu1.saturating_sub(cpu0).as_secs_f64() / cpu_wall_secs,
        plugin_cpu_cores,
        plugin_peak_rss_kib,
        ciphertexts: args.ciphertexts,
        failover,
        notes,
    })
}

/// SIGKILLs `pid` at `at`; when it was sent.
async fn kill_at(pid: u32, at: Instant) -> Result<Instant, String> {
    tokio::time::sleep_until(at).await;
    let target = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
        .ok_or_else(|| format!("{pid} is not a process id"))?;
    let sent = Instant::now();
    rustix::process::kill_process(target, rustix::process::Signal::KILL)
        .map_err(|e| e.to_string())?;
    Ok(sent)
}

/// Wraps a message in a request with the per-call deadline (sent as `grpc-timeout`, as
/// grpc-go does for the API server's context deadline).
fn request<T>(msg: T, timeout: Duration) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.set_timeout(timeout);
    req
}

fn uid() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Runs one setup call with the deadline, mapping failures to [`BenchError::Setup`].
async fn setup_call<T>(
    socket: &Path,
    call: &'static str,
    timeout: Duration,
    fut: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, BenchError> {
    let fail = |detail: String| BenchError::Setup {
        path: socket.to_path_buf(),
        call,
        detail,
    };
    let t0 = Instant::now();
    let late = || {
        fail(format!(
            "no answer within {} (raise --timeout if the plugin is just slow)",
            humantime::format_duration(timeout)
        ))
    };
    match tokio::time::timeout(timeout, fut).await {
        Err(_) => Err(late()),
        // A tonic server answers CANCELLED when the grpc-timeout it was sent expires.
        Ok(Err(_)) if t0.elapsed() >= timeout => Err(late()),
        Ok(Err(status)) => Err(fail(describe_status(&status))),
        Ok(Ok(resp)) => Ok(resp.into_inner()),
    }
}

async fn setup(
    channel: &Channel,
    socket: &Path,
    args: &KmsBenchArgs,
    timeout: Duration,
) -> Result<Setup, BenchError> {
    let op = args.op;
    let fail = |call: &'static str, detail: String| BenchError::Setup {
        path: socket.to_path_buf(),
        call,
        detail,
    };
    if op == Op::V1Decrypt {
        let mut v1 = V1Client::new(channel.clone());
        let version = setup_call(
            socket,
            "v1beta1 Version",
            timeout,
            v1.version(request(
                v1beta1::VersionRequest {
                    version: V1_VERSION.into(),
                },
                timeout,
            )),
        )
        .await?;
        if version.version != V1_VERSION {
            return Err(fail(
                "v1beta1 Version",
                format!(
                    "the plugin answered version {:?}, kube-apiserver requires {V1_VERSION:?}",
                    version.version
                ),
            ));
        }
        let plain: Vec<u8> = rand::random::<[u8; 32]>().to_vec();
        let enc = setup_call(
            socket,
            "v1beta1 Encrypt",
            timeout,
            v1.encrypt(request(
                v1beta1::EncryptRequest {
                    version: V1_VERSION.into(),
                    plain: plain.clone(),
                },
                timeout,
            )),
        )
        .await?;
        if enc.cipher.is_empty() {
            return Err(fail(
                "v1beta1 Encrypt",
                "it returned an empty ciphertext".into(),
            ));
        }
        let dec = setup_call(
            socket,
            "v1beta1 Decrypt",
            timeout,
            v1.decrypt(request(
                v1beta1::DecryptRequest {
                    version: V1_VERSION.into(),
                    cipher: enc.cipher.clone(),
                },
                timeout,
            )),
        )
        .await?;
        if dec.plain != plain {
            return Err(fail(
                "v1beta1 Decrypt",
                "decrypting a fresh ciphertext did not return the original plaintext".into(),
            ));
        }
        let runtime = match version.runtime_version.is_empty() {
            true => version.runtime_name,
            false => format!("{} {}", version.runtime_name, version.runtime_version),
        };
        return Ok(Setup {
            work: Work::V1Decrypt {
                cipher: enc.cipher,
                plain,
            },
            plugin_version: runtime,
            key_id: None,
        });
    }

    let mut v2c = V2Client::new(channel.clone());
    let status = setup_call(
        socket,
        "v2 Status",
        timeout,
        v2c.status(request(v2::StatusRequest {}, timeout)),
    )
    .await?;
    if status.key_id.is_empty() {
        return Err(fail(
            "v2 Status",
            "it returned an empty key_id, which kube-apiserver rejects".into(),
        ));
    }
    let work = match op {
        Op::Status => Work::Status,
        Op::Encrypt => Work::Encrypt,
        Op::Decrypt | Op::V1Decrypt => {
            let mut deks = Vec::with_capacity(args.ciphertexts);
            for _ in 0..args.ciphertexts {
                let plaintext: Vec<u8> = rand::random::<[u8; 32]>().to_vec();
                let enc = setup_call(
                    socket,
                    "v2 Encrypt",
                    timeout,
                    v2c.encrypt(request(
                        v2::EncryptRequest {
                            plaintext: plaintext.clone(),
                            uid: uid(),
                        },
                        timeout,
                    )),
                )
                .await?;
                if enc.ciphertext.is_empty() {
                    return Err(fail("v2 Encrypt", "it returned an empty ciphertext".into()));
                }
                // Decrypt sends what the API server stored in its envelope: the key id and
                // annotations the Encrypt response carried (normally key_id == Status key_id).
                let key_id = if enc.key_id.is_empty() {
                    status.key_id.clone()
                } else {
                    enc.key_id
                };
                deks.push(Dek {
                    ciphertext: enc.ciphertext,
                    plaintext,
                    key_id,
                    annotations: enc.annotations,
                });
            }
            // One Decrypt proves the path; every measured call checks its own plaintext.
            let first = &deks[0];
            let dec = setup_call(
                socket,
                "v2 Decrypt",
                timeout,
                v2c.decrypt(request(
                    v2::DecryptRequest {
                        ciphertext: first.ciphertext.clone(),
                        uid: uid(),
                        key_id: first.key_id.clone(),
                        annotations: first.annotations.clone(),
                    },
                    timeout,
                )),
            )
            .await?;
            if dec.plaintext != first.plaintext {
                return Err(fail(
                    "v2 Decrypt",
                    "decrypting a fresh ciphertext did not return the original plaintext".into(),
                ));
            }
            Work::Decrypt(deks)
        }
    };
    Ok(Setup {
        work,
        plugin_version: status.version,
        key_id: Some(status.key_id),
    })
}

/// What one caller measured.
struct Tally {
    hist: Histogram<u64>,
    errors: BTreeMap<&'static str, u64>,
    /// Every measured call, with `--kill-pid`.
    events: Vec<CallEvent>,
}

/// One closed-loop caller; `next` is the first DEK it decrypts, `timeline` keeps every call.
async fn caller(
    channel: Channel,
    plan: Arc<Plan>,
    mut next: usize,
    timeline: bool,
) -> Result<Tally, BenchError> {
    let mut tally = Tally {
        hist: stats::new_histogram()?,
        errors: BTreeMap::new(),
        events: Vec::new(),
    };
    let mut v2c = V2Client::new(channel.clone());
    let mut v1c = V1Client::new(channel);
    loop {
        let t0 = Instant::now();
        if t0 >= plan.end {
            break;
        }
        let outcome =
            tokio::time::timeout(plan.timeout, call(&mut v2c, &mut v1c, &plan, next)).await;
        next = next.wrapping_add(1);
        let outcome = match outcome {
            Ok(Ok(())) => Ok(()),
            // A tonic server enforces the grpc-timeout header itself and answers CANCELLED
            // ("Timeout expired"); grpc-go clients such as kube-apiserver report any failure
            // after their deadline as DEADLINE_EXCEEDED, and so do we.
            Ok(Err(_)) if t0.elapsed() >= plan.timeout => Err("DEADLINE_EXCEEDED"),
            Ok(Err(code)) => Err(code),
            Err(_) => Err("DEADLINE_EXCEEDED"),
        };
        if t0 < plan.measure_start {
            continue;
        }
        if timeline {
            tally.events.push(CallEvent {
                start: t0 - plan.measure_start,
                end: plan.measure_start.elapsed(),
                ok: outcome.is_ok(),
            });
        }
        match outcome {
            Ok(()) => stats::record(&mut tally.hist, t0.elapsed()),
            Err(code) => *tally.errors.entry(code).or_default() += 1,
        }
    }
    Ok(tally)
}

/// Sends one call (for Decrypt, of DEK number `n`, wrapping); `Err` carries the error's name
/// for the report.
async fn call(
    v2c: &mut V2Client<Channel>,
    v1c: &mut V1Client<Channel>,
    plan: &Plan,
    n: usize,
) -> Result<(), &'static str> {
    let t = plan.timeout;
    let code = |s: tonic::Status| code_name(s.code());
    match &plan.work {
        Work::Status => {
            let r = v2c
                .status(request(v2::StatusRequest {}, t))
                .await
                .map_err(code)?
                .into_inner();
            if r.healthz != "ok" {
                return Err("UNHEALTHY");
            }
        }
        Work::Encrypt => {
            let plaintext = rand::random::<[u8; 32]>().to_vec();
            let r = v2c
                .encrypt(request(
                    v2::EncryptRequest {
                        plaintext,
                        uid: uid(),
                    },
                    t,
                ))
                .await
                .map_err(code)?
                .into_inner();
            if r.ciphertext.is_empty() {
                return Err("EMPTY_CIPHERTEXT");
            }
            if r.key_id.is_empty() {
                return Err("EMPTY_KEY_ID");
            }
        }
        Work::Decrypt(deks) => {
            let Dek {
                ciphertext,
                plaintext,
                key_id,
                annotations,
            } = &deks[n % deks.len()];
            let r = v2c
                .decrypt(request(
                    v2::DecryptRequest {
                        ciphertext: ciphertext.clone(),
                        uid: uid(),
                        key_id: key_id.clone(),
                        annotations: annotations.clone(),
                    },
                    t,
                ))
                .await
                .map_err(code)?
                .into_inner();
            if r.plaintext != *plaintext {
                return Err("MISMATCH");
            }
        }
        Work::V1Decrypt { cipher, plain } => {
            let r = v1c
                .decrypt(request(
                    v1beta1::DecryptRequest {
                        version: V1_VERSION.into(),
                        cipher: cipher.clone(),
                    },
                    t,
                ))
                .await
                .map_err(code)?
                .into_inner();
            if r.plain != *plain {
                return Err("MISMATCH");
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: KmsBenchArgs,
    }

    fn parse(extra: &[&str]) -> Result<KmsBenchArgs, clap::Error> {
        let mut argv = vec!["bench"];
        argv.extend_from_slice(extra);
        Cli::try_parse_from(argv).map(|c| c.args)
    }

    #[test]
    fn defaults_match_the_api_server() {
        let a = parse(&["--socket", "/tmp/x.sock"]).unwrap();
        assert_eq!(a.concurrency, 16);
        assert_eq!(a.duration, Duration::from_secs(10));
        assert_eq!(a.warmup, Duration::from_secs(1));
        assert_eq!(a.op, Op::Decrypt);
        assert_eq!(a.connections, 1);
        assert_eq!(a.threads, 1);
        assert_eq!(a.plugin_pid, None);
        assert!(!a.json);
        assert_eq!(a.timeout, Duration::from_secs(3));
        assert_eq!(a.ciphertexts, 1);
        assert_eq!((a.kill_pid, a.kill_after), (None, None));
    }

    #[test]
    fn parses_ops_and_timeouts() {
        let a = parse(&[
            "--socket",
            "unix:///tmp/x.sock",
            "--op",
            "v1-decrypt",
            "--timeout",
            "500ms",
            "--duration",
            "1m",
        ])
        .unwrap();
        assert_eq!(a.op, Op::V1Decrypt);
        assert_eq!(a.timeout, Duration::from_millis(500));
        assert_eq!(a.duration, Duration::from_secs(60));
        assert_eq!(parse_secs("3").unwrap(), Duration::from_secs(3));
        assert_eq!(parse_secs("0.25").unwrap(), Duration::from_millis(250));
        assert!(parse_secs("-1").is_err());
        assert!(parse_secs("NaN").is_err());
        assert!(parse_secs("soon").is_err());
        assert!(parse(&["--socket", "x", "--op", "rotate"]).is_err());
    }

    #[test]
    fn missing_socket_error_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing-kms.sock");
        let arg = format!("unix://{}", path.display());
        let args = parse(&["--socket", &arg, "--duration", "1s"]).unwrap();
        let err = run_kms(&args).unwrap_err();
        assert!(matches!(err, BenchError::SocketMissing { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(msg.contains(&path.display().to_string()), "{msg}");
    }

    #[test]
    fn dead_socket_is_a_connect_error() {
        // A socket file nobody listens on (left behind by a crashed plugin).
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stale.sock");
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let args = parse(&["--socket", path.to_str().unwrap()]).unwrap();
        let err = run_kms(&args).unwrap_err();
        assert!(matches!(err, BenchError::Connect { .. }), "{err:?}");
        assert!(err.to_string().contains("stale.sock"), "{err}");
    }

    #[test]
    fn bad_arguments_are_errors_not_panics() {
        for extra in [
            &["--concurrency", "0"][..],
            &["--connections", "0"],
            &["--threads", "0"],
            &["--duration", "0s"],
            &["--timeout", "0"],
            &["--ciphertexts", "0"],
            &["--ciphertexts", "100001"],
            &["--ciphertexts", "2", "--op", "status"],
            &[
                "--kill-pid",
                "1",
                "--kill-after",
                "10s",
                "--duration",
                "10s",
            ],
            &["--kill-pid", "0", "--kill-after", "1s"],
        ] {
            let mut argv = vec!["--socket", "/nonexistent.sock"];
            argv.extend_from_slice(extra);
            let args = parse(&argv).unwrap();
            let err = run_kms(&args).unwrap_err();
            assert!(
                matches!(err, BenchError::InvalidArgs(_)),
                "{extra:?}: {err:?}"
            );
        }
        let args = parse(&["--socket", "unix://relative.sock"]).unwrap();
        assert!(matches!(run_kms(&args), Err(BenchError::InvalidArgs(_))));
    }

    #[test]
    fn bad_plugin_pid_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kms.sock");
        let _l = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let args = parse(&[
            "--socket",
            path.to_str().unwrap(),
            "--plugin-pid",
            &u32::MAX.to_string(),
        ])
        .unwrap();
        let err = run_kms(&args).unwrap_err();
        assert!(matches!(err, BenchError::PluginProc { .. }), "{err:?}");
        assert!(err.to_string().contains("--plugin-pid"), "{err}");
    }

    fn sample_report() -> KmsBenchReport {
        KmsBenchReport {
            op: Op::Decrypt,
            socket: "/run/coffer/kms.sock".into(),
            concurrency: 16,
            connections: 1,
            threads: 1,
            timeout: Duration::from_secs(3),
            warmup: Duration::from_secs(1),
            elapsed: Duration::from_millis(10_002),
            plugin_version: "v2".into(),
            key_id: Some("k-123".into()),
            ops: 123_456,
            ops_per_sec: 12_343.1,
            p50: Duration::from_micros(870),
            p90: Duration::from_micros(1_240),
            p99: Duration::from_micros(2_500),
            p999: Duration::from_micros(9_000),
            max: Duration::from_millis(31),
            errors: BTreeMap::from([("DEADLINE_EXCEEDED".into(), 2), ("MISMATCH".into(), 1)]),
            generator_cpu_cores: 0.734,
            plugin_cpu_cores: Some(1.5),
            plugin_peak_rss_kib: Some(10_240),
            ciphertexts: 1,
            failover: None,
            notes: vec![],
        }
    }

    #[test]
    fn report_display() {
        let text = sample_report().to_string();
        for want in [
            "decrypt on /run/coffer/kms.sock",
            "16 callers over 1 connection(s)",
            "key_id k-123",
            "123 456  (12343 ops/s)",
            "p50 870µs  p90 1.24ms  p99 2.50ms  p99.9 9.00ms  max 31.00ms",
            "errors     3 (DEADLINE_EXCEEDED 2, MISMATCH 1)",
            "generator 0.73 cores, plugin 1.50 cores",
            "peak 10.0 MiB (10 240 KiB)",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
        let mut r = sample_report();
        r.errors.clear();
        r.plugin_cpu_cores = None;
        r.plugin_peak_rss_kib = None;
        let text = r.to_string();
        assert!(text.contains("errors     none"), "{text}");
        assert!(text.contains("plugin n/a (pass --plugin-pid)"), "{text}");
        assert!(!text.contains("rss"), "{text}");
        r.ops = 0;
        assert!(r.to_string().contains("latency    n/a"));

        let mut r = sample_report();
        r.failover = Some(FailoverReport {
            pid: 42,
            killed_at: Duration::from_millis(3_000),
            in_flight: 5,
            in_flight_failed: 0,
            in_flight_max: Duration::from_millis(12),
            failed_after: 0,
            stall: Duration::from_millis(9),
            stall_before: Duration::from_millis(2),
            before: crate::Stretch::default(),
            after: crate::Stretch {
                calls: 900,
                p50: Duration::from_micros(800),
                p99: Duration::from_millis(4),
                max: Duration::from_millis(12),
            },
        });
        let text = r.to_string();
        for want in [
            "pid 42 at 3.00s: longest time without an answer 9.00ms (before the kill: 2.00ms)",
            "5 calls in flight, 0 failed, slowest 12.00ms; 0 failed calls after the kill",
            "1s after : 900 calls, p50 800µs  p99 4.00ms  max 12.00ms",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["failover"]["stall_us"], 9_000);
        assert_eq!(v["failover"]["after"]["calls"], 900);
    }

    #[test]
    fn report_json() {
        let v = serde_json::to_value(sample_report()).unwrap();
        assert_eq!(v["op"], "decrypt");
        assert_eq!(v["ops"], 123_456);
        assert_eq!(v["p50_us"], 870);
        assert_eq!(v["max_us"], 31_000);
        assert_eq!(v["timeout_secs"], 3.0);
        assert_eq!(v["errors"]["MISMATCH"], 1);
        assert_eq!(v["plugin_peak_rss_kib"], 10_240);
        assert_eq!(v["key_id"], "k-123");
        assert_eq!(error_count_of(&sample_report()), 3);
        let mut r = sample_report();
        r.op = Op::V1Decrypt;
        r.plugin_cpu_cores = None;
        let v = serde_json::to_value(r).unwrap();
        assert_eq!(v["op"], "v1-decrypt");
        assert!(v["plugin_cpu_cores"].is_null());
    }

    fn error_count_of(r: &KmsBenchReport) -> u64 {
        r.error_count()
    }
}
