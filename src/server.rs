//! The accept loop, the workers, and each client connection: its protocol, its limits and
//! timers, and its graceful close once draining.
//!
//! Like nginx's worker processes, each worker is one thread running a single-threaded event
//! loop; the accept loop hands each new connection to the next worker, and the connection lives
//! on that thread for its whole life; the backend connections its requests use come from the
//! worker's own idle set ([`crate::backend`]). No request ever wakes another thread.
//!
//! An HTTP/1 connection's plain requests (module `plain`: HTTP/1.1, no body, the whole head
//! arrived, nothing special asked) are served without hyper; from the first request that is not
//! plain, hyper serves the connection, until it is idle again and gives it back.
//!
//! At the edge (module `edge`): a new connection speaks HTTP/2 if it opens with the HTTP/2
//! preface, HTTP/1 otherwise. HTTP/1 request heads are checked on their raw bytes (size,
//! request line, framing headers, control characters) and must arrive within
//! `--header-read-timeout`; a kept-alive connection idle for `--idle-timeout` is closed, and so
//! is one whose client accepts no response data for that long. HTTP/2 connections get hyper's
//! flood protections with explicit limits, and a GOAWAY after `--idle-timeout` without a request.

mod edge;
mod plain;

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Version};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::service::{service_fn, HttpService};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::admission::Gauge;
use crate::backend::Backend;
use crate::body::{BoxError, ResponseBody};
use crate::config::Config;
use crate::headers::{ClientError, MAX_HEADERS};
use crate::phase::{Phase, Phases, Subscription};
use crate::proxy::Proxy;
use edge::{Activity, EdgeIo, Expiry, HeadTimer, RequestGuard, Watch};

/// HTTP/2 streams a client may have open at once on one connection, advertised in SETTINGS
/// (HAProxy's `tune.h2.max-concurrent-streams` default and RFC 9113's recommended minimum;
/// nginx's `http2_max_concurrent_streams` is 128).
const MAX_CONCURRENT_STREAMS: u32 = 100;
/// HTTP/2 streams a client may reset before lameduck has accepted them, before it is told to go
/// away (the rapid-reset attack, CVE-2023-44487); h2's own default.
const MAX_PENDING_ACCEPT_RESETS: usize = 20;
/// HTTP/2 streams lameduck may have to reset because of the client's errors, before it tells
/// the client to go away; hyper's own default.
const MAX_LOCAL_ERROR_RESETS: usize = 1024;
/// How long a connection told to go away (GOAWAY) may take to close before it is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// The limits of the client side, from the configuration.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// `--max-header-size`.
    pub max_header_size: usize,
    /// `--header-read-timeout`.
    pub header_read_timeout: Duration,
    /// `--idle-timeout`.
    pub idle_timeout: Duration,
}

impl Limits {
    pub fn new(config: &Config) -> Limits {
        Limits {
            max_header_size: config.max_header_size,
            header_read_timeout: config.header_read_timeout,
            idle_timeout: config.idle_timeout,
        }
    }
}

/// A new connection on its way to a worker.
type Handoff = (std::net::TcpStream, SocketAddr);

/// What every connection shares: the request path, the phase (to close gracefully once the
/// drain stops admitting), the count of open connections (the lifecycle lets them flush), and
/// the client side's limits; and the backend, whose idle connections each worker sweeps.
#[derive(Debug)]
pub struct Shared {
    pub proxy: Proxy,
    pub backend: Arc<Backend>,
    pub phase: Phases,
    pub connections: Arc<Gauge>,
    pub limits: Limits,
}

/// Starts one worker per core, then accepts connections and hands them out in turn, until the
/// process exits. The listener stays open through the whole shutdown, so probes are answered
/// until lameduck exits.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let count = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut workers = Vec::with_capacity(count);
    for index in 0..count {
        match spawn_worker(index, Arc::clone(&shared)) {
            Ok(worker) => workers.push(worker),
            Err(err) => warn!(error = %err, index, "cannot start a worker"),
        }
    }
    if workers.is_empty() {
        // Serve from this thread rather than not at all.
        let (worker, handoffs) = mpsc::unbounded_channel();
        tokio::spawn(work(handoffs, shared));
        workers.push(worker);
    }

    let mut errors = AcceptErrors::default();
    for turn in (0..workers.len()).cycle() {
        let (stream, remote) = match listener.accept().await {
            Ok(accepted) => {
                errors.accepted();
                accepted
            }
            Err(err) => {
                if let Some(pause) = errors.failed(&err) {
                    tokio::time::sleep(pause).await;
                }
                continue;
            }
        };
        match stream.into_std() {
            Ok(stream) => {
                // A worker only stops with the process.
                let _ = workers[turn].send((stream, remote));
            }
            Err(err) => debug!(error = %err, "cannot hand over a connection"),
        }
    }
}

/// A thread with its own single-threaded event loop, serving the connections it is handed.
fn spawn_worker(index: usize, shared: Arc<Shared>) -> io::Result<mpsc::UnboundedSender<Handoff>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (worker, handoffs) = mpsc::unbounded_channel();
    std::thread::Builder::new()
        .name(format!("lameduck-worker-{index}"))
        .spawn(move || runtime.block_on(work(handoffs, shared)))?;
    Ok(worker)
}

async fn work(mut handoffs: mpsc::UnboundedReceiver<Handoff>, shared: Arc<Shared>) {
    let protocols = Arc::new(Protocols::new(shared.limits));
    let backend = Arc::clone(&shared.backend);
    tokio::spawn(async move { backend.sweep_idle_links().await });
    while let Some((stream, remote)) = handoffs.recv().await {
        let stream = match TcpStream::from_std(stream) {
            Ok(stream) => stream,
            Err(err) => {
                debug!(error = %err, "cannot take over a connection");
                continue;
            }
        };
        tokio::spawn(connection(
            stream,
            remote,
            Arc::clone(&protocols),
            Arc::clone(&shared),
        ));
    }
}

/// hyper's servers for both protocols, as configured for every connection of a worker.
struct Protocols {
    http1: http1::Builder,
    http2: http2::Builder<TokioExecutor>,
}

impl Protocols {
    fn new(limits: Limits) -> Protocols {
        let mut http1 = http1::Builder::new();
        http1
            // The edge refuses larger heads first, with a JSON body; this is hyper's own check
            // behind it (for a head whose start hyper read before the edge could scan it).
            .max_header_size(limits.max_header_size)
            .max_headers(MAX_HEADERS)
            // Enforced by each connection's own timer, which hyper's sleeps drive: see `edge`.
            .header_read_timeout(limits.header_read_timeout)
            .timer(TokioTimer::new());
        let mut http2 = http2::Builder::new(TokioExecutor::new());
        http2
            .timer(TokioTimer::new())
            .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
            // hyper answers a larger header list with 431, and a CONTINUATION flood (more
            // frames than this list needs) with GOAWAY.
            .max_header_list_size(u32::try_from(limits.max_header_size).unwrap_or(u32::MAX))
            .max_pending_accept_reset_streams(MAX_PENDING_ACCEPT_RESETS)
            .max_local_error_reset_streams(MAX_LOCAL_ERROR_RESETS);
        Protocols { http1, http2 }
    }
}

/// One client connection served by hyper, in the protocol it speaks.
enum Serving<S: HttpService<Incoming>> {
    Http1(Pin<Box<http1::UpgradeableConnection<TokioIo<EdgeIo>, S>>>),
    Http2(Pin<Box<http2::Connection<TokioIo<EdgeIo>, S, TokioExecutor>>>),
}

impl<S> Serving<S>
where
    S: HttpService<Incoming, ResBody = Tracked> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
{
    /// An HTTP/1 connection on `io`, served by `service`.
    fn http1(protocols: &Protocols, activity: &Arc<Activity>, io: EdgeIo, service: S) -> Self {
        let mut http1 = protocols.http1.clone();
        http1.timer(HeadTimer(Arc::clone(activity)));
        let conn = http1.serve_connection(TokioIo::new(io), service);
        Serving::Http1(Box::pin(conn.with_upgrades()))
    }

    fn graceful_shutdown(&mut self) {
        match self {
            Serving::Http1(conn) => conn.as_mut().graceful_shutdown(),
            Serving::Http2(conn) => conn.as_mut().graceful_shutdown(),
        }
    }

    /// Once hyper's connection has ended: the socket, the bytes hyper had read from it and not
    /// used, and the service, if it ended to be parked (see `edge`).
    fn into_parked(self) -> Option<(EdgeIo, Bytes, S)> {
        let Serving::Http1(conn) = self else {
            return None;
        };
        let parts = Pin::into_inner(conn).into_parts()?;
        let io = parts.io.into_inner();
        io.is_parked()
            .then_some((io, parts.read_buf, parts.service))
    }
}

impl<S> std::future::Future for Serving<S>
where
    S: HttpService<Incoming, ResBody = Tracked> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
{
    type Output = hyper::Result<()>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<hyper::Result<()>> {
        match self.get_mut() {
            Serving::Http1(conn) => conn.as_mut().poll(cx),
            Serving::Http2(conn) => conn.as_mut().poll(cx),
        }
    }
}

/// Serves one client connection. When the drain stops admitting, a connection that has already served a
/// request (an idle keep-alive one, or one busy with a response) is closed gracefully: at once if
/// idle, after the current response otherwise. A connection that has not sent its first request
/// yet is left to send it, and gets an answer (a 503, or a probe's) before it closes: closing it
/// unanswered would fail a request the client had every right to make.
async fn connection(
    mut stream: TcpStream,
    remote: SocketAddr,
    protocols: Arc<Protocols>,
    shared: Arc<Shared>,
) {
    let _open = shared.connections.enter_guarded();
    let accepted = Instant::now();
    // Small responses must not wait for Nagle; a failure here only costs latency.
    let _ = stream.set_nodelay(true);
    let mut phase = shared.phase.subscribe();
    let activity = Activity::new(shared.limits, accepted);

    let limit = shared.limits.header_read_timeout;
    let (http2, prefix) = match tokio::time::timeout(limit, edge::detect(&mut stream)).await {
        Ok(Ok(Some(detected))) => detected,
        Ok(Ok(None)) => return,
        Ok(Err(err)) => {
            debug!(%remote, error = %err, "connection failed before its first request");
            return;
        }
        Err(_) => {
            EdgeIo::answer(stream, activity, ClientError::HeadTimeout).await;
            return;
        }
    };

    let served = Arc::new(AtomicBool::new(false));
    let service = service_fn({
        let served = Arc::clone(&served);
        let shared = Arc::clone(&shared);
        let activity = Arc::clone(&activity);
        move |req: Request<Incoming>| {
            served.store(true, Relaxed);
            let request = activity.request();
            let shared = Arc::clone(&shared);
            async move {
                let Ok(mut resp) = shared.proxy.handle(req, remote).await;
                if !http2 {
                    // This hop speaks HTTP/1.1 whatever the backend spoke (an HTTP/1.0 backend
                    // must not cost an HTTP/1.1 client its keep-alive); hyper answers an
                    // HTTP/1.0 client in HTTP/1.0 by itself.
                    *resp.version_mut() = Version::HTTP_11;
                }
                Ok::<_, Infallible>(resp.map(|body| Tracked { body, request }))
            }
        }
    });
    let mut watch = Watch::new(&activity, http2);
    if http2 {
        let io = TokioIo::new(EdgeIo::new(stream, prefix, Arc::clone(&activity), true));
        let conn = Serving::Http2(Box::pin(protocols.http2.serve_connection(io, service)));
        hyper_serves(conn, remote, &served, &mut phase, &mut watch).await;
        return;
    }

    // HTTP/1: plain requests are served without hyper (`plain`); from the first that is not,
    // hyper serves the connection, until it is idle again and gives it back.
    let (mut stream, mut read, mut service) = (stream, prefix, Some(service));
    loop {
        watch.close_when_idle(true);
        let plain = plain::serve(
            plain::Conn {
                stream: &mut stream,
                shared: &shared,
                activity: &activity,
                phase: &mut phase,
                remote,
                served: &served,
            },
            read,
        );
        let outcome = tokio::select! {
            outcome = plain => outcome,
            expiry = std::future::poll_fn(|cx| watch.poll_expiry(cx)) => {
                log_expiry(remote, expiry);
                return;
            }
        };
        let plain::Outcome::Hyper(unread) = outcome else {
            return;
        };
        watch.close_when_idle(false);
        let Some(taken) = service.take() else {
            return;
        };
        let io = EdgeIo::new(stream, unread, Arc::clone(&activity), false);
        let conn = Serving::http1(&protocols, &activity, io, taken);
        let Some((io, unread, given_back)) =
            hyper_serves(conn, remote, &served, &mut phase, &mut watch).await
        else {
            return;
        };
        debug!(%remote, "idle connection parked");
        service = Some(given_back);
        (stream, read) = io.into_parts();
        // Bytes hyper read and did not use come first; else the next request is waited for.
        if !unread.is_empty() {
            read = unread;
        }
    }
}

/// Runs hyper's connection until it ends (`None`), or gives its socket back to be parked (an
/// HTTP/1 connection gone idle: see `edge`). When the drain stops admitting, a connection that
/// has already served a request (an idle keep-alive one, or one busy with a response) is closed
/// gracefully: at once if idle, after the current response otherwise. A connection that has not
/// sent its first request yet is left to send it, and gets an answer (a 503, or a probe's) before
/// it closes: closing it unanswered would fail a request the client had every right to make.
async fn hyper_serves<S>(
    mut conn: Serving<S>,
    remote: SocketAddr,
    served: &AtomicBool,
    phase: &mut Subscription,
    watch: &mut Watch,
) -> Option<(EdgeIo, Bytes, S)>
where
    S: HttpService<Incoming, ResBody = Tracked> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
{
    let http2 = matches!(conn, Serving::Http2(_));
    let mut closing = false;
    // Once the connection is told to go away: when it is dropped if it has not closed by then.
    let mut dropping_at: Option<tokio::time::Instant> = None;
    loop {
        let expiry = tokio::select! {
            result = &mut conn => {
                if let Err(err) = result {
                    debug!(%remote, error = %err, "connection ended with an error");
                    return None;
                }
                return conn.into_parked();
            }
            changed = phase.changed(), if !closing => {
                let draining = changed.is_err() || phase.borrow_and_update() >= Phase::Draining;
                if draining && served.load(Relaxed) {
                    conn.graceful_shutdown();
                    closing = true;
                }
                continue;
            }
            expiry = std::future::poll_fn(|cx| watch.poll_expiry(cx)), if dropping_at.is_none() => expiry,
            () = sleep_until(dropping_at), if dropping_at.is_some() => return None,
        };
        log_expiry(remote, expiry);
        if !http2 {
            // The client does not read: nothing graceful would reach it.
            return None;
        }
        conn.graceful_shutdown();
        closing = true;
        dropping_at = Some(tokio::time::Instant::now() + CLOSE_GRACE);
    }
}

fn log_expiry(remote: SocketAddr, expiry: Expiry) {
    match expiry {
        Expiry::Stalled => debug!(%remote, "the client accepts no response data; closing"),
        Expiry::Idle => debug!(%remote, "idle connection; closing"),
        Expiry::Flood => info!(%remote, "HTTP/2 control frame flood; closing the connection"),
    }
}

/// `tokio::time::sleep_until` for a deadline that may be absent (its `select!` arm is then
/// disabled, and this never polled).
async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// A response body as hyper sends it, counted as in progress until it ends, and watched for a
/// client that stops accepting data (see `edge::Activity`).
#[derive(Debug)]
pub struct Tracked {
    body: ResponseBody,
    request: RequestGuard,
}

impl Body for Tracked {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        this.request.asked();
        let frame = Pin::new(&mut this.body).poll_frame(cx);
        if let Poll::Ready(Some(Ok(_))) = frame {
            this.request.handed();
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The accept loop's failures. Resets and aborts of connections not yet accepted are the
/// client's business; anything else (running out of file descriptors, mostly) is ours: back
/// off, doubling from 10 ms up to a second, and log at most once a second with the number of
/// failures since the last line, instead of spinning and flooding the log.
#[derive(Debug, Default)]
struct AcceptErrors {
    pause: Duration,
    failures: u64,
    logged_at: Option<tokio::time::Instant>,
}

impl AcceptErrors {
    const FIRST_PAUSE: Duration = Duration::from_millis(10);
    const LONGEST_PAUSE: Duration = Duration::from_secs(1);
    const LOG_EVERY: Duration = Duration::from_secs(1);

    /// How long to wait before accepting again, if at all.
    fn failed(&mut self, err: &io::Error) -> Option<Duration> {
        if matches!(
            err.kind(),
            io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
        ) {
            debug!(error = %err, "accept");
            return None;
        }
        self.failures += 1;
        if self.should_log() {
            warn!(error = %err, failures = self.failures, "accept failed; backing off");
            self.failures = 0;
        }
        self.pause = (self.pause * 2).clamp(Self::FIRST_PAUSE, Self::LONGEST_PAUSE);
        Some(self.pause)
    }

    fn should_log(&mut self) -> bool {
        let now = tokio::time::Instant::now();
        if self
            .logged_at
            .is_some_and(|at| now.duration_since(at) < Self::LOG_EVERY)
        {
            return false;
        }
        self.logged_at = Some(now);
        true
    }

    fn accepted(&mut self) {
        self.pause = Duration::ZERO;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A listener out of file descriptors fails every accept: lameduck waits longer and longer
    /// between attempts (never spinning), and logs once a second.
    #[tokio::test(start_paused = true)]
    async fn accept_failures_back_off_and_log_once_a_second() {
        let mut errors = AcceptErrors::default();
        let emfile = io::Error::from_raw_os_error(24);
        let start = tokio::time::Instant::now();
        let (mut attempts, mut logged) = (0, 0);
        while start.elapsed() < Duration::from_secs(10) {
            let logged_before = errors.logged_at;
            let pause = errors.failed(&emfile).expect("EMFILE backs off");
            logged += usize::from(errors.logged_at != logged_before);
            attempts += 1;
            assert!(pause >= AcceptErrors::FIRST_PAUSE && pause <= AcceptErrors::LONGEST_PAUSE);
            tokio::time::sleep(pause).await;
        }
        assert!(attempts <= 20, "{attempts} attempts in 10 s");
        assert!((9..=11).contains(&logged), "{logged} log lines in 10 s");

        errors.accepted();
        assert_eq!(errors.failed(&emfile), Some(AcceptErrors::FIRST_PAUSE));
        let reset = io::Error::from(io::ErrorKind::ConnectionReset);
        assert_eq!(errors.failed(&reset), None);
    }
}
