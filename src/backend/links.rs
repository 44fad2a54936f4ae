//! The HTTP/1.1 backend connections ("links") of each worker thread, held only while a request
//! uses them.
//!
//! A link is taken for one request and lent to its response ([`LinkBody`]), whose body reads
//! the rest of it; then it goes back to the idle set of the thread it is on.
//! Each worker thread has its own idle set (a thread-local): only that thread touches it, so
//! taking and giving back a link costs no lock, no atomic and no wake-up of another thread. The
//! set keeps at most `--upstream-idle-max` links, most recently used first, and none idle for
//! longer than [`IDLE_TIMEOUT`]; a client connection never pins one between its requests, so
//! a backend with a connection limit serves any number of idle clients.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{Response, Version};
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;
use tokio_util::io::poll_read_buf;

use super::dial::Stream;
use super::h1::{self, Decoder, Head, Step, WireError};
use super::RequestBody;
use crate::body::BoxError;

/// An idle link is not reused after this long: typical backends (Node, uvicorn: 5 s) close
/// theirs soon after, and a request must never be written onto a closing connection.
pub(super) const IDLE_TIMEOUT: Duration = Duration::from_secs(3);

/// How much room each read from the backend is given.
const READ_SIZE: usize = 16 * 1024;

/// One HTTP/1.1 connection to the backend, spoken by lameduck itself ([`h1`]): the task that
/// sends a request writes it and reads its response head, and the response body reads the
/// rest, with no channel and no other task between (as hyper's client connection has).
#[derive(Debug)]
pub(super) struct Link {
    io: Stream,
    /// Bytes read and not yet taken, and room for the next read.
    read: BytesMut,
    /// Read, split off `read`, and not yet taken: the start of a response body.
    pending: Bytes,
    /// The request head to write, encoded here (and kept to be sent again on a new link).
    pub(super) head: Vec<u8>,
    last_used: Instant,
    home: Home,
}

/// Why an exchange failed.
#[derive(Debug, thiserror::Error)]
pub(super) enum ExchangeError {
    #[error("the backend closed the connection before answering")]
    Closed,
    #[error("the backend closed the connection before the response ended")]
    Truncated,
    #[error("the backend connection failed")]
    Io(#[source] io::Error),
    #[error("the backend's response is not valid HTTP/1.1")]
    Wire(#[source] WireError),
    #[error("the client's request body failed")]
    ClientBody(#[source] BoxError),
}

/// A failed exchange, and whether the request could go again on a new link: nothing came
/// back, and no body was sent (an idle connection the backend closed as the request was
/// written). The backend may still have read the head and acted on it before closing: only an
/// idempotent request may go again (RFC 9110 §9.2.2), which the caller knows.
#[derive(Debug)]
pub(super) struct Failed {
    pub(super) error: ExchangeError,
    pub(super) retryable: bool,
}

impl Link {
    pub(super) fn new(io: Stream, home: Home) -> Box<Link> {
        // Boxed: a link moves between the idle set and each response body that reads it.
        Box::new(Link {
            io,
            read: BytesMut::new(),
            pending: Bytes::new(),
            head: Vec::new(),
            last_used: Instant::now(),
            home,
        })
    }

    /// Whether a request can be sent now: fresh, and not closed (nor sending anything) since its
    /// last response. Costs no system call unless the socket has become readable.
    fn is_ready(&mut self, now: Instant) -> bool {
        if now.duration_since(self.last_used) >= IDLE_TIMEOUT {
            return false;
        }
        let mut byte = [0u8; 1];
        let mut probe = ReadBuf::new(&mut byte);
        let noop = &mut Context::from_waker(std::task::Waker::noop());
        matches!(
            Pin::new(&mut self.io).poll_read(noop, &mut probe),
            Poll::Pending
        )
    }

    /// Writes the request head in [`Link::head`] and then `upload` (if the request has a body),
    /// reading the response as it comes; returns the response head (informational ones
    /// skipped), and what is left of the upload. The bytes read after the head are kept for the
    /// body. Given `relay`, the head's fields are written there (see [`h1::parse_head`]).
    pub(super) async fn exchange(
        &mut self,
        mut upload: Option<Box<Upload>>,
        head_request: bool,
        mut relay: Option<&mut Vec<u8>>,
    ) -> Result<(Head, Option<Box<Upload>>), Failed> {
        let mut written = 0;
        let mut answered = false;
        let retryable = upload.is_none();
        let failed = move |error, answered: bool| Failed {
            error,
            retryable: retryable && !answered,
        };
        std::future::poll_fn(|cx| {
            while written < self.head.len() {
                match Pin::new(&mut self.io).poll_write(cx, &self.head[written..]) {
                    Poll::Ready(Ok(0)) => {
                        return Poll::Ready(Err(failed(ExchangeError::Closed, answered)))
                    }
                    Poll::Ready(Ok(n)) => written += n,
                    Poll::Ready(Err(err)) => {
                        return Poll::Ready(Err(failed(ExchangeError::Io(err), answered)))
                    }
                    Poll::Pending => break,
                }
            }
            if written == self.head.len() {
                if let Some(body) = &mut upload {
                    match body.poll_send(&mut self.io, cx) {
                        Poll::Ready(Ok(())) => upload = None,
                        Poll::Ready(Err(Sending::Client(err))) => {
                            return Poll::Ready(Err(failed(ExchangeError::ClientBody(err), true)))
                        }
                        // The backend stops reading: it may have answered already.
                        Poll::Ready(Err(Sending::Backend)) => {
                            body.failed = true;
                        }
                        Poll::Pending => {}
                    }
                }
            }
            loop {
                if !self.read.is_empty() {
                    let data = self.read.split().freeze();
                    match h1::parse_head(&data, head_request, relay.as_deref_mut()) {
                        Ok(Some((head, len))) => {
                            let rest = data.slice(len..);
                            if head.response.status() == http::StatusCode::SWITCHING_PROTOCOLS {
                                // No upgrade was asked for on a link.
                                let unasked = WireError::Field("101 without an upgrade asked");
                                return Poll::Ready(Err(failed(
                                    ExchangeError::Wire(unasked),
                                    true,
                                )));
                            }
                            if head.response.status().is_informational() {
                                self.read.extend_from_slice(&rest);
                                continue;
                            }
                            self.pending = rest;
                            return Poll::Ready(Ok((head, upload.take())));
                        }
                        Ok(None) => self.read.extend_from_slice(&data),
                        Err(err) => {
                            return Poll::Ready(Err(failed(ExchangeError::Wire(err), true)))
                        }
                    }
                }
                self.read.reserve(READ_SIZE);
                match ready!(poll_read_buf(Pin::new(&mut self.io), cx, &mut self.read)) {
                    Ok(0) => return Poll::Ready(Err(failed(ExchangeError::Closed, answered))),
                    Ok(_) => answered = true,
                    Err(err) => return Poll::Ready(Err(failed(ExchangeError::Io(err), answered))),
                }
            }
        })
        .await
    }
}

/// A request body on its way to the backend, as the client sends it: as it is after a
/// `Content-Length`, chunked again otherwise.
#[derive(Debug)]
pub(super) struct Upload {
    body: RequestBody,
    chunked: bool,
    /// Encoded and not yet written.
    queue: VecDeque<Bytes>,
    ended: bool,
    /// The backend stopped taking it: the link cannot carry another request.
    failed: bool,
}

/// Why an upload stopped: the client's body failed, or the backend stopped taking it.
enum Sending {
    Client(BoxError),
    Backend,
}

impl Upload {
    pub(super) fn new(body: RequestBody, chunked: bool) -> Box<Upload> {
        Box::new(Upload {
            body,
            chunked,
            queue: VecDeque::new(),
            ended: false,
            failed: false,
        })
    }

    /// Writes what the client's body gives, as it gives it; ready once all of it is written.
    fn poll_send(&mut self, io: &mut Stream, cx: &mut Context<'_>) -> Poll<Result<(), Sending>> {
        if self.failed {
            return Poll::Pending;
        }
        loop {
            while let Some(front) = self.queue.front_mut() {
                match ready!(Pin::new(&mut *io).poll_write(cx, front)) {
                    Ok(0) => return Poll::Ready(Err(Sending::Backend)),
                    Ok(n) if n == front.len() => {
                        self.queue.pop_front();
                    }
                    Ok(n) => bytes::Buf::advance(front, n),
                    Err(_) => return Poll::Ready(Err(Sending::Backend)),
                }
            }
            if self.ended {
                return Poll::Ready(Ok(()));
            }
            match ready!(Pin::new(&mut self.body).poll_frame(cx)) {
                None => {
                    self.ended = true;
                    if self.chunked {
                        self.queue.push_back(Bytes::from_static(b"0\r\n\r\n"));
                    }
                }
                Some(Err(err)) => return Poll::Ready(Err(Sending::Client(err.into()))),
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) if data.is_empty() => {}
                    Ok(data) if self.chunked => {
                        self.queue.push_back(h1::chunk_size_line(data.len()));
                        self.queue.push_back(data);
                        self.queue.push_back(Bytes::from_static(b"\r\n"));
                    }
                    Ok(data) => self.queue.push_back(data),
                    Err(frame) => {
                        // Trailers end a chunked body; a body of known length has no place
                        // for them.
                        if let (true, Some(trailers)) = (self.chunked, frame.trailers_ref()) {
                            let mut last = Vec::new();
                            h1::push_last_chunk(&mut last, trailers);
                            self.queue.push_back(last.into());
                            self.ended = true;
                        }
                    }
                },
            }
        }
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
    links: Vec<Box<Link>>,
}

thread_local! {
    /// This thread's idle links, one set per backend (in practice, one).
    static IDLE: RefCell<Vec<IdleSet>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` on this thread's idle set for `backend`. Links `f` evicts are dropped after the
/// borrow ends (closing a connection must not run inside it).
fn with_idle<R>(backend: u64, f: impl FnOnce(&mut Vec<Box<Link>>, &mut Vec<Box<Link>>) -> R) -> R {
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
pub(super) fn take(home: Home) -> Option<Box<Link>> {
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

/// A response body read from its link, which is lent to it: given back to the idle set once
/// the response is complete ([`LinkBody::release`]). Dropped before then (the client went away,
/// the cut came), it closes the connection: a response half read cannot be followed by another.
/// A request body still on its way is sent as the response is read.
#[derive(Debug)]
pub struct LinkBody {
    link: Option<Box<Link>>,
    decoder: Decoder,
    reusable: bool,
    upload: Option<Box<Upload>>,
}

impl LinkBody {
    /// The body of the response `head`, read from `link`.
    pub(super) fn new(
        link: Box<Link>,
        head: Head,
        upload: Option<Box<Upload>>,
    ) -> Response<LinkBody> {
        let Head {
            response,
            body,
            reusable,
            relayed: _,
        } = head;
        let mut response = response.map(|()| LinkBody {
            link: Some(link),
            decoder: Decoder::new(body),
            reusable,
            upload,
        });
        // This hop speaks HTTP/1.1 to the client whatever the backend spoke.
        *response.version_mut() = Version::HTTP_11;
        response
    }

    /// The response is over: a link whose response is complete (its request too, and nothing
    /// more read after it) goes back to this thread's idle set for its next request.
    pub fn release(&mut self) {
        let Some(mut link) = self.link.take() else {
            return;
        };
        let clean = self.decoder.is_done()
            && self.reusable
            && self.upload.is_none()
            && link.pending.is_empty()
            && link.read.is_empty();
        let Home { backend, idle_max } = link.home;
        if !clean || idle_max == 0 {
            return;
        }
        link.last_used = Instant::now();
        with_idle(backend, |links, evicted| {
            if links.len() >= idle_max {
                evicted.push(links.remove(0));
            }
            links.push(link);
        });
    }

    fn fail(&mut self, err: impl Into<BoxError>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.link = None;
        Poll::Ready(Some(Err(err.into())))
    }
}

impl Drop for LinkBody {
    /// A body its reader drops once it has all it needs (hyper drops a body it may not send,
    /// or after its trailers) still gives a clean link back.
    fn drop(&mut self) {
        self.release();
    }
}

impl Body for LinkBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            let Some(link) = this.link.as_mut() else {
                return Poll::Ready(None);
            };
            if let Some(upload) = &mut this.upload {
                match upload.poll_send(&mut link.io, cx) {
                    Poll::Ready(Ok(())) => this.upload = None,
                    Poll::Ready(Err(_)) => {
                        // The backend answers without the rest of the request: the link cannot
                        // carry another.
                        this.upload = None;
                        this.reusable = false;
                    }
                    Poll::Pending => {}
                }
            }
            match this.decoder.decode(&mut link.pending) {
                Ok(Step::Data(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                Ok(Step::Trailers(trailers)) => {
                    return Poll::Ready(Some(Ok(Frame::trailers(trailers))))
                }
                Ok(Step::End) => return Poll::Ready(None),
                Ok(Step::More) => {}
                Err(err) => return this.fail(err),
            }
            if !link.pending.is_empty() {
                // A size line or a trailer section cut by a read: it continues with the next.
                let cut = std::mem::take(&mut link.pending);
                link.read.extend_from_slice(&cut);
            }
            link.read.reserve(READ_SIZE);
            match ready!(poll_read_buf(Pin::new(&mut link.io), cx, &mut link.read)) {
                Ok(0) if this.decoder.end_of_connection() => return Poll::Ready(None),
                Ok(0) => return this.fail(ExchangeError::Truncated),
                Ok(_) => link.pending = link.read.split().freeze(),
                Err(err) => return this.fail(err),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.link.is_none() || self.decoder.is_done()
    }

    fn size_hint(&self) -> SizeHint {
        self.decoder
            .remaining()
            .map_or_else(SizeHint::default, SizeHint::with_exact)
    }
}
