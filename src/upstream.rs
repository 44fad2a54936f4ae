//! HTTP/1.1 connections to the backend, one per client connection, driven inline.
//!
//! An HTTP/1.1 client connection carries one request at a time, so it can keep one backend
//! connection of its own ([`Affinity`]) and drive it from its own task: while the request waits
//! for its response head ([`send`]), and while the response body streams (the body polls the
//! [`Link`]). No pool, no lock contention, no hop to another task per request. When the
//! response ends, the link goes back to the client connection for its next request.
//!
//! HTTP/2 clients (many requests at once), upgrades, and `--upstream-protocol http2` use the
//! pooled client in [`crate::proxy`] instead.

use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, Connection, SendRequest};
use hyper::client::conn::TrySendError;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::config::Upstream;

/// A backend connection idle this long is not reused: typical backends (Node, uvicorn: 5 s)
/// close theirs soon after, and a request must never be written onto a closing connection.
const IDLE_TIMEOUT: Duration = Duration::from_secs(3);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// The backend connection a client connection keeps between its requests.
#[derive(Debug, Default)]
pub struct Affinity(Mutex<Option<Box<Link>>>);

impl Affinity {
    /// Takes the kept link if it can carry a request now.
    fn take(&self) -> Option<Box<Link>> {
        // Only this client connection's task touches the lock, one request at a time.
        let mut link = self.0.lock().ok()?.take()?;
        (link.last_used.elapsed() < IDLE_TIMEOUT && link.is_ready()).then_some(link)
    }

    /// Keeps `link` for the next request.
    pub fn put(&self, link: Box<Link>) {
        if let Ok(mut slot) = self.0.lock() {
            *slot = Some(link);
        }
    }
}

/// One HTTP/1.1 connection to the backend, and the future that drives its IO.
#[derive(Debug)]
pub struct Link {
    sender: SendRequest<Incoming>,
    conn: Option<Connection<TokioIo<TcpStream>, Incoming>>,
    last_used: Instant,
}

impl Link {
    /// Boxed: the connection is large, and moves between the client connection and each
    /// response body that drives it.
    async fn connect(upstream: &Upstream) -> Result<Box<Link>, Error> {
        let connect = TcpStream::connect((upstream.host.as_str(), upstream.port));
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, connect)
            .await
            .map_err(|_| format!("connect timed out after {CONNECT_TIMEOUT:?}"))??;
        stream.set_nodelay(true)?;
        let (sender, conn) = http1::handshake(TokioIo::new(stream)).await?;
        Ok(Box::new(Link {
            sender,
            conn: Some(conn),
            last_used: Instant::now(),
        }))
    }

    /// Moves the connection's IO along. Returns false once the connection has ended.
    pub fn poll_io(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(conn) = &mut self.conn else {
            return false;
        };
        if Pin::new(conn).poll(cx).is_ready() {
            self.conn = None;
            return false;
        }
        true
    }

    /// Whether a request can be sent now: the connection is alive and idle.
    fn is_ready(&mut self) -> bool {
        // Let the connection notice a close by the backend before trusting it.
        self.poll_io(&mut Context::from_waker(std::task::Waker::noop())) && self.sender.is_ready()
    }

    /// Marks the link as just used, for the idle timeout.
    pub fn touch(&mut self) {
        self.last_used = Instant::now();
    }
}

/// Sends `req` on the client connection's kept link (or a new one), driving the link until the
/// response head arrives. Returns the response and the link, which the response body must keep
/// driving. A request that a closing link could not take is retried once on a new link.
pub async fn send(
    affinity: &Affinity,
    upstream: &Upstream,
    req: Request<Incoming>,
) -> Result<(Response<Incoming>, Box<Link>), Error> {
    let (reused, mut link) = match affinity.take() {
        Some(link) => (true, link),
        None => (false, Link::connect(upstream).await?),
    };
    match drive(&mut link, req).await {
        Ok(resp) => Ok((resp, link)),
        Err(mut err) => match err.take_message() {
            // Never written: safe to send again on a fresh connection.
            Some(req) if reused => {
                let mut link = Link::connect(upstream).await?;
                let resp = drive(&mut link, req).await.map_err(|e| e.into_error())?;
                Ok((resp, link))
            }
            _ => Err(err.into_error().into()),
        },
    }
}

/// Sends `req` and polls the link's IO until the response head arrives.
async fn drive(
    link: &mut Link,
    req: Request<Incoming>,
) -> Result<Response<Incoming>, TrySendError<Request<Incoming>>> {
    let response = link.sender.try_send_request(req);
    tokio::pin!(response);
    std::future::poll_fn(|cx| {
        if let Poll::Ready(result) = response.as_mut().poll(cx) {
            return Poll::Ready(result);
        }
        // The response arrives through the connection's IO: drive it. Once the connection has
        // ended, the response future resolves with its error.
        link.poll_io(cx);
        response.as_mut().poll(cx)
    })
    .await
}
