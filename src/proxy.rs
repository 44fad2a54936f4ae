//! The request path: lameduck's own endpoints, admission, forwarding to the backend, and every
//! response lameduck writes itself, errors included.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use tracing::{debug, warn};

use crate::admission::{Admission, Admit, InFlight};
use crate::advisor::RequestKind;
use crate::backend::{Backend, BackendBody, BackendError, Relayed};
use crate::body::{self, Announced, ResponseBody};
use crate::config::Config;
use crate::cut::{Cut, Ending};
use crate::headers;
use crate::phase::Phases;
use crate::probes::{Answer, Probes};
use crate::telemetry::{self, Observation, Telemetry};
use crate::tunnel;

/// Waits for `$work` (a slot, the backend's answer) unless the drain deadline's cut comes first:
/// the request is then refused (`Err`), and its client may retry. A macro, not an async fn: the
/// wait stays in the caller's future, where a function would move the whole future of the
/// backend's answer into its own, a copy of a large value per request.
macro_rules! before_cut {
    ($proxy:expr, $work:expr) => {
        tokio::select! {
            biased;
            done = $work => Ok(done),
            () = $proxy.cut.signal() => {
                $proxy.cut.count(Ending::Refused);
                Err(Failure::ShuttingDown)
            }
        }
    };
}

/// What a refused client is told to wait before retrying, in seconds.
const RETRY_AFTER_SECS: &str = "1";

/// Forwards requests to the backend and answers lameduck's own endpoints.
#[derive(Debug)]
pub struct Proxy {
    backend: Arc<Backend>,
    phase: Phases,
    admission: Arc<Admission>,
    cut: Arc<Cut>,
    probes: Arc<Probes>,
    telemetry: Arc<Telemetry>,
    ready_path: String,
    health_path: String,
    metrics_path: Option<String>,
    /// The bytes that end an event stream at the drain deadline, built once; cloned (a reference
    /// count) into each event-stream response.
    sse_shutdown_event: Option<Bytes>,
    queue_timeout: Duration,
}

/// Why a request gets no answer from the backend.
#[derive(Debug)]
enum Failure {
    /// The backend did not come up within `--queue-timeout` of the request's arrival.
    Starting,
    /// Shutdown is past the drain delay, or the drain deadline came before the answer did.
    ShuttingDown,
    /// No concurrency slot within `--queue-timeout`.
    AtCapacity,
    Backend(BackendError),
}

impl Proxy {
    pub fn new(
        config: &Config,
        backend: Arc<Backend>,
        phase: Phases,
        admission: Arc<Admission>,
        cut: Arc<Cut>,
        probes: Arc<Probes>,
        telemetry: Arc<Telemetry>,
    ) -> Proxy {
        Proxy {
            backend,
            phase,
            admission,
            cut,
            probes,
            telemetry,
            ready_path: config.ready_path.clone(),
            health_path: config.health_path.clone(),
            metrics_path: config.metrics_path.clone(),
            sse_shutdown_event: body::sse_shutdown_event(
                config.sse_shutdown_event,
                config.sse_shutdown_data.as_ref(),
            ),
            queue_timeout: config.queue_timeout,
        }
    }

    /// Answers one request from a client at `remote`. Never fails: every problem becomes a
    /// response.
    ///
    /// The request path is two async fns deep (this and [`Proxy::forward`]), not one per step:
    /// each layer holding the request across an await copies it (and the response on its way
    /// back) once more, and a request head is a few hundred bytes.
    pub async fn handle(
        &self,
        req: Request<Incoming>,
        remote: SocketAddr,
    ) -> Result<Response<ResponseBody>, Infallible> {
        let version = req.version();
        let mut resp = match self.answer_locally(&req) {
            Some(resp) => resp,
            None => {
                let observation = self.telemetry.observe(req.method(), req.uri().path());
                let forwarded = self.forward(req, remote).await;
                self.answer(forwarded, observation)
            }
        };
        self.close_when_shutting_down(version, &mut resp);
        Ok(resp)
    }

    /// Answers a request without a body that the server read itself (`server::plain`), its
    /// head already written for the backend (`Backend::encode_head`) into `head`. The same path
    /// as [`Proxy::handle`]'s, without a `Request` to carry the head.
    ///
    /// With the backend's answer, `head` then holds the response's fields as they came, which
    /// go to the client beside those in the response's map (`Content-Type`, and what lameduck
    /// adds), and what they include; without (lameduck's own answer), `None`, and the map holds
    /// every field.
    pub async fn handle_head(
        &self,
        method: &Method,
        path: &str,
        head: &mut Vec<u8>,
    ) -> (Response<ResponseBody>, Option<Relayed>) {
        let observation = self.telemetry.observe(method, path);
        debug!(%method, path, "forwarding");
        let mut relayed = None;
        let forwarded = async {
            let in_flight = self.admit(method, path).await?;
            let sent = before_cut!(self, self.backend.send_head(head, method))?;
            let (resp, fields) = sent.map_err(Failure::Backend)?;
            relayed = Some(fields);
            Ok(self.respond(resp, in_flight, false))
        };
        let mut resp = self.answer(forwarded.await, observation);
        self.close_when_shutting_down(Version::HTTP_11, &mut resp);
        (resp, relayed)
    }

    /// Whether `path` is one of lameduck's own endpoints.
    pub fn is_local(&self, path: &str) -> bool {
        path == self.ready_path
            || path == self.health_path
            || self.metrics_path.as_deref() == Some(path)
    }

    /// The response to a forwarded request, a failure's included, observed if telemetry is on.
    fn answer(
        &self,
        forwarded: Result<Response<ResponseBody>, Failure>,
        observation: Option<Observation>,
    ) -> Response<ResponseBody> {
        let mut resp = match forwarded {
            Ok(resp) => resp,
            Err(failure) => {
                if let Failure::Backend(err) = &failure {
                    self.telemetry.record_backend_error(err.code());
                }
                failure_response(failure)
            }
        };
        if let Some(mut observation) = observation {
            observation.set_status(resp.status());
            resp.body_mut().observation = Some(observation);
        }
        resp
    }

    fn close_when_shutting_down(&self, version: Version, resp: &mut Response<ResponseBody>) {
        let status = resp.status();
        let shutting_down = self.phase.get().is_shutting_down();
        headers::close_when_shutting_down(version, shutting_down, status, resp.headers_mut());
    }

    /// Admits a request, waiting for the backend to start and for a concurrency slot, if need
    /// be (not past the cut).
    async fn admit(&self, method: &Method, path: &str) -> Result<InFlight, Failure> {
        let mut in_flight = match self.admission.admit(method, path) {
            Admit::Now(in_flight) => in_flight,
            // Held while the backend starts, but no longer than a client would queue.
            Admit::AfterStartup(in_flight) => {
                match self.phase.wait_started(self.queue_timeout).await {
                    None => return Err(Failure::Starting),
                    Some(phase) if !phase.admits() => return Err(Failure::ShuttingDown),
                    Some(_) => in_flight,
                }
            }
            Admit::Refused => return Err(Failure::ShuttingDown),
        };
        let slot = self.admission.take_slot(&mut in_flight, self.queue_timeout);
        before_cut!(self, slot)?.map_err(|_| Failure::AtCapacity)?;
        Ok(in_flight)
    }

    /// The client's response to a backend's (not an upgrade's): its body carries the request's
    /// in-flight count to its end, and ends the way its kind must at the cut.
    fn respond(
        &self,
        resp: Response<BackendBody>,
        mut in_flight: InFlight,
        client_http2: bool,
    ) -> Response<ResponseBody> {
        let announced = Announced::from_headers(resp.headers(), client_http2);
        in_flight.set_kind(announced.kind());
        let cut = self.cut.watch();
        let sse_shutdown_event = self.sse_shutdown_event.clone();
        resp.map(|body| ResponseBody::proxied(body, in_flight, cut, announced, sse_shutdown_event))
    }

    /// The answer to a request that is not the backend's: a broken head, a probe, the metrics.
    fn answer_locally(&self, req: &Request<Incoming>) -> Option<Response<ResponseBody>> {
        if let Err(err) = headers::check_request(req) {
            return Some(client_error(err, req.version()));
        }
        let path = req.uri().path();
        if path == self.ready_path {
            return Some(probe(req.method(), self.probes.readiness()));
        }
        if path == self.health_path {
            return Some(probe(req.method(), self.probes.health()));
        }
        if self.metrics_path.as_deref() == Some(path) {
            if let Some(exposition) = self.telemetry.render() {
                return Some(metrics(req.method(), exposition));
            }
        }
        None
    }

    /// Admits the request, rewrites its head for the backend (in place), sends it, and turns
    /// the backend's response into the client's.
    async fn forward(
        &self,
        mut req: Request<Incoming>,
        remote: SocketAddr,
    ) -> Result<Response<ResponseBody>, Failure> {
        let mut in_flight = self.admit(req.method(), req.uri().path()).await?;

        let upgrade = headers::upgrade_protocol(req.headers());
        let client_upgrade = upgrade.is_some().then(|| hyper::upgrade::on(&mut req));
        let client_http2 = req.version() == Version::HTTP_2;
        debug!(method = %req.method(), uri = %req.uri(), "forwarding");

        let sent = before_cut!(self, self.backend.send(req, remote, upgrade.as_ref()))?;
        let mut resp = sent.map_err(Failure::Backend)?;

        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            if let (Some(client_upgrade), Some(asked)) = (client_upgrade, &upgrade) {
                let backend_upgrade = hyper::upgrade::on(&mut resp);
                let websocket = asked.as_bytes().eq_ignore_ascii_case(b"websocket");
                in_flight.set_kind(RequestKind::WebSocket);
                let cut = Arc::clone(&self.cut);
                tokio::spawn(tunnel::run(
                    client_upgrade,
                    backend_upgrade,
                    websocket,
                    in_flight,
                    cut,
                ));
                return Ok(resp.map(|_| ResponseBody::empty()));
            }
        }

        Ok(self.respond(resp, in_flight, client_http2))
    }
}

/// The one place a failure becomes a status and a short, stable error code. The error chain
/// goes to the log, never to the client.
fn failure_response(failure: Failure) -> Response<ResponseBody> {
    match failure {
        Failure::ShuttingDown => {
            let mut resp = retry_later(br#"{"error":"shutting_down"}"#);
            // Retry elsewhere, on a new connection.
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            resp
        }
        Failure::Starting => retry_later(br#"{"error":"starting"}"#),
        Failure::AtCapacity => retry_later(br#"{"error":"at_capacity"}"#),
        Failure::Backend(err) if err.is_client_fault() => {
            debug!(error = %chain(&err), "the client's request body is broken");
            let body = serde_json::json!({"error": "bad_request", "detail": err.code()});
            let mut resp = json(StatusCode::BAD_REQUEST, Bytes::from(body.to_string()));
            // What is left of the body cannot be read past: the connection cannot be reused.
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            resp
        }
        Failure::Backend(err) => {
            warn!(code = err.code(), error = %chain(&err), "backend request failed");
            let (status, error) = if err.is_timeout() {
                (StatusCode::GATEWAY_TIMEOUT, "gateway_timeout")
            } else {
                (StatusCode::BAD_GATEWAY, "bad_gateway")
            };
            let body = serde_json::json!({"error": error, "detail": err.code()});
            json(status, Bytes::from(body.to_string()))
        }
    }
}

/// A request refused at the edge: its 4xx and codes. An HTTP/1 connection closes after it, as
/// nginx's does after a 400: what follows a malformed head is not to be trusted.
fn client_error(err: headers::ClientError, version: Version) -> Response<ResponseBody> {
    debug!(code = err.code(), error = %err, "request refused");
    let mut resp = json(err.status(), Bytes::from(err.body()));
    if version < Version::HTTP_2 {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

/// An error and its sources, `: `-separated, for the log.
fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// 503 with `Retry-After`, answered at once.
fn retry_later(body: &'static [u8]) -> Response<ResponseBody> {
    let mut resp = json(StatusCode::SERVICE_UNAVAILABLE, Bytes::from_static(body));
    resp.headers_mut().insert(
        header::RETRY_AFTER,
        HeaderValue::from_static(RETRY_AFTER_SECS),
    );
    resp
}

fn probe(method: &Method, answer: Answer) -> Response<ResponseBody> {
    if method != Method::GET && method != Method::HEAD {
        return method_not_allowed();
    }
    let mut resp = json(answer.status, Bytes::from(answer.body));
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

fn metrics(method: &Method, text: String) -> Response<ResponseBody> {
    if method != Method::GET && method != Method::HEAD {
        return method_not_allowed();
    }
    let mut resp = Response::new(ResponseBody::local(Bytes::from(text)));
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(telemetry::CONTENT_TYPE),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

fn method_not_allowed() -> Response<ResponseBody> {
    let body = Bytes::from_static(br#"{"error":"method_not_allowed"}"#);
    let mut resp = json(StatusCode::METHOD_NOT_ALLOWED, body);
    resp.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
    resp
}

fn json(status: StatusCode, body: Bytes) -> Response<ResponseBody> {
    let mut resp = Response::new(ResponseBody::local(body));
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

    #[test]
    fn failures_map_to_a_status_and_a_stable_code() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let resp = failure_response(Failure::Backend(BackendError::Refused(refused)));
        assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
        let timeout = BackendError::ConnectTimeout(Duration::from_secs(5));
        let resp = failure_response(Failure::Backend(timeout));
        assert_eq!(resp.status(), StatusCode::GATEWAY_TIMEOUT);
        let resp = failure_response(Failure::ShuttingDown);
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(resp.headers()["connection"], "close");
        assert_eq!(resp.headers()["retry-after"], RETRY_AFTER_SECS);
        let resp = failure_response(Failure::AtCapacity);
        assert!(!resp.headers().contains_key("connection"));
    }
}
