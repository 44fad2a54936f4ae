//! Metrics, JSON logs and the access log.

mod support;

use std::collections::HashMap;

use http::StatusCode;
use nix::sys::signal::Signal;
use support::*;

/// Parses the Prometheus text format strictly enough to catch a malformed exposition:
/// `# HELP`/`# TYPE`/`# UNIT`/`# EOF` comments, then `name{labels} value` samples.
fn parse_prometheus(text: &str) -> HashMap<String, f64> {
    let mut samples = HashMap::new();
    for line in text.lines().filter(|line| !line.is_empty()) {
        if let Some(comment) = line.strip_prefix("# ") {
            let kind = comment.split(' ').next().unwrap();
            assert!(
                ["HELP", "TYPE", "UNIT", "EOF"].contains(&kind),
                "bad comment: {line}"
            );
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("no value: {line}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value: {line}"));
        let name_end = series.find('{').unwrap_or(series.len());
        let name = &series[..name_end];
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name: {line}"
        );
        if name_end < series.len() {
            assert!(series.ends_with('}'), "bad labels: {line}");
        }
        samples.insert(series.to_string(), value);
    }
    samples
}

#[tokio::test]
async fn metrics_report_in_flight_requests_by_status_durations_and_phase() {
    let ld = Builder::with_backend()
        .args(&["--metrics-path", "/metrics"])
        .spawn()
        .await;
    ld.wait_ready().await;
    for _ in 0..3 {
        assert_eq!(get(ld.port, "/hello").await.unwrap().status, StatusCode::OK);
    }
    assert_eq!(
        get(ld.port, "/nope").await.unwrap().status,
        StatusCode::NOT_FOUND
    );
    let slow = tokio::spawn(get(ld.port, "/slow?ms=3000"));
    wait_active(ld.port, 1).await;

    let reply = get(ld.port, "/metrics").await.unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    assert!(
        reply.header("content-type").unwrap().contains("text"),
        "{reply:?}"
    );
    let samples = parse_prometheus(&reply.body);
    assert_eq!(
        samples["lameduck_requests_in_flight"], 1.0,
        "{}",
        reply.body
    );
    assert_eq!(samples["lameduck_requests_queued"], 0.0);
    assert_eq!(
        samples[r#"lameduck_requests_total{code="200"}"#], 3.0,
        "{}",
        reply.body
    );
    assert_eq!(samples[r#"lameduck_requests_total{code="404"}"#], 1.0);
    assert_eq!(samples["lameduck_request_duration_seconds_count"], 4.0);
    assert_eq!(
        samples[r#"lameduck_request_duration_seconds_bucket{le="+Inf"}"#],
        4.0
    );
    assert_eq!(samples[r#"lameduck_phase{phase="ready"}"#], 1.0);
    assert_eq!(samples[r#"lameduck_phase{phase="draining"}"#], 0.0);
    assert_eq!(samples["lameduck_requests_cut_total"], 0.0);
    // Classic Prometheus text by default: counter families carry their samples' name.
    assert!(reply
        .header("content-type")
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    assert!(
        reply
            .body
            .contains("# TYPE lameduck_requests_total counter\n"),
        "{}",
        reply.body
    );
    assert!(!reply.body.contains("# EOF"));

    // Prometheus prefers OpenMetrics but accepts the classic format, which is what it gets.
    let req = http::Request::get("/metrics")
        .header("host", "x")
        .header(
            "accept",
            "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
        )
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let reply = request(ld.port, req).await.unwrap();
    assert!(reply
        .header("content-type")
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    parse_prometheus(&reply.body);
    assert_eq!(slow.await.unwrap().unwrap().status, StatusCode::OK);
}

#[tokio::test]
async fn json_logs_are_one_object_per_line_and_the_access_log_has_each_request() {
    let mut ld = Builder::with_backend()
        .args(&["--log-format", "json", "--access-log"])
        .spawn()
        .await;
    ld.wait_ready().await;
    assert_eq!(get(ld.port, "/hello?x=1").await.unwrap().body, "hello");
    for probe in ["/ready", "/health"] {
        assert_eq!(get(ld.port, probe).await.unwrap().status, StatusCode::OK);
    }
    ld.signal(Signal::SIGTERM);
    ld.expect_exit(0).await;

    let log = ld.log();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect();
    // The helper found the port in the JSON `listening` line.
    assert!(
        lines.iter().any(
            |l| l["message"] == "listening" && l["address"] == format!("127.0.0.1:{}", ld.port)
        ),
        "{log}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l["message"] == "drained: no request in flight"),
        "{log}"
    );
    let access = lines
        .iter()
        .find(|l| l["message"] == "request" && l["path"] == "/hello")
        .unwrap_or_else(|| panic!("no access line in {log}"));
    assert_eq!(access["method"], "GET");
    assert_eq!(access["status"], 200);
    assert_eq!(access["bytes"], 5);
    assert!(access["duration_ms"].as_f64().is_some(), "{access}");
    // Probes stay out of the access log.
    for probe in ["/ready", "/health"] {
        assert!(!lines.iter().any(|l| l["path"] == probe), "{log}");
    }
}

#[tokio::test]
async fn log_level_quiets_lameduck_and_rust_log_is_honoured() {
    // At warn, the `listening` line is not logged: the port is fixed instead. A child that
    // ignores SIGTERM gets lameduck to warn (it has to SIGKILL it), so the log has something in
    // it, and the test sees the warning come through but no info line.
    let mut ld = Builder::with_backend()
        .fixed_port()
        .env("BACKEND_ON_TERM", "ignore")
        .args(&["--log-level", "warn", "--child-stop-timeout", "500ms"])
        .spawn()
        .await;
    ld.wait_ready().await;
    ld.signal(Signal::SIGTERM);
    ld.expect_exit(1).await;
    let log = ld.log();
    assert!(log.contains(" WARN ") && log.contains("SIGKILL"), "{log}");
    assert!(!log.contains("INFO"), "{log}");

    let mut ld = Builder::with_backend()
        .env("RUST_LOG", "debug")
        .spawn()
        .await;
    ld.wait_ready().await;
    get(ld.port, "/hello").await.unwrap();
    ld.signal(Signal::SIGTERM);
    ld.expect_exit(0).await;
    assert!(ld.log().contains("DEBUG"), "{}", ld.log());
}

#[test]
fn the_listening_line_is_found_in_text_and_json_logs() {
    let text = "2026-11-24T00:00:25.112414Z  INFO listening address=127.0.0.1:46083\n";
    assert_eq!(
        listening_address(text),
        Some("127.0.0.1:46083".parse().unwrap())
    );
    let coloured = "\u{1b}[2m2026\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m listening \
                    \u{1b}[3maddress\u{1b}[0m\u{1b}[2m=\u{1b}[0m[::1]:8000";
    assert_eq!(
        listening_address(coloured),
        Some("[::1]:8000".parse().unwrap())
    );
    let json =
        r#"{"timestamp":"x","level":"INFO","message":"listening","address":"127.0.0.1:41655"}"#;
    assert_eq!(
        listening_address(json),
        Some("127.0.0.1:41655".parse().unwrap())
    );
    let other = "INFO starting; waiting for the backend upstream=127.0.0.1:9\n";
    assert_eq!(listening_address(other), None);
}
