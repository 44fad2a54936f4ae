//! Forwarding: what reaches the backend, what comes back, streaming, upgrades, and errors.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use support::raw::RawConn;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn forwards_method_path_query_and_headers_with_the_hop_rules() {
    let ld = Builder::with_backend().spawn().await;
    ld.wait_ready().await;
    let req = Request::get("/headers?a=1&b=two")
        .header("host", "public.example")
        .header("x-forwarded-for", "10.1.1.1")
        .header("connection", "keep-alive, x-secret")
        .header("x-secret", "hop only")
        .header("keep-alive", "timeout=5")
        .header("proxy-authorization", "Basic eA==")
        .header("x-custom", "kept")
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    let reply = request(ld.port, req).await.unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    let seen = reply.body.to_lowercase();
    assert!(
        seen.starts_with("get /headers?a=1&b=two http/1.1\n"),
        "{seen}"
    );
    assert!(seen.contains("host: public.example\n"), "{seen}");
    assert!(seen.contains("x-custom: kept\n"), "{seen}");
    assert!(
        seen.contains("x-forwarded-for: 10.1.1.1, 127.0.0.1\n"),
        "{seen}"
    );
    assert!(seen.contains("x-forwarded-proto: http\n"), "{seen}");
    assert!(
        seen.contains("x-forwarded-host: public.example\n"),
        "{seen}"
    );
    for hop in ["x-secret", "keep-alive:", "proxy-authorization"] {
        assert!(!seen.contains(hop), "{hop} was forwarded: {seen}");
    }
}

#[tokio::test]
async fn passes_status_and_request_body_through() {
    let ld = Builder::with_backend().spawn().await;
    ld.wait_ready().await;
    let reply = get(ld.port, "/status?code=418").await.unwrap();
    assert_eq!(reply.status, StatusCode::IM_A_TEAPOT);
    let reply = get(ld.port, "/nowhere").await.unwrap();
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (StatusCode::NOT_FOUND, "not found")
    );

    let req = Request::post("/echo")
        .header("host", "x")
        .body(Full::new(Bytes::from_static(b"round trip")))
        .unwrap();
    let reply = request(ld.port, req).await.unwrap();
    assert_eq!(reply.body, "round trip");
}

#[tokio::test]
async fn streams_large_bodies_both_ways_without_buffering() {
    const SIZE: u64 = 256 * 1024 * 1024;
    let ld = Builder::with_backend().spawn().await;
    ld.wait_ready().await;

    let req = Request::post("/count")
        .header("host", "x")
        .body(Generated::new(SIZE))
        .unwrap();
    let reply = request(ld.port, req).await.unwrap();
    assert_eq!(reply.body, SIZE.to_string());

    let resp = send(ld.port, get_request(&format!("/download?bytes={SIZE}")))
        .await
        .unwrap();
    let mut body = resp.into_body();
    let mut received = 0u64;
    while let Some(frame) = body.frame().await {
        received += frame.unwrap().into_data().map_or(0, |d| d.len() as u64);
    }
    assert_eq!(received, SIZE);

    // A proxy that buffered either body would have held 256 MiB at once.
    let peak = peak_rss_kib(ld.pid());
    assert!(peak < 64 * 1024, "lameduck peaked at {peak} KiB");
}

#[tokio::test]
async fn streamed_events_are_forwarded_as_they_are_written() {
    let ld = Builder::with_backend().spawn().await;
    ld.wait_ready().await;
    // Two events, 120 s apart: the first must arrive while the backend has not written the
    // second, so certainly long before the 60 s allowed here.
    let resp = send(ld.port, get_request("/sse?n=2&ms=120000"))
        .await
        .unwrap();
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut body = resp.into_body();
    let first = tokio::time::timeout(Duration::from_secs(60), body.frame())
        .await
        .expect("the first event was held back")
        .unwrap()
        .unwrap()
        .into_data()
        .unwrap();
    assert_eq!(&first[..], b"id: 0\ndata: event 0\n\n");
}

#[tokio::test]
async fn upgrades_are_tunnelled_after_the_backends_101() {
    let ld = Builder::with_backend().spawn().await;
    ld.wait_ready().await;
    let mut conn = RawConn::open(ld.port).await;
    conn.send(b"GET /upgrade HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
        .await
        .unwrap();
    let head = conn
        .response()
        .await
        .expect("connection closed in the head");
    assert!(
        head.status_line.to_lowercase().starts_with("http/1.1 101"),
        "{}",
        head.status_line
    );
    assert!(
        head.header("upgrade")
            .is_some_and(|protocol| protocol.eq_ignore_ascii_case("echo")),
        "{:?}",
        head.headers
    );
    for message in [&b"ping"[..], b"second message"] {
        conn.send(message).await.unwrap();
        assert_eq!(conn.bytes(message.len()).await, message);
    }
}

#[tokio::test]
async fn an_unreachable_backend_gives_a_502_with_json() {
    // Something accepts on the upstream port, so lameduck becomes ready; then it goes away.
    // A port from `backend_port`, not port 0: once released, a port-0 bind elsewhere could take
    // it and answer instead, while `backend_port` never hands it out again.
    let upstream_port = backend_port();
    let upstream = std::net::TcpListener::bind(("127.0.0.1", upstream_port)).unwrap();
    let ld = Builder::without_child(upstream_port).spawn().await;
    ld.wait_ready().await;
    drop(upstream);

    let reply = get(ld.port, "/anything").await.unwrap();
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    assert_eq!(reply.header("content-type"), Some("application/json"));
    let body: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
    // A stable code; the OS's and hyper's messages stay in lameduck's log.
    assert_eq!(
        body,
        serde_json::json!({"error": "bad_gateway", "detail": "backend_refused"})
    );
    assert!(ld.log().contains("Connection refused"), "{}", ld.log());
    // lameduck itself carries on.
    assert_eq!(
        get(ld.port, "/health").await.unwrap().status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn a_backend_that_breaks_mid_response_does_not_take_lameduck_down() {
    // A raw backend that sends a head promising 100 bytes, 5 of them, then hangs up.
    let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream_port = upstream.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = upstream.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                if conn.read(&mut buf).await.unwrap_or(0) > 0 {
                    let _ = conn
                        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort")
                        .await;
                }
            });
        }
    });
    let ld = Builder::without_child(upstream_port).spawn().await;
    ld.wait_ready().await;
    assert!(
        get(ld.port, "/broken").await.is_err(),
        "a truncated body must reach the client as an error"
    );
    assert_eq!(get(ld.port, "/ready").await.unwrap().status, StatusCode::OK);
}

/// A backend that serves at most `limit` connections at once, like uvicorn's
/// `--limit-concurrency` or Node's `server.maxConnections`: one more is answered 503 and closed.
async fn backend_with_connection_limit(limit: usize) -> u16 {
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    use std::sync::Arc;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let open = Arc::new(AtomicUsize::new(0));
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            if open.fetch_add(1, SeqCst) >= limit {
                open.fetch_sub(1, SeqCst);
                let _ = stream
                    .write_all(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 4\r\nconnection: close\r\n\r\nfull")
                    .await;
                continue;
            }
            let open = Arc::clone(&open);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|_req| async {
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                        Bytes::from_static(b"served"),
                    )))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
                open.fetch_sub(1, SeqCst);
            });
        }
    });
    port
}

/// Idle clients must not pin backend connections: sixty keep-alive clients, each sending one
/// request in turn and keeping its connection open, all reach a backend that serves four
/// connections at once, twice over.
#[tokio::test]
async fn idle_clients_do_not_pin_backend_connections() {
    let upstream_port = backend_with_connection_limit(4).await;
    let ld = Builder::without_child(upstream_port).spawn().await;
    ld.wait_ready().await;
    let mut clients = Vec::new();
    for _ in 0..60 {
        clients.push(h1_connect(ld.port).await);
    }
    for round in 0..2 {
        for (index, client) in clients.iter_mut().enumerate() {
            let resp = client.send_request(get_request("/")).await.unwrap();
            let status = resp.status();
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(
                (status, &body[..]),
                (StatusCode::OK, &b"served"[..]),
                "client {index} in round {round}"
            );
        }
    }
}

#[tokio::test]
async fn sequential_requests_share_a_backend_connection_and_survive_its_close() {
    let ld = Builder::with_backend().spawn().await;
    ld.wait_ready().await;
    let mut sender = h1_connect(ld.port).await;
    let mut peer = |path: &'static str| {
        let req = get_request(path);
        let sent = sender.send_request(req);
        async move {
            let body = sent.await.unwrap().into_body().collect().await.unwrap();
            String::from_utf8(body.to_bytes().to_vec()).unwrap()
        }
    };
    // Requests one after another travel on one backend connection (the worker's idle one).
    let first = peer("/peer").await;
    assert_eq!(peer("/peer").await, first);
    // The backend closes it after this response...
    assert_eq!(peer("/close").await, first);
    // ...and the next request gets a new one, without an error.
    let next = peer("/peer").await;
    assert_ne!(next, first);
    assert_eq!(peer("/peer").await, next);
}

#[tokio::test]
async fn with_no_idle_backend_connections_kept_each_request_gets_a_new_one() {
    let ld = Builder::with_backend()
        .args(&["--upstream-idle-max", "0"])
        .spawn()
        .await;
    ld.wait_ready().await;
    let mut sender = h1_connect(ld.port).await;
    let mut ports = Vec::new();
    for _ in 0..3 {
        let resp = sender.send_request(get_request("/peer")).await.unwrap();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        ports.push(String::from_utf8(body.to_vec()).unwrap());
    }
    assert!(
        ports[0] != ports[1] && ports[1] != ports[2] && ports[0] != ports[2],
        "{ports:?}"
    );
}

/// The body of a response, as text.
async fn text_of(resp: http::Response<hyper::body::Incoming>) -> String {
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(body.to_vec()).unwrap()
}

/// How many backend connections `distinct` ports may come from in requests spread over
/// `elapsed`: one, and another for each time lameduck may have found its connection unused for
/// 3 s (it then opens a new one) on a machine stalled that long.
fn connections_allowed(elapsed: Duration) -> usize {
    1 + (elapsed.as_secs() / 3) as usize
}

/// With `--upstream-protocol http2` every request to the backend goes on the worker's one HTTP/2
/// connection, whatever its authority: a client cycling through `Host` values (or `:authority`
/// values) cannot make lameduck open a backend connection for each.
#[tokio::test]
async fn an_h2c_backend_gets_one_connection_per_worker_whatever_the_authority() {
    let ld = Builder::with_backend()
        .args(&["--upstream-protocol", "http2"])
        .spawn()
        .await;
    ld.wait_ready().await;

    // One HTTP/2 client connection (served by one worker), 20 authorities at once, before any
    // request has opened a backend connection: the requests that find the worker opening its
    // connection wait for it rather than open their own.
    let start = std::time::Instant::now();
    let (h2, _conn) = h2_connect(ld.port).await;
    let requests = (0..20).map(|n| {
        let mut h2 = h2.clone();
        async move {
            let req = Request::get(format!("http://tenant-{n}.example/peer"))
                .body(Full::<Bytes>::default())
                .unwrap();
            let resp = h2.send_request(req).await.unwrap();
            assert_eq!(resp.status(), StatusCode::OK, "request {n}");
            text_of(resp).await
        }
    });
    let ports: std::collections::HashSet<String> = futures_util::future::join_all(requests)
        .await
        .into_iter()
        .collect();
    assert!(
        ports.len() <= connections_allowed(start.elapsed()),
        "20 authorities at once used {} backend connections: {ports:?}",
        ports.len()
    );

    // One HTTP/1.1 client connection (one worker too): 20 Hosts, one after another.
    let start = std::time::Instant::now();
    let mut sender = h1_connect(ld.port).await;
    let mut ports = std::collections::HashSet::new();
    for n in 0..20 {
        let req = Request::get("/peer")
            .header("host", format!("tenant-{n}.example"))
            .body(http_body_util::Empty::<Bytes>::new())
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "request {n}");
        ports.insert(text_of(resp).await);
    }
    assert!(
        ports.len() <= connections_allowed(start.elapsed()),
        "20 Hosts used {} backend connections: {ports:?}",
        ports.len()
    );
}

/// The worker's HTTP/2 connection to a backend that restarts is closed with it: the next request
/// gets a new one, without an error.
#[tokio::test]
async fn an_h2c_backend_that_restarts_gets_a_new_connection() {
    let port = backend_port();
    let backend = Backend::spawn(&[("PORT", &port.to_string())]);
    let ld = Builder::without_child(port)
        .args(&["--upstream-protocol", "http2"])
        .spawn()
        .await;
    ld.wait_ready().await;
    let mut sender = h1_connect(ld.port).await;
    let mut peer = || {
        let sent = sender.send_request(get_request("/peer"));
        async move {
            let resp = sent.await.unwrap();
            assert_eq!(resp.status(), StatusCode::OK);
            text_of(resp).await
        }
    };
    let first = peer().await;
    assert_eq!(peer().await, first);

    // Killed and reaped, then started again on the same port.
    drop(backend);
    let _backend = Backend::spawn(&[("PORT", &port.to_string())]);
    let next = peer().await;
    assert_ne!(next, first);
    assert_eq!(peer().await, next);
}
