//! The client's address: the socket peer, or — when the peer is one of
//! `[server] trusted_proxies` — the address the proxies say they forwarded
//! for. `X-Forwarded-For` (else `Forwarded`) is read from the right: each
//! trusted proxy appends the address it received from, so the first entry
//! from the right that is not a trusted proxy is the client. Entries a client
//! wrote itself sit further left and are never reached.

use std::net::{IpAddr, SocketAddr};

use http::HeaderMap;
use ipnet::IpNet;

/// The client's address; `None` when the server did not say who the peer is.
pub(crate) fn client_addr(
    peer: Option<SocketAddr>,
    headers: &HeaderMap,
    trusted: &[IpNet],
) -> Option<IpAddr> {
    let peer = canonical(peer?.ip());
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return Some(peer);
    }
    let mut hops: Vec<IpAddr> = Vec::new();
    let forwarded_for: Vec<_> = headers.get_all("x-forwarded-for").iter().collect();
    if forwarded_for.is_empty() {
        for value in headers.get_all(http::header::FORWARDED) {
            let Ok(value) = value.to_str() else {
                return Some(peer);
            };
            for element in value.split(',') {
                let Some(ip) = element
                    .split(';')
                    .filter_map(|pair| pair.trim().split_once('='))
                    .find(|(name, _)| name.eq_ignore_ascii_case("for"))
                    .and_then(|(_, node)| parse_node(node))
                else {
                    // An entry that names no address (`for=unknown`, an
                    // obfuscated id): nothing to the left of it can be trusted.
                    hops.clear();
                    continue;
                };
                hops.push(ip);
            }
        }
    } else {
        for value in forwarded_for {
            let Ok(value) = value.to_str() else {
                return Some(peer);
            };
            for entry in value.split(',') {
                match parse_node(entry) {
                    Some(ip) => hops.push(ip),
                    None => hops.clear(),
                }
            }
        }
    }
    let mut client = peer;
    for hop in hops.into_iter().rev() {
        client = hop;
        if !is_trusted(&hop) {
            break;
        }
    }
    Some(client)
}

/// An address as one header entry writes it: `1.2.3.4`, `1.2.3.4:5`,
/// `"[2001:db8::1]:443"`, `2001:db8::1`.
fn parse_node(node: &str) -> Option<IpAddr> {
    let node = node.trim().trim_matches('"');
    if let Ok(ip) = node.parse::<IpAddr>() {
        return Some(canonical(ip));
    }
    if let Ok(addr) = node.parse::<SocketAddr>() {
        return Some(canonical(addr.ip()));
    }
    let inner = node.strip_prefix('[')?.split(']').next()?;
    inner.parse::<IpAddr>().ok().map(canonical)
}

/// An IPv4 address reached over IPv6 counts as the IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        map
    }

    fn peer(ip: &str) -> Option<SocketAddr> {
        Some(SocketAddr::new(ip.parse().unwrap(), 5000))
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_says() {
        let h = headers(&[("x-forwarded-for", "9.9.9.9")]);
        assert_eq!(client_addr(peer("203.0.113.7"), &h, &[]), ip("203.0.113.7"));
        let trusted = ["10.0.0.0/8".parse().unwrap()];
        assert_eq!(
            client_addr(peer("203.0.113.7"), &h, &trusted),
            ip("203.0.113.7")
        );
    }

    #[test]
    fn a_trusted_proxy_names_the_client_from_the_right() {
        let trusted = ["10.0.0.0/8".parse().unwrap()];
        // The client wrote 1.1.1.1 itself; the proxies appended the rest.
        let h = headers(&[("x-forwarded-for", "1.1.1.1, 198.51.100.4, 10.0.0.9")]);
        assert_eq!(
            client_addr(peer("10.0.0.1"), &h, &trusted),
            ip("198.51.100.4")
        );
        let h = headers(&[
            ("x-forwarded-for", "198.51.100.4"),
            ("x-forwarded-for", "10.0.0.9"),
        ]);
        assert_eq!(
            client_addr(peer("10.0.0.1"), &h, &trusted),
            ip("198.51.100.4")
        );
        // No header: the proxy itself.
        assert_eq!(
            client_addr(peer("10.0.0.1"), &HeaderMap::new(), &trusted),
            ip("10.0.0.1")
        );
        // Garbage in the chain: the hop right of it.
        let h = headers(&[("x-forwarded-for", "198.51.100.4, garbage, 10.0.0.9")]);
        assert_eq!(client_addr(peer("10.0.0.1"), &h, &trusted), ip("10.0.0.9"));
    }

    #[test]
    fn forwarded_is_read_when_there_is_no_x_forwarded_for() {
        let trusted = ["127.0.0.1/32".parse().unwrap()];
        let h = headers(&[(
            "forwarded",
            "for=192.0.2.60;proto=http, for=\"[2001:db8:cafe::17]:4711\"",
        )]);
        assert_eq!(
            client_addr(peer("127.0.0.1"), &h, &trusted),
            ip("2001:db8:cafe::17")
        );
        assert_eq!(
            client_addr(peer("::ffff:127.0.0.1"), &h, &trusted),
            ip("2001:db8:cafe::17")
        );
    }
}
