//! keyd replicas over one etcd prefix, for the tests that run several `coffer keyd serve
//! --store etcd` processes (a real etcd on loopback, real processes).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use coffer_keyd_client::pb;
use coffer_keyd_client::pb::key_service_client::KeyServiceClient;
use coffer_keyd_store::{EtcdOptions, EtcdStore};
use coffer_platform::sim::SimPlatform;
use tonic::transport::Channel;

use super::etcd::Etcd;
use super::keyd::{client, free_addr, keyd_cli, replica_data_dirs, sim_signer, KeydProcess};
use super::run::output_within;
use super::{coffer, coffer_bin};

/// The keyring every replica serves.
pub const KEYRING: &str = "cluster-a";
/// The etcd prefix of the replicas' records.
pub const PREFIX: &str = "/coffer/keyd";

/// keyd replicas sharing one etcd prefix, and an admin client's sim state.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub etcd: Etcd,
    pub policy: PathBuf,
    pub config: PathBuf,
    pub admin: PathBuf,
    pub data: Vec<PathBuf>,
    pub addrs: Vec<SocketAddr>,
    pub processes: Vec<Option<KeydProcess>>,
}

impl Cluster {
    /// One initialised data directory with `cluster-a`, copied for `count` replicas, its state
    /// migrated once into a fresh etcd; `None` when etcd is not installed.
    pub fn prepare(count: usize) -> Option<Cluster> {
        Self::prepare_for(count, None)
    }

    /// [`Cluster::prepare`], granting a KMS plugin whose sim state is `plugin` wrap, unwrap
    /// and status too.
    pub fn prepare_for(count: usize, plugin: Option<&Path>) -> Option<Cluster> {
        let etcd = Etcd::start_or_skip()?;
        let dir = tempfile::tempdir().unwrap();
        let data = replica_data_dirs(dir.path(), &[KEYRING], count);
        let first = data[0].clone();
        keyd_cli(&first, &["migrate", "--to-etcd", &etcd.endpoint]);
        let admin = dir.path().join("admin");
        let policy = dir.path().join("policy.yaml");
        let mut roles = format!(
            "  - name: admin\n    sim: {{ signer: [\"{}\"] }}\n",
            sim_signer(&admin)
        );
        if let Some(plugin) = plugin {
            roles.push_str(&format!(
                "  - name: kms-plugin\n    sim: {{ signer: [\"{}\"] }}\n",
                sim_signer(plugin)
            ));
        }
        std::fs::write(
            &policy,
            format!("version: 1\nallow_simulation: true\nroles:\n{roles}"),
        )
        .unwrap();
        let callers = if plugin.is_some() {
            "[admin, kms-plugin]"
        } else {
            "[admin]"
        };
        let config = dir.path().join("keyd.yaml");
        std::fs::write(
            &config,
            format!("keyrings:\n  {KEYRING}:\n    wrap: {callers}\n    unwrap: {callers}\n    status: {callers}\n    rotate: [admin]\n    list: [admin]\n"),
        )
        .unwrap();
        Some(Cluster {
            dir,
            etcd,
            policy,
            config,
            admin,
            addrs: (0..count).map(|_| free_addr()).collect(),
            processes: (0..count).map(|_| None).collect(),
            data,
        })
    }

    /// The flags that put a keyd command on this cluster's etcd.
    pub fn etcd_flags(&self) -> Vec<String> {
        vec![
            "--store".into(),
            "etcd".into(),
            "--etcd-endpoints".into(),
            self.etcd.endpoint.clone(),
        ]
    }

    pub fn start(&mut self, i: usize) {
        let config = self.config.clone();
        self.start_with_config(i, &config);
    }

    /// Starts replica `i` with `--config config` (a file, or `etcd:`).
    pub fn start_with_config(&mut self, i: usize, config: &Path) {
        let flags = self.etcd_flags();
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        self.processes[i] = Some(KeydProcess::start(
            &self.data[i],
            self.addrs[i],
            &self.policy,
            config,
            &flags,
        ));
    }

    pub fn process(&mut self, i: usize) -> &mut KeydProcess {
        self.processes[i].as_mut().unwrap()
    }

    /// Still the process started first: nothing restarted it.
    pub fn assert_running(&mut self, i: usize) {
        let p = self.process(i);
        let status = p.child.as_mut().unwrap().try_wait().unwrap();
        assert!(status.is_none(), "replica {i} exited: {}", p.log_text());
    }

    pub async fn client(&self, i: usize) -> KeyServiceClient<Channel> {
        let admin = SimPlatform::open_or_create(&self.admin).unwrap();
        client(self.addrs[i], &sim_signer(&self.data[i]), Some(&admin)).await
    }

    /// `coffer keyd <args> --store etcd …` with replica `i`'s data directory: (success,
    /// stdout, stderr).
    pub fn cli(&self, i: usize, args: &[&str]) -> (bool, String, String) {
        let mut full = vec!["keyd"];
        full.extend_from_slice(args);
        let flags = self.etcd_flags();
        full.extend(flags.iter().map(String::as_str));
        full.extend_from_slice(&["--platform", "sim", "--data-dir"]);
        full.push(self.data[i].to_str().unwrap());
        let out = coffer(&full);
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    pub fn cli_ok(&self, i: usize, args: &[&str]) -> String {
        let (ok, out, err) = self.cli(i, args);
        assert!(ok, "coffer keyd {args:?} --store etcd failed: {err}");
        out
    }

    /// `keyd serve --store etcd` of replica `i` that must refuse to start: its stderr.
    pub fn refused_start(&self, i: usize, config: &Path, extra: &[&str]) -> String {
        let out = output_within(
            Command::new(coffer_bin())
                .args(["keyd", "serve", "--platform", "sim", "--listen"])
                .arg(free_addr().to_string())
                .arg("--data-dir")
                .arg(&self.data[i])
                .arg("--policy")
                .arg(&self.policy)
                .arg("--config")
                .arg(config)
                .args(self.etcd_flags())
                .args(extra),
        );
        assert!(!out.status.success(), "keyd started");
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    pub async fn etcd_store(&self) -> EtcdStore {
        let mut options = EtcdOptions::new(vec![self.etcd.endpoint.clone()]);
        options.timeout = Duration::from_secs(2);
        EtcdStore::connect(&options).await.unwrap()
    }
}

/// Unwraps `wrapped` on keyring [`KEYRING`] through `c`.
pub async fn unwrap(
    c: &mut KeyServiceClient<Channel>,
    wrapped: &pb::WrapResponse,
) -> Result<Vec<u8>, tonic::Status> {
    c.unwrap(pb::UnwrapRequest {
        keyring: KEYRING.into(),
        key_id: wrapped.key_id.clone(),
        ciphertext: wrapped.ciphertext.clone(),
    })
    .await
    .map(|r| r.into_inner().plaintext)
}
