//! Plain requests, served without hyper (src/server/plain.rs), and lameduck's own HTTP/1.1
//! backend client (src/backend/h1.rs, links.rs): each test sends a request that the plain path
//! serves (no body, whole head, one plain Host), and where it matters the same request made
//! non-plain (`Content-Length: 0` hands it to hyper), comparing what the client and the backend
//! see: both paths must agree.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::raw::RawConn;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

/// One request head as the backend read it: its connection, its number on it, its head.
#[derive(Debug, Clone)]
#[allow(dead_code)]
struct Seen {
    conn: usize,
    nth: usize,
    head: String,
}

impl Seen {
    fn line(&self) -> &str {
        self.head.split("\r\n").next().unwrap_or_default()
    }
}

/// What the backend does with a request: answer these bytes and keep the connection, or close
/// it without a word.
enum Reply {
    Answer(Vec<u8>),
    AnswerThenClose(Vec<u8>),
    /// Answers after this long.
    Later(Duration, Vec<u8>),
    Hangup,
}

fn ok(body: &str) -> Reply {
    Reply::Answer(
        format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes(),
    )
}

type Script = Arc<dyn Fn(&Seen) -> Reply + Send + Sync>;

/// A raw backend reading request heads only (the plain path sends no bodies).
struct Backend {
    port: u16,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Backend {
    async fn start(script: impl Fn(&Seen) -> Reply + Send + Sync + 'static) -> Backend {
        let script: Script = Arc::new(script);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let task = tokio::spawn({
            let seen = Arc::clone(&seen);
            async move {
                let mut conns = tokio::task::JoinSet::new();
                let mut next = 0;
                while let Ok((stream, _)) = listener.accept().await {
                    conns.spawn(serve(stream, next, Arc::clone(&script), Arc::clone(&seen)));
                    next += 1;
                }
            }
        });
        Backend { port, seen, task }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Requests whose request line contains `needle`.
    fn count(&self, needle: &str) -> usize {
        self.seen()
            .iter()
            .filter(|seen| seen.line().contains(needle))
            .count()
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(mut stream: TcpStream, conn: usize, script: Script, seen: Arc<Mutex<Vec<Seen>>>) {
    let mut buf = Vec::new();
    for nth in 0.. {
        let end = loop {
            if let Some(at) = find(&buf, b"\r\n\r\n") {
                break at + 4;
            }
            let mut chunk = [0u8; 16 * 1024];
            match stream.read(&mut chunk).await {
                Ok(n) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                _ => return,
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        buf.drain(..end);
        let request = Seen { conn, nth, head };
        seen.lock().unwrap().push(request.clone());
        match script(&request) {
            Reply::Answer(bytes) => {
                if stream.write_all(&bytes).await.is_err() {
                    return;
                }
            }
            Reply::AnswerThenClose(bytes) => {
                let _ = stream.write_all(&bytes).await;
                return;
            }
            Reply::Later(delay, bytes) => {
                tokio::time::sleep(delay).await;
                if stream.write_all(&bytes).await.is_err() {
                    return;
                }
            }
            Reply::Hangup => return,
        }
    }
}

async fn lameduck(backend: &Backend) -> Lameduck {
    let ld = Builder::without_child(backend.port).spawn().await;
    ld.wait_ready().await;
    ld
}

/// Everything lameduck sends on a connection until it closes it (or 5 s pass).
async fn read_to_close(stream: &mut TcpStream) -> Vec<u8> {
    let mut all = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut all)).await;
    all
}

/// The status of the one response lameduck gives `bytes` on a new connection.
async fn status_of(port: u16, bytes: &[u8]) -> u16 {
    let mut conn = RawConn::open(port).await;
    let _ = conn.send(bytes).await;
    conn.response().await.map_or(0, |resp| resp.status)
}

// ---------------------------------------------------------------------------------------------
// Where the plain path once went wrong (each of these failed before its fix)

/// A bodiless POST or PATCH that the backend read, acted on, and then closed its (reused)
/// connection without answering is not sent again: the backend may have acted on it (RFC 9110
/// §9.2.2: no automatic retry of a non-idempotent request). The client gets a 502.
#[tokio::test(flavor = "multi_thread")]
async fn a_bodiless_post_or_patch_the_backend_read_is_not_sent_again() {
    for method in ["POST", "PATCH"] {
        let line = format!("{method} /act");
        let hang_up_on = line.clone();
        let backend = Backend::start(move |seen| {
            if seen.line().starts_with(&hang_up_on) && seen.nth > 0 {
                // Read and acted on, then the backend died before it could answer.
                Reply::Hangup
            } else {
                ok("done")
            }
        })
        .await;
        let ld = lameduck(&backend).await;
        let mut client = RawConn::open(ld.port).await;
        client
            .send(b"GET /warm HTTP/1.1\r\nHost: review.test\r\n\r\n")
            .await
            .unwrap();
        let warm = client.response().await.expect("a response");
        assert_eq!(warm.status, 200);
        // On the same client connection (same worker): the warm-up's idle link is reused.
        client
            .send(format!("{line} HTTP/1.1\r\nHost: review.test\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let acted = client.response().await.expect("a response");
        assert_eq!(
            backend.count(&line),
            1,
            "the backend was sent the {method} {} times (client got {} {:?}); seen: {:#?}",
            backend.count(&line),
            acted.status,
            acted.text(),
            backend.seen()
        );
        assert_eq!(acted.status, 502, "{method}: {acted:?}");
    }
}

/// A request-target with a fragment (which has no place in an origin-form target, RFC 9112
/// §3.2.1) is forwarded as hyper's path forwards it: without the fragment (http::Uri drops it).
/// The plain path leaves such targets to hyper.
#[tokio::test(flavor = "multi_thread")]
async fn a_fragment_in_the_target_is_forwarded_as_the_hyper_path_forwards_it() {
    let backend = Backend::start(|_| ok("x")).await;
    let ld = lameduck(&backend).await;
    // Through hyper (a body, even an empty one, is hyper's).
    status_of(
        ld.port,
        b"GET /viahyper#frag HTTP/1.1\r\nHost: review.test\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )
    .await;
    // Plain.
    status_of(
        ld.port,
        b"GET /viaplain#frag HTTP/1.1\r\nHost: review.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    let lines: Vec<String> = backend
        .seen()
        .iter()
        .map(|seen| seen.line().to_string())
        .collect();
    assert!(
        lines.iter().any(|line| line == "GET /viahyper HTTP/1.1"),
        "{lines:?}"
    );
    assert!(
        lines.iter().any(|line| line == "GET /viaplain HTTP/1.1"),
        "the plain path forwarded the fragment: {lines:?}"
    );
}

/// A fragment does not hide lameduck's own endpoints: `/health#x` is answered by lameduck on
/// both paths (its path is `/health`).
#[tokio::test(flavor = "multi_thread")]
async fn a_local_endpoint_with_a_fragment_is_answered_locally_on_both_paths() {
    let backend = Backend::start(|_| ok("backend")).await;
    let ld = lameduck(&backend).await;
    let mut via_hyper = RawConn::open(ld.port).await;
    via_hyper
        .send(b"GET /health#x HTTP/1.1\r\nHost: review.test\r\nContent-Length: 0\r\n\r\n")
        .await
        .unwrap();
    let hyper_resp = via_hyper.response().await.unwrap();
    let mut via_plain = RawConn::open(ld.port).await;
    via_plain
        .send(b"GET /health#x HTTP/1.1\r\nHost: review.test\r\n\r\n")
        .await
        .unwrap();
    let plain_resp = via_plain.response().await.unwrap();
    assert_eq!(
        (plain_resp.status, plain_resp.text()),
        (hyper_resp.status, hyper_resp.text()),
        "backend saw: {:#?}",
        backend.seen()
    );
}

/// Characters no valid target has (`<`, `>`, a backquote, RFC 3986) are refused with 400 on
/// both paths (http::Uri's rules): the plain path leaves such targets to hyper.
#[tokio::test(flavor = "multi_thread")]
async fn a_target_the_hyper_path_refuses_is_refused_on_the_plain_path_too() {
    let backend = Backend::start(|_| ok("x")).await;
    let ld = lameduck(&backend).await;
    let hyper_status = status_of(
        ld.port,
        b"GET /a<script>`b HTTP/1.1\r\nHost: review.test\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )
    .await;
    let plain_status = status_of(
        ld.port,
        b"GET /a<script>`b HTTP/1.1\r\nHost: review.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(hyper_status, 400);
    assert_eq!(
        plain_status,
        hyper_status,
        "backend saw: {:#?}",
        backend.seen()
    );
}

/// A 204 carries no Content-Length (RFC 9110 §8.6: a server MUST NOT send one): one a backend
/// sent is dropped on both paths (hyper's server drops it; the plain path never relays it).
#[tokio::test(flavor = "multi_thread")]
async fn a_204_reaches_the_client_as_the_hyper_path_sends_it() {
    let backend = Backend::start(|_| {
        Reply::Answer(b"HTTP/1.1 204 No Content\r\nContent-Length: 7\r\nX-A: b\r\n\r\n".to_vec())
    })
    .await;
    let ld = lameduck(&backend).await;
    let mut via_hyper = TcpStream::connect(("127.0.0.1", ld.port)).await.unwrap();
    via_hyper
        .write_all(b"GET /n HTTP/1.1\r\nHost: review.test\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let hyper_bytes = String::from_utf8_lossy(&read_to_close(&mut via_hyper).await).into_owned();
    let mut via_plain = TcpStream::connect(("127.0.0.1", ld.port)).await.unwrap();
    via_plain
        .write_all(b"GET /n HTTP/1.1\r\nHost: review.test\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let plain_bytes = String::from_utf8_lossy(&read_to_close(&mut via_plain).await).into_owned();
    let has_length = |text: &str| text.to_ascii_lowercase().contains("content-length");
    assert!(!has_length(&hyper_bytes), "hyper path: {hyper_bytes:?}");
    assert!(!has_length(&plain_bytes), "plain path: {plain_bytes:?}");
}

// ---------------------------------------------------------------------------------------------
// The plain path's framing and drain, not covered elsewhere

/// Pipelined plain requests, HEAD among them, come back in order, a HEAD's without a body but
/// with the GET's length, a 304 without a body; `Connection: close` on the last closes.
#[tokio::test(flavor = "multi_thread")]
async fn pipelined_plain_requests_with_head_and_304_keep_their_framing() {
    let backend = Backend::start(|seen| {
        let line = seen.line();
        if line.contains("/not-modified") {
            Reply::Answer(b"HTTP/1.1 304 Not Modified\r\nETag: \"e\"\r\n\r\n".to_vec())
        } else if line.starts_with("HEAD ") {
            Reply::Answer(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n".to_vec())
        } else {
            let path = line.split(' ').nth(1).unwrap_or("").to_string();
            ok(&path)
        }
    })
    .await;
    let ld = lameduck(&backend).await;
    let mut stream = TcpStream::connect(("127.0.0.1", ld.port)).await.unwrap();
    stream
        .write_all(
            b"GET /one HTTP/1.1\r\nHost: review.test\r\n\r\n\
              HEAD /two HTTP/1.1\r\nHost: review.test\r\n\r\n\
              GET /not-modified HTTP/1.1\r\nHost: review.test\r\n\r\n\
              GET /four HTTP/1.1\r\nHost: review.test\r\nConnection: close\r\n\r\n",
        )
        .await
        .unwrap();
    let all = String::from_utf8_lossy(&read_to_close(&mut stream).await).into_owned();
    let heads: Vec<&str> = all
        .match_indices("HTTP/1.1 ")
        .map(|(at, _)| &all[at..])
        .collect();
    assert_eq!(heads.len(), 4, "{all:?}");
    // The first body, then directly the HEAD's head: nothing of a body after it.
    assert!(all.contains("\r\n\r\n/oneHTTP/1.1 200 OK\r\n"), "{all:?}");
    let head_response = &heads[1][..heads[1].find("\r\n\r\n").unwrap() + 4];
    assert!(
        head_response
            .to_ascii_lowercase()
            .contains("content-length: 5"),
        "{head_response:?}"
    );
    assert!(
        heads[1][head_response.len()..].starts_with("HTTP/1.1 304 Not Modified\r\n"),
        "{all:?}"
    );
    assert!(heads[3].starts_with("HTTP/1.1 200 OK\r\n"), "{all:?}");
    assert!(all.ends_with("\r\n\r\n/four"), "{all:?}");
    assert!(
        heads[3].to_ascii_lowercase().contains("connection: close"),
        "{all:?}"
    );
}

/// A plain request whose backend answers with no length (the end of its connection ends the
/// body) reaches an HTTP/1.1 client chunked, and the client connection carries the next
/// request.
#[tokio::test(flavor = "multi_thread")]
async fn a_close_delimited_answer_goes_out_chunked_and_the_connection_is_kept() {
    let backend = Backend::start(|seen| {
        if seen.line().contains("/eof") {
            Reply::AnswerThenClose(b"HTTP/1.1 200 OK\r\n\r\nuntil the end".to_vec())
        } else {
            ok("next")
        }
    })
    .await;
    let ld = lameduck(&backend).await;
    let mut client = RawConn::open(ld.port).await;
    client
        .send(b"GET /eof HTTP/1.1\r\nHost: review.test\r\n\r\n")
        .await
        .unwrap();
    let first = client.response().await.expect("a response");
    assert_eq!(
        first.header("transfer-encoding"),
        Some("chunked"),
        "{first:?}"
    );
    assert_eq!(first.text(), "until the end");
    client
        .send(b"GET /again HTTP/1.1\r\nHost: review.test\r\n\r\n")
        .await
        .unwrap();
    let second = client.response().await.expect("a second response");
    assert_eq!((second.status, second.text().as_str()), (200, "next"));
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// Opens `n` client connections, sends each one plain GET of `path`, reads its response, and
/// keeps them all open and idle; returns them with lameduck's RSS growth per connection (KiB).
async fn idle_connections(port: u16, pid: u32, n: usize, path: &str) -> (Vec<RawConn>, f64) {
    let before = rss_kib(pid);
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        let mut conn = RawConn::open(port).await;
        conn.send(format!("GET {path} HTTP/1.1\r\nHost: review.test\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let resp = conn.response().await.expect("a response");
        assert_eq!(resp.status, 200);
        conns.push(conn);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = rss_kib(pid);
    (conns, after.saturating_sub(before) as f64 / n as f64)
}

/// An idle kept-alive client connection holds no response data: after a 12 KB response it
/// holds no more than after a 1-byte one (the plain path copies small body data beside its
/// head, and lets a large head buffer go before waiting for the next request).
#[tokio::test(flavor = "multi_thread")]
async fn an_idle_plain_connection_keeps_no_buffer_the_size_of_its_last_response() {
    let big = "b".repeat(12_000);
    let backend = Backend::start(move |seen| {
        if seen.line().contains("/big") {
            ok(&big)
        } else {
            ok("s")
        }
    })
    .await;
    let ld = lameduck(&backend).await;
    let pid = ld.pid().as_raw() as u32;
    // Warm up (threads, links, allocator arenas).
    let (warm, _) = idle_connections(ld.port, pid, 200, "/small").await;
    drop(warm);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (small, small_each) = idle_connections(ld.port, pid, 400, "/small").await;
    let (big, big_each) = idle_connections(ld.port, pid, 400, "/big").await;
    drop((small, big));
    assert!(
        big_each < small_each + 4.0,
        "each idle connection after a 12 KB response holds {big_each:.1} KiB, \
         after a 1-byte one {small_each:.1} KiB"
    );
}

/// The drain, on connections served without hyper: an idle kept-alive plain connection is
/// closed once new requests are refused (here at once: no drain delay); a plain request in flight
/// then gets `Connection: close` and its connection is closed after its response.
#[tokio::test(flavor = "multi_thread")]
async fn the_drain_closes_idle_plain_connections_and_tells_in_flight_ones_to_close() {
    let backend = Backend::start(|seen| {
        if seen.line().contains("/slow") {
            Reply::Later(
                Duration::from_millis(1500),
                b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\ndone".to_vec(),
            )
        } else {
            ok("done")
        }
    })
    .await;
    let ld = Builder::without_child(backend.port)
        .args(&["--drain-delay", "0s", "--grace-period", "30s"])
        .spawn()
        .await;
    ld.wait_ready().await;
    let mut idle = RawConn::open(ld.port).await;
    idle.send(b"GET /a HTTP/1.1\r\nHost: review.test\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(idle.response().await.unwrap().status, 200);
    let mut busy = RawConn::open(ld.port).await;
    busy.send(b"GET /warm HTTP/1.1\r\nHost: review.test\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(busy.response().await.unwrap().status, 200);
    busy.send(b"GET /slow HTTP/1.1\r\nHost: review.test\r\n\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    ld.signal(nix::sys::signal::Signal::SIGTERM);
    let closed_after = idle.closed().await;
    assert!(
        closed_after < Duration::from_secs(2),
        "the idle connection was closed {closed_after:?} after SIGTERM"
    );
    let signalled = std::time::Instant::now();
    let slow = busy.response().await.expect("the in-flight response");
    let answered_after = signalled.elapsed();
    assert_eq!(slow.status, 200);
    assert_eq!(
        slow.header("connection"),
        Some("close"),
        "answered {answered_after:?} after the idle connection closed: {slow:?}\nlog:\n{}",
        ld.log()
    );
    busy.closed().await;
}
