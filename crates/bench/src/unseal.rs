//! `coffer bench keyd-unseal`: keyd's Unseal throughput. The benchmark seals its own values to
//! the keyring's bundle, then drives `Unseal` (one value per call) and `UnsealBatch` (`--batch`
//! values per call) from concurrent attested callers, and reports values per second side by
//! side.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use coffer_keyd_client::{
    ClientError, KeydAddr, KeydClient, KeydClientOptions, MAX_PLAINTEXT_LEN, MAX_UNSEAL_BATCH_ITEMS,
};
use coffer_sealed::Location;
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::time::Instant;

use crate::error::{code_name, BenchError};
use crate::procfs;
use crate::sealing::{seal_values, SealedItem, Target};
use crate::stats::{self, fmt_count, fmt_latency, ser, Latencies};

/// Which calls `coffer bench keyd-unseal` measures.
#[derive(clap::ValueEnum, Serialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum UnsealMode {
    /// `Unseal`, one value per call.
    Single,
    /// `UnsealBatch`, `--batch` values per call (what `coffer run` sends).
    Batch,
    /// Both, one after the other, on the same connections.
    Both,
}

/// Arguments of `coffer bench keyd-unseal`.
#[derive(clap::Args, Debug, Clone)]
pub struct UnsealBenchArgs {
    /// keyd's address (host:port)
    #[arg(long, value_name = "HOST:PORT")]
    pub keyd: KeydAddr,
    /// the keyring the values are sealed to; keyd's `keyrings.<name>.unseal` must grant this
    /// client's role --namespace and --secret
    #[arg(long)]
    pub keyring: String,
    /// the namespace the values are sealed for and claimed to be found in
    #[arg(long, default_value = "default")]
    pub namespace: String,
    /// the Secret the values are sealed for (data keys k0, k1, ...)
    #[arg(long, default_value = "coffer-bench")]
    pub secret: String,
    /// distinct sealed values to cycle through
    #[arg(long, default_value_t = 100)]
    pub values: usize,
    /// bytes of each plaintext (random letters and digits)
    #[arg(long, default_value_t = 32)]
    pub value_size: usize,
    /// values per UnsealBatch call (1 to 256)
    #[arg(long, default_value_t = 100)]
    pub batch: usize,
    /// concurrent callers, each with its own attested connection (like that many pods
    /// starting at once), sending calls back-to-back
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// how long to measure each mode (e.g. 10s)
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// how long to run each mode before measuring; calls during warmup are not recorded
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub warmup: Duration,
    /// which calls to measure
    #[arg(long, value_enum, default_value = "both")]
    pub mode: UnsealMode,
    /// limit on connecting and on each call
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// pid of keyd, to report the CPU it used in each window (from /proc)
    #[arg(long)]
    pub keyd_pid: Option<u32>,
    /// print the report as JSON
    #[arg(long)]
    pub json: bool,
}

/// What one mode measured.
#[derive(Debug, Clone, Serialize)]
pub struct UnsealModeReport {
    /// `Unseal` or `UnsealBatch`.
    pub rpc: &'static str,
    /// Values per call.
    pub values_per_call: usize,
    /// Calls started in the measured window that keyd answered (a batch with refused items
    /// included).
    pub calls: u64,
    /// Values unsealed (and checked) by the calls started in the measured window.
    pub values: u64,
    /// `values` per second of the window.
    pub values_per_sec: f64,
    /// `calls` per second of the window.
    pub calls_per_sec: f64,
    /// Median latency of an answered call.
    #[serde(rename = "p50_us", serialize_with = "ser::micros")]
    pub p50: Duration,
    /// 90th percentile call latency.
    #[serde(rename = "p90_us", serialize_with = "ser::micros")]
    pub p90: Duration,
    /// 99th percentile call latency.
    #[serde(rename = "p99_us", serialize_with = "ser::micros")]
    pub p99: Duration,
    /// Highest call latency.
    #[serde(rename = "max_us", serialize_with = "ser::micros")]
    pub max: Duration,
    /// CPU used by the load generator in the window (user + system seconds per second).
    pub generator_cpu_cores: f64,
    /// CPU used by keyd in the window, with `--keyd-pid`.
    pub keyd_cpu_cores: Option<f64>,
    /// Failures in the window by gRPC code name (a refused batch item counts once, under the
    /// code keyd gave it), `DEADLINE_EXCEEDED`, `CONNECTION` (the connection broke) or
    /// `MISMATCH` (a plaintext differs from what was sealed).
    pub errors: BTreeMap<String, u64>,
}

impl UnsealModeReport {
    /// Total failures in the measured window.
    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }
}

/// The result of `coffer bench keyd-unseal`.
///
/// `Display` prints a human table; `Serialize` gives the `--json` form, latencies in µs and
/// durations in seconds.
#[derive(Debug, Clone, Serialize)]
pub struct UnsealBenchReport {
    /// keyd's address.
    pub keyd: String,
    /// The keyring.
    pub keyring: String,
    /// Where the values were sealed for: `namespace/secret`.
    pub secret: String,
    /// Distinct sealed values.
    pub values: usize,
    /// Bytes of each plaintext.
    pub value_size: usize,
    /// Concurrent callers (attested connections).
    pub concurrency: usize,
    /// Warmup before each mode's measurement.
    #[serde(rename = "warmup_secs", serialize_with = "ser::secs_f64")]
    pub warmup: Duration,
    /// Each mode's measured window.
    #[serde(rename = "duration_secs", serialize_with = "ser::secs_f64")]
    pub duration: Duration,
    /// `Unseal`, one value per call (absent with `--mode batch`).
    pub single: Option<UnsealModeReport>,
    /// `UnsealBatch` (absent with `--mode single`).
    pub batch: Option<UnsealModeReport>,
    /// Caveats about the run.
    pub notes: Vec<String>,
}

impl fmt::Display for UnsealBenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "coffer bench keyd-unseal: keyd {}, keyring {}, {} values of {} bytes in {}",
            self.keyd, self.keyring, self.values, self.value_size, self.secret
        )?;
        writeln!(
            f,
            "  load       {} callers, each on its own attested connection; {:.2}s per mode after {} warmup",
            self.concurrency,
            self.duration.as_secs_f64(),
            humantime::format_duration(self.warmup)
        )?;
        writeln!(
            f,
            "  {:<18} {:>10} {:>9}  {:>9} {:>9} {:>9} {:>9}  errors",
            "call", "values/s", "calls/s", "p50", "p90", "p99", "max"
        )?;
        for mode in [&self.single, &self.batch].into_iter().flatten() {
            let name = format!("{} x{}", mode.rpc, mode.values_per_call);
            let errors = if mode.errors.is_empty() {
                "none".to_string()
            } else {
                let list: Vec<String> = mode
                    .errors
                    .iter()
                    .map(|(k, v)| format!("{k} {}", fmt_count(*v)))
                    .collect();
                list.join(", ")
            };
            writeln!(
                f,
                "  {name:<18} {:>10.0} {:>9.0}  {:>9} {:>9} {:>9} {:>9}  {errors}",
                mode.values_per_sec,
                mode.calls_per_sec,
                fmt_latency(mode.p50),
                fmt_latency(mode.p90),
                fmt_latency(mode.p99),
                fmt_latency(mode.max)
            )?;
        }
        for mode in [&self.single, &self.batch].into_iter().flatten() {
            let keyd = mode
                .keyd_cpu_cores
                .map(|c| format!("{c:.2} cores"))
                .unwrap_or_else(|| "n/a (pass --keyd-pid)".into());
            writeln!(
                f,
                "  cpu        {}: generator {:.2} cores, keyd {keyd}",
                mode.rpc, mode.generator_cpu_cores
            )?;
        }
        if let (Some(single), Some(batch)) = (&self.single, &self.batch) {
            if single.values_per_sec > 0.0 {
                writeln!(
                    f,
                    "  batching   {:.1}x the values/s of single calls",
                    batch.values_per_sec / single.values_per_sec
                )?;
            }
        }
        for note in &self.notes {
            writeln!(f, "  note       {note}")?;
        }
        Ok(())
    }
}

fn validate(args: &UnsealBenchArgs) -> Result<(), BenchError> {
    let bad = |m: String| Err(BenchError::InvalidArgs(m));
    if args.values == 0 || args.concurrency == 0 {
        return bad("--values and --concurrency must be at least 1".into());
    }
    if !(1..=MAX_UNSEAL_BATCH_ITEMS).contains(&args.batch) {
        return bad(format!(
            "--batch must be 1 to {MAX_UNSEAL_BATCH_ITEMS} (keyd's limit per UnsealBatch call)"
        ));
    }
    if !(1..=MAX_PLAINTEXT_LEN).contains(&args.value_size) {
        return bad(format!(
            "--value-size must be 1 to {MAX_PLAINTEXT_LEN} bytes"
        ));
    }
    if args.duration.is_zero() || args.timeout.is_zero() {
        return bad("--duration and --timeout must be longer than 0s".into());
    }
    let year = Duration::from_secs(365 * 24 * 3600);
    if args.duration > year || args.warmup > year || args.timeout > year {
        return bad("--duration, --warmup and --timeout must each be under a year".into());
    }
    Ok(())
}

/// Runs `coffer bench keyd-unseal`. `client` gives the options of each caller's connection
/// (the platform that attests it, and the policy keyd must satisfy, which the key bundle is
/// also verified against).
///
/// Builds its own single-threaded tokio runtime, so call it from synchronous code.
pub fn run_keyd_unseal(
    args: &UnsealBenchArgs,
    client: impl Fn() -> KeydClientOptions,
) -> Result<UnsealBenchReport, BenchError> {
    validate(args)?;
    if let Some(pid) = args.keyd_pid {
        procfs::process_cpu(pid).map_err(|e| {
            BenchError::InvalidArgs(format!(
                "--keyd-pid {pid}: cannot read /proc/{pid}/stat ({e}); pass the pid of the \
                 running keyd or omit it"
            ))
        })?;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| BenchError::io("cannot start a tokio runtime", e))?;
    rt.block_on(run_async(args, client))
}

async fn run_async(
    args: &UnsealBenchArgs,
    client: impl Fn() -> KeydClientOptions,
) -> Result<UnsealBenchReport, BenchError> {
    let target = Target {
        keyring: args.keyring.clone(),
        namespace: args.namespace.clone(),
        secret: args.secret.clone(),
    };
    let mut clients = Vec::with_capacity(args.concurrency);
    let mut sealed = None;
    for _ in 0..args.concurrency {
        let options = client();
        let (policy, verify_options) = (options.policy.clone(), options.verify_options.clone());
        let mut c = KeydClient::connect_within(args.keyd.clone(), options, args.timeout)
            .await
            .map_err(|e| BenchError::Keyd(format!("connecting to keyd at {}: {e}", args.keyd)))?;
        if sealed.is_none() {
            let items = seal_values(
                &mut c,
                &policy,
                &verify_options,
                &target,
                args.values,
                args.value_size,
            )
            .await?;
            check_unseal(&mut c, &target, &items[0]).await?;
            sealed = Some(items);
        }
        clients.push(c);
    }
    let items = Arc::new(sealed.unwrap_or_default());

    let mut notes = Vec::new();
    let mut single = None;
    let mut batch = None;
    if matches!(args.mode, UnsealMode::Single | UnsealMode::Both) {
        single = Some(measure(args, &target, &clients, &items, 1).await?);
    }
    if matches!(args.mode, UnsealMode::Batch | UnsealMode::Both) {
        batch = Some(measure(args, &target, &clients, &items, args.batch).await?);
    }
    let modes = [&single, &batch];
    let modes = modes.iter().copied().flatten();
    if modes
        .clone()
        .any(|m| m.errors.contains_key("RESOURCE_EXHAUSTED"))
    {
        notes.push(
            "keyd's per-caller rate limit refused calls (all callers share one budget): raise \
             keyd's --rate-limit and --rate-burst to measure beyond it"
                .into(),
        );
    }
    if modes.clone().any(|m| m.calls == 0) {
        notes.push("a mode had no successful call in its window; check keyd's log".into());
    }
    Ok(UnsealBenchReport {
        keyd: args.keyd.to_string(),
        keyring: args.keyring.clone(),
        secret: format!("{}/{}", args.namespace, args.secret),
        values: args.values,
        value_size: args.value_size,
        concurrency: args.concurrency,
        warmup: args.warmup,
        duration: args.duration,
        single,
        batch,
        notes,
    })
}

/// Unseals one value before measuring, so a missing grant is one clear error rather than a
/// table of refusals.
async fn check_unseal(
    c: &mut KeydClient,
    target: &Target,
    item: &SealedItem,
) -> Result<(), BenchError> {
    let fail = |detail: String| BenchError::Unseal {
        keyring: target.keyring.clone(),
        namespace: target.namespace.clone(),
        secret: target.secret.clone(),
        detail,
    };
    let plaintext = c
        .unseal(&target.keyring, &item.sealed, &item.location)
        .await
        .map_err(|e| fail(e.to_string()))?;
    if plaintext != item.plaintext {
        return Err(fail(
            "keyd returned a plaintext other than the one sealed".into(),
        ));
    }
    Ok(())
}

/// When the callers of one mode record and stop.
struct Window {
    measure_start: Instant,
    end: Instant,
}

/// What one caller measured.
struct Tally {
    hist: Histogram<u64>,
    values: u64,
    errors: BTreeMap<&'static str, u64>,
}

async fn measure(
    args: &UnsealBenchArgs,
    target: &Target,
    clients: &[KeydClient],
    items: &Arc<Vec<SealedItem>>,
    per_call: usize,
) -> Result<UnsealModeReport, BenchError> {
    let measure_start = Instant::now() + args.warmup;
    let window = Arc::new(Window {
        measure_start,
        end: measure_start + args.duration,
    });
    let mut tasks = Vec::with_capacity(clients.len());
    for (n, c) in clients.iter().enumerate() {
        tasks.push(tokio::spawn(caller(
            c.clone(),
            target.keyring.clone(),
            items.clone(),
            window.clone(),
            per_call,
            // Callers start at different values so that they do not all send the same ones.
            n * items.len() / clients.len(),
        )));
    }
    tokio::time::sleep_until(measure_start).await;
    let (cpu0, wall0) = (procfs::self_cpu(), Instant::now());
    let keyd_cpu0 = args.keyd_pid.and_then(|pid| procfs::process_cpu(pid).ok());
    let mut hist = stats::new_histogram()?;
    let mut values = 0;
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    for task in tasks {
        let tally = task
            .await
            .map_err(|e| BenchError::io("a caller task failed", std::io::Error::other(e)))??;
        hist.add(&tally.hist)
            .map_err(|e| BenchError::Histogram(format!("{e:?}")))?;
        values += tally.values;
        for (code, n) in tally.errors {
            *errors.entry(code.to_string()).or_default() += n;
        }
    }
    // CPU rates use the wall time over which CPU was sampled (until the last call returned);
    // throughput uses the planned window, in which the counted calls started.
    let cpu_secs = wall0.elapsed().as_secs_f64().max(1e-9);
    let generator_cpu_cores = procfs::self_cpu().saturating_sub(cpu0).as_secs_f64() / cpu_secs;
    let keyd_cpu_cores = match (args.keyd_pid, keyd_cpu0) {
        (Some(pid), Some(c0)) => procfs::process_cpu(pid)
            .ok()
            .map(|c1| c1.saturating_sub(c0).as_secs_f64() / cpu_secs),
        _ => None,
    };
    let secs = args.duration.as_secs_f64().max(1e-9);
    let lat = Latencies::from_histogram(&hist);
    Ok(UnsealModeReport {
        rpc: if per_call == 1 {
            "Unseal"
        } else {
            "UnsealBatch"
        },
        values_per_call: per_call,
        calls: hist.len(),
        values,
        values_per_sec: values as f64 / secs,
        calls_per_sec: hist.len() as f64 / secs,
        p50: lat.p50,
        p90: lat.p90,
        p99: lat.p99,
        max: lat.max,
        generator_cpu_cores,
        keyd_cpu_cores,
        errors,
    })
}

async fn caller(
    mut c: KeydClient,
    keyring: String,
    items: Arc<Vec<SealedItem>>,
    window: Arc<Window>,
    per_call: usize,
    mut next: usize,
) -> Result<Tally, BenchError> {
    let mut tally = Tally {
        hist: stats::new_histogram()?,
        values: 0,
        errors: BTreeMap::new(),
    };
    loop {
        let t0 = Instant::now();
        if t0 >= window.end {
            break;
        }
        let picked: Vec<&SealedItem> = (0..per_call)
            .map(|i| &items[(next + i) % items.len()])
            .collect();
        next = (next + per_call) % items.len();
        // (values unsealed, failures, whether the call itself returned)
        let (ok, failed, answered) = if per_call == 1 {
            let item = picked[0];
            match c.unseal(&keyring, &item.sealed, &item.location).await {
                Ok(p) if p == item.plaintext => (1, vec![], true),
                Ok(_) => (0, vec!["MISMATCH"], true),
                Err(e) => (0, vec![client_error_name(&e)], false),
            }
        } else {
            let batch: Vec<(&str, &Location)> = picked
                .iter()
                .map(|i| (i.sealed.as_str(), &i.location))
                .collect();
            match c.unseal_batch(&keyring, &batch).await {
                Ok(results) => {
                    let mut ok = 0;
                    let mut failed = vec![];
                    for (result, item) in results.iter().zip(&picked) {
                        match result {
                            Ok(p) if *p == item.plaintext => ok += 1,
                            Ok(_) => failed.push("MISMATCH"),
                            Err(refusal) => failed.push(code_name(refusal.code)),
                        }
                    }
                    (ok, failed, true)
                }
                Err(e) => (0, vec![client_error_name(&e)], false),
            }
        };
        if t0 < window.measure_start {
            continue;
        }
        // A batch with refused items still returned: keyd did the work, so it is timed.
        if answered {
            stats::record(&mut tally.hist, t0.elapsed());
        }
        tally.values += ok;
        for f in failed {
            *tally.errors.entry(f).or_default() += 1;
        }
    }
    Ok(tally)
}

/// The report's name for a failed call.
fn client_error_name(e: &ClientError) -> &'static str {
    match e {
        ClientError::TimedOut { .. } => "DEADLINE_EXCEEDED",
        _ => match e.status() {
            Some(status) => code_name(status.code()),
            None => "CONNECTION",
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: UnsealBenchArgs,
    }

    fn parse(extra: &[&str]) -> UnsealBenchArgs {
        let mut argv = vec!["bench", "--keyd", "127.0.0.1:7000", "--keyring", "apps"];
        argv.extend_from_slice(extra);
        Cli::try_parse_from(argv).unwrap().args
    }

    #[test]
    fn defaults_and_limits() {
        let a = parse(&[]);
        assert_eq!(
            (a.values, a.batch, a.concurrency, a.mode),
            (100, 100, 4, UnsealMode::Both)
        );
        validate(&a).unwrap();
        for bad in [
            &["--batch", "0"][..],
            &["--batch", "257"],
            &["--values", "0"],
            &["--concurrency", "0"],
            &["--value-size", "0"],
            &["--duration", "0s"],
        ] {
            let e = validate(&parse(bad)).unwrap_err().to_string();
            assert!(e.contains(bad[0]), "{bad:?}: {e}");
        }
    }

    #[test]
    fn display_puts_modes_side_by_side() {
        let mode = |rpc, per_call, values_per_sec| UnsealModeReport {
            rpc,
            values_per_call: per_call,
            calls: 10,
            values: 10 * per_call as u64,
            values_per_sec,
            calls_per_sec: 10.0,
            p50: Duration::from_micros(900),
            p90: Duration::from_micros(1200),
            p99: Duration::from_micros(2000),
            max: Duration::from_micros(3000),
            generator_cpu_cores: 0.25,
            keyd_cpu_cores: None,
            errors: BTreeMap::new(),
        };
        let mut batch = mode("UnsealBatch", 100, 4000.0);
        batch.errors.insert("PERMISSION_DENIED".into(), 3);
        let r = UnsealBenchReport {
            keyd: "127.0.0.1:7000".into(),
            keyring: "apps".into(),
            secret: "default/coffer-bench".into(),
            values: 100,
            value_size: 32,
            concurrency: 4,
            warmup: Duration::from_secs(1),
            duration: Duration::from_secs(10),
            single: Some(mode("Unseal", 1, 1000.0)),
            batch: Some(batch),
            notes: vec![],
        };
        let text = r.to_string();
        for want in [
            "Unseal x1",
            "UnsealBatch x100",
            "1000",
            "4000",
            "900µs",
            "PERMISSION_DENIED 3",
            "4.0x",
            "generator 0.25 cores, keyd n/a",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["single"]["values_per_sec"], 1000.0);
        assert_eq!(v["batch"]["p50_us"], 900);
        assert_eq!(v["batch"]["errors"]["PERMISSION_DENIED"], 3);
    }
}
