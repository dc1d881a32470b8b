//! Caller checks: who is on the other end of the unix socket, and may they call the plugin?
//!
//! The kernel reports each connection's uid, gid and pid (SO_PEERCRED); they cannot be forged
//! by the caller. Optionally the caller's executable is pinned via `/proc/<pid>/exe`.
//!
//! That holds only where the kernel answers. Inside an SGX LibOS the "kernel" is the LibOS, and
//! the credentials it reports are not the host caller's: [`credentials_are_real`] decides whether
//! a caller check can mean anything here, and `kms serve` refuses a unix socket where it cannot
//! (the host-side `coffer kms bridge` checks callers instead).

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

/// Why peer credentials on this platform do not identify the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UnrealCredentials {
    /// An SGX LibOS emulates unix sockets inside the enclave: the credentials it reports were
    /// never checked by the host kernel.
    ///
    /// Occlum (v0.31, occlum/occlum `src/libos/src/net/syscalls.rs`, `do_getsockopt`) answers
    /// `getsockopt` on a unix socket with `warn!("getsockopt for unix socket is unimplemented")`
    /// and success, writing nothing: the caller's zeroed ucred reads as uid 0 / pid 0, so every
    /// caller would pass a check that allows root. Gramine (gramineproject/gramine
    /// `libos/src/net/unix.c`, v1.8) emulates unix sockets with PAL pipes named by SHA-256 of the
    /// path, with no file on the host, so a host process cannot connect at all; its
    /// `getsockopt` answers `ENOPROTOOPT` for every option, SO_PEERCRED included.
    #[error("peer credentials are emulated by the {libos} LibOS inside the enclave, so they do not identify the host caller")]
    LibOs {
        /// The LibOS (`sgx-occlum`, `sgx-gramine`).
        libos: &'static str,
    },
    /// A connection to ourselves reported credentials that are not ours.
    #[error("peer credentials are not real on this system: a connection to this very process reported {reported} (expected uid={} pid={})", .expected_uid, .expected_pid)]
    Probe {
        /// What `SO_PEERCRED` said about our own connection.
        reported: Peer,
        /// Our uid.
        expected_uid: u32,
        /// Our pid.
        expected_pid: i32,
    },
    /// A connection to ourselves reported no credentials at all.
    #[error("peer credentials cannot be read on this system ({0})")]
    Unreadable(String),
}

/// Decides whether a caller check can be trusted, from the platform and from `probe`: the
/// credentials `SO_PEERCRED` reported for a connection this process made to itself (where the
/// kernel is real, they are this process's uid and pid; an all-zero answer is Occlum's).
pub fn credentials_are_real(
    platform: coffer_platform::PlatformKind,
    probe: Result<Peer, String>,
    own_uid: u32,
    own_pid: i32,
) -> Result<(), UnrealCredentials> {
    use coffer_platform::PlatformKind;
    match platform {
        PlatformKind::SgxOcclum => {
            return Err(UnrealCredentials::LibOs {
                libos: "sgx-occlum",
            })
        }
        PlatformKind::SgxGramine => {
            return Err(UnrealCredentials::LibOs {
                libos: "sgx-gramine",
            })
        }
        // TDX and SNP guests run their own kernel, whose answer the probe checks.
        _ => {}
    }
    let reported = probe.map_err(UnrealCredentials::Unreadable)?;
    if reported.uid != own_uid || reported.pid != Some(own_pid) {
        return Err(UnrealCredentials::Probe {
            reported,
            expected_uid: own_uid,
            expected_pid: own_pid,
        });
    }
    Ok(())
}

/// What `SO_PEERCRED` reports for a connection this process makes to itself (a socket pair).
/// Must be called inside a tokio runtime.
pub fn probe_own_credentials() -> Result<Peer, String> {
    let (a, _b) = tokio::net::UnixStream::pair().map_err(|e| e.to_string())?;
    let cred = a.peer_cred().map_err(|e| e.to_string())?;
    Ok(Peer {
        uid: cred.uid(),
        gid: cred.gid(),
        pid: cred.pid(),
    })
}

/// [`credentials_are_real`] for this process on `platform`.
pub fn check_this_process(
    platform: coffer_platform::PlatformKind,
) -> Result<(), UnrealCredentials> {
    credentials_are_real(
        platform,
        probe_own_credentials(),
        rustix_uid(),
        std::process::id() as i32,
    )
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

    /// For a connection whose caller is checked elsewhere: `--listen-tcp` inside an enclave, whose
    /// only client is the host-side bridge, which checks kube-apiserver's credentials on its own
    /// unix socket (inside the enclave, nothing could check them).
    pub(crate) fn checked_by_bridge() -> Self {
        Verdict {
            peer: Peer {
                uid: u32::MAX,
                gid: u32::MAX,
                pid: None,
            },
            refusal: None,
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
    fn occlum_style_zeroed_credentials_are_not_real() {
        use coffer_platform::PlatformKind;
        let own_pid = std::process::id() as i32;
        // Occlum v0.31: success, nothing written, so a zeroed ucred.
        let zeroed = Peer {
            uid: 0,
            gid: 0,
            pid: Some(0),
        };
        let e = credentials_are_real(PlatformKind::Sim, Ok(zeroed), 1000, own_pid).unwrap_err();
        assert!(matches!(e, UnrealCredentials::Probe { .. }), "{e}");
        assert!(e.to_string().contains("not real"), "{e}");
        // Even root, whose uid is 0, is told apart by the pid.
        assert!(credentials_are_real(PlatformKind::Sim, Ok(zeroed), 0, own_pid).is_err());
        // The LibOS platforms are refused whatever the probe says.
        let honest = Peer {
            uid: 1000,
            gid: 1000,
            pid: Some(own_pid),
        };
        for kind in [PlatformKind::SgxOcclum, PlatformKind::SgxGramine] {
            let e = credentials_are_real(kind, Ok(honest), 1000, own_pid).unwrap_err();
            assert!(matches!(e, UnrealCredentials::LibOs { .. }), "{e}");
        }
        assert!(credentials_are_real(PlatformKind::Sim, Ok(honest), 1000, own_pid).is_ok());
        assert!(
            credentials_are_real(PlatformKind::Snp, Err("EOPNOTSUPP".into()), 1000, own_pid)
                .is_err()
        );
    }

    #[tokio::test]
    async fn this_kernel_reports_real_credentials() {
        check_this_process(coffer_platform::PlatformKind::Sim).unwrap();
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
