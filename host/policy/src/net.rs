//! Network allow rules and the two decisions made on every request: may this
//! URL be requested at all ([`NetPolicy::check_url`]), and may the request go
//! to the address its host resolved to ([`NetPolicy::check_addr`]).
//!
//! Rules are written `scheme://host[:port]`: `https://api.github.com`,
//! `http://127.0.0.1:8080`, `https://*.example.com` (subdomains only),
//! `http://10.0.0.5:*` (any port), or a lone `*` (any http/https URL to a
//! public address). Hosts are compared after WHATWG URL normalisation, so IP
//! literals written in decimal, hex, octal or as IPv4-mapped IPv6 are the same
//! address as their dotted form and cannot dodge the list. A name that
//! resolves to a loopback, private, link-local or otherwise non-public address
//! (cloud metadata endpoints included) is refused unless a rule lists that IP
//! literal itself.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use url::{Host, Url};

/// The scheme part of a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SchemeRule {
    Http,
    Https,
    /// `*`: http or https.
    Any,
}

/// The host part of a rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostRule {
    /// `*`
    Any,
    /// `*.example.com`: any name ending in `.example.com`.
    Suffix(String),
    /// An exact (lower-case, IDNA-normalised) domain name.
    Name(String),
    /// An IP literal (IPv4-mapped IPv6 stored as IPv4).
    Ip(IpAddr),
}

/// The port part of a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortRule {
    /// No port written: the scheme's default (80 or 443).
    Default,
    Exact(u16),
    /// `:*`
    Any,
}

/// One `[net] allow` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetRule {
    /// The rule as written.
    pub text: String,
    pub scheme: SchemeRule,
    pub host: HostRule,
    pub port: PortRule,
}

/// The `[net]` section: a list of allow rules. Empty means no network.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetPolicy {
    pub rules: Vec<NetRule>,
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetDenial {
    /// The plugin has no network grant at all.
    NoNetwork,
    /// Not http or https.
    Scheme(String),
    /// The URL could not be understood.
    BadUrl(String),
    /// No rule lists this scheme, host and port.
    NotListed { target: String },
    /// The host resolved to a non-public address no rule lists.
    Address {
        target: String,
        ip: IpAddr,
        class: &'static str,
    },
}

impl fmt::Display for NetDenial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NetDenial::NoNetwork => f.write_str("the policy grants no network access"),
            NetDenial::Scheme(s) => write!(f, "scheme `{s}` is not allowed (http, https only)"),
            NetDenial::BadUrl(u) => write!(f, "cannot parse the request URL `{u}`"),
            NetDenial::NotListed { target } => {
                write!(f, "{target} is not in the policy's [net] allow list")
            }
            NetDenial::Address { target, ip, class } => write!(
                f,
                "{target} resolves to {class} address {ip}; list that IP literal in [net] \
                 allow to permit it"
            ),
        }
    }
}

impl std::error::Error for NetDenial {}

fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" => Some(80),
        "https" => Some(443),
        _ => None,
    }
}

/// Parses a host the way URLs do, folding IPv4-mapped IPv6 into IPv4.
fn parse_host(text: &str) -> Result<HostRule, String> {
    let host = Host::parse(text).map_err(|e| format!("invalid host `{text}`: {e}"))?;
    Ok(match host {
        Host::Domain(d) => HostRule::Name(d.trim_end_matches('.').to_owned()),
        Host::Ipv4(ip) => HostRule::Ip(IpAddr::V4(ip)),
        Host::Ipv6(ip) => HostRule::Ip(IpAddr::V6(ip).to_canonical()),
    })
}

impl NetRule {
    /// Parses one allow entry.
    pub fn parse(text: &str) -> Result<Self, String> {
        let trimmed = text.trim();
        if trimmed == "*" {
            return Ok(Self {
                text: text.to_owned(),
                scheme: SchemeRule::Any,
                host: HostRule::Any,
                port: PortRule::Any,
            });
        }
        let (scheme, rest) = trimmed.split_once("://").ok_or_else(|| {
            format!("`{text}` has no scheme: write it as https://host or http://host:port")
        })?;
        let scheme = match scheme.to_ascii_lowercase().as_str() {
            "http" => SchemeRule::Http,
            "https" => SchemeRule::Https,
            "*" => SchemeRule::Any,
            other => {
                return Err(format!(
                    "scheme `{other}` is not supported (http, https or *)"
                ));
            }
        };
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.contains(['/', '?', '#']) {
            return Err(format!(
                "`{text}`: rules name a scheme, host and port only, not a path"
            ));
        }
        if authority.contains('@') {
            return Err(format!("`{text}`: credentials are not allowed in a rule"));
        }
        // Split the port off, minding bracketed IPv6 literals.
        let (host, port) = if let Some(end) = authority
            .strip_prefix('[')
            .and_then(|_| authority.find(']'))
        {
            let (h, p) = authority.split_at(end + 1);
            (h, p.strip_prefix(':'))
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        let port = match port {
            None => PortRule::Default,
            Some("*") => PortRule::Any,
            Some(p) => match p.parse::<u16>() {
                Ok(n) if n > 0 => PortRule::Exact(n),
                _ => {
                    return Err(format!(
                        "`{text}`: port `{p}` is not a number from 1 to 65535"
                    ));
                }
            },
        };
        if port == PortRule::Default && scheme == SchemeRule::Any {
            return Err(format!(
                "`{text}`: with scheme * give a port (`:*` for any)"
            ));
        }
        let host = if host == "*" {
            HostRule::Any
        } else if let Some(suffix) = host.strip_prefix("*.") {
            match parse_host(suffix)? {
                HostRule::Name(n) => HostRule::Suffix(n),
                _ => {
                    return Err(format!(
                        "`{text}`: a wildcard must be followed by a domain name"
                    ));
                }
            }
        } else if host.contains('*') {
            return Err(format!(
                "`{text}`: `*` may only be the whole host or a leading `*.`"
            ));
        } else if host.is_empty() {
            return Err(format!("`{text}` has no host"));
        } else {
            parse_host(host)?
        };
        Ok(Self {
            text: text.to_owned(),
            scheme,
            host,
            port,
        })
    }

    fn matches_scheme_port(&self, scheme: &str, port: u16) -> bool {
        let scheme_ok = match self.scheme {
            SchemeRule::Http => scheme == "http",
            SchemeRule::Https => scheme == "https",
            SchemeRule::Any => scheme == "http" || scheme == "https",
        };
        let port_ok = match self.port {
            PortRule::Any => true,
            PortRule::Exact(p) => p == port,
            PortRule::Default => default_port(scheme) == Some(port),
        };
        scheme_ok && port_ok
    }

    fn matches_host(&self, host: &HostRule) -> bool {
        match (&self.host, host) {
            (HostRule::Any, _) => true,
            (HostRule::Suffix(s), HostRule::Name(n)) => {
                n.len() > s.len() + 1
                    && n.ends_with(s.as_str())
                    && n[..n.len() - s.len()].ends_with('.')
            }
            (HostRule::Name(a), HostRule::Name(b)) => a == b,
            (HostRule::Ip(a), HostRule::Ip(b)) => a == b,
            _ => false,
        }
    }

    /// True if this rule names exactly the IP literal `ip`.
    pub fn lists_ip(&self, ip: IpAddr) -> bool {
        self.host == HostRule::Ip(ip.to_canonical())
    }
}

/// The parts of a request URL that rules are matched against.
struct Target {
    scheme: String,
    host: HostRule,
    port: u16,
    shown: String,
}

fn target(url: &Url) -> Result<Target, NetDenial> {
    let scheme = url.scheme().to_owned();
    let Some(default) = default_port(&scheme) else {
        return Err(NetDenial::Scheme(scheme));
    };
    let host = match url.host() {
        Some(Host::Domain(d)) => {
            HostRule::Name(d.to_ascii_lowercase().trim_end_matches('.').to_owned())
        }
        Some(Host::Ipv4(ip)) => HostRule::Ip(IpAddr::V4(ip)),
        Some(Host::Ipv6(ip)) => HostRule::Ip(IpAddr::V6(ip).to_canonical()),
        None => return Err(NetDenial::BadUrl(url.to_string())),
    };
    let port = url.port().unwrap_or(default);
    let shown = match &host {
        HostRule::Ip(IpAddr::V6(ip)) => format!("{scheme}://[{ip}]:{port}"),
        HostRule::Ip(ip) => format!("{scheme}://{ip}:{port}"),
        HostRule::Name(n) => format!("{scheme}://{n}:{port}"),
        _ => unreachable!("targets are names or addresses"),
    };
    Ok(Target {
        scheme,
        host,
        port,
        shown,
    })
}

impl NetPolicy {
    /// Parses a list of rules; errors carry the index of the bad entry.
    pub fn parse<S: AsRef<str>>(rules: &[S]) -> Result<Self, (usize, String)> {
        let rules = rules
            .iter()
            .enumerate()
            .map(|(i, r)| NetRule::parse(r.as_ref()).map_err(|e| (i, e)))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { rules })
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// May `url` be requested? Returns the rule that allows it.
    pub fn check_url(&self, url: &Url) -> Result<&NetRule, NetDenial> {
        if self.rules.is_empty() {
            return Err(NetDenial::NoNetwork);
        }
        let t = target(url)?;
        self.rules
            .iter()
            .find(|r| r.matches_scheme_port(&t.scheme, t.port) && r.matches_host(&t.host))
            .ok_or(NetDenial::NotListed { target: t.shown })
    }

    /// May a request for `url` (already allowed by [`Self::check_url`]) be
    /// sent to `ip`? Public addresses are fine; any other address must be
    /// listed as an IP literal by a rule matching the scheme and port.
    pub fn check_addr(&self, url: &Url, ip: IpAddr) -> Result<(), NetDenial> {
        let ip = ip.to_canonical();
        let Some(class) = non_public_class(ip) else {
            return Ok(());
        };
        let t = target(url)?;
        if self
            .rules
            .iter()
            .any(|r| r.lists_ip(ip) && r.matches_scheme_port(&t.scheme, t.port))
        {
            return Ok(());
        }
        Err(NetDenial::Address {
            target: t.shown,
            ip,
            class,
        })
    }
}

/// `Some(class)` for every address that is not plainly public: loopback,
/// private, link-local (cloud metadata lives there), carrier-grade NAT,
/// unspecified, documentation, benchmarking, multicast, reserved, and IPv6
/// forms embedding such IPv4 addresses (NAT64, 6to4, Teredo).
pub fn non_public_class(ip: IpAddr) -> Option<&'static str> {
    match ip.to_canonical() {
        IpAddr::V4(v4) => v4_class(v4),
        IpAddr::V6(v6) => v6_class(v6),
    }
}

fn v4_class(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    Some(match (a, b, c) {
        _ if ip.is_loopback() => "a loopback",
        _ if ip.is_unspecified() || a == 0 => "an unspecified",
        _ if ip.is_private() => "a private",
        _ if ip.is_link_local() => "a link-local (cloud metadata)",
        (100, b, _) if (64..128).contains(&b) => "a carrier-grade NAT",
        (192, 0, 0) => "an IETF protocol",
        (192, 0, 2) | (198, 51, 100) | (203, 0, 113) => "a documentation",
        (198, 18..=19, _) => "a benchmarking",
        _ if ip.is_multicast() => "a multicast",
        _ if ip.is_broadcast() || a >= 240 => "a reserved",
        _ => return None,
    })
}

fn v6_class(ip: Ipv6Addr) -> Option<&'static str> {
    let seg = ip.segments();
    if ip.is_loopback() {
        return Some("a loopback");
    }
    if ip.is_unspecified() {
        return Some("an unspecified");
    }
    if ip.is_multicast() {
        return Some("a multicast");
    }
    if seg[0] & 0xfe00 == 0xfc00 {
        return Some("a unique-local (private)");
    }
    if seg[0] & 0xffc0 == 0xfe80 {
        return Some("a link-local");
    }
    if seg[0] & 0xffc0 == 0xfec0 {
        return Some("a site-local (private)");
    }
    if seg[0] == 0x2001 && seg[1] == 0x0db8 {
        return Some("a documentation");
    }
    if seg[0] == 0x0100 && seg[1..4] == [0, 0, 0] {
        return Some("a discard-only");
    }
    if seg[0] == 0x2001 && seg[1] == 0x0002 && seg[2] == 0 {
        return Some("a benchmarking");
    }
    let last_v4 =
        |hi: u16, lo: u16| Ipv4Addr::new((hi >> 8) as u8, hi as u8, (lo >> 8) as u8, lo as u8);
    // NAT64 (64:ff9b::/96, and the local-use 64:ff9b:1::/48), 6to4
    // (2002::/16) and Teredo (2001::/32, the client's address inverted in
    // the last 32 bits) embed an IPv4 address.
    let nat64 = seg[0] == 0x64 && seg[1] == 0xff9b && (seg[2..6] == [0, 0, 0, 0] || seg[2] == 1);
    let embedded = if nat64 {
        Some(last_v4(seg[6], seg[7]))
    } else if seg[0] == 0x2001 && seg[1] == 0 {
        Some(last_v4(!seg[6], !seg[7]))
    } else if seg[0] == 0x2002 {
        Some(Ipv4Addr::new(
            (seg[1] >> 8) as u8,
            seg[1] as u8,
            (seg[2] >> 8) as u8,
            seg[2] as u8,
        ))
    } else {
        None
    };
    if let Some(v4) = embedded {
        return v4_class(v4).map(|_| "an IPv6-embedded non-public IPv4");
    }
    // IPv4-compatible (deprecated ::a.b.c.d) addresses.
    if seg[..6] == [0; 6] {
        return Some("a reserved");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(rules: &[&str]) -> NetPolicy {
        NetPolicy::parse(rules).unwrap()
    }

    fn url(u: &str) -> Url {
        Url::parse(u).unwrap()
    }

    #[test]
    fn exact_host_rule_uses_the_scheme_default_port() {
        let p = policy(&["https://api.github.com"]);
        assert!(p.check_url(&url("https://api.github.com/repos")).is_ok());
        assert!(p.check_url(&url("https://API.GitHub.com./x")).is_ok());
        assert!(p.check_url(&url("https://api.github.com:8443/")).is_err());
        assert!(p.check_url(&url("http://api.github.com/")).is_err());
        assert!(p.check_url(&url("https://github.com/")).is_err());
        assert!(
            p.check_url(&url("https://api.github.com.evil.net/"))
                .is_err()
        );
    }

    #[test]
    fn wildcard_matches_subdomains_only() {
        let p = policy(&["https://*.example.com"]);
        assert!(p.check_url(&url("https://a.example.com/")).is_ok());
        assert!(p.check_url(&url("https://a.b.example.com/")).is_ok());
        assert!(p.check_url(&url("https://example.com/")).is_err());
        assert!(p.check_url(&url("https://badexample.com/")).is_err());
    }

    #[test]
    fn ip_literal_spellings_are_one_address() {
        let p = policy(&["http://127.0.0.1:8080"]);
        for u in [
            "http://127.0.0.1:8080/",
            "http://2130706433:8080/",
            "http://0x7f000001:8080/",
            "http://0177.0.0.1:8080/",
            "http://127.1:8080/",
            "http://[::ffff:127.0.0.1]:8080/",
            "http://[::ffff:7f00:1]:8080/",
        ] {
            let rule = p.check_url(&url(u)).unwrap_or_else(|e| panic!("{u}: {e}"));
            assert_eq!(rule.text, "http://127.0.0.1:8080");
        }
        let other = policy(&["http://10.0.0.1:8080"]);
        for u in ["http://2130706433:8080/", "http://[::ffff:7f00:1]:8080/"] {
            assert!(other.check_url(&url(u)).is_err(), "{u}");
        }
    }

    #[test]
    fn names_resolving_to_private_addresses_need_the_literal() {
        let p = policy(&["http://localhost:8080", "http://metadata.internal"]);
        let u = url("http://localhost:8080/");
        assert!(p.check_url(&u).is_ok());
        let denial = p.check_addr(&u, "127.0.0.1".parse().unwrap()).unwrap_err();
        assert!(matches!(
            denial,
            NetDenial::Address {
                class: "a loopback",
                ..
            }
        ));
        let meta = url("http://metadata.internal/");
        assert!(
            p.check_addr(&meta, "169.254.169.254".parse().unwrap())
                .is_err()
        );
        assert!(p.check_addr(&u, "93.184.216.34".parse().unwrap()).is_ok());

        let listed = policy(&["http://localhost:8080", "http://127.0.0.1:8080"]);
        assert!(listed.check_addr(&u, "127.0.0.1".parse().unwrap()).is_ok());
        assert!(
            listed
                .check_addr(&u, "::ffff:127.0.0.1".parse().unwrap())
                .is_ok()
        );
    }

    #[test]
    fn star_allows_public_hosts_but_not_private_addresses() {
        let p = policy(&["*"]);
        let u = url("http://127.0.0.1:9/");
        assert!(p.check_url(&u).is_ok());
        assert!(p.check_addr(&u, "127.0.0.1".parse().unwrap()).is_err());
        assert!(p.check_url(&url("ftp://example.com/")).is_err());
    }

    #[test]
    fn non_public_addresses_are_classified() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.100.100.200",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fd00:ec2::254",
            "fe80::1",
            "64:ff9b::7f00:1",
            "2002:7f00:1::",
            "::ffff:10.0.0.1",
            "fec0::1",
            "64:ff9b:1::a00:1",
            "100::1",
            "2001:2::1",
            // Teredo, client 127.0.0.1 (inverted: 80ff:fffe).
            "2001:0:4136:e378:8000:63bf:80ff:fffe",
        ] {
            assert!(non_public_class(ip.parse().unwrap()).is_some(), "{ip}");
        }
        for ip in [
            "93.184.216.34",
            "2606:2800:220:1:248:1893:25c8:1946",
            "64:ff9b::808:808",
            // Teredo, client 8.8.8.8.
            "2001:0:4136:e378:8000:63bf:f7f7:f7f7",
        ] {
            assert!(non_public_class(ip.parse().unwrap()).is_none(), "{ip}");
        }
    }

    #[test]
    fn bad_rules_say_why() {
        for (rule, why) in [
            ("api.github.com", "no scheme"),
            ("ftp://x.org", "not supported"),
            ("https://x.org/path", "not a path"),
            ("https://x.org:0", "port"),
            ("https://x.org:99999", "port"),
            ("https://a*.org", "leading"),
            ("https://*.127.0.0.1", "domain name"),
            ("https://user@x.org", "credentials"),
            ("*://x.org", "give a port"),
        ] {
            let err = NetRule::parse(rule).unwrap_err();
            assert!(err.contains(why), "{rule}: {err}");
        }
        assert!(NetRule::parse("http://[::1]:8080").is_ok());
        assert!(NetRule::parse("http://10.0.0.5:*").is_ok());
        assert!(NetRule::parse("https://example.com/").is_ok());
    }

    #[test]
    fn empty_policy_has_no_network() {
        assert_eq!(
            NetPolicy::default().check_url(&url("https://example.com/")),
            Err(NetDenial::NoNetwork)
        );
    }
}
