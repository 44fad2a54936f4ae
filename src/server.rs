//! The accept loop, the workers, and each client connection with its graceful close once
//! draining.
//!
//! Like nginx's worker processes, each worker is one thread running a single-threaded event
//! loop; the accept loop hands each new connection to the next worker, and the connection lives
//! on that thread for its whole life, together with the backend connection it keeps
//! ([`crate::backend`]). No request ever wakes another thread.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::admission::Gauge;
use crate::backend::Affinity;
use crate::phase::{Phase, Phases};
use crate::proxy::Proxy;

/// A client that opens a connection must send its request head within this time.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// A new connection on its way to a worker.
type Handoff = (std::net::TcpStream, SocketAddr);

/// What every connection shares: the request path, the phase (to close gracefully once the
/// drain stops admitting), and the count of open connections (the lifecycle lets them flush).
#[derive(Debug)]
pub struct Shared {
    pub proxy: Proxy,
    pub phase: Phases,
    pub connections: Arc<Gauge>,
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

    for turn in (0..workers.len()).cycle() {
        let (stream, remote) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(err) => {
                accept_error(err).await;
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
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    builder.http2().timer(TokioTimer::new());
    let builder = Arc::new(builder);
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
            Arc::clone(&builder),
            Arc::clone(&shared),
        ));
    }
}

/// Serves one client connection. When the drain stops admitting, a connection that has already served a
/// request (an idle keep-alive one, or one busy with a response) is closed gracefully: at once if
/// idle, after the current response otherwise. A connection that has not sent its first request
/// yet is left to send it, and gets an answer (a 503, or a probe's) before it closes: closing it
/// unanswered would fail a request the client had every right to make.
async fn connection(
    stream: TcpStream,
    remote: SocketAddr,
    builder: Arc<auto::Builder<TokioExecutor>>,
    shared: Arc<Shared>,
) {
    let _open = shared.connections.enter_guarded();
    // Small responses must not wait for Nagle; a failure here only costs latency.
    let _ = stream.set_nodelay(true);
    let mut phase = shared.phase.subscribe();

    let served = Arc::new(AtomicBool::new(false));
    let affinity = Arc::new(Affinity::default());
    let service = service_fn({
        let served = Arc::clone(&served);
        let shared = Arc::clone(&shared);
        move |req| {
            served.store(true, Relaxed);
            let shared = Arc::clone(&shared);
            let affinity = Arc::clone(&affinity);
            async move { shared.proxy.handle(req, remote, &affinity).await }
        }
    });
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
    tokio::pin!(conn);

    let mut closing = false;
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(err) = result {
                    debug!(%remote, error = %err, "connection ended with an error");
                }
                return;
            }
            changed = phase.changed(), if !closing => {
                let draining = changed.is_err() || *phase.borrow_and_update() >= Phase::Draining;
                if draining && served.load(Relaxed) {
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                }
            }
        }
    }
}

/// Resets and aborts of connections not yet accepted are the client's business; running out of
/// file descriptors is ours: back off briefly instead of spinning.
async fn accept_error(err: io::Error) {
    match err.kind() {
        io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset => {
            debug!(error = %err, "accept")
        }
        _ => {
            warn!(error = %err, "accept failed; retrying shortly");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
