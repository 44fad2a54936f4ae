//! Every connection to the backend, its timeouts, and its errors.
//!
//! Requests reach the backend three ways, chosen by [`Backend::send`]:
//!
//! - **Link** (HTTP/1.1 client, HTTP/1.1 backend, no upgrade): a connection from this worker
//!   thread's idle set, or a new one ([`links`]), held only while the request uses it: the
//!   request's own task drives it while waiting for the response head, then the response body
//!   does, through its [`Lease`], and gives it back at the end. No lock, no hop to another task
//!   per request, and no backend connection held by an idle client.
//! - **Shared HTTP/2 connection** (`--upstream-protocol http2`, every request but upgrades): the
//!   one connection this worker thread keeps to the backend, multiplexing all its requests
//!   ([`h2c`]), whatever their authority.
//! - **Pool** (HTTP/2 clients, many requests at once, in front of an HTTP/1.1 backend): hyper's
//!   pooled client, its connections all keyed by the upstream's authority.
//! - **Upgrade** (WebSockets): a fresh HTTP/1.1 connection that becomes the tunnel (HTTP/2 has
//!   no `Upgrade`, so this holds even with `--upstream-protocol http2`).
//!
//! Probes ([`Backend::is_up`], [`Backend::check`]) use a fresh connection each, so a probe never
//! holds a connection a request could use.
//!
//! All three go over TCP or, for `--upstream unix:/PATH`, a Unix socket ([`dial`]): the same code
//! on a stream that is either.
//!
//! A request's body streams from the client as the backend reads it ([`RequestBody`]); when the
//! client's body is malformed or cut short, the error says so ([`BackendError::ClientBody`]): the
//! client's fault, not the backend's.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderMap, HeaderValue, HOST};
use http::uri::{Authority, PathAndQuery, Scheme, Uri};
use http::{Method, Request, Response, Version};
use http_body::{Body, Frame, SizeHint};
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};

use crate::body::BoxError;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tracing::debug;

use crate::config::{Protocol, Upstream};
use crate::headers;
use h1::Outgoing;
pub use h1::Relayed;
pub use links::LinkBody;
use links::{ExchangeError, Home, Link, Upload, IDLE_TIMEOUT};

mod dial;
pub(crate) mod h1;
mod h2c;
mod links;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one probe of a backend path may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a request could not be sent to the backend, or got no response head.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("the backend refused the connection")]
    Refused(#[source] io::Error),
    #[error("connecting to the backend timed out after {0:?}")]
    ConnectTimeout(Duration),
    #[error("cannot connect to the backend")]
    Connect(#[source] io::Error),
    #[error("the backend closed the connection before answering")]
    Closed(#[source] BoxError),
    #[error("the backend's response is not valid HTTP")]
    BadResponse(#[source] BoxError),
    #[error("the backend's response head did not come within {0:?}")]
    ResponseTimeout(Duration),
    #[error("the client's request body is malformed or incomplete")]
    ClientBody(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("the backend request failed")]
    Failed(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl BackendError {
    /// A short, stable name for error bodies and metrics; the details go to the log.
    pub fn code(&self) -> &'static str {
        match self {
            BackendError::Refused(_) => "backend_refused",
            BackendError::ConnectTimeout(_) => "backend_connect_timeout",
            BackendError::Connect(_) => "backend_unreachable",
            BackendError::Closed(_) => "backend_closed",
            BackendError::BadResponse(_) => "backend_bad_response",
            BackendError::ResponseTimeout(_) => "backend_timeout",
            BackendError::ClientBody(_) => "client_body",
            BackendError::Failed(_) => "backend_failed",
        }
    }

    /// The backend was too slow: 504 rather than 502.
    pub fn is_timeout(&self) -> bool {
        matches!(
            self,
            BackendError::ConnectTimeout(_) | BackendError::ResponseTimeout(_)
        )
    }

    /// The client's fault (its request body), not the backend's: a 4xx.
    pub fn is_client_fault(&self) -> bool {
        matches!(self, BackendError::ClientBody(_))
    }

    fn from_connect(err: io::Error) -> BackendError {
        match err.kind() {
            io::ErrorKind::ConnectionRefused => BackendError::Refused(err),
            io::ErrorKind::TimedOut => BackendError::ConnectTimeout(CONNECT_TIMEOUT),
            _ => BackendError::Connect(err),
        }
    }

    fn from_hyper(err: hyper::Error) -> BackendError {
        if caused_by_client_body(&err) {
            BackendError::ClientBody(err.into())
        } else if err.is_parse() || err.is_parse_status() || err.is_parse_too_large() {
            BackendError::BadResponse(err.into())
        } else if err.is_incomplete_message() || err.is_canceled() || err.is_closed() {
            BackendError::Closed(err.into())
        } else {
            BackendError::Failed(err.into())
        }
    }

    /// A request over a link failed before its response head.
    fn from_link(err: ExchangeError) -> BackendError {
        match err {
            ExchangeError::ClientBody(err) => BackendError::ClientBody(err),
            ExchangeError::Wire(_) => BackendError::BadResponse(err.into()),
            ExchangeError::Closed | ExchangeError::Truncated | ExchangeError::Io(_) => {
                BackendError::Closed(err.into())
            }
        }
    }

    /// A request to an HTTP/2 backend failed once connected: the client's body, or else the
    /// backend (`backend_failed`, as when these requests went through the pooled client).
    fn from_h2(err: hyper::Error) -> BackendError {
        if caused_by_client_body(&err) {
            BackendError::ClientBody(err.into())
        } else {
            BackendError::Failed(err.into())
        }
    }

    /// The pooled client wraps connect errors: classify by the IO error underneath, keeping the
    /// whole chain for the log.
    fn from_pool(err: hyper_util::client::legacy::Error) -> BackendError {
        if caused_by_client_body(&err) {
            return BackendError::ClientBody(err.into());
        }
        if !err.is_connect() {
            return BackendError::Failed(err.into());
        }
        let mut kind = io::ErrorKind::Other;
        let mut source = std::error::Error::source(&err);
        while let Some(cause) = source {
            if let Some(io) = cause.downcast_ref::<io::Error>() {
                kind = io.kind();
                break;
            }
            source = cause.source();
        }
        BackendError::from_connect(io::Error::new(kind, err))
    }
}

/// Every way to reach the backend.
#[derive(Debug)]
pub struct Backend {
    upstream: Upstream,
    /// This backend's idle links, on each worker thread.
    home: Home,
    /// For HTTP/2 clients in front of an HTTP/1.1 backend.
    pool: Client<dial::Connector, RequestBody>,
    /// `--upstream-protocol http2`: every request but upgrades goes over this worker's
    /// connection ([`h2c`]).
    http2: bool,
    /// `--backend-timeout`: how long a request may wait for its response head.
    response_timeout: Option<Duration>,
}

impl Backend {
    /// `idle_max`: `--upstream-idle-max`, the idle links each worker thread keeps.
    pub fn new(
        upstream: Upstream,
        protocol: Protocol,
        response_timeout: Option<Duration>,
        idle_max: usize,
    ) -> Backend {
        static BACKENDS: AtomicU64 = AtomicU64::new(0);
        let connector = dial::Connector::new(&upstream, CONNECT_TIMEOUT);
        let mut pool = Client::builder(TokioExecutor::new());
        pool.pool_idle_timeout(IDLE_TIMEOUT)
            .pool_timer(TokioTimer::new());
        Backend {
            upstream,
            home: Home {
                backend: BACKENDS.fetch_add(1, Relaxed),
                idle_max,
            },
            pool: pool.build(connector),
            http2: protocol == Protocol::Http2,
            response_timeout,
        }
    }

    /// The backend's `host:port` (`localhost` for a Unix socket), as a `Host` header when the
    /// client sent none.
    pub fn authority(&self) -> &str {
        self.upstream.authority.as_str()
    }

    /// Sends the request of a client at `remote` and returns the response head, its body still
    /// to come from the backend. Both heads are rewritten on the way (`headers::to_backend`,
    /// `headers::to_client`). `upgrade`: the protocol the request asks to upgrade to. With
    /// `--backend-timeout`, a response head that takes longer is an error.
    pub async fn send(
        &self,
        req: Request<Incoming>,
        remote: SocketAddr,
        upgrade: Option<&HeaderValue>,
    ) -> Result<Response<BackendBody>, BackendError> {
        let req = req.map(RequestBody);
        match self.response_timeout {
            None => self.route(req, remote, upgrade).await,
            Some(limit) => tokio::time::timeout(limit, self.route(req, remote, upgrade))
                .await
                .map_err(|_| BackendError::ResponseTimeout(limit))?,
        }
    }

    async fn route(
        &self,
        mut req: Request<RequestBody>,
        remote: SocketAddr,
        upgrade: Option<&HeaderValue>,
    ) -> Result<Response<BackendBody>, BackendError> {
        let client_http2 = req.version() == Version::HTTP_2;
        if !self.http2 && !client_http2 && upgrade.is_none() {
            // Rewritten as it is written out.
            let resp = self.send_linked(req, remote).await?;
            return Ok(resp.map(BackendBody::Link));
        }
        headers::to_backend(&mut req, remote, upgrade, self.authority());
        let resp = if upgrade.is_some() {
            *req.version_mut() = Version::HTTP_11;
            *req.uri_mut() = origin_form(req.uri());
            self.send_upgrade(req).await?
        } else if self.http2 {
            *req.version_mut() = Version::HTTP_2;
            let authority = self.h2_authority(req.headers_mut());
            *req.uri_mut() = absolute(authority, req.uri());
            self.send_h2c(req).await?
        } else {
            *req.version_mut() = Version::HTTP_11;
            // hyper-util sends HTTP/1.1 in origin form, keeping the `Host` already there: the
            // authority only keys the pool, so the upstream's keeps one set of idle connections
            // for every request.
            *req.uri_mut() = absolute(self.upstream.authority.clone(), req.uri());
            self.pool
                .request(req)
                .await
                .map_err(BackendError::from_pool)?
        };
        let mut resp = resp.map(BackendBody::Hyper);
        // The head is rewritten in place, and the body swapped in one step (no trip through
        // `into_parts`): fewer copies of the head.
        headers::to_client(resp.status(), resp.headers_mut());
        Ok(resp)
    }

    /// Whether requests go over links ([`Backend::send_head`] then serves heads without a body).
    pub fn takes_heads(&self) -> bool {
        !self.http2
    }

    /// Writes the head of a request without a body that lameduck read itself (`server::plain`)
    /// into `out`, rewritten for the backend as [`headers::to_backend`] would, for
    /// [`Backend::send_head`]. `fields()` walks the client's fields, as it sent them. Returns
    /// false for a head that cannot be rewritten in passing (see
    /// [`headers::visit_fields_for_backend`]).
    pub fn encode_head<'a, I>(
        &self,
        method: &[u8],
        target: &[u8],
        fields: impl Fn() -> I,
        remote: SocketAddr,
        out: &mut Vec<u8>,
    ) -> bool
    where
        I: Iterator<Item = (&'a [u8], &'a [u8])>,
    {
        h1::encode_fields(method, target, out, |field| {
            headers::visit_fields_for_backend(fields, None, remote, self.authority(), field)
        })
    }

    /// Sends a request head [`Backend::encode_head`] wrote, for a request without a body, and
    /// returns the response head. `head` changes places with the link's own buffer (no copy),
    /// and then holds the response head's fields as they came (its map holds only
    /// `Content-Type`), and what they include.
    pub async fn send_head(
        &self,
        head: &mut Vec<u8>,
        method: &Method,
    ) -> Result<(Response<BackendBody>, Relayed), BackendError> {
        let exchange = async {
            let (reused, mut link) = self.take_link().await?;
            std::mem::swap(&mut link.head, head);
            self.exchange(reused, link, None, method, Some(head)).await
        };
        let resp = match self.response_timeout {
            None => exchange.await,
            Some(limit) => tokio::time::timeout(limit, exchange)
                .await
                .map_err(|_| BackendError::ResponseTimeout(limit))?,
        };
        let (resp, relayed) = resp?;
        Ok((resp.map(BackendBody::Link), relayed))
    }

    /// Sends `req` on a link, its head rewritten as it is written out.
    async fn send_linked(
        &self,
        mut req: Request<RequestBody>,
        remote: SocketAddr,
    ) -> Result<Response<LinkBody>, BackendError> {
        let (reused, mut link) = self.take_link().await?;
        let outgoing = Outgoing::of(&req);
        let hop = Some((remote, self.authority()));
        if !h1::encode_head(&req, outgoing, hop, &mut link.head) {
            headers::to_backend(&mut req, remote, None, self.authority());
            h1::encode_head(&req, outgoing, None, &mut link.head);
        }
        let method = req.method().clone();
        let upload = match outgoing {
            Outgoing::Empty => None,
            _ => Some(Upload::new(req.into_body(), outgoing == Outgoing::Chunked)),
        };
        let (resp, _) = self.exchange(reused, link, upload, &method, None).await?;
        Ok(resp)
    }

    /// An idle link of this thread, or a new one; and whether it was idle.
    async fn take_link(&self) -> Result<(bool, Box<Link>), BackendError> {
        match links::take(self.home) {
            Some(link) => Ok((true, link)),
            None => Ok((false, self.connect().await?)),
        }
    }

    /// Sends the request head in `link` (and `upload`, its body) and reads its response head.
    /// An idempotent request without a body that a link closing as it was written (`reused`:
    /// one that was idle) got no answer to is sent once more, on a new link (see
    /// [`links::Failed`]).
    async fn exchange(
        &self,
        reused: bool,
        mut link: Box<Link>,
        upload: Option<Box<Upload>>,
        method: &Method,
        mut relay: Option<&mut Vec<u8>>,
    ) -> Result<(Response<LinkBody>, Relayed), BackendError> {
        let head_request = method == Method::HEAD;
        match link
            .exchange(upload, head_request, relay.as_deref_mut())
            .await
        {
            Ok((head, upload)) => {
                let relayed = head.relayed;
                Ok((LinkBody::new(link, head, upload), relayed))
            }
            Err(failed) if reused && failed.retryable && method.is_idempotent() => {
                debug!(error = %failed.error, "the idle backend connection was closing; retrying on a new one");
                let mut fresh = self.connect().await?;
                std::mem::swap(&mut fresh.head, &mut link.head);
                let (head, _) = fresh
                    .exchange(None, head_request, relay)
                    .await
                    .map_err(|failed| BackendError::from_link(failed.error))?;
                let relayed = head.relayed;
                Ok((LinkBody::new(fresh, head, None), relayed))
            }
            Err(failed) => Err(BackendError::from_link(failed.error)),
        }
    }

    /// Sends `req` on this thread's HTTP/2 connection to the backend (opening one if there is
    /// none). A request that a closing connection could not take is retried once on another:
    /// it was never sent, so sending it again is safe.
    async fn send_h2c(
        &self,
        req: Request<RequestBody>,
    ) -> Result<Response<Incoming>, BackendError> {
        let open = || self.open_h2c();
        let (mut sender, reused) = h2c::sender(self.home.backend, open).await?;
        match sender.try_send_request(req).await {
            Ok(resp) => Ok(resp),
            Err(mut err) => match err.take_message() {
                Some(req) if reused => {
                    debug!("the backend's HTTP/2 connection was closing; retrying on another");
                    // The closed connection is known closed by now: this is another one.
                    let (mut sender, _) = h2c::sender(self.home.backend, open).await?;
                    let resp = sender.try_send_request(req).await;
                    resp.map_err(|err| BackendError::from_h2(err.into_error()))
                }
                _ => Err(BackendError::from_h2(err.into_error())),
            },
        }
    }

    /// A new HTTP/2 connection to the backend, its IO driven by a task of this thread's.
    async fn open_h2c(&self) -> Result<h2c::Sender, BackendError> {
        let stream = self.connect_stream().await?;
        let (mut sender, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .map_err(BackendError::from_h2)?;
        tokio::spawn(async move {
            if let Err(err) = conn.await {
                debug!(error = %err, "HTTP/2 connection to the backend ended with an error");
            }
        });
        sender.ready().await.map_err(BackendError::from_h2)?;
        Ok(sender)
    }

    /// A fresh HTTP/1.1 connection that can become a tunnel once the backend answers 101.
    async fn send_upgrade(
        &self,
        req: Request<RequestBody>,
    ) -> Result<Response<Incoming>, BackendError> {
        let stream = self.connect_stream().await?;
        let (mut sender, conn) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(BackendError::from_hyper)?;
        tokio::spawn(async move {
            if let Err(err) = conn.with_upgrades().await {
                debug!(error = %err, "upgrade connection to the backend ended with an error");
            }
        });
        sender
            .send_request(req)
            .await
            .map_err(BackendError::from_hyper)
    }

    /// Whether the backend is up: its port (or socket) accepts, or, given a path, that path
    /// answers 2xx. A socket file left by an earlier run refuses connections: not up.
    pub async fn is_up(&self, ready_path: Option<&str>) -> bool {
        match ready_path {
            Some(path) => self.check(path).await.is_ok(),
            None => self.connect_stream().await.is_ok(),
        }
    }

    /// GET `path` on the backend: `Ok` on 2xx, else why not (for `/health`'s `reason`).
    pub async fn check(&self, path: &str) -> Result<(), String> {
        let uri: Uri = path
            .parse()
            .map_err(|err| format!("bad path {path}: {err}"))?;
        let req = Request::get(uri)
            .header(http::header::HOST, self.authority())
            .header(http::header::USER_AGENT, "lameduck")
            .body(Empty::<Bytes>::new())
            .map_err(|err| err.to_string())?;
        let answer = async {
            let mut link = self.connect().await?;
            h1::encode_head(&req, Outgoing::Empty, None, &mut link.head);
            let exchanged = link.exchange(None, false, None).await;
            let (head, _) = exchanged.map_err(|failed| BackendError::from_link(failed.error))?;
            Ok::<_, BackendError>(head.response)
        };
        match tokio::time::timeout(PROBE_TIMEOUT, answer).await {
            Ok(Ok(resp)) if resp.status().is_success() => Ok(()),
            Ok(Ok(resp)) => Err(format!(
                "backend {path} answered {}",
                resp.status().as_u16()
            )),
            Ok(Err(err)) => Err(format!("backend {path} failed: {}", err.code())),
            Err(_) => Err(format!(
                "backend {path} did not answer within {PROBE_TIMEOUT:?}"
            )),
        }
    }

    async fn connect_stream(&self) -> Result<dial::Stream, BackendError> {
        let connect = dial::connect(&self.upstream);
        tokio::time::timeout(CONNECT_TIMEOUT, connect)
            .await
            .map_err(|_| BackendError::ConnectTimeout(CONNECT_TIMEOUT))?
            .map_err(BackendError::from_connect)
    }

    /// A new HTTP/1.1 link.
    async fn connect(&self) -> Result<Box<Link>, BackendError> {
        Ok(Link::new(self.connect_stream().await?, self.home))
    }

    /// Drops this thread's idle links, and its HTTP/2 connection, once they are too old to be
    /// used: run by each worker, so that they do not hold the backend's connections while no
    /// request comes.
    pub async fn sweep_idle_links(&self) {
        let mut every = tokio::time::interval(IDLE_TIMEOUT / 2);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            if self.http2 {
                h2c::sweep(self.home.backend);
            }
            links::sweep(self.home);
        }
    }

    /// The `:authority` of a request to an HTTP/2 backend: the client's, which `Host` carries by
    /// now (`headers::to_backend` puts an HTTP/2 client's `:authority` there), else the
    /// upstream's, as for an HTTP/1.1 backend. h2 takes `:authority` from the URI alone, and
    /// hyper sends `Host` on as an ordinary field: left as it was, a `Host` that differs from
    /// the upstream's authority made the request malformed (RFC 9113 §8.3.1), and strict
    /// backends answered 400.
    ///
    /// `Host` stays, equal to `:authority` (the RFC allows that): backends that read `Host`
    /// alone still see the client's, as an HTTP/1.1 backend does. When the client's is not
    /// usable as an authority (none: HTTP/1.0; or `check_request` let through one it should
    /// not have), both become the upstream's.
    ///
    /// The authority names no connection: every request goes on this worker's one connection
    /// to the upstream ([`h2c`]).
    fn h2_authority(&self, headers: &mut HeaderMap) -> Authority {
        let client = headers
            .get(HOST)
            .and_then(|host| Authority::try_from(host.as_bytes()).ok())
            .filter(|authority| !authority.as_str().contains('@'));
        if let Some(authority) = client {
            return authority;
        }
        let upstream = self.upstream.authority.clone();
        match HeaderValue::from_str(upstream.as_str()) {
            Ok(host) => headers.insert(HOST, host),
            // Cannot happen (an authority is a valid header value); were it to, no `Host` is
            // still a well-formed HTTP/2 request.
            Err(_) => headers.remove(HOST),
        };
        upstream
    }
}

/// An absolute URI: the pooled client's authority keys its pool, and an HTTP/2 request's
/// becomes `:authority`.
fn absolute(authority: Authority, original: &Uri) -> Uri {
    let mut parts = http::uri::Parts::default();
    parts.scheme = Some(Scheme::HTTP);
    parts.authority = Some(authority);
    parts.path_and_query = Some(path_and_query(original));
    // Cannot fail: scheme, authority and path were each valid on their own.
    Uri::from_parts(parts).expect("scheme, authority and path form a valid URI")
}

/// The path and query alone, as an HTTP/1.1 request line carries them.
fn origin_form(original: &Uri) -> Uri {
    Uri::from(path_and_query(original))
}

fn path_and_query(uri: &Uri) -> PathAndQuery {
    uri.path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"))
}

/// A backend's response body: read from a link by the response's own task, or handed over by
/// hyper's client (the pool, the HTTP/2 connection, an upgrade's connection).
#[derive(Debug)]
pub enum BackendBody {
    Link(LinkBody),
    Hyper(Incoming),
}

impl BackendBody {
    /// The response is over (complete, or abandoned): a link goes back to the idle set if it
    /// can carry another request.
    pub fn release(&mut self) {
        if let BackendBody::Link(body) = self {
            body.release();
        }
    }
}

impl Body for BackendBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            BackendBody::Link(body) => Pin::new(body).poll_frame(cx),
            BackendBody::Hyper(body) => Pin::new(body).poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            BackendBody::Link(body) => body.is_end_stream(),
            BackendBody::Hyper(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            BackendBody::Link(body) => body.size_hint(),
            BackendBody::Hyper(body) => body.size_hint(),
        }
    }
}

/// A client's request body on its way to the backend. Its errors are [`ClientBodyError`]s, so
/// that a request failing because of them is known to be the client's fault.
#[derive(Debug)]
pub struct RequestBody(Incoming);

impl Body for RequestBody {
    type Data = Bytes;
    type Error = ClientBodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ClientBodyError>>> {
        Pin::new(&mut self.0)
            .poll_frame(cx)
            .map_err(ClientBodyError)
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.0.size_hint()
    }
}

/// The client's request body was malformed (a bad chunk) or ended early.
#[derive(Debug, thiserror::Error)]
#[error("the client's request body failed")]
pub struct ClientBodyError(#[source] hyper::Error);

/// Whether a [`ClientBodyError`] is among `err`'s causes.
fn caused_by_client_body(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(err);
    while let Some(cause) = source {
        if cause.is::<ClientBodyError>() {
            return true;
        }
        source = cause.source();
    }
    false
}
