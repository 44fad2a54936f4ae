//! Every header rule, in one place: what a request head must satisfy to be forwarded at all
//! ([`check_request`], [`ClientError`]), hop-by-hop headers (RFC 9110 §7.6.1) removed in both
//! directions, `Upgrade` carried across, `Host` kept, `X-Forwarded-*` appended, and
//! `Connection: close` on HTTP/1.1 responses once shutdown has begun.

use std::cell::RefCell;
use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};

use bytes::Bytes;
use http::header::{self, Entry, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, Scheme};
use http::Request;
use http::{StatusCode, Version};

/// Headers that describe one connection, not the message. (`Trailer` is not one: it says which
/// trailer fields follow, end to end, RFC 9110 §6.6.2.)
const HOPS: usize = 7;
/// `Connection` first: the headers it names go too.
const HOP_BY_HOP: [HeaderName; HOPS] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// The longest request line accepted, CRLF included (nginx's `large_client_header_buffers`
/// buffer size); a longer one is answered 414.
pub const REQUEST_LINE_MAX: usize = 8 * 1024;

/// The most header fields a request head may carry (hyper's limit, and HAProxy's
/// `tune.http.maxhdr`); more are answered 431.
pub const MAX_HEADERS: usize = 100;

/// A request refused at the edge, before anything reaches the backend. Always the client's
/// fault, so always a 4xx; its body names it with two short, stable codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    #[error("more than one Host header")]
    DuplicateHost,
    #[error("the request target's authority and the Host header disagree")]
    HostMismatch,
    #[error("an HTTP/1.1 request without a Host header")]
    MissingHost,
    #[error("a Host header that is not host[:port]")]
    InvalidHost,
    #[error("a request line longer than {REQUEST_LINE_MAX} bytes")]
    RequestLineTooLong,
    #[error("a request head larger than --max-header-size")]
    HeadTooLarge,
    #[error("more than {MAX_HEADERS} header fields")]
    TooManyHeaders,
    #[error("both Content-Length and Transfer-Encoding")]
    LengthAndTransferEncoding,
    #[error("a Content-Length that is not one number")]
    InvalidContentLength,
    #[error("more than one Content-Length header")]
    DuplicateContentLength,
    #[error("a transfer coding other than chunked alone")]
    UnsupportedTransferCoding,
    #[error("a header line folded onto the next (obs-fold)")]
    LineFolding,
    #[error("a control character in the request head")]
    ControlCharacter,
    #[error("the request head was not complete within --header-read-timeout")]
    HeadTimeout,
}

impl ClientError {
    pub fn status(self) -> StatusCode {
        match self {
            ClientError::RequestLineTooLong => StatusCode::URI_TOO_LONG,
            ClientError::HeadTooLarge | ClientError::TooManyHeaders => {
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
            }
            ClientError::HeadTimeout => StatusCode::REQUEST_TIMEOUT,
            _ => StatusCode::BAD_REQUEST,
        }
    }

    /// The body's `error`: what the status means.
    pub fn error(self) -> &'static str {
        match self.status() {
            StatusCode::URI_TOO_LONG => "uri_too_long",
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => "header_too_large",
            StatusCode::REQUEST_TIMEOUT => "request_timeout",
            _ => "bad_request",
        }
    }

    /// The body's `detail`: which rule the request broke.
    pub fn code(self) -> &'static str {
        match self {
            ClientError::DuplicateHost => "duplicate_host",
            ClientError::HostMismatch => "host_mismatch",
            ClientError::MissingHost => "missing_host",
            ClientError::InvalidHost => "invalid_host",
            ClientError::RequestLineTooLong => "request_line_too_long",
            ClientError::HeadTooLarge => "header_section_too_large",
            ClientError::TooManyHeaders => "too_many_headers",
            ClientError::LengthAndTransferEncoding => "content_length_with_transfer_encoding",
            ClientError::InvalidContentLength => "invalid_content_length",
            ClientError::DuplicateContentLength => "duplicate_content_length",
            ClientError::UnsupportedTransferCoding => "unsupported_transfer_coding",
            ClientError::LineFolding => "obsolete_line_folding",
            ClientError::ControlCharacter => "control_character",
            ClientError::HeadTimeout => "header_read_timeout",
        }
    }

    /// The JSON body: `{"error":"<code>","detail":"<code>"}`.
    pub fn body(self) -> String {
        format!(
            r#"{{"error":"{}","detail":"{}"}}"#,
            self.error(),
            self.code()
        )
    }
}

/// The rules a parsed request head must satisfy before lameduck answers or forwards it, beyond
/// what hyper's parser already enforces (RFC 9112 §3.2, §6.1, RFC 9113 §8.3.1): exactly one
/// valid `Host` (none only in HTTP/1.0, or with an absolute-form target), agreeing with the
/// target's authority; a request line within [`REQUEST_LINE_MAX`]; no transfer coding but
/// `chunked` alone (lameduck would forward a body still encoded with it, unannounced). The
/// rules that need the raw bytes (the head's size, obs-fold, `Content-Length` beside
/// `Transfer-Encoding`, which hyper resolves by itself) are checked before, by the server, which
/// sees them (`server::edge`); the ones it shares with this are checked here again for the heads
/// it could not scan whole.
pub fn check_request<B>(req: &Request<B>) -> Result<(), ClientError> {
    let uri = req.uri();
    // HTTP/1 carries the target as written; an HTTP/2 `:path` is the path and query alone.
    let target_len = match (req.version() < Version::HTTP_2, uri.scheme()) {
        (true, Some(_)) => uri.to_string().len(),
        _ => uri.path_and_query().map_or(1, |p| p.as_str().len()),
    };
    let line_len = req.method().as_str().len() + 1 + target_len + " HTTP/1.1\r\n".len();
    if line_len > REQUEST_LINE_MAX {
        return Err(ClientError::RequestLineTooLong);
    }

    let mut codings = req.headers().get_all(header::TRANSFER_ENCODING).iter();
    match (codings.next(), codings.next()) {
        (None, _) => {}
        (Some(coding), None) if is_chunked_alone(coding.as_bytes()) => {}
        _ => return Err(ClientError::UnsupportedTransferCoding),
    }

    let mut hosts = req.headers().get_all(header::HOST).iter();
    let Some(host) = hosts.next() else {
        // HTTP/1.0 predates Host; HTTP/2 has `:authority`.
        let required = req.version() == Version::HTTP_11 && uri.authority().is_none();
        return if required {
            Err(ClientError::MissingHost)
        } else {
            Ok(())
        };
    };
    if hosts.next().is_some() {
        return Err(ClientError::DuplicateHost);
    }
    let host = Authority::try_from(host.as_bytes())
        .ok()
        .filter(is_host_and_port)
        .ok_or(ClientError::InvalidHost)?;
    match uri.authority() {
        Some(target) if !same_origin(target, &host, uri.scheme()) => Err(ClientError::HostMismatch),
        _ => Ok(()),
    }
}

/// A `Transfer-Encoding` value that is `chunked` and nothing else.
pub fn is_chunked_alone(value: &[u8]) -> bool {
    value.trim_ascii().eq_ignore_ascii_case(b"chunked")
}

/// `host[:port]` and nothing else: no user info, a port of digits only. The host ends where
/// `Authority::host` ends it (at the first `:`, or after the `]` of an IPv6 literal), found in
/// one pass over the bytes rather than its string searches.
fn is_host_and_port(authority: &Authority) -> bool {
    is_host_and_port_text(authority.as_str().as_bytes())
}

/// Whether a raw `Host` value is plainly valid: `host[:port]` of letters, digits, `.-_~`, and
/// brackets around an IPv6 literal, as nearly every client sends. False says only "not plainly":
/// [`check_request`] then decides, on the parsed head.
pub fn is_plain_host(value: &[u8]) -> bool {
    !value.is_empty()
        && value.iter().all(|&byte| {
            byte.is_ascii_alphanumeric()
                || matches!(byte, b'.' | b'-' | b'_' | b'~' | b':' | b'[' | b']')
        })
        && is_host_and_port_text(value)
}

fn is_host_and_port_text(text: &[u8]) -> bool {
    // User info: the host would start after it.
    if text.contains(&b'@') {
        return false;
    }
    let host_end = if text.first() == Some(&b'[') {
        match text.iter().position(|&byte| byte == b']') {
            Some(end) => end + 1,
            None => return false,
        }
    } else {
        text.iter()
            .position(|&byte| byte == b':')
            .unwrap_or(text.len())
    };
    match &text[host_end..] {
        [] => true,
        [b':', digits @ ..] => {
            !digits.is_empty()
                && digits
                    .iter()
                    .try_fold(0u16, |port, &digit| {
                        digit.is_ascii_digit().then_some(())?;
                        port.checked_mul(10)?.checked_add(u16::from(digit - b'0'))
                    })
                    .is_some()
        }
        _ => false,
    }
}

/// Whether two authorities name the same server: hosts compared without regard to case, and a
/// missing port taken as the scheme's default.
fn same_origin(a: &Authority, b: &Authority, scheme: Option<&Scheme>) -> bool {
    let default_port = if scheme == Some(&Scheme::HTTPS) {
        443
    } else {
        80
    };
    a.host().eq_ignore_ascii_case(b.host())
        && a.port_u16().unwrap_or(default_port) == b.port_u16().unwrap_or(default_port)
}

/// The protocol a request asks to upgrade to: `Connection` includes `upgrade` and `Upgrade` is
/// set (both are needed, RFC 9110 §7.8).
pub fn upgrade_protocol(headers: &HeaderMap) -> Option<HeaderValue> {
    // `Upgrade` first: one lookup settles the common case, no tokens to split.
    let protocol = headers.get(header::UPGRADE)?;
    connection_tokens(headers)
        .any(|token| token.eq_ignore_ascii_case(b"upgrade"))
        .then(|| protocol.clone())
}

/// Rewrites a client's request head for the backend: hop-by-hop headers go, `Host` stays (an
/// HTTP/2 client's `:authority` becomes it, else `fallback_host`), an upgrade is asked for
/// again, and this hop is appended to `X-Forwarded-*`.
///
/// The request is rewritten where it is, not taken apart and put together again: a request head
/// is a large value, and each move of it is a copy.
pub fn to_backend<B>(
    req: &mut Request<B>,
    remote: SocketAddr,
    upgrade: Option<&HeaderValue>,
    fallback_host: &str,
) {
    let from_header = req.headers().get(header::HOST).cloned();
    let had_host = from_header.is_some();
    let host = from_header.or_else(|| {
        let authority = req.uri().authority()?;
        HeaderValue::from_str(authority.as_str()).ok()
    });
    let headers = req.headers_mut();
    let named_removed = remove_hop_by_hop(headers);
    // Only a `Connection` header naming `Host` can have taken it away.
    if !had_host || (named_removed && !headers.contains_key(header::HOST)) {
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

/// The head [`to_backend`] makes of `req` (one that asks for no upgrade), given field by field
/// without changing `req`: `field(name, value)` for each, the value the concatenation of its
/// parts. A request head is written out once this way, where rewriting its map first and then
/// writing it out walked it twice and moved its fields around. Returns false, having given
/// nothing, for a head that cannot be rewritten in passing (a `Connection` header naming other
/// headers): [`to_backend`] it first, then it can.
pub fn visit_for_backend<B>(
    req: &Request<B>,
    remote: SocketAddr,
    fallback_host: &str,
    field: impl FnMut(&[u8], &[&[u8]]),
) -> bool {
    let fields = || {
        req.headers()
            .iter()
            .map(|(name, value)| (name.as_str().as_bytes(), value.as_bytes()))
    };
    let authority = req
        .uri()
        .authority()
        .map(|authority| authority.as_str().as_bytes());
    visit_fields_for_backend(fields, authority, remote, fallback_host, field)
}

/// [`visit_for_backend`] for a head given as its fields (`fields()` walks them; names in any
/// case, as a client sent them) and its target's authority, if any.
pub fn visit_fields_for_backend<'a, I: Iterator<Item = (&'a [u8], &'a [u8])>>(
    fields: impl Fn() -> I,
    authority: Option<&[u8]>,
    remote: SocketAddr,
    fallback_host: &str,
    mut field: impl FnMut(&[u8], &[&[u8]]),
) -> bool {
    let mut connection = false;
    let mut forwarded = [false; 3];
    let mut host_header = None;
    // A first pass (no output yet), to refuse before giving anything.
    for (name, value) in fields() {
        match hop_index_of(name) {
            Some(0) => connection |= connection_names(value).next().is_some(),
            Some(_) => {}
            None if host_header.is_none() && name.eq_ignore_ascii_case(b"host") => {
                host_header = Some(value);
            }
            None => {}
        }
    }
    if connection {
        return false;
    }
    for (name, value) in fields() {
        match hop_index_of(name) {
            Some(HOPS) if value.eq_ignore_ascii_case(b"trailers") => {}
            Some(_) => continue,
            None => {}
        }
        if let Some(index) = forwarded_index(name) {
            forwarded[index] = true;
            continue;
        }
        field(name, &[value]);
    }
    let host = host_header.or(authority);
    if host_header.is_none() {
        field(b"host", &[host.unwrap_or(fallback_host.as_bytes())]);
    }
    let ip = forwarded_for(remote.ip().to_canonical());
    let hop: [Option<&[u8]>; 3] = [ip.as_ref().map(HeaderValue::as_bytes), Some(b"http"), host];
    for (index, name) in [&X_FORWARDED_FOR, &X_FORWARDED_PROTO, &X_FORWARDED_HOST]
        .into_iter()
        .enumerate()
    {
        let Some(this_hop) = hop[index] else {
            continue;
        };
        let name = name.as_str().as_bytes();
        if !forwarded[index] {
            field(name, &[this_hop]);
            continue;
        }
        let mut list = Vec::with_capacity(64);
        for (_, existing) in fields().filter(|(other, _)| other.eq_ignore_ascii_case(name)) {
            list.extend_from_slice(existing);
            list.extend_from_slice(b", ");
        }
        list.extend_from_slice(this_hop);
        field(name, &[&list]);
    }
    true
}

/// Where a header name (in any case) is among the `X-Forwarded-*` this hop appends to.
fn forwarded_index(name: &[u8]) -> Option<usize> {
    if name.len() < 15 || !name[..12].eq_ignore_ascii_case(b"x-forwarded-") {
        return None;
    }
    let rest = &name[12..];
    [&b"for"[..], b"proto", b"host"]
        .iter()
        .position(|suffix| rest.eq_ignore_ascii_case(suffix))
}

/// Whether a response field, as it came (its name in any case), goes no further than this hop:
/// what [`to_client`] removes, but the headers a `Connection` header names (see
/// [`connection_names`]).
pub fn is_hop_by_hop(name: &[u8], value: &[u8]) -> bool {
    match hop_index_of(name) {
        Some(HOPS) => !value.eq_ignore_ascii_case(b"trailers"),
        Some(_) => true,
        None => false,
    }
}

/// The header names a `Connection` value names (beside `keep-alive`, `close`, `upgrade`), which
/// go no further than this hop either.
pub fn connection_names(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&byte| byte == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|token| !token.is_empty() && !is_usual_connection_token(token))
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

/// Where a header name is in [`HOP_BY_HOP`], or [`HOPS`] for `TE`: one string match (a jump on
/// the length, then one comparison at most) rather than a comparison with each name.
fn hop_index(name: &HeaderName) -> Option<usize> {
    hop_index_of(name.as_str().as_bytes())
}

/// [`hop_index`] for a name in any case, as a client sent it.
fn hop_index_of(name: &[u8]) -> Option<usize> {
    // Most names are none of these: the length alone tells, without a comparison.
    if !matches!(name.len(), 2 | 7 | 10 | 16 | 17 | 18 | 19) {
        return None;
    }
    let mut lower = [0u8; 19];
    let lower = &mut lower[..name.len()];
    for (slot, byte) in lower.iter_mut().zip(name) {
        *slot = byte.to_ascii_lowercase();
    }
    let index = match &*lower {
        b"connection" => 0,
        b"keep-alive" => 1,
        b"proxy-connection" => 2,
        b"proxy-authenticate" => 3,
        b"proxy-authorization" => 4,
        b"transfer-encoding" => 5,
        b"upgrade" => 6,
        b"te" => HOPS,
        _ => return None,
    };
    Some(index)
}

/// Removes hop-by-hop headers and every header the `Connection` header names. `TE: trailers` is
/// kept: it is how gRPC clients say they accept trailers, and it holds end to end. Returns
/// whether the `Connection` header named others, which were removed too.
fn remove_hop_by_hop(headers: &mut HeaderMap) -> bool {
    // Which of them are there, from one look at each name rather than a hashed lookup per
    // hop-by-hop name: most heads have none, or only `Connection`.
    let mut present = [false; HOPS + 1];
    // Every `Connection` line is one of the usual tokens alone (most are): no token to split.
    let mut usual_connection = true;
    for (name, value) in headers.iter() {
        if let Some(index) = hop_index(name) {
            present[index] = true;
            if index == 0 && usual_connection {
                usual_connection = is_usual_connection_token(value.as_bytes().trim_ascii());
            }
        }
    }
    let te = present[HOPS];
    // Most clients name only `keep-alive`, `close` or `upgrade`: no list to build then.
    let names_others = present[0]
        && !usual_connection
        && connection_tokens(headers).any(|token| !is_usual_connection_token(token));
    if names_others {
        let named: Vec<HeaderName> = connection_tokens(headers)
            .filter_map(|name| HeaderName::from_bytes(name).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for (name, present) in HOP_BY_HOP.iter().zip(present) {
        if present {
            headers.remove(name);
        }
    }
    let te_is_trailers = || {
        headers
            .get(header::TE)
            .is_some_and(|te| te.as_bytes().eq_ignore_ascii_case(b"trailers"))
    };
    if te && !te_is_trailers() {
        headers.remove(header::TE);
    }
    names_others
}

/// `keep-alive`, `close` or `upgrade`: the tokens of `Connection` that name no header.
fn is_usual_connection_token(token: &[u8]) -> bool {
    [&b"keep-alive"[..], b"close", b"upgrade"]
        .iter()
        .any(|usual| token.eq_ignore_ascii_case(usual))
}

/// The comma-separated tokens of every `Connection` header (each visible ASCII, as a value
/// must be to count: one with other bytes is passed over whole).
fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &[u8]> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.as_bytes().split(|&byte| byte == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|token| !token.is_empty())
}

fn set_upgrade(headers: &mut HeaderMap, protocol: HeaderValue) {
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, protocol);
}

/// Appends this hop to `X-Forwarded-For`, `-Proto` and `-Host`, after any values already there.
fn add_forwarded(headers: &mut HeaderMap, remote: SocketAddr, host: Option<&HeaderValue>) {
    append_list(headers, &X_FORWARDED_FOR, || {
        forwarded_for(remote.ip().to_canonical())
    });
    append_list(headers, &X_FORWARDED_PROTO, || {
        Some(HeaderValue::from_static("http"))
    });
    if let Some(host) = host {
        append_list(headers, &X_FORWARDED_HOST, || Some(host.clone()));
    }
}

/// `ip` as an `X-Forwarded-For` value. The last one is kept on each thread: a sidecar's clients
/// are most often one address (the platform's proxy in front), and a kept value costs a
/// reference count per request where writing it out costs an allocation and its formatting.
fn forwarded_for(ip: IpAddr) -> Option<HeaderValue> {
    thread_local! {
        static LAST: RefCell<Option<(IpAddr, HeaderValue)>> = const { RefCell::new(None) };
    }
    LAST.with(|last| {
        let mut last = last.borrow_mut();
        match &*last {
            Some((kept, value)) if *kept == ip => Some(value.clone()),
            _ => {
                let value = format_ip(ip)?;
                *last = Some((ip, value.clone()));
                Some(value)
            }
        }
    })
}

fn format_ip(ip: IpAddr) -> Option<HeaderValue> {
    let mut text = Vec::with_capacity(39);
    match ip {
        // By hand: `Display` goes through the formatting machinery, ten times the work.
        IpAddr::V4(ip) => {
            for (i, octet) in ip.octets().into_iter().enumerate() {
                if i > 0 {
                    text.push(b'.');
                }
                push_decimal(&mut text, octet);
            }
        }
        // Writing into a Vec cannot fail.
        IpAddr::V6(_) => {
            let _ = write!(text, "{ip}");
        }
    }
    HeaderValue::from_maybe_shared(Bytes::from(text)).ok()
}

/// Appends `byte`'s decimal digits to `text`.
fn push_decimal(text: &mut Vec<u8>, byte: u8) {
    if byte >= 100 {
        text.push(b'0' + byte / 100);
    }
    if byte >= 10 {
        text.push(b'0' + byte / 10 % 10);
    }
    text.push(b'0' + byte % 10);
}

/// Appends `value` to the list header `name`: set to it alone when the client sent none (no
/// copy of the existing values to make, most often). One lookup either way.
fn append_list(
    headers: &mut HeaderMap,
    name: &HeaderName,
    value: impl FnOnce() -> Option<HeaderValue>,
) {
    let Some(value) = value() else {
        return;
    };
    match headers.entry(name) {
        Entry::Vacant(slot) => {
            slot.insert(value);
        }
        Entry::Occupied(mut slot) => {
            let mut list = Vec::with_capacity(64);
            for existing in slot.iter() {
                list.extend_from_slice(existing.as_bytes());
                list.extend_from_slice(b", ");
            }
            list.extend_from_slice(value.as_bytes());
            if let Ok(value) = HeaderValue::from_maybe_shared(Bytes::from(list)) {
                // Replaces every earlier line of the header.
                slot.insert(value);
            }
        }
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

        for (index, name) in HOP_BY_HOP.iter().enumerate() {
            assert_eq!(hop_index(name), Some(index), "{name}");
        }
        assert_eq!(hop_index(&header::TE), Some(HOPS));
        assert_eq!(hop_index(&header::HOST), None);
    }

    /// `is_host_and_port` as first written, with `Authority::host`: the reference.
    #[test]
    fn host_and_port_agrees_with_authority_host() {
        let reference = |authority: &Authority| {
            let text = authority.as_str();
            let Some(port) = text.strip_prefix(authority.host()) else {
                return false;
            };
            match port.strip_prefix(':') {
                None => port.is_empty(),
                Some(digits) => {
                    digits.parse::<u16>().is_ok() && digits.bytes().all(|b| b.is_ascii_digit())
                }
            }
        };
        let hosts = [
            "a",
            "a:",
            "a:1",
            "a:65535",
            "a:65536",
            "a:00080",
            "a:+80",
            "a:8x",
            "u@a",
            "u@a:1",
            "a:1@b",
            "[::1]",
            "[::1]:80",
            "[::1]:",
            "[::1]:x",
            "127.0.0.1:8080",
            "a:1:2",
            "A.B",
            "a:0000000000080",
            "a:99999",
            "[fe80::1%25eth0]:1",
        ];
        for host in hosts {
            if let Ok(authority) = Authority::try_from(host) {
                assert_eq!(
                    is_host_and_port(&authority),
                    reference(&authority),
                    "{host}"
                );
            }
        }
    }

    fn request(version: Version, target: &str, hosts: &[&str]) -> Request<()> {
        let mut req = Request::get(target).version(version);
        for host in hosts {
            req = req.header("host", *host);
        }
        req.body(()).unwrap()
    }

    #[test]
    fn requests_need_exactly_one_host_that_agrees_with_the_target() {
        use ClientError::*;
        let check =
            |version, target, hosts: &[&str]| check_request(&request(version, target, hosts));
        let v11 = Version::HTTP_11;
        assert_eq!(check(v11, "/", &["example.com"]), Ok(()));
        assert_eq!(check(v11, "/", &["[::1]:8000"]), Ok(()));
        assert_eq!(check(v11, "/", &["a", "a"]), Err(DuplicateHost));
        assert_eq!(check(v11, "/", &["a", "b"]), Err(DuplicateHost));
        assert_eq!(check(v11, "/", &[]), Err(MissingHost));
        assert_eq!(check(Version::HTTP_10, "/", &[]), Ok(()));
        assert_eq!(check(v11, "http://a/x", &[]), Ok(()));
        assert_eq!(check(v11, "http://a/x", &["A"]), Ok(()));
        assert_eq!(check(v11, "http://a/x", &["a:80"]), Ok(()));
        assert_eq!(check(v11, "https://a/x", &["a:443"]), Ok(()));
        assert_eq!(check(v11, "http://a/x", &["b"]), Err(HostMismatch));
        assert_eq!(check(v11, "http://a:8080/x", &["a"]), Err(HostMismatch));
        for bad in [
            "", "a b", "a/b", "user@a", "a:port", "a:+80", "a:70000", "a:80:80",
        ] {
            assert_eq!(check(v11, "/", &[bad]), Err(InvalidHost), "{bad:?}");
        }
        // HTTP/2: `:authority` against `host`, when a client sends both.
        let v2 = Version::HTTP_2;
        assert_eq!(check(v2, "http://a/x", &[]), Ok(()));
        assert_eq!(check(v2, "http://a/x", &["a"]), Ok(()));
        assert_eq!(check(v2, "http://a/x", &["b"]), Err(HostMismatch));
    }

    #[test]
    fn chunked_is_the_only_transfer_coding() {
        let with = |codings: &[&str]| {
            let mut req = Request::post("/").header("host", "a");
            for coding in codings {
                req = req.header("transfer-encoding", *coding);
            }
            check_request(&req.body(()).unwrap())
        };
        assert_eq!(with(&["chunked"]), Ok(()));
        assert_eq!(with(&[" Chunked "]), Ok(()));
        for bad in [
            &["gzip, chunked"][..],
            &["gzip"],
            &["chunked", "chunked"],
            &["identity"],
        ] {
            assert_eq!(
                with(bad),
                Err(ClientError::UnsupportedTransferCoding),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn request_lines_over_8_kib_are_refused() {
        // `GET /aaa…a HTTP/1.1\r\n`, 8 KiB exactly.
        let fits = format!(
            "/{}",
            "a".repeat(REQUEST_LINE_MAX - "GET / HTTP/1.1\r\n".len())
        );
        assert_eq!(
            check_request(&request(Version::HTTP_11, &fits, &["a"])),
            Ok(())
        );
        let over = format!("{fits}a");
        assert_eq!(
            check_request(&request(Version::HTTP_11, &over, &["a"])),
            Err(ClientError::RequestLineTooLong)
        );
        let over = format!("http://a{over}");
        assert_eq!(
            check_request(&request(Version::HTTP_2, &over, &[])),
            Err(ClientError::RequestLineTooLong)
        );
    }

    #[test]
    fn client_errors_are_4xx_with_stable_codes() {
        use ClientError::*;
        let all = [
            DuplicateHost,
            HostMismatch,
            MissingHost,
            InvalidHost,
            RequestLineTooLong,
            HeadTooLarge,
            TooManyHeaders,
            LengthAndTransferEncoding,
            InvalidContentLength,
            DuplicateContentLength,
            UnsupportedTransferCoding,
            LineFolding,
            ControlCharacter,
            HeadTimeout,
        ];
        for err in all {
            assert!(err.status().is_client_error(), "{err:?}");
            let body: serde_json::Value = serde_json::from_str(&err.body()).unwrap();
            assert_eq!(body["error"], err.error());
            assert_eq!(body["detail"], err.code());
        }
        assert_eq!(RequestLineTooLong.status(), StatusCode::URI_TOO_LONG);
        assert_eq!(
            HeadTimeout.body(),
            r#"{"error":"request_timeout","detail":"header_read_timeout"}"#
        );
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

        for ip in [
            "0.9.10.99",
            "100.199.200.255",
            "1.0.0.1",
            "::1",
            "fe80::1:2",
        ] {
            let mut map = HeaderMap::new();
            let remote = SocketAddr::new(ip.parse().unwrap(), 1);
            add_forwarded(&mut map, remote, None);
            assert_eq!(map["x-forwarded-for"], ip);
        }
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
        let mut req = http::Request::get("http://example.com/x")
            .version(Version::HTTP_2)
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .body(())
            .unwrap();
        let upgrade = upgrade_protocol(req.headers());
        to_backend(
            &mut req,
            "127.0.0.1:1".parse().unwrap(),
            upgrade.as_ref(),
            "127.0.0.1:8080",
        );
        let headers = req.headers();
        assert_eq!(headers["host"], "example.com");
        assert_eq!(headers["x-forwarded-host"], "example.com");
        assert_eq!(headers["upgrade"], "websocket");
        assert_eq!(headers["connection"], "upgrade");
    }

    /// The head written out in passing is the head `to_backend` makes, field for field (values
    /// of one name joined as a list), for every kind of head it takes.
    #[test]
    fn a_head_rewritten_in_passing_is_the_head_rewritten_in_its_map() {
        let heads: &[(&str, &[(&str, &str)])] = &[
            ("/", &[("host", "a.example"), ("user-agent", "x")]),
            (
                "/",
                &[
                    ("host", "a"),
                    ("connection", "keep-alive"),
                    ("keep-alive", "5"),
                ],
            ),
            (
                "/",
                &[
                    ("host", "a"),
                    ("te", "trailers"),
                    ("trailer", "x"),
                    ("upgrade", "h2c"),
                ],
            ),
            (
                "/",
                &[("host", "a"), ("te", "gzip"), ("proxy-authorization", "p")],
            ),
            (
                "/",
                &[
                    ("host", "a"),
                    ("x-forwarded-for", "10.0.0.1"),
                    ("x-forwarded-for", "10.0.0.2"),
                ],
            ),
            (
                "/",
                &[
                    ("host", "a"),
                    ("x-forwarded-proto", "https"),
                    ("x-forwarded-host", "b"),
                ],
            ),
            ("http://c.example:81/p", &[]),
            ("/", &[]),
            (
                "/",
                &[
                    ("host", "a"),
                    ("transfer-encoding", "chunked"),
                    ("content-length", "1"),
                ],
            ),
        ];
        let remote: SocketAddr = "[::ffff:10.1.2.3]:9".parse().unwrap();
        for (target, fields) in heads {
            let mut req = http::Request::get(*target).body(()).unwrap();
            for (name, value) in *fields {
                req.headers_mut().append(
                    HeaderName::from_bytes(name.as_bytes()).unwrap(),
                    HeaderValue::from_str(value).unwrap(),
                );
            }
            let mut visited: Vec<(String, String)> = Vec::new();
            let given = visit_for_backend(&req, remote, "up:1", |name, value| {
                let value: Vec<u8> = value.concat();
                visited.push((
                    String::from_utf8(name.to_vec()).unwrap(),
                    String::from_utf8(value).unwrap(),
                ));
            });
            assert!(given, "{fields:?}");
            to_backend(&mut req, remote, None, "up:1");
            let mut rewritten: Vec<(String, String)> = Vec::new();
            for name in req.headers().keys() {
                let values: Vec<&str> = req
                    .headers()
                    .get_all(name)
                    .iter()
                    .map(|v| v.to_str().unwrap())
                    .collect();
                rewritten.push((name.to_string(), values.join(", ")));
            }
            let mut joined: Vec<(String, String)> = Vec::new();
            for (name, value) in visited {
                match joined.iter_mut().find(|(seen, _)| *seen == name) {
                    Some((_, values)) => *values = format!("{values}, {value}"),
                    None => joined.push((name, value)),
                }
            }
            joined.sort();
            rewritten.sort();
            assert_eq!(joined, rewritten, "{target} {fields:?}");
        }

        let named = http::Request::get("/")
            .header("host", "a")
            .header("connection", "close, x-secret")
            .body(())
            .unwrap();
        assert!(!visit_for_backend(&named, remote, "up:1", |_, _| panic!(
            "given a field"
        )));
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
