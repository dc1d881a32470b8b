//! `coffer attest`: show this platform's evidence, verify evidence against a policy, and check
//! policy files — the tools an operator uses to fill in a policy.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use clap::{Args, Subcommand, ValueEnum};
use coffer_attest::policy::Policy;
use coffer_attest::sources::VerifySources;
use coffer_attest::{Evidence, TeeType, VerifyOptions};
use coffer_platform::{open_platform, Access, PlatformChoice};
use coffer_sealed::bundle::{KeyBundle, MAX_BUNDLE_LEN};

type Error = Box<dyn std::error::Error + Send + Sync>;

/// Largest evidence file read (quotes are a few KiB; SNP certificate tables a few more).
const MAX_EVIDENCE_FILE: u64 = 1 << 20;

#[derive(Subcommand, Debug)]
pub enum AttestCommand {
    /// Print this platform's attestation evidence (JSON with base64 fields, or raw bytes).
    Evidence(EvidenceArgs),
    /// Verify an evidence file offline and print the normalised claims; with --policy, also
    /// the role it maps to (exit 1 and the reasons if it maps to none).
    Verify(VerifyArgs),
    /// Connect to an attested TLS endpoint (e.g. coffer keyd), verify its certificate's
    /// evidence and key binding, map it to a role with --policy, and print its claims. Presents
    /// this platform's own attested certificate (endpoints require mutual attestation).
    Endpoint(EndpointArgs),
    /// Verify a key bundle file offline (as `kubectl coffer fetch-key` pins it): keyd's
    /// evidence, that it commits to the bundle's keys, its validity, and --policy's role for
    /// keyd. Prints keyd's claims, then the keyring and its sealing keys; exit 1 and the reasons
    /// if any check fails.
    Bundle(BundleArgs),
    /// Policy files.
    #[command(subcommand)]
    Policy(PolicyCommand),
}

#[derive(Args, Debug)]
pub struct EndpointArgs {
    /// host:port to connect to.
    #[arg(long)]
    pub connect: String,
    /// Policy the endpoint must satisfy; its denial lists the endpoint's measurements.
    #[arg(long)]
    pub policy: PathBuf,
    /// This client's platform, for its own attested certificate.
    #[arg(long, default_value = "auto", env = "COFFER_PLATFORM")]
    pub platform: PlatformChoice,
    /// State directory (the simulation platform keeps its key there).
    #[arg(long, default_value = "/var/lib/coffer", env = "COFFER_STATE_DIR")]
    pub state_dir: PathBuf,
    /// Give up after this long (a duration such as 10s or 500ms; at least 1ms).
    #[arg(long, default_value = "10s",
          value_parser = crate::duration::at_least(Duration::from_millis(1)))]
    pub timeout: Duration,
    #[command(flatten)]
    pub sources: SourceArgs,
}

#[derive(Args, Debug)]
pub struct BundleArgs {
    /// The key bundle file (JSON).
    pub file: PathBuf,
    /// Policy keyd's evidence must satisfy; its denial lists keyd's measurements.
    #[arg(long)]
    pub policy: PathBuf,
    /// The keyring the bundle must be for.
    #[arg(long)]
    pub keyring: Option<String>,
    #[command(flatten)]
    pub sources: SourceArgs,
    /// Verify as of this time (RFC 3339), e.g. to check an old bundle with old collateral.
    #[arg(long, value_parser = humantime::parse_rfc3339_weak)]
    pub now: Option<SystemTime>,
}

#[derive(Subcommand, Debug)]
pub enum PolicyCommand {
    /// Validate a policy file: unknown fields, typos, hex lengths, duplicate roles.
    Check {
        /// The policy file (YAML).
        file: PathBuf,
    },
}

#[derive(Args, Debug)]
pub struct EvidenceArgs {
    /// TEE platform (auto, sim, sgx-gramine, sgx-occlum, tdx, snp).
    #[arg(long, default_value = "auto", env = "COFFER_PLATFORM")]
    pub platform: PlatformChoice,
    /// State directory (the simulation platform keeps its key there).
    #[arg(long, default_value = "/var/lib/coffer", env = "COFFER_STATE_DIR")]
    pub state_dir: PathBuf,
    /// 64 bytes of report data, hex (default: zeros).
    #[arg(long)]
    pub report_data: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value = "json")]
    pub format: EvidenceFormat,
    /// Write to this file instead of stdout.
    #[arg(long)]
    pub output: Option<PathBuf>,
}

/// How evidence is written or read.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum EvidenceFormat {
    /// `{"tee": "...", "report": "<base64>", "certificates": "<base64>"}`.
    Json,
    /// The quote/report bytes only.
    Raw,
    /// The quote/report bytes as lower-case hex text.
    Hex,
}

/// Where collateral and VCEKs come from.
#[derive(Args, Debug)]
pub struct SourceArgs {
    /// Directory of DCAP collateral JSON files (air-gapped sites).
    #[arg(long)]
    pub collateral_dir: Option<PathBuf>,
    /// Use exactly this collateral file name inside --collateral-dir.
    #[arg(long, requires = "collateral_dir")]
    pub collateral_file: Option<String>,
    /// PCCS or Intel PCS base URL to fetch DCAP collateral from (cached in --cache-dir).
    #[arg(long, conflicts_with = "collateral_dir", requires = "cache_dir")]
    pub pccs_url: Option<String>,
    /// Cache directory for fetched collateral and VCEKs.
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// SEV-SNP: the VCEK (or VLEK) certificate (DER) for this report, used when the evidence
    /// carries none or a stale one; when this one is stale too (expired, or for another TCB or
    /// chip), --vcek-dir or --kds-url is asked.
    #[arg(long)]
    pub vcek: Option<PathBuf>,
    /// SEV-SNP: directory of cached VCEKs.
    #[arg(long)]
    pub vcek_dir: Option<PathBuf>,
    /// SEV-SNP: fetch VCEKs from AMD KDS at this URL (e.g. https://kdsintf.amd.com), cached in
    /// --cache-dir so the same VCEK is never fetched twice.
    #[arg(long, conflicts_with = "vcek_dir", requires = "cache_dir")]
    pub kds_url: Option<String>,
    /// PEM file of CA certificates to trust for --pccs-url and --kds-url, besides Mozilla's
    /// roots and the system trust store (e.g. a PCCS's self-signed certificate).
    #[arg(long, value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// Evidence file: JSON from `coffer attest evidence`, or a raw quote/report (then --tee)
    /// as bytes or as hex text (a 0x prefix, spaces and line breaks are allowed).
    #[arg(long)]
    pub evidence: PathBuf,
    /// Evidence type of a raw or hex file: sgx, tdx, snp or sim.
    #[arg(long)]
    pub tee: Option<String>,
    #[command(flatten)]
    pub sources: SourceArgs,
    /// Verify as of this time (RFC 3339), e.g. to check old evidence with old collateral.
    #[arg(long, value_parser = humantime::parse_rfc3339_weak)]
    pub now: Option<SystemTime>,
    /// Require these 64 bytes of report data (hex).
    #[arg(long)]
    pub report_data: Option<String>,
    /// Map the claims to a role with this policy.
    #[arg(long)]
    pub policy: Option<PathBuf>,
}

/// Runs an attest subcommand.
pub fn run(command: AttestCommand) -> Result<ExitCode, Error> {
    match command {
        AttestCommand::Evidence(args) => evidence(args),
        AttestCommand::Verify(args) => verify(args),
        AttestCommand::Endpoint(args) => endpoint(args),
        AttestCommand::Bundle(args) => bundle(args),
        AttestCommand::Policy(PolicyCommand::Check { file }) => {
            let policy = Policy::load(&file)?;
            let roles: Vec<&str> = policy.roles().collect();
            println!("{}: valid, roles: {}", file.display(), roles.join(", "));
            if policy.allows_simulation() {
                eprintln!(
                    "warning: allow_simulation is true: simulation evidence (no TEE) is accepted"
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn parse_report_data(hex_text: Option<&str>) -> Result<[u8; 64], Error> {
    let mut out = [0u8; 64];
    if let Some(text) = hex_text {
        let bytes =
            hex::decode(text.trim()).map_err(|e| format!("--report-data is not hex: {e}"))?;
        if bytes.len() != 64 {
            return Err(format!(
                "--report-data must be 64 bytes (128 hex characters), got {}",
                bytes.len()
            )
            .into());
        }
        out.copy_from_slice(&bytes);
    }
    Ok(out)
}

fn evidence(args: EvidenceArgs) -> Result<ExitCode, Error> {
    let report_data = parse_report_data(args.report_data.as_deref())?;
    let platform = open_platform(args.platform, &args.state_dir, Access::CreateIfMissing)?;
    let evidence = platform.evidence(&report_data)?;
    let bytes = match args.format {
        EvidenceFormat::Json => {
            let doc = serde_json::json!({
                "tee": evidence.tee.name(),
                "report": B64.encode(&evidence.report),
                "certificates": B64.encode(&evidence.certificates),
            });
            let mut text = serde_json::to_vec_pretty(&doc)?;
            text.push(b'\n');
            text
        }
        EvidenceFormat::Raw => evidence.report.clone(),
        EvidenceFormat::Hex => format!("{}\n", hex::encode(&evidence.report)).into_bytes(),
    };
    match &args.output {
        Some(path) => {
            std::fs::write(path, bytes).map_err(|e| format!("writing {}: {e}", path.display()))?
        }
        None => std::io::Write::write_all(&mut std::io::stdout().lock(), &bytes)?,
    }
    eprintln!("{} evidence, {} bytes", evidence.tee, evidence.report.len());
    Ok(ExitCode::SUCCESS)
}

/// Reads an evidence file: our JSON form, or raw / hex-text bytes with `tee` given.
pub fn read_evidence(path: &Path, tee: Option<&str>) -> Result<Evidence, Error> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .map_err(|e| format!("reading {}: {e}", path.display()))?
        .take(MAX_EVIDENCE_FILE + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_EVIDENCE_FILE {
        return Err(format!(
            "{} is larger than {MAX_EVIDENCE_FILE} bytes; not evidence",
            path.display()
        )
        .into());
    }
    // Only an object is our JSON form: hex text of digits alone also parses as a JSON number.
    if let Ok(doc @ serde_json::Value::Object(_)) = serde_json::from_slice(&bytes) {
        let field = |name: &str| -> Result<Vec<u8>, Error> {
            let text = doc.get(name).and_then(|v| v.as_str()).unwrap_or("");
            Ok(B64
                .decode(text)
                .map_err(|e| format!("{}: field {name:?} is not base64: {e}", path.display()))?)
        };
        let tee_name = doc
            .get("tee")
            .and_then(|v| v.as_str())
            .ok_or_else(|| format!("{}: JSON evidence needs a \"tee\" field", path.display()))?;
        let tee = TeeType::from_name(tee_name).ok_or_else(|| {
            format!(
                "{}: unknown tee {tee_name:?} (sgx, tdx, snp, sim)",
                path.display()
            )
        })?;
        return Ok(Evidence {
            tee,
            report: field("report")?,
            certificates: field("certificates")?,
        });
    }
    let tee_name = tee.ok_or("raw evidence needs --tee sgx|tdx|snp|sim")?;
    let tee = TeeType::from_name(tee_name)
        .ok_or_else(|| format!("unknown --tee {tee_name:?} (sgx, tdx, snp, sim)"))?;
    let report = match hex_text(&bytes) {
        Some(Ok(decoded)) => decoded,
        Some(Err(e)) => {
            return Err(format!(
                "{}: the evidence is text but not hex ({e}); give the raw quote/report bytes, \
                 their hex (0x prefix and line breaks allowed), or the JSON of `coffer attest \
                 evidence`",
                path.display()
            )
            .into())
        }
        None => bytes,
    };
    Ok(Evidence {
        tee,
        report,
        certificates: Vec::new(),
    })
}

/// Decodes evidence stored as hex text, as tools and fixtures store quotes and reports: any
/// whitespace (line breaks included) and a `0x`/`0X` prefix on each whitespace-separated part.
/// `None` when `bytes` is not text: raw quotes and reports always hold control bytes (their
/// little-endian version fields), so they are never mistaken for hex.
fn hex_text(bytes: &[u8]) -> Option<Result<Vec<u8>, hex::FromHexError>> {
    if bytes.is_empty()
        || !bytes
            .iter()
            .all(|b| b.is_ascii_graphic() || b.is_ascii_whitespace())
    {
        return None;
    }
    let digits: String = String::from_utf8_lossy(bytes)
        .split_whitespace()
        .map(|part| {
            part.strip_prefix("0x")
                .or_else(|| part.strip_prefix("0X"))
                .unwrap_or(part)
        })
        .collect();
    Some(hex::decode(digits))
}

fn verify(args: VerifyArgs) -> Result<ExitCode, Error> {
    let evidence = read_evidence(&args.evidence, args.tee.as_deref())?;
    let policy = args.policy.as_deref().map(Policy::load).transpose()?;
    let mut options = args
        .sources
        .options(args.now.unwrap_or_else(SystemTime::now))?;
    if args.report_data.is_some() {
        options.expected_report_data = Some(parse_report_data(args.report_data.as_deref())?);
    }
    let claims = coffer_attest::verify(&evidence, &options)?;
    println!("{}", serde_json::to_string_pretty(&claims)?);
    if evidence.tee == TeeType::Sim {
        eprintln!("warning: simulation evidence proves nothing about the machine it came from");
    }
    match policy {
        None => Ok(ExitCode::SUCCESS),
        Some(policy) => match policy.evaluate(&claims) {
            Ok(role) => {
                eprintln!("policy: role {}", role.name);
                Ok(ExitCode::SUCCESS)
            }
            Err(denial) => {
                eprintln!("policy: denied: {denial}");
                Ok(ExitCode::from(1))
            }
        },
    }
}

impl SourceArgs {
    /// The sources these flags name.
    pub fn sources(&self) -> VerifySources {
        VerifySources {
            collateral_dir: self.collateral_dir.clone(),
            collateral_file: self.collateral_file.clone(),
            pccs_url: self.pccs_url.clone(),
            cache_dir: self.cache_dir.clone(),
            vcek: self.vcek.clone(),
            vcek_dir: self.vcek_dir.clone(),
            kds_url: self.kds_url.clone(),
            ca_file: self.ca_file.clone(),
        }
    }

    /// Verification options with these sources (see [`VerifySources::options`]).
    pub fn options(&self, now: SystemTime) -> Result<VerifyOptions, Error> {
        Ok(self.sources().options(now)?)
    }
}

fn endpoint(args: EndpointArgs) -> Result<ExitCode, Error> {
    use std::net::ToSocketAddrs;
    let policy = Arc::new(Policy::load(&args.policy)?);
    let platform = open_platform(args.platform, &args.state_dir, Access::CreateIfMissing)?;
    let identity = coffer_ratls::attested_certificate(platform.as_ref())?;
    let verifier = Arc::new(coffer_ratls::AttestedVerifier::new(
        Arc::new(coffer_ratls::OfflineVerifier::new(
            args.sources.options(SystemTime::now())?,
        )),
        policy,
    ));
    let config = coffer_ratls::client_config(&identity, verifier.clone())?;
    let addr = args
        .connect
        .to_socket_addrs()
        .map_err(|e| format!("--connect {}: {e}", args.connect))?
        .next()
        .ok_or_else(|| format!("--connect {}: no address", args.connect))?;
    let mut socket = std::net::TcpStream::connect_timeout(&addr, args.timeout)
        .map_err(|e| format!("connecting to {addr}: {e}"))?;
    socket.set_read_timeout(Some(args.timeout))?;
    socket.set_write_timeout(Some(args.timeout))?;
    let name = rustls::pki_types::ServerName::try_from("coffer.invalid")?.to_owned();
    let mut tls = rustls::ClientConnection::new(Arc::new(config), name)?;
    while tls.is_handshaking() {
        tls.complete_io(&mut socket).map_err(|e| {
            format!(
                "attested TLS handshake with {addr} failed: {}",
                coffer_ratls::describe_io_error(&e)
            )
        })?;
    }
    let peer = verifier
        .peer(tls.peer_certificates())
        .ok_or("the endpoint's certificate was accepted but its claims are not available")?;
    println!("{}", serde_json::to_string_pretty(&peer.claims)?);
    eprintln!(
        "{addr}: attested {} endpoint, policy role {}",
        peer.claims.tee, peer.role.name
    );
    tls.send_close_notify();
    let _ = tls.complete_io(&mut socket);
    Ok(ExitCode::SUCCESS)
}

fn bundle(args: BundleArgs) -> Result<ExitCode, Error> {
    use std::io::Read;
    let policy = Policy::load(&args.policy)?;
    let origin = args.file.display();
    let mut bytes = Vec::new();
    std::fs::File::open(&args.file)
        .map_err(|e| format!("reading {origin}: {e}"))?
        // One byte over the limit is enough for from_json to refuse the file by its size.
        .take(MAX_BUNDLE_LEN as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("reading {origin}: {e}"))?;
    let bundle = KeyBundle::from_json(&bytes).map_err(|e| format!("{origin}: {e}"))?;
    if let Some(keyring) = &args.keyring {
        bundle
            .check_keyring(keyring)
            .map_err(|e| format!("{origin}: {e}"))?;
    }
    let options = args
        .sources
        .options(args.now.unwrap_or_else(SystemTime::now))?;
    let verified = bundle
        .verify(&policy, &options)
        .map_err(|e| format!("{origin}: the key bundle does not verify: {e}; do not seal to it"))?;
    println!("{}", serde_json::to_string_pretty(&verified.claims)?);
    if verified.claims.tee == TeeType::Sim {
        eprintln!("warning: simulation evidence proves nothing about the machine it came from");
    }
    eprintln!("{}", bundle.describe(&verified));
    Ok(ExitCode::SUCCESS)
}
