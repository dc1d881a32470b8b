//! Running a command that is expected to exit on its own.

use std::fs;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// How long a command that should refuse to start may run before the test gives up on it.
pub const REFUSAL_LIMIT: Duration = Duration::from_secs(30);

/// Runs `command` to completion with its output captured, killing it (and failing the test)
/// after [`REFUSAL_LIMIT`]: a server expected to refuse its flags must fail the test, not hang
/// it, when it starts serving instead.
pub fn output_within(command: &mut Command) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let (out, err) = (dir.path().join("stdout"), dir.path().join("stderr"));
    let mut child = command
        .stdin(Stdio::null())
        .stdout(fs::File::create(&out).unwrap())
        .stderr(fs::File::create(&err).unwrap())
        .spawn()
        .expect("run coffer");
    let deadline = Instant::now() + REFUSAL_LIMIT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{command:?} was still running after {REFUSAL_LIMIT:?} instead of refusing to \
                 start: {}",
                fs::read_to_string(&err).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: fs::read(&out).unwrap(),
        stderr: fs::read(&err).unwrap(),
    }
}
