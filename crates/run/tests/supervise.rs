//! `supervise`: the app's exit code, forwarded signals, `--on-change` actions, orphan reaping,
//! spawn errors and the app's exact environment, with real `sh` apps.
//!
//! The supervisor installs process-wide signal handlers and reaps every child of its process,
//! so each scenario runs in a process of its own: this test binary re-executed with
//! [`DIR`] set, where [`supervisor_process`] runs `supervise` and exits with its result. The
//! tests send signals to that process, and ask for `--on-change` actions by creating a
//! `change` file that the re-executed process turns into a message on the changes channel.

use std::ffi::OsString;
use std::fs;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use coffer_run::supervise::{supervise, App, EXIT_APP_NOT_EXECUTABLE, EXIT_APP_NOT_FOUND};
use coffer_run::OnChange;
use rustix::process::{Pid, Signal};
use tokio::sync::mpsc;
use zeroize::Zeroizing;

/// Set in a re-executed test binary: the scenario's work directory.
const DIR: &str = "COFFER_SUPERVISE_TEST_DIR";
/// The app's program and arguments, each hex-encoded, comma-separated.
const ARGV: &str = "COFFER_SUPERVISE_TEST_ARGV";
/// The app's environment, `HEXKEY=HEXVALUE` entries, comma-separated.
const ENV: &str = "COFFER_SUPERVISE_TEST_ENV";
/// `none`, `restart` or `signal:HUP`.
const ON_CHANGE: &str = "COFFER_SUPERVISE_TEST_ON_CHANGE";
/// The restart grace period in milliseconds.
const GRACE_MS: &str = "COFFER_SUPERVISE_TEST_GRACE_MS";
/// When set, the supervisor process fails (exit 99) if a zombie child is left once
/// `supervise` has returned.
const NO_ZOMBIES: &str = "COFFER_SUPERVISE_TEST_NO_ZOMBIES";

/// The app's `PATH`.
const PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// Generous bound for anything the tests wait for; only reached when something is broken.
const PATIENCE: Duration = Duration::from_secs(60);

/// The supervisor side of every scenario; does nothing unless re-executed by [`Scenario`].
#[test]
fn supervisor_process() {
    let Some(dir) = std::env::var_os(DIR).map(PathBuf::from) else {
        return;
    };
    let mut argv = decode_list(&std::env::var(ARGV).unwrap()).into_iter();
    let app = App {
        program: OsString::from_vec(argv.next().unwrap()),
        args: argv.map(OsString::from_vec).collect(),
        env: decode_env(&std::env::var(ENV).unwrap()),
    };
    let on_change = match std::env::var(ON_CHANGE).unwrap().as_str() {
        "none" => OnChange::None,
        "restart" => OnChange::Restart,
        "signal:HUP" => OnChange::Signal(Signal::HUP),
        other => panic!("unknown on-change {other}"),
    };
    let grace = Duration::from_millis(std::env::var(GRACE_MS).unwrap().parse().unwrap());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let code = runtime.block_on(async {
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(announce_changes(dir, tx));
        match supervise(app, rx, on_change, grace).await {
            Ok(code) => code,
            Err(err) => {
                eprintln!("supervise: {err}");
                err.exit_code()
            }
        }
    });
    if std::env::var_os(NO_ZOMBIES).is_some() {
        let zombies = zombie_children();
        if !zombies.is_empty() {
            eprintln!("zombie children left: {zombies:?}");
            std::process::exit(99);
        }
    }
    std::process::exit(code);
}

/// Sends a change for each `change` file the test creates, then removes the file.
async fn announce_changes(dir: PathBuf, tx: mpsc::Sender<()>) {
    let trigger = dir.join("change");
    loop {
        if trigger.exists() {
            if tx.send(()).await.is_err() {
                return;
            }
            fs::remove_file(&trigger).unwrap();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Children of this process that have exited but were not reaped.
fn zombie_children() -> Vec<String> {
    let me = std::process::id().to_string();
    let mut zombies = Vec::new();
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(stat) = fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid ...; comm may hold spaces, the last ')' ends it.
        let Some((_, rest)) = stat.rsplit_once(") ") else {
            continue;
        };
        let mut fields = rest.split(' ');
        let (state, ppid) = (fields.next(), fields.next());
        if state == Some("Z") && ppid == Some(me.as_str()) {
            zombies.push(stat);
        }
    }
    zombies
}

/// What the re-executed supervisor runs.
struct Scenario {
    argv: Vec<OsString>,
    env: Vec<(OsString, Vec<u8>)>,
    on_change: &'static str,
    grace: Duration,
    no_zombies: bool,
    /// Append the scenario's directory to the arguments.
    pass_dir: bool,
    /// Run the supervisor as PID 1 of a new PID namespace, as in a container.
    pid1: bool,
}

impl Scenario {
    /// `sh -c SCRIPT` with `PATH` only; the script runs in the scenario's directory, which is
    /// also its `$1`.
    fn sh(script: &str) -> Self {
        let mut scenario = Self::new(&["sh", "-c", &format!("cd \"$1\" && {{ {script}\n}}"), "sh"]);
        scenario.pass_dir = true;
        scenario
    }

    fn new(argv: &[&str]) -> Self {
        Self {
            argv: argv.iter().map(OsString::from).collect(),
            env: vec![("PATH".into(), PATH.into())],
            on_change: "none",
            grace: PATIENCE,
            no_zombies: false,
            pass_dir: false,
            pid1: false,
        }
    }

    fn on_change(mut self, on_change: &'static str, grace: Duration) -> Self {
        self.on_change = on_change;
        self.grace = grace;
        self
    }

    /// Starts the supervisor process; [`Scenario::sh`] apps get its directory as `$1`.
    fn start(mut self) -> Running {
        let dir = tempfile::tempdir().unwrap();
        if self.pass_dir {
            self.argv.push(dir.path().into());
        }
        let exe = std::env::current_exe().unwrap();
        let mut command = if self.pid1 {
            let mut command = Command::new("unshare");
            // --kill-child: a test that gives up kills `unshare`, and so the whole namespace.
            command
                .args(["--pid", "--fork", "--mount-proc", "--kill-child"])
                .arg(exe);
            command
        } else {
            Command::new(exe)
        };
        command
            .args([
                "supervisor_process",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(DIR, dir.path())
            .env(ARGV, encode_list(self.argv.iter().map(|a| a.as_bytes())))
            .env(
                ENV,
                self.env
                    .iter()
                    .map(|(k, v)| format!("{}={}", hex(k.as_bytes()), hex(v)))
                    .collect::<Vec<_>>()
                    .join(","),
            )
            .env(ON_CHANGE, self.on_change)
            .env(GRACE_MS, self.grace.as_millis().to_string())
            .stdin(Stdio::null())
            // Files, not pipes: orphans that outlive the supervisor must not hold up reading.
            .stdout(fs::File::create(dir.path().join("stdout")).unwrap())
            .stderr(fs::File::create(dir.path().join("stderr")).unwrap());
        if self.no_zombies {
            command.env(NO_ZOMBIES, "1");
        }
        let child = command.spawn().unwrap();
        Running {
            child,
            dir: Some(dir),
            pid1: self.pid1,
        }
    }

    /// Runs to the end.
    fn run(self) -> Outcome {
        self.start().finish()
    }
}

/// A supervisor process under test.
struct Running {
    child: Child,
    /// Taken by [`Running::finish`].
    dir: Option<tempfile::TempDir>,
    /// `child` is `unshare`, whose only child is the supervisor.
    pid1: bool,
}

impl Drop for Running {
    /// A test that gave up must not leave its supervisor running; its app stops when the
    /// scenario's directory is gone (see [`IDLE`]).
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

struct Outcome {
    code: i32,
    stderr: String,
    dir: tempfile::TempDir,
}

impl Outcome {
    fn read(&self, name: &str) -> String {
        fs::read_to_string(self.dir.path().join(name)).unwrap_or_default()
    }
}

impl Running {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.as_ref().unwrap().path().join(name)
    }

    fn read(&self, name: &str) -> String {
        fs::read_to_string(self.path(name)).unwrap_or_default()
    }

    fn lines(&self, name: &str) -> usize {
        self.read(name).lines().count()
    }

    /// The supervisor's pid, as this process sees it.
    fn pid(&self) -> Pid {
        let child = Pid::from_child(&self.child);
        if !self.pid1 {
            return child;
        }
        let children = format!("/proc/{0}/task/{0}/children", child.as_raw_nonzero());
        let mut pid = None;
        self.wait_until("unshare to start the supervisor", || {
            pid = fs::read_to_string(&children)
                .unwrap()
                .split_whitespace()
                .next()
                .and_then(|pid| Pid::from_raw(pid.parse().unwrap()));
            pid.is_some()
        });
        pid.unwrap()
    }

    /// Sends `signal` to the supervisor (not to the app).
    fn signal(&self, signal: Signal) {
        rustix::process::kill_process(self.pid(), signal).unwrap();
    }

    /// Announces a change, and waits until the supervisor has received it.
    fn change(&self) {
        fs::write(self.path("change"), "").unwrap();
        self.wait_until("the change to be received", || {
            !self.path("change").exists()
        });
    }

    fn wait_for_file(&self, name: &str) {
        self.wait_until(name, || self.path(name).exists());
    }

    fn wait_until(&self, what: &str, mut done: impl FnMut() -> bool) {
        let start = Instant::now();
        while !done() {
            assert!(
                start.elapsed() < PATIENCE,
                "gave up waiting for {what}; stderr:\n{}",
                self.read("stderr")
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn finish(mut self) -> Outcome {
        let start = Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if start.elapsed() > PATIENCE {
                panic!(
                    "the supervisor did not exit; stderr:\n{}",
                    self.read("stderr")
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let stderr = self.read("stderr");
        let code = status
            .code()
            .unwrap_or_else(|| panic!("supervisor killed: {status}; stderr:\n{stderr}"));
        Outcome {
            code,
            stderr,
            dir: self.dir.take().unwrap(),
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}

fn encode_list<'a>(items: impl Iterator<Item = &'a [u8]>) -> String {
    items.map(hex).collect::<Vec<_>>().join(",")
}

fn decode_list(text: &str) -> Vec<Vec<u8>> {
    text.split(',').map(unhex).collect()
}

fn decode_env(text: &str) -> Vec<(OsString, Zeroizing<Vec<u8>>)> {
    text.split(',')
        .filter(|entry| !entry.is_empty())
        .map(|entry| {
            let (key, value) = entry.split_once('=').unwrap();
            (OsString::from_vec(unhex(key)), Zeroizing::new(unhex(value)))
        })
        .collect()
}

/// A shell loop that keeps the app alive until the scenario's directory is removed; traps run
/// between two short sleeps.
const IDLE: &str = "while [ -e stdout ]; do sleep 0.02; done";

#[test]
fn exit_codes_propagate() {
    for code in [0, 3] {
        let outcome = Scenario::sh(&format!("exit {code}")).run();
        assert_eq!(outcome.code, code, "stderr:\n{}", outcome.stderr);
    }
}

#[test]
fn an_app_killed_by_a_signal_gives_128_plus_the_signal() {
    let outcome = Scenario::sh("kill -KILL $$").run();
    assert_eq!(outcome.code, 128 + 9, "stderr:\n{}", outcome.stderr);
}

#[test]
fn sigterm_is_forwarded_and_the_apps_own_code_returned() {
    let running = Scenario::sh(&format!(
        "trap 'echo TERM > got; exit 0' TERM; touch ready; {IDLE}"
    ))
    .start();
    running.wait_for_file("ready");
    running.signal(Signal::TERM);
    let outcome = running.finish();
    assert_eq!(outcome.code, 0, "stderr:\n{}", outcome.stderr);
    assert_eq!(outcome.read("got"), "TERM\n");
}

#[test]
fn every_listed_signal_is_forwarded() {
    let traps: String = ["INT", "HUP", "QUIT", "USR1", "USR2", "WINCH"]
        .iter()
        .map(|name| format!("trap 'echo {name} >> got' {name}; "))
        .collect();
    let running = Scenario::sh(&format!("{traps} touch ready; {IDLE}")).start();
    running.wait_for_file("ready");
    let signals = [
        (Signal::INT, "INT"),
        (Signal::HUP, "HUP"),
        (Signal::QUIT, "QUIT"),
        (Signal::USR1, "USR1"),
        (Signal::USR2, "USR2"),
        (Signal::WINCH, "WINCH"),
    ];
    for (count, (signal, name)) in signals.into_iter().enumerate() {
        running.signal(signal);
        running.wait_until(name, || running.lines("got") == count + 1);
    }
    // SIGTERM is not trapped: the app dies of it, and the supervisor reports 128 + 15.
    running.signal(Signal::TERM);
    let outcome = running.finish();
    assert_eq!(outcome.code, 128 + 15, "stderr:\n{}", outcome.stderr);
    assert_eq!(outcome.read("got"), "INT\nHUP\nQUIT\nUSR1\nUSR2\nWINCH\n");
}

#[test]
fn on_change_signal_sends_the_signal_to_the_app() {
    let running = Scenario::sh(&format!(
        "trap 'echo HUP > got; exit 5' HUP; touch ready; {IDLE}"
    ))
    .on_change("signal:HUP", PATIENCE)
    .start();
    running.wait_for_file("ready");
    running.change();
    let outcome = running.finish();
    assert_eq!(outcome.code, 5, "stderr:\n{}", outcome.stderr);
    assert_eq!(outcome.read("got"), "HUP\n");
}

#[test]
fn on_change_none_leaves_the_app_alone() {
    let running = Scenario::sh(&format!(
        "trap 'echo HUP >> got' HUP; trap 'echo USR1 >> got' USR1; \
         trap 'echo TERM >> got; exit 0' TERM; touch ready; {IDLE}"
    ))
    .start();
    running.wait_for_file("ready");
    running.change();
    // A forwarded signal after the change: the app is still the first one, and undisturbed.
    running.signal(Signal::USR1);
    running.wait_until("USR1", || running.read("got") == "USR1\n");
    running.signal(Signal::TERM);
    let outcome = running.finish();
    assert_eq!(outcome.code, 0, "stderr:\n{}", outcome.stderr);
    assert_eq!(outcome.read("got"), "USR1\nTERM\n");
}

#[test]
fn on_change_restart_starts_the_app_again_with_the_same_environment() {
    let mut scenario = Scenario::sh(&format!(
        "echo \"$VALUE\" >> starts; trap 'exit 0' TERM; touch ready$(wc -l < starts); {IDLE}"
    ))
    .on_change("restart", PATIENCE);
    scenario.env.push(("VALUE".into(), b"same".to_vec()));
    let running = scenario.start();
    running.wait_for_file("ready1");
    running.change();
    running.wait_for_file("ready2");
    running.signal(Signal::TERM);
    let outcome = running.finish();
    assert_eq!(outcome.code, 0, "stderr:\n{}", outcome.stderr);
    assert_eq!(outcome.read("starts"), "same\nsame\n");
}

#[test]
fn a_restart_kills_an_app_that_ignores_sigterm_after_the_grace_period() {
    // The first start ignores SIGTERM; only SIGKILL after the grace period stops it.
    let running = Scenario::sh(&format!(
        "echo x >> starts; n=$(wc -l < starts); \
         if [ $n = 1 ]; then trap '' TERM; fi; touch ready$n; {IDLE}"
    ))
    .on_change("restart", Duration::from_millis(100))
    .start();
    running.wait_for_file("ready1");
    running.change();
    running.wait_for_file("ready2");
    running.signal(Signal::TERM);
    let outcome = running.finish();
    assert_eq!(outcome.code, 128 + 15, "stderr:\n{}", outcome.stderr);
    assert_eq!(outcome.read("starts"), "x\nx\n");
}

/// The first start notes SIGTERM and keeps going until the test creates `release`; later
/// starts exit 0 on SIGTERM, noting it in `term$n`.
const SLOW_TO_STOP: &str = "echo x >> starts; n=$(wc -l < starts); \
     if [ $n = 1 ]; then trap 'echo TERM >> term1' TERM; touch ready1; \
       while [ ! -e release ] && [ -e stdout ]; do sleep 0.02; done; exit 0; fi; \
     trap \"echo TERM >> term$n; exit 0\" TERM; touch ready$n; \
     while [ -e stdout ]; do sleep 0.02; done";

#[test]
fn changes_during_a_restart_give_one_restart() {
    let running = Scenario::sh(SLOW_TO_STOP)
        .on_change("restart", PATIENCE)
        .start();
    running.wait_for_file("ready1");
    running.change();
    running.wait_for_file("term1");
    running.change();
    running.change();
    fs::write(running.path("release"), "").unwrap();
    running.wait_for_file("ready2");
    running.signal(Signal::TERM);
    let outcome = running.finish();
    assert_eq!(outcome.code, 0, "stderr:\n{}", outcome.stderr);
    // One restart, and one SIGTERM to the first start, for three changes; the second start
    // saw only the final SIGTERM.
    assert_eq!(outcome.read("starts"), "x\nx\n");
    assert_eq!(outcome.read("term1"), "TERM\n");
    assert_eq!(outcome.read("term2"), "TERM\n");
}

#[test]
fn sigterm_during_a_restart_stops_instead_of_restarting() {
    let running = Scenario::sh(SLOW_TO_STOP)
        .on_change("restart", PATIENCE)
        .start();
    running.wait_for_file("ready1");
    running.change();
    running.wait_for_file("term1");
    running.signal(Signal::TERM);
    running.wait_until("the forwarded SIGTERM", || running.lines("term1") == 2);
    fs::write(running.path("release"), "").unwrap();
    let outcome = running.finish();
    assert_eq!(outcome.code, 0, "stderr:\n{}", outcome.stderr);
    assert_eq!(outcome.read("starts"), "x\n");
}

/// The app leaves an orphan (its subshell exits at once), records whom the orphan was
/// re-parented to, lets it exit, and waits until it is reaped: an orphan left a zombie keeps
/// its /proc entry, and the app never exits.
fn orphan_scenario() -> Scenario {
    let mut scenario = Scenario::sh(
        "touch hold; \
         ( sh -c 'while [ -e hold ]; do sleep 0.02; done' & echo $! > orphan ); \
         p=$(cat orphan); read -r _ _ _ ppid _ < /proc/$p/stat; echo $ppid > orphan.ppid; \
         rm hold; while [ -e /proc/$p ] && [ -e stdout ]; do sleep 0.02; done; exit 7",
    );
    scenario.no_zombies = true;
    scenario
}

#[test]
fn orphans_of_the_app_are_reaped() {
    let running = orphan_scenario().start();
    let supervisor = running.pid().as_raw_nonzero().get();
    let outcome = running.finish();
    assert_eq!(outcome.code, 7, "stderr:\n{}", outcome.stderr);
    // Not PID 1: the supervisor made itself the orphans' subreaper.
    assert_eq!(outcome.read("orphan.ppid").trim(), supervisor.to_string());
}

/// Whether this machine lets the tests start a PID namespace (root, or user namespaces).
fn pid_namespaces() -> bool {
    let works = Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc", "--kill-child", "true"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    if !works {
        eprintln!("skipped: `unshare --pid --fork --mount-proc` does not work here");
    }
    works
}

#[test]
fn as_pid_1_orphans_are_reaped_and_sigterm_forwarded() {
    if !pid_namespaces() {
        return;
    }
    let mut scenario = orphan_scenario();
    scenario.pid1 = true;
    let outcome = scenario.run();
    assert_eq!(outcome.code, 7, "stderr:\n{}", outcome.stderr);
    assert_eq!(outcome.read("orphan.ppid").trim(), "1");

    // PID 1 gets no signal it has no handler for: forwarding must still work.
    let mut scenario = Scenario::sh(&format!(
        "trap 'echo TERM > got; exit 4' TERM; touch ready; {IDLE}"
    ));
    scenario.pid1 = true;
    let running = scenario.start();
    running.wait_for_file("ready");
    running.signal(Signal::TERM);
    let outcome = running.finish();
    assert_eq!(outcome.code, 4, "stderr:\n{}", outcome.stderr);
    assert_eq!(outcome.read("got"), "TERM\n");
}

#[test]
fn a_program_not_found_gives_127_naming_it_and_the_path() {
    let outcome = Scenario::new(&["no-such-coffer-app"]).run();
    assert_eq!(
        outcome.code, EXIT_APP_NOT_FOUND,
        "stderr:\n{}",
        outcome.stderr
    );
    assert!(
        outcome.stderr.contains("no-such-coffer-app"),
        "{}",
        outcome.stderr
    );
    assert!(outcome.stderr.contains(PATH), "{}", outcome.stderr);

    let outcome = Scenario::new(&["/no/such/coffer-app"]).run();
    assert_eq!(
        outcome.code, EXIT_APP_NOT_FOUND,
        "stderr:\n{}",
        outcome.stderr
    );
    assert!(
        outcome
            .stderr
            .contains("/no/such/coffer-app does not exist"),
        "{}",
        outcome.stderr
    );
}

#[test]
fn a_file_that_cannot_be_executed_gives_126() {
    let dir = tempfile::tempdir().unwrap();
    let plain = dir.path().join("plain");
    fs::write(&plain, "#!/bin/sh\nexit 0\n").unwrap();
    fs::set_permissions(&plain, fs::Permissions::from_mode(0o644)).unwrap();
    let garbage = dir.path().join("garbage");
    fs::write(&garbage, [0u8, 1, 2, 3, 0xff]).unwrap();
    fs::set_permissions(&garbage, fs::Permissions::from_mode(0o755)).unwrap();

    for (program, reason) in [
        (path_str(&plain), "permission denied"),
        (path_str(&garbage), "no #! line"),
    ] {
        let outcome = Scenario::new(&[program]).run();
        assert_eq!(
            outcome.code, EXIT_APP_NOT_EXECUTABLE,
            "stderr:\n{}",
            outcome.stderr
        );
        assert!(outcome.stderr.contains(program), "{}", outcome.stderr);
        assert!(outcome.stderr.contains(reason), "{}", outcome.stderr);
    }

    // Found on PATH but not executable: the same, as a shell does.
    let mut scenario = Scenario::new(&["plain"]);
    scenario.env = vec![("PATH".into(), path_str(dir.path()).into())];
    let outcome = scenario.run();
    assert_eq!(
        outcome.code, EXIT_APP_NOT_EXECUTABLE,
        "stderr:\n{}",
        outcome.stderr
    );
    assert!(
        outcome.stderr.contains(path_str(&plain)),
        "{}",
        outcome.stderr
    );
}

fn path_str(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[test]
fn the_app_gets_exactly_its_environment_and_argv0() {
    let mut scenario =
        Scenario::sh("cat /proc/$$/environ > environ; cat /proc/$$/cmdline > cmdline");
    scenario.env.extend([
        ("PLAIN".into(), b"value with spaces".to_vec()),
        ("BYTES".into(), vec![0xff, 0xfe, b'=', b'x', 0x80]),
        ("EMPTY".into(), Vec::new()),
        (
            OsString::from_vec(vec![b'K', 0xe9]),
            b"non-UTF-8 name".to_vec(),
        ),
    ]);
    let mut expected: Vec<Vec<u8>> = scenario
        .env
        .iter()
        .map(|(key, value)| [key.as_bytes(), b"=", value].concat())
        .collect();
    let outcome = scenario.run();
    assert_eq!(outcome.code, 0, "stderr:\n{}", outcome.stderr);
    let environ = fs::read(outcome.dir.path().join("environ")).unwrap();
    let mut got: Vec<Vec<u8>> = environ
        .split(|b| *b == 0)
        .filter(|entry| !entry.is_empty())
        .map(<[u8]>::to_vec)
        .collect();
    expected.sort();
    got.sort();
    assert_eq!(got, expected);
    // argv[0] is the program as given, not the path it was found at.
    let cmdline = fs::read(outcome.dir.path().join("cmdline")).unwrap();
    assert_eq!(cmdline.split(|b| *b == 0).next(), Some(&b"sh"[..]));
}

#[test]
fn an_environment_value_with_a_nul_byte_is_refused_naming_only_the_variable() {
    let mut scenario = Scenario::sh("exit 0");
    scenario.env.push((
        "SECRET_VAR".into(),
        b"plain\0text-that-must-not-leak".to_vec(),
    ));
    let outcome = scenario.run();
    assert_eq!(
        outcome.code,
        coffer_run::EXIT_CONFIG,
        "stderr:\n{}",
        outcome.stderr
    );
    assert!(outcome.stderr.contains("SECRET_VAR"), "{}", outcome.stderr);
    assert!(
        !outcome.stderr.contains("must-not-leak"),
        "{}",
        outcome.stderr
    );
}
