//! Every header rule, in one place: hop-by-hop headers (RFC 9110 §7.6.1) removed in both
//! directions, `Upgrade` carried across, `Host` kept, `X-Forwarded-*` appended, and
//! `Connection: close` on HTTP/1.1 responses once shutdown has begun.

use std::io::Write as _;
use std::net::SocketAddr;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request;
use http::{StatusCode, Version};

/// Headers that describe one connection, not the message.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// The protocol a request asks to upgrade to: `Connection` includes `upgrade` and `Upgrade` is
/// set (both are needed, RFC 9110 §7.8).
pub fn upgrade_protocol(headers: &HeaderMap) -> Option<HeaderValue> {
    connection_tokens(headers)
        .any(|token| token.eq_ignore_ascii_case("upgrade"))
        .then(|| headers.get(header::UPGRADE).cloned())
        .flatten()
}

/// Rewrites a client's request head for the backend: hop-by-hop headers go, `Host` stays (an
/// HTTP/2 client's `:authority` becomes it, else `fallback_host`), an upgrade is asked for
/// again, and this hop is appended to `X-Forwarded-*`.
pub fn to_backend(
    parts: &mut request::Parts,
    remote: SocketAddr,
    upgrade: Option<&HeaderValue>,
    fallback_host: &str,
) {
    let host = parts.headers.get(header::HOST).cloned().or_else(|| {
        let authority = parts.uri.authority()?;
        HeaderValue::from_str(authority.as_str()).ok()
    });
    let headers = &mut parts.headers;
    remove_hop_by_hop(headers);
    if !headers.contains_key(header::HOST) {
        let host = host
            .clone()
            .or_else(|| HeaderValue::from_str(fallback_host).ok());
        if let Some(host) = host {
            headers.insert(header::HOST, host);
        }
    }
    if let Some(protocol) = upgrade {
        set_upgrade(headers, protocol.clone());
    }
    add_forwarded(headers, remote, host.as_ref());
}

/// Rewrites a backend's response head for the client: hop-by-hop headers go, and a 101 keeps
/// the upgrade it agreed to.
pub fn to_client(status: StatusCode, headers: &mut HeaderMap) {
    let upgrade = (status == StatusCode::SWITCHING_PROTOCOLS)
        .then(|| upgrade_protocol(headers))
        .flatten();
    remove_hop_by_hop(headers);
    if let Some(protocol) = upgrade {
        set_upgrade(headers, protocol);
    }
}

/// Once shutdown has begun, HTTP/1.1 responses ask the client to close the connection (and
/// reconnect elsewhere). HTTP/2 has no `Connection` header: its connections end with GOAWAY;
/// a 101 hands the connection over to the upgraded protocol.
pub fn close_when_shutting_down(
    version: Version,
    shutting_down: bool,
    status: StatusCode,
    headers: &mut HeaderMap,
) {
    if shutting_down && version < Version::HTTP_2 && status != StatusCode::SWITCHING_PROTOCOLS {
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
}

/// Removes hop-by-hop headers and every header the `Connection` header names. `TE: trailers` is
/// kept: it is how gRPC clients say they accept trailers, and it holds end to end.
fn remove_hop_by_hop(headers: &mut HeaderMap) {
    // Most clients name only `keep-alive`, `close` or `upgrade`: no list to build then.
    let names_others = connection_tokens(headers).any(|token| {
        !["keep-alive", "close", "upgrade"]
            .iter()
            .any(|t| token.eq_ignore_ascii_case(t))
    });
    if names_others {
        let named: Vec<HeaderName> = connection_tokens(headers)
            .filter_map(|name| HeaderName::from_bytes(name.as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
    let te_is_trailers = headers
        .get(header::TE)
        .is_some_and(|te| te.as_bytes().eq_ignore_ascii_case(b"trailers"));
    if !te_is_trailers {
        headers.remove(header::TE);
    }
}

/// The comma-separated tokens of every `Connection` header.
fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .filter(|token| !token.is_empty())
}

fn set_upgrade(headers: &mut HeaderMap, protocol: HeaderValue) {
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, protocol);
}

/// Appends this hop to `X-Forwarded-For`, `-Proto` and `-Host`, after any values already there.
fn add_forwarded(headers: &mut HeaderMap, remote: SocketAddr, host: Option<&HeaderValue>) {
    append_list(headers, &X_FORWARDED_FOR, |list| {
        // Writing into a Vec cannot fail.
        let _ = write!(list, "{}", remote.ip().to_canonical());
    });
    append_list(headers, &X_FORWARDED_PROTO, |list| {
        list.extend_from_slice(b"http")
    });
    if let Some(host) = host {
        append_list(headers, &X_FORWARDED_HOST, |list| {
            list.extend_from_slice(host.as_bytes())
        });
    }
}

fn append_list(headers: &mut HeaderMap, name: &HeaderName, write_value: impl FnOnce(&mut Vec<u8>)) {
    let mut list = Vec::with_capacity(64);
    for existing in headers.get_all(name) {
        list.extend_from_slice(existing.as_bytes());
        list.extend_from_slice(b", ");
    }
    write_value(&mut list);
    if let Ok(value) = HeaderValue::from_maybe_shared(Bytes::from(list)) {
        headers.insert(name, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    #[test]
    fn hop_by_hop_headers_and_those_named_in_connection_are_removed() {
        let mut map = headers(&[
            ("connection", "keep-alive, x-secret"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("transfer-encoding", "chunked"),
            ("te", "gzip"),
            ("proxy-authorization", "basic x"),
            ("x-kept", "yes"),
        ]);
        remove_hop_by_hop(&mut map);
        assert_eq!(map.len(), 1, "{map:?}");
        assert_eq!(map["x-kept"], "yes");

        let mut map = headers(&[("te", "trailers")]);
        remove_hop_by_hop(&mut map);
        assert_eq!(map["te"], "trailers");
    }

    #[test]
    fn forwarded_headers_are_appended() {
        let mut map = headers(&[
            ("x-forwarded-for", "10.0.0.1"),
            ("x-forwarded-proto", "https"),
        ]);
        let host = HeaderValue::from_static("example.com");
        add_forwarded(
            &mut map,
            "[::ffff:127.0.0.2]:5000".parse().unwrap(),
            Some(&host),
        );
        assert_eq!(map["x-forwarded-for"], "10.0.0.1, 127.0.0.2");
        assert_eq!(map["x-forwarded-proto"], "https, http");
        assert_eq!(map["x-forwarded-host"], "example.com");
    }

    #[test]
    fn upgrade_needs_both_headers() {
        let map = headers(&[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "websocket"),
        ]);
        assert_eq!(upgrade_protocol(&map).unwrap(), "websocket");
        assert!(upgrade_protocol(&headers(&[("upgrade", "websocket")])).is_none());
        assert!(upgrade_protocol(&headers(&[("connection", "upgrade")])).is_none());
    }

    #[test]
    fn requests_keep_their_host_and_ask_for_the_upgrade_again() {
        let req = http::Request::get("http://example.com/x")
            .version(Version::HTTP_2)
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .body(())
            .unwrap();
        let (mut parts, ()) = req.into_parts();
        let upgrade = upgrade_protocol(&parts.headers);
        to_backend(
            &mut parts,
            "127.0.0.1:1".parse().unwrap(),
            upgrade.as_ref(),
            "127.0.0.1:8080",
        );
        assert_eq!(parts.headers["host"], "example.com");
        assert_eq!(parts.headers["x-forwarded-host"], "example.com");
        assert_eq!(parts.headers["upgrade"], "websocket");
        assert_eq!(parts.headers["connection"], "upgrade");
    }

    #[test]
    fn only_http1_responses_get_connection_close_and_never_a_101() {
        let mut map = HeaderMap::new();
        close_when_shutting_down(Version::HTTP_11, false, StatusCode::OK, &mut map);
        assert!(map.is_empty());
        close_when_shutting_down(Version::HTTP_2, true, StatusCode::OK, &mut map);
        assert!(map.is_empty());
        close_when_shutting_down(
            Version::HTTP_11,
            true,
            StatusCode::SWITCHING_PROTOCOLS,
            &mut map,
        );
        assert!(map.is_empty());
        close_when_shutting_down(Version::HTTP_11, true, StatusCode::OK, &mut map);
        assert_eq!(map["connection"], "close");
    }
}
