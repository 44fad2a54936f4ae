//! Plain requests, served without hyper: an HTTP/1.1 request with no body, whose whole head has
//! arrived, that breaks no rule and asks for nothing special, on its way to an HTTP/1.1 backend
//! while lameduck is ready. Nearly every request of a kept-alive client is one.
//!
//! Its head is parsed where it was read, and written out for the backend in the same pass
//! (`Backend::encode_head`): no `Request`, no header map, no second copy of the head. The
//! response goes back through the same request path as hyper's ([`crate::proxy::Proxy`]):
//! admission, the cut, event streams, metrics. What hyper adds on its way (the response's
//! framing, `Date`) is written here.
//!
//! Anything else (a head in pieces, a body, an upgrade, `Expect`, a broken rule, lameduck's own
//! endpoints, HTTP/1.0, any phase but ready) goes to hyper, with the bytes read so far: the
//! connection is hyper's from that request on, until it is idle again (see `server`).

use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::ops::Range;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, DATE};
use http::{Method, Response, StatusCode};
use http_body::Body;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::edge::{Activity, RequestGuard};
use super::Shared;
use crate::backend::{h1, Relayed};
use crate::body::ResponseBody;
use crate::headers::{self, MAX_HEADERS, REQUEST_LINE_MAX};
use crate::phase::{Phase, Subscription};

/// Room for a request head in each read.
const READ_SIZE: usize = 4096;
/// Body data at most this long is copied beside its head (or its chunk's framing) to go out in
/// one write; longer data is written as it is.
const COPY_MAX: usize = 16 * 1024;
/// A connection waiting for its next request keeps buffers this large at most (for heads, and
/// the small bodies written beside them): an idle connection holds no response's data.
const KEPT_MAX: usize = 4 * 1024;

/// How plain serving ended.
#[derive(Debug)]
pub(super) enum Outcome {
    /// The connection is over: the client closed, an error, a response that closes it, or the
    /// drain (an idle connection closes at once).
    Closed,
    /// A request this does not serve: hyper serves the connection from these bytes (what was
    /// read of it) on.
    Hyper(Bytes),
}

/// What plain serving needs of its connection.
pub(super) struct Conn<'a> {
    pub(super) stream: &'a mut TcpStream,
    pub(super) shared: &'a Shared,
    pub(super) activity: &'a Arc<Activity>,
    pub(super) phase: &'a mut Subscription,
    pub(super) remote: SocketAddr,
    /// Set once a request has been served (the drain then closes the connection).
    pub(super) served: &'a AtomicBool,
}

/// A head this serves, as parsed.
struct Parsed {
    method: Method,
    /// Where the path is in the head (the target up to its query).
    path: Range<usize>,
    len: usize,
    /// The client asked to close after this request.
    close: bool,
    head_request: bool,
    /// The client takes trailer fields (`TE: trailers`).
    trailers: bool,
}

/// Serves the connection's plain requests, starting with `read` (bytes already read), until one
/// is not plain or the connection ends.
pub(super) async fn serve(conn: Conn<'_>, read: Bytes) -> Outcome {
    let Conn {
        stream,
        shared,
        activity,
        phase,
        remote,
        served,
    } = conn;
    let mut buf = BytesMut::from(&read[..]);
    drop(read);
    // The head for the backend, then the response's fields as they came; it changes places with
    // a link's buffer at each request. `out`: what goes to the client.
    let (mut head, mut out) = (Vec::new(), Vec::new());
    let mut skipped_window = false;
    loop {
        if buf.is_empty() {
            // Waits without a read buffer (an idle connection holds none), nor a large one to
            // write heads into.
            buf = BytesMut::new();
            for kept in [&mut head, &mut out] {
                if kept.capacity() > KEPT_MAX {
                    *kept = Vec::new();
                }
            }
            if !next_request(stream, phase).await {
                return Outcome::Closed;
            }
            buf.reserve(READ_SIZE);
            match stream.try_read_buf(&mut buf) {
                Ok(0) => return Outcome::Closed,
                Ok(_) => {}
                Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(_) => return Outcome::Closed,
            }
        }
        let Some(parsed) = parse(&buf, shared, remote, &mut head) else {
            return Outcome::Hyper(buf.freeze());
        };
        served.store(true, Relaxed);
        if !std::mem::replace(&mut skipped_window, true) {
            activity.skip_window();
        }
        let request = activity.request();
        // Cannot fail: `parse` found the path there, in ASCII.
        let path = std::str::from_utf8(&buf[parsed.path.clone()]).unwrap_or("/");
        let answer = shared.proxy.handle_head(&parsed.method, path, &mut head);
        // A client that goes away before its answer comes abandons its request (as hyper's
        // connection notices when it reads the end of the connection).
        let (resp, relayed) = tokio::select! {
            answered = answer => answered,
            () = gone(stream) => return Outcome::Closed,
        };
        let relayed = relayed.map(|relayed| (relayed, &head[..]));
        let kept = respond(stream, resp, relayed, request, &parsed, &mut out).await;
        if !kept {
            let _ = stream.shutdown().await;
            return Outcome::Closed;
        }
        buf.advance(parsed.len);
    }
}

/// Resolves once the client has closed its side (or the connection failed). Bytes it sends
/// meanwhile (its next request, pipelined) are left for later: the wait then never ends.
async fn gone(stream: &TcpStream) {
    let mut byte = [0u8; 1];
    match stream.peek(&mut byte).await {
        Ok(0) | Err(_) => {}
        Ok(_) => std::future::pending().await,
    }
}

/// Waits for the client's next request: true once its bytes can be read, false to close (the
/// client went away, or the drain has begun). The idle timeout is the connection's task's, from
/// its [`super::edge::Watch`].
async fn next_request(stream: &TcpStream, phase: &mut Subscription) -> bool {
    loop {
        if phase.borrow_and_update() >= Phase::Draining {
            return false;
        }
        tokio::select! {
            biased;
            changed = phase.changed() => {
                if changed.is_err() {
                    return false;
                }
            }
            ready = stream.readable() => return ready.is_ok(),
        }
    }
}

/// The head at the start of `buf`, if it is a plain request's; its head for the backend is
/// then in `out`. Not async: the parser's fields live on the stack only while it runs, never
/// in the connection's future.
fn parse(buf: &[u8], shared: &Shared, remote: SocketAddr, out: &mut Vec<u8>) -> Option<Parsed> {
    if shared.phase.get() != Phase::Ready || !shared.backend.takes_heads() {
        return None;
    }
    let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let len = match req.parse_with_uninit_headers(buf, &mut fields) {
        Ok(httparse::Status::Complete(len)) => len,
        _ => return None,
    };
    let (Some(method), Some(target), Some(1)) = (req.method, req.path, req.version) else {
        return None;
    };
    if len > shared.limits.max_header_size
        || method.len() + target.len() + " HTTP/1.1\r\n".len() >= REQUEST_LINE_MAX
        || !target.starts_with('/')
        || !target.bytes().all(is_plain_target_byte)
        || method == "CONNECT"
    {
        return None;
    }
    let path = target.split('?').next().unwrap_or(target);
    if shared.proxy.is_local(path) {
        return None;
    }
    let mut hosts = 0;
    let mut close = false;
    let mut trailers = false;
    for field in req.headers.iter() {
        let name = field.name.as_bytes();
        let value = field.value;
        match name.len() {
            4 if name.eq_ignore_ascii_case(b"host") => {
                hosts += 1;
                if !headers::is_plain_host(value) {
                    return None;
                }
            }
            2 if name.eq_ignore_ascii_case(b"te") => {
                trailers |= value
                    .split(|&byte| byte == b',')
                    .any(|coding| coding.trim_ascii().eq_ignore_ascii_case(b"trailers"));
            }
            6 if name.eq_ignore_ascii_case(b"expect") => return None,
            7 if name.eq_ignore_ascii_case(b"upgrade") => return None,
            10 if name.eq_ignore_ascii_case(b"connection") => {
                for token in value.split(|&byte| byte == b',') {
                    let token = token.trim_ascii();
                    if token.eq_ignore_ascii_case(b"close") {
                        close = true;
                    } else if !token.eq_ignore_ascii_case(b"keep-alive") {
                        return None;
                    }
                }
            }
            // A body, even an empty one announced, is hyper's to read.
            14 if name.eq_ignore_ascii_case(b"content-length") => return None,
            17 if name.eq_ignore_ascii_case(b"transfer-encoding") => return None,
            _ => {}
        }
    }
    if hosts != 1 {
        return None;
    }
    let fields = || {
        req.headers
            .iter()
            .map(|field| (field.name.as_bytes(), field.value))
    };
    let target_bytes = target.as_bytes();
    if !shared
        .backend
        .encode_head(method.as_bytes(), target_bytes, fields, remote, out)
    {
        return None;
    }
    let start = target.as_ptr() as usize - buf.as_ptr() as usize;
    Some(Parsed {
        method: Method::from_bytes(method.as_bytes()).ok()?,
        path: start..start + path.len(),
        len,
        close,
        head_request: method == "HEAD",
        trailers,
    })
}

/// A byte a plain request target may hold: RFC 3986's path and query characters (unreserved,
/// sub-delims, `:@/?`, and `%` of percent-encoding). Anything else (`#`, quotes, brackets,
/// backquotes) is for hyper and `http`'s rules to judge, as before.
fn is_plain_target_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric()
        || matches!(
            byte,
            b'-' | b'.'
                | b'_'
                | b'~'
                | b'!'
                | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b';'
                | b'='
                | b':'
                | b'@'
                | b'/'
                | b'?'
                | b'%'
        )
}

/// How the response body goes to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// None (a response to HEAD, a 204 or a 304).
    None,
    /// As it comes, its length announced.
    Length,
    Chunked,
}

/// Writes `resp` to the client: its head, then its body as it comes. Returns whether the
/// connection can carry the next request. `relayed`: the backend's fields as they came (beside
/// those of `resp`'s map), and what they include.
async fn respond(
    stream: &mut TcpStream,
    resp: Response<ResponseBody>,
    relayed: Option<(Relayed, &[u8])>,
    mut request: RequestGuard,
    parsed: &Parsed,
    out: &mut Vec<u8>,
) -> bool {
    let (parts, mut body) = resp.into_parts();
    let status = parts.status;
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    let mut close = parsed.close;
    let (mut connection, mut length, mut date) = (false, false, false);
    if let Some((fields, bytes)) = relayed {
        out.extend_from_slice(bytes);
        length = fields.content_length;
        date = fields.date;
    }
    for (name, value) in &parts.headers {
        if name == CONNECTION {
            connection = true;
            close |= value.as_bytes().eq_ignore_ascii_case(b"close");
        } else if name == CONTENT_LENGTH {
            length = true;
        } else if name == DATE {
            date = true;
        }
        h1::push_field(out, name.as_str().as_bytes(), &[value.as_bytes()]);
    }
    drop(parts);
    if !date {
        push_date(out);
    }
    let framing = if parsed.head_request
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        Framing::None
    } else if length {
        Framing::Length
    } else if let Some(exact) = body.size_hint().exact() {
        out.extend_from_slice(b"content-length: ");
        out.extend_from_slice(itoa::Buffer::new().format(exact).as_bytes());
        out.extend_from_slice(b"\r\n");
        Framing::Length
    } else {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
        Framing::Chunked
    };
    if close && !connection {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");

    // The head goes out with the body's first data when that is there already: one write for
    // most responses.
    let (mut ended, mut trailed) = (false, false);
    while !ended {
        // What the body has ready now, without waiting; then, if nothing, wait for it.
        let mut frame = Pin::new(&mut body).poll_frame(&mut Context::from_waker(Waker::noop()));
        if frame.is_pending() && out.is_empty() {
            frame =
                Poll::Ready(std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await);
        }
        let mut large = None;
        match frame {
            Poll::Pending => {}
            Poll::Ready(None) => {
                ended = true;
                if framing == Framing::Chunked && !trailed {
                    out.extend_from_slice(b"0\r\n\r\n");
                }
            }
            // A body cut short (the backend failed, the drain deadline tore it): the client
            // must see it unfinished, never complete.
            Poll::Ready(Some(Err(_))) => {
                let _ = write(stream, &mut request, out, None).await;
                return false;
            }
            Poll::Ready(Some(Ok(frame))) if frame.is_trailers() => {
                // The last chunk carries them, to a client that takes them.
                if let (Some(fields), Framing::Chunked, true) =
                    (frame.trailers_ref(), framing, parsed.trailers)
                {
                    h1::push_last_chunk(out, fields);
                    trailed = true;
                }
            }
            Poll::Ready(Some(Ok(frame))) => {
                if let (Ok(data), false) = (frame.into_data(), framing == Framing::None) {
                    if framing == Framing::Chunked && !data.is_empty() {
                        out.extend_from_slice(&h1::chunk_size_line(data.len()));
                    }
                    if data.len() <= COPY_MAX {
                        out.extend_from_slice(&data);
                    } else {
                        large = Some(data);
                    }
                    if framing == Framing::Chunked && large.is_none() {
                        out.extend_from_slice(b"\r\n");
                    }
                }
            }
        }
        let chunked_large = framing == Framing::Chunked && large.is_some();
        if !out.is_empty() || large.is_some() {
            if write(stream, &mut request, out, large).await.is_err() {
                return false;
            }
            out.clear();
            if chunked_large {
                out.extend_from_slice(b"\r\n");
            }
        }
    }
    drop(body);
    drop(request);
    !close
}

/// Writes `out`, then `large`, to the client: until it is written, the response waits for the
/// client (the connection's watch closes a connection whose client takes nothing for the idle
/// timeout).
async fn write(
    stream: &mut TcpStream,
    request: &mut RequestGuard,
    out: &[u8],
    large: Option<Bytes>,
) -> std::io::Result<()> {
    request.handed();
    stream.write_all(out).await?;
    if let Some(large) = large {
        stream.write_all(&large).await?;
    }
    request.asked();
    Ok(())
}

/// Appends a `Date` field, as hyper adds one to a response without it. The text changes once a
/// second; each thread keeps the current one.
fn push_date(out: &mut Vec<u8>) {
    use std::cell::RefCell;
    use std::time::{SystemTime, UNIX_EPOCH};
    thread_local! {
        static DATE: RefCell<(u64, String)> = const { RefCell::new((0, String::new())) };
    }
    let now = SystemTime::now();
    let second = now
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs());
    DATE.with(|date| {
        let mut date = date.borrow_mut();
        if date.0 != second || date.1.is_empty() {
            *date = (second, httpdate::fmt_http_date(now));
        }
        out.extend_from_slice(b"date: ");
        out.extend_from_slice(date.1.as_bytes());
        out.extend_from_slice(b"\r\n");
    });
}
