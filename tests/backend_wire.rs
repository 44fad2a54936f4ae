//! lameduck's own HTTP/1.1 client on backend links (src/backend/h1.rs, src/backend/links.rs),
//! tested on the wire: the real binary in front of raw TCP backends written here, which read
//! requests byte for byte and answer with exact bytes, and raw clients that check what comes
//! back byte for byte.
//!
//! Reuse of a backend connection is per worker thread, so every test that counts backend
//! connections sends its requests one after the other on one client connection (one worker).

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

/// The value of header `name` in a head (`Name: value` lines), case-insensitive.
fn header(head: &str, name: &str) -> Option<String> {
    head.split("\r\n").skip(1).find_map(|line| {
        let (field, value) = line.split_once(':')?;
        field
            .trim()
            .eq_ignore_ascii_case(name)
            .then(|| value.trim().to_string())
    })
}

// ---------------------------------------------------------------------------------------------
// The raw backend

/// What the raw backend does with the connection once it has written an answer.
#[derive(Debug, Clone, Copy)]
enum Then {
    /// Reads the next request.
    Stay,
    /// Closes it at once.
    Close,
    /// Reads nothing more and closes it after this long.
    CloseAfter(Duration),
    /// Shuts down its writing side at once (the client sees the end of the response), then
    /// closes after this long without reading anything more.
    HalfClose(Duration),
}

struct Answer {
    bytes: Vec<u8>,
    then: Then,
}

fn answer(bytes: impl AsRef<[u8]>, then: Then) -> Answer {
    Answer {
        bytes: bytes.as_ref().to_vec(),
        then,
    }
}

/// One request as the backend read it.
#[derive(Debug, Clone)]
struct Seen {
    /// Which backend connection (numbered in the order of their first request).
    conn: usize,
    /// Which request on that connection.
    nth: usize,
    /// The head, with its final empty line.
    head: String,
    /// The body's bytes as they were on the wire (chunk framing included).
    body: Vec<u8>,
}

impl Seen {
    fn line(&self) -> &str {
        self.head.split("\r\n").next().unwrap_or_default()
    }

    fn header(&self, name: &str) -> Option<String> {
        header(&self.head, name)
    }
}

type Script = Arc<dyn Fn(&Seen) -> Answer + Send + Sync>;

/// A backend that reads each request (head, and body unless `heads_only`), records it, and
/// writes what the script answers. Connections that never carry a request (lameduck's start-up
/// probe) are not counted.
struct RawBackend {
    port: u16,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl RawBackend {
    async fn start(script: impl Fn(&Seen) -> Answer + Send + Sync + 'static) -> RawBackend {
        RawBackend::start_with(false, Arc::new(script)).await
    }

    async fn heads_only(script: impl Fn(&Seen) -> Answer + Send + Sync + 'static) -> RawBackend {
        RawBackend::start_with(true, Arc::new(script)).await
    }

    async fn start_with(heads_only: bool, script: Script) -> RawBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let next_conn = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn({
            let seen = Arc::clone(&seen);
            async move {
                let mut conns = tokio::task::JoinSet::new();
                while let Ok((stream, _)) = listener.accept().await {
                    let _ = stream.set_nodelay(true);
                    conns.spawn(serve(
                        stream,
                        heads_only,
                        Arc::clone(&script),
                        Arc::clone(&seen),
                        Arc::clone(&next_conn),
                    ));
                }
            }
        });
        RawBackend { port, seen, task }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// How many connections carried at least one request.
    fn connections(&self) -> usize {
        let seen = self.seen();
        seen.iter().map(|s| s.conn + 1).max().unwrap_or(0)
    }

    /// Asserts that the backend saw `requests` requests over `connections` connections.
    fn assert_served(&self, requests: usize, connections: usize, why: &str) {
        let seen = self.seen();
        assert_eq!(seen.len(), requests, "{seen:?}");
        assert_eq!(self.connections(), connections, "{why}: {seen:?}");
    }
}

impl Drop for RawBackend {
    fn drop(&mut self) {
        // Aborting the accept loop drops its JoinSet, which aborts every connection's task.
        self.task.abort();
    }
}

async fn serve(
    mut stream: TcpStream,
    heads_only: bool,
    script: Script,
    seen: Arc<Mutex<Vec<Seen>>>,
    next_conn: Arc<AtomicUsize>,
) {
    let mut buf = Vec::new();
    let mut conn = None;
    for nth in 0.. {
        let Some((head, body)) = read_request(&mut stream, &mut buf, heads_only).await else {
            return;
        };
        let conn = *conn.get_or_insert_with(|| next_conn.fetch_add(1, Ordering::SeqCst));
        let request = Seen {
            conn,
            nth,
            head,
            body,
        };
        seen.lock().unwrap().push(request.clone());
        let reply = script(&request);
        if stream.write_all(&reply.bytes).await.is_err() {
            return;
        }
        match reply.then {
            Then::Stay => {}
            Then::Close => return,
            Then::CloseAfter(delay) => {
                tokio::time::sleep(delay).await;
                return;
            }
            Then::HalfClose(delay) => {
                let _ = stream.shutdown().await;
                tokio::time::sleep(delay).await;
                return;
            }
        }
    }
}

async fn fill(stream: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 64 * 1024];
    match stream.read(&mut chunk).await {
        Ok(n) if n > 0 => {
            buf.extend_from_slice(&chunk[..n]);
            true
        }
        _ => false,
    }
}

/// The next request's head and (unless `heads_only`) its body's wire bytes; `None` once the
/// connection ends.
async fn read_request(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    heads_only: bool,
) -> Option<(String, Vec<u8>)> {
    let end = loop {
        if let Some(at) = find(buf, b"\r\n\r\n") {
            break at + 4;
        }
        if !fill(stream, buf).await {
            return None;
        }
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    buf.drain(..end);
    if heads_only {
        return Some((head, Vec::new()));
    }
    let chunked = header(&head, "transfer-encoding")
        .is_some_and(|coding| coding.to_ascii_lowercase().ends_with("chunked"));
    let len = if chunked {
        // Walk the chunks to find where the body ends; keep its bytes as they are.
        let mut pos = 0;
        loop {
            let line_end = loop {
                if let Some(at) = find(&buf[pos..], b"\r\n") {
                    break pos + at;
                }
                if !fill(stream, buf).await {
                    return None;
                }
            };
            let line = String::from_utf8_lossy(&buf[pos..line_end]).into_owned();
            let size = usize::from_str_radix(line.split(';').next().unwrap().trim(), 16)
                .unwrap_or_else(|_| panic!("backend: not a chunk size line: {line:?}"));
            pos = line_end + 2;
            if size == 0 {
                // Trailer fields, up to an empty line.
                loop {
                    let line_end = loop {
                        if let Some(at) = find(&buf[pos..], b"\r\n") {
                            break pos + at;
                        }
                        if !fill(stream, buf).await {
                            return None;
                        }
                    };
                    let empty = line_end == pos;
                    pos = line_end + 2;
                    if empty {
                        break;
                    }
                }
                break pos;
            }
            while buf.len() < pos + size + 2 {
                if !fill(stream, buf).await {
                    return None;
                }
            }
            assert_eq!(
                &buf[pos + size..pos + size + 2],
                b"\r\n",
                "backend: bad chunk"
            );
            pos += size + 2;
        }
    } else if let Some(len) = header(&head, "content-length") {
        let len: usize = len.parse().expect("backend: a content length");
        while buf.len() < len {
            if !fill(stream, buf).await {
                return None;
            }
        }
        len
    } else {
        0
    };
    let body = buf.drain(..len).collect();
    Some((head, body))
}

/// The data of a chunked body given as wire bytes, checking its framing; and its trailer
/// section's lines.
fn dechunk(mut wire: &[u8]) -> (Vec<u8>, Vec<String>) {
    let mut data = Vec::new();
    loop {
        let end = find(wire, b"\r\n").expect("a chunk size line");
        let line = std::str::from_utf8(&wire[..end]).unwrap();
        let size = usize::from_str_radix(line.split(';').next().unwrap().trim(), 16)
            .unwrap_or_else(|_| panic!("not a chunk size: {line:?}"));
        wire = &wire[end + 2..];
        if size == 0 {
            let mut trailers = Vec::new();
            loop {
                let end = find(wire, b"\r\n").expect("a trailer line");
                if end == 0 {
                    assert_eq!(wire.len(), 2, "bytes after the chunked body: {wire:?}");
                    return (data, trailers);
                }
                trailers.push(String::from_utf8_lossy(&wire[..end]).into_owned());
                wire = &wire[end + 2..];
            }
        }
        data.extend_from_slice(&wire[..size]);
        assert_eq!(
            &wire[size..size + 2],
            b"\r\n",
            "chunk data not followed by CRLF"
        );
        wire = &wire[size + 2..];
    }
}

// ---------------------------------------------------------------------------------------------
// The raw client

/// One response as the client read it.
#[derive(Debug)]
struct Resp {
    status: u16,
    head: String,
    body: Vec<u8>,
    /// The trailer section's lines (chunked responses only).
    trailers: Vec<String>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<String> {
        header(&self.head, name)
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The `detail` of lameduck's JSON error body, checking its `error`.
    fn detail(&self, error: &str) -> String {
        let body: serde_json::Value = serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.text()));
        assert_eq!(body["error"], error, "{body}");
        body["detail"].as_str().expect("a detail").to_string()
    }
}

struct Client {
    stream: TcpStream,
    buf: Vec<u8>,
    closed: bool,
}

impl Client {
    async fn open(port: u16) -> Client {
        let stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        Client {
            stream,
            buf: Vec::new(),
            closed: false,
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.stream
            .write_all(bytes)
            .await
            .expect("write to lameduck");
    }

    async fn fill(&mut self, deadline: Instant) -> bool {
        if self.closed {
            return false;
        }
        let mut chunk = [0u8; 64 * 1024];
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, self.stream.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
            Ok(_) => {
                self.closed = true;
                false
            }
            Err(_) => panic!(
                "client: nothing more within {PATIENCE:?}; read so far: {:?}",
                String::from_utf8_lossy(&self.buf)
            ),
        }
    }

    async fn more(&mut self, deadline: Instant) {
        assert!(
            self.fill(deadline).await,
            "client: lameduck closed within a response; read so far: {:?}",
            String::from_utf8_lossy(&self.buf)
        );
    }

    async fn line(&mut self, deadline: Instant) -> String {
        loop {
            if let Some(at) = find(&self.buf, b"\r\n") {
                let line = String::from_utf8_lossy(&self.buf[..at]).into_owned();
                self.buf.drain(..at + 2);
                return line;
            }
            self.more(deadline).await;
        }
    }

    /// The next whole response (to a HEAD request if `head_request`: no body).
    async fn response(&mut self, head_request: bool) -> Resp {
        let deadline = Instant::now() + PATIENCE;
        let end = loop {
            if let Some(at) = find(&self.buf, b"\r\n\r\n") {
                break at + 4;
            }
            self.more(deadline).await;
        };
        let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
        self.buf.drain(..end);
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|code| code.parse().ok())
            .unwrap_or_else(|| panic!("not a status line: {head:?}"));
        let mut resp = Resp {
            status,
            head,
            body: Vec::new(),
            trailers: Vec::new(),
        };
        if head_request || status < 200 || status == 204 || status == 304 {
            return resp;
        }
        if resp
            .header("transfer-encoding")
            .is_some_and(|coding| coding.eq_ignore_ascii_case("chunked"))
        {
            loop {
                let line = self.line(deadline).await;
                let size = usize::from_str_radix(line.split(';').next().unwrap().trim(), 16)
                    .unwrap_or_else(|_| panic!("not a chunk size: {line:?}"));
                if size == 0 {
                    loop {
                        let line = self.line(deadline).await;
                        if line.is_empty() {
                            return resp;
                        }
                        resp.trailers.push(line);
                    }
                }
                while self.buf.len() < size + 2 {
                    self.more(deadline).await;
                }
                resp.body.extend(self.buf.drain(..size));
                assert_eq!(self.buf.drain(..2).collect::<Vec<u8>>(), b"\r\n");
            }
        } else if let Some(len) = resp.header("content-length") {
            let len: usize = len.parse().unwrap();
            while self.buf.len() < len {
                self.more(deadline).await;
            }
            resp.body = self.buf.drain(..len).collect();
        } else {
            while self.fill(deadline).await {}
            resp.body = std::mem::take(&mut self.buf);
        }
        resp
    }

    /// Everything until lameduck closes the connection.
    async fn rest(&mut self) -> Vec<u8> {
        let deadline = Instant::now() + PATIENCE;
        while self.fill(deadline).await {}
        std::mem::take(&mut self.buf)
    }

    /// Sends a GET for `path` and reads its response.
    async fn get(&mut self, path: &str) -> Resp {
        self.send(format!("GET {path} HTTP/1.1\r\nHost: wire.test\r\n\r\n").as_bytes())
            .await;
        self.response(false).await
    }
}

/// One GET on a new client connection.
async fn get_once(port: u16, path: &str) -> Resp {
    Client::open(port).await.get(path).await
}

/// lameduck in front of `backend`, ready.
async fn lameduck(backend: &RawBackend) -> Lameduck {
    let ld = Builder::without_child(backend.port).spawn().await;
    ld.wait_ready().await;
    ld
}

/// An answer of `body` with its length, keeping the connection.
fn ok(body: &str) -> Answer {
    answer(
        format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nContent-Type: text/plain\r\n\r\n{body}",
            body.len()
        ),
        Then::Stay,
    )
}

/// The path of a request line (`GET /a HTTP/1.1` -> `/a`).
fn path(seen: &Seen) -> String {
    seen.line()
        .split(' ')
        .nth(1)
        .unwrap_or_default()
        .to_string()
}

// ---------------------------------------------------------------------------------------------
// Response framing

const CHUNKED: &[u8] = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n\
5;name=value\r\nhello\r\n7\r\n, world\r\n10;x=\"quoted\"\r\n 0123456789abcde\r\n0\r\nX-Sum: 28\r\n\r\n";
const CHUNKED_DATA: &str = "hello, world 0123456789abcde";
/// The same body without a trailer section.
const CHUNKED_PLAIN: &[u8] = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
5;name=value\r\nhello\r\n7\r\n, world\r\n10;x=\"quoted\"\r\n 0123456789abcde\r\n0\r\n\r\n";

#[tokio::test]
async fn a_chunked_response_with_extensions_passes_whole_and_the_link_is_reused() {
    let backend = RawBackend::start(|_| answer(CHUNKED_PLAIN, Then::Stay)).await;
    let ld = lameduck(&backend).await;
    let mut client = Client::open(ld.port).await;
    for round in 0..3 {
        let resp = client.get("/chunked").await;
        assert_eq!(resp.status, 200, "round {round}: {resp:?}");
        assert_eq!(resp.text(), CHUNKED_DATA, "round {round}");
    }
    backend.assert_served(
        3,
        1,
        "the backend connection was not reused after a chunked response",
    );
}

#[tokio::test]
async fn a_chunked_response_with_extensions_and_trailers_passes_whole_and_the_link_is_reused() {
    let backend = RawBackend::start(|_| answer(CHUNKED, Then::Stay)).await;
    let ld = lameduck(&backend).await;
    let mut client = Client::open(ld.port).await;
    for round in 0..3 {
        client
            .send(b"GET /chunked HTTP/1.1\r\nHost: wire.test\r\nTE: trailers\r\n\r\n")
            .await;
        let resp = client.response(false).await;
        assert_eq!(resp.status, 200, "round {round}: {resp:?}");
        assert_eq!(resp.text(), CHUNKED_DATA, "round {round}");
    }
    backend.assert_served(
        3,
        1,
        "the backend connection was not reused after a chunked response",
    );
}

#[tokio::test]
async fn trailers_of_a_chunked_response_reach_an_http1_client_that_accepts_them() {
    let backend = RawBackend::start(|_| answer(CHUNKED, Then::Stay)).await;
    let ld = lameduck(&backend).await;
    let mut client = Client::open(ld.port).await;
    client
        .send(b"GET /chunked HTTP/1.1\r\nHost: wire.test\r\nTE: trailers\r\n\r\n")
        .await;
    let resp = client.response(false).await;
    assert_eq!(resp.text(), CHUNKED_DATA);
    assert_eq!(resp.trailers, ["x-sum: 28"], "{resp:?}");
}

#[tokio::test]
async fn trailers_of_a_chunked_response_reach_an_http2_client() {
    use http_body_util::BodyExt;
    let backend = RawBackend::start(|_| answer(CHUNKED, Then::Stay)).await;
    let ld = lameduck(&backend).await;
    let (mut h2, task) = h2_connect(ld.port).await;
    for _ in 0..2 {
        let req = http::Request::get(format!("http://wire.test:{}/chunked", ld.port))
            .header("te", "trailers")
            .body(http_body_util::Full::default())
            .unwrap();
        let resp = h2.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        let collected = resp.into_body().collect().await.unwrap();
        let trailers = collected.trailers().cloned();
        assert_eq!(&collected.to_bytes()[..], CHUNKED_DATA.as_bytes());
        let trailers = trailers.expect("the trailer section was not passed on");
        assert_eq!(trailers["x-sum"], "28");
    }
    assert_eq!(backend.connections(), 1, "{:?}", backend.seen());
    task.abort();
}

#[tokio::test]
async fn a_chunked_response_written_a_byte_at_a_time_passes_whole() {
    // Every read of lameduck's ends at a different place: in the head, a size line, an
    // extension, the data, the CRLF after it, the trailer section.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let task = tokio::spawn({
        let accepted = Arc::clone(&accepted);
        async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((mut stream, _)) = listener.accept().await {
                stream.set_nodelay(true).unwrap();
                let accepted = Arc::clone(&accepted);
                conns.spawn(async move {
                    let mut buf = Vec::new();
                    let mut counted = false;
                    while read_request(&mut stream, &mut buf, false).await.is_some() {
                        if !counted {
                            accepted.fetch_add(1, Ordering::SeqCst);
                            counted = true;
                        }
                        for byte in CHUNKED {
                            if stream.write_all(&[*byte]).await.is_err() {
                                return;
                            }
                            tokio::time::sleep(Duration::from_millis(1)).await;
                        }
                    }
                });
            }
        }
    });
    let ld = Builder::without_child(port).spawn().await;
    ld.wait_ready().await;
    let mut client = Client::open(ld.port).await;
    for round in 0..2 {
        client
            .send(b"GET /slowly HTTP/1.1\r\nHost: wire.test\r\nTE: trailers\r\n\r\n")
            .await;
        let resp = client.response(false).await;
        assert_eq!(resp.status, 200, "round {round}: {resp:?}");
        assert_eq!(resp.text(), CHUNKED_DATA, "round {round}");
    }
    // (Two connections or one: see
    // a_chunked_response_with_extensions_and_trailers_passes_whole_and_the_link_is_reused.)
    assert!((1..=2).contains(&accepted.load(Ordering::SeqCst)));
    task.abort();
}

#[tokio::test]
async fn a_chunked_response_that_also_has_a_content_length_is_framed_by_its_chunks() {
    // RFC 9112 §6.3: Transfer-Encoding overrides Content-Length, and an intermediary that
    // forwards such a message must remove the Content-Length first.
    let backend = RawBackend::start(|seen| match path(seen).as_str() {
        "/both" => answer(
            "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n\
             5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
            Then::Stay,
        ),
        _ => ok("next"),
    })
    .await;
    let ld = lameduck(&backend).await;
    let mut client = Client::open(ld.port).await;
    let resp = client.get("/both").await;
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(
        resp.text(),
        "hello world",
        "the client got a body framed by the stale Content-Length: {resp:?}"
    );
    // The client connection is still in step.
    let resp = client.get("/next").await;
    assert_eq!(
        (resp.status, resp.text().as_str()),
        (200, "next"),
        "{resp:?}"
    );
}

#[tokio::test]
async fn bytes_after_a_complete_response_keep_its_link_from_being_reused() {
    // The answer comes with bytes after its end, in the same write: they belong to no request,
    // so the link cannot carry another (a later write: an_unsolicited_response_...).
    let backend = RawBackend::start(|seen| match (path(seen).as_str(), seen.conn) {
        ("/same-write", conn) => answer(
            format!("HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nok {conn}JUNK"),
            Then::Stay,
        ),
        (_, conn) => ok(&format!("fresh {conn}")),
    })
    .await;
    let ld = lameduck(&backend).await;
    let mut client = Client::open(ld.port).await;
    assert_eq!(client.get("/same-write").await.text(), "ok 0");
    let resp = client.get("/next").await;
    assert_eq!(
        (resp.status, resp.text().as_str()),
        (200, "fresh 1"),
        "{resp:?}"
    );
    assert_eq!(backend.connections(), 2);
}

#[tokio::test]
async fn an_unsolicited_response_on_an_idle_link_never_reaches_a_client() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        let mut conns = tokio::task::JoinSet::new();
        let mut n = 0;
        while let Ok((mut stream, _)) = listener.accept().await {
            n += 1;
            conns.spawn(async move {
                let mut buf = Vec::new();
                while read_request(&mut stream, &mut buf, false).await.is_some() {
                    let body = format!("conn {n}");
                    let reply = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    if stream.write_all(reply.as_bytes()).await.is_err() {
                        return;
                    }
                    // Then, unasked, a second response.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    let _ = stream
                        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nstale")
                        .await;
                }
            });
        }
    });
    let ld = Builder::without_child(port).spawn().await;
    ld.wait_ready().await;
    let mut client = Client::open(ld.port).await;
    let first = client.get("/first").await.text();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let second = client.get("/second").await;
    assert_eq!(second.status, 200, "{second:?}");
    assert_ne!(
        second.text(),
        "stale",
        "a response nobody asked for reached a client"
    );
    assert_ne!(
        second.text(),
        first,
        "the idle link was reused after unsolicited bytes"
    );
    task.abort();
}

#[tokio::test]
async fn a_close_delimited_response_passes_whole_and_its_link_is_not_reused() {
    let backend = RawBackend::start(|seen| {
        answer(
            format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the close, request {}",
                seen.conn
            ),
            Then::Close,
        )
    })
    .await;
    let ld = lameduck(&backend).await;
    let mut client = Client::open(ld.port).await;
    for round in 0..2 {
        let resp = client.get("/close-delimited").await;
        assert_eq!(resp.status, 200, "{resp:?}");
        assert_eq!(resp.text(), format!("until the close, request {round}"));
    }
    assert_eq!(backend.connections(), 2, "{:?}", backend.seen());
}

#[tokio::test]
async fn an_http10_response_without_keep_alive_passes_whole_and_its_link_is_not_reused() {
    // The backend keeps the connection open: lameduck must not reuse it all the same (an
    // HTTP/1.0 response without `Connection: keep-alive` ends its connection).
    let backend = RawBackend::start(|seen| {
        answer(
            format!(
                "HTTP/1.0 200 OK\r\nContent-Length: 7\r\n\r\nold {:03}",
                seen.conn
            ),
            Then::Stay,
        )
    })
    .await;
    let ld = lameduck(&backend).await;
    let mut client = Client::open(ld.port).await;
    for round in 0..2 {
        let resp = client.get("/old").await;
        assert_eq!(resp.status, 200, "{resp:?}");
        assert!(resp.head.starts_with("HTTP/1.1 200"), "{}", resp.head);
        assert_eq!(resp.text(), format!("old {round:03}"));
    }
    backend.assert_served(2, 2, "an HTTP/1.0 link was reused");
}

#[tokio::test]
async fn informational_responses_are_skipped_and_the_final_one_passes() {
    let backend = RawBackend::start(|_| {
        answer(
            concat!(
                "HTTP/1.1 100 Continue\r\n\r\n",
                "HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload; as=style\r\n\r\n",
                "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Final: yes\r\n\r\nfinal"
            ),
            Then::Stay,
        )
    })
    .await;
    let ld = lameduck(&backend).await;
    let mut client = Client::open(ld.port).await;
    for round in 0..2 {
        let resp = client.get("/hints").await;
        assert_eq!(resp.status, 200, "round {round}: {resp:?}");
        assert_eq!(resp.header("x-final").as_deref(), Some("yes"), "{resp:?}");
        assert_eq!(resp.text(), "final");
    }
    assert_eq!(backend.connections(), 1, "{:?}", backend.seen());
}

#[tokio::test]
async fn informational_responses_in_separate_writes_are_skipped() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        let mut conns = tokio::task::JoinSet::new();
        while let Ok((mut stream, _)) = listener.accept().await {
            stream.set_nodelay(true).unwrap();
            conns.spawn(async move {
                let mut buf = Vec::new();
                while read_request(&mut stream, &mut buf, false).await.is_some() {
                    for part in [
                        &b"HTTP/1.1 100 Continue\r\n"[..],
                        b"\r\nHTTP/1.1 103 Early",
                        b" Hints\r\nLink: </a>\r\n\r\n",
                        b"HTTP/1.1 200 OK\r\nContent-Len",
                        b"gth: 4\r\n\r\nd",
                        b"one",
                    ] {
                        let _ = stream.write_all(part).await;
                        tokio::time::sleep(Duration::from_millis(30)).await;
                    }
                }
            });
        }
    });
    let ld = Builder::without_child(port).spawn().await;
    ld.wait_ready().await;
    let resp = get_once(ld.port, "/split").await;
    assert_eq!(
        (resp.status, resp.text().as_str()),
        (200, "done"),
        "{resp:?}"
    );
    task.abort();
}

#[tokio::test]
async fn a_head_response_with_a_content_length_has_no_body_and_the_link_stays_in_step() {
    let backend = RawBackend::start(|seen| {
        if seen.line().starts_with("HEAD ") {
            answer(
                "HTTP/1.1 200 OK\r\nContent-Length: 1000\r\nContent-Type: text/plain\r\n\r\n",
                Then::Stay,
            )
        } else {
            ok("after the HEAD")
        }
    })
    .await;
    let ld = lameduck(&backend).await;
    let mut client = Client::open(ld.port).await;
    client
        .send(b"HEAD /big HTTP/1.1\r\nHost: wire.test\r\n\r\n")
        .await;
    let resp = client.response(true).await;
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(
        resp.header("content-length").as_deref(),
        Some("1000"),
        "the HEAD response lost its Content-Length: {}",
        resp.head
    );
    let resp = client.get("/next").await;
    assert_eq!(
        (resp.status, resp.text().as_str()),
        (200, "after the HEAD"),
        "{resp:?}"
    );
    // And the client connection carries nothing else: a third request still lines up.
    let resp = client.get("/third").await;
    assert_eq!(resp.text(), "after the HEAD");
    // (Whether the link was reused is the_link_of_a_response_without_a_body_is_reused.)
    assert_eq!(backend.seen().len(), 3, "{:?}", backend.seen());
}

/// A backend answering `/204` and `/304` (with the `Content-Length` a 304 may carry, RFC 9110
/// §8.6) without a body, and anything else `200 in step`.
async fn no_body_backend() -> RawBackend {
    RawBackend::start(|seen| match path(seen).as_str() {
        "/204" => answer("HTTP/1.1 204 No Content\r\nX-A: 1\r\n\r\n", Then::Stay),
        // As a server answers HEAD: the head a GET would get, and no body.
        "/head" => answer("HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\n", Then::Stay),
        "/304" => answer(
            "HTTP/1.1 304 Not Modified\r\nETag: \"v1\"\r\nContent-Length: 55\r\n\r\n",
            Then::Stay,
        ),
        _ => ok("in step"),
    })
    .await
}

#[tokio::test]
async fn a_no_content_response_has_no_body_and_the_link_stays_in_step() {
    let backend = no_body_backend().await;
    let ld = lameduck(&backend).await;
    let mut client = Client::open(ld.port).await;
    let resp = client.get("/204").await;
    assert_eq!(resp.status, 204, "{resp:?}");
    assert_eq!(resp.header("x-a").as_deref(), Some("1"));
    let resp = client.get("/after").await;
    assert_eq!((resp.status, resp.text().as_str()), (200, "in step"));
}

#[tokio::test]
async fn a_not_modified_response_with_a_content_length_passes_without_a_body() {
    let backend = no_body_backend().await;
    let ld = lameduck(&backend).await;
    let mut client = Client::open(ld.port).await;
    let resp = client.get("/304").await;
    assert_eq!(resp.status, 304, "{resp:?}");
    assert_eq!(resp.header("etag").as_deref(), Some("\"v1\""));
    let resp = client.get("/after").await;
    assert_eq!((resp.status, resp.text().as_str()), (200, "in step"));
}

#[tokio::test]
async fn the_link_of_a_response_without_a_body_is_reused() {
    let backend = no_body_backend().await;
    let ld = lameduck(&backend).await;
    let mut client = Client::open(ld.port).await;
    assert_eq!(client.get("/204").await.status, 204);
    client
        .send(b"HEAD /head HTTP/1.1\r\nHost: wire.test\r\n\r\n")
        .await;
    assert_eq!(client.response(true).await.status, 200);
    assert_eq!(client.get("/after").await.text(), "in step");
    backend.assert_served(
        3,
        1,
        "a new backend connection after each response without a body",
    );
}

// ---------------------------------------------------------------------------------------------
// Idle links the backend closed

#[tokio::test]
async fn a_get_on_an_idle_link_the_backend_closed_meanwhile_gets_its_answer() {
    // Every connection answers one request, then is closed 200 ms later.
    let backend = RawBackend::start(|seen| {
        let mut reply = ok(&format!("conn {}", seen.conn));
        reply.then = Then::CloseAfter(Duration::from_millis(200));
        reply
    })
    .await;
    let ld = lameduck(&backend).await;
    let mut client = Client::open(ld.port).await;
    let resp = client.get("/first").await;
    assert_eq!((resp.status, resp.text().as_str()), (200, "conn 0"));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let resp = client.get("/second").await;
    assert_eq!(
        (resp.status, resp.text().as_str()),
        (200, "conn 1"),
        "{resp:?}"
    );
}

#[tokio::test]
async fn a_get_on_an_idle_link_that_closes_as_it_is_written_is_sent_again_on_a_new_one() {
    // The first connection answers its first request, then reads the second and closes
    // without answering it: the race of a backend closing an idle connection.
    let backend = RawBackend::start(|seen| match (seen.conn, seen.nth) {
        (0, 1) => answer(b"", Then::Close),
        _ => ok(&format!("conn {} request {}", seen.conn, seen.nth)),
    })
    .await;
    let ld = lameduck(&backend).await;
    let mut client = Client::open(ld.port).await;
    let resp = client.get("/first").await;
    assert_eq!(resp.text(), "conn 0 request 0");
    let resp = client.get("/again?x=1").await;
    assert_eq!(
        (resp.status, resp.text().as_str()),
        (200, "conn 1 request 0"),
        "{resp:?}; log:\n{}",
        ld.log()
    );
    let seen = backend.seen();
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert_eq!(
        seen[1].head, seen[2].head,
        "the retried request differs from the first try"
    );
}

#[tokio::test]
async fn a_post_on_an_idle_link_that_closes_as_it_is_written_is_never_sent_twice() {
    let backend = RawBackend::start(|seen| match (seen.conn, seen.nth) {
        (0, 1) => answer(b"", Then::Close),
        _ => ok(&format!("conn {} request {}", seen.conn, seen.nth)),
    })
    .await;
    let ld = lameduck(&backend).await;
    let mut client = Client::open(ld.port).await;
    assert_eq!(client.get("/first").await.text(), "conn 0 request 0");
    client
        .send(b"POST /pay HTTP/1.1\r\nHost: wire.test\r\nContent-Length: 9\r\n\r\npay $100.")
        .await;
    let resp = client.response(false).await;
    assert_eq!(resp.status, 502, "{resp:?}");
    assert_eq!(resp.detail("bad_gateway"), "backend_closed");
    let posts: Vec<Seen> = backend
        .seen()
        .into_iter()
        .filter(|seen| seen.line().starts_with("POST "))
        .collect();
    assert_eq!(posts.len(), 1, "the POST was sent twice: {posts:?}");
    assert_eq!(posts[0].body, b"pay $100.");
    // lameduck carries on.
    let resp = get_once(ld.port, "/later").await;
    assert_eq!(resp.status, 200, "{resp:?}");
}

#[tokio::test]
async fn a_post_after_the_backend_closed_an_idle_link_goes_once_on_a_new_one() {
    let backend = RawBackend::start(|seen| {
        let mut reply = ok(&format!("conn {}", seen.conn));
        reply.then = Then::CloseAfter(Duration::from_millis(200));
        reply
    })
    .await;
    let ld = lameduck(&backend).await;
    let mut client = Client::open(ld.port).await;
    assert_eq!(client.get("/first").await.text(), "conn 0");
    tokio::time::sleep(Duration::from_millis(500)).await;
    client
        .send(b"POST /pay HTTP/1.1\r\nHost: wire.test\r\nContent-Length: 9\r\n\r\npay $100.")
        .await;
    let resp = client.response(false).await;
    // The closed link is seen closed before anything is written on it: a fresh one carries
    // the POST, once.
    assert_eq!(
        (resp.status, resp.text().as_str()),
        (200, "conn 1"),
        "{resp:?}"
    );
    let posts = backend
        .seen()
        .into_iter()
        .filter(|seen| seen.line().starts_with("POST "))
        .count();
    assert_eq!(posts, 1);
}

// ---------------------------------------------------------------------------------------------
// Broken backends

#[tokio::test]
async fn a_malformed_response_head_is_a_502_backend_bad_response() {
    let backend = RawBackend::start(|seen| match path(seen).as_str() {
        "/abc" => answer("HTTP/1.1 abc\r\n\r\n", Then::Stay),
        "/ssh" => answer("SSH-2.0-OpenSSH_9.6\r\n", Then::Stay),
        "/status" => answer("HTTP/1.1 2000 Huge\r\n\r\n", Then::Stay),
        "/length" => answer(
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
            Then::Stay,
        ),
        "/field" => answer("HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n", Then::Stay),
        _ => ok("fine"),
    })
    .await;
    let ld = lameduck(&backend).await;
    for bad in ["/abc", "/ssh", "/status", "/length", "/field"] {
        let resp = get_once(ld.port, bad).await;
        assert_eq!(resp.status, 502, "{bad}: {resp:?}");
        assert_eq!(resp.detail("bad_gateway"), "backend_bad_response", "{bad}");
    }
    let resp = get_once(ld.port, "/fine").await;
    assert_eq!((resp.status, resp.text().as_str()), (200, "fine"));
}

#[tokio::test]
async fn a_backend_that_closes_at_once_is_a_502_backend_closed() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            drop(stream);
        }
    });
    let ld = Builder::without_child(port).spawn().await;
    ld.wait_ready().await;
    for _ in 0..3 {
        let resp = get_once(ld.port, "/anything").await;
        assert_eq!(resp.status, 502, "{resp:?}");
        assert_eq!(resp.detail("bad_gateway"), "backend_closed");
    }
    task.abort();
}

/// Checks that `all` (everything the client got before lameduck closed) is not a complete
/// response: nothing at all (aborted before the head went out), or a head whose body falls
/// short of its framing. Returns whether a head came.
fn assert_incomplete(all: &[u8]) -> bool {
    let text = String::from_utf8_lossy(all).into_owned();
    if all.is_empty() {
        return false;
    }
    let end = find(all, b"\r\n\r\n").unwrap_or_else(|| panic!("no whole head: {text:?}"));
    let head = &text[..end + 4];
    assert!(head.starts_with("HTTP/1.1 200"), "{text:?}");
    let body = &all[end + 4..];
    match header(head, "content-length") {
        Some(len) => assert!(
            body.len() < len.parse::<usize>().unwrap(),
            "a complete response: {text:?}"
        ),
        None => {
            assert_eq!(
                header(head, "transfer-encoding").as_deref(),
                Some("chunked")
            );
            assert!(
                !body.ends_with(b"0\r\n\r\n"),
                "a complete response: {text:?}"
            );
        }
    }
    assert!(
        find(body, b"0123456789").is_some(),
        "the bytes that came are not passed on: {text:?}"
    );
    true
}

#[tokio::test]
async fn a_response_body_cut_short_is_not_passed_off_as_complete() {
    let cut = "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789";
    let cut_chunked = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\na\r\n0123456789\r\n";
    let later = Then::CloseAfter(Duration::from_millis(300));
    let backend = RawBackend::start(move |seen| match path(seen).as_str() {
        "/cut" => answer(cut, Then::Close),
        "/cut-later" => answer(cut, later),
        "/cut-chunked" => answer(cut_chunked, Then::Close),
        "/cut-chunked-later" => answer(cut_chunked, later),
        _ => ok("still serving"),
    })
    .await;
    let ld = lameduck(&backend).await;
    for path in ["/cut", "/cut-later", "/cut-chunked", "/cut-chunked-later"] {
        let mut client = Client::open(ld.port).await;
        client
            .send(format!("GET {path} HTTP/1.1\r\nHost: wire.test\r\n\r\n").as_bytes())
            .await;
        let headed = assert_incomplete(&client.rest().await);
        if path.ends_with("-later") {
            // The head and the first bytes were passed on before the backend hung up.
            assert!(headed, "{path}: the client got nothing before the close");
        }
        // lameduck carries on.
        let resp = get_once(ld.port, "/next").await;
        assert_eq!((resp.status, resp.text().as_str()), (200, "still serving"));
    }
    assert_eq!(get_once(ld.port, "/ready").await.status, 200);
}

// ---------------------------------------------------------------------------------------------
// Request bodies

#[tokio::test]
async fn request_bodies_reach_the_backend_in_valid_framing() {
    let backend = RawBackend::start(|seen| ok(&format!("got {} bytes", seen.body.len()))).await;
    let ld = lameduck(&backend).await;
    let mut client = Client::open(ld.port).await;
    // Chunked by the client (with an extension and a trailer section): chunked again, same
    // data, same trailer fields.
    client
        .send(
            concat!(
                "POST /chunked HTTP/1.1\r\nHost: wire.test\r\nTransfer-Encoding: chunked\r\n\r\n",
                "5;ext=1\r\nhello\r\n",
                "6\r\n world\r\n",
                "1a\r\nabcdefghijklmnopqrstuvwxyz\r\n",
                "0\r\nX-Req-Sum: 37\r\n\r\n"
            )
            .as_bytes(),
        )
        .await;
    let resp = client.response(false).await;
    assert_eq!(resp.status, 200, "{resp:?}");
    // Content-Length: as it is.
    client
        .send(b"POST /length HTTP/1.1\r\nHost: wire.test\r\nContent-Length: 11\r\n\r\nhello world")
        .await;
    let resp = client.response(false).await;
    assert_eq!((resp.status, resp.text().as_str()), (200, "got 11 bytes"));
    // And a GET after both, on the same link: the bodies ended where they should.
    let resp = client.get("/after").await;
    assert_eq!((resp.status, resp.text().as_str()), (200, "got 0 bytes"));

    let seen = backend.seen();
    assert_eq!(seen.len(), 3, "{seen:?}");
    let chunked = &seen[0];
    assert_eq!(
        chunked.header("transfer-encoding").as_deref(),
        Some("chunked"),
        "{}",
        chunked.head
    );
    assert_eq!(chunked.header("content-length"), None, "{}", chunked.head);
    let (data, trailers) = dechunk(&chunked.body);
    assert_eq!(trailers, ["x-req-sum: 37"], "the request's trailer section");
    assert_eq!(
        String::from_utf8(data).unwrap(),
        "hello worldabcdefghijklmnopqrstuvwxyz"
    );
    let length = &seen[1];
    assert_eq!(
        length.header("content-length").as_deref(),
        Some("11"),
        "{}",
        length.head
    );
    assert_eq!(length.header("transfer-encoding"), None, "{}", length.head);
    assert_eq!(length.body, b"hello world");
    assert_eq!(seen[2].header("transfer-encoding"), None);
    assert_eq!(backend.connections(), 1, "{seen:?}");
}

#[tokio::test]
async fn a_large_chunked_request_body_arrives_whole() {
    let backend = RawBackend::start(|seen| {
        let (data, _) = dechunk(&seen.body);
        let sum: u64 = data.iter().map(|&b| u64::from(b)).sum();
        ok(&format!("{} {sum}", data.len()))
    })
    .await;
    let ld = lameduck(&backend).await;
    let mut client = Client::open(ld.port).await;
    let mut bytes =
        b"POST /big HTTP/1.1\r\nHost: wire.test\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    let mut expected = (0u64, 0u64);
    for i in 0..200u32 {
        let chunk: Vec<u8> = (0..(i * 37 % 5000 + 1)).map(|j| (i + j) as u8).collect();
        expected.0 += chunk.len() as u64;
        expected.1 += chunk.iter().map(|&b| u64::from(b)).sum::<u64>();
        bytes.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        bytes.extend_from_slice(&chunk);
        bytes.extend_from_slice(b"\r\n");
    }
    bytes.extend_from_slice(b"0\r\n\r\n");
    client.send(&bytes).await;
    let resp = client.response(false).await;
    assert_eq!(
        (resp.status, resp.text()),
        (200, format!("{} {}", expected.0, expected.1))
    );
}

#[tokio::test]
async fn an_early_answer_to_a_large_upload_reaches_the_client() {
    const SIZE: usize = 8 * 1024 * 1024;
    let backend = RawBackend::heads_only(|seen| {
        if seen.line().starts_with("POST ") {
            answer(
                "HTTP/1.1 413 Payload Too Large\r\nContent-Length: 8\r\nConnection: close\r\n\r\ntoo big!",
                Then::HalfClose(Duration::from_millis(500)),
            )
        } else {
            answer(
                "HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\nhealthy",
                Then::Stay,
            )
        }
    })
    .await;
    let ld = lameduck(&backend).await;
    let stream = TcpStream::connect(("127.0.0.1", ld.port)).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    let writer = tokio::spawn(async move {
        let head =
            format!("POST /upload HTTP/1.1\r\nHost: wire.test\r\nContent-Length: {SIZE}\r\n\r\n");
        write.write_all(head.as_bytes()).await?;
        let block = vec![b'u'; 64 * 1024];
        for _ in 0..SIZE / block.len() {
            write.write_all(&block).await?;
        }
        std::io::Result::Ok(write)
    });
    // Read until lameduck closes (or the head and body of an answer have come).
    let mut got = Vec::new();
    let deadline = Instant::now() + PATIENCE;
    loop {
        let mut chunk = [0u8; 16 * 1024];
        let left = deadline.saturating_duration_since(Instant::now());
        let n = match tokio::time::timeout(left, read.read(&mut chunk)).await {
            Ok(Ok(n)) => n,
            Ok(Err(_)) => 0,
            Err(_) => panic!(
                "no answer to the upload within {PATIENCE:?}; got {:?}",
                String::from_utf8_lossy(&got)
            ),
        };
        if n == 0 {
            break;
        }
        got.extend_from_slice(&chunk[..n]);
        if got.ends_with(b"too big!") {
            break;
        }
    }
    let text = String::from_utf8_lossy(&got).into_owned();
    assert!(
        text.starts_with("HTTP/1.1 413"),
        "the client did not get the backend's 413: {text:?}; log:\n{}",
        ld.log()
    );
    assert!(text.ends_with("too big!"), "{text:?}");
    drop(read);
    writer.abort();
    // lameduck stays healthy.
    let resp = get_once(ld.port, "/after").await;
    assert_eq!(
        (resp.status, resp.text().as_str()),
        (200, "healthy"),
        "{resp:?}"
    );
    assert_eq!(get_once(ld.port, "/ready").await.status, 200);
}

// ---------------------------------------------------------------------------------------------
// Large heads

#[tokio::test]
async fn a_response_head_with_many_fields_passes_and_one_over_64_kib_is_a_502() {
    let backend = RawBackend::start(|seen| match path(seen).as_str() {
        "/many" => {
            let mut head = String::from("HTTP/1.1 200 OK\r\nContent-Length: 4\r\n");
            for i in 0..90 {
                head.push_str(&format!("X-Field-{i}: value {i}\r\n"));
            }
            head.push_str("\r\nmany");
            answer(head, Then::Stay)
        }
        "/huge" => answer(
            format!(
                "HTTP/1.1 200 OK\r\nX-Huge: {}\r\nContent-Length: 4\r\n\r\nhuge",
                "h".repeat(70 * 1024)
            ),
            Then::Stay,
        ),
        "/big-but-fine" => answer(
            format!(
                "HTTP/1.1 200 OK\r\nX-Big: {}\r\nContent-Length: 4\r\n\r\nfine",
                "b".repeat(60 * 1024)
            ),
            Then::Stay,
        ),
        _ => ok("other"),
    })
    .await;
    let ld = lameduck(&backend).await;
    let mut client = Client::open(ld.port).await;
    let resp = client.get("/many").await;
    assert_eq!((resp.status, resp.text().as_str()), (200, "many"));
    for i in 0..90 {
        assert_eq!(
            resp.header(&format!("x-field-{i}")),
            Some(format!("value {i}")),
            "{}",
            resp.head
        );
    }
    let resp = client.get("/big-but-fine").await;
    assert_eq!((resp.status, resp.text().as_str()), (200, "fine"));
    assert_eq!(resp.header("x-big").map(|v| v.len()), Some(60 * 1024));

    let resp = get_once(ld.port, "/huge").await;
    assert_eq!(resp.status, 502, "{}", resp.head);
    assert_eq!(resp.detail("bad_gateway"), "backend_bad_response");
    let resp = get_once(ld.port, "/after").await;
    assert_eq!((resp.status, resp.text().as_str()), (200, "other"));
}
