//! How keyd commands reach etcd: `--store etcd`, the endpoints, TLS, authentication and the
//! key prefix, shared by `keyd serve`, the commands that change keyd's state and `keyd migrate`.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};
use coffer_keyd_store::{EtcdOptions, EtcdStore, EtcdTls};
use zeroize::Zeroizing;

use crate::keyd::read_small;

type Error = Box<dyn std::error::Error + Send + Sync>;

/// How to reach keyd's etcd and where its records live.
#[derive(Args, Debug, Clone)]
pub struct EtcdArgs {
    /// The etcd key prefix keyd's records live under (one prefix per keyd root).
    #[arg(long, default_value = "/coffer/keyd", value_name = "PREFIX")]
    pub etcd_prefix: String,
    /// PEM CA certificate that signed etcd's server certificates; turns on TLS.
    #[arg(long, value_name = "FILE")]
    pub etcd_cacert: Option<PathBuf>,
    /// PEM client certificate, for etcd with --client-cert-auth.
    #[arg(long, value_name = "FILE", requires_all = ["etcd_key", "etcd_cacert"])]
    pub etcd_cert: Option<PathBuf>,
    /// PEM private key of --etcd-cert.
    #[arg(long, value_name = "FILE", requires = "etcd_cert")]
    pub etcd_key: Option<PathBuf>,
    /// etcd user, for etcd with authentication enabled.
    #[arg(long, value_name = "NAME", requires = "etcd_password_file")]
    pub etcd_user: Option<String>,
    /// File holding --etcd-user's password (one line).
    #[arg(long, value_name = "FILE", requires = "etcd_user")]
    pub etcd_password_file: Option<PathBuf>,
    /// Connect and per-request timeout.
    #[arg(long, default_value = "5s", value_parser = crate::duration::within(
        Duration::from_millis(100), Duration::from_secs(60)))]
    pub etcd_timeout: Duration,
}

impl EtcdArgs {
    /// The connection options for `endpoints`.
    pub fn options(&self, endpoints: &[String]) -> Result<EtcdOptions, Error> {
        let mut options = EtcdOptions::new(endpoints.to_vec());
        options.timeout = self.etcd_timeout;
        if let Some(ca) = &self.etcd_cacert {
            let client = match (&self.etcd_cert, &self.etcd_key) {
                (Some(cert), Some(key)) => Some((
                    read_small(cert)?.into_bytes(),
                    Zeroizing::new(read_small(key)?.into_bytes()),
                )),
                _ => None,
            };
            options.tls = Some(EtcdTls {
                ca_pem: read_small(ca)?.into_bytes(),
                client,
            });
        }
        if let (Some(user), Some(file)) = (&self.etcd_user, &self.etcd_password_file) {
            let password = Zeroizing::new(read_small(file)?);
            options.user = Some(user.clone());
            options.password = Some(Zeroizing::new(
                password.trim_end_matches(['\r', '\n']).to_string(),
            ));
        }
        Ok(options)
    }

    /// keyd's records at `endpoints` under --etcd-prefix, opened with `root`.
    pub async fn open_records(
        &self,
        endpoints: &[String],
        root: &coffer_keyd::KeydRoot,
    ) -> Result<coffer_keyd_store::SealedStore<EtcdStore>, Error> {
        let etcd = EtcdStore::connect(&self.options(endpoints)?).await?;
        Ok(coffer_keyd_store::SealedStore::new(
            etcd,
            coffer_keyd_store::StoreKey::new(root.state_store_key()),
            &self.etcd_prefix,
        )?)
    }
}

/// Where keyd's keyrings and sealing keys live.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum StoreKind {
    /// Files under --data-dir: one machine.
    #[default]
    Dir,
    /// Records in etcd, encrypted under keyd's root: several replicas share them. The data
    /// directory keeps this replica's sealed root and its audit log.
    Etcd,
}

/// `--store` and, with `--store etcd`, how to reach etcd.
#[derive(Args, Debug, Clone)]
pub struct SharedStoreArgs {
    /// Where keyrings and sealing keys live: `dir` (the data directory, one machine) or `etcd`
    /// (shared by keyd replicas; needs --etcd-endpoints).
    #[arg(long, value_enum, default_value_t = StoreKind::Dir)]
    pub store: StoreKind,
    /// etcd endpoints (host:port, comma-separated), with --store etcd.
    #[arg(long, value_name = "ENDPOINTS", value_delimiter = ',', num_args = 1..)]
    pub etcd_endpoints: Vec<String>,
    #[command(flatten)]
    pub etcd: EtcdArgs,
}

impl SharedStoreArgs {
    /// With `--store etcd`, a connection to etcd (the records are opened once keyd's root is
    /// open); `None` with `--store dir`.
    pub async fn connect(&self) -> Result<Option<coffer_keyd::SharedStore>, Error> {
        match self.store {
            StoreKind::Dir => Ok(None),
            StoreKind::Etcd => {
                if self.etcd_endpoints.is_empty() {
                    return Err("--store etcd needs --etcd-endpoints host:port[,host:port…]".into());
                }
                let options = self.etcd.options(&self.etcd_endpoints)?;
                let etcd = EtcdStore::connect(&options).await?;
                Ok(Some(coffer_keyd::SharedStore {
                    etcd,
                    prefix: self.etcd.etcd_prefix.clone(),
                }))
            }
        }
    }
}
