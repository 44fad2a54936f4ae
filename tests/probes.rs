//! `/ready` and `/health` in each phase, answered by lameduck itself.

mod support;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::Empty;
use support::*;

#[tokio::test]
async fn requests_wait_while_the_backend_starts() {
    let ld = Builder::with_backend()
        // Long enough that the requests below reach lameduck before the backend is up.
        .env("BACKEND_DELAY_MS", "3000")
        .spawn()
        .await;
    // /ready says starting while the backend has not bound its port.
    let reply = first_reply(ld.port, "/ready").await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    let body: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
    assert_eq!(body["status"], "starting");
    assert_eq!(
        get(ld.port, "/health").await.unwrap().status,
        StatusCode::OK
    );

    // An early request is held (active, while lameduck still says starting) until the backend
    // is up, then answered. Forwarded early, it would have failed with a 502.
    let early = tokio::spawn(get(ld.port, "/hello"));
    wait_active(ld.port, 1).await;
    let (status, body) = ready_json(ld.port).await;
    assert_eq!(
        (status, body["status"].as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("starting")),
        "the backend came up before the request could be seen held: {body}"
    );
    let reply = early.await.unwrap().unwrap();
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (StatusCode::OK, "hello")
    );
    // The request counts as active until its response has ended, a moment after the client has it.
    wait_active(ld.port, 0).await;
    let reply = get(ld.port, "/ready").await.unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(
        reply.body,
        r#"{"status":"ready","active_requests":0,"max_concurrency":null}"#
    );
}

#[tokio::test]
async fn probes_answer_get_and_head_without_caching() {
    let ld = Builder::with_backend().spawn().await;
    ld.wait_ready().await;
    for path in ["/ready", "/health"] {
        let reply = get(ld.port, path).await.unwrap();
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.header("cache-control"), Some("no-store"));
        assert_eq!(reply.header("content-type"), Some("application/json"));

        let head = Request::builder()
            .method(Method::HEAD)
            .uri(path)
            .header("host", "x")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let reply = request(ld.port, head).await.unwrap();
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.header("cache-control"), Some("no-store"));
        assert!(reply.body.is_empty());
    }
    let health = get(ld.port, "/health").await.unwrap();
    assert_eq!(health.body, r#"{"status":"healthy"}"#);
}

#[tokio::test]
async fn probe_paths_are_configurable_and_the_defaults_then_reach_the_backend() {
    let ld = Builder::with_backend()
        .args(&["--ready-path", "/_ld/ready"])
        .env("LAMEDUCK_HEALTH_PATH", "/_ld/health")
        .spawn()
        .await;
    ld.wait_ready_at("/_ld/ready").await;
    assert_eq!(
        get(ld.port, "/_ld/health").await.unwrap().status,
        StatusCode::OK
    );
    // The backend's own /ready and /health are untouched: it answers 404 for them.
    assert_eq!(get(ld.port, "/ready").await.unwrap().body, "not found");
    assert_eq!(get(ld.port, "/health").await.unwrap().body, "not found");
}
