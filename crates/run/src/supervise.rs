//! Starting and supervising the app: plaintext environment, forwarded signals, exit code,
//! orphan reaping (as PID 1 or as a child subreaper), and the `--on-change` actions.
//!
//! `coffer run` stays the app's parent instead of exec'ing it, because it must keep acting
//! for the app's whole life: forward signals, reap orphans when it is PID 1, and tell the app
//! when mounted Secrets change. The app is started with `std::process::Command` and nothing
//! run between fork and exec, so the standard library takes its `posix_spawn` path: Occlum
//! can spawn processes but cannot fork.
//!
//! ```ignore
//! let app = App { program, args, env };          // env: the full environment for the app
//! let exit_code = supervise(app, changes, on_change, grace).await?;
//! // `changes`: a message each time --out was rewritten with new values.
//! ```
//!
//! Like tini, the supervisor returns as soon as the app has exited: orphans that have already
//! exited are reaped, live ones are not waited for (the container's end stops them).

mod error;
mod reap;
mod signals;
mod spawn;

use std::ffi::OsString;
use std::time::Duration;

use rustix::process::{Pid, Signal};
use tokio::sync::mpsc;
use tokio::time::Instant;
use zeroize::Zeroizing;

use crate::{OnChange, RunError};

pub use error::{AppError, EXIT_APP_NOT_EXECUTABLE, EXIT_APP_NOT_FOUND};

/// The app to start.
pub struct App {
    /// The program (looked up on the `PATH` of [`App::env`] when it has no `/`).
    pub program: OsString,
    /// Its arguments.
    pub args: Vec<OsString>,
    /// Its whole environment (the inherited one with sealed values replaced by plaintext); the
    /// values are zeroized when the supervisor drops them.
    pub env: Vec<(OsString, Zeroizing<Vec<u8>>)>,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("program", &self.program)
            .field("args", &self.args)
            .field("env", &format_args!("[{} variables]", self.env.len()))
            .finish()
    }
}

/// Starts `app` and supervises it until it exits for good; returns the exit code `coffer run`
/// must exit with: the app's, or 128 + N when signal N killed it.
///
/// - SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2 and SIGWINCH sent to `coffer run` are
///   forwarded to the app (signals of one kind that arrive together may be delivered once; a
///   terminal's Ctrl-C, sent to the whole foreground process group, reaches the app twice).
///   After SIGTERM, SIGINT or SIGQUIT the app is never restarted; stopping it is its own
///   business (the kubelet sends SIGKILL when the pod's grace period ends).
/// - Each message on `changes` triggers `on_change`: [`OnChange::Signal`] sends the signal,
///   [`OnChange::Restart`] sends SIGTERM, waits up to `grace`, sends SIGKILL, and starts the
///   app again with the same [`App`]; changes that arrive while a restart is under way are
///   covered by it. A closed `changes` only ends the watching.
/// - Orphans re-parented to `coffer run` (it is PID 1, or it makes itself a child subreaper)
///   are reaped as they exit. The reaper collects *every* exited child of the process, so
///   nothing else in it may wait for children of its own.
///
/// The environment values are zeroized as soon as the app has started, unless
/// `on_change` is [`OnChange::Restart`], which needs them for every start.
///
/// Errors: the app could not be started, at first or at a restart ([`AppError`]: 127 not
/// found, 126 not executable, 78 an environment variable no environment can hold).
pub async fn supervise(
    app: App,
    changes: mpsc::Receiver<()>,
    on_change: OnChange,
    grace: Duration,
) -> Result<i32, RunError> {
    // Before the first spawn, so that no signal and no SIGCHLD is lost.
    let mut signals = signals::Signals::register().map_err(AppError::Signals)?;
    reap::become_subreaper();
    let pid = spawn::spawn(&app)?;
    let app = (on_change == OnChange::Restart).then_some(app);
    let supervisor = Supervisor {
        app,
        pid,
        on_change,
        grace,
        restart: None,
        stopping: false,
    };
    Ok(supervisor.run(&mut signals, changes).await?)
}

/// How often exited children are looked for without a SIGCHLD.
const REAP_INTERVAL: Duration = Duration::from_secs(1);

/// The running app and what is being done to it.
struct Supervisor {
    /// Kept only when the app may have to be started again.
    app: Option<App>,
    /// The app's current process; valid until the reaper collects it.
    pid: Pid,
    on_change: OnChange,
    grace: Duration,
    /// A restart under way: SIGTERM was sent.
    restart: Option<Restart>,
    /// `coffer run` was told to stop: the app is not started again.
    stopping: bool,
}

/// A restart under way.
struct Restart {
    /// When SIGKILL follows the SIGTERM already sent.
    kill_at: Instant,
    /// SIGKILL was sent: only the app's exit is awaited.
    killed: bool,
}

impl Supervisor {
    async fn run(
        mut self,
        signals: &mut signals::Signals,
        mut changes: mpsc::Receiver<()>,
    ) -> Result<i32, AppError> {
        let mut changes_open = true;
        // Also reap on a timer, as tini does: a LibOS that is late with or loses SIGCHLD must
        // not leave the app's exit unnoticed. The first tick is immediate, in case the app
        // exited before its SIGCHLD could be noticed.
        let mut reap_tick = tokio::time::interval(REAP_INTERVAL);
        reap_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let kill_at = self
                .restart
                .as_ref()
                .filter(|r| !r.killed)
                .map(|r| r.kill_at);
            tokio::select! {
                received = signals.next() => match received {
                    signals::Received::Child => {
                        if let Some(code) = self.reaped(&mut changes)? {
                            return Ok(code);
                        }
                    }
                    signals::Received::Forward(signal) => self.forward(signal),
                },
                _ = reap_tick.tick() => {
                    if let Some(code) = self.reaped(&mut changes)? {
                        return Ok(code);
                    }
                }
                change = changes.recv(), if changes_open => match change {
                    Some(()) => self.changed(),
                    None => changes_open = false,
                },
                () = sleep_until_some(kill_at) => {
                    tracing::warn!(
                        pid = self.pid.as_raw_nonzero().get(),
                        grace = ?self.grace,
                        "the app did not stop within the restart grace period; sending SIGKILL"
                    );
                    send(self.pid, Signal::KILL);
                    if let Some(restart) = &mut self.restart {
                        restart.killed = true;
                    }
                }
            }
        }
    }

    /// Reaps every exited child. When the app is among them, either starts it again (a restart
    /// is under way) and returns `None`, or returns the exit code to end with.
    fn reaped(&mut self, changes: &mut mpsc::Receiver<()>) -> Result<Option<i32>, AppError> {
        let Some(code) = reap::reap(self.pid) else {
            return Ok(None);
        };
        match (self.restart.take(), &self.app) {
            (Some(_), Some(app)) if !self.stopping => {
                tracing::info!(code, "the app stopped for a restart; starting it again");
                // The new start reads the files as they are now: changes announced until
                // here are covered by it.
                while changes.try_recv().is_ok() {}
                self.pid = spawn::spawn(app)?;
                Ok(None)
            }
            _ => {
                tracing::info!(code, "the app exited");
                Ok(Some(code))
            }
        }
    }

    fn forward(&mut self, signal: Signal) {
        if signals::is_termination(signal) {
            self.stopping = true;
        }
        tracing::debug!(
            signal = signals::name(signal),
            "forwarding a signal to the app"
        );
        send(self.pid, signal);
    }

    fn changed(&mut self) {
        match self.on_change {
            OnChange::None => tracing::debug!("mounted Secrets changed; --on-change none"),
            OnChange::Signal(signal) => {
                tracing::info!(
                    signal = signals::name(signal),
                    "mounted Secrets changed; signalling the app"
                );
                send(self.pid, signal);
            }
            OnChange::Restart if self.stopping || self.restart.is_some() => {}
            OnChange::Restart => {
                tracing::info!("mounted Secrets changed; restarting the app");
                send(self.pid, Signal::TERM);
                self.restart = Some(Restart {
                    kill_at: Instant::now() + self.grace,
                    killed: false,
                });
            }
        }
    }
}

/// Sends `signal` to the app. The app is not reaped before the supervisor acts on its exit, so
/// `pid` cannot have been reused; a failure (the app is already a zombie) is only logged.
fn send(pid: Pid, signal: Signal) {
    if let Err(err) = rustix::process::kill_process(pid, signal) {
        tracing::debug!(
            pid = pid.as_raw_nonzero().get(),
            signal = signals::name(signal),
            %err,
            "could not signal the app"
        );
    }
}

async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
