//! Long-lived traffic: HTTP/2 clients and backends, gRPC-shaped streams with trailers,
//! WebSockets, and how each ends at the drain deadline.

mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Request, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use nix::sys::signal::Signal;
use support::raw::exchange;
use support::*;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

const SHUTDOWN_EVENT: &str =
    "event: error\ndata: {\"error\":\"server_restarting\",\"resume\":true}\n\n";

fn h2_get(path: &str) -> Request<Full<Bytes>> {
    h2_get_at("test.local", path)
}

fn h2_get_at(authority: &str, path: &str) -> Request<Full<Bytes>> {
    Request::get(format!("http://{authority}{path}"))
        .body(Full::default())
        .unwrap()
}

fn grpc_call(path: &str) -> Request<Full<Bytes>> {
    Request::post(format!("http://test.local{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(Bytes::from_static(&[0, 0, 0, 0, 0])))
        .unwrap()
}

/// Reads a whole body: its data, and its trailers if any.
async fn read_all(body: hyper::body::Incoming) -> (Vec<u8>, Option<http::HeaderMap>) {
    let collected = body.collect().await.expect("body");
    let trailers = collected.trailers().cloned();
    (collected.to_bytes().to_vec(), trailers)
}

/// The gRPC messages in `data`, which must hold only whole ones.
fn grpc_messages(mut data: &[u8]) -> Vec<String> {
    let mut messages = Vec::new();
    while !data.is_empty() {
        assert!(data.len() >= 5, "torn message prefix: {data:?}");
        let len = u32::from_be_bytes(data[1..5].try_into().unwrap()) as usize;
        assert!(data.len() >= 5 + len, "torn message: {data:?}");
        messages.push(String::from_utf8(data[5..5 + len].to_vec()).unwrap());
        data = &data[5 + len..];
    }
    messages
}

#[tokio::test]
async fn http2_clients_reach_an_http1_backend_and_get_goaway_on_drain() {
    let mut ld = Builder::with_backend().spawn().await;
    ld.wait_ready().await;
    let (mut h2, conn) = h2_connect(ld.port).await;
    let resp = h2.send_request(h2_get("/headers")).await.unwrap();
    assert_eq!(resp.version(), Version::HTTP_2);
    assert_eq!(resp.status(), StatusCode::OK);
    let (seen, _) = read_all(resp.into_body()).await;
    let seen = String::from_utf8(seen).unwrap().to_lowercase();
    assert!(seen.starts_with("get /headers http/1.1\n"), "{seen}");
    assert!(seen.contains("host: test.local\n"), "{seen}");

    ld.signal(Signal::SIGTERM);
    // The idle HTTP/2 connection is closed (GOAWAY) instead of being left to a reset.
    tokio::time::timeout(PATIENCE, conn)
        .await
        .expect("the h2 connection was not closed")
        .unwrap();
    ld.expect_exit(0).await;
}

#[tokio::test]
async fn grpc_streams_and_trailers_pass_through_an_h2c_backend() {
    let ld = Builder::with_backend()
        .args(&["--upstream-protocol", "http2"])
        .spawn()
        .await;
    ld.wait_ready().await;
    let (mut h2, _conn) = h2_connect(ld.port).await;
    let resp = h2
        .send_request(grpc_call("/grpc.Test/Stream?n=3&ms=20"))
        .await
        .unwrap();
    assert_eq!(resp.headers()["content-type"], "application/grpc");
    let (data, trailers) = read_all(resp.into_body()).await;
    assert_eq!(
        grpc_messages(&data),
        ["message 000000", "message 000001", "message 000002"]
    );
    assert_eq!(trailers.expect("trailers")["grpc-status"], "0");

    let resp = h2.send_request(h2_get("/trailers")).await.unwrap();
    let (data, trailers) = read_all(resp.into_body()).await;
    assert_eq!(data, b"with trailers");
    assert_eq!(trailers.expect("trailers")["x-checksum"], "abc123");

    // HTTP/1.1 clients reach the HTTP/2 backend too, and so do WebSockets (over HTTP/1.1).
    assert_eq!(get(ld.port, "/hello").await.unwrap().body, "hello");
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{}/ws", ld.port))
        .await
        .unwrap();
    ws.send(Message::text("over h1")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("over h1"));
}

/// The first line of the test backend's `/headers` (method, target, version) and its `host`
/// header, requested through lameduck with `host` as the client's `Host` (none if `None`).
async fn backend_view(port: u16, host: Option<&str>) -> (StatusCode, String, Option<String>) {
    let mut req = Request::get("/headers");
    if let Some(host) = host {
        req = req.header("host", host);
    }
    let reply = request(port, req.body(Full::<Bytes>::default()).unwrap())
        .await
        .unwrap();
    let mut lines = reply.body.lines();
    let first = lines.next().unwrap_or_default().to_owned();
    let seen_host = lines
        .filter_map(|line| line.strip_prefix("host: "))
        .map(str::to_owned)
        .next();
    (reply.status, first, seen_host)
}

#[tokio::test]
async fn an_h2c_backend_gets_the_clients_authority_with_a_host_that_agrees() {
    let ld = Builder::with_backend()
        .args(&["--upstream-protocol", "http2"])
        .spawn()
        .await;
    ld.wait_ready().await;

    // hyper's server puts `:authority` into the URI: it must be the client's Host, and `host`
    // must agree with it (RFC 9113 §8.3.1).
    assert_eq!(
        backend_view(ld.port, Some("test.local")).await,
        (
            StatusCode::OK,
            "GET http://test.local/headers HTTP/2.0".into(),
            Some("test.local".into())
        )
    );
    // An authority naming another address is still sent to the upstream: nothing listens on
    // port 1.
    assert_eq!(
        backend_view(ld.port, Some("127.0.0.1:1")).await,
        (
            StatusCode::OK,
            "GET http://127.0.0.1:1/headers HTTP/2.0".into(),
            Some("127.0.0.1:1".into())
        )
    );
    // An HTTP/2 client's `:authority` travels on as it came.
    let (mut h2, _conn) = h2_connect(ld.port).await;
    let resp = h2
        .send_request(h2_get_at("test.local:8443", "/headers"))
        .await;
    let (seen, _) = read_all(resp.unwrap().into_body()).await;
    let seen = String::from_utf8(seen).unwrap();
    assert!(
        seen.starts_with("GET http://test.local:8443/headers HTTP/2.0\n"),
        "{seen}"
    );
    assert!(seen.contains("\nhost: test.local:8443\n"), "{seen}");

    // An HTTP/1.0 client without Host: the upstream's authority, as `:authority` and `host`.
    let reply = exchange(ld.port, b"GET /headers HTTP/1.0\r\n\r\n")
        .await
        .expect("an answer");
    // The backend's echo of the request head, each line after a newline.
    let answer = format!("{}\n{}", reply.status_line, reply.text());
    let upstream = format!("127.0.0.1:{}", ld.upstream_port);
    assert!(answer.starts_with("HTTP/1.0 200"), "{answer}");
    assert!(
        answer.contains(&format!("\nGET http://{upstream}/headers HTTP/2.0\n")),
        "{answer}"
    );
    assert!(
        answer.contains(&format!("\nhost: {upstream}\n")),
        "{answer}"
    );
}

/// lameduck in front of lameduck: the second one, as strict as RFC 9113 asks, refuses an
/// HTTP/2 request whose `host` differs from its `:authority` (400 `host_mismatch`).
#[tokio::test]
async fn a_strict_h2c_backend_accepts_what_lameduck_sends_it() {
    let strict = Builder::with_backend().spawn().await;
    strict.wait_ready().await;
    let ld = Builder::without_child(strict.port)
        .args(&["--upstream-protocol", "http2"])
        .spawn()
        .await;
    ld.wait_ready().await;

    let (status, first, host) = backend_view(ld.port, Some("test.local")).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    // The strict lameduck forwards to its HTTP/1.1 backend in origin form.
    assert_eq!(first, "GET /headers HTTP/1.1");
    assert_eq!(host.as_deref(), Some("test.local"));

    let (mut h2, _conn) = h2_connect(ld.port).await;
    let resp = h2.send_request(h2_get("/headers")).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let (seen, _) = read_all(resp.into_body()).await;
    let seen = String::from_utf8(seen).unwrap();
    assert!(seen.contains("\nhost: test.local\n"), "{seen}");
}

#[tokio::test]
async fn websockets_are_echoed_and_stay_open_through_the_drain() {
    let mut ld = Builder::with_backend()
        .args(&["--grace-period", "30s"])
        .spawn()
        .await;
    ld.wait_ready().await;
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{}/ws", ld.port))
        .await
        .unwrap();
    ws.send(Message::text("hello")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("hello"));

    wait_active(ld.port, 1).await;
    ld.signal(Signal::SIGTERM);
    ld.wait_draining().await;
    // Draining, the WebSocket is in flight: it still works, and lameduck waits for it.
    ws.send(Message::text("still here")).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::text("still here")
    );
    assert_eq!(ready_json(ld.port).await.1["active_requests"], 1);
    assert!(ld.running());
    ws.close(None).await.unwrap();
    while let Some(Ok(_)) = ws.next().await {}
    ld.expect_exit(0).await;
}

#[tokio::test]
async fn at_the_deadline_every_kind_of_request_ends_the_way_its_client_understands() {
    let dir = TempDir::new("deadline");
    let ws_log = dir.join("ws.log");
    // Budget: 4s - 1s (child stop) - 1s (margin) = 2s of drain.
    let mut ld = Builder::with_backend()
        .args(&["--grace-period", "4s", "--child-stop-timeout", "1s"])
        .args(&["--upstream-protocol", "http2"])
        .env("BACKEND_WS_LOG", ws_log.to_str().unwrap())
        .spawn()
        .await;
    ld.wait_ready().await;
    let port = ld.port;

    let streams: Vec<_> = (0..2)
        .map(|_| tokio::spawn(get(port, "/sse-pieces?n=1000&ms=300")))
        .collect();
    let waiting: Vec<_> = (0..2)
        .map(|_| tokio::spawn(get(port, "/slow?ms=30000")))
        .collect();
    let mut sockets = Vec::new();
    for _ in 0..2 {
        let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{port}/ws"))
            .await
            .unwrap();
        ws.send(Message::text("ping")).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("ping"));
        sockets.push(ws);
    }
    let (mut h2, _conn) = h2_connect(port).await;
    let grpc = h2
        .send_request(grpc_call("/grpc.Test/Stream?n=1000&ms=200"))
        .await
        .unwrap();
    let grpc = tokio::spawn(read_all(grpc.into_body()));
    // 2 event streams, 2 waiting requests, 2 WebSockets and the gRPC call.
    wait_active(port, 7).await;

    ld.signal(Signal::SIGTERM);
    let signalled = Instant::now();

    for stream in streams {
        let reply = stream
            .await
            .unwrap()
            .expect("the event stream must end cleanly");
        let body = reply.body.strip_suffix(SHUTDOWN_EVENT).unwrap_or_else(|| {
            panic!(
                "no shutdown event at the end: {:?}",
                &reply.body[reply.body.len().saturating_sub(200)..]
            )
        });
        // Everything before it is whole events, in order: nothing torn.
        let events: Vec<&str> = body.split_terminator("\n\n").collect();
        assert!(events.len() >= 3, "{body}");
        for (i, event) in events.iter().enumerate() {
            assert_eq!(*event, format!("id: {i}\ndata: partial event {i}"));
        }
    }
    for request in waiting {
        let reply = request.await.unwrap().unwrap();
        assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(reply.body, r#"{"error":"shutting_down"}"#);
        assert!(reply.header("retry-after").is_some());
    }
    for mut ws in sockets {
        let message = tokio::time::timeout(PATIENCE, ws.next())
            .await
            .expect("no close frame")
            .unwrap()
            .unwrap();
        let Message::Close(Some(frame)) = message else {
            panic!("expected a close frame, got {message:?}")
        };
        assert_eq!(frame.code, CloseCode::Away);
    }
    let (data, trailers) = grpc.await.unwrap();
    assert!(!grpc_messages(&data).is_empty());
    let trailers = trailers.expect("gRPC trailers");
    assert_eq!(trailers["grpc-status"], "14");

    ld.expect_exit(1).await;
    let took = signalled.elapsed();
    assert!(
        took < Duration::from_secs(4),
        "outlived the grace period: {took:?}"
    );
    let backend_saw = std::fs::read_to_string(&ws_log).expect("the backend logged no close");
    assert_eq!(
        backend_saw.lines().filter(|l| *l == "1001").count(),
        2,
        "backend saw {backend_saw:?}"
    );
    let log = ld.log();
    assert!(
        log.contains("sse_ended=2")
            && log.contains("websockets_closed=2")
            && log.contains("grpc_unavailable=1")
            && log.contains("refused=2"),
        "{log}"
    );
}

#[tokio::test]
async fn with_the_shutdown_event_off_event_streams_just_end() {
    let mut ld = Builder::with_backend()
        .args(&["--grace-period", "3s", "--child-stop-timeout", "1s"])
        .args(&["--sse-shutdown-event", "off"])
        .spawn()
        .await;
    ld.wait_ready().await;
    let stream = tokio::spawn(get(ld.port, "/sse?n=1000&ms=100"));
    wait_active(ld.port, 1).await;
    ld.signal(Signal::SIGTERM);
    let reply = stream.await.unwrap().expect("the stream must end cleanly");
    assert!(
        reply.body.starts_with("id: 0\ndata: event 0\n\n"),
        "{}",
        reply.body
    );
    assert!(!reply.body.contains("server_restarting"));
    ld.expect_exit(1).await;
}

/// Runs lameduck with `args`, cuts an event stream at the drain deadline, and returns its body.
async fn stream_cut_at_the_deadline(args: &[&str]) -> String {
    let mut ld = Builder::with_backend()
        .args(&["--grace-period", "3s", "--child-stop-timeout", "1s"])
        .args(args)
        .spawn()
        .await;
    ld.wait_ready().await;
    let stream = tokio::spawn(get(ld.port, "/sse-pieces?n=1000&ms=100"));
    wait_active(ld.port, 1).await;
    ld.signal(Signal::SIGTERM);
    let reply = stream.await.unwrap().expect("the stream must end cleanly");
    ld.expect_exit(1).await;
    assert!(
        reply.body.starts_with("id: 0\ndata: partial event 0\n\n"),
        "{}",
        reply.body
    );
    reply.body
}

/// The final event of a stream cut at the deadline: the text after the last whole backend event.
fn final_event(body: &str) -> &str {
    let last = body.rfind("data: partial event").expect("no backend event");
    let end = body[last..].find("\n\n").expect("a torn backend event") + last + 2;
    &body[end..]
}

#[tokio::test]
async fn with_the_openai_shutdown_event_streams_end_with_an_openai_style_error() {
    let body = stream_cut_at_the_deadline(&["--sse-shutdown-event", "openai"]).await;
    assert_eq!(
        final_event(&body),
        "event: error\ndata: {\"error\":{\"message\":\"The server is restarting; retry the \
         request.\",\"type\":\"server_restarting\",\"code\":\"server_restarting\"},\
         \"resume\":true}\n\n"
    );
}

#[tokio::test]
async fn with_shutdown_data_streams_end_with_that_data_compacted_on_one_line() {
    let body = stream_cut_at_the_deadline(&[
        "--sse-shutdown-data",
        "{\n  \"error\": \"maintenance\",\n  \"retry_after_ms\": 2000\n}",
    ])
    .await;
    assert_eq!(
        final_event(&body),
        "event: error\ndata: {\"error\":\"maintenance\",\"retry_after_ms\":2000}\n\n"
    );
    // `off` wins over data: no final event at all.
    let body = stream_cut_at_the_deadline(&[
        "--sse-shutdown-event",
        "off",
        "--sse-shutdown-data",
        "{\"error\":\"maintenance\"}",
    ])
    .await;
    assert_eq!(final_event(&body), "");
}
