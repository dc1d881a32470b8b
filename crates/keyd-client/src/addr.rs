//! keyd's address: a host name or an IP address, and a port.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

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
}
