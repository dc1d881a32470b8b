//! Locates the real vendor attestation evidence (SGX and TDX quotes with their collateral,
//! SEV-SNP reports with their VCEKs) that some tests and benchmarks verify.
//!
//! The evidence is not part of the repository. It is looked for in:
//!
//! - `$COFFER_FIXTURES`, when that variable is set;
//! - otherwise `../shared/fixtures/attestation` beside the clone.
//!
//! A test that needs it starts with [`skip_without_attestation_fixtures!`]. Without the fixtures
//! the test prints one line naming `COFFER_FIXTURES` and passes without checking anything, so a
//! clone on its own still runs every other test. CI sets `COFFER_REQUIRE_FIXTURES=1`, which turns
//! a missing fixture directory into a test failure, so CI never skips these tests silently.
//!
//! [`server`] stands in for a PCCS or AMD KDS (plain HTTP, or HTTPS under a private CA) in the
//! tests that fetch collateral and VCEKs.

pub mod server;

use std::io::Write;
use std::path::{Path, PathBuf};

/// Names the directory holding the attestation fixtures.
pub const FIXTURES_VAR: &str = "COFFER_FIXTURES";

/// When set to anything but empty or `0`, missing fixtures fail the test instead of skipping it.
pub const REQUIRE_VAR: &str = "COFFER_REQUIRE_FIXTURES";

/// A file every complete fixture directory has; its absence means "no fixtures here".
const MARKER: &str = "sgx/sgx_quote";

/// Where the fixtures are expected: `$COFFER_FIXTURES`, or `../shared/fixtures/attestation`
/// beside the clone. They may not be there: see [`attestation_fixtures`].
pub fn attestation_dir() -> PathBuf {
    match std::env::var_os(FIXTURES_VAR) {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        // This crate is `<clone>/crates/test-fixtures`; the fixtures are beside `<clone>`.
        _ => Path::new(env!("CARGO_MANIFEST_DIR"))
            .ancestors()
            .nth(3)
            .unwrap_or(Path::new("/"))
            .join("shared/fixtures/attestation"),
    }
}

/// The fixture directory, when it is present.
pub fn attestation_fixtures() -> Option<PathBuf> {
    let dir = attestation_dir();
    dir.join(MARKER).is_file().then_some(dir)
}

/// Whether missing fixtures must fail rather than skip ([`REQUIRE_VAR`]).
fn required() -> bool {
    std::env::var_os(REQUIRE_VAR).is_some_and(|v| !v.is_empty() && v != "0")
}

/// True when the fixtures are present. Otherwise prints the skip line for `what` and returns
/// false, or panics when [`REQUIRE_VAR`] is set. Use [`skip_without_attestation_fixtures!`].
pub fn attestation_fixtures_present(what: &str) -> bool {
    if attestation_fixtures().is_some() {
        return true;
    }
    let message = format!(
        "attestation fixtures not found at {}; set {FIXTURES_VAR} to their directory \
         (../shared/fixtures/attestation beside the clone) to run {what}",
        attestation_dir().display()
    );
    if required() {
        panic!("{message} ({REQUIRE_VAR} is set, so missing fixtures are a failure)");
    }
    // Straight to the process's stderr: the test harness captures `eprintln!` of passing
    // tests, and a skip that nobody sees looks like a pass.
    let _ = writeln!(std::io::stderr(), "skipped: {message}");
    false
}

/// Returns from the enclosing function (a test or a benchmark) after one line saying why, when
/// the attestation fixtures are absent; panics instead when `COFFER_REQUIRE_FIXTURES` is set.
///
/// `skip_without_attestation_fixtures!()` names the running test (its thread name);
/// `skip_without_attestation_fixtures!("what")` names `what`.
#[macro_export]
macro_rules! skip_without_attestation_fixtures {
    () => {
        $crate::skip_without_attestation_fixtures!(::std::thread::current()
            .name()
            .filter(|name| *name != "main")
            .unwrap_or(::std::module_path!()))
    };
    ($what:expr) => {
        if !$crate::attestation_fixtures_present($what) {
            return;
        }
    };
}
