//! The HTTP/1.1 backend connections ("links") of each worker thread, held only while a request
//! uses them.
//!
//! A link is taken for one request and lent to its response ([`Lease`]), whose body drives the
//! link's IO until the last byte; then it goes back to the idle set of the thread it is on.
//! Each worker thread has its own idle set (a thread-local): only that thread touches it, so
//! taking and giving back a link costs no lock, no atomic and no wake-up of another thread. The
//! set keeps at most `--upstream-idle-max` links, most recently used first, and none idle for
//! longer than [`IDLE_TIMEOUT`]; a client connection never pins one between its requests, so
//! a backend with a connection limit serves any number of idle clients.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use http_body::Body;
use hyper::body::Incoming;
use hyper::client::conn::http1::{Connection, SendRequest};
use hyper::client::conn::TrySendError;
use hyper_util::rt::TokioIo;
use tokio::time::Instant;

use super::dial::Stream;
use super::RequestBody;

/// An idle link is not reused after this long: typical backends (Node, uvicorn: 5 s) close
/// theirs soon after, and a request must never be written onto a closing connection.
pub(super) const IDLE_TIMEOUT: Duration = Duration::from_secs(3);

/// One HTTP/1.1 connection to the backend, and the future that drives its IO.
#[derive(Debug)]
pub(super) struct Link<B: Body + 'static> {
    sender: SendRequest<B>,
    conn: Option<Connection<TokioIo<Stream>, B>>,
    last_used: Instant,
}

impl<B> Link<B>
where
    B: Body + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    pub(super) fn new(
        sender: SendRequest<B>,
        conn: Connection<TokioIo<Stream>, B>,
    ) -> Box<Link<B>> {
        // Boxed: the connection is large, and moves between the idle set and each response
        // body that drives it.
        Box::new(Link {
            sender,
            conn: Some(conn),
            last_used: Instant::now(),
        })
    }

    /// Moves the connection's IO along. Returns false once the connection has ended.
    fn poll_io(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(conn) = &mut self.conn else {
            return false;
        };
        if Pin::new(conn).poll(cx).is_ready() {
            self.conn = None;
            return false;
        }
        true
    }

    /// Whether a request can be sent now: the connection is alive, idle, and fresh.
    fn is_ready(&mut self, now: Instant) -> bool {
        // Let the connection notice a close by the backend before trusting it.
        now.duration_since(self.last_used) < IDLE_TIMEOUT
            && self.poll_io(&mut Context::from_waker(std::task::Waker::noop()))
            && self.sender.is_ready()
    }

    /// Sends `req` and polls the link's IO until the response head arrives.
    pub(super) async fn drive(
        &mut self,
        req: Request<B>,
    ) -> Result<Response<Incoming>, TrySendError<Request<B>>> {
        // Unconstrained: polled with a no-op waker (below), it must never be the one told to
        // yield by the runtime's budget, which wakes the waker it is given.
        let response = tokio::task::unconstrained(self.sender.try_send_request(req));
        tokio::pin!(response);
        // The first poll writes the request: its response cannot be there yet.
        let mut first = true;
        std::future::poll_fn(|cx| {
            // The response arrives through the connection's IO, and only there: drive it, then
            // look. Once the connection has ended, the response future resolves with its error.
            // The response's own channel is filled only inside `poll_io`, so it never gets
            // this task's waker: its answer would wake the task again for nothing, one more
            // poll of the whole client connection per request.
            let noop = &mut Context::from_waker(std::task::Waker::noop());
            // Woken since: first without this task's waker either, so that a response (and a
            // body) already there is taken without leaving the waker anywhere to be woken for
            // nothing (the body's channel wakes the connection whenever a chunk is taken, even
            // once it has ended); the response body drives the connection with the task's
            // waker from then on.
            if !std::mem::take(&mut first) {
                self.poll_io(noop);
                if let ready @ Poll::Ready(_) = response.as_mut().poll(noop) {
                    return ready;
                }
            }
            // Not there yet: again with this task's waker, to be woken when it comes.
            self.poll_io(cx);
            response.as_mut().poll(noop)
        })
        .await
    }
}

/// Which backend's idle set a link belongs to, and how many links that set may keep.
#[derive(Debug, Clone, Copy)]
pub(super) struct Home {
    /// Tells apart the backends of one process (tests run several on one thread).
    pub(super) backend: u64,
    /// `--upstream-idle-max`.
    pub(super) idle_max: usize,
}

/// One backend's idle links on one thread, oldest first. Boxed, as links are everywhere: taken
/// and given back, a link moves as a pointer.
#[allow(clippy::vec_box)]
struct IdleSet {
    backend: u64,
    links: Vec<Box<Link<RequestBody>>>,
}

thread_local! {
    /// This thread's idle links, one set per backend (in practice, one).
    static IDLE: RefCell<Vec<IdleSet>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` on this thread's idle set for `backend`. Links `f` evicts are dropped after the
/// borrow ends (closing a connection must not run inside it).
fn with_idle<R>(
    backend: u64,
    f: impl FnOnce(&mut Vec<Box<Link<RequestBody>>>, &mut Vec<Box<Link<RequestBody>>>) -> R,
) -> R {
    let mut evicted = Vec::new();
    let result = IDLE.with(|idle| {
        let mut sets = idle.borrow_mut();
        let index = match sets.iter().position(|set| set.backend == backend) {
            Some(index) => index,
            None => {
                sets.push(IdleSet {
                    backend,
                    links: Vec::new(),
                });
                sets.len() - 1
            }
        };
        f(&mut sets[index].links, &mut evicted)
    });
    drop(evicted);
    result
}

/// The most recently used idle link of this thread that can carry a request now. Links found
/// stale or closed on the way are dropped.
pub(super) fn take(home: Home) -> Option<Box<Link<RequestBody>>> {
    let now = Instant::now();
    with_idle(home.backend, |links, evicted| {
        while let Some(mut link) = links.pop() {
            if link.is_ready(now) {
                return Some(link);
            }
            evicted.push(link);
            // Everything below is older still.
            if now.duration_since(links.last()?.last_used) >= IDLE_TIMEOUT {
                evicted.append(links);
            }
        }
        None
    })
}

/// Drops this thread's links that have been idle too long, so that they do not hold the
/// backend's connections (and file descriptors) while no request comes.
pub(super) fn sweep(home: Home) {
    let now = Instant::now();
    with_idle(home.backend, |links, evicted| {
        let fresh = links
            .iter()
            .position(|link| now.duration_since(link.last_used) < IDLE_TIMEOUT)
            .unwrap_or(links.len());
        evicted.extend(links.drain(..fresh));
    });
}

/// A link lent to one response: its body drives the link's IO, and gives the link back to the
/// idle set once the response is complete. Dropped before then (the client went away, the cut
/// came), it closes the connection: a response half read cannot be followed by another.
#[derive(Debug)]
pub struct Lease {
    link: Box<Link<RequestBody>>,
    home: Home,
}

impl Lease {
    pub(super) fn new(link: Box<Link<RequestBody>>, home: Home) -> Lease {
        Lease { link, home }
    }

    /// Moves the connection's IO along (the response body arrives through it).
    pub fn poll_io(&mut self, cx: &mut Context<'_>) {
        self.link.poll_io(cx);
    }

    /// The response is complete: the link is free for this thread's next request.
    pub fn give_back(self) {
        let Lease { mut link, home } = self;
        if home.idle_max == 0 {
            return;
        }
        link.last_used = Instant::now();
        with_idle(home.backend, |links, evicted| {
            if links.len() >= home.idle_max {
                evicted.push(links.remove(0));
            }
            links.push(link);
        });
    }
}
