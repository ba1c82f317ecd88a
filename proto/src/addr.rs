//! A node's HTTP address as it travels in `RegisterNode` and is stored by the
//! master: exactly `host:port`.
//!
//! The master pastes this into `http://{addr}/v1/objects/{id}`, so anything
//! beyond a host and a port would change the request it makes: `?` or `#`
//! would turn the path into a query or fragment, `@` would make the host
//! userinfo, `/` would prefix the path. The check is therefore a whitelist,
//! not a list of bad characters.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::ProtoError;

/// Longest DNS name accepted (RFC 1035: 253 characters in text form).
const MAX_DNS_NAME: usize = 253;
/// Longest DNS label (RFC 1035).
const MAX_LABEL: usize = 63;

/// The host part of an [`HttpAddr`].
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub enum Host {
    V4(Ipv4Addr),
    V6(Ipv6Addr),
    /// Lowercased: DNS names are case-insensitive, and one spelling per
    /// host lets the master recognise two nodes claiming the same address.
    Dns(String),
}

/// `host:port`, where host is an IPv4 address, a bracketed IPv6 address or
/// a DNS name, and port is 1..=65535. Printed in one canonical form.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct HttpAddr {
    host: Host,
    port: u16,
}

impl HttpAddr {
    pub fn host(&self) -> &Host {
        &self.host
    }

    pub fn port(&self) -> u16 {
        self.port
    }
}

fn invalid(addr: &str, reason: &'static str) -> ProtoError {
    ProtoError::HttpAddr {
        addr: addr.chars().take(160).collect(),
        reason,
    }
}

/// A port in canonical decimal: digits only, no sign, no leading zero.
fn parse_port(s: &str) -> Option<u16> {
    if s.is_empty() || s.len() > 5 || s.starts_with('0') || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// RFC 1123 host name: dot-separated labels of letters, digits and `-`, no
/// label empty, longer than 63 or starting/ending with `-`. The last label
/// must not be all digits, so that `127.1` or `999.0.0.1` (which resolvers
/// may read as numeric addresses) are never taken for names.
fn valid_dns(s: &str) -> bool {
    if s.is_empty() || s.len() > MAX_DNS_NAME {
        return false;
    }
    let labels_ok = s.split('.').all(|label| {
        (1..=MAX_LABEL).contains(&label.len())
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    });
    let last_numeric = s
        .rsplit('.')
        .next()
        .is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit()));
    labels_ok && !last_numeric
}

impl FromStr for HttpAddr {
    type Err = ProtoError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(rest) = s.strip_prefix('[') {
            let (ip, port) = rest
                .split_once("]:")
                .ok_or_else(|| invalid(s, "expected [IPv6]:port"))?;
            let ip: Ipv6Addr = ip
                .parse()
                .map_err(|_| invalid(s, "not an IPv6 address inside the brackets"))?;
            let port = parse_port(port).ok_or_else(|| invalid(s, "port must be 1-65535"))?;
            return Ok(Self {
                host: Host::V6(ip),
                port,
            });
        }
        let (host, port) = s
            .rsplit_once(':')
            .ok_or_else(|| invalid(s, "expected host:port"))?;
        let port = parse_port(port).ok_or_else(|| invalid(s, "port must be 1-65535"))?;
        if host.contains(':') {
            return Err(invalid(s, "an IPv6 address must be in brackets"));
        }
        // Anything made of digits and dots is an IPv4 address or nothing.
        if host.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
            let ip: Ipv4Addr = host
                .parse()
                .map_err(|_| invalid(s, "not a valid IPv4 address"))?;
            return Ok(Self {
                host: Host::V4(ip),
                port,
            });
        }
        if !valid_dns(host) {
            return Err(invalid(
                s,
                "host must be an IPv4 address, [IPv6] or a DNS name of letters, digits, '-' and '.'",
            ));
        }
        Ok(Self {
            host: Host::Dns(host.to_ascii_lowercase()),
            port,
        })
    }
}

impl fmt::Display for HttpAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            Host::V4(ip) => write!(f, "{ip}:{}", self.port),
            Host::V6(ip) => write!(f, "[{ip}]:{}", self.port),
            Host::Dns(name) => write!(f, "{name}:{}", self.port),
        }
    }
}

impl Serialize for HttpAddr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for HttpAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_hosts_and_prints_them_canonically() {
        for (given, printed) in [
            ("127.0.0.1:7460", "127.0.0.1:7460"),
            ("[::1]:7200", "[::1]:7200"),
            ("[2001:DB8:0:0::1]:80", "[2001:db8::1]:80"),
            ("localhost:1", "localhost:1"),
            ("Host-1.Example.COM:65535", "host-1.example.com:65535"),
            ("a1.internal:7200", "a1.internal:7200"),
            ("10gen.example:8080", "10gen.example:8080"),
        ] {
            let a: HttpAddr = given.parse().unwrap_or_else(|e| panic!("{given}: {e}"));
            assert_eq!(a.to_string(), printed);
            assert_eq!(printed.parse::<HttpAddr>().as_ref(), Ok(&a));
        }
    }

    #[test]
    fn refuses_anything_beyond_host_and_port() {
        let long_label = format!("{}.example:80", "a".repeat(64));
        let long_name = format!("{}a:80", "a.".repeat(127));
        for bad in [
            "",
            "127.0.0.1",
            "127.0.0.1:",
            "127.0.0.1:7460?",
            "127.0.0.1:7460#x",
            "127.0.0.1:7460/",
            "127.0.0.1:7460/x",
            "user@127.0.0.1:7460",
            "user:pw@host:80",
            "http://127.0.0.1:7460",
            "127.0.0.1:0",
            "127.0.0.1:65536",
            "127.0.0.1:+80",
            "127.0.0.1:080",
            "127.0.0.1: 80",
            " 127.0.0.1:80",
            "host name:80",
            "host_name:80",
            "-host:80",
            "host-:80",
            "a..b:80",
            ".host:80",
            "host.:80",
            "127.1:80",
            "999.0.0.1:80",
            "01.2.3.4:80",
            "::1:80",
            "[::1]",
            "[::1]80",
            "[fe80::1%eth0]:80",
            "[127.0.0.1]:80",
            "hôte:80",
            "host:80\n",
            &long_label,
            &long_name,
        ] {
            assert!(bad.parse::<HttpAddr>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn round_trips_through_json() {
        let a: HttpAddr = "[::1]:7200".parse().unwrap();
        let json = serde_json::to_string(&a).unwrap();
        assert_eq!(json, "\"[::1]:7200\"");
        assert_eq!(serde_json::from_str::<HttpAddr>(&json).unwrap(), a);
        assert!(serde_json::from_str::<HttpAddr>("\"a:80?\"").is_err());
    }
}
