//! Why the app could not be started or supervised, and the exit code each reason gives.

use std::ffi::OsString;
use std::io;
use std::path::PathBuf;

use crate::error::{EXIT_CONFIG, EXIT_INTERNAL};

/// Exit code when the app's program does not exist, as a shell gives.
pub const EXIT_APP_NOT_FOUND: i32 = 127;
/// Exit code when the app's program exists but cannot be executed, as a shell gives.
pub const EXIT_APP_NOT_EXECUTABLE: i32 = 126;

/// Why the app could not be started or supervised. Messages name the program and never an
/// environment value.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AppError {
    /// The program, given with a `/`, does not exist (or its `#!` interpreter does not).
    #[error(
        "cannot start the app: {} does not exist (or its #! interpreter does not); check the \
         command after `--` and the container image",
        program.display()
    )]
    NotFound {
        /// The program as given.
        program: PathBuf,
    },
    /// The program, given without a `/`, is in none of the `PATH` directories.
    #[error(
        "cannot start the app: {program:?} was not found in PATH={path:?}; give its absolute \
         path after `--`, or set PATH for the container"
    )]
    NotOnPath {
        /// The program as given.
        program: OsString,
        /// The app's `PATH` that was searched.
        path: OsString,
    },
    /// The program exists but cannot be executed.
    #[error(
        "cannot start the app: {} is not executable ({reason}); make it executable \
         (chmod +x) or start it through its interpreter",
        program.display()
    )]
    NotExecutable {
        /// The file that was found.
        program: PathBuf,
        /// Why the system refused to execute it.
        reason: &'static str,
    },
    /// The app's environment holds a variable that no environment can carry.
    #[error(
        "cannot start the app: environment variable {var:?} {reason}; an environment cannot \
         hold it"
    )]
    InvalidEnv {
        /// The variable's name (never its value).
        var: OsString,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Starting the program failed for another reason.
    #[error("cannot start the app {}: {source}", program.display())]
    Spawn {
        /// The program that was executed.
        program: PathBuf,
        /// The system's error.
        source: io::Error,
    },
    /// The handlers that forward signals to the app could not be installed.
    #[error("cannot install the handlers that forward signals to the app: {0}")]
    Signals(io::Error),
}

impl AppError {
    /// The exit code for this error: 127 not found, 126 not executable, as a shell gives;
    /// `EXIT_CONFIG` for an impossible environment; `EXIT_INTERNAL` otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::NotFound { .. } | Self::NotOnPath { .. } => EXIT_APP_NOT_FOUND,
            Self::NotExecutable { .. } => EXIT_APP_NOT_EXECUTABLE,
            Self::InvalidEnv { .. } => EXIT_CONFIG,
            Self::Spawn { .. } | Self::Signals(_) => EXIT_INTERNAL,
        }
    }
}
