//! `lameduck probe [PATH|URL]` (exit 0 on 2xx, 1 otherwise, within 2 s) and `lameduck --version`
//! (SPEC §8).

mod support;

use std::net::TcpListener;
use std::time::{Duration, Instant};

use support::*;

/// Runs `lameduck probe` with `args` and `envs`, returning its exit status and stderr.
fn probe(args: &[&str], envs: &[(&str, &str)]) -> (i32, String) {
    let args: Vec<&str> = std::iter::once("probe")
        .chain(args.iter().copied())
        .collect();
    let out = run_to_exit(&args, envs, None);
    assert_eq!(out.stdout, "", "the probe prints nothing on stdout");
    (out.code, out.stderr)
}

#[test]
fn version_prints_the_crate_version() {
    for flag in ["--version", "-V"] {
        let out = run_to_exit(&[flag], &[], None);
        assert_eq!(out.code, 0, "{flag}: {}", out.stderr);
        assert_eq!(
            out.stdout,
            format!("lameduck {}\n", env!("CARGO_PKG_VERSION")),
            "{flag}"
        );
    }
}

#[tokio::test]
async fn probe_exits_0_when_lameduck_is_healthy() {
    let ld = Builder::with_backend().spawn().await;
    ld.wait_ready().await;
    let port = ld.port.to_string();

    // The health path at LAMEDUCK_PORT, by default.
    let (code, stderr) = probe(&[], &[("LAMEDUCK_PORT", &port)]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stderr, "");
    // A PATH, proxied to the backend: its 2xx counts, like lameduck's own.
    for path in ["/ready", "/hello", "/status?code=204"] {
        let (code, stderr) = probe(&[path], &[("LAMEDUCK_PORT", &port)]);
        assert_eq!(code, 0, "{path}: {stderr}");
    }
    // A whole URL needs no LAMEDUCK_PORT; `localhost` needs no resolver.
    for host in ["127.0.0.1", "localhost"] {
        let url = format!("http://{host}:{port}/health");
        let (code, stderr) = probe(&[&url], &[]);
        assert_eq!(code, 0, "{url}: {stderr}");
    }
}

#[tokio::test]
async fn probe_exits_1_on_any_other_answer() {
    let ld = Builder::with_backend().spawn().await;
    ld.wait_ready().await;
    let port = ld.port.to_string();
    for (path, status) in [
        ("/status?code=503", "503"),
        ("/status?code=404", "404"),
        ("/status?code=302", "302"),
    ] {
        let (code, stderr) = probe(&[path], &[("LAMEDUCK_PORT", &port)]);
        assert_eq!(code, 1, "{path}");
        assert!(
            stderr.starts_with("lameduck probe: ")
                && stderr.contains(path)
                && stderr.contains(&format!("answered {status}"))
                && stderr.lines().count() == 1,
            "{path}: {stderr}"
        );
    }
}

/// The probe follows lameduck's own configuration: its health path, from the same env var.
#[tokio::test]
async fn probe_uses_the_configured_health_path() {
    let ld = Builder::with_backend()
        .env("LAMEDUCK_HEALTH_PATH", "/healthz-own")
        .spawn()
        .await;
    ld.wait_ready().await;
    let port = ld.port.to_string();
    let envs = [
        ("LAMEDUCK_PORT", port.as_str()),
        ("LAMEDUCK_HEALTH_PATH", "/healthz-own"),
    ];
    let (code, stderr) = probe(&[], &envs);
    assert_eq!(code, 0, "{stderr}");
    // Without it, /health goes to the backend, which has no such path.
    let (code, stderr) = probe(&[], &[("LAMEDUCK_PORT", &port)]);
    assert_eq!(code, 1);
    assert!(stderr.contains("/health: answered 404"), "{stderr}");
}

#[test]
fn probe_exits_1_when_nothing_listens() {
    // Outside the ephemeral range and free a moment ago: nothing listens there.
    let port = backend_port().to_string();
    let (code, stderr) = probe(&[], &[("LAMEDUCK_PORT", &port)]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains(&format!("http://127.0.0.1:{port}/health"))
            && stderr.contains("refused")
            && stderr.lines().count() == 1,
        "{stderr}"
    );
}

/// A server that accepts but never answers: the probe gives up after 2 s.
#[test]
fn probe_exits_1_when_the_answer_takes_too_long() {
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port().to_string();
    let start = Instant::now();
    let (code, stderr) = probe(&[], &[("LAMEDUCK_PORT", &port)]);
    let took = start.elapsed();
    assert_eq!(code, 1);
    assert!(stderr.contains("no answer within 2s"), "{stderr}");
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_secs(15),
        "took {took:?}"
    );
    drop(silent);
}

#[test]
fn probe_refuses_bad_arguments_with_1_never_2() {
    // Docker reserves exit status 2 of a HEALTHCHECK.
    for args in [
        &["ready"][..],
        &["/a", "/b"],
        &["https://127.0.0.1/"],
        &["--port", "1"],
    ] {
        let (code, stderr) = probe(args, &[]);
        assert_eq!(code, 1, "{args:?}: {stderr}");
        assert!(
            stderr.starts_with("lameduck probe: error: ") && stderr.lines().count() == 1,
            "{args:?}: {stderr}"
        );
    }
    let (code, stderr) = probe(&[], &[("LAMEDUCK_PORT", "0")]);
    assert_eq!(code, 1);
    assert!(stderr.contains("port is 0"), "{stderr}");
}

#[test]
fn probe_help_exits_0() {
    let out = run_to_exit(&["probe", "--help"], &[], None);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout.contains("Usage: lameduck probe [PATH|URL]"),
        "{}",
        out.stdout
    );
    let out = run_to_exit(&["--help"], &[], None);
    assert!(
        out.stdout.contains("lameduck probe [PATH|URL]"),
        "{}",
        out.stdout
    );
}
