//! Starting the app's process: its program looked up on its own `PATH`, exactly its
//! environment, and stdin/stdout/stderr inherited.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use rustix::fs::Access;
use rustix::io::Errno;
use rustix::process::Pid;

use super::{App, AppError};

/// What `execvp(3)` searches when the environment has no `PATH`.
const DEFAULT_PATH: &[u8] = b"/bin:/usr/bin";

/// Starts the app and returns its pid. The process is never waited for here: the supervisor's
/// reaper collects it.
///
/// The standard library copies the environment into buffers it does not zeroize; they are
/// freed when this returns.
pub(super) fn spawn(app: &App) -> Result<Pid, AppError> {
    let path = app
        .env
        .iter()
        .find(|(key, _)| key == "PATH")
        .map(|(_, value)| value.as_slice());
    let program = resolve(&app.program, path)?;
    // The program is passed as a path (it has a `/`): with a PATH lookup under a replaced
    // environment, the standard library would leave posix_spawn for fork and exec.
    let mut command = Command::new(&program);
    command.arg0(&app.program).args(&app.args).env_clear();
    for (key, value) in &app.env {
        check_env(key, value)?;
        command.env(key, OsStr::from_bytes(value));
    }
    let child = command
        .spawn()
        .map_err(|source| spawn_error(program.clone(), source))?;
    let pid = Pid::from_child(&child);
    tracing::info!(
        pid = pid.as_raw_nonzero().get(),
        program = %program.display(),
        "started the app"
    );
    Ok(pid)
}

/// The file to execute for `program`: itself when it has a `/`, else the first executable
/// `DIR/program` of `path` (an empty entry is the working directory), as `execvp(3)` does.
fn resolve(program: &OsStr, path: Option<&[u8]>) -> Result<PathBuf, AppError> {
    if program.as_bytes().contains(&b'/') {
        return Ok(PathBuf::from(program));
    }
    let path = path.unwrap_or(DEFAULT_PATH);
    let mut not_executable = None;
    if !program.is_empty() {
        for dir in path.split(|byte| *byte == b':') {
            let dir = match dir {
                b"" => Path::new("."),
                dir => Path::new(OsStr::from_bytes(dir)),
            };
            let candidate = dir.join(program);
            if !candidate.metadata().is_ok_and(|meta| meta.is_file()) {
                continue;
            }
            if rustix::fs::access(&candidate, Access::EXEC_OK).is_ok() {
                return Ok(candidate);
            }
            not_executable.get_or_insert(candidate);
        }
    }
    Err(match not_executable {
        Some(program) => AppError::NotExecutable {
            program,
            reason: "permission denied",
        },
        None => AppError::NotOnPath {
            program: program.to_owned(),
            path: OsStr::from_bytes(path).to_owned(),
        },
    })
}

/// Refuses what `execve(2)` cannot carry, instead of the standard library's vaguer error.
fn check_env(key: &OsStr, value: &[u8]) -> Result<(), AppError> {
    let reason = if key.is_empty() || key.as_bytes().contains(&b'=') {
        "has an empty name or a name with '='"
    } else if key.as_bytes().contains(&0) {
        "has a NUL byte in its name"
    } else if value.contains(&0) {
        "has a NUL byte in its value"
    } else {
        return Ok(());
    };
    Err(AppError::InvalidEnv {
        var: key.to_owned(),
        reason,
    })
}

fn spawn_error(program: PathBuf, source: std::io::Error) -> AppError {
    match Errno::from_io_error(&source) {
        Some(Errno::NOENT) => AppError::NotFound { program },
        Some(Errno::ACCESS) => AppError::NotExecutable {
            program,
            reason: "permission denied",
        },
        Some(Errno::NOEXEC) => AppError::NotExecutable {
            program,
            reason: "not a format this system can execute, and no #! line",
        },
        _ => AppError::Spawn { program, source },
    }
}
