//! Who the client is behind reverse proxies (`UPDRAFT_TRUSTED_PROXIES`).
//!
//! Only a proxy Updraft trusts may say who its client is. `X-Forwarded-For` is read from the
//! right: each proxy appends the address it received the request from, so the right-most
//! entry that is not a trusted proxy is the client; whatever lies further left was written by
//! that client and proves nothing. `X-Forwarded-Proto` and `-Host` are taken from the nearest
//! trusted proxy (their right-most entry).
//!
//! The middleware `resolve` runs before every handler. It removes these headers from requests
//! that did not come from a trusted proxy, and replaces them with the one resolved value each
//! when they did, so that nothing downstream can read a forged one. Handlers read the client's
//! address through `ClientIp` (the resolved `ClientView`).

use std::net::IpAddr;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use ipnet::IpNet;

use super::AppState;
use crate::net::ClientAddr;

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const FORWARDED: HeaderName = HeaderName::from_static("forwarded");

/// The client of a request, as resolved from its peer and the trusted proxies' headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientView {
    pub ip: IpAddr,
}

/// The client's address: the right-most `X-Forwarded-For` entry that is not a trusted proxy,
/// when the peer itself is one; else the peer.
pub fn client_ip(peer: IpAddr, forwarded_for: &[&str], trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let mut client = peer;
    for entry in forwarded_for.iter().rev().flat_map(|value| value.rsplit(',')) {
        let Some(ip) = parse_hop(entry) else {
            // An entry that is no address: nothing to its left can be trusted.
            break;
        };
        client = ip;
        if !is_trusted(&ip) {
            break;
        }
    }
    client
}

/// One `X-Forwarded-For` entry: an address, possibly with a port or in brackets.
fn parse_hop(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim();
    if let Ok(ip) = entry.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(addr) = entry.parse::<std::net::SocketAddr>() {
        return Some(addr.ip());
    }
    entry.strip_prefix('[').and_then(|rest| rest.strip_suffix(']')).and_then(|ip| ip.parse().ok())
}

/// The right-most value of a comma-separated header (what the nearest proxy wrote).
fn nearest(headers: &HeaderMap, name: &HeaderName) -> Option<String> {
    let last = headers.get_all(name).iter().filter_map(|v| v.to_str().ok()).next_back()?;
    Some(last.rsplit(',').next()?.trim().to_string()).filter(|v| !v.is_empty())
}

/// Resolves the client of every request (see the module documentation).
pub async fn resolve(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let peer =
        request.extensions().get::<ConnectInfo<ClientAddr>>().map(|ConnectInfo(addr)| addr.0.ip()).unwrap_or(IpAddr::from([127, 0, 0, 1]));
    let trusted = &state.settings.trusted_proxies;
    let from_proxy = trusted.iter().any(|net| net.contains(&peer));
    let headers = request.headers_mut();
    let view = if from_proxy {
        let forwarded_for: Vec<String> =
            headers.get_all(&X_FORWARDED_FOR).iter().filter_map(|v| v.to_str().ok()).map(str::to_string).collect();
        let forwarded_for: Vec<&str> = forwarded_for.iter().map(String::as_str).collect();
        let ip = client_ip(peer, &forwarded_for, trusted);
        let proto = nearest(headers, &X_FORWARDED_PROTO).filter(|p| p == "http" || p == "https");
        let host = nearest(headers, &X_FORWARDED_HOST);
        headers.remove(&X_FORWARDED_PROTO);
        headers.remove(&X_FORWARDED_HOST);
        headers.insert(X_FORWARDED_FOR, HeaderValue::from_str(&ip.to_string()).expect("an address is a header value"));
        if let Some(proto) = proto.and_then(|p| HeaderValue::from_str(&p).ok()) {
            headers.insert(X_FORWARDED_PROTO, proto);
        }
        if let Some(host) = host.and_then(|h| HeaderValue::from_str(&h).ok()) {
            headers.insert(X_FORWARDED_HOST, host);
        }
        ClientView { ip }
    } else {
        for name in [&X_FORWARDED_FOR, &X_FORWARDED_PROTO, &X_FORWARDED_HOST, &FORWARDED] {
            headers.remove(name);
        }
        ClientView { ip: peer }
    };
    request.extensions_mut().insert(view);
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|n| n.parse().unwrap()).collect()
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_forwards() {
        let trusted = nets(&["10.0.0.0/8"]);
        assert_eq!(client_ip(ip("203.0.113.7"), &["198.51.100.1"], &trusted), ip("203.0.113.7"));
        assert_eq!(client_ip(ip("203.0.113.7"), &[], &[]), ip("203.0.113.7"));
    }

    #[test]
    fn the_right_most_untrusted_hop_is_the_client() {
        let trusted = nets(&["10.0.0.0/8", "192.168.1.1/32"]);
        // nginx's $proxy_add_x_forwarded_for appends the client it saw: what the client sent
        // itself (1.1.1.1, a forgery) stays on the left.
        assert_eq!(client_ip(ip("10.0.0.2"), &["1.1.1.1, 203.0.113.9"], &trusted), ip("203.0.113.9"));
        // Two trusted proxies in a row; the header repeated.
        assert_eq!(client_ip(ip("10.0.0.2"), &["1.1.1.1, 203.0.113.9", "192.168.1.1"], &trusted), ip("203.0.113.9"));
        // Ports and brackets.
        assert_eq!(client_ip(ip("10.0.0.2"), &["[2001:db8::1]:4711"], &trusted), ip("2001:db8::1"));
        assert_eq!(client_ip(ip("10.0.0.2"), &["203.0.113.9:80"], &trusted), ip("203.0.113.9"));
        // Every hop trusted: the left-most one.
        assert_eq!(client_ip(ip("10.0.0.2"), &["10.0.0.9"], &trusted), ip("10.0.0.9"));
        // Garbage stops the walk at the last good hop.
        assert_eq!(client_ip(ip("10.0.0.2"), &["203.0.113.9, unknown"], &trusted), ip("10.0.0.2"));
        // No header: the proxy itself.
        assert_eq!(client_ip(ip("10.0.0.2"), &[], &trusted), ip("10.0.0.2"));
    }
}
