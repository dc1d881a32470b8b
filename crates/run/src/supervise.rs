//! Starting and supervising the app: plaintext environment, forwarded signals, exit code,
//! orphan reaping (as PID 1 or as a child subreaper), and the `--on-change` actions.
//!
//! Contract (i11-supervise fills it in; i11-run calls it):
//!
//! ```ignore
//! let app = App { program, args, env };          // env: the full environment for the app
//! let exit_code = supervise(app, changes, on_change, grace).await?;
//! // `changes`: a message each time --out was rewritten with new values.
//! ```

use std::ffi::OsString;
use std::time::Duration;

use tokio::sync::mpsc;
use zeroize::Zeroizing;

use crate::{OnChange, RunError};

/// The app to start.
pub struct App {
    /// The program (looked up on PATH when it has no `/`).
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
/// must exit with (the app's, or 128 + N when signal N killed it). Each message on `changes`
/// triggers `on_change`; `grace` is how long a restart or a forwarded SIGTERM waits before
/// SIGKILL... (a restart only; termination is the app's business).
pub async fn supervise(
    app: App,
    changes: mpsc::Receiver<()>,
    on_change: OnChange,
    grace: Duration,
) -> Result<i32, RunError> {
    let _ = (app, changes, on_change, grace);
    todo!("i11-supervise")
}
