//! Joining keyd replicas: a new replica receives keyd's root from a running one.
//!
//! A new replica has no root. It connects to a running replica over mutual attested TLS and
//! calls `JoinReplica`; the running replica hands over its root only to a caller its policy
//! grants [`KEYD_PEER_ROLE`] (by measurement, like every role), on its own kind of TEE, and the
//! joiner accepts it only from a replica its own policy grants that role. The joiner then seals
//! the root to its own platform identity ([`KeydRoot::adopt`]). The policy is the gate; the TEE
//! kind checks are defence in depth (a policy that admits simulation by mistake still never
//! hands a TEE keyd's root to a simulated caller).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use coffer_attest::policy::Policy;
use coffer_attest::VerifyOptions;
use coffer_audit::Outcome;
use coffer_keyd_client::{ClientError, KeydAddrs, KeydClient, KeydClientOptions};
use coffer_platform::{Platform, TeeType};
use tokio::time::Instant;
use tonic::{Code, Request, Status};

use crate::config::Operation;
use crate::pb;
use crate::root::{Adoption, HandedRoot, KeydRoot, RecoveryInfo};
use crate::service::{audit_entry, KeydService};
use crate::KeydError;

/// The policy role of keyd's own replicas: a caller holding it may receive keyd's root
/// (`JoinReplica`), and a joining replica accepts the root only from a replica holding it.
/// keyd knows this role itself; the keyd configuration does not grant it.
pub const KEYD_PEER_ROLE: &str = "keyd-peer";

/// Longest a single connection attempt and call to a peer may take.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// First and longest pause between rounds over the peers.
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Why `caller` (role, TEE) may not receive this replica's root, or `Ok`.
fn admission(
    role: &str,
    caller: TeeType,
    own: TeeType,
    wanted_instance: &str,
    instance: &str,
) -> Result<(), Status> {
    if role != KEYD_PEER_ROLE {
        return Err(Status::permission_denied(format!(
            "JoinReplica needs the {KEYD_PEER_ROLE} role, and this caller has role {role:?}; to admit a new replica, grant {KEYD_PEER_ROLE} to its measurement in keyd's --policy"
        )));
    }
    if caller == TeeType::Sim && own != TeeType::Sim {
        return Err(Status::permission_denied(format!(
            "a simulated replica may not join a keyd running in {}: simulation evidence proves nothing (the policy should not allow simulation)",
            own.name()
        )));
    }
    if caller != own {
        return Err(Status::permission_denied(format!(
            "a {} replica may not join this {} replica: the replicas of one keyd run on one kind of TEE",
            caller.name(),
            own.name()
        )));
    }
    if !wanted_instance.is_empty() && wanted_instance != instance {
        return Err(Status::failed_precondition(format!(
            "this is keyd {instance}, not {:?}; point the new replica at a replica of the keyd it should join",
            wanted_instance.chars().take(80).collect::<String>()
        )));
    }
    Ok(())
}

/// The `JoinReplica` handler: hands this replica's root to an admitted caller, after its audit
/// record is written. Every call, granted or refused, is audited with the caller's TEE,
/// measurement and role.
pub(crate) fn join_replica(
    service: &KeydService,
    request: Request<pb::JoinReplicaRequest>,
) -> Result<pb::JoinReplicaResponse, Status> {
    let op = Operation::JoinReplica;
    let (info, peer) = service.attested(&request, None, op, 1)?;
    let handed = &service.handover;
    let own = service.platform.kind().tee_type();
    if let Err(status) = admission(
        &peer.role.name,
        peer.claims.tee,
        own,
        &request.get_ref().instance_id,
        &handed.instance_id,
    ) {
        tracing::warn!(peer = ?info.remote_addr, role = %peer.role, tee = %peer.claims.tee.name(), measurement = %info.caller.measurement, reason = %status.message(), "JoinReplica refused");
        return Err(service.deny(op, &info, None, status));
    }
    let entry = audit_entry(op.name(), &info, None, None, (Outcome::Ok, None));
    if let Err(status) = service.record_all(op, vec![entry]) {
        service.metrics.request(op, status.code());
        return Err(status);
    }
    service.metrics.request(op, Code::Ok);
    tracing::info!(peer = ?info.remote_addr, tee = %peer.claims.tee.name(), measurement = %info.caller.measurement, instance = %handed.instance_id, "handed keyd's root to a joining replica");
    Ok(pb::JoinReplicaResponse {
        root: handed.root.to_vec(),
        instance_id: handed.instance_id.clone(),
        created: handed.created.clone(),
        root_check: handed.root_check.clone(),
        recovery: handed.recovery.as_ref().map(|r| pb::ReplicaRecoveryInfo {
            threshold: u32::from(r.threshold),
            total: u32::from(r.total),
            operators: r.operators.clone(),
        }),
    })
}

/// How a new replica joins running ones.
pub struct JoinOptions {
    /// The running replicas to ask, in order (a name may resolve to several).
    pub peers: KeydAddrs,
    /// This replica's platform: attests its TLS certificate, and seals the root received.
    pub platform: Arc<dyn Platform>,
    /// The policy a peer must satisfy with the [`KEYD_PEER_ROLE`] role (keyd's `--policy`).
    pub policy: Arc<Policy>,
    /// How a peer's evidence is verified.
    pub verify_options: VerifyOptions,
    /// This replica's data directory, where `keyd-root.json` is written.
    pub data_dir: PathBuf,
    /// Join only the keyd with this instance id.
    pub instance_id: Option<String>,
    /// How long to keep retrying peers that do not answer.
    pub timeout: Duration,
}

impl std::fmt::Debug for JoinOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinOptions")
            .field("peers", &self.peers)
            .field("data_dir", &self.data_dir)
            .field("instance_id", &self.instance_id)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// A replica that joined.
#[derive(Debug)]
pub struct Joined {
    /// keyd's root, now sealed to this replica's platform.
    pub root: KeydRoot,
    /// The peer that handed it over.
    pub peer: String,
    /// Whether the root file was written, or already held this root.
    pub adoption: Adoption,
}

/// Whether a failed attempt should be tried again: an unreachable or busy peer may answer
/// later; a refusal or an untrusted peer will not until someone changes a policy.
fn is_refusal(e: &ClientError) -> bool {
    match e {
        ClientError::Connect { .. } | ClientError::TimedOut { .. } => false,
        ClientError::Rpc(status) => matches!(
            status.code(),
            Code::PermissionDenied | Code::FailedPrecondition | Code::Unauthenticated
        ),
        _ => true,
    }
}

/// Joins the keyd whose replicas `options.peers` name: asks each in turn for keyd's root until
/// one hands it over, then writes this replica's `keyd-root.json` ([`KeydRoot::adopt`]).
/// Peers that cannot be reached are retried with backoff until `options.timeout`; when every
/// peer refused in one round, it stops at once. Nothing is written unless a peer admitted
/// this replica and was itself admitted as a [`KEYD_PEER_ROLE`].
pub async fn join(options: JoinOptions) -> Result<Joined, KeydError> {
    let policy = options.policy.only_role(KEYD_PEER_ROLE).ok_or_else(|| KeydError::Config {
        path: None,
        message: format!(
            "the policy defines no {KEYD_PEER_ROLE} role, so no peer can be trusted to hand over keyd's root; add a {KEYD_PEER_ROLE} role naming the keyd replicas' measurement"
        ),
    })?;
    let policy = Arc::new(policy);
    let deadline = Instant::now() + options.timeout;
    let mut backoff = FIRST_BACKOFF;
    loop {
        let mut reasons = Vec::new();
        let mut refused = 0;
        let peers = options.peers.resolve().await;
        for peer in &peers {
            let left = deadline.saturating_duration_since(Instant::now());
            let attempt = ATTEMPT_TIMEOUT.min(left.max(Duration::from_millis(100)));
            match ask(peer.clone(), &options, policy.clone(), attempt).await {
                Ok(handed) => {
                    let (data_dir, platform) = (options.data_dir.clone(), options.platform.clone());
                    let (root, adoption) = tokio::task::spawn_blocking(move || {
                        KeydRoot::adopt(&data_dir, platform.as_ref(), &handed)
                    })
                    .await
                    .map_err(|e| {
                        KeydError::io("writing the joined root", std::io::Error::other(e))
                    })??;
                    return Ok(Joined {
                        root,
                        peer: peer.to_string(),
                        adoption,
                    });
                }
                Err(e) => {
                    tracing::warn!(peer = %peer, error = %e, "joining keyd through this peer failed");
                    refused += usize::from(is_refusal(&e));
                    reasons.push(format!("{peer}: {e}"));
                }
            }
        }
        let out_of_time = Instant::now() >= deadline;
        if refused == peers.len() || out_of_time {
            return Err(KeydError::Join {
                peers: options.peers.to_string(),
                gave_up: if out_of_time {
                    format!("still failing after {}s", options.timeout.as_secs())
                } else {
                    "every peer refused".to_string()
                },
                reasons,
            });
        }
        tokio::time::sleep(backoff.min(deadline.saturating_duration_since(Instant::now()))).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// One attempt: connect to `peer` (held to `policy`, the keyd-peer role only) and ask for the
/// root.
async fn ask(
    peer: coffer_keyd_client::KeydAddr,
    options: &JoinOptions,
    policy: Arc<Policy>,
    timeout: Duration,
) -> Result<HandedRoot, ClientError> {
    let client_options = KeydClientOptions {
        platform: options.platform.clone(),
        policy,
        verify_options: options.verify_options.clone(),
    };
    let mut client = KeydClient::connect_within(peer, client_options, timeout).await?;
    let received = client.join_replica(options.instance_id.as_deref()).await?;
    if let Some(wanted) = &options.instance_id {
        if *wanted != received.instance_id {
            return Err(ClientError::MalformedAnswer {
                rpc: "JoinReplica",
                detail: format!(
                    "it handed over keyd {}'s root, not {wanted}'s",
                    received.instance_id
                ),
            });
        }
    }
    let recovery = match received.recovery {
        None => None,
        Some(r) => Some(RecoveryInfo {
            threshold: u8::try_from(r.threshold).map_err(|_| malformed("recovery threshold"))?,
            total: u8::try_from(r.total).map_err(|_| malformed("recovery share count"))?,
            operators: r.operators,
        }),
    };
    Ok(HandedRoot {
        root: received.root,
        instance_id: received.instance_id,
        created: received.created,
        root_check: received.root_check,
        recovery,
    })
}

fn malformed(what: &str) -> ClientError {
    ClientError::MalformedAnswer {
        rpc: "JoinReplica",
        detail: format!("the {what} is out of range"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_keyd_peer_on_the_same_tee_with_the_wanted_instance_is_admitted() {
        let ok = |role, caller, own, wanted| admission(role, caller, own, wanted, "keyd-1");
        assert!(ok(KEYD_PEER_ROLE, TeeType::Sgx, TeeType::Sgx, "").is_ok());
        assert!(ok(KEYD_PEER_ROLE, TeeType::Sim, TeeType::Sim, "keyd-1").is_ok());
        let code = |r: Result<(), Status>| r.unwrap_err().code();
        let e = ok("kms-plugin", TeeType::Sgx, TeeType::Sgx, "").unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied);
        assert!(e.message().contains("grant keyd-peer"), "{}", e.message());
        let e = ok(KEYD_PEER_ROLE, TeeType::Sim, TeeType::Snp, "").unwrap_err();
        assert!(e.message().contains("simulated replica"), "{}", e.message());
        assert_eq!(
            code(ok(KEYD_PEER_ROLE, TeeType::Tdx, TeeType::Snp, "")),
            Code::PermissionDenied
        );
        assert_eq!(
            code(ok(KEYD_PEER_ROLE, TeeType::Snp, TeeType::Snp, "keyd-2")),
            Code::FailedPrecondition
        );
    }

    #[test]
    fn refusals_end_a_join_and_outages_are_retried() {
        let unreachable = ClientError::Connect {
            addr: "a:1".into(),
            detail: "refused".into(),
        };
        assert!(!is_refusal(&unreachable));
        let busy = ClientError::Rpc(Box::new(Status::resource_exhausted("slow down")));
        assert!(!is_refusal(&busy));
        let denied = ClientError::Rpc(Box::new(Status::permission_denied("no")));
        assert!(is_refusal(&denied));
        let untrusted = ClientError::Untrusted {
            addr: "a:1".into(),
            detail: "measurement".into(),
        };
        assert!(is_refusal(&untrusted));
    }
}
