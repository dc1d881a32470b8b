//! Caller checks: who is on the other end of the unix socket, and may they call the plugin?
//!
//! The kernel reports each connection's uid, gid and pid (SO_PEERCRED); they cannot be forged
//! by the caller. Optionally the caller's executable is pinned via `/proc/<pid>/exe`.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Who may call the plugin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallerPolicy {
    /// Uids that may call. A caller is allowed if its uid or its gid is listed.
    pub uids: Vec<u32>,
    /// Gids that may call.
    pub gids: Vec<u32>,
    /// If non-empty, the caller's executable must be one of these (checked where the caller's
    /// `/proc/<pid>` is visible, i.e. same pid namespace and permission to read it).
    pub executables: Vec<PathBuf>,
}

impl CallerPolicy {
    /// The default: root and the plugin's own uid.
    pub fn default_for_this_process() -> Self {
        let own = rustix_uid();
        let mut uids = vec![0];
        if own != 0 {
            uids.push(own);
        }
        CallerPolicy {
            uids,
            gids: Vec::new(),
            executables: Vec::new(),
        }
    }

    /// Decides on a connection from a peer with these credentials.
    pub fn check(&self, peer: Peer) -> Verdict {
        let by_id = self.uids.contains(&peer.uid) || self.gids.contains(&peer.gid);
        if !by_id {
            return Verdict::refused(
                peer,
                format!(
                    "caller uid {} / gid {} is not allowed (allowed uids {:?}, gids {:?}; see --allow-uid/--allow-gid)",
                    peer.uid, peer.gid, self.uids, self.gids
                ),
            );
        }
        if self.executables.is_empty() {
            return Verdict::allowed(peer, None);
        }
        match peer.pid.filter(|pid| *pid > 0).map(executable_of) {
            Some(Ok(exe)) => {
                if self
                    .executables
                    .iter()
                    .any(|allowed| same_file(allowed, &exe))
                {
                    Verdict::allowed(peer, Some(exe))
                } else {
                    let reason = format!(
                        "caller executable {} is not an allowed executable (see --allow-exe)",
                        exe.display()
                    );
                    Verdict::refused(peer, reason)
                }
            }
            // Caller in another pid namespace or unreadable /proc: the pin cannot be checked;
            // the uid/gid check above still holds. Said loudly, since the operator asked for it.
            Some(Err(_)) | None => {
                tracing::warn!(
                    target: "coffer::audit",
                    event = "exe_pin_unchecked",
                    uid = peer.uid,
                    gid = peer.gid,
                    pid = peer.pid.unwrap_or(0),
                    "--allow-exe cannot be checked for this caller (its process is not visible \
                     here: another pid namespace, or /proc not readable); allowed by uid/gid only"
                );
                Verdict::allowed(peer, None)
            }
        }
    }
}

fn rustix_uid() -> u32 {
    coffer_platform::process::current_uid()
}

fn executable_of(pid: i32) -> std::io::Result<PathBuf> {
    std::fs::read_link(format!("/proc/{pid}/exe"))
}

fn same_file(allowed: &Path, actual: &Path) -> bool {
    allowed == actual
        || std::fs::canonicalize(allowed)
            .map(|c| c == actual)
            .unwrap_or(false)
}

/// A connection's kernel credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
    /// Process id, if the kernel reported one in our pid namespace.
    pub pid: Option<i32>,
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "uid={} gid={} pid=", self.uid, self.gid)?;
        match self.pid {
            Some(pid) => write!(f, "{pid}"),
            None => f.write_str("unknown"),
        }
    }
}

/// The outcome of [`CallerPolicy::check`] for one connection; attached to each of its requests.
#[derive(Debug, Clone)]
pub struct Verdict {
    /// The caller.
    pub peer: Peer,
    /// `None` if allowed; otherwise why not.
    pub refusal: Option<Arc<str>>,
    /// The caller's executable, if it was checked.
    pub executable: Option<PathBuf>,
}

impl Verdict {
    fn allowed(peer: Peer, executable: Option<PathBuf>) -> Self {
        Verdict {
            peer,
            refusal: None,
            executable,
        }
    }

    fn refused(peer: Peer, reason: String) -> Self {
        Verdict {
            peer,
            refusal: Some(reason.into()),
            executable: None,
        }
    }

    /// True if the caller may use the plugin.
    pub fn is_allowed(&self) -> bool {
        self.refusal.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(uid: u32, gid: u32) -> Peer {
        Peer {
            uid,
            gid,
            pid: Some(std::process::id() as i32),
        }
    }

    #[test]
    fn uid_or_gid_allows() {
        let policy = CallerPolicy {
            uids: vec![0, 1000],
            gids: vec![50],
            executables: vec![],
        };
        assert!(policy.check(peer(0, 0)).is_allowed());
        assert!(policy.check(peer(1000, 7)).is_allowed());
        assert!(policy.check(peer(7, 50)).is_allowed());
        let refused = policy.check(peer(7, 7));
        let reason = refused.refusal.unwrap();
        assert!(
            reason.contains("uid 7") && reason.contains("--allow-uid"),
            "{reason}"
        );
    }

    #[test]
    fn executable_pin() {
        let me = std::env::current_exe().unwrap();
        let mut policy = CallerPolicy {
            uids: vec![rustix_uid()],
            gids: vec![],
            executables: vec![me.clone()],
        };
        let v = policy.check(peer(rustix_uid(), 0));
        assert!(v.is_allowed(), "{:?}", v.refusal);
        assert_eq!(v.executable.as_deref(), Some(me.as_path()));
        policy.executables = vec![PathBuf::from("/usr/bin/kube-apiserver")];
        let v = policy.check(peer(rustix_uid(), 0));
        assert!(v.refusal.unwrap().contains("not an allowed executable"));
        // Invisible peer: only the uid check applies.
        let invisible = Peer {
            uid: rustix_uid(),
            gid: 0,
            pid: None,
        };
        assert!(policy.check(invisible).is_allowed());
    }
}
