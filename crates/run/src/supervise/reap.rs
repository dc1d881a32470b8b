//! Collecting exited children: the app, and orphans re-parented to `coffer run`.

use rustix::io::Errno;
use rustix::process::{Pid, WaitOptions, WaitStatus};

use crate::error::EXIT_INTERNAL;

/// Makes orphans of the app's descendants re-parent to this process, so they are reaped here
/// as they would be by PID 1. PID 1 gets them anyway.
pub(super) fn become_subreaper() {
    let me = rustix::process::getpid();
    if me.is_init() {
        return;
    }
    if let Err(err) = rustix::process::set_child_subreaper(Some(me)) {
        tracing::warn!(%err, "cannot become a child subreaper; orphans of the app go to the node's init");
    }
}

/// Reaps every child that has exited, without waiting for live ones. Returns the app's exit
/// code when the app is among them.
pub(super) fn reap(app: Pid) -> Option<i32> {
    let mut app_code = None;
    loop {
        match rustix::process::wait(WaitOptions::NOHANG) {
            Ok(Some((pid, status))) if pid == app => app_code = Some(exit_code(status)),
            Ok(Some((pid, status))) => {
                tracing::debug!(
                    pid = pid.as_raw_nonzero().get(),
                    ?status,
                    "reaped an orphan"
                );
            }
            Ok(None) | Err(Errno::CHILD) => return app_code,
            Err(Errno::INTR) => {}
            Err(err) => {
                tracing::warn!(%err, "waiting for exited children failed");
                return app_code;
            }
        }
    }
}

/// The code a shell would report: the exit status, or 128 + N when signal N killed it.
fn exit_code(status: WaitStatus) -> i32 {
    status
        .exit_status()
        .or_else(|| status.terminating_signal().map(|signal| 128 + signal))
        .unwrap_or(EXIT_INTERNAL)
}
