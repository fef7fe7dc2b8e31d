//! The egress guard: one place that decides which addresses custody may connect to.
//!
//! Every outbound URL (WebDAV sinks, import destinations, DSAR verification webhooks,
//! OAuth and CRM provider URLs from config) goes out through the client of
//! [`crate::kernel::http`], which carries this guard twice:
//!
//! - a DNS resolver ([`GuardedResolver`]) that drops forbidden addresses from every
//!   answer and fails when none remain, so a name cannot resolve to the metadata
//!   service or a VPC address;
//! - a connector layer ([`PeerCheckLayer`]) that checks the peer address of every
//!   connection actually made, before a byte of the request is written. reqwest skips
//!   the resolver for IP-literal hosts, and a name can be rebound between the check
//!   of a URL and the connection; the peer check catches both.
//!
//! [`check_url`] is the early form of the same rule for URLs a caller hands in
//! (settings), so a bad URL is refused with a 4xx naming the field instead of
//! failing at delivery time.
//!
//! Loopback is allowed only by explicit configuration ([`EgressPolicy::from_env`],
//! [`ALLOW_LOOPBACK_VAR`]): the local stack and test harnesses talk to simulators on
//! 127.0.0.1. The template never sets it (a template test checks).

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper_util::client::legacy::connect::{Connection, HttpInfo};
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use url::Url;

/// `true` admits loopback peers (127.0.0.0/8, ::1): the local stack and tests only.
pub const ALLOW_LOOPBACK_VAR: &str = "CUSTODY_EGRESS_ALLOW_LOOPBACK";

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EgressError {
    #[error("not an absolute URL")]
    NotAbsolute,
    #[error("must not carry credentials")]
    Credentials,
    #[error("must not have a fragment")]
    Fragment,
    #[error("has no host")]
    NoHost,
    #[error("must use https")]
    Scheme,
    /// The host is, resolves to, or connected to an address custody must not reach
    /// (the address itself is not shown: it may describe internal network layout).
    #[error("must not point at an internal address")]
    Forbidden,
    /// A name resolved to nothing at all.
    #[error("host name did not resolve")]
    Unresolved,
}

impl EgressError {
    /// The rule that was broken, as fixed text (callers' errors carry it).
    pub fn reason(&self) -> &'static str {
        match self {
            EgressError::NotAbsolute => "not an absolute URL",
            EgressError::Credentials => "must not carry credentials",
            EgressError::Fragment => "must not have a fragment",
            EgressError::NoHost => "has no host",
            EgressError::Scheme => "must use https",
            EgressError::Forbidden => "must not point at an internal address",
            EgressError::Unresolved => "host name did not resolve",
        }
    }
}

/// Where this process may connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EgressPolicy {
    /// Admit loopback peers and plain `http` to them.
    pub allow_loopback: bool,
}

impl EgressPolicy {
    /// Production: public addresses only.
    pub const STRICT: Self = Self {
        allow_loopback: false,
    };
    /// The local stack and test harnesses: public addresses and loopback.
    pub const LOCAL: Self = Self {
        allow_loopback: true,
    };

    /// Reads [`ALLOW_LOOPBACK_VAR`]; only the exact value `true` relaxes the policy.
    pub fn from_env() -> Self {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Self {
        Self {
            allow_loopback: lookup(ALLOW_LOOPBACK_VAR).is_some_and(|v| v.trim() == "true"),
        }
    }

    /// Whether a connection to `ip` is allowed.
    pub fn permits(&self, ip: IpAddr) -> bool {
        if self.allow_loopback && is_plain_loopback(ip) {
            return true;
        }
        !is_forbidden(ip)
    }
}

/// 127.0.0.0/8 or ::1, and nothing that merely embeds them (::ffff:127.0.0.1 stays
/// forbidden: it is a way around filters, not a configuration anyone needs).
fn is_plain_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => v6 == Ipv6Addr::LOCALHOST,
    }
}

/// Addresses custody never connects to: anything not globally routable, and every
/// IPv6 form that embeds an IPv4 address (it could smuggle an internal one).
pub fn is_forbidden(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_forbidden_v4(v4),
        IpAddr::V6(v6) => is_forbidden_v6(v6),
    }
}

fn is_forbidden_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    a == 0 // 0.0.0.0/8 "this network"
        || a == 10 // private
        || a == 127 // loopback
        || (a == 100 && (b & 0xc0) == 64) // 100.64.0.0/10 CGNAT
        || (a == 169 && b == 254) // link local, cloud metadata (169.254.169.254)
        || (a == 172 && (b & 0xf0) == 16) // private
        || (a == 192 && b == 168) // private
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 192 && b == 0 && c == 2) // TEST-NET-1
        || (a == 192 && b == 88 && c == 99) // 6to4 relay anycast
        || (a == 198 && (b & 0xfe) == 18) // benchmarking
        || (a == 198 && b == 51 && c == 100) // TEST-NET-2
        || (a == 203 && b == 0 && c == 113) // TEST-NET-3
        || a >= 224 // multicast 224/4, reserved 240/4, broadcast
}

fn is_forbidden_v6(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    if s[..5] == [0; 5] && (s[5] == 0 || s[5] == 0xffff) {
        // ::/96 (unspecified, loopback, IPv4-compatible) and ::ffff:0:0/96 (mapped).
        return true;
    }
    (s[0] == 0x64 && s[1] == 0xff9b) // NAT64 64:ff9b::/96 and 64:ff9b:1::/48
        || (s[0] == 0x0100 && s[1..4] == [0; 3]) // discard 100::/64
        || (s[0] == 0x2001 && s[1] < 0x0200) // 2001::/23 IETF (Teredo among them)
        || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
        || s[0] == 0x2002 // 6to4, embeds an IPv4 address
        || (s[0] & 0xfe00) == 0xfc00 // fc00::/7 ULA (AWS metadata fd00:ec2::254)
        || (s[0] & 0xffc0) == 0xfe80 // link local
        || (s[0] & 0xffc0) == 0xfec0 // deprecated site local
        || s[0] >= 0xff00 // multicast
}

/// Checks a URL a caller hands in (before it is stored): absolute, a host, no
/// credentials or fragment, `https` (or `http` to loopback when the policy allows
/// it), and an IP-literal host must be permitted. Names are checked when they are
/// resolved, at connect time (a name's answer can change; checking it here would
/// only give false comfort).
pub fn check_url(raw: &str, policy: EgressPolicy) -> Result<Url, EgressError> {
    let url = Url::parse(raw).map_err(|_| EgressError::NotAbsolute)?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err(EgressError::Credentials);
    }
    if url.fragment().is_some() {
        return Err(EgressError::Fragment);
    }
    let ip = match url.host().ok_or(EgressError::NoHost)? {
        url::Host::Ipv4(v4) => Some(IpAddr::V4(v4)),
        url::Host::Ipv6(v6) => Some(IpAddr::V6(v6)),
        url::Host::Domain(name) => {
            // `localhost` is loopback by definition; treat it like the literal.
            (name.eq_ignore_ascii_case("localhost") || name.ends_with(".localhost"))
                .then_some(IpAddr::V4(Ipv4Addr::LOCALHOST))
        }
    };
    let loopback = ip.is_some_and(is_plain_loopback);
    match url.scheme() {
        "https" => {}
        "http" if policy.allow_loopback && loopback => {}
        _ => return Err(EgressError::Scheme),
    }
    if ip.is_some_and(|ip| !policy.permits(ip)) {
        return Err(EgressError::Forbidden);
    }
    Ok(url)
}

/// The system resolver (getaddrinfo on a blocking thread, as reqwest's default).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemResolver;

impl Resolve for SystemResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let addrs: Addrs = Box::new(addrs.into_iter());
            Ok(addrs)
        })
    }
}

/// Wraps a resolver and removes every address the policy forbids; an answer with
/// none left is an error, so the request fails instead of connecting anywhere.
#[derive(Clone)]
pub struct GuardedResolver {
    inner: Arc<dyn Resolve>,
    policy: EgressPolicy,
}

impl GuardedResolver {
    pub fn new(inner: Arc<dyn Resolve>, policy: EgressPolicy) -> Self {
        Self { inner, policy }
    }
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.policy;
        let answer = self.inner.resolve(name);
        Box::pin(async move {
            let all: Vec<SocketAddr> = answer.await?.collect();
            if all.is_empty() {
                return Err(Box::new(EgressError::Unresolved) as BoxError);
            }
            let allowed: Vec<SocketAddr> =
                all.into_iter().filter(|a| policy.permits(a.ip())).collect();
            if allowed.is_empty() {
                return Err(Box::new(EgressError::Forbidden) as BoxError);
            }
            let addrs: Addrs = Box::new(allowed.into_iter());
            Ok(addrs)
        })
    }
}

/// A connector layer that refuses a connection whose peer address the policy
/// forbids, before the request is written on it.
#[derive(Debug, Clone, Copy)]
pub struct PeerCheckLayer {
    policy: EgressPolicy,
}

impl PeerCheckLayer {
    pub fn new(policy: EgressPolicy) -> Self {
        Self { policy }
    }
}

impl<S> tower_layer::Layer<S> for PeerCheckLayer {
    type Service = PeerCheck<S>;

    fn layer(&self, inner: S) -> Self::Service {
        PeerCheck {
            inner,
            policy: self.policy,
        }
    }
}

#[derive(Debug, Clone)]
pub struct PeerCheck<S> {
    inner: S,
    policy: EgressPolicy,
}

impl<S, Req> tower_service::Service<Req> for PeerCheck<S>
where
    S: tower_service::Service<Req, Error = BoxError>,
    S::Response: Connection,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let policy = self.policy;
        let connecting = self.inner.call(req);
        Box::pin(async move {
            let conn = connecting.await?;
            let mut extras = http::Extensions::new();
            conn.connected().get_extras(&mut extras);
            // No peer address means a transport this guard cannot judge: refuse.
            let peer = extras
                .get::<HttpInfo>()
                .map(|info| info.remote_addr().ip())
                .ok_or_else(|| Box::new(EgressError::Forbidden) as BoxError)?;
            if !policy.permits(peer) {
                return Err(Box::new(EgressError::Forbidden) as BoxError);
            }
            Ok(conn)
        })
    }
}

/// Whether a reqwest error was the egress guard refusing the connection: callers
/// that retry transport errors must not retry this one (it cannot get better).
pub fn is_refusal(err: &reqwest::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = source {
        if e.downcast_ref::<EgressError>()
            .is_some_and(|e| *e == EgressError::Forbidden)
        {
            return true;
        }
        source = e.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn forbids_every_internal_range() {
        for addr in [
            "0.0.0.0",
            "0.1.2.3",
            "10.0.0.1",
            "100.64.0.1",
            "100.127.255.254",
            "127.0.0.1",
            "169.254.169.254",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "192.0.0.8",
            "192.0.2.1",
            "198.18.0.1",
            "224.0.0.1",
            "240.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "::ffff:127.0.0.1",
            "::ffff:8.8.8.8",
            "::127.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "2002:a9fe:a9fe::1",
            "2001:db8::1",
            "fd00::1",
            "fd00:ec2::254",
            "fe80::1",
            "ff02::1",
        ] {
            assert!(is_forbidden(ip(addr)), "{addr} should be forbidden");
            assert!(!EgressPolicy::STRICT.permits(ip(addr)), "{addr}");
        }
    }

    #[test]
    fn permits_public_addresses() {
        for addr in [
            "8.8.8.8",
            "1.1.1.1",
            "100.63.255.255",
            "100.128.0.1",
            "172.32.0.1",
            "2606:4700::1111",
        ] {
            assert!(!is_forbidden(ip(addr)), "{addr} should be allowed");
        }
    }

    #[test]
    fn loopback_only_by_configuration_and_only_plain() {
        assert!(!EgressPolicy::STRICT.permits(ip("127.0.0.1")));
        assert!(EgressPolicy::LOCAL.permits(ip("127.0.0.1")));
        assert!(EgressPolicy::LOCAL.permits(ip("::1")));
        for still in ["::ffff:127.0.0.1", "169.254.169.254", "10.0.0.1"] {
            assert!(!EgressPolicy::LOCAL.permits(ip(still)), "{still}");
        }
        assert_eq!(
            EgressPolicy::from_lookup(|_| Some("true".into())),
            EgressPolicy::LOCAL
        );
        for other in [None, Some("1".to_owned()), Some("yes".to_owned())] {
            assert_eq!(
                EgressPolicy::from_lookup(|_| other.clone()),
                EgressPolicy::STRICT
            );
        }
    }

    #[test]
    fn check_url_refuses_internal_literals_and_bad_forms() {
        let cases = [
            ("https://169.254.169.254/latest", EgressError::Forbidden),
            ("https://[::ffff:127.0.0.1]/", EgressError::Forbidden),
            ("https://[fd00::1]/", EgressError::Forbidden),
            ("https://100.64.0.1/", EgressError::Forbidden),
            ("https://0.0.0.0/", EgressError::Forbidden),
            ("https://127.0.0.1/", EgressError::Forbidden),
            ("https://localhost/", EgressError::Forbidden),
            ("http://example.com/", EgressError::Scheme),
            ("http://127.0.0.1/", EgressError::Scheme),
            ("https://u:p@example.com/", EgressError::Credentials),
            ("https://example.com/#x", EgressError::Fragment),
            ("example.com", EgressError::NotAbsolute),
        ];
        for (raw, want) in cases {
            assert_eq!(check_url(raw, EgressPolicy::STRICT), Err(want), "{raw}");
        }
        assert!(check_url("https://example.com/hook", EgressPolicy::STRICT).is_ok());
        assert!(check_url("http://127.0.0.1:8080/", EgressPolicy::LOCAL).is_ok());
        // The local policy admits loopback only, never the rest.
        assert_eq!(
            check_url("http://10.0.0.1/", EgressPolicy::LOCAL),
            Err(EgressError::Scheme)
        );
        assert_eq!(
            check_url("https://10.0.0.1/", EgressPolicy::LOCAL),
            Err(EgressError::Forbidden)
        );
    }
}
