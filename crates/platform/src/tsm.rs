//! Intel TDX and AMD SEV-SNP evidence through the kernel's configfs-tsm report interface
//! (`/sys/kernel/config/tsm/report`), Linux ≥ 6.7.
//!
//! Per request: `mkdir report/coffer-<random>`; check `provider` (`tdx_guest` / `sev_guest`);
//! for SNP write `privlevel` when the guest does not run at VMPL 0 (read from
//! `privlevel_floor`) or a VMPL was asked for; write the 64 bytes of report data to `inblob`;
//! read `outblob` (the TDX quote / SNP report) and, for SNP, `auxblob` (the certificate table);
//! read `generation` and check it equals the number of writes made — otherwise another
//! process wrote to the same report directory meanwhile and the outblob may not be ours, so
//! the request is retried in a fresh directory. The directory is always removed afterwards.
//!
//! File access goes through [`TsmFs`] so tests can model the kernel (write limits, the
//! generation counter, races); [`RealTsmFs`] is the real filesystem.

use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::sealing::derive_sealing_key;
use crate::{fill_random, Evidence, Platform, PlatformError, PlatformKind, SealingKey, TeeType};

/// The configfs-tsm report directory, relative to the platform root.
pub const REPORT_DIR: &str = "sys/kernel/config/tsm/report";
/// How many times a request is retried when another writer races us.
pub const MAX_ATTEMPTS: usize = 3;
/// Highest privilege level configfs-tsm accepts (`TSM_PRIVLEVEL_MAX`).
const PRIVLEVEL_MAX: u8 = 3;
/// Upper bound on `outblob` and `auxblob`.
const MAX_BLOB_LEN: u64 = 1 << 20;
const SNP_SALT: &[u8] = b"coffer snp sealing v1";

/// The file operations configfs-tsm needs. [`RealTsmFs`] uses the real filesystem.
pub trait TsmFs: Send + Sync + fmt::Debug {
    /// Whether `path` exists and is a directory.
    fn is_dir(&self, path: &Path) -> bool;
    /// `mkdir path`.
    fn mkdir(&self, path: &Path) -> io::Result<()>;
    /// `rmdir path`.
    fn rmdir(&self, path: &Path) -> io::Result<()>;
    /// Writes `data` to the attribute `path` in a single `write`.
    fn write(&self, path: &Path, data: &[u8]) -> io::Result<()>;
    /// Reads the attribute `path` (at most `limit` bytes; more is an error).
    fn read(&self, path: &Path, limit: u64) -> io::Result<Vec<u8>>;
}

/// [`TsmFs`] on the real filesystem.
#[derive(Debug, Default, Clone, Copy)]
pub struct RealTsmFs;

impl TsmFs for RealTsmFs {
    fn is_dir(&self, path: &Path) -> bool {
        path.is_dir()
    }
    fn mkdir(&self, path: &Path) -> io::Result<()> {
        fs::create_dir(path)
    }
    fn rmdir(&self, path: &Path) -> io::Result<()> {
        fs::remove_dir(path)
    }
    fn write(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        let mut f = fs::OpenOptions::new().write(true).open(path)?;
        let n = f.write(data)?;
        if n != data.len() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!("short write: {n} of {} bytes accepted", data.len()),
            ));
        }
        Ok(())
    }
    fn read(&self, path: &Path, limit: u64) -> io::Result<Vec<u8>> {
        crate::gramine::read_bounded(path, limit)
    }
}

/// Which configfs-tsm provider a backend expects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TsmProvider {
    /// Intel TDX (`tdx_guest`).
    Tdx,
    /// AMD SEV-SNP (`sev_guest`).
    Snp,
}

impl TsmProvider {
    /// The kernel's provider name.
    pub fn provider_name(self) -> &'static str {
        match self {
            TsmProvider::Tdx => "tdx_guest",
            TsmProvider::Snp => "sev_guest",
        }
    }
    fn backend(self) -> &'static str {
        match self {
            TsmProvider::Tdx => "tdx",
            TsmProvider::Snp => "snp",
        }
    }
    /// Minimum outblob length.
    fn min_len(self) -> usize {
        match self {
            // The shortest TDX quote: v4, a TDX 1.0 TD report and the signature length.
            TsmProvider::Tdx => {
                crate::dcap_quote::HEADER_LEN + crate::dcap_quote::TD_REPORT10_LEN + 4
            }
            // SNP ATTESTATION_REPORT: 1184 bytes.
            TsmProvider::Snp => 1184,
        }
    }

    /// Where the report data sits in `outblob` (at least [`Self::min_len`] bytes long).
    fn report_data_offset(self, outblob: &[u8]) -> Result<usize, String> {
        match self {
            // v4 or v5 (Intel's quote generator emits v5 for TDX 1.5): the offset depends on
            // the version and the v5 body type.
            TsmProvider::Tdx => {
                crate::dcap_quote::tdx_report_data_offset(outblob).map_err(|e| e.to_string())
            }
            // SNP ATTESTATION_REPORT: REPORT_DATA at 0x50.
            TsmProvider::Snp => Ok(0x50),
        }
    }
}

/// A configfs-tsm report requester for one provider.
#[derive(Debug, Clone)]
pub struct TsmReporter {
    provider: TsmProvider,
    report_dir: PathBuf,
    fs: Arc<dyn TsmFs>,
    privlevel: Option<u8>,
}

enum Attempt {
    Done(Evidence),
    Raced { generation: u64, writes: u64 },
}

impl TsmReporter {
    /// A reporter for `<root>/sys/kernel/config/tsm/report`. Fails clearly when configfs or
    /// configfs-tsm is not available.
    pub fn new(
        root: &Path,
        provider: TsmProvider,
        fs: Arc<dyn TsmFs>,
    ) -> Result<Self, PlatformError> {
        let report_dir = root.join(REPORT_DIR);
        if !fs.is_dir(&report_dir) {
            return Err(PlatformError::DeviceMissing {
                backend: provider.backend(),
                path: report_dir,
                hint: "configfs-tsm is not available: mount configfs with \
                       `mount -t configfs none /sys/kernel/config` (Linux >= 6.7 with \
                       CONFIG_TSM_REPORTS and the tdx-guest / sev-guest driver)",
            });
        }
        Ok(TsmReporter {
            provider,
            report_dir,
            fs,
            privlevel: None,
        })
    }

    /// SNP only: the VMPL (0–3) the report is requested for, written to `privlevel`. Without
    /// one, reports are requested at the guest's own VMPL (`privlevel_floor`).
    pub fn with_privlevel(mut self, privlevel: Option<u8>) -> Self {
        self.privlevel = privlevel;
        self
    }

    /// The lowest privilege level this guest may request reports at, from a probe report
    /// directory: the guest's VMPL for SNP (0 unless it runs under an SVSM), `None` when the
    /// provider has no privilege levels.
    pub fn privlevel_floor(&self) -> Result<Option<u8>, PlatformError> {
        let mut suffix = [0u8; 8];
        fill_random(&mut suffix)?;
        let name: String = suffix.iter().map(|b| format!("{b:02x}")).collect();
        let dir = self.report_dir.join(format!("coffer-probe-{name}"));
        self.fs
            .mkdir(&dir)
            .map_err(|e| self.io_err("creating report directory", &dir, e))?;
        let floor = self.read_floor(&dir);
        if let Err(e) = self.fs.rmdir(&dir) {
            tracing::warn!(
                "{}: could not remove configfs-tsm report directory {}: {e}",
                self.provider.backend(),
                dir.display()
            );
        }
        floor
    }

    /// `privlevel_floor` of the report directory `dir` (Linux
    /// Documentation/ABI/testing/configfs-tsm: "the minimum permissible value that can be
    /// written to @privlevel"; sev-guest sets it to the VMPL whose VMPCK the guest uses).
    fn read_floor(&self, dir: &Path) -> Result<Option<u8>, PlatformError> {
        let path = dir.join("privlevel_floor");
        let text = match self.fs.read(&path, 64) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.io_err("reading", &path, e)),
        };
        String::from_utf8_lossy(&text)
            .trim()
            .parse::<u8>()
            .ok()
            .filter(|floor| *floor <= PRIVLEVEL_MAX)
            .map(Some)
            .ok_or_else(|| {
                self.err(format!(
                    "{} does not hold a privilege level (0 to {PRIVLEVEL_MAX})",
                    path.display()
                ))
            })
    }

    /// The privilege level to write to `privlevel` in `dir`, if any: the one asked for (which
    /// must not be below the floor), else the floor when it is above 0.
    fn privlevel_for(&self, dir: &Path) -> Result<Option<u8>, PlatformError> {
        if self.provider != TsmProvider::Snp {
            return Ok(None);
        }
        let floor = self.read_floor(dir)?;
        match (self.privlevel, floor) {
            (Some(level), Some(floor)) if level < floor => Err(self.err(format!(
                "a report at VMPL {level} was asked for, but this guest runs at VMPL {floor} \
                 ({}); request VMPL {floor} or higher (leave the VMPL unset to use the \
                 guest's own)",
                dir.join("privlevel_floor").display()
            ))),
            (Some(level), _) => Ok(Some(level)),
            (None, Some(floor)) if floor > 0 => Ok(Some(floor)),
            (None, _) => Ok(None),
        }
    }

    fn err(&self, problem: String) -> PlatformError {
        PlatformError::Tee {
            backend: self.provider.backend(),
            problem,
        }
    }

    fn io_err(&self, action: &str, path: &Path, e: io::Error) -> PlatformError {
        PlatformError::tee_io(self.provider.backend(), action, path, e)
    }

    /// Requests evidence bound to `report_data`, retrying up to [`MAX_ATTEMPTS`] times when
    /// another writer races us.
    pub fn report(&self, report_data: &[u8; 64]) -> Result<Evidence, PlatformError> {
        let mut last = (0, 0);
        for _ in 0..MAX_ATTEMPTS {
            let mut suffix = [0u8; 8];
            fill_random(&mut suffix)?;
            let name: String = suffix.iter().map(|b| format!("{b:02x}")).collect();
            let dir = self.report_dir.join(format!("coffer-{name}"));
            self.fs
                .mkdir(&dir)
                .map_err(|e| self.io_err("creating report directory", &dir, e))?;
            let result = self.attempt(&dir, report_data);
            if let Err(e) = self.fs.rmdir(&dir) {
                tracing::warn!(
                    "{}: could not remove configfs-tsm report directory {}: {e}",
                    self.provider.backend(),
                    dir.display()
                );
            }
            match result? {
                Attempt::Done(evidence) => return Ok(evidence),
                Attempt::Raced { generation, writes } => {
                    tracing::warn!(
                        "{}: configfs-tsm report generation {generation} != {writes} writes: \
                         another writer raced us; retrying",
                        self.provider.backend()
                    );
                    last = (generation, writes);
                }
            }
        }
        Err(self.err(format!(
            "another process kept writing to Coffer's configfs-tsm report directories \
             (generation {} after {} writes) in {MAX_ATTEMPTS} attempts; nothing else should \
             use {}",
            last.0,
            last.1,
            self.report_dir.display()
        )))
    }

    fn attempt(&self, dir: &Path, report_data: &[u8; 64]) -> Result<Attempt, PlatformError> {
        let provider_path = dir.join("provider");
        let provider = self
            .fs
            .read(&provider_path, 64)
            .map_err(|e| self.io_err("reading", &provider_path, e))?;
        let provider = String::from_utf8_lossy(&provider);
        let provider = provider.trim_end();
        let expected = self.provider.provider_name();
        if provider != expected {
            return Err(self.err(format!(
                "{} says {provider:?}, expected {expected:?}: this machine's TEE is not the \
                 one the {} backend is for; choose the platform matching the provider or use \
                 --platform auto",
                provider_path.display(),
                self.provider.backend()
            )));
        }
        let mut writes = 0u64;
        if let Some(level) = self.privlevel_for(dir)? {
            let path = dir.join("privlevel");
            self.fs
                .write(&path, level.to_string().as_bytes())
                .map_err(|e| self.io_err("writing", &path, e))?;
            writes += 1;
        }
        let inblob = dir.join("inblob");
        self.fs
            .write(&inblob, report_data)
            .map_err(|e| self.io_err("writing 64 bytes to", &inblob, e))?;
        writes += 1;
        let outblob_path = dir.join("outblob");
        let outblob = self
            .fs
            .read(&outblob_path, MAX_BLOB_LEN)
            .map_err(|e| self.io_err("reading", &outblob_path, e))?;
        let certificates = if self.provider == TsmProvider::Snp {
            let path = dir.join("auxblob");
            match self.fs.read(&path, MAX_BLOB_LEN) {
                Ok(aux) => aux,
                Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
                Err(e) => return Err(self.io_err("reading", &path, e)),
            }
        } else {
            Vec::new()
        };
        let generation_path = dir.join("generation");
        let generation = self
            .fs
            .read(&generation_path, 64)
            .map_err(|e| self.io_err("reading", &generation_path, e))?;
        let generation: u64 = String::from_utf8_lossy(&generation)
            .trim()
            .parse()
            .map_err(|_| {
                self.err(format!(
                    "{} does not hold a number",
                    generation_path.display()
                ))
            })?;
        if generation != writes {
            return Ok(Attempt::Raced { generation, writes });
        }
        let min_len = self.provider.min_len();
        if outblob.len() < min_len {
            return Err(self.err(format!(
                "{} returned {} bytes, shorter than a {} ({min_len} bytes); the quote/report \
                 generation failed (for TDX check the QGS / quote generation service on the host)",
                outblob_path.display(),
                outblob.len(),
                match self.provider {
                    TsmProvider::Tdx => "TDX quote",
                    TsmProvider::Snp => "SNP attestation report",
                }
            )));
        }
        let rd_at = self.provider.report_data_offset(&outblob).map_err(|e| {
            self.err(format!(
                "{} did not return a quote Coffer can verify: {e}",
                outblob_path.display()
            ))
        })?;
        if outblob[rd_at..rd_at + 64] != report_data[..] {
            return Err(self.err(format!(
                "the evidence in {} does not carry the report data written to inblob",
                outblob_path.display()
            )));
        }
        Ok(Attempt::Done(Evidence {
            tee: match self.provider {
                TsmProvider::Tdx => TeeType::Tdx,
                TsmProvider::Snp => TeeType::Snp,
            },
            report: outblob,
            certificates,
        }))
    }
}

/// The Intel TDX backend of [`Platform`]: evidence through configfs-tsm; no sealing key.
#[derive(Debug)]
pub struct TdxPlatform {
    reporter: TsmReporter,
}

impl TdxPlatform {
    /// Opens configfs-tsm under `root` (`/` in production).
    pub fn new(root: &Path) -> Result<Self, PlatformError> {
        Self::with_fs(root, Arc::new(RealTsmFs))
    }

    /// As [`TdxPlatform::new`], with another [`TsmFs`] (tests).
    pub fn with_fs(root: &Path, fs: Arc<dyn TsmFs>) -> Result<Self, PlatformError> {
        Ok(TdxPlatform {
            reporter: TsmReporter::new(root, TsmProvider::Tdx, fs)?,
        })
    }
}

impl Platform for TdxPlatform {
    fn kind(&self) -> PlatformKind {
        PlatformKind::Tdx
    }

    /// Always [`PlatformError::TdxNoSealingKey`]: TDX has no sealing key.
    fn sealing_key(&self, _purpose: &str) -> Result<SealingKey, PlatformError> {
        Err(PlatformError::TdxNoSealingKey)
    }

    fn evidence(&self, report_data: &[u8; 64]) -> Result<Evidence, PlatformError> {
        self.reporter.report(report_data)
    }
}

/// The AMD SEV-SNP backend of [`Platform`]: evidence through configfs-tsm, sealing keys from
/// `/dev/sev-guest` (see [`crate::sevguest`]).
#[derive(Debug)]
pub struct SnpPlatform {
    root: PathBuf,
    reporter: TsmReporter,
    /// The VMPL asked for, else the guest's own (read once from `privlevel_floor`).
    vmpl: std::sync::OnceLock<u8>,
}

impl SnpPlatform {
    /// Opens configfs-tsm under `root` (`/` in production). Reports and derived keys are for
    /// the guest's own VMPL: 0 normally, higher under an SVSM (read from `privlevel_floor`).
    pub fn new(root: &Path) -> Result<Self, PlatformError> {
        Self::with_fs(root, Arc::new(RealTsmFs))
    }

    /// As [`SnpPlatform::new`], with another [`TsmFs`] (tests).
    pub fn with_fs(root: &Path, fs: Arc<dyn TsmFs>) -> Result<Self, PlatformError> {
        Ok(SnpPlatform {
            root: root.to_path_buf(),
            reporter: TsmReporter::new(root, TsmProvider::Snp, fs)?,
            vmpl: std::sync::OnceLock::new(),
        })
    }

    /// Requests reports and derived keys for `vmpl` (0–3; must be ≥ the guest's own VMPL,
    /// e.g. under an SVSM) instead of the guest's own.
    pub fn with_vmpl(mut self, vmpl: u8) -> Self {
        self.vmpl = std::sync::OnceLock::from(vmpl);
        self.reporter = self.reporter.with_privlevel(Some(vmpl));
        self
    }

    /// The VMPL derived keys are requested at: the one asked for, else the guest's own.
    /// The firmware refuses a key request for a VMPL below the guest's own (AMD SEV-SNP ABI
    /// spec 56860, MSG_KEY_REQ), and the kernel passes the `vmpl` field of
    /// `struct snp_derived_key_req` (Linux include/uapi/linux/sev-guest.h) through unchanged.
    pub fn vmpl(&self) -> Result<u8, PlatformError> {
        if let Some(vmpl) = self.vmpl.get() {
            return Ok(*vmpl);
        }
        let floor = self.reporter.privlevel_floor()?.unwrap_or(0);
        Ok(*self.vmpl.get_or_init(|| floor))
    }
}

impl Platform for SnpPlatform {
    fn kind(&self) -> PlatformKind {
        PlatformKind::Snp
    }

    fn sealing_key(&self, purpose: &str) -> Result<SealingKey, PlatformError> {
        let raw = crate::sevguest::derived_key(&self.root, u32::from(self.vmpl()?))?;
        derive_sealing_key(SNP_SALT, &raw[..], purpose)
    }

    fn evidence(&self, report_data: &[u8; 64]) -> Result<Evidence, PlatformError> {
        self.reporter.report(report_data)
    }
}

/// Creates a configfs-tsm report directory under `root`, reads its `provider` and removes it
/// again (for auto-detection).
pub(crate) fn probe_provider(root: &Path, fs: &dyn TsmFs) -> io::Result<String> {
    let mut suffix = [0u8; 8];
    fill_random(&mut suffix).map_err(io::Error::other)?;
    let name: String = suffix.iter().map(|b| format!("{b:02x}")).collect();
    let dir = root.join(REPORT_DIR).join(format!("coffer-probe-{name}"));
    fs.mkdir(&dir)?;
    let provider = fs.read(&dir.join("provider"), 64);
    let _ = fs.rmdir(&dir);
    Ok(String::from_utf8_lossy(&provider?).trim_end().to_string())
}

/// A model of the kernel's configfs-tsm for tests.
#[cfg(test)]
pub(crate) mod fake {
    use super::*;
    use std::collections::HashMap;
    use std::sync::Mutex;

    /// One report directory.
    #[derive(Debug, Default)]
    struct Report {
        inblob: Vec<u8>,
        privlevel: u8,
        generation: u64,
    }

    /// Models configfs-tsm: `mkdir` creates a report with its attributes, `inblob` takes at
    /// most 64 bytes (EINVAL beyond), every write bumps `generation`, `outblob` is a fake
    /// quote/report carrying the inblob.
    #[derive(Debug)]
    pub struct FakeTsm {
        pub report_dir: PathBuf,
        pub provider: Mutex<String>,
        reports: Mutex<HashMap<PathBuf, Report>>,
        /// Extra generation bumps (foreign writers) for the next N requests.
        pub races: Mutex<usize>,
        pub outblob_len: Mutex<Option<usize>>,
        /// The TDX quote's version and (v5) body type; v4 by default.
        pub tdx_quote: Mutex<(u16, u16)>,
        pub auxblob: Mutex<Vec<u8>>,
        /// `privlevel_floor` (SNP): the guest's VMPL; `None` hides the attribute.
        pub privlevel_floor: Mutex<Option<u8>>,
        pub deny_mkdir: bool,
        pub removed: Mutex<Vec<PathBuf>>,
    }

    impl FakeTsm {
        pub fn new(root: &Path, provider: &str) -> Arc<Self> {
            Arc::new(FakeTsm {
                report_dir: root.join(REPORT_DIR),
                provider: Mutex::new(provider.into()),
                reports: Mutex::default(),
                races: Mutex::new(0),
                outblob_len: Mutex::new(None),
                tdx_quote: Mutex::new((4, 0)),
                auxblob: Mutex::new(Vec::new()),
                privlevel_floor: Mutex::new(None),
                deny_mkdir: false,
                removed: Mutex::default(),
            })
        }

        pub fn live_reports(&self) -> usize {
            self.reports.lock().unwrap().len()
        }

        fn split(path: &Path) -> (PathBuf, String) {
            (
                path.parent().unwrap().to_path_buf(),
                path.file_name().unwrap().to_string_lossy().into_owned(),
            )
        }
    }

    fn errno(e: rustix::io::Errno) -> io::Error {
        io::Error::from_raw_os_error(e.raw_os_error())
    }

    impl TsmFs for FakeTsm {
        fn is_dir(&self, path: &Path) -> bool {
            path == self.report_dir || self.reports.lock().unwrap().contains_key(path)
        }
        fn mkdir(&self, path: &Path) -> io::Result<()> {
            if self.deny_mkdir {
                return Err(errno(rustix::io::Errno::ACCESS));
            }
            assert_eq!(path.parent(), Some(self.report_dir.as_path()));
            let mut reports = self.reports.lock().unwrap();
            if reports.contains_key(path) {
                return Err(errno(rustix::io::Errno::EXIST));
            }
            reports.insert(path.to_path_buf(), Report::default());
            Ok(())
        }
        fn rmdir(&self, path: &Path) -> io::Result<()> {
            self.removed.lock().unwrap().push(path.to_path_buf());
            self.reports
                .lock()
                .unwrap()
                .remove(path)
                .map(|_| ())
                .ok_or_else(|| errno(rustix::io::Errno::NOENT))
        }
        fn write(&self, path: &Path, data: &[u8]) -> io::Result<()> {
            let (dir, attr) = Self::split(path);
            let mut reports = self.reports.lock().unwrap();
            let report = reports
                .get_mut(&dir)
                .ok_or_else(|| errno(rustix::io::Errno::NOENT))?;
            match attr.as_str() {
                "inblob" => {
                    if data.len() > 64 {
                        return Err(errno(rustix::io::Errno::INVAL));
                    }
                    report.inblob = data.to_vec();
                }
                "privlevel" => {
                    let level: u8 = std::str::from_utf8(data)
                        .ok()
                        .and_then(|s| s.trim().parse().ok())
                        .filter(|l| *l <= 3)
                        .filter(|l| Some(*l) >= *self.privlevel_floor.lock().unwrap())
                        .ok_or_else(|| errno(rustix::io::Errno::INVAL))?;
                    report.privlevel = level;
                }
                "provider" | "outblob" | "auxblob" | "generation" | "privlevel_floor" => {
                    return Err(errno(rustix::io::Errno::ACCESS))
                }
                _ => return Err(errno(rustix::io::Errno::NOENT)),
            }
            report.generation += 1;
            let mut races = self.races.lock().unwrap();
            if attr == "inblob" && *races > 0 {
                *races -= 1;
                report.generation += 1; // a foreign writer
            }
            Ok(())
        }
        fn read(&self, path: &Path, _limit: u64) -> io::Result<Vec<u8>> {
            let (dir, attr) = Self::split(path);
            let reports = self.reports.lock().unwrap();
            let report = reports
                .get(&dir)
                .ok_or_else(|| errno(rustix::io::Errno::NOENT))?;
            let provider = self.provider.lock().unwrap().clone();
            match attr.as_str() {
                "provider" => Ok(format!("{provider}\n").into_bytes()),
                "generation" => Ok(format!("{}\n", report.generation).into_bytes()),
                "privlevel_floor" => match *self.privlevel_floor.lock().unwrap() {
                    Some(floor) => Ok(format!("{floor}\n").into_bytes()),
                    None => Err(errno(rustix::io::Errno::NOENT)),
                },
                "outblob" => {
                    // The firmware refuses a report below the guest's own VMPL.
                    let floor = self.privlevel_floor.lock().unwrap().unwrap_or(0);
                    if provider == "sev_guest" && report.privlevel < floor {
                        return Err(errno(rustix::io::Errno::INVAL));
                    }
                    let mut rd = report.inblob.clone();
                    rd.resize(64, 0);
                    let rd: [u8; 64] = rd.try_into().unwrap();
                    let mut out = if provider == "sev_guest" {
                        let mut out = vec![0u8; 1184];
                        out[0x50..0x90].copy_from_slice(&rd);
                        // ATTESTATION_REPORT.VMPL at 0x30.
                        out[0x30] = report.privlevel;
                        out
                    } else {
                        let (version, body_type) = *self.tdx_quote.lock().unwrap();
                        crate::dcap_quote::fake_tdx_quote(version, body_type, &rd)
                    };
                    if let Some(short) = *self.outblob_len.lock().unwrap() {
                        out.truncate(short);
                    }
                    Ok(out)
                }
                "auxblob" if provider == "sev_guest" => Ok(self.auxblob.lock().unwrap().clone()),
                _ => Err(errno(rustix::io::Errno::NOENT)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fake::FakeTsm;
    use super::*;

    fn root() -> PathBuf {
        PathBuf::from("/fake-root")
    }

    #[test]
    fn tdx_happy_path_cleans_up() {
        let fs = FakeTsm::new(&root(), "tdx_guest");
        let p = TdxPlatform::with_fs(&root(), fs.clone()).unwrap();
        let rd = [0x42u8; 64];
        let ev = p.evidence(&rd).unwrap();
        assert_eq!(ev.tee, TeeType::Tdx);
        assert_eq!(&ev.report[568..632], &rd[..]);
        assert!(ev.certificates.is_empty());
        assert_eq!(fs.live_reports(), 0);
        let removed = fs.removed.lock().unwrap();
        assert_eq!(removed.len(), 1);
        assert!(removed[0]
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("coffer-"));
    }

    #[test]
    fn tdx_accepts_its_own_v5_quotes() {
        // Intel's quote generator emits v5 quotes (TDX 1.5): a body type and size precede the
        // TD report, so the report data sits 6 bytes further than in v4.
        let fs = FakeTsm::new(&root(), "tdx_guest");
        let p = TdxPlatform::with_fs(&root(), fs.clone()).unwrap();
        let rd = [0x42u8; 64];
        for (body_type, len) in [(2u16, 584usize), (3, 648), (4, 885)] {
            *fs.tdx_quote.lock().unwrap() = (5, body_type);
            let ev = p.evidence(&rd).unwrap();
            assert_eq!(ev.report[0], 5);
            assert_eq!(&ev.report[574..638], &rd[..], "body type {body_type}");
            assert_eq!(ev.report.len(), 54 + len + 4 + 100);
        }
        assert_eq!(fs.live_reports(), 0);
    }

    #[test]
    fn tdx_refuses_quotes_it_cannot_read_the_report_data_of() {
        let fs = FakeTsm::new(&root(), "tdx_guest");
        let p = TdxPlatform::with_fs(&root(), fs.clone()).unwrap();
        for (quote, expected) in [
            ((5, 1), "body has type 1"),
            ((6, 0), "version 6"),
            ((3, 0), "version 3"),
        ] {
            *fs.tdx_quote.lock().unwrap() = quote;
            let err = p.evidence(&[1u8; 64]).unwrap_err().to_string();
            assert!(
                err.contains("did not return a quote Coffer can verify") && err.contains(expected),
                "{err}"
            );
        }
        // A v5 quote cut inside its TDX 1.5 body.
        *fs.tdx_quote.lock().unwrap() = (5, 3);
        *fs.outblob_len.lock().unwrap() = Some(700);
        let err = p.evidence(&[1u8; 64]).unwrap_err().to_string();
        assert!(err.contains("700 bytes long"), "{err}");
        assert_eq!(fs.live_reports(), 0);
    }

    #[test]
    fn tdx_has_no_sealing_key() {
        let fs = FakeTsm::new(&root(), "tdx_guest");
        let p = TdxPlatform::with_fs(&root(), fs).unwrap();
        let err = p.sealing_key("p").unwrap_err();
        assert!(matches!(err, PlatformError::TdxNoSealingKey));
        let msg = err.to_string();
        assert!(
            msg.contains("standalone mode cannot run on TDX") && msg.contains("--keyd"),
            "{msg}"
        );
    }

    #[test]
    fn snp_happy_path_with_certificates_and_privlevel() {
        let fs = FakeTsm::new(&root(), "sev_guest");
        *fs.auxblob.lock().unwrap() = b"cert table".to_vec();
        let p = SnpPlatform::with_fs(&root(), fs.clone()).unwrap();
        let rd = [7u8; 64];
        let ev = p.evidence(&rd).unwrap();
        assert_eq!(ev.tee, TeeType::Snp);
        assert_eq!(ev.report.len(), 1184);
        assert_eq!(&ev.report[0x50..0x90], &rd[..]);
        assert_eq!(ev.certificates, b"cert table");
        // privlevel is a second write: generation 2 must be accepted.
        let p = SnpPlatform::with_fs(&root(), fs.clone())
            .unwrap()
            .with_vmpl(1);
        p.evidence(&rd).unwrap();
        // Empty auxblob is fine.
        fs.auxblob.lock().unwrap().clear();
        assert!(p.evidence(&rd).unwrap().certificates.is_empty());
        assert_eq!(fs.live_reports(), 0);
    }

    #[test]
    fn snp_under_an_svsm_reports_at_the_privlevel_floor() {
        // A guest at VMPL 2 under an SVSM: the kernel's privlevel_floor is 2 and the
        // firmware refuses reports below it.
        let fs = FakeTsm::new(&root(), "sev_guest");
        *fs.privlevel_floor.lock().unwrap() = Some(2);
        let p = SnpPlatform::with_fs(&root(), fs.clone()).unwrap();
        let rd = [5u8; 64];
        let ev = p.evidence(&rd).unwrap();
        assert_eq!(ev.report[0x30], 2, "report requested at the guest's VMPL");
        assert_eq!(&ev.report[0x50..0x90], &rd[..]);
        // Asking for a higher VMPL is fine; a lower one is refused clearly.
        let p3 = SnpPlatform::with_fs(&root(), fs.clone())
            .unwrap()
            .with_vmpl(3);
        assert_eq!(p3.evidence(&rd).unwrap().report[0x30], 3);
        let p1 = SnpPlatform::with_fs(&root(), fs.clone())
            .unwrap()
            .with_vmpl(1);
        let err = p1.evidence(&rd).unwrap_err().to_string();
        assert!(
            err.contains("VMPL 1 was asked for, but this guest runs at VMPL 2")
                && err.contains("privlevel_floor"),
            "{err}"
        );
        assert_eq!(fs.live_reports(), 0);

        // A garbled floor is an error, not VMPL 0.
        let mut inner = Arc::try_unwrap(FakeTsm::new(&root(), "sev_guest")).unwrap();
        inner.privlevel_floor = std::sync::Mutex::new(Some(9));
        let p = SnpPlatform::with_fs(&root(), Arc::new(inner)).unwrap();
        let err = p.evidence(&rd).unwrap_err().to_string();
        assert!(err.contains("does not hold a privilege level"), "{err}");
    }

    #[test]
    fn snp_derived_keys_are_requested_at_the_guests_vmpl() {
        let fs = FakeTsm::new(&root(), "sev_guest");
        assert_eq!(
            SnpPlatform::with_fs(&root(), fs.clone())
                .unwrap()
                .vmpl()
                .unwrap(),
            0
        );
        *fs.privlevel_floor.lock().unwrap() = Some(0);
        assert_eq!(
            SnpPlatform::with_fs(&root(), fs.clone())
                .unwrap()
                .vmpl()
                .unwrap(),
            0
        );
        *fs.privlevel_floor.lock().unwrap() = Some(2);
        let p = SnpPlatform::with_fs(&root(), fs.clone()).unwrap();
        assert_eq!(p.vmpl().unwrap(), 2);
        assert_eq!(p.vmpl().unwrap(), 2);
        assert_eq!(
            crate::sevguest::derived_key_request(u32::from(p.vmpl().unwrap())).vmpl,
            2
        );
        let p = SnpPlatform::with_fs(&root(), fs.clone())
            .unwrap()
            .with_vmpl(3);
        assert_eq!(p.vmpl().unwrap(), 3);
        // The probe directory is gone again.
        assert_eq!(fs.live_reports(), 0);
    }

    #[test]
    fn tsm_inblob_write_limit_is_enforced_by_the_model() {
        let fs = FakeTsm::new(&root(), "tdx_guest");
        let dir = fs.report_dir.join("x");
        fs.mkdir(&dir).unwrap();
        let e = fs.write(&dir.join("inblob"), &[0u8; 65]).unwrap_err();
        assert_eq!(
            e.raw_os_error(),
            Some(rustix::io::Errno::INVAL.raw_os_error())
        );
        fs.write(&dir.join("inblob"), &[0u8; 64]).unwrap();
        // And our reporter always writes exactly 64 bytes, so it passes.
        fs.rmdir(&dir).unwrap();
        let p = TdxPlatform::with_fs(&root(), fs).unwrap();
        p.evidence(&[1u8; 64]).unwrap();
    }

    #[test]
    fn tsm_generation_race_retries_then_fails() {
        let fs = FakeTsm::new(&root(), "tdx_guest");
        let p = TdxPlatform::with_fs(&root(), fs.clone()).unwrap();
        *fs.races.lock().unwrap() = 1;
        p.evidence(&[1u8; 64]).unwrap();
        assert_eq!(fs.removed.lock().unwrap().len(), 2);

        *fs.races.lock().unwrap() = MAX_ATTEMPTS;
        let err = p.evidence(&[1u8; 64]).unwrap_err().to_string();
        assert!(
            err.contains("kept writing") && err.contains("generation 2 after 1 writes"),
            "{err}"
        );
        assert_eq!(fs.live_reports(), 0);
    }

    #[test]
    fn tsm_configfs_not_mounted() {
        let dir = tempfile::tempdir().unwrap();
        let err = TdxPlatform::new(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("mount -t configfs none /sys/kernel/config"),
            "{err}"
        );
        let err = SnpPlatform::new(dir.path()).unwrap_err().to_string();
        assert!(err.starts_with("snp:"), "{err}");
    }

    #[test]
    fn tsm_permission_denied() {
        let fs = FakeTsm::new(&root(), "tdx_guest");
        let mut inner = Arc::try_unwrap(fs).unwrap();
        inner.deny_mkdir = true;
        let p = TdxPlatform::with_fs(&root(), Arc::new(inner)).unwrap();
        let err = p.evidence(&[1u8; 64]).unwrap_err().to_string();
        assert!(
            err.contains("permission denied") && err.contains("creating report directory"),
            "{err}"
        );
    }

    #[test]
    fn tsm_permission_denied_on_real_fs() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let report = dir.path().join(REPORT_DIR);
        fs::create_dir_all(&report).unwrap();
        fs::set_permissions(&report, fs::Permissions::from_mode(0o555)).unwrap();
        let p = TdxPlatform::new(dir.path()).unwrap();
        let err = crate::testutil::without_file_permission_override(move || {
            p.evidence(&[1u8; 64]).unwrap_err().to_string()
        });
        if let Some(err) = err {
            assert!(
                err.contains("permission denied") && err.contains("creating report directory"),
                "{err}"
            );
        }
    }

    #[test]
    fn tsm_short_and_empty_outblob() {
        for provider in ["tdx_guest", "sev_guest"] {
            let fs = FakeTsm::new(&root(), provider);
            let p: Box<dyn Platform> = if provider == "tdx_guest" {
                Box::new(TdxPlatform::with_fs(&root(), fs.clone()).unwrap())
            } else {
                Box::new(SnpPlatform::with_fs(&root(), fs.clone()).unwrap())
            };
            *fs.outblob_len.lock().unwrap() = Some(100);
            let err = p.evidence(&[1u8; 64]).unwrap_err().to_string();
            assert!(err.contains("returned 100 bytes"), "{err}");
            *fs.outblob_len.lock().unwrap() = Some(0);
            let err = p.evidence(&[1u8; 64]).unwrap_err().to_string();
            assert!(err.contains("returned 0 bytes"), "{err}");
            assert_eq!(
                fs.live_reports(),
                0,
                "report directory left behind on error"
            );
        }
    }

    #[test]
    fn tsm_wrong_provider() {
        let fs = FakeTsm::new(&root(), "sev_guest");
        let p = TdxPlatform::with_fs(&root(), fs.clone()).unwrap();
        let err = p.evidence(&[1u8; 64]).unwrap_err().to_string();
        assert!(
            err.contains("\"sev_guest\"") && err.contains("expected \"tdx_guest\""),
            "{err}"
        );
        assert_eq!(fs.live_reports(), 0);
    }

    #[test]
    fn tsm_real_fs_plain_directory_is_not_configfs() {
        // A plain directory tree: mkdir works but the kernel's attribute files never appear.
        let dir = tempfile::tempdir().unwrap();
        let report = dir.path().join(REPORT_DIR);
        fs::create_dir_all(&report).unwrap();
        let p = TdxPlatform::new(dir.path()).unwrap();
        let err = p.evidence(&[1u8; 64]).unwrap_err().to_string();
        assert!(
            err.contains("provider") && err.contains("does not exist"),
            "{err}"
        );
        // The report directory was removed again.
        assert_eq!(fs::read_dir(&report).unwrap().count(), 0);
    }

    #[test]
    fn tsm_real_fs_happy_path_with_kernel_simulated_by_a_thread() {
        // A second thread plays the kernel: it populates every new report directory with the
        // attributes, and fills outblob/generation once inblob has been written.
        let dir = tempfile::tempdir().unwrap();
        let report = dir.path().join(REPORT_DIR);
        fs::create_dir_all(&report).unwrap();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let kernel = {
            let report = report.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut seen = std::collections::HashSet::new();
                let mut done = std::collections::HashSet::new();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    for entry in fs::read_dir(&report).unwrap().flatten() {
                        let d = entry.path();
                        // Attributes appear whole, as in configfs: written aside, then renamed,
                        // so a reader never sees a half-written file.
                        let put = |name: &str, bytes: &[u8]| {
                            let tmp = d.join(format!("{name}.tmp"));
                            let _ = fs::write(&tmp, bytes);
                            let _ = fs::rename(&tmp, d.join(name));
                        };
                        if seen.insert(d.clone()) {
                            put("inblob", b"");
                            put("generation", b"0\n");
                            put("provider", b"tdx_guest\n");
                        }
                        let inblob = fs::read(d.join("inblob")).unwrap_or_default();
                        if inblob.len() == 64 && done.insert(d.clone()) {
                            let rd: [u8; 64] = inblob.as_slice().try_into().unwrap();
                            let out = crate::dcap_quote::fake_tdx_quote(4, 0, &rd);
                            put("generation", b"1\n");
                            put("outblob", &out);
                        }
                    }
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
            })
        };
        // The real kernel is synchronous; here we wait for the thread by retrying reads.
        #[derive(Debug)]
        struct Patient;
        impl TsmFs for Patient {
            fn is_dir(&self, p: &Path) -> bool {
                RealTsmFs.is_dir(p)
            }
            fn mkdir(&self, p: &Path) -> io::Result<()> {
                RealTsmFs.mkdir(p)?;
                while !p.join("provider").exists() {
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                Ok(())
            }
            fn rmdir(&self, p: &Path) -> io::Result<()> {
                // configfs removes the attributes with the directory.
                for entry in fs::read_dir(p)?.flatten() {
                    fs::remove_file(entry.path())?;
                }
                RealTsmFs.rmdir(p)
            }
            fn write(&self, p: &Path, d: &[u8]) -> io::Result<()> {
                RealTsmFs.write(p, d)
            }
            fn read(&self, p: &Path, limit: u64) -> io::Result<Vec<u8>> {
                if p.ends_with("outblob") {
                    while !p.exists() {
                        std::thread::sleep(std::time::Duration::from_millis(1));
                    }
                }
                RealTsmFs.read(p, limit)
            }
        }
        let p = TdxPlatform::with_fs(dir.path(), Arc::new(Patient)).unwrap();
        let ev = p.evidence(&[9u8; 64]);
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        kernel.join().unwrap();
        let ev = ev.unwrap();
        assert_eq!(&ev.report[568..632], &[9u8; 64]);
        assert_eq!(fs::read_dir(&report).unwrap().count(), 0);
    }
}
