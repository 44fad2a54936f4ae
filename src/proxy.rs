//! The request path: lameduck's own endpoints, forwarding to the backend, the header rules, and
//! every error response.

use std::convert::Infallible;
use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{PathAndQuery, Scheme, Uri};
use http::{Method, Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tracing::{debug, warn};

use crate::body::{Announced, ResponseBody};
use crate::config::{Config, Protocol, Upstream};
use crate::readiness::{Admission, Ending, InFlight, State};
use crate::telemetry::Telemetry;
use crate::tunnel;
use crate::upstream::{self, Affinity, Link};

/// Idle upstream connections are dropped before typical backends (Node, uvicorn: 5 s) would close
/// them, so a request is never written onto a connection the backend is closing.
const UPSTREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(3);
const UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const RETRY_AFTER_SECS: &str = "1";

/// Forwards requests to the backend and answers lameduck's own endpoints.
#[derive(Debug)]
pub struct Proxy {
    state: Arc<State>,
    telemetry: Arc<Telemetry>,
    client: Client<HttpConnector, Incoming>,
    /// With `--upstream-protocol http2`, upgrades (WebSockets) still need HTTP/1.1: HTTP/2 has no
    /// `Upgrade`. `None` when `client` already speaks HTTP/1.1.
    upgrade_client: Option<Client<HttpConnector, Incoming>>,
    upstream: Upstream,
    ready_path: String,
    health_path: String,
    metrics_path: Option<String>,
    upstream_version: Version,
    sse_shutdown_event: bool,
    startup_timeout: Duration,
    queue_timeout: Duration,
}

impl Proxy {
    pub fn new(config: &Config, state: Arc<State>, telemetry: Arc<Telemetry>) -> Proxy {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(UPSTREAM_CONNECT_TIMEOUT));
        let mut client = Client::builder(TokioExecutor::new());
        client
            .pool_idle_timeout(UPSTREAM_IDLE_TIMEOUT)
            .pool_timer(hyper_util::rt::TokioTimer::new());
        let (upstream_version, upgrade_client) = match config.upstream_protocol {
            Protocol::Http1 => (Version::HTTP_11, None),
            Protocol::Http2 => {
                let upgrade_client = client.build(connector.clone());
                client.http2_only(true);
                (Version::HTTP_2, Some(upgrade_client))
            }
        };
        let client = client.build(connector);
        Proxy {
            state,
            telemetry,
            client,
            upgrade_client,
            upstream: config.upstream.clone(),
            ready_path: config.ready_path.clone(),
            health_path: config.health_path.clone(),
            metrics_path: config.metrics_path.clone(),
            upstream_version,
            sse_shutdown_event: config.sse_shutdown_event,
            startup_timeout: config.startup_timeout,
            queue_timeout: config.queue_timeout,
        }
    }

    /// Answers one request from a client at `remote`. Never fails: every problem becomes a response.
    /// `affinity`: the backend connection kept by the client connection this request came on.
    pub async fn handle(
        &self,
        req: Request<Incoming>,
        remote: SocketAddr,
        affinity: &Arc<Affinity>,
    ) -> Result<Response<ResponseBody>, Infallible> {
        let path = req.uri().path();
        if path == self.ready_path {
            let (status, body) = self.state.readiness();
            return Ok(probe(req.method(), status, body));
        }
        if path == self.health_path {
            let (status, body) = self.state.health();
            return Ok(probe(req.method(), status, body));
        }
        if self.metrics_path.as_deref() == Some(path) {
            let openmetrics = req
                .headers()
                .get(header::ACCEPT)
                .and_then(|accept| accept.to_str().ok())
                .is_some_and(|accept| accept.contains("application/openmetrics-text"));
            if let Some(exposition) = self.telemetry.render(openmetrics) {
                return Ok(metrics(req.method(), exposition));
            }
        }
        let observation = self.telemetry.observe(req.method(), path);
        let mut resp = self.admit_and_forward(req, remote, affinity).await;
        if let Some(mut observation) = observation {
            observation.set_status(resp.status());
            resp.body_mut().observation = Some(observation);
        }
        Ok(resp)
    }

    async fn admit_and_forward(
        &self,
        req: Request<Incoming>,
        remote: SocketAddr,
        affinity: &Arc<Affinity>,
    ) -> Response<ResponseBody> {
        let mut in_flight = match self.state.admit() {
            Admission::Now(in_flight) => in_flight,
            Admission::AfterStartup(in_flight) => {
                if !self.state.wait_started(self.startup_timeout).await {
                    return shutting_down();
                }
                in_flight
            }
            Admission::Refused => return shutting_down(),
        };
        let slot = tokio::select! {
            biased;
            slot = self.state.take_slot(&mut in_flight, self.queue_timeout) => slot,
            () = self.state.cut_signal() => {
                self.state.count_ending(Ending::Refused);
                return shutting_down();
            }
        };
        if slot.is_err() {
            return refused(r#"{"error":"at_capacity"}"#);
        }
        self.forward(req, remote, in_flight, affinity).await
    }

    async fn forward(
        &self,
        mut req: Request<Incoming>,
        remote: SocketAddr,
        in_flight: InFlight,
        affinity: &Arc<Affinity>,
    ) -> Response<ResponseBody> {
        let upgrade = upgrade_protocol(req.headers());
        let client_upgrade = upgrade.is_some().then(|| hyper::upgrade::on(&mut req));
        let client_http2 = req.version() == Version::HTTP_2;

        let (mut parts, body) = req.into_parts();
        let host = parts.headers.get(header::HOST).cloned().or_else(|| {
            // HTTP/2 clients name the host in :authority, which becomes the Host header upstream.
            let authority = parts.uri.authority()?;
            HeaderValue::from_str(authority.as_str()).ok()
        });
        // Plain HTTP/1.1 to an HTTP/1.1 backend goes over the client connection's own backend
        // connection; the rest through the pool.
        let inline =
            upgrade.is_none() && !client_http2 && self.upstream_version == Version::HTTP_11;
        let client = match (&upgrade, &self.upgrade_client) {
            (Some(_), Some(upgrade_client)) => {
                parts.version = Version::HTTP_11;
                upgrade_client
            }
            _ => {
                parts.version = self.upstream_version;
                &self.client
            }
        };
        parts.uri = if inline {
            origin_form(&parts.uri)
        } else {
            self.upstream_uri(&parts.uri)
        };
        remove_hop_by_hop(&mut parts.headers);
        if !parts.headers.contains_key(header::HOST) {
            let host = host
                .clone()
                .or_else(|| HeaderValue::from_str(self.upstream.authority.as_str()).ok());
            if let Some(host) = host {
                parts.headers.insert(header::HOST, host);
            }
        }
        if let Some(protocol) = &upgrade {
            set_upgrade(&mut parts.headers, protocol.clone());
        }
        add_forwarded(&mut parts.headers, remote, host.as_ref());
        debug!(method = %parts.method, uri = %parts.uri, "forwarding");

        let req = Request::from_parts(parts, body);
        let exchange = async {
            if inline {
                let (resp, link) = upstream::send(affinity, &self.upstream, req).await?;
                Ok((resp, Some((link, Arc::clone(affinity)))))
            } else {
                let resp = client.request(req).await?;
                Ok::<_, upstream::Error>((resp, None))
            }
        };
        let sent = tokio::select! {
            biased;
            sent = exchange => sent,
            // The drain deadline came before the backend answered: the client may retry.
            () = self.state.cut_signal() => {
                in_flight.count_ending(Ending::Refused);
                return shutting_down();
            }
        };
        let (mut resp, link): (_, Option<(Box<Link>, _)>) = match sent {
            Ok(sent) => sent,
            Err(err) => return bad_gateway(&*err),
        };

        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            if let (Some(client_upgrade), Some(asked)) = (client_upgrade, &upgrade) {
                let backend_upgrade = hyper::upgrade::on(&mut resp);
                let websocket = asked.as_bytes().eq_ignore_ascii_case(b"websocket");
                tokio::spawn(tunnel::run(
                    client_upgrade,
                    backend_upgrade,
                    websocket,
                    in_flight,
                ));
                let protocol = upgrade_protocol(resp.headers());
                let (mut parts, _) = resp.into_parts();
                remove_hop_by_hop(&mut parts.headers);
                if let Some(protocol) = protocol {
                    set_upgrade(&mut parts.headers, protocol);
                }
                return Response::from_parts(parts, ResponseBody::empty());
            }
        }

        let (mut parts, body) = resp.into_parts();
        remove_hop_by_hop(&mut parts.headers);
        let announced = Announced::from_headers(&parts.headers, client_http2);
        let body = ResponseBody::proxied(body, in_flight, announced, self.sse_shutdown_event, link);
        Response::from_parts(parts, body)
    }

    /// The absolute URI the pooled client needs.
    fn upstream_uri(&self, original: &Uri) -> Uri {
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(Scheme::HTTP);
        parts.authority = Some(self.upstream.authority.clone());
        parts.path_and_query = Some(
            original
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/")),
        );
        // Cannot fail: scheme, authority and path were each valid on their own.
        Uri::from_parts(parts).expect("scheme, authority and path form a valid URI")
    }
}

/// The path and query alone, as an HTTP/1.1 request line carries them.
fn origin_form(original: &Uri) -> Uri {
    let path = original
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    Uri::from(path)
}

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1).
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

/// The protocol asked for when `Connection` includes `upgrade` and `Upgrade` is set.
fn upgrade_protocol(headers: &HeaderMap) -> Option<HeaderValue> {
    connection_tokens(headers)
        .any(|token| token.eq_ignore_ascii_case("upgrade"))
        .then(|| headers.get(header::UPGRADE).cloned())
        .flatten()
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

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

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

fn method_not_allowed() -> Response<ResponseBody> {
    let mut resp = json(
        StatusCode::METHOD_NOT_ALLOWED,
        r#"{"error":"method_not_allowed"}"#.into(),
    );
    resp.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
    resp
}

fn probe(method: &Method, status: StatusCode, body: String) -> Response<ResponseBody> {
    if method != Method::GET && method != Method::HEAD {
        return method_not_allowed();
    }
    let mut resp = json(status, body);
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

fn metrics(
    method: &Method,
    (text, content_type): (String, &'static str),
) -> Response<ResponseBody> {
    if method != Method::GET && method != Method::HEAD {
        return method_not_allowed();
    }
    let mut resp = Response::new(ResponseBody::local(Bytes::from(text)));
    let headers = resp.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// 503 for requests lameduck no longer admits: the client should retry, elsewhere, on a new
/// connection.
fn shutting_down() -> Response<ResponseBody> {
    let mut resp = refused(r#"{"error":"shutting_down"}"#);
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    resp
}

/// 503 with `Retry-After`, answered at once.
fn refused(body: &'static str) -> Response<ResponseBody> {
    let mut resp = json(StatusCode::SERVICE_UNAVAILABLE, body.into());
    resp.headers_mut().insert(
        header::RETRY_AFTER,
        HeaderValue::from_static(RETRY_AFTER_SECS),
    );
    resp
}

fn bad_gateway(err: &(dyn std::error::Error + 'static)) -> Response<ResponseBody> {
    let mut detail = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        detail.push_str(": ");
        detail.push_str(&cause.to_string());
        source = cause.source();
    }
    warn!(%detail, "backend request failed");
    let body = serde_json::json!({"error": "bad_gateway", "detail": detail}).to_string();
    json(StatusCode::BAD_GATEWAY, body)
}

fn json(status: StatusCode, body: String) -> Response<ResponseBody> {
    let mut resp = Response::new(ResponseBody::local(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
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
}
