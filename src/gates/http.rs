//! `http`: a GET whose status must be the expected one. Also the client HTTP and Prometheus
//! gates share (no redirects, no proxy, every resolved address vetted), the checks that keep
//! gates off instance metadata and loopback, and reading bodies up to a cap.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use crate::sanitize;
use crate::spec::HttpGate;

use super::{GateChecker, GateOutcome};

/// HTTP gate bodies are read (so the connection can be reused) up to this much, then dropped.
const HTTP_BODY_CAP: usize = 64 * 1024;

/// The client HTTP and Prometheus gates share: redirects are not followed, no proxy is used, and
/// every address a gate's host resolves to is vetted.
pub(super) fn client(allow_loopback: bool) -> reqwest::Client {
    reqwest::Client::builder()
        .user_agent(concat!("trafficshift/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(Duration::from_secs(5))
        // A redirect could point a checked URL at instance metadata or any internal address.
        .redirect(reqwest::redirect::Policy::none())
        // Through a proxy, the resolver below would vet the proxy, not the gate's host.
        .no_proxy()
        .dns_resolver(GuardedResolver { allow_loopback })
        .build()
        // Building only fails when the TLS backend cannot initialise; the default client would
        // fail the same way, so there is nothing better to fall back to.
        .unwrap_or_default()
}

impl GateChecker {
    /// Why a request to `url` must not be made, for hosts written as IP literals (names are
    /// vetted by the resolver after lookup; literals never reach it).
    pub(super) fn refused(&self, url: &reqwest::Url) -> Option<String> {
        let ip = literal_ip(url.host_str()?)?;
        refused_address(ip, self.options.allow_loopback)
            .map(|why| format!("refused: {ip} is {why}"))
    }

    pub(super) async fn http(&self, g: &HttpGate) -> GateOutcome {
        let timeout = g.timeout.0;
        let shown = redact(&g.url);
        if let Some(why) = reqwest::Url::parse(&g.url)
            .ok()
            .and_then(|u| self.refused(&u))
        {
            return GateOutcome::fail(format!("GET {shown}: {why}"));
        }
        let exchange = async {
            let resp = self
                .http_client()
                .get(&g.url)
                .timeout(timeout)
                .send()
                .await?;
            let status = resp.status();
            // Drain a little so the connection can be reused; the content does not matter.
            read_capped(resp, HTTP_BODY_CAP).await?;
            Ok::<_, reqwest::Error>(status)
        };
        let status = match tokio::time::timeout(timeout, exchange).await {
            Err(_) => return GateOutcome::fail(format!("GET {shown}: {}", timed_out(timeout))),
            Ok(Err(e)) => {
                return GateOutcome::fail(format!("GET {shown}: {}", describe(&e, timeout)))
            }
            Ok(Ok(s)) => s,
        };
        let value = f64::from(status.as_u16());
        if status.as_u16() == g.expect_status {
            GateOutcome::pass(format!("GET {shown}: {status}")).with_value(value)
        } else {
            GateOutcome::fail(format!(
                "GET {shown}: {status}, expected {}",
                g.expect_status
            ))
            .with_value(value)
        }
    }
}

pub(super) enum Capped {
    Complete(Vec<u8>),
    /// The body went past the cap; reading stopped there.
    Truncated,
}

/// Read a body chunk by chunk, stopping once it passes `cap` so a huge answer cannot exhaust memory.
pub(super) async fn read_capped(
    mut resp: reqwest::Response,
    cap: usize,
) -> reqwest::Result<Capped> {
    if resp.content_length().is_some_and(|n| n > cap as u64) {
        return Ok(Capped::Truncated);
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await? {
        if body.len() + chunk.len() > cap {
            return Ok(Capped::Truncated);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Capped::Complete(body))
}

/// A URL for messages, without the userinfo and query that /status and logs must not show.
pub fn redact(url: &str) -> String {
    sanitize::redact_url(url)
}

/// The IP address of a URL host written as a literal (`10.0.0.1`, `[fe80::1]`).
pub fn literal_ip(host: &str) -> Option<IpAddr> {
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .ok()
}

/// AWS's IPv6 instance metadata address (Nitro instances, EKS IPv6 clusters).
const METADATA_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254);

/// Whether `ip` is link-local: 169.254.0.0/16 (instance metadata, ECS task metadata), fe80::/10,
/// or fd00:ec2::254. IPv4 addresses written as IPv6 (`::ffff:169.254.169.254`, NAT64
/// `64:ff9b::169.254.169.254`) count as the IPv4 address they carry.
pub fn is_link_local(ip: IpAddr) -> bool {
    match unmap(ip) {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80 || v6 == METADATA_V6,
    }
}

fn unmap(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return IpAddr::V4(v4);
            }
            let s = v6.segments();
            if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
                let [a, b] = s[6].to_be_bytes();
                let [c, d] = s[7].to_be_bytes();
                return IpAddr::V4(Ipv4Addr::new(a, b, c, d));
            }
            ip
        }
        v4 => v4,
    }
}

/// Why a gate must not connect to `ip`, if it must not.
pub fn refused_address(ip: IpAddr, allow_loopback: bool) -> Option<&'static str> {
    let ip = unmap(ip);
    if is_link_local(ip) {
        Some("link-local (instance metadata); gates never call it")
    } else if !allow_loopback && (ip.is_loopback() || ip.is_unspecified()) {
        Some("loopback; run with --allow-loopback-gates to allow it")
    } else {
        None
    }
}

/// Resolves gate hosts like the system resolver, then refuses the whole answer if any address is
/// one a gate must not reach: a name that resolves (or is rebound) to instance metadata fails.
struct GuardedResolver {
    allow_loopback: bool,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let allow_loopback = self.allow_loopback;
        let host = name.as_str().to_string();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            vet(&host, &addrs, allow_loopback)?;
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// Refuse the answer for `host` if any of its addresses is one a gate must not reach.
fn vet(host: &str, addrs: &[SocketAddr], allow_loopback: bool) -> Result<(), String> {
    match addrs
        .iter()
        .find_map(|a| refused_address(a.ip(), allow_loopback).map(|why| (a.ip(), why)))
    {
        Some((ip, why)) => Err(format!("refused: {host} resolves to {ip}, which is {why}")),
        None => Ok(()),
    }
}

pub(super) fn timed_out(timeout: Duration) -> String {
    format!("timed out after {}", humantime::format_duration(timeout))
}

/// A reqwest error in words: timeout, connection failure (with its root cause), or other.
pub(super) fn describe(e: &reqwest::Error, timeout: Duration) -> String {
    if e.is_timeout() {
        return timed_out(timeout);
    }
    let cause = root_cause(e);
    if e.is_connect() {
        format!("connection failed: {cause}")
    } else if e.is_builder() {
        format!("invalid request: {cause}")
    } else {
        format!("request failed: {cause}")
    }
}

/// The innermost error of a chain: "Connection refused (os error 111)" rather than reqwest's
/// "error sending request for url (...)".
pub(crate) fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::time::Duration;

    use super::*;
    use crate::gates::fakes::*;
    use crate::gates::GateOptions;

    #[tokio::test]
    async fn http_gate_checks_status() {
        let base = local_server().await;
        let c = plain_checker();
        let o = c
            .check(&split(), &http_gate(&format!("{base}/code/200"), 200))
            .await;
        assert!(o.passing, "{o:?}");
        assert_eq!(o.message, format!("GET {base}/code/200: 200 OK"));

        let o = c
            .check(&split(), &http_gate(&format!("{base}/code/503"), 200))
            .await;
        assert!(!o.passing);
        assert_eq!(
            o.message,
            format!("GET {base}/code/503: 503 Service Unavailable, expected 200")
        );
        assert_eq!(o.value, Some(503.0));

        let o = c
            .check(&split(), &http_gate(&format!("{base}/code/204"), 204))
            .await;
        assert!(o.passing, "{o:?}");

        // A password and a query in the URL are sent but never shown.
        let with_password = base.replace("http://", "http://probe:s3cret@");
        let o = c
            .check(
                &split(),
                &http_gate(&format!("{with_password}/code/200?key=k3y"), 200),
            )
            .await;
        assert!(o.passing, "{o:?}");
        assert!(!o.message.contains("s3cret"), "{}", o.message);
        assert!(!o.message.contains("probe"), "{}", o.message);
        assert!(!o.message.contains("k3y"), "{}", o.message);
        assert!(o.message.contains("//redacted@"), "{}", o.message);

        // A large body is not a problem: it is read up to the cap and dropped.
        let o = c
            .check(&split(), &http_gate(&format!("{base}/huge"), 200))
            .await;
        assert!(o.passing, "{o:?}");
    }

    #[tokio::test]
    async fn http_gate_timeouts_and_connection_errors() {
        let base = local_server().await;
        let c = plain_checker();
        for path in ["slow", "slow-body"] {
            let started = std::time::Instant::now();
            let o = c
                .check(&split(), &http_gate(&format!("{base}/{path}"), 200))
                .await;
            assert!(!o.passing, "{path}");
            assert!(
                o.message.contains("timed out after 500ms"),
                "{path}: {}",
                o.message
            );
            assert!(
                started.elapsed() < Duration::from_secs(3),
                "{path}: the timeout did not cut the request"
            );
        }

        // A port that was just free: nothing listens there.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr").port()
        };
        let o = c
            .check(
                &split(),
                &http_gate(&format!("http://127.0.0.1:{port}/"), 200),
            )
            .await;
        assert!(!o.passing);
        assert!(o.message.contains("connection failed"), "{}", o.message);
        assert!(
            o.message.to_lowercase().contains("refused"),
            "{}",
            o.message
        );
    }

    #[tokio::test]
    async fn redirects_are_not_followed() {
        let base = local_server().await;
        let o = plain_checker()
            .check(&split(), &http_gate(&format!("{base}/redirect"), 200))
            .await;
        assert!(!o.passing, "{o:?}");
        assert_eq!(o.value, Some(307.0), "{o:?}");
    }

    fn strict() -> GateChecker {
        checker_with(
            FakeEcs::default(),
            FakeTargets::default(),
            FakeAlarms::default(),
            GateOptions::default(),
        )
    }

    #[tokio::test]
    async fn link_local_and_loopback_are_refused() {
        // Nothing listens on these: a refusal must come before any connection attempt, so the
        // message says "refused: ... is link-local", not a connection error.
        for url in [
            "http://169.254.169.254/latest/meta-data/",
            "http://[fd00:ec2::254]/latest/meta-data/",
            "http://[fe80::1]:8080/",
            "http://[::ffff:169.254.169.254]/",
            "http://0xa9fea9fe/",
        ] {
            for c in [plain_checker(), strict()] {
                let o = c.check(&split(), &http_gate(url, 200)).await;
                assert!(!o.passing, "{url}");
                assert!(o.message.contains("is link-local"), "{url}: {}", o.message);
            }
        }
        let o = strict()
            .check(&split(), &prom_gate("http://169.254.169.254:9090", "one"))
            .await;
        assert!(o.message.contains("is link-local"), "{}", o.message);

        let base = local_server().await;
        let port = base.rsplit(':').next().expect("port");
        for url in [
            format!("{base}/code/200"),
            format!("http://[::1]:{port}/code/200"),
            // A name: refused by the resolver, after lookup.
            format!("http://localhost:{port}/code/200"),
        ] {
            let o = strict().check(&split(), &http_gate(&url, 200)).await;
            assert!(!o.passing, "{url}: {o:?}");
            assert!(o.message.contains("loopback"), "{url}: {}", o.message);
            assert!(
                o.message.contains("--allow-loopback-gates"),
                "{url}: {}",
                o.message
            );
        }
        let o = strict().check(&split(), &prom_gate(&base, "one")).await;
        assert!(o.message.contains("loopback"), "{}", o.message);
        // The same name passes once loopback is allowed.
        let o = plain_checker()
            .check(
                &split(),
                &http_gate(&format!("http://localhost:{port}/code/200"), 200),
            )
            .await;
        assert!(o.passing, "{o:?}");
    }

    #[test]
    fn address_classes() {
        let ll = |s: &str| is_link_local(s.parse().expect("ip"));
        for ip in [
            "169.254.169.254",
            "169.254.0.1",
            "fe80::1",
            "febf::1",
            "fd00:ec2::254",
            "::ffff:169.254.1.1",
            "64:ff9b::a9fe:a9fe",
        ] {
            assert!(ll(ip), "{ip}");
        }
        for ip in [
            "169.255.0.1",
            "10.0.0.1",
            "fec0::1",
            "fd00:ec2::253",
            "127.0.0.1",
        ] {
            assert!(!ll(ip), "{ip}");
        }
        let refused = |s: &str, allow| refused_address(s.parse().expect("ip"), allow).is_some();
        assert!(refused("127.0.0.1", false));
        assert!(refused("::1", false));
        assert!(refused("0.0.0.0", false));
        assert!(!refused("127.0.0.1", true));
        assert!(
            refused("169.254.169.254", true),
            "loopback flag does not open metadata"
        );
        assert!(!refused("10.1.2.3", false));
    }

    #[test]
    fn a_name_resolving_to_metadata_is_refused() {
        let addr = |s: &str| SocketAddr::new(s.parse().expect("ip"), 0);
        let e = vet(
            "metadata.attacker.example",
            &[addr("10.0.0.1"), addr("169.254.169.254")],
            true,
        )
        .expect_err("one link-local address refuses the name");
        assert_eq!(
            e,
            "refused: metadata.attacker.example resolves to 169.254.169.254, which is link-local \
             (instance metadata); gates never call it"
        );
        assert!(vet("v6.example", &[addr("fd00:ec2::254")], true).is_err());
        assert!(vet("local.example", &[addr("127.0.0.1")], false).is_err());
        assert!(vet("local.example", &[addr("127.0.0.1")], true).is_ok());
        assert!(vet(
            "ok.example",
            &[addr("10.0.0.1"), addr("2001:db8::1")],
            false
        )
        .is_ok());
    }
}
