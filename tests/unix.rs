//! `--upstream unix:/PATH`: a backend on a Unix socket is proxied, probed, upgraded and drained
//! as one on TCP is; the child is told the path (`LAMEDUCK_UPSTREAM_SOCKET`, no `PORT`); and a
//! socket file left behind by an earlier run does not count as a backend that is up.

mod support;

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use nix::sys::signal::Signal;
use support::raw::{exchange, RawConn};
use support::*;
use tokio_tungstenite::tungstenite::Message;

/// lameduck spawning the test backend on a socket in `dir`.
fn unix_backend(dir: &TempDir) -> (Builder, std::path::PathBuf) {
    let socket = dir.join("app.sock");
    (Builder::with_backend().unix_upstream(&socket), socket)
}

async fn h2_body(
    h2: &mut hyper::client::conn::http2::SendRequest<Full<Bytes>>,
    path: &str,
) -> (StatusCode, String) {
    let req = Request::get(format!("http://test.local{path}"))
        .body(Full::default())
        .unwrap();
    let resp = h2.send_request(req).await.unwrap();
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn http1_and_http2_clients_reach_a_backend_on_a_unix_socket() {
    let dir = TempDir::new("unix-proxy");
    let (builder, socket) = unix_backend(&dir);
    // A PORT in lameduck's own environment must not reach the child.
    let ld = builder.env("PORT", "8080").spawn().await;
    ld.wait_ready().await;

    let reply = get(ld.port, "/hello").await.unwrap();
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (StatusCode::OK, "hello")
    );
    let told = get(ld.port, "/env/LAMEDUCK_UPSTREAM_SOCKET").await.unwrap();
    assert_eq!(told.body, socket.to_str().unwrap());
    let port = get(ld.port, "/env/PORT").await.unwrap();
    assert_eq!(port.status, StatusCode::NOT_FOUND, "PORT={}", port.body);
    // Request bodies and keep-alive links work over the socket as over TCP.
    let echo = request(
        ld.port,
        Request::post("/echo")
            .header("host", "a")
            .body(Full::new(Bytes::from_static(b"over the socket")))
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(echo.body, "over the socket");

    // An HTTP/2 client goes through the pooled client, which dials the socket too.
    let (mut h2, _conn) = h2_connect(ld.port).await;
    for _ in 0..3 {
        assert_eq!(
            h2_body(&mut h2, "/hello").await,
            (StatusCode::OK, "hello".into())
        );
    }
    assert!(ld.log().contains(&format!("unix:{}", socket.display())));
}

#[tokio::test]
async fn a_request_without_host_reaches_a_unix_backend_as_localhost() {
    let dir = TempDir::new("unix-host");
    let (builder, _socket) = unix_backend(&dir);
    let ld = builder.spawn().await;
    ld.wait_ready().await;
    // HTTP/1.0 needs no Host; lameduck supplies the upstream's authority, here `localhost`.
    let reply = exchange(ld.port, b"GET /headers HTTP/1.0\r\n\r\n")
        .await
        .expect("an answer");
    // The backend's echo of the request head, each line after a newline.
    let answer = format!("{}\n{}", reply.status_line, reply.text());
    assert!(answer.starts_with("HTTP/1.0 200"), "{answer}");
    assert!(answer.contains("\nhost: localhost\n"), "{answer}");
}

#[tokio::test]
async fn an_http2_backend_on_a_unix_socket() {
    let dir = TempDir::new("unix-h2");
    let (builder, _socket) = unix_backend(&dir);
    let ld = builder
        .args(&["--upstream-protocol", "http2"])
        .spawn()
        .await;
    ld.wait_ready().await;
    assert_eq!(get(ld.port, "/hello").await.unwrap().body, "hello");
    let (mut h2, _conn) = h2_connect(ld.port).await;
    let (status, headers) = h2_body(&mut h2, "/headers").await;
    assert_eq!(status, StatusCode::OK);
    // The client's authority, as `:authority` (in the URI) and `host` alike.
    assert!(
        headers.starts_with("GET http://test.local/headers HTTP/2.0\n"),
        "{headers}"
    );
    assert!(headers.contains("\nhost: test.local\n"), "{headers}");
    // An HTTP/1.1 client's Host is the authority too, and the socket is dialed all the same.
    let reply = request(
        ld.port,
        Request::get("/headers")
            .header("host", "127.0.0.1:1")
            .body(Full::<Bytes>::default())
            .unwrap(),
    )
    .await
    .unwrap();
    assert!(
        reply
            .body
            .starts_with("GET http://127.0.0.1:1/headers HTTP/2.0\n"),
        "{}",
        reply.body
    );
}

/// Nothing accepts at `path` yet: lameduck stays `starting`, however long it looks.
async fn assert_still_starting(ld: &Lameduck, path: &Path) {
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (status, json) = ready_json(ld.port).await;
    assert_eq!(
        (status, json["status"].as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("starting")),
        "{} exists but accepts nothing",
        path.display()
    );
}

#[tokio::test]
async fn a_stale_socket_file_is_not_a_backend_that_is_up() {
    let dir = TempDir::new("unix-stale");
    let socket = dir.join("app.sock");
    let ld = Builder::without_child(0)
        .unix_upstream(&socket)
        .spawn()
        .await;
    assert_still_starting(&ld, &socket).await;

    // A regular file where the socket should be.
    std::fs::write(&socket, "not a socket").unwrap();
    assert_still_starting(&ld, &socket).await;

    // A socket file whose listener is gone, as a killed backend leaves it.
    std::fs::remove_file(&socket).unwrap();
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    assert!(socket.exists());
    assert_still_starting(&ld, &socket).await;

    // The backend comes (replacing the stale file, as servers do): now it is up.
    std::fs::remove_file(&socket).unwrap();
    let _listener = tokio::net::UnixListener::bind(&socket).unwrap();
    ld.wait_ready().await;
}

#[tokio::test]
async fn upgrades_and_websockets_over_a_unix_socket() {
    let dir = TempDir::new("unix-ws");
    let (builder, _socket) = unix_backend(&dir);
    let ld = builder.spawn().await;
    ld.wait_ready().await;

    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{}/ws", ld.port))
        .await
        .unwrap();
    for text in ["hello", "over a unix socket"] {
        ws.send(Message::text(text)).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::text(text));
    }

    let mut conn = RawConn::open(ld.port).await;
    conn.send(b"GET /upgrade HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
        .await
        .unwrap();
    let head = conn.response().await.expect("closed in the head");
    assert!(
        head.status_line.to_lowercase().starts_with("http/1.1 101"),
        "{}",
        head.status_line
    );
    conn.send(b"ping").await.unwrap();
    assert_eq!(conn.bytes(4).await, b"ping");
}

#[tokio::test]
async fn sigterm_drains_20_slow_requests_over_a_unix_socket_with_none_lost() {
    let dir = TempDir::new("unix-drain");
    let (builder, _socket) = unix_backend(&dir);
    // The test backend dies the instant it gets SIGTERM: a request still on the socket when
    // lameduck signalled it would fail.
    let mut ld = builder.args(&["--grace-period", "30s"]).spawn().await;
    ld.wait_ready().await;
    let backend_pid: u32 = get(ld.port, "/pid").await.unwrap().body.parse().unwrap();

    let slow: Vec<_> = (0..20)
        .map(|_| tokio::spawn(get(ld.port, "/slow?ms=2000")))
        .collect();
    wait_active(ld.port, 20).await;
    ld.signal(Signal::SIGTERM);
    ld.wait_draining().await;
    let refused = get(ld.port, "/hello").await.unwrap();
    assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        alive(backend_pid),
        "the child was signalled with requests in flight"
    );

    for request in slow {
        let reply = request.await.unwrap().unwrap();
        assert_eq!(
            (reply.status, reply.body.as_str()),
            (StatusCode::OK, "slow 2000 done")
        );
    }
    ld.expect_exit(0).await;
    assert!(!alive(backend_pid), "the child outlived lameduck");
}

#[test]
fn a_relative_or_empty_socket_path_exits_2_with_one_line() {
    for bad in ["unix:", "unix:app.sock", "unix:./run/app.sock"] {
        let out = run_to_exit(&["--port", "0", "--upstream", bad, "--", "true"], &[], None);
        assert_eq!(out.code, 2, "{bad}: {}", out.stderr);
        let lines: Vec<_> = out.stderr.lines().filter(|l| !l.is_empty()).collect();
        assert!(
            lines[0].contains("--upstream") && lines[0].contains("absolute path"),
            "{bad}: {}",
            out.stderr
        );
    }
}
