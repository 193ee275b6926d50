//! The platform's own listeners, which the edge router never routes to.
//!
//! Discovery comes from events any instance could forge (`instance.started` with the address
//! `127.0.0.1:8082`); routing such an "instance" would publish the registry's API on the
//! gateway's public port. So every instance whose address is one of the platform's is dropped
//! from the table: the gateway's own listener and its upstreams (added by the gateway), plus
//! any `edge.platform_addresses` an operator lists.
//!
//! Addresses are compared as the connection would go, not as text: a platform listener on a
//! loopback or unspecified host (`127.0.0.1`, `0.0.0.0`, `localhost`) is reached by every
//! local host name at that port (`0.0.0.0:8082` connects to loopback on Linux), and a named
//! host (`registry:8080` in compose) by the addresses it resolves to. This is a second wall:
//! the internal APIs also refuse any request without a service credential, which proxied
//! requests never carry.

use std::net::IpAddr;

/// One platform listener.
#[derive(Debug, Clone)]
struct Listener {
    host: Host,
    port: u16,
}

#[derive(Debug, Clone, PartialEq)]
enum Host {
    /// Loopback, unspecified or `localhost`: any local name at the port reaches it.
    Local,
    Ip(IpAddr),
    /// A DNS name, lower case, without a trailing dot.
    Name(String),
}

impl Host {
    fn parse(text: &str) -> Option<Self> {
        let text = text
            .strip_prefix('[')
            .and_then(|t| t.strip_suffix(']'))
            .unwrap_or(text)
            .trim_end_matches('.')
            .to_ascii_lowercase();
        Some(match text.parse::<IpAddr>() {
            Ok(ip) if is_local(ip) => Host::Local,
            Ok(ip) => Host::Ip(ip),
            Err(_) if text.is_empty() => return None,
            Err(_)
                if !text
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')) =>
            {
                return None;
            }
            Err(_) if text == "localhost" || text.ends_with(".localhost") => Host::Local,
            Err(_) => Host::Name(text),
        })
    }
}

fn is_local(ip: IpAddr) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    };
    ip.is_loopback() || ip.is_unspecified()
}

/// `host:port` (brackets around IPv6) split, or `None` when it is not that shape.
fn split(address: &str) -> Option<(Host, u16)> {
    let (host, port) = address.rsplit_once(':')?;
    let port = port.parse::<u16>().ok()?;
    Some((Host::parse(host)?, port))
}

/// The platform's listeners, with the addresses their names resolved to.
#[derive(Debug, Clone, Default)]
pub struct PlatformAddresses {
    listeners: Vec<Listener>,
    /// (resolved address, port) of the named listeners; refreshed by [`Self::resolve`].
    resolved: Vec<(IpAddr, u16)>,
}

impl PlatformAddresses {
    /// From `host:port` texts; the first one that is not that shape is the error.
    pub fn parse<'a>(addresses: impl IntoIterator<Item = &'a str>) -> Result<Self, String> {
        let mut listeners = Vec::new();
        for address in addresses {
            let (host, port) = split(address).ok_or_else(|| {
                format!("`{address}` in edge.platform_addresses is not host:port")
            })?;
            listeners.push(Listener { host, port });
        }
        Ok(Self {
            listeners,
            resolved: Vec::new(),
        })
    }

    /// Looks the named listeners up (best effort: a name that does not resolve keeps only its
    /// textual match), so that an instance address naming their IP is refused too.
    pub async fn resolve(&mut self) {
        let mut resolved = Vec::new();
        for listener in &self.listeners {
            if let Host::Name(name) = &listener.host {
                match tokio::net::lookup_host((name.as_str(), listener.port)).await {
                    Ok(addresses) => resolved.extend(addresses.map(|a| (a.ip(), listener.port))),
                    Err(e) => {
                        tracing::debug!(host = %name, error = %e, "platform host did not resolve")
                    }
                }
            }
        }
        self.resolved = resolved;
    }

    /// Whether a connection to `address` (`host:port`) could reach a platform listener.
    /// Anything that is not `host:port` counts as one: it must not be routed either.
    pub fn contains(&self, address: &str) -> bool {
        let Some((host, port)) = split(address) else {
            return true;
        };
        self.listeners.iter().any(|l| {
            l.port == port
                && match (&l.host, &host) {
                    (Host::Local, Host::Local) => true,
                    (a, b) => a == b,
                }
        }) || matches!(host, Host::Ip(ip) if self.resolved.contains(&(ip, port)))
    }

    pub fn is_empty(&self) -> bool {
        self.listeners.is_empty()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn platform(addresses: &[&str]) -> PlatformAddresses {
        PlatformAddresses::parse(addresses.iter().copied()).unwrap()
    }

    #[test]
    fn a_loopback_listener_is_reached_by_every_local_name_at_its_port() {
        let p = platform(&["127.0.0.1:8082", "0.0.0.0:8080"]);
        for address in [
            "127.0.0.1:8082",
            "localhost:8082",
            "LOCALHOST.:8082",
            "0.0.0.0:8082",
            "127.0.0.2:8082",
            "[::1]:8082",
            "[::ffff:127.0.0.1]:8082",
            "[::]:8080",
            "app.localhost:8080",
        ] {
            assert!(p.contains(address), "{address}");
        }
        for address in ["127.0.0.1:41234", "10.0.0.5:8082", "deployer:8082"] {
            assert!(!p.contains(address), "{address}");
        }
    }

    #[test]
    fn a_named_listener_matches_its_name_and_resolved_addresses() {
        let mut p = platform(&["Registry:8080"]);
        assert!(p.contains("registry:8080"));
        assert!(p.contains("registry.:8080"));
        assert!(!p.contains("registry:8081"));
        p.resolved = vec![("172.18.0.3".parse().unwrap(), 8080)];
        assert!(p.contains("172.18.0.3:8080"));
        assert!(!p.contains("172.18.0.4:8080"));
    }

    #[test]
    fn what_is_not_host_port_is_refused_and_reported() {
        let p = platform(&[]);
        assert!(p.is_empty());
        assert!(p.contains("no-port"));
        assert!(!p.contains("127.0.0.1:41234"));
        for bad in [
            "http://registry:8080/",
            "http://registry:8080",
            ":8080",
            "registry",
        ] {
            let err = PlatformAddresses::parse([bad]).unwrap_err();
            assert!(err.contains("not host:port"), "{err}");
        }
    }
}
