//! The bytes of HTTP/1.1 that lameduck speaks itself. On a backend link ([`super::links`]): the
//! request head written straight from the request, the response head parsed with httparse into
//! the response the client gets, and the response body's framing (RFC 9112 §6) taken off as its
//! bytes pass. Fields and last chunks are written the same way to clients (`server::plain`).
//!
//! Nothing here does IO: the link feeds it bytes and writes what it encodes, so every rule is
//! tested on bytes alone.

use std::net::SocketAddr;

use bytes::{Buf, Bytes};
use http::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_LENGTH, CONTENT_TYPE};
use http::{Request, Response, StatusCode, Version};

use crate::headers;

/// The largest response head (or trailer section) read from the backend: a backend that sends
/// more is broken (nginx's `proxy_buffer_size` allows 4 or 8 KiB; real heads are well under).
pub(super) const MAX_HEAD: usize = 64 * 1024;
/// The most header fields a response head may carry (hyper's limit too).
const MAX_HEADERS: usize = 100;
/// Room for this many fields is tried first.
const FEW_HEADERS: usize = 24;

/// Why the backend's bytes are not an HTTP/1.1 response.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("malformed response head: {0}")]
    Head(httparse::Error),
    #[error("malformed response head: {0}")]
    Field(&'static str),
    #[error("response head larger than {MAX_HEAD} bytes")]
    HeadTooLarge,
    #[error("malformed chunked body")]
    Chunk,
}

/// How a request body goes to the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Outgoing {
    /// No body.
    Empty,
    /// As many bytes as its `Content-Length` says, as they come.
    Length,
    /// A body of unknown length (the client's was chunked): chunked again.
    Chunked,
}

impl Outgoing {
    /// The framing of `req`'s body, its head already rewritten for the backend (where a client's
    /// `Transfer-Encoding` is gone, as a hop-by-hop header).
    pub(super) fn of<B: http_body::Body>(req: &Request<B>) -> Outgoing {
        if req.headers().contains_key(CONTENT_LENGTH) {
            Outgoing::Length
        } else if req.body().is_end_stream() {
            Outgoing::Empty
        } else {
            Outgoing::Chunked
        }
    }
}

/// Writes `req`'s head into `out` (emptied first), in origin form, as HTTP/1.1. With `hop` (the
/// client's address, and the `Host` to send if the client gave none), the head is rewritten for
/// the backend on its way out ([`headers::visit_for_backend`]); returns false, having written
/// nothing, for a head that must be rewritten first ([`headers::to_backend`]).
pub(super) fn encode_head<B>(
    req: &Request<B>,
    body: Outgoing,
    hop: Option<(SocketAddr, &str)>,
    out: &mut Vec<u8>,
) -> bool {
    let method = req.method().as_str().as_bytes();
    let target = req
        .uri()
        .path_and_query()
        .map_or("/", |target| target.as_str());
    let written = encode_fields(method, target.as_bytes(), out, |field| match hop {
        Some((remote, fallback_host)) => {
            headers::visit_for_backend(req, remote, fallback_host, field)
        }
        None => {
            for (name, value) in req.headers() {
                field(name.as_str().as_bytes(), &[value.as_bytes()]);
            }
            true
        }
    });
    if written && body == Outgoing::Chunked {
        // Before the empty line that ends the head.
        out.truncate(out.len() - 2);
        out.extend_from_slice(b"transfer-encoding: chunked\r\n\r\n");
    }
    written
}

/// Writes a request head into `out` (emptied first): the request line, the fields `visit`
/// gives to the function it is handed, and the empty line. Returns false, with `out` empty, if
/// `visit` does.
pub(super) fn encode_fields(
    method: &[u8],
    target: &[u8],
    out: &mut Vec<u8>,
    visit: impl FnOnce(&mut dyn FnMut(&[u8], &[&[u8]])) -> bool,
) -> bool {
    out.clear();
    out.extend_from_slice(method);
    out.push(b' ');
    out.extend_from_slice(target);
    out.extend_from_slice(b" HTTP/1.1\r\n");
    if !visit(&mut |name, value| push_field(out, name, value)) {
        out.clear();
        return false;
    }
    out.extend_from_slice(b"\r\n");
    true
}

/// Appends the field `name: value` (the concatenation of `value`'s parts) and its line end.
pub(crate) fn push_field(out: &mut Vec<u8>, name: &[u8], value: &[&[u8]]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    for part in value {
        out.extend_from_slice(part);
    }
    out.extend_from_slice(b"\r\n");
}

/// Appends the last chunk of a chunked body, carrying `trailers`.
pub(crate) fn push_last_chunk(out: &mut Vec<u8>, trailers: &HeaderMap) {
    out.extend_from_slice(b"0\r\n");
    for (name, value) in trailers {
        push_field(out, name.as_str().as_bytes(), &[value.as_bytes()]);
    }
    out.extend_from_slice(b"\r\n");
}

/// The size line of a chunk of `len` bytes.
pub(crate) fn chunk_size_line(len: usize) -> Bytes {
    Bytes::from(format!("{len:x}\r\n"))
}

/// A response head, parsed.
#[derive(Debug)]
pub(super) struct Head {
    pub(super) response: Response<()>,
    pub(super) body: Framing,
    /// The connection can carry another request once this response has ended.
    pub(super) reusable: bool,
    /// What the fields written out as they are hold ([`parse_head`] given somewhere to write).
    pub(super) relayed: Relayed,
}

/// What the response fields written out as they came (for `server::plain`) hold, which their
/// writer must not add again.
#[derive(Debug, Clone, Copy, Default)]
pub struct Relayed {
    pub content_length: bool,
    pub date: bool,
}

/// How the response body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Framing {
    Empty,
    Length(u64),
    Chunked,
    /// At the end of the connection.
    Close,
}

/// The response head at the start of `data`, and its length; `None` while incomplete. An
/// informational (1xx) head is returned as it is: the caller skips it.
///
/// Its fields, but the hop-by-hop ones, go into the response's header map; or, given `relay`,
/// are written there as they came (emptied first), the map holding only `Content-Type`: a
/// writer of bytes needs no map, and building one is most of a head's cost.
pub(super) fn parse_head(
    data: &Bytes,
    head_request: bool,
    mut relay: Option<&mut Vec<u8>>,
) -> Result<Option<(Head, usize)>, WireError> {
    // Room for a few fields is quick to set up, and most heads have fewer; a head with more is
    // parsed again with room for as many as are allowed.
    let few = &mut [httparse::EMPTY_HEADER; FEW_HEADERS];
    match parse_head_in(data, head_request, few, relay.as_deref_mut()) {
        Err(WireError::Head(httparse::Error::TooManyHeaders)) => {
            let mut fields = vec![httparse::EMPTY_HEADER; MAX_HEADERS];
            match parse_head_in(data, head_request, &mut fields, relay) {
                Err(WireError::Head(httparse::Error::TooManyHeaders)) => {
                    Err(WireError::HeadTooLarge)
                }
                parsed => parsed,
            }
        }
        parsed => parsed,
    }
}

/// What a response head's fields say of its framing and its connection.
#[derive(Debug, Default)]
struct Fields {
    length: Option<u64>,
    transfer_coded: bool,
    chunked: bool,
    close: bool,
    keep_alive: bool,
}

impl Fields {
    /// Notes a framing or connection field (`Content-Length`, `Transfer-Encoding`, `Connection`).
    fn note(&mut self, name: &[u8], value: &[u8]) -> Result<(), WireError> {
        if name.eq_ignore_ascii_case(b"content-length") {
            let this = parse_length(value).ok_or(WireError::Field("content-length"))?;
            if self.length.is_some_and(|length| length != this) {
                return Err(WireError::Field("content-length"));
            }
            self.length = Some(this);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            self.transfer_coded = true;
            // Only the last coding counts: chunked must be last to end the body.
            self.chunked = value
                .rsplit(|&byte| byte == b',')
                .next()
                .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if name.eq_ignore_ascii_case(b"connection") {
            for token in value.split(|&byte| byte == b',') {
                let token = token.trim_ascii();
                self.close |= token.eq_ignore_ascii_case(b"close");
                self.keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
            }
        }
        Ok(())
    }
}

/// [`parse_head`] with room for `fields.len()` fields.
fn parse_head_in<'a>(
    data: &'a Bytes,
    head_request: bool,
    fields: &mut [httparse::Header<'a>],
    relay: Option<&mut Vec<u8>>,
) -> Result<Option<(Head, usize)>, WireError> {
    let mut parsed = httparse::Response::new(fields);
    let len = match parsed.parse(data) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if data.len() > MAX_HEAD => {
            return Err(WireError::HeadTooLarge)
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(err) => return Err(WireError::Head(err)),
    };
    if len > MAX_HEAD {
        return Err(WireError::HeadTooLarge);
    }
    // httparse read three digits.
    let status = parsed
        .code
        .and_then(|code| StatusCode::from_u16(code).ok())
        .ok_or(WireError::Field("status"))?;
    let version = match parsed.version {
        Some(1) => Version::HTTP_11,
        _ => Version::HTTP_10,
    };
    let mut headers = HeaderMap::new();
    let mut noted = Fields::default();
    // The fields `Connection` names (hardly ever any) go no further than this hop.
    let mut named: Vec<&[u8]> = Vec::new();
    for field in parsed.headers.iter() {
        let name = field.name.as_bytes();
        if matches!(name.len(), 10 | 14 | 17) {
            noted.note(name, field.value)?;
        }
        if name.eq_ignore_ascii_case(b"connection") {
            named.extend(headers::connection_names(field.value));
        }
    }
    // Nor does a length beside chunks (RFC 9112 §6.3: the client would take it for the body's),
    // or on a 1xx or a 204, which have none to give (RFC 9110 §8.6): a client that trusted it
    // would fall out of step with the connection.
    let lengthless =
        noted.transfer_coded || status.is_informational() || status == StatusCode::NO_CONTENT;
    let stays = |name: &[u8], value: &[u8]| {
        let dropped_length = lengthless && name.eq_ignore_ascii_case(b"content-length");
        let hop = headers::is_hop_by_hop(name, value)
            || named.iter().any(|named| named.eq_ignore_ascii_case(name));
        !hop && !dropped_length
    };
    let mut relayed = Relayed::default();
    match relay {
        Some(out) => {
            out.clear();
            for field in parsed.headers.iter() {
                let name = field.name.as_bytes();
                if !stays(name, field.value) {
                    continue;
                }
                if name.eq_ignore_ascii_case(b"content-type") {
                    let value = HeaderValue::from_maybe_shared(data.slice_ref(field.value))
                        .map_err(|_| WireError::Field("value"))?;
                    headers.insert(CONTENT_TYPE, value);
                    continue;
                }
                relayed.content_length |= name.eq_ignore_ascii_case(b"content-length");
                relayed.date |= name.eq_ignore_ascii_case(b"date");
                push_field(out, name, &[field.value]);
            }
        }
        None => {
            headers.reserve(parsed.headers.len());
            for field in parsed.headers.iter() {
                if !stays(field.name.as_bytes(), field.value) {
                    continue;
                }
                let name = HeaderName::from_bytes(field.name.as_bytes())
                    .map_err(|_| WireError::Field("name"))?;
                let value = HeaderValue::from_maybe_shared(data.slice_ref(field.value))
                    .map_err(|_| WireError::Field("value"))?;
                headers.append(name, value);
            }
        }
    }
    let mut reusable = !noted.close && (version == Version::HTTP_11 || noted.keep_alive);
    let body = if head_request
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        Framing::Empty
    } else if noted.transfer_coded {
        // `Transfer-Encoding` overrides `Content-Length` (RFC 9112 §6.3); a body coded
        // otherwise than chunked last ends with the connection.
        if noted.chunked {
            Framing::Chunked
        } else {
            Framing::Close
        }
    } else {
        match noted.length {
            Some(0) => Framing::Empty,
            Some(length) => Framing::Length(length),
            None => Framing::Close,
        }
    };
    reusable &= body != Framing::Close;
    let mut response = Response::new(());
    *response.status_mut() = status;
    *response.version_mut() = version;
    *response.headers_mut() = headers;
    Ok(Some((
        Head {
            response,
            body,
            reusable,
            relayed,
        },
        len,
    )))
}

/// A `Content-Length` value: digits only (RFC 9110 §8.6).
fn parse_length(value: &[u8]) -> Option<u64> {
    let value = value.trim_ascii();
    if value.is_empty() {
        return None;
    }
    value.iter().try_fold(0u64, |length, &digit| {
        digit.is_ascii_digit().then_some(())?;
        length.checked_mul(10)?.checked_add(u64::from(digit - b'0'))
    })
}

/// What the next bytes of a response body are.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Step {
    Data(Bytes),
    Trailers(HeaderMap),
    /// The body is complete.
    End,
    /// The bytes given do not go further: more are needed, appended to those left.
    More,
}

/// Takes a response body's framing off its bytes, as they come.
#[derive(Debug)]
pub(super) struct Decoder {
    state: State,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// This many bytes are still to come.
    Length(u64),
    /// Everything until the connection ends.
    Close,
    /// The size line of the next chunk.
    ChunkSize,
    /// This many bytes of the current chunk are still to come.
    ChunkData(u64),
    /// The CRLF after a chunk's data.
    ChunkEnd,
    /// The trailer section, after the last chunk.
    Trailers,
    Done,
}

impl Decoder {
    pub(super) fn new(framing: Framing) -> Decoder {
        let state = match framing {
            Framing::Empty | Framing::Length(0) => State::Done,
            Framing::Length(length) => State::Length(length),
            Framing::Chunked => State::ChunkSize,
            Framing::Close => State::Close,
        };
        Decoder { state }
    }

    pub(super) fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// The connection has ended: whether that ends the body well (one framed by the close).
    pub(super) fn end_of_connection(&mut self) -> bool {
        let ends = self.state == State::Close;
        if ends {
            self.state = State::Done;
        }
        ends
    }

    /// The body's bytes still to come, when known.
    pub(super) fn remaining(&self) -> Option<u64> {
        match self.state {
            State::Length(length) => Some(length),
            State::Done => Some(0),
            _ => None,
        }
    }

    /// The next step of the body in `input`, taking what it uses off the front. Data is a slice
    /// of `input`, never a copy.
    pub(super) fn decode(&mut self, input: &mut Bytes) -> Result<Step, WireError> {
        loop {
            match self.state {
                State::Done => return Ok(Step::End),
                _ if input.is_empty() && self.state != State::Trailers => return Ok(Step::More),
                State::Close => return Ok(Step::Data(input.split_to(input.len()))),
                State::Length(length) => {
                    let data = take(input, length);
                    let length = length - data.len() as u64;
                    self.state = if length == 0 {
                        State::Done
                    } else {
                        State::Length(length)
                    };
                    return Ok(Step::Data(data));
                }
                State::ChunkData(length) => {
                    let data = take(input, length);
                    let length = length - data.len() as u64;
                    self.state = if length == 0 {
                        State::ChunkEnd
                    } else {
                        State::ChunkData(length)
                    };
                    return Ok(Step::Data(data));
                }
                State::ChunkSize => match httparse::parse_chunk_size(input) {
                    Ok(httparse::Status::Complete((used, size))) => {
                        input.advance(used);
                        self.state = if size == 0 {
                            State::Trailers
                        } else {
                            State::ChunkData(size)
                        };
                    }
                    Ok(httparse::Status::Partial) if input.len() > MAX_HEAD => {
                        return Err(WireError::Chunk)
                    }
                    Ok(httparse::Status::Partial) => return Ok(Step::More),
                    Err(_) => return Err(WireError::Chunk),
                },
                State::ChunkEnd => match &input[..] {
                    [b'\r'] => return Ok(Step::More),
                    [b'\r', b'\n', ..] => {
                        input.advance(2);
                        self.state = State::ChunkSize;
                    }
                    [b'\n', ..] => {
                        input.advance(1);
                        self.state = State::ChunkSize;
                    }
                    _ => return Err(WireError::Chunk),
                },
                State::Trailers => return self.trailers(input),
            }
        }
    }

    /// The trailer section: none (an empty line), or fields up to an empty line.
    fn trailers(&mut self, input: &mut Bytes) -> Result<Step, WireError> {
        match &input[..] {
            [] | [b'\r'] => return Ok(Step::More),
            [b'\r', b'\n', ..] | [b'\n', ..] => {
                input.advance(if input[0] == b'\r' { 2 } else { 1 });
                self.state = State::Done;
                return Ok(Step::End);
            }
            _ => {}
        }
        let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let used = match httparse::parse_headers(input, &mut fields) {
            Ok(httparse::Status::Complete((used, _))) => used,
            Ok(httparse::Status::Partial) if input.len() > MAX_HEAD => {
                return Err(WireError::Chunk)
            }
            Ok(httparse::Status::Partial) => return Ok(Step::More),
            Err(_) => return Err(WireError::Chunk),
        };
        let mut trailers = HeaderMap::new();
        for field in fields.iter().take_while(|field| !field.name.is_empty()) {
            let name = HeaderName::from_bytes(field.name.as_bytes());
            let value = HeaderValue::from_bytes(field.value);
            if let (Ok(name), Ok(value)) = (name, value) {
                trailers.append(name, value);
            }
        }
        input.advance(used);
        self.state = State::Done;
        Ok(Step::Trailers(trailers))
    }
}

/// Up to `limit` bytes off the front of `input`.
fn take(input: &mut Bytes, limit: u64) -> Bytes {
    let n = usize::try_from(limit).map_or(input.len(), |limit| limit.min(input.len()));
    input.split_to(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(text: &str) -> Result<Option<(Head, usize)>, WireError> {
        parse_head(&Bytes::copy_from_slice(text.as_bytes()), false, None)
    }

    /// Decodes `chunks` fed one after the other (bytes left over carried to the next), returning
    /// the data, whether the body ended, and the bytes left after its end.
    fn decode(framing: Framing, chunks: &[&[u8]]) -> (Vec<u8>, bool, Vec<u8>) {
        let mut decoder = Decoder::new(framing);
        let mut data = Vec::new();
        let mut input = Bytes::new();
        for chunk in chunks {
            input = [&input[..], chunk].concat().into();
            loop {
                match decoder.decode(&mut input).unwrap() {
                    Step::Data(bytes) => data.extend_from_slice(&bytes),
                    Step::Trailers(_) => {}
                    Step::End => return (data, true, input.to_vec()),
                    Step::More => break,
                }
            }
        }
        (data, false, input.to_vec())
    }

    #[test]
    fn request_heads_are_written_in_origin_form_with_their_framing() {
        let req = Request::post("/a?b=c")
            .header("host", "x")
            .header("x-two", "1")
            .header("x-two", "2")
            .body(http_body_util::Empty::<Bytes>::new())
            .unwrap();
        let mut out = Vec::new();
        assert!(encode_head(&req, Outgoing::Chunked, None, &mut out));
        assert_eq!(
            out,
            b"POST /a?b=c HTTP/1.1\r\nhost: x\r\nx-two: 1\r\nx-two: 2\r\ntransfer-encoding: chunked\r\n\r\n"
        );
        assert_eq!(Outgoing::of(&req), Outgoing::Empty);
    }

    #[test]
    fn response_heads_give_status_headers_framing_and_reuse() {
        let (parsed, len) = head("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX: y\r\n\r\nhello")
            .unwrap()
            .unwrap();
        assert_eq!(len, 44);
        assert_eq!(parsed.response.status(), 200);
        assert_eq!(parsed.response.headers()["x"], "y");
        assert_eq!(parsed.body, Framing::Length(5));
        assert!(parsed.reusable);

        let chunked = head(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\nContent-Length: 3\r\n\r\n",
        );
        assert_eq!(chunked.unwrap().unwrap().0.body, Framing::Chunked);
        let closed = head("HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 3\r\n\r\n");
        assert!(!closed.unwrap().unwrap().0.reusable);
        let until_close = head("HTTP/1.1 200 OK\r\n\r\n").unwrap().unwrap().0;
        assert_eq!(
            (until_close.body, until_close.reusable),
            (Framing::Close, false)
        );
        let old = head("HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n")
            .unwrap()
            .unwrap()
            .0;
        assert!(!old.reusable);
        let old_kept =
            head("HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 1\r\n\r\n");
        assert!(old_kept.unwrap().unwrap().0.reusable);
        let no_content = head("HTTP/1.1 204 No Content\r\n\r\n").unwrap().unwrap().0;
        assert_eq!(
            (no_content.body, no_content.reusable),
            (Framing::Empty, true)
        );
        let head_response = parse_head(
            &Bytes::from_static(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n"),
            true,
            None,
        );
        assert_eq!(head_response.unwrap().unwrap().0.body, Framing::Empty);
        let informational = head("HTTP/1.1 100 Continue\r\n\r\n").unwrap().unwrap().0;
        assert!(informational.response.status().is_informational());

        // The client gets the head without what belonged to this hop.
        let hop = head(concat!(
            "HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Drop\r\nX-Drop: 1\r\nKeep-Alive: 5\r\n",
            "Transfer-Encoding: chunked\r\nTE: trailers\r\nX-Keep: 2\r\n\r\n"
        ));
        let hop = hop.unwrap().unwrap().0;
        let names: Vec<&str> = hop.response.headers().keys().map(|n| n.as_str()).collect();
        assert_eq!(names, ["te", "x-keep"]);
        assert_eq!((hop.body, hop.reusable), (Framing::Chunked, true));

        assert!(head("HTTP/1.1 200 OK\r\nContent-Le").unwrap().is_none());
        assert!(head("HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n").is_err());
        assert!(head("HTTP/1.1 200 OK\r\nContent-Length: +1\r\n\r\n").is_err());
        assert!(head("HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n").is_ok());
        assert!(head("HTTP/1.1 2000 OK\r\n\r\n").is_err());
        assert!(head("SSH-2.0-OpenSSH\r\n\r\n").is_err());
        let huge = format!("HTTP/1.1 200 OK\r\nX: {}", "a".repeat(MAX_HEAD));
        assert!(matches!(head(&huge), Err(WireError::HeadTooLarge)));
    }

    /// Relayed, the fields go out as they came but for this hop's, `Content-Type` alone in the
    /// map; the same head in a map holds the same fields.
    #[test]
    fn relayed_fields_are_the_mapped_ones_as_they_came() {
        let text = concat!(
            "HTTP/1.1 200 OK\r\nServer: x\r\nConnection: keep-alive, X-Drop\r\nX-Drop: 1\r\n",
            "Content-Type: text/event-stream\r\nContent-Length: 3\r\nDate: d\r\n",
            "Transfer-Encoding: chunked\r\nX-Keep: A b\r\n\r\n"
        );
        let data = Bytes::copy_from_slice(text.as_bytes());
        let mut out = b"stale".to_vec();
        let (relayed, _) = parse_head(&data, false, Some(&mut out)).unwrap().unwrap();
        assert_eq!(out, b"Server: x\r\nDate: d\r\nX-Keep: A b\r\n");
        let map = relayed.response.headers();
        assert_eq!(map.len(), 1);
        assert_eq!(map["content-type"], "text/event-stream");
        assert!(relayed.relayed.date && !relayed.relayed.content_length);
        assert_eq!((relayed.body, relayed.reusable), (Framing::Chunked, true));

        let (mapped, _) = parse_head(&data, false, None).unwrap().unwrap();
        let names: Vec<&str> = mapped
            .response
            .headers()
            .keys()
            .map(|n| n.as_str())
            .collect();
        assert_eq!(names, ["server", "content-type", "date", "x-keep"]);
    }

    #[test]
    fn bodies_end_where_their_framing_says_whatever_the_reads() {
        let body = decode(Framing::Length(5), &[b"hel", b"loNEXT"]);
        assert_eq!(body, (b"hello".to_vec(), true, b"NEXT".to_vec()));
        let chunked: &[u8] = b"5;ext=1\r\nhello\r\n1\r\n!\r\n0\r\nX-Sum: 6\r\n\r\nNEXT";
        // Every way of cutting the bytes in two gives the same body.
        for cut in 0..chunked.len() - 4 {
            let body = decode(Framing::Chunked, &[&chunked[..cut], &chunked[cut..]]);
            assert_eq!(
                body,
                (b"hello!".to_vec(), true, b"NEXT".to_vec()),
                "cut at {cut}"
            );
        }
        let body = decode(Framing::Chunked, &[b"3\r\nabc\r\n0\r\n\r\n"]);
        assert_eq!(body, (b"abc".to_vec(), true, Vec::new()));
        let body = decode(Framing::Close, &[b"abc", b"def"]);
        assert_eq!(body, (b"abcdef".to_vec(), false, Vec::new()));
        assert_eq!(
            decode(Framing::Empty, &[b"x"]),
            (Vec::new(), true, b"x".to_vec())
        );

        let mut bad = Decoder::new(Framing::Chunked);
        assert!(bad.decode(&mut Bytes::from_static(b"zz\r\n")).is_err());
        let mut bad = Decoder::new(Framing::Chunked);
        let mut input = Bytes::from_static(b"1\r\naXY");
        assert_eq!(
            bad.decode(&mut input).unwrap(),
            Step::Data(Bytes::from_static(b"a"))
        );
        assert!(bad.decode(&mut input).is_err());
    }

    #[test]
    fn trailers_are_passed_on() {
        let mut decoder = Decoder::new(Framing::Chunked);
        let mut input = Bytes::from_static(b"0\r\ngrpc-status: 0\r\n\r\n");
        let Step::Trailers(trailers) = decoder.decode(&mut input).unwrap() else {
            panic!("no trailers");
        };
        assert_eq!(trailers["grpc-status"], "0");
        assert_eq!(decoder.decode(&mut input).unwrap(), Step::End);
    }
}
