//! The edge: what lameduck refuses before anything reaches the backend, the client timers, the
//! version of its responses, HTTP/2 at the edge, and accept failures. Raw sockets wherever a
//! well-behaved client would refuse to send the input.

mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use nix::sys::signal::Signal;
use support::raw::*;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// lameduck without a child, in front of a backend that records what reaches it.
async fn fronting(args: &[&str], envs: &[(&str, &str)]) -> (Lameduck, Recording) {
    let backend = Recording::start().await;
    let mut builder = Builder::without_child(backend.port).args(args);
    for (key, value) in envs {
        builder = builder.env(key, value);
    }
    let ld = builder.spawn().await;
    ld.wait_ready().await;
    (ld, backend)
}

/// Sends each head on its own connection and checks the status and the JSON body's `detail`
/// (`None`: hyper's own answer, with no body), and that lameduck closes the connection after it.
async fn expect_refused(port: u16, cases: &[(&[u8], u16, Option<&str>)]) {
    for &(head, status, detail) in cases {
        let what = head.escape_ascii().to_string();
        let what = &what[..what.len().min(120)];
        let mut conn = RawConn::open(port).await;
        let _ = conn.send(head).await;
        let reply = conn
            .response()
            .await
            .unwrap_or_else(|| panic!("no answer to {what}"));
        assert_eq!(reply.status, status, "{what}: {}", reply.text());
        if let Some(detail) = detail {
            let error = match status {
                408 => "request_timeout",
                414 => "uri_too_long",
                431 => "header_too_large",
                _ => "bad_request",
            };
            assert_eq!(reply.detail(error), detail, "{what}");
            assert_eq!(reply.header("content-type"), Some("application/json"));
        }
        assert_eq!(reply.header("connection"), Some("close"), "{what}");
        conn.closed().await;
    }
}

#[tokio::test]
async fn two_hosts_or_a_target_that_disagrees_with_host_get_400_and_are_never_forwarded() {
    let (ld, backend) = fronting(&[], &[]).await;
    let dup = Some("duplicate_host");
    let mismatch = Some("host_mismatch");
    let invalid = Some("invalid_host");
    expect_refused(
        ld.port,
        &[
            (b"GET /two HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400, dup),
            (
                b"GET /same HTTP/1.1\r\nHost: a\r\nhost: a\r\n\r\n",
                400,
                dup,
            ),
            (
                b"GET /ready HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
                400,
                dup,
            ),
            (b"GET http://a/x HTTP/1.1\r\nHost: b\r\n\r\n", 400, mismatch),
            (
                b"GET http://a:8080/x HTTP/1.1\r\nHost: a\r\n\r\n",
                400,
                mismatch,
            ),
            (b"GET /none HTTP/1.1\r\n\r\n", 400, Some("missing_host")),
            (b"GET /space HTTP/1.1\r\nHost: a b\r\n\r\n", 400, invalid),
            (b"GET /user HTTP/1.1\r\nHost: user@a\r\n\r\n", 400, invalid),
            (b"GET /empty HTTP/1.1\r\nHost:\r\n\r\n", 400, invalid),
        ],
    )
    .await;
    assert!(backend.seen().is_empty(), "forwarded: {:?}", backend.seen());

    // What agrees is forwarded.
    for head in [
        &b"GET http://a/agree HTTP/1.1\r\nHost: A:80\r\n\r\n"[..],
        b"GET http://a/target-only HTTP/1.1\r\n\r\n",
        b"GET /old HTTP/1.0\r\n\r\n",
    ] {
        let reply = exchange(ld.port, head).await.expect("an answer");
        assert_eq!(reply.status, 200, "{}", head.escape_ascii());
    }
    assert_eq!(
        backend.seen(),
        ["GET /agree", "GET /target-only", "GET /old"]
    );
}

#[tokio::test]
async fn malformed_heads_get_400_with_a_json_body_and_are_never_forwarded() {
    let (ld, backend) = fronting(&[], &[]).await;
    let ctl = Some("control_character");
    let fold = Some("obsolete_line_folding");
    let both = Some("content_length_with_transfer_encoding");
    let coding = Some("unsupported_transfer_coding");
    expect_refused(
        ld.port,
        &[
            (b"GET /soh HTTP/1.1\r\nHost: a\r\nX: a\x01b\r\n\r\n", 400, ctl),
            (b"GET /del HTTP/1.1\r\nHost: a\r\nX: a\x7fb\r\n\r\n", 400, ctl),
            (b"GET /nul HTTP/1.1\r\nHost: a\r\nX\x00Y: b\r\n\r\n", 400, ctl),
            (b"GET /esc\x1b HTTP/1.1\r\nHost: a\r\n\r\n", 400, ctl),
            (b"GET /fold HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n", 400, fold),
            (b"GET /tab HTTP/1.1\r\nHost: a\r\nX: a\r\n\tb\r\n\r\n", 400, fold),
            (
                b"POST /cl-te HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
                400,
                both,
            ),
            (
                b"POST /te-cl HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
                400,
                both,
            ),
            (
                b"POST /two-cl HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nab",
                400,
                Some("duplicate_content_length"),
            ),
            (
                b"POST /bad-cl HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n",
                400,
                Some("invalid_content_length"),
            ),
            (
                b"POST /gzip HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n",
                400,
                coding,
            ),
            (
                b"POST /gzip-chunked HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
                400,
                coding,
            ),
            (
                b"POST /twice HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
                400,
                coding,
            ),
            // What only hyper's parser sees: its own 400, with no body.
            (b"G@T / HTTP/1.1\r\nHost: a\r\n\r\n", 400, None),
            (b"GET / HTTP/1.1\r\nHost: a\r\nNo-Colon\r\n\r\n", 400, None),
            (b"GET / HTTP/1.1\r\nHost: a\r\nX Y: z\r\n\r\n", 400, None),
            (b"GET / HTTP/7.1\r\nHost: a\r\n\r\n", 400, None),
            (b"GET / HTTP/1.1\rHost: a\r\n\r\n", 400, None),
        ],
    )
    .await;
    assert!(backend.seen().is_empty(), "forwarded: {:?}", backend.seen());

    // lameduck carries on, and obs-text and tabs inside values are fine.
    let reply = exchange(
        ld.port,
        b"GET /fine HTTP/1.1\r\nHost: a\r\nX: caf\xc3\xa9\tok\r\n\r\n",
    )
    .await
    .unwrap();
    assert_eq!(reply.status, 200);
    assert_eq!(backend.seen(), ["GET /fine"]);
}

/// A head of exactly `len` bytes.
fn head_of(len: usize, path: &str) -> Vec<u8> {
    let frame = format!("GET {path} HTTP/1.1\r\nHost: a\r\nX-Fill: \r\n\r\n");
    let fill = "f".repeat(len - frame.len());
    format!("GET {path} HTTP/1.1\r\nHost: a\r\nX-Fill: {fill}\r\n\r\n").into_bytes()
}

/// A request line of exactly `len` bytes, CRLF included.
fn line_of(len: usize) -> Vec<u8> {
    let target = "l".repeat(len - "GET / HTTP/1.1\r\n".len());
    format!("GET /{target} HTTP/1.1\r\nHost: a\r\n\r\n").into_bytes()
}

#[tokio::test]
async fn a_head_over_max_header_size_gets_431_and_a_request_line_over_8_kib_414() {
    let (ld, backend) = fronting(&[], &[]).await;
    let big = Some("header_section_too_large");
    let long = Some("request_line_too_long");
    let mut hundred_and_one = b"GET /many HTTP/1.1\r\nHost: a\r\n".to_vec();
    for i in 0..100 {
        hundred_and_one.extend(format!("X-{i}: v\r\n").into_bytes());
    }
    hundred_and_one.extend(b"\r\n");
    let mut huge = b"GET /huge HTTP/1.1\r\nHost: a\r\nX-Big: ".to_vec();
    huge.extend(vec![b'b'; 100_000]);
    huge.extend(b"\r\n\r\n");
    expect_refused(
        ld.port,
        &[
            (&head_of(32 * 1024 + 1, "/over"), 431, big),
            (&huge, 431, big),
            (&hundred_and_one, 431, Some("too_many_headers")),
            (&line_of(8 * 1024 + 1), 414, long),
            (&line_of(70_000), 414, long),
        ],
    )
    .await;
    assert!(backend.seen().is_empty(), "forwarded: {:?}", backend.seen());

    // Exactly at the limits: forwarded.
    let mut hundred = b"GET /hundred HTTP/1.1\r\nHost: a\r\n".to_vec();
    for i in 0..99 {
        hundred.extend(format!("X-{i}: v\r\n").into_bytes());
    }
    hundred.extend(b"\r\n");
    for head in [head_of(32 * 1024, "/fits"), hundred, line_of(8 * 1024)] {
        let reply = exchange(ld.port, &head).await.expect("an answer");
        let start = String::from_utf8_lossy(&head[..30]).into_owned();
        assert_eq!(reply.status, 200, "{start}: {}", reply.text());
    }
    assert_eq!(backend.seen().len(), 3);
    drop(ld);

    // The limit is an option (here from its env var).
    let (ld, _backend) = fronting(&[], &[("LAMEDUCK_MAX_HEADER_SIZE", "64k")]).await;
    let reply = exchange(ld.port, &head_of(64 * 1024, "/fits"))
        .await
        .unwrap();
    assert_eq!(reply.status, 200);
    expect_refused(ld.port, &[(&head_of(64 * 1024 + 1, "/over"), 431, big)]).await;
}

#[tokio::test]
async fn slow_heads_get_408_idle_connections_close_and_neither_touches_work_in_progress() {
    let ld = Builder::with_backend()
        .args(&["--header-read-timeout", "1s", "--idle-timeout", "2s"])
        .spawn()
        .await;
    ld.wait_ready().await;
    let port = ld.port;

    let timeout_reply = |reply: Option<Raw>| {
        let reply = reply.expect("a 408");
        assert_eq!(reply.status, 408, "{}", reply.text());
        assert_eq!(reply.detail("request_timeout"), "header_read_timeout");
        assert_eq!(reply.header("connection"), Some("close"));
    };

    // A head that never ends, and a connection that never sends one.
    let partial = async {
        let mut conn = RawConn::open(port).await;
        conn.send(b"GET /hello HTTP/1.1\r\nHost: a\r\n")
            .await
            .unwrap();
        let start = Instant::now();
        timeout_reply(conn.response().await);
        assert!(start.elapsed() >= Duration::from_millis(900));
        conn.closed().await;
    };
    let silent = async {
        let mut conn = RawConn::open(port).await;
        let start = Instant::now();
        timeout_reply(conn.response().await);
        assert!(start.elapsed() >= Duration::from_millis(900));
    };
    // A kept-alive connection with no next request is closed after the idle timeout, not the
    // header read timeout.
    let idle = async {
        let mut conn = RawConn::open(port).await;
        conn.send(b"GET /hello HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(conn.response().await.unwrap().text(), "hello");
        let waited = conn.closed().await;
        assert!(
            waited >= Duration::from_millis(1500),
            "closed after {waited:?}"
        );
    };
    // Time spent idle does not count towards the next head's timeout; the head's own time does.
    let next_head = async {
        let mut conn = RawConn::open(port).await;
        conn.send(b"GET /hello HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(conn.response().await.unwrap().status, 200);
        // Idle for longer than the header read timeout, shorter than the idle timeout.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        conn.send(b"GET /hello HTTP/1.1\r\n").await.unwrap();
        let start = Instant::now();
        timeout_reply(conn.response().await);
        assert!(start.elapsed() >= Duration::from_millis(900));
    };
    // Neither applies to a response in progress, nor to an upgraded connection.
    let slow = async {
        let reply = exchange(port, b"GET /slow?ms=3000 HTTP/1.1\r\nHost: a\r\n\r\n").await;
        assert_eq!(reply.unwrap().text(), "slow 3000 done");
    };
    let events = async {
        let reply = exchange(port, b"GET /sse?n=3&ms=2500 HTTP/1.1\r\nHost: a\r\n\r\n").await;
        assert_eq!(reply.unwrap().text().matches("data: event").count(), 3);
    };
    let upgraded = async {
        let mut conn = RawConn::open(port).await;
        let upgrade =
            b"GET /upgrade HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\n";
        conn.send(upgrade).await.unwrap();
        assert_eq!(conn.response().await.unwrap().status, 101);
        tokio::time::sleep(Duration::from_secs(3)).await;
        conn.send(b"still here").await.unwrap();
        assert_eq!(conn.bytes(b"still here".len()).await, b"still here");
    };
    tokio::join!(partial, silent, idle, next_head, slow, events, upgraded);
}

/// An idle keep-alive connection gives hyper's buffers back (it parks, 20 ms after its last
/// response) and serves its next requests as before: pipelined ones in order, one with a body,
/// and the drain closes it while parked.
#[tokio::test]
async fn an_idle_connection_parks_and_serves_its_next_requests_as_before() {
    let mut ld = Builder::with_backend()
        .args(&["--grace-period", "5s", "--child-stop-timeout", "1s"])
        .args(&["--log-level", "debug"])
        .spawn()
        .await;
    ld.wait_ready().await;
    let mut conn = RawConn::open(ld.port).await;
    let idle = || tokio::time::sleep(Duration::from_millis(400));
    conn.send(b"GET /hello HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(conn.response().await.unwrap().text(), "hello");

    idle().await;
    conn.send(
        b"GET /hello HTTP/1.1\r\nHost: a\r\n\r\nGET /status?code=202 HTTP/1.1\r\nHost: a\r\n\r\n",
    )
    .await
    .unwrap();
    assert_eq!(conn.response().await.unwrap().text(), "hello");
    assert_eq!(conn.response().await.unwrap().status, 202);

    idle().await;
    // The head in two pieces, the second after the connection could have parked again.
    conn.send(b"POST /echo HTTP/1.1\r\nHost: a\r\n")
        .await
        .unwrap();
    idle().await;
    conn.send(b"Content-Length: 5\r\n\r\nhowdy").await.unwrap();
    assert_eq!(conn.response().await.unwrap().text(), "howdy");

    idle().await;
    ld.signal(Signal::SIGTERM);
    let waited = conn.closed().await;
    assert!(waited < Duration::from_secs(2), "closed after {waited:?}");
    ld.expect_exit(0).await;
    // The plain requests are served without hyper (and never park); the head in two pieces is
    // hyper's, and its connection parks once it has answered.
    let parked = ld.log().matches("idle connection parked").count();
    assert!(parked >= 1, "parked {parked} times:\n{}", ld.log());
}

#[tokio::test]
async fn an_http10_backend_answers_http11_clients_in_http11_and_keeps_them_alive() {
    // What `python3 -m http.server` does: HTTP/1.0, then close; with a Content-Length for files,
    // without one for its error pages.
    let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream_port = upstream.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = upstream.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf).await {
                        Ok(n) if n > 0 => head.extend_from_slice(&buf[..n]),
                        _ => return,
                    }
                }
                let answer: &[u8] = if head.starts_with(b"GET /file ") {
                    b"HTTP/1.0 200 OK\r\nServer: SimpleHTTP/0.6 Python/3.11\r\nContent-type: text/plain\r\nContent-Length: 5\r\n\r\nhello"
                } else {
                    b"HTTP/1.0 404 File not found\r\nServer: SimpleHTTP/0.6 Python/3.11\r\nConnection: close\r\n\r\nnot here"
                };
                let _ = conn.write_all(answer).await;
            });
        }
    });
    let ld = Builder::without_child(upstream_port).spawn().await;
    ld.wait_ready().await;

    let mut conn = RawConn::open(ld.port).await;
    for (path, status, body) in [("/file", 200, "hello"), ("/nope", 404, "not here")] {
        for _ in 0..2 {
            let head = format!("GET {path} HTTP/1.1\r\nHost: a\r\n\r\n");
            conn.send(head.as_bytes()).await.unwrap();
            let reply = conn
                .response()
                .await
                .expect("an answer on the same connection");
            assert!(
                reply.status_line.starts_with(&format!("HTTP/1.1 {status}")),
                "{}",
                reply.status_line
            );
            assert_eq!(reply.header("connection"), None);
            assert_eq!(reply.text(), body);
        }
    }
    // An HTTP/1.0 client is answered in HTTP/1.0.
    let reply = exchange(ld.port, b"GET /file HTTP/1.0\r\n\r\n")
        .await
        .unwrap();
    assert!(
        reply.status_line.starts_with("HTTP/1.0 200"),
        "{}",
        reply.status_line
    );
}

#[tokio::test]
async fn a_client_that_stops_reading_is_disconnected_after_the_idle_timeout() {
    let ld = Builder::with_backend()
        .args(&["--idle-timeout", "2s"])
        .spawn()
        .await;
    ld.wait_ready().await;
    let request = b"GET /download?bytes=4000000000 HTTP/1.1\r\nHost: a\r\n\r\n";

    // A client that reads, if slowly, is served for longer than the idle timeout (a client
    // accepts data whenever the socket's buffers have drained enough for the next write: with
    // loopback's buffers of megabytes, that takes a client reading 64 KiB every 20 ms about
    // half a second)...
    let mut slow = tokio::net::TcpStream::connect(("127.0.0.1", ld.port))
        .await
        .unwrap();
    slow.write_all(request).await.unwrap();
    let mut chunk = vec![0u8; 64 * 1024];
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(5) {
        let n = slow.read(&mut chunk).await.unwrap();
        assert!(n > 0, "cut while reading");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(slow);
    wait_active(ld.port, 0).await;

    // ...one that stops is cut off: its request ends, and so does the connection.
    let mut stalled = tokio::net::TcpStream::connect(("127.0.0.1", ld.port))
        .await
        .unwrap();
    stalled.write_all(request).await.unwrap();
    assert!(stalled.read(&mut chunk).await.unwrap() > 0);
    let stopped = Instant::now();
    wait_active(ld.port, 1).await;
    wait_active(ld.port, 0).await;
    assert!(stopped.elapsed() >= Duration::from_millis(1500));
    let mut total = 0u64;
    while let Ok(n) = stalled.read(&mut chunk).await {
        if n == 0 {
            break;
        }
        total += n as u64;
    }
    assert!(
        total < 1_000_000_000,
        "{total} bytes: the download was not cut"
    );
}

/// An HTTP/2 connection (prior knowledge) with the given stream window, and its driving task.
async fn h2(
    port: u16,
    window: u32,
) -> (
    hyper::client::conn::http2::SendRequest<Full<Bytes>>,
    tokio::task::JoinHandle<()>,
) {
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .initial_stream_window_size(window)
        .handshake(TokioIo::new(stream))
        .await
        .expect("h2 handshake");
    let task = tokio::spawn(async move {
        let _ = conn.await;
    });
    (sender, task)
}

fn h2_get(path: &str) -> Request<Full<Bytes>> {
    Request::get(format!("http://test.local{path}"))
        .body(Full::default())
        .unwrap()
}

#[tokio::test]
async fn http2_connections_idle_or_never_reading_get_goaway_and_work_in_progress_does_not() {
    let ld = Builder::with_backend()
        .args(&["--idle-timeout", "1s"])
        .spawn()
        .await;
    ld.wait_ready().await;

    // A request longer than the idle timeout completes; then the idle connection is told to go
    // away, and closes.
    let (mut sender, conn) = h2(ld.port, 65_535).await;
    let resp = sender.send_request(h2_get("/slow?ms=2500")).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(collect(resp.into_body()).await.unwrap(), "slow 2500 done");
    let done = Instant::now();
    tokio::time::timeout(PATIENCE, conn)
        .await
        .expect("closed")
        .unwrap();
    assert!(done.elapsed() >= Duration::from_millis(500));

    // A client whose window never opens gets the response head, then GOAWAY and the close.
    let (mut sender, conn) = h2(ld.port, 0).await;
    let resp = sender
        .send_request(h2_get("/download?bytes=100000000"))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    tokio::time::timeout(PATIENCE, conn)
        .await
        .expect("closed")
        .unwrap();
    wait_active(ld.port, 0).await;
    drop(resp);

    // Other clients were never affected.
    assert_eq!(get(ld.port, "/hello").await.unwrap().body, "hello");
}

#[test]
fn the_edge_options_are_in_help_print_config_files_and_checked() {
    let help = run_to_exit(&["--help"], &[], None);
    for text in [
        "--max-header-size",
        "LAMEDUCK_MAX_HEADER_SIZE",
        "[default: 32KiB]",
        "--header-read-timeout",
        "LAMEDUCK_HEADER_READ_TIMEOUT",
        "[default: 10s]",
        "--idle-timeout",
        "LAMEDUCK_IDLE_TIMEOUT",
        "[default: 60s]",
    ] {
        assert!(help.stdout.contains(text), "--help lacks {text}");
    }

    let printed = run_to_exit(
        &["--print-config", "--cerebrium-toml", "/dev/null"],
        &[],
        None,
    );
    assert_eq!(printed.code, 0);
    for line in [
        r#"max_header_size = "32KiB""#,
        r#"header_read_timeout = "10s""#,
        r#"idle_timeout = "60s""#,
    ] {
        assert!(printed.stdout.contains(line), "{}", printed.stdout);
    }

    let dir = TempDir::new("edge-config");
    let file = dir.join("lameduck.toml");
    std::fs::write(&file, "max_header_size = \"64k\"\nidle_timeout = 90\n").unwrap();
    let args = ["--print-config", "--config", file.to_str().unwrap()];
    let printed = run_to_exit(&args, &[("LAMEDUCK_HEADER_READ_TIMEOUT", "5s")], None);
    assert_eq!(printed.code, 0, "{}", printed.stderr);
    for (key, value) in [
        ("max_header_size", "\"64k\""),
        ("idle_timeout", "90"),
        ("header_read_timeout", "\"5s\""),
    ] {
        let line = printed
            .stdout
            .lines()
            .find(|line| line.starts_with(&format!("{key} ")))
            .unwrap();
        assert!(line.contains(value), "{line}");
    }

    for (flag, value) in [
        ("--max-header-size", "32x"),
        ("--max-header-size", "100"),
        ("--header-read-timeout", "0s"),
        ("--idle-timeout", "soon"),
    ] {
        let out = run_to_exit(&[flag, value], &[], None);
        assert_eq!(out.code, 2, "{flag} {value}");
        assert_eq!(out.stderr.trim().lines().count(), 1, "{}", out.stderr);
        assert!(
            out.stderr.contains(flag) && out.stderr.contains(value),
            "{}",
            out.stderr
        );
    }
}

/// The CPU time a process has used so far.
fn cpu_time(pid: nix::unistd::Pid) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    // utime and stime, fields 14 and 15 of the whole line, in clock ticks (100 a second).
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    Duration::from_millis(ticks * 10)
}

#[tokio::test]
async fn out_of_file_descriptors_lameduck_backs_off_logs_once_a_second_and_recovers() {
    let ld = Builder::with_backend().spawn().await;
    ld.wait_ready().await;
    let pid = ld.pid();
    // Room for two more connections.
    let open = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    let limit = format!("--nofile={}:{}", open + 2, open + 2);
    let status = std::process::Command::new("prlimit")
        .args(["--pid", &pid.to_string(), &limit])
        .status()
        .expect("prlimit (util-linux) is needed for this test");
    assert!(status.success());

    // The kernel completes these connections; lameduck can take two, then accept fails.
    let mut held = Vec::new();
    for _ in 0..6 {
        held.push(
            tokio::net::TcpStream::connect(("127.0.0.1", ld.port))
                .await
                .unwrap(),
        );
    }
    let failures = |log: &str| log.matches("accept failed").count();
    wait_for("an accept failure in the log", || async {
        failures(&ld.log()) > 0
    })
    .await;
    let (logged, cpu, start) = (failures(&ld.log()), cpu_time(pid), Instant::now());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (logged, cpu) = (failures(&ld.log()) - logged, cpu_time(pid) - cpu);
    let took = start.elapsed();
    assert!(logged <= 5, "{logged} accept failures logged in {took:?}");
    assert!(cpu < took / 3, "{cpu:?} of CPU in {took:?}: spinning");

    // Once descriptors free up, lameduck serves again.
    drop(held);
    wait_for("lameduck to serve again", || async {
        get(ld.port, "/health")
            .await
            .is_ok_and(|reply| reply.status == StatusCode::OK)
    })
    .await;
}
