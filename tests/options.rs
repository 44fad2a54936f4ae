//! Options: bad values exit 2 with one line naming the option; env vars and flags both work.

mod support;

use support::*;

/// Runs lameduck expecting it to exit by itself. Should it accept a value it must refuse and
/// start, the env keeps it on 127.0.0.1 and a port of its own, and `run_to_exit` stops it.
fn lameduck(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut envs = vec![
        ("LAMEDUCK_BIND", "127.0.0.1"),
        ("LAMEDUCK_PORT", "0"),
        ("LAMEDUCK_UPSTREAM", "http://127.0.0.1:9"),
    ];
    envs.extend_from_slice(env);
    let out = run_to_exit(args, &envs, None);
    (out.code, out.stdout, out.stderr)
}

#[test]
fn invalid_values_exit_2_with_one_line_naming_the_option_and_value() {
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a [&'a str]);
    let cases: &[Case] = &[
        (
            &["--grace-period", "banana"],
            &[],
            &["--grace-period", "banana"],
        ),
        (
            &[],
            &[("LAMEDUCK_GRACE_PERIOD", "banana")],
            &["--grace-period", "banana"],
        ),
        (&["--drain-delay", "5 parsecs"], &[], &["--drain-delay"]),
        (&["--port", "99999"], &[], &["--port", "99999"]),
        (&["--bind", "nowhere"], &[], &["--bind", "nowhere"]),
        (
            &["--upstream", "ftp://127.0.0.1:21"],
            &[],
            &["--upstream", "ftp://"],
        ),
        (&["--ready-path", "ready"], &[], &["--ready-path"]),
        (&["--no-such-flag"], &[], &["--no-such-flag"]),
        // The shutdown must fit in the grace period (SPEC §8).
        (
            &["--grace-period", "0"],
            &[],
            &["--grace-period", "'0'", "1s"],
        ),
        (
            &["--grace-period", "1s", "--child-stop-timeout", "5s"],
            &[],
            &[
                "--child-stop-timeout",
                "'5s'",
                "--grace-period 1s",
                "fits is 0s",
            ],
        ),
        // The final event's data: one JSON object (SPEC §8).
        (
            &["--sse-shutdown-data", "{not json"],
            &[],
            &["--sse-shutdown-data", "{not json", "not JSON"],
        ),
        (
            &[],
            &[("LAMEDUCK_SSE_SHUTDOWN_DATA", r#"["an","array"]"#)],
            &[
                "--sse-shutdown-data",
                "LAMEDUCK_SSE_SHUTDOWN_DATA",
                "expected a JSON object",
            ],
        ),
        (
            &["--sse-shutdown-event", "anthropic"],
            &[],
            &["--sse-shutdown-event", "anthropic", "on, off or openai"],
        ),
        // Not a level: it would be read as a target that never logs (SPEC §8).
        (
            &["--log-level", "verbose"],
            &[],
            &["--log-level", "verbose"],
        ),
        (
            &[],
            &[("LAMEDUCK_LOG", "verbose")],
            &["--log-level", "verbose", "LAMEDUCK_LOG"],
        ),
        (
            &[],
            &[("RUST_LOG", "info,verbose")],
            &["RUST_LOG", "info,verbose"],
        ),
    ];
    for (args, env, needles) in cases {
        let (code, _, stderr) = lameduck(args, env);
        assert_eq!(code, 2, "{args:?} {env:?}: {stderr}");
        assert_eq!(
            stderr.trim_end().lines().count(),
            1,
            "not one line: {stderr:?}"
        );
        for needle in *needles {
            assert!(stderr.contains(needle), "{stderr:?} does not name {needle}");
        }
    }
}

#[test]
fn help_and_version_exit_0() {
    let (code, stdout, _) = lameduck(&["--help"], &[]);
    assert_eq!(code, 0);
    for option in [
        "--port",
        "--grace-period",
        "--drain-delay",
        "--child-stop-timeout",
        "LAMEDUCK_UPSTREAM",
    ] {
        assert!(stdout.contains(option), "--help does not mention {option}");
    }
    let (code, stdout, _) = lameduck(&["--version"], &[]);
    assert_eq!(code, 0);
    assert!(stdout.contains(env!("CARGO_PKG_VERSION")), "{stdout}");
}

#[tokio::test]
async fn a_flag_wins_over_its_env_var() {
    let ld = Builder::with_backend()
        .env("LAMEDUCK_READY_PATH", "/from-env")
        .args(&["--ready-path", "/from-flag"])
        .spawn()
        .await;
    ld.wait_ready_at("/from-flag").await;
    // The env var's path is not lameduck's: it reaches the backend, which does not know it.
    assert_eq!(get(ld.port, "/from-env").await.unwrap().body, "not found");
}
