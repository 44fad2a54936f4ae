//! Configuration from files: `--config`, cerebrium.toml, precedence, `--print-config`, errors.

mod support;

use http::StatusCode;
use support::*;

/// The line of `--print-config` output for `key`.
fn config_line<'a>(printed: &'a str, key: &str) -> &'a str {
    printed
        .lines()
        .find(|l| l.starts_with(&format!("{key} ")))
        .unwrap_or_else(|| panic!("{key} missing from {printed}"))
}

#[tokio::test]
async fn a_cerebrium_toml_in_the_working_directory_configures_lameduck() {
    let dir = TempDir::new("cerebrium");
    // Port 0: lameduck binds a port of the kernel's choosing, never the default 8000, only if it
    // takes the port from this file.
    std::fs::write(
        dir.join("cerebrium.toml"),
        "[cerebrium.deployment]\nname = \"app\"\n\n[cerebrium.runtime.custom]\nport = 0\n\
         readycheck_endpoint = \"/cerebrium/ready\"\nhealthcheck_endpoint = \"/cerebrium/health\"\n\n\
         [cerebrium.scaling]\nresponse_grace_period = 45\nreplica_concurrency = 3\n",
    )
    .unwrap();
    let ld = Builder::with_backend()
        .current_dir(dir.path())
        .port_from_config()
        .spawn()
        .await;
    assert_ne!(ld.port, 8000, "{}", ld.log());
    ld.wait_ready_at("/cerebrium/ready").await;
    let ready = get(ld.port, "/cerebrium/ready").await.unwrap();
    let body: serde_json::Value = serde_json::from_str(&ready.body).unwrap();
    assert_eq!(body["max_concurrency"], 3);
    assert_eq!(
        get(ld.port, "/cerebrium/health").await.unwrap().status,
        StatusCode::OK
    );
    let log = ld.log();
    assert!(
        log.contains("cerebrium.toml") && log.contains("grace_period=45"),
        "{log}"
    );

    let out = run_to_exit(&["--print-config"], &[], Some(dir.path()));
    assert_eq!(out.code, 0, "{}", out.stderr);
    let port = config_line(&out.stdout, "port");
    assert!(
        port.starts_with("port = 0 ") && port.contains("cerebrium.toml"),
        "{port}"
    );
    let grace = config_line(&out.stdout, "grace_period");
    assert!(
        grace.contains("45") && grace.contains("response_grace_period"),
        "{grace}"
    );
}

#[test]
fn precedence_is_flag_then_env_then_file_then_cerebrium_then_default() {
    let dir = TempDir::new("precedence");
    std::fs::write(
        dir.join("cerebrium.toml"),
        "[runtime.custom]\nport = 9001\n[scaling]\nresponse_grace_period = 100\nreplica_concurrency = 7\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("lameduck.toml"),
        "port = 9002\ngrace_period = \"50s\"\ndrain_delay = \"4s\"\n",
    )
    .unwrap();
    let out = run_to_exit(
        &[
            "--config",
            "lameduck.toml",
            "--print-config",
            "--port",
            "9004",
        ],
        &[("LAMEDUCK_PORT", "9003"), ("LAMEDUCK_GRACE_PERIOD", "20s")],
        Some(dir.path()),
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    let expect = |key: &str, value: &str, source: &str| {
        let line = config_line(&out.stdout, key);
        assert!(
            line.contains(value) && line.contains(source),
            "{key}: {line}"
        );
    };
    expect("port", "9004", "# flag");
    expect("grace_period", "20s", "LAMEDUCK_GRACE_PERIOD");
    expect("drain_delay", "4s", "lameduck.toml");
    expect("max_concurrency", "7", "replica_concurrency");
    expect("child_stop_timeout", "5s", "default");
}

/// A short `response_grace_period` with the default child stop timeout starts, with the default
/// fitted (and `--print-config` shows the value in effect); one too short to exit, or a child
/// stop timeout set beside it that cannot fit, exits 2 naming the values and where they came from.
#[test]
fn the_shutdown_must_fit_in_a_cerebrium_grace_period() {
    let dir = TempDir::new("cerebrium-budget");
    let toml = |grace: &str| {
        std::fs::write(
            dir.join("cerebrium.toml"),
            format!("[cerebrium.scaling]\nresponse_grace_period = {grace}\n"),
        )
        .unwrap()
    };
    toml("5");
    let out = run_to_exit(&["--print-config"], &[], Some(dir.path()));
    assert_eq!(out.code, 0, "{}", out.stderr);
    let child = config_line(&out.stdout, "child_stop_timeout");
    assert!(
        child.starts_with("child_stop_timeout = \"2s\"") && child.contains("# default; "),
        "{child}"
    );
    assert!(
        out.stdout.contains("# shutdown budget: drain 2s + child stop 2s + exit margin 1s = grace_period 5s; requests still running 2s after SIGTERM are cut"),
        "{}",
        out.stdout
    );

    let out = run_to_exit(
        &["--print-config"],
        &[("LAMEDUCK_CHILD_STOP_TIMEOUT", "5s")],
        Some(dir.path()),
    );
    assert_eq!(out.code, 2, "{}", out.stdout);
    assert_eq!(
        out.stderr.trim_end(),
        "lameduck: error: invalid value '5s' for --child-stop-timeout (from env \
         LAMEDUCK_CHILD_STOP_TIMEOUT): does not fit in --grace-period 5s (cerebrium.toml \
         response_grace_period) with lameduck's 1s exit margin; the largest \
         --child-stop-timeout that fits is 4s"
    );

    toml("0");
    let out = run_to_exit(&["--print-config"], &[], Some(dir.path()));
    assert_eq!(out.code, 2, "{}", out.stdout);
    assert!(
        out.stderr.starts_with(
            "lameduck: error: cerebrium.toml: key `response_grace_period`: invalid value '0': "
        ) && out.stderr.trim_end().lines().count() == 1,
        "{}",
        out.stderr
    );
}

#[tokio::test]
async fn a_config_file_works_and_a_flag_overrides_it() {
    let dir = TempDir::new("config-file");
    let file = dir.join("lameduck.toml");
    std::fs::write(
        &file,
        "ready_path = \"/from-file\"\nhealth_path = \"/alive\"\nmax_concurrency = 5\n",
    )
    .unwrap();
    let ld = Builder::with_backend()
        .args(&["--config", file.to_str().unwrap(), "--max-concurrency", "9"])
        .spawn()
        .await;
    ld.wait_ready_at("/from-file").await;
    let body: serde_json::Value =
        serde_json::from_str(&get(ld.port, "/from-file").await.unwrap().body).unwrap();
    assert_eq!(body["max_concurrency"], 9);
    assert_eq!(get(ld.port, "/alive").await.unwrap().status, StatusCode::OK);
}

#[tokio::test]
async fn the_port_can_come_from_a_config_file() {
    let dir = TempDir::new("config-port");
    let file = dir.join("lameduck.toml");
    std::fs::write(&file, "port = 0\nready_path = \"/from-file\"\n").unwrap();
    let ld = Builder::with_backend()
        .args(&["--config", file.to_str().unwrap()])
        .port_from_config()
        .spawn()
        .await;
    assert_ne!(ld.port, 8000, "{}", ld.log());
    ld.wait_ready_at("/from-file").await;
}

#[test]
fn a_broken_or_wrong_config_file_exits_2_naming_the_file_and_key() {
    let dir = TempDir::new("broken-config");
    let cases = [
        (
            "syntax.toml",
            "grace_period = \"30s\n",
            vec!["syntax.toml", "line 1"],
        ),
        (
            "value.toml",
            "grace_period = \"banana\"\n",
            vec!["value.toml", "grace_period", "banana"],
        ),
        (
            "unknown.toml",
            "grace = \"30s\"\n",
            vec!["unknown.toml", "`grace`", "unknown key"],
        ),
        (
            "type.toml",
            "max_concurrency = [1, 2]\n",
            vec!["type.toml", "max_concurrency"],
        ),
    ];
    for (name, text, needles) in cases {
        std::fs::write(dir.join(name), text).unwrap();
        let out = run_to_exit(&["--config", name], &[], Some(dir.path()));
        let stderr = out.stderr;
        assert_eq!(out.code, 2, "{name}: {stderr}");
        assert_eq!(
            stderr.trim_end().lines().count(),
            1,
            "{name}: not one line: {stderr:?}"
        );
        for needle in needles {
            assert!(
                stderr.contains(needle),
                "{name}: {stderr:?} does not name {needle}"
            );
        }
    }
    let out = run_to_exit(&["--config", "missing.toml"], &[], Some(dir.path()));
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("missing.toml"), "{}", out.stderr);
}
