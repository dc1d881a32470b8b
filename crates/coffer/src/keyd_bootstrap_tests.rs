//! Two replicas that both found etcd empty and initialised at the same moment, against a real
//! etcd on loopback (the integration tests' `tests/common/etcd.rs`): processes cannot be made
//! to race reliably, so the loser's write is made here, after the winner's.

use coffer_keyd_store::EtcdOptions;
use coffer_recovery::OperatorSecretKey;

use super::*;
use crate::keyd::{KeydStoreArgs, RecoveryArgs};

/// Free loopback ports, which the etcd helper takes from its sibling `keyd` module.
mod keyd {
    pub fn free_addr() -> std::net::SocketAddr {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    }
}

#[allow(dead_code)]
#[path = "../tests/common/etcd.rs"]
mod etcd;

/// A replica's data directory initialised with 2-of-3 shares, as `serve --init` does.
struct Initialised {
    data_dir: PathBuf,
    shares: Vec<PathBuf>,
    records: SealedStore<EtcdStore>,
}

fn initialise(dir: &Path, name: &str, etcd: &EtcdStore) -> Initialised {
    let store = KeydStoreArgs {
        platform: "sim".parse().unwrap(),
        data_dir: dir.join(name),
    };
    let recovery = RecoveryArgs {
        recovery_keys: (0..3)
            .map(|_| OperatorSecretKey::generate().1.to_string())
            .collect(),
        recovery_threshold: Some(2),
        recovery_shares_dir: dir.join(format!("{name}-shares")),
    };
    let shares = crate::keyd::initialise(&store, &recovery).unwrap();
    let platform = store.platform(Access::ExistingOnly).unwrap();
    let root = KeydRoot::open(&store.data_dir, platform.as_ref()).unwrap();
    let records = SealedStore::new(
        etcd.clone(),
        StoreKey::new(root.state_store_key()),
        "/coffer/keyd",
    )
    .unwrap();
    Initialised {
        data_dir: store.data_dir,
        shares,
        records,
    }
}

#[test]
fn the_replica_that_loses_the_race_to_initialise_removes_what_it_made() {
    let Some(etcd) = etcd::Etcd::start_or_skip() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let connection = EtcdStore::connect(&EtcdOptions::new(vec![etcd.endpoint.clone()]))
            .await
            .unwrap();
        let winner = initialise(dir.path(), "a", &connection);
        let loser = initialise(dir.path(), "b", &connection);
        assert_eq!(loser.shares.len(), 3);

        publish_new_root(&winner.data_dir, &winner.records, &winner.shares)
            .await
            .unwrap();
        let err = publish_new_root(&loser.data_dir, &loser.records, &loser.shares)
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "another replica initialised keyd at the same time; restart this one with --join: it will join"
        );
        assert!(!loser.data_dir.join(ROOT_FILE).exists());
        assert!(loser.shares.iter().all(|s| !s.exists()), "shares removed");

        // The winner's root and shares stay, and etcd holds the winner's root record.
        assert!(winner.shares.iter().all(|s| s.exists()));
        let record = winner.records.get(ROOT_FILE).await.unwrap().unwrap();
        assert_eq!(
            record.plaintext[..],
            std::fs::read(winner.data_dir.join(ROOT_FILE)).unwrap()[..]
        );
    });
}
