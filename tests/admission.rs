//! Admission: the concurrency limit and its queue, holding requests while the backend loads, the
//! backend's own health, and the quiet end of the drain delay.

mod support;

use std::time::{Duration, Instant};

use http::StatusCode;
use nix::sys::signal::Signal;
use support::*;

#[tokio::test]
async fn over_the_limit_requests_queue_and_ready_says_at_capacity() {
    let ld = Builder::with_backend()
        .args(&["--max-concurrency", "2", "--queue-timeout", "20s"])
        .args(&["--metrics-path", "/metrics"])
        .spawn()
        .await;
    ld.wait_ready().await;
    let (_, body) = ready_json(ld.port).await;
    assert_eq!(body["max_concurrency"], 2);

    let first = tokio::spawn(get(ld.port, "/slow?ms=3000"));
    let second = tokio::spawn(get(ld.port, "/slow?ms=3000"));
    wait_active(ld.port, 2).await;
    let (status, body) = ready_json(ld.port).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["status"], "at_capacity");

    // The third waits for a slot, then is served.
    let third = tokio::spawn(get(ld.port, "/hello"));
    wait_queued(ld.port, 1).await;
    assert!(!third.is_finished(), "the third request was not held");
    let third = third.await.unwrap().unwrap();
    assert_eq!(
        (third.status, third.body.as_str()),
        (StatusCode::OK, "hello")
    );
    for request in [first, second] {
        assert_eq!(request.await.unwrap().unwrap().status, StatusCode::OK);
    }
    // The slots free up as the responses end (a moment after the client has them).
    wait_active(ld.port, 0).await;
    assert_eq!(ready_json(ld.port).await.0, StatusCode::OK);
}

#[tokio::test]
async fn with_no_queue_a_request_over_the_limit_gets_503_at_once() {
    let ld = Builder::with_backend()
        .args(&["--max-concurrency", "1", "--queue-timeout", "0s"])
        .spawn()
        .await;
    ld.wait_ready().await;
    let busy = tokio::spawn(get(ld.port, "/slow?ms=60000"));
    wait_active(ld.port, 1).await;
    let start = Instant::now();
    let reply = get(ld.port, "/hello").await.unwrap();
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reply.body, r#"{"error":"at_capacity"}"#);
    assert!(reply.header("retry-after").is_some());
    // "At once": far below the 60 s the slot stays taken.
    assert!(start.elapsed() < Duration::from_secs(10));
    assert!(!busy.is_finished());
    busy.abort();
}

#[tokio::test]
async fn queued_requests_count_as_in_flight_during_the_drain() {
    let mut ld = Builder::with_backend()
        .args(&["--max-concurrency", "1", "--queue-timeout", "20s"])
        .args(&["--metrics-path", "/metrics"])
        .spawn()
        .await;
    ld.wait_ready().await;
    let running = tokio::spawn(get(ld.port, "/slow?ms=2000"));
    wait_active(ld.port, 1).await;
    let queued = tokio::spawn(get(ld.port, "/slow?ms=500"));
    wait_queued(ld.port, 1).await;
    ld.signal(Signal::SIGTERM);
    for request in [running, queued] {
        let reply = request.await.unwrap().unwrap();
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    }
    ld.expect_exit(0).await;
}

#[tokio::test]
async fn with_a_backend_ready_path_requests_are_held_until_it_answers_2xx() {
    // The backend accepts connections at once, but its /readyz says "loading" for 3 s.
    let ld = Builder::with_backend()
        .env("BACKEND_READY_AFTER_MS", "3000")
        .args(&["--backend-ready-path", "/readyz"])
        .spawn()
        .await;
    let reply = first_reply(ld.port, "/ready").await;
    let body: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
    assert_eq!(
        (reply.status, body["status"].as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("starting"))
    );
    // Held while lameduck still says starting; forwarded early, this would be the backend's 503
    // "loading".
    let held = tokio::spawn(get(ld.port, "/readyz"));
    wait_active(ld.port, 1).await;
    let (status, body) = ready_json(ld.port).await;
    assert_eq!(
        (status, body["status"].as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("starting")),
        "the backend was ready before the request could be seen held: {body}"
    );
    let held = held.await.unwrap().unwrap();
    assert_eq!((held.status, held.body.as_str()), (StatusCode::OK, "ready"));
}

#[tokio::test]
async fn a_backend_that_never_comes_up_is_stopped_and_lameduck_exits_1() {
    let mut ld = Builder::with_backend()
        .env("BACKEND_DELAY_MS", "60000")
        .args(&["--startup-timeout", "1s"])
        .spawn()
        .await;
    ld.expect_exit(1).await;
    assert!(ld.log().contains("did not start in time"), "{}", ld.log());
}

#[tokio::test]
async fn the_backends_health_folds_into_health_but_never_fails_the_drain() {
    let dir = TempDir::new("backend-health");
    let flag = dir.join("unhealthy");
    let mut ld = Builder::with_backend()
        .env("BACKEND_UNHEALTHY_FILE", flag.to_str().unwrap())
        .args(&["--backend-health-path", "/healthz"])
        .spawn()
        .await;
    ld.wait_ready().await;
    assert_eq!(
        get(ld.port, "/health").await.unwrap().status,
        StatusCode::OK
    );

    std::fs::write(&flag, "").unwrap();
    wait_for("/health to fail", || async {
        get(ld.port, "/health").await.unwrap().status != StatusCode::OK
    })
    .await;
    let reply = get(ld.port, "/health").await.unwrap();
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    let body: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
    assert_eq!(body["status"], "unhealthy");
    assert!(
        body["reason"].as_str().unwrap().contains("/healthz"),
        "{body}"
    );

    // Draining, the replica stays live whatever the backend's health says, through several of
    // lameduck's checks of it (one every 2 s).
    let slow = tokio::spawn(get(ld.port, "/slow?ms=5000"));
    wait_active(ld.port, 1).await;
    ld.signal(Signal::SIGTERM);
    ld.wait_draining().await;
    let mut probes = 0;
    while !slow.is_finished() {
        let reply = get(ld.port, "/health").await.unwrap();
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
        probes += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(probes > 0);
    assert_eq!(slow.await.unwrap().unwrap().status, StatusCode::OK);
    ld.expect_exit(0).await;
}

#[tokio::test]
async fn drain_quiet_ends_the_drain_delay_once_traffic_stops() {
    let mut ld = Builder::with_backend()
        .args(&[
            "--drain-delay",
            "60s",
            "--drain-quiet",
            "2s",
            "--grace-period",
            "90s",
        ])
        .spawn()
        .await;
    ld.wait_ready().await;
    ld.signal(Signal::SIGTERM);
    let signalled = Instant::now();
    ld.wait_draining().await;
    // Requests during the delay are proxied and push the quiet end back.
    let mut last_sent = signalled;
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        last_sent = Instant::now();
        let reply = get(ld.port, "/hello").await.unwrap();
        assert_eq!(reply.status, StatusCode::OK);
    }
    assert_eq!(
        ld.wait_exit(Duration::from_secs(30)).await,
        0,
        "{}",
        ld.log()
    );
    // Not before 2 s of quiet after the last request (which came over 1 s after the SIGTERM),
    // long before the 60 s delay.
    assert!(
        last_sent.elapsed() >= Duration::from_millis(1900),
        "exited {:?} after the last request",
        last_sent.elapsed()
    );
    assert!(signalled.elapsed() < Duration::from_secs(30));
    assert!(ld.log().contains("quiet"), "{}", ld.log());
}
