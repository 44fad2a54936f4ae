//! Configuration from files: `--config`, cerebrium.toml, precedence, `--print-config`, errors.

mod support;

use std::process::Command;

use http::StatusCode;
use support::*;

fn run(args: &[&str], dir: &std::path::Path) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_lameduck"))
        .args(args)
        .current_dir(dir)
        .env_remove("RUST_LOG")
        .output()
        .expect("run lameduck");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn a_cerebrium_toml_in_the_working_directory_configures_lameduck() {
    let dir = temp_dir("cerebrium");
    let port = free_port();
    std::fs::write(
        dir.join("cerebrium.toml"),
        format!(
            "[cerebrium.deployment]\nname = \"app\"\n\n[cerebrium.runtime.custom]\nport = {port}\n\
             readycheck_endpoint = \"/cerebrium/ready\"\nhealthcheck_endpoint = \"/cerebrium/health\"\n\n\
             [cerebrium.scaling]\nresponse_grace_period = 45\nreplica_concurrency = 3\n"
        ),
    )
    .unwrap();
    let ld = Builder::with_backend()
        .current_dir(&dir)
        .port_from_config(port)
        .spawn();
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

    let (code, stdout, _) = run(&["--print-config"], &dir);
    assert_eq!(code, 0);
    assert!(stdout.contains(&format!("port = {port}")), "{stdout}");
    let grace = stdout
        .lines()
        .find(|l| l.starts_with("grace_period"))
        .unwrap();
    assert!(
        grace.contains("45") && grace.contains("response_grace_period"),
        "{grace}"
    );
}

#[test]
fn precedence_is_flag_then_env_then_file_then_cerebrium_then_default() {
    let dir = temp_dir("precedence");
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
    let out = Command::new(env!("CARGO_BIN_EXE_lameduck"))
        .args([
            "--config",
            "lameduck.toml",
            "--print-config",
            "--port",
            "9004",
        ])
        .env("LAMEDUCK_PORT", "9003")
        .env("LAMEDUCK_GRACE_PERIOD", "20s")
        .env_remove("RUST_LOG")
        .current_dir(&dir)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = |key: &str| {
        stdout
            .lines()
            .find(|l| l.starts_with(&format!("{key} ")))
            .unwrap_or_else(|| panic!("{key} missing from {stdout}"))
            .to_string()
    };
    let expect = |key: &str, value: &str, source: &str| {
        let line = line(key);
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

#[tokio::test]
async fn a_config_file_works_and_a_flag_overrides_it() {
    let dir = temp_dir("config-file");
    let file = dir.join("lameduck.toml");
    std::fs::write(
        &file,
        "ready_path = \"/from-file\"\nhealth_path = \"/alive\"\nmax_concurrency = 5\n",
    )
    .unwrap();
    let ld = Builder::with_backend()
        .args(&["--config", file.to_str().unwrap(), "--max-concurrency", "9"])
        .spawn();
    ld.wait_ready_at("/from-file").await;
    let body: serde_json::Value =
        serde_json::from_str(&get(ld.port, "/from-file").await.unwrap().body).unwrap();
    assert_eq!(body["max_concurrency"], 9);
    assert_eq!(get(ld.port, "/alive").await.unwrap().status, StatusCode::OK);
}

#[test]
fn a_broken_or_wrong_config_file_exits_2_naming_the_file_and_key() {
    let dir = temp_dir("broken-config");
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
        let (code, _, stderr) = run(&["--config", name], &dir);
        assert_eq!(code, 2, "{name}: {stderr}");
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
    let (code, _, stderr) = run(&["--config", "missing.toml"], &dir);
    assert_eq!(code, 2);
    assert!(stderr.contains("missing.toml"), "{stderr}");
}
