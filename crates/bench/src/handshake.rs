//! `coffer bench keyd-handshake`: what service mode's attested connections to keyd cost — making
//! the attested certificate, and opening a connection (TCP, mutual attested TLS handshake,
//! HTTP/2) — measured against a running keyd with the same pool code the plugin uses.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use coffer_keyd_client::{ClientIdentity, KeydAddr, KeydClientOptions, KeydPool, PoolOptions};
use serde::Serialize;

use crate::error::BenchError;
use crate::stats::{self, fmt_latency, ser, Latencies};

/// Arguments of `coffer bench keyd-handshake`.
#[derive(clap::Args, Debug, Clone)]
pub struct HandshakeBenchArgs {
    /// keyd's address (host:port)
    #[arg(long, value_name = "HOST:PORT")]
    pub keyd: KeydAddr,
    /// a keyring on which this client's role may call Status (each connection is proven with
    /// one Status call)
    #[arg(long)]
    pub keyring: String,
    /// connections to open and time, each with a full handshake
    #[arg(long, default_value_t = 200)]
    pub connections: usize,
    /// attested certificates to make and time (each also opens one connection, which keyd
    /// must verify afresh)
    #[arg(long, default_value_t = 50)]
    pub identities: usize,
    /// print the report as JSON
    #[arg(long)]
    pub json: bool,
}

/// Percentiles and mean of one measured step.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Step {
    /// Samples.
    pub n: usize,
    /// Mean.
    #[serde(rename = "mean_us", serialize_with = "ser::micros")]
    pub mean: Duration,
    /// Median.
    #[serde(rename = "p50_us", serialize_with = "ser::micros")]
    pub p50: Duration,
    /// 90th percentile.
    #[serde(rename = "p90_us", serialize_with = "ser::micros")]
    pub p90: Duration,
    /// 99th percentile.
    #[serde(rename = "p99_us", serialize_with = "ser::micros")]
    pub p99: Duration,
}

impl Step {
    fn from(samples: &[Duration]) -> Result<Step, BenchError> {
        let mut h = stats::new_histogram()?;
        for s in samples {
            stats::record(&mut h, *s);
        }
        let l = Latencies::from_histogram(&h);
        let total: Duration = samples.iter().sum();
        Ok(Step {
            n: samples.len(),
            mean: total / u32::try_from(samples.len().max(1)).unwrap_or(u32::MAX),
            p50: l.p50,
            p90: l.p90,
            p99: l.p99,
        })
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "mean {}  p50 {}  p90 {}  p99 {}  (n={})",
            fmt_latency(self.mean),
            fmt_latency(self.p50),
            fmt_latency(self.p90),
            fmt_latency(self.p99),
            self.n
        )
    }
}

/// The result of `coffer bench keyd-handshake`.
#[derive(Debug, Clone, Serialize)]
pub struct HandshakeBenchReport {
    /// keyd's address.
    pub keyd: String,
    /// Making an attested certificate: key pair, evidence over its hash, self-signed certificate,
    /// TLS configuration.
    pub identity: Step,
    /// A new connection with a new certificate: TCP connect, mutual attested TLS handshake with
    /// no verification cached on either side, HTTP/2 set-up and one Status call.
    pub connect_fresh: Step,
    /// A new connection with the same certificate (a reconnect): as above, with both sides'
    /// verification of the other's evidence cached.
    pub connect_reconnect: Step,
    /// One Status call on an established connection.
    pub call_warm: Step,
    /// `connect_fresh` minus `call_warm`, medians: the handshake itself.
    #[serde(rename = "handshake_fresh_us", serialize_with = "ser::micros")]
    pub handshake_fresh: Duration,
    /// `connect_reconnect` minus `call_warm`, medians.
    #[serde(rename = "handshake_reconnect_us", serialize_with = "ser::micros")]
    pub handshake_reconnect: Duration,
}

impl fmt::Display for HandshakeBenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "coffer bench keyd-handshake: keyd {}", self.keyd)?;
        writeln!(f, "  attested certificate            {}", self.identity)?;
        writeln!(
            f,
            "  connect + Status, new cert      {}",
            self.connect_fresh
        )?;
        writeln!(
            f,
            "  connect + Status, same cert     {}",
            self.connect_reconnect
        )?;
        writeln!(f, "  Status on an open connection    {}", self.call_warm)?;
        writeln!(
            f,
            "  handshake (p50, minus the call) new cert {}, same cert {}",
            fmt_latency(self.handshake_fresh),
            fmt_latency(self.handshake_reconnect)
        )
    }
}

/// Runs `coffer bench keyd-handshake`. `client` gives the options of each new identity (the
/// platform that attests this client, and the policy keyd must satisfy).
///
/// Builds its own single-threaded tokio runtime, so call it from synchronous code.
pub fn run_keyd_handshake(
    args: &HandshakeBenchArgs,
    client: impl Fn() -> KeydClientOptions,
) -> Result<HandshakeBenchReport, BenchError> {
    if args.connections == 0 || args.identities == 0 {
        return Err(BenchError::InvalidArgs(
            "--connections and --identities must be at least 1".into(),
        ));
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| BenchError::io("cannot start a tokio runtime", e))?;
    rt.block_on(async {
        let failed = |what: &str, e: &dyn std::fmt::Display| {
            BenchError::Keyd(format!("{what} keyd at {}: {e}", args.keyd))
        };
        let pool = |identity: &Arc<ClientIdentity>| {
            KeydPool::new(
                args.keyd.clone(),
                identity.clone(),
                PoolOptions {
                    connections: 1,
                    timeout: Duration::from_secs(10),
                    ..PoolOptions::default()
                },
            )
            .map_err(|e| failed("setting up a connection to", &e))
        };

        let mut identity_times = Vec::with_capacity(args.identities);
        let mut fresh_times = Vec::with_capacity(args.identities);
        let mut identity = None;
        for _ in 0..args.identities {
            let options = client();
            let start = Instant::now();
            let made = ClientIdentity::new(options)
                .map_err(|e| failed("making an attested certificate for", &e))?;
            identity_times.push(start.elapsed());
            let made = Arc::new(made);
            let p = pool(&made)?;
            let start = Instant::now();
            p.status(&args.keyring)
                .await
                .map_err(|e| failed("calling", &e))?;
            fresh_times.push(start.elapsed());
            identity = Some(made);
        }
        let identity = identity.ok_or_else(|| BenchError::InvalidArgs("no identity".into()))?;

        let mut reconnect_times = Vec::with_capacity(args.connections);
        for _ in 0..args.connections {
            let p = pool(&identity)?;
            let start = Instant::now();
            p.status(&args.keyring)
                .await
                .map_err(|e| failed("calling", &e))?;
            reconnect_times.push(start.elapsed());
        }

        let warm = pool(&identity)?;
        warm.status(&args.keyring)
            .await
            .map_err(|e| failed("calling", &e))?;
        let mut warm_times = Vec::with_capacity(args.connections);
        for _ in 0..args.connections {
            let start = Instant::now();
            warm.status(&args.keyring)
                .await
                .map_err(|e| failed("calling", &e))?;
            warm_times.push(start.elapsed());
        }

        let call_warm = Step::from(&warm_times)?;
        let connect_fresh = Step::from(&fresh_times)?;
        let connect_reconnect = Step::from(&reconnect_times)?;
        Ok(HandshakeBenchReport {
            keyd: args.keyd.to_string(),
            identity: Step::from(&identity_times)?,
            handshake_fresh: connect_fresh.p50.saturating_sub(call_warm.p50),
            handshake_reconnect: connect_reconnect.p50.saturating_sub(call_warm.p50),
            connect_fresh,
            connect_reconnect,
            call_warm,
        })
    })
}
