//! The signals `coffer run` receives: those it forwards to the app, and SIGCHLD.

use std::future::poll_fn;
use std::task::Poll;

use rustix::process::Signal;
use tokio::signal::unix::{signal, SignalKind};

/// The signals forwarded to the app, with their names for logs.
const FORWARDED: [(Signal, &str); 7] = [
    (Signal::TERM, "SIGTERM"),
    (Signal::INT, "SIGINT"),
    (Signal::HUP, "SIGHUP"),
    (Signal::QUIT, "SIGQUIT"),
    (Signal::USR1, "SIGUSR1"),
    (Signal::USR2, "SIGUSR2"),
    (Signal::WINCH, "SIGWINCH"),
];

/// Handlers for the forwarded signals and SIGCHLD. Once installed they stay for the life of
/// the process: the default actions (terminating `coffer run`) no longer apply.
pub(super) struct Signals {
    forwarded: Vec<(Signal, tokio::signal::unix::Signal)>,
    child: tokio::signal::unix::Signal,
}

impl Signals {
    /// Installs the handlers; they queue what arrives until it is asked for.
    pub(super) fn register() -> std::io::Result<Self> {
        let forwarded = FORWARDED
            .iter()
            .map(|(sig, _)| Ok((*sig, signal(SignalKind::from_raw(sig.as_raw()))?)))
            .collect::<std::io::Result<_>>()?;
        Ok(Self {
            forwarded,
            child: signal(SignalKind::child())?,
        })
    }

    /// The next signal received; SIGCHLD first, so that the app's exit is acted on before
    /// anything else.
    pub(super) async fn next(&mut self) -> Received {
        poll_fn(|cx| {
            // `None` only when the runtime shuts down; nothing is left to supervise then.
            if let Poll::Ready(Some(())) = self.child.poll_recv(cx) {
                return Poll::Ready(Received::Child);
            }
            for (sig, stream) in &mut self.forwarded {
                if let Poll::Ready(Some(())) = stream.poll_recv(cx) {
                    return Poll::Ready(Received::Forward(*sig));
                }
            }
            Poll::Pending
        })
        .await
    }
}

/// A signal `coffer run` received.
pub(super) enum Received {
    /// SIGCHLD: one or more children exited (several exits may give one SIGCHLD).
    Child,
    /// A signal to forward to the app.
    Forward(Signal),
}

/// Whether `signal` asks `coffer run` to stop: the app is not restarted after it.
pub(super) fn is_termination(signal: Signal) -> bool {
    [Signal::TERM, Signal::INT, Signal::QUIT].contains(&signal)
}

/// The signal's name, for logs.
pub(super) fn name(signal: Signal) -> String {
    FORWARDED
        .iter()
        .find(|(sig, _)| *sig == signal)
        .map_or_else(
            || format!("signal {}", signal.as_raw()),
            |(_, name)| (*name).to_owned(),
        )
}
