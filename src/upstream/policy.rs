//! Where peerd may connect when it fetches on a client's behalf (`/v2` upstreams, their
//! redirects and token realms, `/blobs` upstreams): never link-local (169.254.0.0/16 holds the
//! AWS, Azure and GCP metadata services), other cloud metadata addresses, unspecified, broadcast
//! or multicast; loopback only when the operator configured a loopback upstream.
//!
//! IPv6 addresses that carry an IPv4 address (mapped, compatible, NAT64, 6to4, Teredo, ISATAP)
//! are judged by the IPv4 address they carry, so `::169.254.169.254` or `64:ff9b::a9fe:a9fe`
//! cannot walk around the IPv4 rules.
//!
//! The policy is applied at three points: the literal host of every URL before a request (and
//! of every redirect hop), and DNS answers ([`PolicyResolver`]), so a name cannot point around it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

/// Which addresses outbound fetches may reach.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AddressPolicy {
    /// Loopback (127.0.0.0/8, ::1) allowed: only when a configured upstream is on loopback
    /// (a registry on the node itself, test set-ups).
    pub allow_loopback: bool,
}

/// Why an address is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("link-local and cloud metadata addresses are refused")]
    Metadata,
    #[error("unspecified, broadcast and multicast addresses are refused")]
    NotUnicast,
    #[error("loopback addresses are refused (no loopback upstream is configured)")]
    Loopback,
}

/// The IPv4 address an IPv6 address carries, if it is one of the transition forms.
pub fn embedded_ipv4(v6: Ipv6Addr) -> Vec<Ipv4Addr> {
    let s = v6.segments();
    let low = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    let mut out = Vec::new();
    // ::ffff:a.b.c.d (mapped), ::ffff:0:a.b.c.d (SIIT), ::a.b.c.d (compatible; not ::, ::1).
    if s[..5] == [0; 5] && (s[5] == 0xffff || (s[5] == 0 && (s[6] != 0 || s[7] > 1))) {
        out.push(low);
    }
    if s[..4] == [0, 0, 0, 0] && s[4] == 0xffff && s[5] == 0 {
        out.push(low);
    }
    // NAT64: 64:ff9b::/96 (RFC 6052) and the local-use 64:ff9b:1::/48 (RFC 8215).
    if s[0] == 0x64 && s[1] == 0xff9b && (s[2..6] == [0; 4] || s[2] == 1) {
        out.push(low);
    }
    // 6to4: 2002:AABB:CCDD::/48.
    if s[0] == 0x2002 {
        out.push(Ipv4Addr::new((s[1] >> 8) as u8, s[1] as u8, (s[2] >> 8) as u8, s[2] as u8));
    }
    // Teredo: 2001:0::/32; server in bits 32-63, client (inverted) in the last 32 bits.
    if s[0] == 0x2001 && s[1] == 0 {
        out.push(Ipv4Addr::new((s[2] >> 8) as u8, s[2] as u8, (s[3] >> 8) as u8, s[3] as u8));
        out.push(Ipv4Addr::from(!u32::from(low)));
    }
    // ISATAP interface identifier: ::0:5efe:a.b.c.d or ::200:5efe:a.b.c.d in any prefix.
    if s[5] == 0x5efe && (s[4] == 0 || s[4] == 0x200) {
        out.push(low);
    }
    out
}

fn check_v4(ip: Ipv4Addr, policy: AddressPolicy) -> Result<(), Refusal> {
    let o = ip.octets();
    if ip.is_link_local() || o == [100, 100, 100, 200] {
        return Err(Refusal::Metadata);
    }
    if ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast() || o[0] == 0 {
        return Err(Refusal::NotUnicast);
    }
    if ip.is_loopback() && !policy.allow_loopback {
        return Err(Refusal::Loopback);
    }
    Ok(())
}

impl AddressPolicy {
    /// Whether peerd may connect to `ip`.
    pub fn check(self, ip: IpAddr) -> Result<(), Refusal> {
        match ip {
            IpAddr::V4(v4) => check_v4(v4, self),
            IpAddr::V6(v6) => {
                if (v6.segments()[0] & 0xffc0) == 0xfe80 || v6 == Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254) {
                    return Err(Refusal::Metadata);
                }
                if v6.is_unspecified() || v6.is_multicast() {
                    return Err(Refusal::NotUnicast);
                }
                if v6.is_loopback() && !self.allow_loopback {
                    return Err(Refusal::Loopback);
                }
                embedded_ipv4(v6).into_iter().try_for_each(|v4| check_v4(v4, self))
            }
        }
    }

    /// The literal IP host of `url`, checked; names pass here (the resolver checks them).
    pub fn check_url(self, url: &url::Url) -> Result<(), Refusal> {
        match url.host() {
            Some(url::Host::Ipv4(ip)) => self.check(IpAddr::V4(ip)),
            Some(url::Host::Ipv6(ip)) => self.check(IpAddr::V6(ip)),
            _ if url.host_str().is_some_and(is_localhost_name) && !self.allow_loopback => Err(Refusal::Loopback),
            _ => Ok(()),
        }
    }

    /// The one HTTP client builder for upstreams (/v2 registries, /blobs stores): this policy on
    /// DNS answers and every redirect hop (at most `max_redirects`), connect and idle timeouts,
    /// peerd's user agent.
    pub fn client(
        self,
        max_redirects: usize,
        connect_timeout: std::time::Duration,
        idle_timeout: std::time::Duration,
    ) -> Result<reqwest::Client, String> {
        self.apply(reqwest::Client::builder(), max_redirects)
            .connect_timeout(connect_timeout)
            .read_timeout(idle_timeout)
            .user_agent(concat!("peerd/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("building the HTTP client: {e}"))
    }

    /// A reqwest client builder with this policy on DNS answers and on every redirect hop
    /// (at most `max_redirects`; 0 follows none).
    fn apply(self, builder: reqwest::ClientBuilder, max_redirects: usize) -> reqwest::ClientBuilder {
        let redirects = if max_redirects == 0 {
            reqwest::redirect::Policy::none()
        } else {
            reqwest::redirect::Policy::custom(move |attempt| {
                if attempt.previous().len() > max_redirects {
                    return attempt.error(format!("more than {max_redirects} redirects"));
                }
                if !matches!(attempt.url().scheme(), "http" | "https") {
                    return attempt.error(RedirectRefused("not HTTP(S)".into()));
                }
                match self.check_url(attempt.url()) {
                    Ok(()) => attempt.follow(),
                    Err(r) => {
                        let host = attempt.url().host_str().unwrap_or("").to_owned();
                        attempt.error(RedirectRefused(format!("{host}: {r}")))
                    }
                }
            })
        };
        builder.dns_resolver(Arc::new(PolicyResolver(self))).redirect(redirects)
    }
}

/// A redirect to a refused address (recognised by [`is_refused_redirect`]).
#[derive(Debug, thiserror::Error)]
#[error("redirect refused: {0}")]
pub struct RedirectRefused(pub String);

/// The refused redirect inside a reqwest error, if that is what it is.
pub fn refused_redirect(e: &reqwest::Error) -> Option<String> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(err) = cur {
        if let Some(r) = err.downcast_ref::<RedirectRefused>() {
            return Some(r.0.clone());
        }
        cur = err.source();
    }
    None
}

fn is_localhost_name(host: &str) -> bool {
    let h = host.trim_end_matches('.').to_ascii_lowercase();
    h == "localhost" || h.ends_with(".localhost")
}

/// Whether a configured upstream (`host[:port]`, `[v6]:port`, a URL authority) is on loopback:
/// then the operator meant it, and loopback is allowed.
pub fn is_loopback_host(host_port: &str) -> bool {
    let host = match host_port.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) && (!h.contains(':') || h.ends_with(']')) => h,
        _ => host_port,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    is_localhost_name(host) || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// DNS through the system resolver, minus the addresses the policy refuses.
pub struct PolicyResolver(pub AddressPolicy);

impl reqwest::dns::Resolve for PolicyResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let (host, policy) = (name.as_str().to_owned(), self.0);
        Box::pin(async move {
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.filter(|a| policy.check(a.ip()).is_ok()).collect();
            if addrs.is_empty() {
                return Err(format!("{host} resolves only to refused addresses").into());
            }
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STRICT: AddressPolicy = AddressPolicy { allow_loopback: false };
    const LOOPBACK: AddressPolicy = AddressPolicy { allow_loopback: true };

    #[test]
    fn metadata_addresses_in_every_form_are_refused() {
        for ip in [
            "169.254.169.254",
            "100.100.100.200",
            "fe80::1",
            "fd00:ec2::254",
            "::ffff:169.254.169.254",
            "::169.254.169.254",
            "::ffff:0:169.254.169.254",
            "64:ff9b::a9fe:a9fe",
            "64:ff9b::169.254.169.254",
            "64:ff9b:1::a9fe:a9fe",
            "2002:a9fe:a9fe::1",
            "2001:0:a9fe:a9fe::1",
            "2001:0:4136:e378:8000:63bf:5601:5601", // Teredo client 169.254.169.254 (inverted)
            "2001:db8::5efe:a9fe:a9fe",
            "fe80::200:5efe:169.254.169.254",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(LOOPBACK.check(ip), Err(Refusal::Metadata), "{ip}");
        }
    }

    #[test]
    fn loopback_only_when_allowed() {
        for ip in ["127.0.0.1", "127.1.2.3", "::1", "::ffff:127.0.0.1", "64:ff9b::7f00:1", "2002:7f00:1::"] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(STRICT.check(ip), Err(Refusal::Loopback), "{ip}");
            assert_eq!(LOOPBACK.check(ip), Ok(()), "{ip}");
        }
        let u = |s: &str| url::Url::parse(s).unwrap();
        assert_eq!(STRICT.check_url(&u("http://localhost:5000/v2/")), Err(Refusal::Loopback));
        assert_eq!(STRICT.check_url(&u("http://[::1]:5000/v2/")), Err(Refusal::Loopback));
        assert_eq!(STRICT.check_url(&u("http://[::169.254.169.254]/")), Err(Refusal::Metadata));
        assert_eq!(STRICT.check_url(&u("https://registry.example.com/v2/")), Ok(()));
        assert_eq!(LOOPBACK.check_url(&u("http://localhost:5000/v2/")), Ok(()));
    }

    #[test]
    fn ordinary_addresses_pass() {
        for ip in ["10.0.0.1", "52.1.2.3", "192.168.1.1", "2603:1030::1", "2001:db8::1", "64:ff9b::808:808"] {
            assert_eq!(STRICT.check(ip.parse().unwrap()), Ok(()), "{ip}");
        }
        for ip in ["0.0.0.0", "::", "224.0.0.1", "ff02::1", "255.255.255.255", "0.1.2.3"] {
            assert_eq!(STRICT.check(ip.parse().unwrap()), Err(Refusal::NotUnicast), "{ip}");
        }
    }

    #[test]
    fn loopback_hosts() {
        for h in ["127.0.0.1:5000", "localhost", "localhost:80", "[::1]:5000", "::1", "127.0.0.2"] {
            assert!(is_loopback_host(h), "{h}");
        }
        for h in ["docker.io", "10.0.0.1:5000", "[2001:db8::1]:443", "localhost.example.com"] {
            assert!(!is_loopback_host(h), "{h}");
        }
    }
}
