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

/// The grace-period advisor: an ordinary request that outlives the drain budget gets one warning
/// naming it, its duration, the budget, the grace period and the grace period that would cover it;
/// a second one within the minute is only counted; a stream over the budget is counted, never
/// warned about. The drain's log line names the oldest request in flight.
#[tokio::test]
async fn a_request_over_the_drain_budget_gets_one_warning_and_a_stream_none() {
    // Drain budget: 3s - 1s child stop - 1s exit margin = 1s.
    let mut ld = Builder::with_backend()
        .args(&[
            "--grace-period",
            "3s",
            "--child-stop-timeout",
            "1s",
            "--metrics-path",
            "/metrics",
        ])
        .spawn()
        .await;
    ld.wait_ready().await;
    let warnings = |log: &str| {
        log.lines()
            .filter(|line| line.contains("outlived the drain budget"))
            .map(str::to_string)
            .collect::<Vec<_>>()
    };

    // A stream of 3 events 600 ms apart: 1.2 s, over the budget.
    let stream = get(ld.port, "/sse?n=3&ms=600").await.unwrap();
    assert_eq!(stream.status, StatusCode::OK);
    assert_eq!(
        metric(
            ld.port,
            r#"lameduck_requests_over_budget_total{kind="event_stream"}"#
        )
        .await,
        Some(1.0)
    );
    assert!(warnings(&ld.log()).is_empty(), "{}", ld.log());

    for _ in 0..2 {
        let slow = get(ld.port, "/slow?ms=1300").await.unwrap();
        assert_eq!(slow.status, StatusCode::OK);
    }
    assert_eq!(
        metric(
            ld.port,
            r#"lameduck_requests_over_budget_total{kind="request"}"#
        )
        .await,
        Some(2.0)
    );
    let longest = metric(
        ld.port,
        r#"lameduck_request_longest_seconds{kind="request"}"#,
    )
    .await
    .unwrap();
    assert!((1.3..2.5).contains(&longest), "{longest}");
    let log = ld.log();
    let warned = warnings(&log);
    assert_eq!(warned.len(), 1, "{log}");
    let line = &warned[0];
    for part in [
        " WARN ",
        r#"request="GET /slow""#,
        "kind=request",
        "duration=1.3s",
        "drain_budget=1s",
        "grace_period=3s",
        // 1.3 s + 1 s child stop + 1 s exit margin, in whole seconds.
        "covering_grace_period=4s",
        "set --grace-period 4s",
        "over_budget_since_last_warning=1",
    ] {
        assert!(line.contains(part), "no {part:?} in {line}");
    }

    // SIGTERM while a request runs: the drain's line names it.
    let slow = tokio::spawn(get(ld.port, "/slow?ms=400"));
    wait_active(ld.port, 1).await;
    ld.signal(Signal::SIGTERM);
    assert_eq!(slow.await.unwrap().unwrap().status, StatusCode::OK);
    ld.expect_exit(0).await;
    let log = ld.log();
    let draining = log
        .lines()
        .find(|line| line.contains("draining: /ready now fails"))
        .unwrap_or_else(|| panic!("no drain line in {log}"));
    assert!(
        draining.contains(r#"oldest="GET /slow""#)
            && draining.contains("oldest_age=")
            && draining.contains("budget=1s"),
        "{draining}"
    );
    assert_eq!(warnings(&log).len(), 1, "{log}");
}
