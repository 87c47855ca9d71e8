//! The client's address behind a load balancer (`--trusted-proxy`).
//!
//! The handler limits failed sign-ins per address, so the address must be
//! the client's, not the balancer's (behind one, every client would share
//! its limit). A connection from a trusted proxy has its
//! `X-Forwarded-For` read from the right: the first address that is not
//! itself a trusted proxy is the client. A header from anyone else is
//! ignored, so a client cannot name itself someone else.

use std::net::IpAddr;

/// Addresses (single, or networks as `10.0.0.0/8`) whose forwarded-for
/// headers are believed.
#[derive(Clone, Debug, Default)]
pub struct TrustedProxies {
    networks: Vec<(IpAddr, u8)>,
}

impl TrustedProxies {
    pub fn parse(specs: &[String]) -> anyhow::Result<Self> {
        let mut networks = Vec::new();
        for spec in specs {
            let (addr, bits) = match spec.split_once('/') {
                Some((a, b)) => (a, Some(b)),
                None => (spec.as_str(), None),
            };
            let addr: IpAddr =
                addr.trim().parse().map_err(|_| anyhow::anyhow!("--trusted-proxy {spec:?} is not an address"))?;
            let max = if addr.is_ipv4() { 32 } else { 128 };
            let bits =
                match bits {
                    None => max,
                    Some(b) => b.trim().parse().ok().filter(|&b| b <= max).ok_or_else(|| {
                        anyhow::anyhow!("--trusted-proxy {spec:?}: the prefix length must be 0 to {max}")
                    })?,
                };
            networks.push((addr, bits));
        }
        Ok(Self { networks })
    }

    pub fn trusts(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.networks.iter().any(|&(net, bits)| match (canonical(net), ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => prefix_eq(&n.octets(), &a.octets(), bits),
            (IpAddr::V6(n), IpAddr::V6(a)) => prefix_eq(&n.octets(), &a.octets(), bits),
            _ => false,
        })
    }

    /// The client's address: `peer`, or, when `peer` is trusted, the
    /// rightmost untrusted address its `X-Forwarded-For` headers name.
    pub fn client(&self, peer: IpAddr, headers: &http::HeaderMap) -> IpAddr {
        if !self.trusts(peer) {
            return peer;
        }
        let hops: Vec<&str> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect();
        let mut client = peer;
        for hop in hops.iter().rev() {
            let Ok(ip) = hop.parse::<IpAddr>() else { break };
            client = ip;
            if !self.trusts(ip) {
                break;
            }
        }
        client
    }
}

/// An IPv4 address mapped into IPv6 is the IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn prefix_eq(a: &[u8], b: &[u8], bits: u8) -> bool {
    let (whole, rest) = ((bits / 8) as usize, bits % 8);
    if a[..whole] != b[..whole] {
        return false;
    }
    rest == 0 || {
        let mask = 0xffu8 << (8 - rest);
        a[whole] & mask == b[whole] & mask
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(values: &[&str]) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        for v in values {
            h.append("x-forwarded-for", v.parse().unwrap());
        }
        h
    }

    #[test]
    fn only_a_trusted_peer_may_name_the_client() {
        let proxies = TrustedProxies::parse(&["127.0.0.1".into(), "10.0.0.0/8".into()]).unwrap();
        let lb: IpAddr = "127.0.0.1".parse().unwrap();
        let stranger: IpAddr = "203.0.113.9".parse().unwrap();
        // A client's own header is ignored.
        assert_eq!(proxies.client(stranger, &headers(&["198.51.100.1"])), stranger);
        // Through the balancer: the rightmost address it did not add itself.
        assert_eq!(proxies.client(lb, &headers(&["198.51.100.1"])).to_string(), "198.51.100.1");
        // A client that forges a first hop is still seen as itself.
        assert_eq!(proxies.client(lb, &headers(&["1.2.3.4, 198.51.100.1"])).to_string(), "198.51.100.1");
        // Chains of trusted proxies are walked through, over several headers.
        assert_eq!(proxies.client(lb, &headers(&["198.51.100.7", "10.1.2.3"])).to_string(), "198.51.100.7");
        // Nothing forwarded, or garbage: the balancer itself.
        assert_eq!(proxies.client(lb, &headers(&[])), lb);
        assert_eq!(proxies.client(lb, &headers(&["not-an-ip"])), lb);
        // IPv4 seen through an IPv6 socket.
        assert!(proxies.trusts("::ffff:10.9.9.9".parse().unwrap()));
        assert!(!proxies.trusts("11.0.0.1".parse().unwrap()));
    }

    #[test]
    fn bad_specs_are_refused() {
        assert!(TrustedProxies::parse(&["10.0.0.0/33".into()]).is_err());
        assert!(TrustedProxies::parse(&["proxy.local".into()]).is_err());
        assert!(TrustedProxies::parse(&["::1/128".into(), "fd00::/8".into()]).is_ok());
        let p = TrustedProxies::parse(&["192.168.0.0/23".into()]).unwrap();
        assert!(p.trusts("192.168.1.200".parse().unwrap()) && !p.trusts("192.168.2.1".parse().unwrap()));
    }
}
