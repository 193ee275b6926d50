//! Header rules of the data path, applied in place on the maps hyper parsed (never copied).
//!
//! Hop-by-hop headers (RFC 9110 §7.6.1) describe one connection, not the message, so they are
//! dropped both ways, together with any header the `Connection` header lists. An `Upgrade`
//! handshake (WebSocket) keeps `Upgrade` and `Connection: upgrade`, since the instance must see
//! it to switch protocols.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Never forwarded (plus every `proxy-*` and every name `Connection` lists).
const HOP_BY_HOP: [HeaderName; 6] = [
    header::CONNECTION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHORIZATION,
];

static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Whether `headers` ask to switch protocols (`Connection: upgrade` and an `Upgrade`).
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE) && connection_has(headers, "upgrade")
}

/// Whether a `Connection` header of `headers` lists `token` (case-insensitive).
pub fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .any(|v| tokens(v).any(|t| t.eq_ignore_ascii_case(token)))
}

fn tokens(value: &HeaderValue) -> impl Iterator<Item = &str> {
    value
        .to_str()
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// Drops the hop-by-hop headers of `headers`; with `upgrade`, keeps the handshake's.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    // Names listed in `Connection` are hop-by-hop too; most messages have no such header.
    if headers.contains_key(header::CONNECTION) {
        let listed: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .flat_map(tokens)
            .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
            .collect();
        for name in listed {
            if !(upgrade && name == header::UPGRADE) {
                headers.remove(&name);
            }
        }
    }
    for name in &HOP_BY_HOP {
        if !(upgrade && (name == header::UPGRADE || name == header::CONNECTION)) {
            headers.remove(name);
        }
    }
    headers.remove(&KEEP_ALIVE);
    if headers.keys().any(|n| n.as_str().starts_with("proxy-")) {
        let proxy: Vec<HeaderName> = headers
            .keys()
            .filter(|n| n.as_str().starts_with("proxy-"))
            .cloned()
            .collect();
        for name in proxy {
            headers.remove(&name);
        }
    }
    if upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// The `x-forwarded-*` set and a request id, added to a request's headers after
/// [`strip_hop_by_hop`]. The router is the first proxy a client meets, so `-host` and `-proto`
/// are its own view; `-for` is appended to; `x-request-id` is kept or created.
pub fn add_forwarded(headers: &mut HeaderMap, peer: IpAddr, host: Option<HeaderValue>) {
    let mut forwarded_for = String::new();
    for value in headers.get_all(&X_FORWARDED_FOR) {
        if let Ok(value) = value.to_str() {
            forwarded_for.push_str(value);
            forwarded_for.push_str(", ");
        }
    }
    {
        use std::fmt::Write;
        let _ = write!(forwarded_for, "{peer}");
    }
    if let Ok(value) = HeaderValue::try_from(forwarded_for) {
        headers.insert(&X_FORWARDED_FOR, value);
    }
    match host {
        Some(host) => headers.insert(&X_FORWARDED_HOST, host),
        None => headers.remove(&X_FORWARDED_HOST),
    };
    headers.insert(&X_FORWARDED_PROTO, HeaderValue::from_static("http"));
    if !headers.contains_key(&X_REQUEST_ID) {
        headers.insert(&X_REQUEST_ID, request_id());
    }
}

/// A random UUID v4 from the thread's own generator (fastrand's, seeded once per thread): no
/// system call per request, and ids need to be unique, not unguessable.
pub fn request_id() -> HeaderValue {
    let id = uuid::Builder::from_random_bytes(fastrand::u128(..).to_ne_bytes()).into_uuid();
    let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
    let text = id.hyphenated().encode_lower(&mut text);
    HeaderValue::from_str(text).unwrap_or_else(|_| HeaderValue::from_static("-"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn map(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| (HeaderName::from_static(k), HeaderValue::from_static(v)))
            .collect()
    }

    #[test]
    fn connection_listed_and_hop_by_hop_headers_are_dropped() {
        let mut h = map(&[
            ("connection", "close, X-Secret"),
            ("x-secret", "1"),
            ("proxy-connection", "keep-alive"),
            ("transfer-encoding", "chunked"),
            ("keep-alive", "timeout=5"),
            ("content-type", "text/plain"),
        ]);
        strip_hop_by_hop(&mut h, false);
        let names: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        assert_eq!(names, ["content-type"]);
    }

    #[test]
    fn an_upgrade_keeps_its_handshake() {
        let mut h = map(&[
            ("connection", "Upgrade, keep-alive"),
            ("upgrade", "websocket"),
            ("sec-websocket-key", "k"),
        ]);
        assert!(is_upgrade(&h));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["connection"], "upgrade");
        assert_eq!(h["sec-websocket-key"], "k");
        assert!(!is_upgrade(&map(&[("upgrade", "websocket")])));
    }

    #[test]
    fn forwarded_headers_append_and_ids_are_kept_or_made() {
        let mut h = map(&[("x-forwarded-for", "10.9.8.7")]);
        add_forwarded(
            &mut h,
            "127.0.0.1".parse().unwrap(),
            Some(HeaderValue::from_static("a:1")),
        );
        assert_eq!(h["x-forwarded-for"], "10.9.8.7, 127.0.0.1");
        assert_eq!(h["x-forwarded-host"], "a:1");
        assert_eq!(h["x-forwarded-proto"], "http");
        let id = h["x-request-id"].to_str().unwrap();
        assert_eq!(uuid::Uuid::parse_str(id).unwrap().get_version_num(), 4);
        assert_ne!(request_id(), request_id());

        let mut h = map(&[("x-request-id", "abc")]);
        add_forwarded(&mut h, "::1".parse().unwrap(), None);
        assert_eq!(h["x-request-id"], "abc");
        assert_eq!(h["x-forwarded-for"], "::1");
    }
}
