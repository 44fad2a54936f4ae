//! The errors lameduck answers itself: whose fault it is decides the status, and the body says
//! it with a short stable code.

mod support;

use std::time::{Duration, Instant};

use http::StatusCode;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Writes `head_and_body` on a new connection, optionally closes the writing side, and returns
/// everything lameduck sends back until it closes the connection.
async fn raw_exchange(port: u16, bytes: &[u8], half_close: bool) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    if half_close {
        stream.shutdown().await.unwrap();
    }
    let mut answer = Vec::new();
    let read = tokio::time::timeout(PATIENCE, stream.read_to_end(&mut answer)).await;
    read.expect("lameduck closed the connection").unwrap();
    String::from_utf8_lossy(&answer).into_owned()
}

fn status_line(answer: &str) -> &str {
    answer.lines().next().unwrap_or_default()
}

#[tokio::test]
async fn a_malformed_chunk_from_the_client_is_a_400_not_a_502() {
    let ld = Builder::with_backend()
        .args(&["--metrics-path", "/metrics"])
        .spawn()
        .await;
    ld.wait_ready().await;
    let answer = raw_exchange(
        ld.port,
        b"POST /count HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nZZ\r\n",
        false,
    )
    .await;
    assert_eq!(status_line(&answer), "HTTP/1.1 400 Bad Request", "{answer}");
    assert!(
        answer.ends_with(r#"{"error":"bad_request","detail":"client_body"}"#),
        "{answer}"
    );
    let sample = r#"lameduck_backend_errors_total{detail="client_body"}"#;
    assert_eq!(metric(ld.port, sample).await, Some(1.0));
    assert!(!ld.log().contains("WARN"), "{}", ld.log());
}

#[tokio::test]
async fn a_body_shorter_than_its_content_length_is_a_400() {
    let ld = Builder::with_backend().spawn().await;
    ld.wait_ready().await;
    let answer = raw_exchange(
        ld.port,
        b"POST /count HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nonly ten b",
        true,
    )
    .await;
    assert_eq!(status_line(&answer), "HTTP/1.1 400 Bad Request", "{answer}");
    assert!(answer.contains(r#""detail":"client_body""#), "{answer}");
}

#[tokio::test]
async fn a_backend_that_never_answers_gets_a_504_after_the_backend_timeout() {
    let ld = Builder::with_backend()
        .args(&["--backend-timeout", "500ms", "--metrics-path", "/metrics"])
        .spawn()
        .await;
    ld.wait_ready().await;
    let sent = Instant::now();
    let reply = get(ld.port, "/slow?ms=20000").await.unwrap();
    assert_eq!(reply.status, StatusCode::GATEWAY_TIMEOUT, "{}", reply.body);
    assert!(sent.elapsed() >= Duration::from_millis(500));
    let body: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
    assert_eq!(
        body,
        serde_json::json!({"error": "gateway_timeout", "detail": "backend_timeout"})
    );
    let sample = r#"lameduck_backend_errors_total{detail="backend_timeout"}"#;
    assert_eq!(metric(ld.port, sample).await, Some(1.0));
    // A response head within the limit is unaffected, however long its body then takes.
    let reply = get(ld.port, "/sse?n=3&ms=300").await.unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body.matches("data:").count(), 3, "{}", reply.body);
}

#[tokio::test]
async fn requests_before_the_backend_is_up_wait_only_the_queue_timeout() {
    let ld = Builder::with_backend()
        .env("BACKEND_DELAY_MS", "60000")
        .args(&["--queue-timeout", "300ms"])
        .spawn()
        .await;
    let reply = first_reply(ld.port, "/hello").await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE, "{reply:?}");
    assert_eq!(reply.body, r#"{"error":"starting"}"#);
    assert_eq!(reply.header("retry-after"), Some("1"));
    assert_eq!(ready_json(ld.port).await.1["status"], "starting");
}
