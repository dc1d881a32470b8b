//! Process-wide hardening for the server processes that hold keys.

use std::io;

/// Disables core dumps for this process: `RLIMIT_CORE` 0 and not dumpable (which also keeps
/// other processes of the same user from ptrace-attaching or reading `/proc/<pid>/mem`).
///
/// Call once at server start, before any key is loaded.
pub fn harden() -> io::Result<()> {
    use rustix::process::{setrlimit, Resource, Rlimit};
    setrlimit(
        Resource::Core,
        Rlimit {
            current: Some(0),
            maximum: Some(0),
        },
    )?;
    rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable)?;
    Ok(())
}

/// True when core dumps are disabled for this process (both the limit and the dumpable flag).
pub fn core_dumps_disabled() -> bool {
    let limit_zero = rustix::process::getrlimit(rustix::process::Resource::Core).current == Some(0);
    let not_dumpable = matches!(
        rustix::process::dumpable_behavior(),
        Ok(rustix::process::DumpableBehavior::NotDumpable)
    );
    limit_zero && not_dumpable
}

/// The real user id of this process.
pub fn current_uid() -> u32 {
    rustix::process::getuid().as_raw()
}
