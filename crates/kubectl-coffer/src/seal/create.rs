//! `kubectl coffer create secret generic NAME …`: seal on this machine, then create the Secret
//! through the user's kubeconfig, so the API server never receives a plaintext value.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand, ValueEnum};
use coffer_keyd_client::error_chain;
use k8s_openapi::api::core::v1::Secret;
use kube::api::PostParams;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};

use super::input::ValueArgs;
use super::manifest::{Format, SecretDoc};
use super::sealing::{print, Sealer, SealingArgs};
use crate::error::Error;

/// `kubectl coffer create …`.
#[derive(Subcommand, Debug)]
pub enum CreateCommand {
    /// Create a Secret whose values are sealed.
    #[command(subcommand)]
    Secret(SecretKind),
}

/// `kubectl coffer create secret …`.
#[derive(Subcommand, Debug)]
pub enum SecretKind {
    /// From --from-literal/--from-file/--from-env-file values, as `kubectl create secret
    /// generic`.
    Generic(CreateArgs),
}

/// `--dry-run`: `none` creates the Secret, `client` prints it instead.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum DryRun {
    /// Create the Secret.
    None,
    /// Print the sealed Secret; send nothing.
    Client,
}

/// `kubectl coffer create secret generic`.
#[derive(Args, Debug)]
pub struct CreateArgs {
    /// The Secret's name.
    pub name: String,
    #[command(flatten)]
    pub values: ValueArgs,
    /// The namespace (default: the kubeconfig context's, else `default`).
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    /// The Secret's type (e.g. kubernetes.io/tls).
    #[arg(long = "type", value_name = "TYPE")]
    pub secret_type: Option<String>,
    #[command(flatten)]
    pub sealing: SealingArgs,
    /// The kubeconfig file (default: $KUBECONFIG, else ~/.kube/config).
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use (default: its current context).
    #[arg(long)]
    pub context: Option<String>,
    /// `client`: print the sealed Secret instead of creating it.
    #[arg(long, value_enum, default_value = "none", num_args = 0..=1, default_missing_value = "client")]
    pub dry_run: DryRun,
    /// Output format with --dry-run=client.
    #[arg(short = 'o', long = "output", value_enum, default_value = "yaml")]
    pub output: Format,
}

/// Runs `create`.
pub fn run(command: CreateCommand) -> Result<ExitCode, Error> {
    let CreateCommand::Secret(SecretKind::Generic(args)) = command;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::new(format!("starting the async runtime: {e}")))?;
    runtime.block_on(create(args))
}

async fn create(args: CreateArgs) -> Result<ExitCode, Error> {
    if args.values.is_empty() {
        return Err(Error::usage(
            "give the values with --from-literal KEY=VALUE, --from-file [KEY=]PATH or \
             --from-env-file FILE",
        ));
    }
    let config = match kube_config(&args).await {
        Ok(config) => Some(config),
        Err(_) if args.dry_run == DryRun::Client => None,
        Err(e) => return Err(e),
    };
    let namespace = args
        .namespace
        .clone()
        .or_else(|| config.as_ref().map(|c| c.default_namespace.clone()))
        .unwrap_or_else(|| "default".to_string());
    let entries = args.values.entries(&args.name)?;
    let mut doc = SecretDoc::new(&args.name, Some(&namespace), args.secret_type.as_deref());
    let bundle = args.sealing.keys.bundle()?;
    let sealer = Sealer::new(&bundle, args.sealing.scope.into())?;
    let sealed = sealer.seal_secret(&doc, entries)?;
    doc.set_sealed(&sealed);
    let Some(config) = config.filter(|_| args.dry_run == DryRun::None) else {
        print(&doc.to_text(args.output))?;
        return Ok(ExitCode::SUCCESS);
    };
    let secret: Secret = serde_json::from_value(doc.to_json())
        .map_err(|e| Error::new(format!("building the Secret: {e}")))?;
    let client = Client::try_from(config)
        .map_err(|e| Error::new(format!("building the Kubernetes client: {e}")))?;
    let api: Api<Secret> = Api::namespaced(client, &namespace);
    match api.create(&PostParams::default(), &secret).await {
        Ok(_) => {
            println!(
                "secret/{} created in namespace {namespace} ({} sealed values)",
                args.name,
                sealed.len()
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => Err(api_error(e, &args.name, &namespace)),
    }
}

async fn kube_config(args: &CreateArgs) -> Result<Config, Error> {
    let kubeconfig = match &args.kubeconfig {
        Some(path) => Kubeconfig::read_from(path),
        None => Kubeconfig::read(),
    }
    .map_err(|e| Error::usage(format!("reading the kubeconfig: {e}")))?;
    let options = KubeConfigOptions {
        context: args.context.clone(),
        ..KubeConfigOptions::default()
    };
    Config::from_custom_kubeconfig(kubeconfig, &options)
        .await
        .map_err(|e| Error::usage(format!("the kubeconfig: {e}")))
}

fn api_error(e: kube::Error, name: &str, namespace: &str) -> Error {
    match e {
        kube::Error::Api(status) if status.code == 409 => Error::new(format!(
            "secret {name:?} already exists in namespace {namespace:?}; kubectl coffer create \
             never replaces a Secret: delete it first, or seal to a file (`kubectl coffer seal`) \
             and `kubectl apply` it"
        )),
        kube::Error::Api(status) if status.code == 403 => Error::new(format!(
            "the API server refused to create secret {name:?} in namespace {namespace:?} (403 \
             Forbidden: {}); your kubeconfig user needs permission to create secrets there",
            status.message
        )),
        kube::Error::Api(status) => Error::new(format!(
            "the API server refused secret {name:?} ({} {}): {}",
            status.code, status.reason, status.message
        )),
        other => Error::new(format!(
            "creating secret {name:?} in namespace {namespace:?}: {}",
            error_chain(other.to_string(), std::error::Error::source(&other))
        )),
    }
}
