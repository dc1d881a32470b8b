//! What each command does, built on the library crates.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use coffer_attest::policy::Policy;
use coffer_keystore::{KeyState, Keystore};
use coffer_kms::listener::SocketOptions;
use coffer_kms::{KeySource, RemoteOptions, ServeOptions};
use coffer_platform::{open_platform, sim, Access, Platform};
use zeroize::Zeroizing;

use crate::cli::*;

type Error = Box<dyn std::error::Error + Send + Sync>;

/// Runs one command; the exit code for success or a refusal, `Err` for failures.
pub fn run(command: Command) -> Result<ExitCode, Error> {
    match command {
        Command::Kms(KmsCommand::Serve(args)) => serve(*args),
        Command::Kms(KmsCommand::Bridge(args)) => bridge(*args),
        Command::Kms(KmsCommand::EncryptionConfig(args)) => {
            print!(
                "{}",
                encryption_config(
                    &absolute(&args.socket),
                    &args.provider_name,
                    &args.api_version
                )
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Keys(cmd) => keys(cmd),
        Command::Etcd(EtcdCommand::Decrypt(args)) => etcd_decrypt(args),
        Command::Attest(cmd) => crate::attest::run(cmd),
        Command::Keyd(cmd) => crate::keyd::run(cmd),
        Command::Bench(BenchCommand::Kms(args)) => {
            let report = coffer_bench::run_kms(&args)?;
            print_report(&report, args.json)
        }
        Command::Bench(BenchCommand::KeydHandshake(args)) => {
            let client = bench_keyd_client(&args.client)?;
            let report = coffer_bench::run_keyd_handshake(&args.bench, client)?;
            print_report(&report, args.bench.json)
        }
        Command::Bench(BenchCommand::KeydUnseal(args)) => {
            let client = bench_keyd_client(&args.client)?;
            let report = coffer_bench::run_keyd_unseal(&args.bench, client)?;
            print_report(&report, args.bench.json)
        }
        Command::Bench(BenchCommand::RunStart(args)) => {
            let client = bench_keyd_client(&args.client)?;
            let flags = coffer_run_flags(&args.client);
            let report = coffer_bench::run_run_start(&args.bench, client, &flags)?;
            print_report(&report, args.bench.json)
        }
        Command::Run(args) => Ok(crate::run::run(*args)),
        Command::Bench(BenchCommand::Startup(args)) => {
            let report = coffer_bench::run_startup(&args)?;
            print!("{report}");
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// A benchmark's keyd client options: a new set per call, sharing one platform, policy and
/// collateral sources.
fn bench_keyd_client(
    args: &BenchKeydClientArgs,
) -> Result<impl Fn() -> coffer_keyd_client::KeydClientOptions, Error> {
    let platform = open_platform(args.platform, &args.state_dir, Access::ExistingOnly)?;
    let policy = std::sync::Arc::new(Policy::load(&args.keyd_policy)?);
    let verify_options = args
        .sources
        .sources()
        .options(std::time::SystemTime::now())?;
    Ok(move || coffer_keyd_client::KeydClientOptions {
        platform: platform.clone(),
        policy: policy.clone(),
        verify_options: verify_options.clone(),
    })
}

/// The `coffer run` flags that make a workload attest and check keyd as `args` say.
fn coffer_run_flags(args: &BenchKeydClientArgs) -> Vec<std::ffi::OsString> {
    let platform = match args.platform {
        coffer_platform::PlatformChoice::Auto => "auto",
        coffer_platform::PlatformChoice::Named(kind) => kind.name(),
    };
    let mut flags: Vec<std::ffi::OsString> = vec![
        "--platform".into(),
        platform.into(),
        "--state-dir".into(),
        args.state_dir.clone().into(),
        "--keyd-policy".into(),
        args.keyd_policy.clone().into(),
    ];
    let s = &args.sources;
    let paths = [
        ("--keyd-collateral-dir", &s.keyd_collateral_dir),
        ("--keyd-cache-dir", &s.keyd_cache_dir),
        ("--keyd-vcek", &s.keyd_vcek),
        ("--keyd-vcek-dir", &s.keyd_vcek_dir),
        ("--keyd-ca-file", &s.keyd_ca_file),
    ];
    for (flag, value) in paths {
        if let Some(value) = value {
            flags.extend([flag.into(), value.clone().into()]);
        }
    }
    let texts = [
        ("--keyd-collateral-file", &s.keyd_collateral_file),
        ("--keyd-pccs-url", &s.keyd_pccs_url),
        ("--keyd-kds-url", &s.keyd_kds_url),
    ];
    for (flag, value) in texts {
        if let Some(value) = value {
            flags.extend([flag.into(), value.clone().into()]);
        }
    }
    flags
}

/// Prints a benchmark's report: the human table, or JSON with `--json`.
fn print_report(
    report: &(impl std::fmt::Display + serde::Serialize),
    json: bool,
) -> Result<ExitCode, Error> {
    if json {
        println!("{}", serde_json::to_string_pretty(report)?);
    } else {
        print!("{report}");
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn open_store_platform(
    store: &StoreArgs,
    access: Access,
) -> Result<(std::sync::Arc<dyn Platform>, PathBuf), Error> {
    let (platform, state_dir) = store.resolved();
    let platform = open_platform(platform, &state_dir, access)?;
    // The platform logs the warning; say it even when warnings are filtered out.
    if platform.is_simulation() && !tracing::enabled!(tracing::Level::WARN) {
        eprintln!("WARNING: {}", sim::INSECURE_WARNING);
    }
    Ok((platform, state_dir))
}

fn open_keystore(store: &StoreArgs, access: Access) -> Result<Keystore, Error> {
    let (platform, state_dir) = open_store_platform(store, access)?;
    let platform = crate::keys_root::keystore_platform(&state_dir, platform)?;
    Ok(Keystore::new(state_dir, platform))
}

/// Where `kms serve` gets its keys (the local keystore, or keyd with `--keyd`), and the
/// platform it runs on.
fn key_source(args: &ServeArgs) -> Result<(KeySource, std::sync::Arc<dyn Platform>), Error> {
    let keyd = &args.keyd;
    let Some(addrs) = keyd.keyd.clone() else {
        let (platform, state_dir) = open_store_platform(&args.store, Access::CreateIfMissing)?;
        // KEKs are sealed under the keystore's recovery root where it has one; evidence for
        // --listen-tcp still comes from the platform itself.
        let sealing = crate::keys_root::keystore_platform(&state_dir, platform.clone())?;
        let keystore = Keystore::new(state_dir, sealing);
        return Ok((KeySource::Keystore(keystore), platform));
    };
    if args.rotate_every.is_some() {
        return Err(
            "--rotate-every does not apply with --keyd: keyd holds the keys. Rotate the \
                    keyring in keyd (its Rotate operation, granted to the roles listed under \
                    keyrings.<name>.rotate in keyd's configuration); plugins report the new \
                    key_id within a second"
                .into(),
        );
    }
    if args.reload_interval.is_some() {
        return Err(
            "--reload-interval does not apply with --keyd: there is no local keystore \
                    to reload; the plugin asks keyd for the primary key_id on every Status \
                    (cached for 1s)"
                .into(),
        );
    }
    let (Some(keyring), Some(policy_path)) = (&keyd.keyd_keyring, &keyd.keyd_policy) else {
        return Err("--keyd needs --keyd-keyring and --keyd-policy".into());
    };
    let policy = Policy::load(policy_path)
        .map_err(|e| format!("--keyd-policy {}: {e}", policy_path.display()))?;
    let (platform, _) = open_store_platform(&args.store, Access::CreateIfMissing)?;
    let remote = RemoteOptions {
        addrs,
        keyring: keyring.clone(),
        client: coffer_keyd_client::KeydClientOptions {
            platform: platform.clone(),
            policy: std::sync::Arc::new(policy),
            verify_options: keyd
                .sources
                .sources()
                .options(std::time::SystemTime::now())?,
        },
        connections: usize::from(keyd.keyd_connections),
        timeout: keyd.keyd_timeout,
        cache_ttl: keyd.keyd_cache_ttl,
    };
    remote.validate()?;
    Ok((KeySource::Keyd(remote), platform))
}

/// Makes the sim platform pose as an SGX LibOS (`sgx-occlum` or `sgx-gramine`) for the peer
/// credential check, so tests can see `kms serve` refuse a unix socket there. It can only make
/// the plugin stricter.
pub const SIM_POSE_AS_LIBOS_ENV: &str = "COFFER_SIM_POSE_AS_LIBOS";

/// The platform kind that decides whether peer credentials are real.
fn credential_platform(platform: &dyn Platform) -> coffer_platform::PlatformKind {
    use coffer_platform::PlatformKind;
    if platform.kind() != PlatformKind::Sim {
        return platform.kind();
    }
    match std::env::var(SIM_POSE_AS_LIBOS_ENV).as_deref() {
        Ok("sgx-occlum") => PlatformKind::SgxOcclum,
        Ok("sgx-gramine") => PlatformKind::SgxGramine,
        _ => PlatformKind::Sim,
    }
}

fn serve(args: ServeArgs) -> Result<ExitCode, Error> {
    if let Err(e) = coffer_platform::process::harden() {
        tracing::warn!(error = %e, "could not disable core dumps");
    }
    let socket = match (&args.front.socket, args.store.dev) {
        (Some(path), _) => path.clone(),
        (None, true) => Path::new(DEV_DIR).join("kms.sock"),
        (None, false) => PathBuf::from(DEFAULT_SOCKET),
    };
    let mut options = front_options(&args.front, socket.clone());
    if let Some(interval) = args.reload_interval {
        options.reload_interval = interval;
    }
    if let Some(every) = args.rotate_every.filter(|&e| e <= options.reload_interval) {
        // The age is checked once per reload; at or below that, every check would rotate.
        return Err(format!(
            "--rotate-every {} is not longer than --reload-interval {}, so every keystore check \
             would rotate: use a longer --rotate-every (e.g. 720h)",
            humantime::format_duration(every),
            humantime::format_duration(options.reload_interval)
        )
        .into());
    }
    let (keys, platform) = key_source(&args)?;
    options.rotate_every = args.rotate_every;
    options.platform_kind = credential_platform(platform.as_ref());
    options.insecure_unreal_peer_credentials = args.insecure_unreal_peer_credentials;
    options.tcp = args.listen_tcp.map(|addr| coffer_kms::tcp::TcpOptions {
        addr,
        allow_remote: args.listen_tcp_allow_remote,
        platform,
    });
    // With --listen-tcp there is no socket for the API server: the bridge's configuration is
    // the one to print.
    let print = (args.front.print_encryption_config || args.store.dev) && options.tcp.is_none();
    run_front(&args.front, keys, options, print, socket)
}

fn bridge(args: BridgeArgs) -> Result<ExitCode, Error> {
    if let Err(e) = coffer_platform::process::harden() {
        tracing::warn!(error = %e, "could not disable core dumps");
    }
    let socket = args
        .front
        .socket
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET));
    let options = front_options(&args.front, socket.clone());
    let policy = Policy::load(&args.enclave_policy)
        .map_err(|e| format!("--enclave-policy {}: {e}", args.enclave_policy.display()))?;
    let enclave = coffer_kms::EnclaveOptions {
        addr: args.enclave,
        policy: std::sync::Arc::new(policy),
        verify_options: args
            .sources
            .sources()
            .options(std::time::SystemTime::now())?,
        timeout: args.enclave_timeout,
    };
    let print = args.front.print_encryption_config;
    run_front(
        &args.front,
        KeySource::Enclave(enclave),
        options,
        print,
        socket,
    )
}

/// The options of the side kube-apiserver sees, as `kms serve` and `kms bridge` share them.
fn front_options(front: &FrontArgs, socket: PathBuf) -> ServeOptions {
    let mut options = ServeOptions::new(socket.clone());
    options.socket = SocketOptions {
        path: socket,
        mode: front.socket_mode,
        owner: front.socket_owner,
        group: front.socket_group,
        max_connections: front.max_connections,
        timeouts: coffer_kms::deadline::ConnTimeouts {
            handshake: front.handshake_timeout,
            idle: front.idle_timeout,
        },
    };
    if !front.allow_uids.is_empty() || !front.allow_gids.is_empty() {
        options.callers.uids = front.allow_uids.clone();
        options.callers.gids = front.allow_gids.clone();
    }
    options.callers.executables = front.allow_exes.clone();
    options.status_version = front.status_version;
    options.metrics_addr = front.metrics_addr;
    options.metrics_allow_remote = front.metrics_allow_remote;
    options.drain_timeout = front.drain_timeout;
    options
}

/// Runs the plugin server (`kms serve` or `kms bridge`) until SIGTERM.
fn run_front(
    front: &FrontArgs,
    keys: KeySource,
    options: ServeOptions,
    print_config: bool,
    socket: PathBuf,
) -> Result<ExitCode, Error> {
    let provider = front.provider_name.clone();
    let endpoint = absolute(&socket);
    let on_ready: coffer_kms::server::ReadyHook = Box::new(move |key_id: &str| {
        if print_config {
            println!(
                "# coffer kms is serving on unix://{} (key_id {key_id}).",
                endpoint.display()
            );
            println!("# Save this as the API server's --encryption-provider-config:");
            print!("{}", encryption_config(&endpoint, &provider, "v2"));
            let _ = std::io::stdout().flush();
        }
    });

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(usize::from(front.worker_threads))
        // Keystore loads and rotations are the only blocking work; a small pool keeps the
        // thread count within an SGX enclave's fixed TCS budget (see deploy/gramine).
        .max_blocking_threads(4)
        .enable_all()
        .thread_name("coffer-kms")
        .build()?;
    runtime.block_on(async {
        let shutdown = shutdown_signal();
        coffer_kms::serve(keys, options, shutdown, Some(on_ready)).await
    })?;
    Ok(ExitCode::SUCCESS)
}

/// Resolves on SIGTERM or SIGINT. The handlers are installed when this is *called* (it must be
/// called inside the runtime), so a signal that arrives while the server is still loading its
/// state is not lost to the default action (an abrupt exit); call it before anything else.
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    use tokio::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    async move {
        match (term, int) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => tracing::info!("SIGTERM received"),
                    _ = int.recv() => tracing::info!("SIGINT received"),
                }
            }
            (Err(e), _) | (_, Err(e)) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM/SIGINT; the server stops only when killed");
                std::future::pending::<()>().await;
            }
        }
    }
}

fn absolute(path: &Path) -> PathBuf {
    if path.is_absolute() {
        return path.to_path_buf();
    }
    std::env::current_dir()
        .map(|d| d.join(path))
        .unwrap_or_else(|_| path.to_path_buf())
}

/// The EncryptionConfiguration that sends Secrets through the plugin at `socket`.
pub fn encryption_config(socket: &Path, provider: &str, api_version: &str) -> String {
    format!(
        "apiVersion: apiserver.config.k8s.io/v1
kind: EncryptionConfiguration
resources:
  - resources:
      - secrets
    providers:
      - kms:
          apiVersion: {api_version}
          name: {provider}
          endpoint: unix://{}
          timeout: 3s
      # Reads Secrets written before encryption was enabled; remove after migrating them.
      - identity: {{}}
",
        socket.display()
    )
}

fn keys(cmd: KeysCommand) -> Result<ExitCode, Error> {
    match cmd {
        KeysCommand::Init(args) => return crate::keys_root::init(args),
        KeysCommand::Recover(args) => return crate::keys_root::recover(args),
        KeysCommand::List(args) => {
            let info = open_keystore(&args.store, Access::ExistingOnly)?.info()?;
            let recovery = crate::keys_root::recovery_info(&args.store.resolved().1)?;
            if args.json {
                let keys: Vec<_> = info
                    .keys
                    .iter()
                    .map(|k| {
                        serde_json::json!({
                            "id": k.id, "serial": k.serial, "created": k.created,
                            "primary": k.state == KeyState::Primary,
                        })
                    })
                    .collect();
                let retired: Vec<_> = info
                    .retired
                    .iter()
                    .map(|r| serde_json::json!({"id": r.id, "created": r.created, "retired": r.retired}))
                    .collect();
                let doc = serde_json::json!({
                    "keystore": info.path, "keystore_id": info.keystore_id, "platform": info.platform,
                    "generation": info.generation, "keys": keys, "retired": retired,
                    "recovery": recovery.map(|r| serde_json::json!({
                        "threshold": r.threshold, "total": r.total,
                    })),
                });
                println!("{}", serde_json::to_string_pretty(&doc)?);
            } else {
                println!(
                    "keystore {} (id {}, platform {}, generation {})",
                    info.path.display(),
                    info.keystore_id,
                    info.platform,
                    info.generation
                );
                match recovery {
                    Some(r) => println!(
                        "recovery: {} of {} operator shares reopen it after a TCB update (`coffer keys recover`)",
                        r.threshold, r.total
                    ),
                    None => println!(
                        "recovery: none; it opens only on the platform identity that sealed it"
                    ),
                }
                println!("{:<30} {:<22} STATE", "KEY ID", "CREATED");
                for k in info.keys.iter().rev() {
                    let state = match k.state {
                        KeyState::Primary => "primary",
                        KeyState::Active => "decrypt-only",
                    };
                    println!("{:<30} {:<22} {state}", k.id, k.created);
                }
                for r in &info.retired {
                    println!("{:<30} {:<22} retired {}", r.id, r.created, r.retired);
                }
            }
        }
        KeysCommand::Rotate(store) => {
            let info = open_keystore(&store, Access::ExistingOnly)?.rotate()?;
            println!(
                "new primary KEK {} — running plugins switch to it within their --reload-interval; \
                 older KEKs keep decrypting",
                info.id
            );
        }
        KeysCommand::Retire(args) => {
            let keystore = open_keystore(&args.store, Access::ExistingOnly)?;
            // Say what cannot work before asking for a confirmation it would not need.
            match keystore.info()?.keys.iter().find(|k| k.id == args.key_id) {
                Some(k) if k.state == KeyState::Primary => {
                    return Err(coffer_keystore::KeystoreError::RetirePrimary {
                        key_id: k.id.clone(),
                    }
                    .into())
                }
                Some(_) => {}
                None => {
                    return Err(coffer_keystore::KeystoreError::UnknownKey {
                        key_id: args.key_id,
                    }
                    .into())
                }
            }
            if !args.confirm {
                eprintln!(
                    "refusing to retire {} without --confirm.\n\
                     Retiring deletes the KEK: every Secret still encrypted under it becomes unreadable.\n\
                     First rewrite all Secrets under the current primary key:\n  \
                     kubectl get secrets --all-namespaces -o json | kubectl replace -f -\n\
                     then run this command again with --confirm.",
                    args.key_id
                );
                return Ok(ExitCode::from(2));
            }
            let retired = keystore.retire(&args.key_id)?;
            println!(
                "retired KEK {}; data encrypted under it can no longer be decrypted",
                retired.id
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Largest etcd value read (kube-apiserver's default request limit is 3 MiB; etcd's 1.5 MiB).
const MAX_ETCD_INPUT: u64 = coffer_envelope::MAX_VALUE_SIZE as u64;

/// Where `etcd decrypt` gets the DEK source unwrapped.
enum Unwrapper {
    /// The keystore of the standalone plugin that wrote the value.
    Keystore(Keystore),
    /// keyd, for values written by a plugin in service mode.
    Keyd(KeydUnwrap),
}

/// What `etcd decrypt --keyd` needs to ask keyd to unwrap a DEK source.
struct KeydUnwrap {
    addr: coffer_keyd_client::KeydAddr,
    keyring: String,
    client: coffer_keyd_client::KeydClientOptions,
}

/// Limit on connecting to keyd and on the Unwrap call: generous, because a person waits, not
/// the API server.
const RECOVERY_KEYD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// The `--keyd` form of `etcd decrypt`, shown wherever a keyd-wrapped value may have been
/// handed to the keystore path.
const KEYD_FORM: &str = "coffer etcd decrypt --keyd HOST:PORT --keyd-keyring NAME \
                         --keyd-policy FILE --platform PLATFORM --etcd-key KEY --input FILE";

fn etcd_decrypt(args: EtcdDecryptArgs) -> Result<ExitCode, Error> {
    // A mistyped --state-dir or --keyd-policy is reported before any input is read or judged.
    let unwrapper = match &args.keyd.keyd {
        Some(addr) => Unwrapper::Keyd(keyd_unwrap(&args, addr.clone())?),
        None => Unwrapper::Keystore(open_keystore(&args.store, Access::ExistingOnly).map_err(
            |e| match e.downcast_ref::<coffer_keystore::KeystoreError>() {
                Some(coffer_keystore::KeystoreError::NotInitialized { path }) => no_keystore(path),
                _ => e,
            },
        )?),
    };
    let input = read_etcd_input(args.input.as_deref())?;
    let (value, etcd_key) = match args.input_format {
        InputFormat::Raw => {
            let key = args
                .etcd_key
                .clone()
                .ok_or("--etcd-key is required with raw input (the key the value was read from)")?;
            (input, key)
        }
        InputFormat::EtcdctlJson => from_etcdctl_json(&input, args.etcd_key.as_deref())?,
    };
    let value = without_etcdctl_newline(&value);
    let parsed = coffer_envelope::parse_etcd_value(value)?;
    let decrypted = match unwrapper {
        Unwrapper::Keystore(keystore) => {
            let info = keystore.info().map_err(|e| match e {
                coffer_keystore::KeystoreError::NotInitialized { path } => no_keystore(&path),
                other => Error::from(other),
            })?;
            check_key_held(&info, &parsed.object.key_id)?;
            let keyring = keystore.load()?;
            decrypt_value(value, &etcd_key, |key_id, source| {
                Ok(keyring.decrypt(Some(key_id), source)?)
            })?
        }
        Unwrapper::Keyd(keyd) => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let mut client = runtime
                .block_on(coffer_keyd_client::KeydClient::connect_within(
                    keyd.addr.clone(),
                    keyd.client,
                    RECOVERY_KEYD_TIMEOUT,
                ))
                .map_err(|e| format!("{e} (etcd decrypt --keyd)"))?;
            // keyd's own error is reported as it is: the envelope's wording for a failed
            // unwrap is about local keystores.
            let mut refused = None;
            let decrypted = decrypt_value(value, &etcd_key, |key_id, source| {
                runtime
                    .block_on(client.unwrap(&keyd.keyring, Some(key_id), source))
                    .map_err(|e| {
                        let message = keyd_refusal(e, key_id, &keyd.keyring);
                        refused = Some(message.clone());
                        message.into()
                    })
            });
            match (decrypted, refused) {
                (Err(_), Some(message)) => return Err(message.into()),
                (decrypted, _) => decrypted?,
            }
        }
    };
    let plaintext = Zeroizing::new(decrypted.plaintext);
    eprintln!(
        "decrypted {} bytes (provider {}, KEK {}, {:?})",
        plaintext.len(),
        decrypted.provider,
        decrypted.key_id,
        decrypted.source_type
    );
    match &args.output {
        Some(path) => coffer_platform::durable::write_new_atomic(path, &plaintext, 0o600)
            .map_err(|e| format!("writing {} (it must not exist yet): {e}", path.display()))?,
        None => {
            let mut out = std::io::stdout().lock();
            out.write_all(&plaintext)?;
            out.flush()?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `--keyd`'s client: the caller's platform (whose evidence keyd must grant `unwrap` on the
/// keyring) and how keyd's own evidence is checked.
fn keyd_unwrap(
    args: &EtcdDecryptArgs,
    addr: coffer_keyd_client::KeydAddr,
) -> Result<KeydUnwrap, Error> {
    let keyd = &args.keyd;
    let (Some(keyring), Some(policy_path)) = (&keyd.keyd_keyring, &keyd.keyd_policy) else {
        return Err("--keyd needs --keyd-keyring and --keyd-policy".into());
    };
    coffer_keyd_client::validate_keyring_name(keyring)
        .map_err(|e| format!("--keyd-keyring: {e}"))?;
    let policy = Policy::load(policy_path)
        .map_err(|e| format!("--keyd-policy {}: {e}", policy_path.display()))?;
    // The caller's identity must be one keyd already grants, so it is never created here.
    let (platform, _) = open_store_platform(&args.store, Access::ExistingOnly)?;
    Ok(KeydUnwrap {
        addr,
        keyring: keyring.clone(),
        client: coffer_keyd_client::KeydClientOptions {
            platform,
            policy: std::sync::Arc::new(policy),
            verify_options: keyd
                .sources
                .sources()
                .options(std::time::SystemTime::now())?,
        },
    })
}

/// Decrypts `value` as kube-apiserver would, with `unwrap` playing the plugin's Decrypt.
fn decrypt_value(
    value: &[u8],
    etcd_key: &str,
    unwrap: impl FnOnce(&str, &[u8]) -> Result<Zeroizing<Vec<u8>>, Error>,
) -> Result<coffer_envelope::Decrypted, Error> {
    coffer_envelope::decrypt_etcd_value(value, etcd_key, |key_id, source, _| unwrap(key_id, source))
        .map_err(|e| match e {
            coffer_envelope::EnvelopeError::Authentication { .. } => format!(
                "AES-GCM authentication failed for etcd key {etcd_key:?}: wrong --etcd-key? It \
             must be exact, e.g. /registry/secrets/NS/NAME (with the API server's \
             --etcd-prefix), because kube-apiserver authenticates the key with the value. \
             If the key is right, the value was modified after it was written"
            )
            .into(),
            other => Error::from(other),
        })
}

/// keyd's refusal of an Unwrap, with what to change in keyd's configuration when the caller
/// lacks the grant.
fn keyd_refusal(e: coffer_keyd_client::ClientError, key_id: &str, keyring: &str) -> String {
    let denied = e.status().map(tonic::Status::code) == Some(tonic::Code::PermissionDenied);
    let mut message = format!("keyd did not unwrap the value's DEK source (KEK {key_id}): {e}");
    if denied {
        message.push_str(&format!(
            "; list the role keyd grants this caller's evidence under keyrings.{keyring}.unwrap \
             in keyd's configuration (--config), or run this from a caller whose role is there"
        ));
    }
    message
}

/// There is no keystore here: say that a value written in service mode was wrapped by keyd
/// and never had one, instead of suggesting `keys init` (a new keystore decrypts nothing).
fn no_keystore(path: &Path) -> Error {
    format!(
        "no keystore at {}: without --keyd, etcd decrypt needs the keystore of the standalone \
         plugin that wrote the value (pass that plugin's --state-dir and --platform, or a \
         backup of its state directory). A plugin in service mode (`kms serve --keyd`) has no \
         keystore: its values were wrapped by keyd, so decrypt them through keyd, as a caller \
         whose role keyd grants `unwrap` on the keyring: {KEYD_FORM}",
        path.display()
    )
    .into()
}

/// Reads `etcd decrypt`'s input from `path` or stdin; a directory or nothing at all is refused
/// with what to pass instead.
fn read_etcd_input(path: Option<&Path>) -> Result<Vec<u8>, Error> {
    const HOW: &str = "e.g. `etcdctl get KEY --print-value-only > value.bin`";
    let mut input = Vec::new();
    match path {
        Some(path) => {
            if path.is_dir() {
                return Err(format!(
                    "--input {} is a directory; pass the file that holds the value ({HOW})",
                    path.display()
                )
                .into());
            }
            let failed = |e: std::io::Error| format!("reading --input {}: {e}", path.display());
            std::fs::File::open(path)
                .map_err(failed)?
                .take(MAX_ETCD_INPUT + 1)
                .read_to_end(&mut input)
                .map_err(failed)?;
            if input.is_empty() {
                return Err(format!(
                    "--input {} is empty; it must hold the value read from etcd ({HOW})",
                    path.display()
                )
                .into());
            }
        }
        None => {
            std::io::stdin()
                .lock()
                .take(MAX_ETCD_INPUT + 1)
                .read_to_end(&mut input)
                .map_err(|e| format!("reading the value from stdin: {e}"))?;
            if input.is_empty() {
                return Err(
                    "stdin is empty: pipe the value read from etcd into this command \
                            (e.g. `etcdctl get KEY --print-value-only | coffer etcd decrypt ...`) \
                            or pass --input FILE"
                        .into(),
                );
            }
        }
    }
    Ok(input)
}

/// `etcdctl get KEY --print-value-only` prints the value followed by one newline; this returns
/// the value without it.
///
/// A stored value may itself end in 0x0a (the last byte of `encryptedDEKSource` or of an
/// annotation can be anything), so the newline is dropped only when the input as given does not
/// parse and the input without its last byte does. That can never drop a byte of a real value:
/// a valid `EncryptedObject` followed by 0x0a never parses, because 0x0a starts a new
/// length-delimited field 1 whose length is missing.
fn without_etcdctl_newline(input: &[u8]) -> &[u8] {
    match input.strip_suffix(b"\n") {
        Some(value)
            if coffer_envelope::parse_etcd_value(input).is_err()
                && coffer_envelope::parse_etcd_value(value).is_ok() =>
        {
            value
        }
        _ => input,
    }
}

/// Refuses a value whose KEK the keystore does not hold, naming the KEK and what it holds.
fn check_key_held(info: &coffer_keystore::KeystoreInfo, key_id: &str) -> Result<(), Error> {
    if info.keys.iter().any(|k| k.id == key_id) {
        return Ok(());
    }
    let held = info
        .keys
        .iter()
        .map(|k| match k.state {
            KeyState::Primary => format!("{} (primary)", k.id),
            KeyState::Active => k.id.clone(),
        })
        .collect::<Vec<_>>()
        .join(", ");
    let keystore = info.path.display();
    Err(match info.retired.iter().find(|r| r.id == key_id) {
        Some(retired) => format!(
            "the value was encrypted under KEK {key_id}, which keystore {keystore} retired at {}: \
             its key material is gone, so only a backup of the state directory from before that \
             can decrypt it (this keystore holds {held})",
            retired.retired
        ),
        None => format!(
            "the value was encrypted under KEK {key_id:?}, which keystore {keystore} does not \
             hold (it holds {held}); pass the --state-dir and --platform of the plugin that wrote \
             it, or a backup of its state directory from when it held that KEK. If a plugin in \
             service mode (`kms serve --keyd`) wrote it, keyd wrapped it: {KEYD_FORM}"
        ),
    }
    .into())
}

fn from_etcdctl_json(input: &[u8], etcd_key: Option<&str>) -> Result<(Vec<u8>, String), Error> {
    let doc: serde_json::Value = serde_json::from_slice(input)
        .map_err(|e| format!("input is not `etcdctl get -w json` output: {e}"))?;
    let kv = doc
        .get("kvs")
        .and_then(|k| k.get(0))
        .ok_or("etcdctl JSON has no \"kvs\" entry: the key was not found in etcd")?;
    let field = |name: &str| -> Result<Vec<u8>, Error> {
        let text = kv
            .get(name)
            .and_then(|v| v.as_str())
            .ok_or_else(|| format!("etcdctl JSON entry has no {name:?}"))?;
        Ok(B64
            .decode(text)
            .map_err(|e| format!("etcdctl JSON {name:?} is not base64: {e}"))?)
    };
    let stored_key =
        String::from_utf8(field("key")?).map_err(|_| "etcd key in the JSON is not UTF-8")?;
    if let Some(given) = etcd_key {
        if given != stored_key {
            return Err(format!(
                "--etcd-key {given:?} differs from the key in the JSON ({stored_key:?})"
            )
            .into());
        }
    }
    Ok((field("value")?, stored_key))
}
