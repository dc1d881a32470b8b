//! keyd's address: a host name or an IP address, and a port; and a set of them, for keyd
//! replicas.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use rustls::pki_types::ServerName;

/// keyd's address: a host name or IP address and a port. Names are resolved again on every
/// connection attempt, so a keyd behind a DNS name can move.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeydAddr {
    host: String,
    port: u16,
}

impl KeydAddr {
    /// The host name or IP address.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The TCP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    pub(crate) fn server_name(&self) -> ServerName<'static> {
        // Attested TLS identifies keyd by its evidence, not by name; the name only fills SNI.
        ServerName::try_from(self.host.clone())
            .unwrap_or_else(|_| ServerName::try_from("keyd").expect("a valid DNS name"))
    }
}

impl FromStr for KeydAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "{s:?} is not host:port (e.g. keyd.example:7443, 10.0.0.5:7443 or [fd00::5]:7443)"
            )
        };
        let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
        let host = match host.strip_prefix('[') {
            Some(inner) => inner.strip_suffix(']').ok_or_else(bad)?,
            // An IPv6 address needs brackets, or the port would be ambiguous.
            None if host.contains(':') => return Err(bad()),
            None => host,
        };
        if host.is_empty() || host.chars().any(|c| c.is_whitespace() || c == '/') {
            return Err(bad());
        }
        let port = port
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(bad)?;
        Ok(KeydAddr {
            host: host.to_string(),
            port,
        })
    }
}

impl fmt::Display for KeydAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl From<SocketAddr> for KeydAddr {
    fn from(addr: SocketAddr) -> Self {
        KeydAddr {
            host: addr.ip().to_string(),
            port: addr.port(),
        }
    }
}

/// How long a name lookup may take before the previous answer is kept.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(2);

/// The addresses of keyd's replicas: a comma-separated list of `HOST:PORT`, where a host name
/// may resolve to several addresses (a headless Service), each of them a replica. A single
/// address parses as before.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeydAddrs(Vec<KeydAddr>);

impl KeydAddrs {
    /// The addresses as given (names not resolved), without duplicates, in order.
    pub fn given(&self) -> &[KeydAddr] {
        &self.0
    }

    /// The first address given.
    pub fn first(&self) -> &KeydAddr {
        // Parsing and `From` never make an empty set.
        &self.0[0]
    }

    /// The replicas now: every IP address given, and every address each host name resolves to.
    /// A name that does not resolve (in time) stays a name, resolved again by each connection
    /// attempt, so a DNS outage never loses a replica. Without duplicates, in order.
    pub async fn resolve(&self) -> Vec<KeydAddr> {
        let mut out: Vec<KeydAddr> = Vec::new();
        for addr in &self.0 {
            let found = if addr.host.parse::<std::net::IpAddr>().is_ok() {
                vec![addr.clone()]
            } else {
                let lookup = tokio::net::lookup_host((addr.host.as_str(), addr.port));
                match tokio::time::timeout(RESOLVE_TIMEOUT, lookup).await {
                    Ok(Ok(found)) => found.map(KeydAddr::from).collect(),
                    Ok(Err(e)) => {
                        tracing::debug!(keyd = %addr, error = %e, "cannot resolve keyd's name; keeping it as a name");
                        Vec::new()
                    }
                    Err(_) => Vec::new(),
                }
            };
            let found = if found.is_empty() {
                vec![addr.clone()]
            } else {
                found
            };
            for a in found {
                if !out.contains(&a) {
                    out.push(a);
                }
            }
        }
        out
    }
}

impl FromStr for KeydAddrs {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let mut addrs: Vec<KeydAddr> = Vec::new();
        for part in s.split(',').map(str::trim) {
            if part.is_empty() {
                return Err(format!(
                    "{s:?} has an empty entry: give one or more comma-separated host:port \
                     (e.g. keyd-0.keyd:7443,keyd-1.keyd:7443)"
                ));
            }
            let addr = part.parse::<KeydAddr>()?;
            if !addrs.contains(&addr) {
                addrs.push(addr);
            }
        }
        Ok(KeydAddrs(addrs))
    }
}

impl fmt::Display for KeydAddrs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, addr) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{addr}")?;
        }
        Ok(())
    }
}

impl From<KeydAddr> for KeydAddrs {
    fn from(addr: KeydAddr) -> Self {
        KeydAddrs(vec![addr])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        let a: KeydAddr = "keyd.example:7443".parse().unwrap();
        assert_eq!((a.host(), a.port()), ("keyd.example", 7443));
        assert_eq!(a.to_string(), "keyd.example:7443");
        let v6: KeydAddr = "[fd00::5]:7443".parse().unwrap();
        assert_eq!(v6.host(), "fd00::5");
        assert_eq!(v6.to_string(), "[fd00::5]:7443");
        let from_socket: KeydAddr = "[fd00::5]:7443".parse::<SocketAddr>().unwrap().into();
        assert_eq!(from_socket, v6);
        let from_socket: KeydAddr = "10.0.0.5:7443".parse::<SocketAddr>().unwrap().into();
        assert_eq!(from_socket.to_string(), "10.0.0.5:7443");
        for bad in [
            "keyd",
            "keyd:",
            ":7443",
            "keyd:0",
            "keyd:99999",
            "fd00::5:7443",
            "[fd00::5:7443",
            "a b:1",
            "http://x:1",
        ] {
            let err = bad.parse::<KeydAddr>().unwrap_err();
            assert!(err.contains("host:port"), "{bad}: {err}");
        }
    }

    #[test]
    fn address_lists() {
        let one: KeydAddrs = "keyd.example:7443".parse().unwrap();
        assert_eq!(
            one.given(),
            &["keyd.example:7443".parse::<KeydAddr>().unwrap()]
        );
        assert_eq!(one.to_string(), "keyd.example:7443");
        let list: KeydAddrs = "10.0.0.5:7443, [fd00::5]:7443,keyd:1,10.0.0.5:7443"
            .parse()
            .unwrap();
        assert_eq!(list.to_string(), "10.0.0.5:7443,[fd00::5]:7443,keyd:1");
        assert_eq!(list.first().to_string(), "10.0.0.5:7443");
        for bad in ["", "a:1,", ",a:1", "a:1,,b:2"] {
            let err = bad.parse::<KeydAddrs>().unwrap_err();
            assert!(err.contains("empty entry"), "{bad}: {err}");
        }
        let err = "a:1,b".parse::<KeydAddrs>().unwrap_err();
        assert!(err.contains("\"b\" is not host:port"), "{err}");
    }

    #[tokio::test]
    async fn names_resolve_to_replicas_and_unresolvable_names_stay() {
        let addrs: KeydAddrs = "127.0.0.1:7443,localhost:7443,keyd.invalid:7443"
            .parse()
            .unwrap();
        let resolved = addrs.resolve().await;
        let text: Vec<String> = resolved.iter().map(|a| a.to_string()).collect();
        // localhost's 127.0.0.1 is the same replica as the first entry.
        assert_eq!(
            text.iter().filter(|t| *t == "127.0.0.1:7443").count(),
            1,
            "{text:?}"
        );
        assert!(!text.iter().any(|t| t == "localhost:7443"), "{text:?}");
        assert_eq!(text.last().map(String::as_str), Some("keyd.invalid:7443"));
    }
}
