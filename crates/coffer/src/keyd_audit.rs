//! `coffer keyd audit verify`: checks one or several replicas' audit logs — each chain across
//! its segments, then, with `--etcd-endpoints`, against the chain head the replica anchored in
//! etcd, which detects a deleted or rewritten tail that the log and its head file alone cannot.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use coffer_audit::{ChainMode, CheckpointStatus, HeadCheck, VerifyOptions, VerifyReport};
use coffer_keyd::{AuditAnchor, KeydRoot};
use coffer_platform::Access;

use crate::keyd::KeydStoreArgs;
use crate::keyd_etcd::EtcdArgs;

type Error = Box<dyn std::error::Error + Send + Sync>;

/// `coffer keyd audit verify`.
#[derive(Args, Debug)]
pub struct VerifyArgs {
    #[command(flatten)]
    store: KeydStoreArgs,
    /// The audit log (JSON lines). Default: <data-dir>/audit.log. With --etcd-endpoints it is
    /// checked against the anchor of this host's replica id (the host name, as `keyd serve`
    /// defaults --replica-id); name it with --replica instead when verifying elsewhere.
    #[arg(conflicts_with = "replicas")]
    log: Option<PathBuf>,
    /// A replica's audit log as NAME=LOG, NAME being its --replica-id (LOG alone: this host's
    /// replica id). Repeat for each replica.
    #[arg(long = "replica", value_name = "NAME=LOG", value_parser = parse_replica)]
    replicas: Vec<ReplicaLog>,
    /// Fail if a log's head file is missing (it detects truncation at the end).
    #[arg(long)]
    require_head: bool,
    /// etcd endpoints (host:port, comma-separated) holding the replicas' audit anchors (keyd
    /// serve --store etcd writes them): each log must still hold its anchored record, with the
    /// anchored hash.
    #[arg(long, value_name = "ENDPOINTS", value_delimiter = ',', num_args = 1..)]
    etcd_endpoints: Vec<String>,
    #[command(flatten)]
    etcd: EtcdArgs,
    /// Fail if etcd holds an anchor for a replica whose log was not given.
    #[arg(long, requires = "etcd_endpoints")]
    require_all_replicas: bool,
}

/// One `--replica` value.
#[derive(Clone, Debug)]
struct ReplicaLog {
    /// The replica id, if given.
    name: Option<String>,
    log: PathBuf,
}

/// Parses `--replica-id`: it names an etcd record, so a host name's characters only.
pub(crate) fn parse_replica_id(value: &str) -> Result<String, String> {
    coffer_keyd::validate_replica_id(value).map(|()| value.to_string())
}

fn parse_replica(value: &str) -> Result<ReplicaLog, String> {
    match value.split_once('=') {
        Some((name, log)) => {
            coffer_keyd::validate_replica_id(name)?;
            if log.is_empty() {
                return Err(format!("--replica {value}: give the log after '='"));
            }
            Ok(ReplicaLog {
                name: Some(name.to_string()),
                log: PathBuf::from(log),
            })
        }
        None => Ok(ReplicaLog {
            name: None,
            log: PathBuf::from(value),
        }),
    }
}

/// Runs `coffer keyd audit verify`.
pub fn verify(args: VerifyArgs) -> Result<ExitCode, Error> {
    let platform = args.store.platform(Access::ExistingOnly)?;
    let root = KeydRoot::open(&args.store.data_dir, platform.as_ref())?;
    let options = VerifyOptions {
        chain: ChainMode::Hmac(root.audit_chain_key()),
        head: if args.require_head {
            HeadCheck::Require
        } else {
            HeadCheck::IfPresent
        },
    };
    let anchored = !args.etcd_endpoints.is_empty();
    let anchors = if anchored {
        read_anchors(&args, &root)?
    } else {
        Vec::new()
    };
    let logs = if args.replicas.is_empty() {
        vec![ReplicaLog {
            name: None,
            log: args
                .log
                .clone()
                .unwrap_or_else(|| args.store.data_dir.join("audit.log")),
        }]
    } else {
        args.replicas.clone()
    };
    let mut failed = Vec::new();
    let mut matched = Vec::new();
    for replica in &logs {
        let id = replica
            .name
            .clone()
            .unwrap_or_else(coffer_keyd::default_replica_id);
        let label = match &replica.name {
            Some(name) => format!("replica {name}: {}", replica.log.display()),
            None if anchored => format!("replica {id}: {}", replica.log.display()),
            None => replica.log.display().to_string(),
        };
        let anchor = anchors.iter().find(|a| a.replica == id);
        if anchor.is_some() {
            matched.push(id.clone());
        }
        match check_log(replica, &options, anchor, anchored) {
            Ok(lines) => {
                for line in lines {
                    println!("{label}: {line}");
                }
            }
            Err(problem) => {
                eprintln!("{label}: FAILED: {problem}");
                failed.push(label);
            }
        }
    }
    let mut unmatched = 0;
    for anchor in anchors.iter().filter(|a| !matched.contains(&a.replica)) {
        unmatched += 1;
        let line = format!(
            "replica {}: anchored at seq {} ({}) but its log was not given (add --replica {}=<log>)",
            anchor.replica, anchor.seq, anchor.time, anchor.replica
        );
        if args.require_all_replicas {
            eprintln!("{line}: FAILED (--require-all-replicas)");
            failed.push(format!("replica {}", anchor.replica));
        } else {
            println!("{line}");
        }
    }
    if !failed.is_empty() {
        return Err(format!(
            "audit verification failed for {} of {} replica(s): {}; treat those logs as tampered: keep copies and investigate",
            failed.len(),
            logs.len() + unmatched,
            failed.join(", ")
        )
        .into());
    }
    if anchored || logs.len() > 1 {
        println!(
            "verified {} audit log(s){}",
            logs.len(),
            if anchored {
                format!(" against {} anchor(s) in etcd", matched.len())
            } else {
                String::new()
            }
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Every replica's anchor under --etcd-prefix.
fn read_anchors(args: &VerifyArgs, root: &KeydRoot) -> Result<Vec<AuditAnchor>, Error> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let store = args.etcd.open_records(&args.etcd_endpoints, root).await?;
        coffer_keyd::read_anchors(&store).await.map_err(|e| {
            format!(
                "reading the audit anchors under {}{}: {e}",
                store.prefix(),
                coffer_keyd::AUDIT_ANCHORS
            )
            .into()
        })
    })
}

/// Verifies one log, and against its anchor when there is one: the lines to print, or why
/// it fails.
fn check_log(
    replica: &ReplicaLog,
    options: &VerifyOptions,
    anchor: Option<&AuditAnchor>,
    anchored: bool,
) -> Result<Vec<String>, String> {
    let (report, status) = match anchor {
        Some(anchor) => {
            let (report, status) =
                coffer_audit::verify_against(&replica.log, options, &anchor.checkpoint())
                    .map_err(|e| e.to_string())?;
            (report, Some(status))
        }
        None => (
            coffer_audit::verify(&replica.log, options).map_err(|e| e.to_string())?,
            None,
        ),
    };
    let mut lines = vec![chain_line(&report)];
    lines.extend(pruning_line(&report));
    match (anchor, status) {
        (Some(anchor), Some(CheckpointStatus::Holds { records_after })) => lines.push(format!(
            "holds its anchor in etcd (seq {}, anchored {}), {records_after} record(s) after it",
            anchor.seq, anchor.time
        )),
        (Some(anchor), Some(CheckpointStatus::NotKept { first_seq })) => lines.push(format!(
            "its anchor in etcd (seq {}, anchored {}) is in segments no longer here (the log starts at seq {first_seq}): not compared",
            anchor.seq, anchor.time
        )),
        (Some(anchor), Some(CheckpointStatus::TailDeleted { last_seq })) => {
            return Err(format!(
                "tail deleted: the log ends at seq {last_seq} but the replica anchored seq {} in etcd at {}: records {}..={} were removed",
                anchor.seq,
                anchor.time,
                last_seq + 1,
                anchor.seq
            ))
        }
        (Some(anchor), Some(CheckpointStatus::Rewritten)) => {
            return Err(format!(
                "rewritten: record seq {} has another hash than the one the replica anchored in etcd at {} (the log was rewritten from there or replaced by another log)",
                anchor.seq, anchor.time
            ))
        }
        _ if anchored => lines.push(
            "no anchor in etcd for this replica (it did not serve with --store etcd under this --replica-id): the tail is not checked".to_string(),
        ),
        _ => {}
    }
    Ok(lines)
}

fn chain_line(report: &VerifyReport) -> String {
    format!(
        "chain intact, {} records (seq {}..{}) in {} segment(s), last hash {}",
        report.lines, report.first_seq, report.last_seq, report.segments, report.last_hash
    )
}

/// What the log says about its removed oldest segments.
fn pruning_line(report: &VerifyReport) -> Option<String> {
    if report.pruned_records == 0 {
        None
    } else if report.pruning_recorded {
        Some(format!(
            "{} older segment(s) with records 1..{} were removed by retention; the chain was checked from the first kept segment's recorded predecessor",
            report.pruned_segments, report.pruned_records
        ))
    } else {
        Some(format!(
            "warning: records 1..{} ({} older segment(s)) are not here and no audit.prune record accounts for them: fine if you shipped those segments away yourself; otherwise treat the log as tampered",
            report.pruned_records, report.pruned_segments
        ))
    }
}
