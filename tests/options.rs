//! Options: bad values exit 2 with one line naming the option; env vars and flags both work.

mod support;

use std::process::Command;

fn lameduck(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_lameduck"))
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("run lameduck");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
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
    assert_eq!(lameduck(&["--version"], &[]).0, 0);
}

#[tokio::test]
async fn a_flag_wins_over_its_env_var() {
    let ld = support::Builder::with_backend()
        .env("LAMEDUCK_READY_PATH", "/from-env")
        .args(&["--ready-path", "/from-flag"])
        .spawn();
    let start = std::time::Instant::now();
    loop {
        if let Ok(reply) = support::get(ld.port, "/from-flag").await {
            if reply.status == 200 {
                break;
            }
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(20),
            "{}",
            ld.log()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(
        support::get(ld.port, "/from-env").await.unwrap().body,
        "not found"
    );
}
