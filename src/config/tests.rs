//! `Config::parse_from` end to end: the table, the layers, the messages.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use super::*;

fn parse(args: &[&str]) -> Result<Config, ConfigError> {
    Config::parse_from(std::iter::once("lameduck").chain(args.iter().copied()))
}

fn invalid(args: &[&str]) -> String {
    match parse(args) {
        Err(ConfigError::Invalid(line)) => line,
        other => panic!("expected an invalid configuration, got {other:?}"),
    }
}

/// A directory of its own for one test's files, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("lameduck-config-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn file(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn arg(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn source_of<'c>(config: &'c Config, key: &str) -> &'c Source {
    &config.sources.iter().find(|r| r.key == key).unwrap().source
}

/// `--print-config`'s line for `key`, without its padding.
fn described(config: &Config, key: &str) -> String {
    let text = config.describe();
    let line = text
        .lines()
        .find(|line| line.starts_with(&format!("{key} ")) || line.starts_with(&format!("# {key} ")))
        .unwrap_or_else(|| panic!("{key} missing from {text}"));
    line.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[test]
fn defaults_match_the_spec() {
    let config = parse(&["--cerebrium-toml", "/dev/null"]).unwrap();
    assert_eq!(config.listen, "0.0.0.0:8000".parse().unwrap());
    assert_eq!(config.upstream.authority.as_str(), "127.0.0.1:8080");
    assert_eq!(config.grace_period, Duration::from_secs(30));
    assert_eq!(config.drain_delay, Duration::ZERO);
    assert_eq!(config.child_stop_timeout, Duration::from_secs(5));
    assert_eq!(config.ready_path, "/ready");
    assert_eq!(config.health_path, "/health");
    assert_eq!(config.max_concurrency, 0);
    assert_eq!(config.upstream_protocol, Protocol::Http1);
    assert_eq!(config.sse_shutdown_event, SseShutdownEvent::On);
    assert!(config.sse_shutdown_data.is_none());
    assert_eq!(config.queue_timeout, Duration::from_secs(30));
    assert_eq!(config.startup_timeout, Duration::from_secs(600));
    assert_eq!(config.log.format, LogFormat::Text);
    assert!(!config.log.access_log);
    assert!(config.command.is_none());
    assert_eq!(source_of(&config, "grace_period"), &Source::Default);
}

/// Each default is written once, in the table: `--print-config` with nothing set shows exactly
/// clap's defaults, and the options without one as unset.
#[test]
fn print_config_without_layers_shows_the_tables_defaults() {
    let config = parse(&["--cerebrium-toml", "/dev/null"]).unwrap();
    let rust_log = std::env::var_os("RUST_LOG").is_some_and(|v| !v.is_empty());
    let cmd = command();
    let mut count = 0;
    for option in options(&cmd) {
        let key = option.get_id().as_str();
        // Set in the test's environment: not a default.
        if std::env::var_os(layers::env_name(option)).is_some() || (key == "log_level" && rust_log)
        {
            continue;
        }
        let expected = match option.get_default_values() {
            [] => format!("# {key} (unset) # default"),
            [default] => format!(
                "{key} = {} # default",
                toml_literal(&default.to_string_lossy())
            ),
            more => panic!("{key}: several defaults {more:?}"),
        };
        assert_eq!(described(&config, key), expected);
        count += 1;
    }
    assert!(count >= 20, "only {count} options checked");
    assert_eq!(
        described(&config, "grace_period"),
        "grace_period = \"30s\" # default"
    );
}

/// What a user of the configuration fitted (the lifecycle's budget) replaces the value given in
/// `--print-config`, its reason after the source; the output stays a valid config file.
#[test]
fn print_config_shows_values_in_effect_with_their_reason() {
    let config = parse(&["--cerebrium-toml", "/dev/null", "--grace-period", "5s"]).unwrap();
    assert!(config.is_default("child_stop_timeout") && !config.is_default("grace_period"));
    assert_eq!(config.origin("grace_period"), "flag");
    let text = config.describe_with(&[Effective {
        key: "child_stop_timeout",
        value: Some("2s".into()),
        note: "fitted".into(),
    }]);
    let line = text
        .lines()
        .find(|line| line.starts_with("child_stop_timeout "))
        .unwrap();
    assert_eq!(
        line.split_whitespace().collect::<Vec<_>>().join(" "),
        "child_stop_timeout = \"2s\" # default; fitted"
    );
    let reparsed = text.parse::<toml::Table>().unwrap();
    assert_eq!(reparsed["child_stop_timeout"].as_str(), Some("2s"));
    match config.reject("grace_period", "too short") {
        ConfigError::Invalid(line) => {
            assert_eq!(
                line,
                "error: invalid value '5s' for --grace-period: too short"
            )
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn command_follows_the_double_dash() {
    let config = parse(&["--port", "9", "--", "python3", "-m", "http.server"]).unwrap();
    let command = config.command.unwrap();
    assert_eq!(command.program, "python3");
    assert_eq!(command.args, vec!["-m", "http.server"]);
    assert_eq!(config.listen.port(), 9);
}

#[test]
fn bad_values_give_one_line_naming_the_option_and_value() {
    let line = invalid(&["--grace-period", "banana"]);
    assert!(
        line.contains("--grace-period") && line.contains("banana"),
        "{line}"
    );
    let line = invalid(&["--port", "70000"]);
    assert!(line.contains("--port") && line.contains("70000"), "{line}");
    let line = invalid(&["--ready-path", "ready"]);
    assert!(line.contains("--ready-path"), "{line}");
    let line = invalid(&["--ready-path", "/x", "--health-path", "/x"]);
    assert!(line.contains("--health-path"), "{line}");
    let line = invalid(&["--log-format", "xml"]);
    assert!(
        line.contains("--log-format") && line.contains("xml"),
        "{line}"
    );
    assert!(!invalid(&["--nope"]).contains('\n'));
}

/// clap's own line for a rejected value (`for '--grace-period <DURATION>'`) is replaced by
/// lameduck's, which says whether the value came from the flag or the env var.
#[test]
fn rejected_flag_and_env_values_are_reported_in_lameducks_words() {
    const DURATION: &str = "expected a duration such as 500ms, 30s, 2m, 1h or 900";
    assert_eq!(
        invalid(&["--grace-period", "banana"]),
        format!("error: invalid value 'banana' for --grace-period: {DURATION}")
    );
    assert_eq!(
        invalid(&["--grace-period=", "--port", "1"]),
        format!("error: invalid value '' for --grace-period: {DURATION}")
    );
    assert_eq!(
        invalid(&["--access-log=maybe"]),
        "error: invalid value 'maybe' for --access-log: expected true or false"
    );

    // Setting an env var would race the other tests, which read the environment too: point the
    // option at one every test process has (PATH, never a duration) instead.
    let path = std::env::var("PATH").expect("PATH is set");
    let with_env = |args: &[&str]| {
        let cmd = command().mut_arg("grace_period", |arg| arg.env("PATH"));
        let argv: Vec<OsString> = std::iter::once("lameduck")
            .chain(args.iter().copied())
            .map(OsString::from)
            .collect();
        let err = cmd.clone().try_get_matches_from(&argv).unwrap_err();
        match source::from_clap(err, &cmd, |key| flag_or_env(&cmd, &argv, key)) {
            ConfigError::Invalid(line) => line,
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(
        with_env(&[]),
        format!("error: invalid value '{path}' for --grace-period (from env PATH): {DURATION}")
    );
    // A bad flag is the flag's, even with a bad env var beside it.
    assert_eq!(
        with_env(&["--grace-period", "x"]),
        format!("error: invalid value 'x' for --grace-period: {DURATION}")
    );
    // Another option's bad flag is reported as a flag too.
    assert_eq!(
        with_env(&["--port", "70000"]),
        "error: invalid value '70000' for --port: expected a port number (0-65535)"
    );
}

/// A misspelt level is refused, not taken as a target that never logs (all logging silently off).
#[test]
fn a_log_level_that_is_no_level_is_refused_in_every_layer() {
    const EXPECTED: &str = "expected a level (trace, debug, info, warn, error, off) or \
                            comma-separated directives each naming one, such as info,hyper=warn";
    assert_eq!(
        invalid(&["--log-level", "verbose"]),
        format!("error: invalid value 'verbose' for --log-level: {EXPECTED}")
    );
    let dir = TempDir::new();
    let path = dir.file("log.toml", "log_level = \"info,verbose\"\n");
    assert_eq!(
        invalid(&["--config", arg(&path)]),
        format!(
            "error: config file {}: key `log_level`: invalid value 'info,verbose': {EXPECTED}",
            path.display()
        )
    );
    assert_eq!(
        parse(&["--log-level", "lameduck=debug,warn"])
            .unwrap()
            .log
            .filter,
        "lameduck=debug,warn"
    );
}

#[test]
fn clap_errors_other_than_values_keep_claps_first_line() {
    assert_eq!(
        invalid(&["--no-such-flag"]),
        "error: unexpected argument '--no-such-flag' found"
    );
    assert_eq!(
        invalid(&["--port"]),
        "error: a value is required for '--port <PORT>' but none was supplied"
    );
    assert!(matches!(parse(&["--help"]), Err(ConfigError::Info(_))));
    assert!(matches!(parse(&["--version"]), Err(ConfigError::Info(_))));
}

/// One typed option through every layer clap does not read: default < cerebrium.toml < file <
/// flag, each value parsed by the same parser into the same type.
#[test]
fn a_typed_option_takes_the_highest_layer() {
    let dir = TempDir::new();
    let cerebrium = dir.file(
        "cerebrium.toml",
        "[cerebrium.scaling]\nresponse_grace_period = 900\n",
    );
    let file = dir.file("lameduck.toml", "grace_period = \"1m30s\"\n");
    let base = ["--cerebrium-toml", arg(&cerebrium)];

    let config = parse(&["--cerebrium-toml", "/dev/null"]).unwrap();
    assert_eq!(config.grace_period, Duration::from_secs(30));
    assert_eq!(source_of(&config, "grace_period"), &Source::Default);

    let config = parse(&base).unwrap();
    assert_eq!(config.grace_period, Duration::from_secs(900));
    assert_eq!(
        source_of(&config, "grace_period"),
        &Source::Cerebrium(cerebrium.clone(), "response_grace_period")
    );

    let config = parse(&[&base[..], &["--config", arg(&file)]].concat()).unwrap();
    assert_eq!(config.grace_period, Duration::from_secs(90));
    assert_eq!(
        source_of(&config, "grace_period"),
        &Source::File(file.clone())
    );

    let args = [&base[..], &["--config", arg(&file), "--grace-period", "2"]].concat();
    let config = parse(&args).unwrap();
    assert_eq!(config.grace_period, Duration::from_secs(2));
    assert_eq!(source_of(&config, "grace_period"), &Source::Flag);
    assert_eq!(
        described(&config, "grace_period"),
        "grace_period = 2 # flag"
    );
}

#[test]
fn a_config_file_sets_options_and_flags_override_it() {
    let dir = TempDir::new();
    let path = dir.file(
        "lameduck.toml",
        "grace_period = \"45s\"\nmax_concurrency = 4\ndrain_delay = 3\naccess_log = true\n",
    );
    let config = parse(&["--config", arg(&path), "--drain-delay", "1s"]).unwrap();
    assert_eq!(config.grace_period, Duration::from_secs(45));
    assert_eq!(config.max_concurrency, 4);
    assert!(config.log.access_log);
    assert_eq!(config.drain_delay, Duration::from_secs(1));
    assert_eq!(
        source_of(&config, "grace_period"),
        &Source::File(path.clone())
    );
    assert_eq!(source_of(&config, "drain_delay"), &Source::Flag);
    let described = config.describe();
    assert!(described.contains("grace_period = \"45s\""), "{described}");
    assert!(described.contains("max_concurrency = 4"), "{described}");
    // The description is itself a valid config file.
    let reparsed = described.parse::<toml::Table>().unwrap();
    assert_eq!(reparsed["port"].as_integer(), Some(8000));
}

/// A file's value that looks like a flag or holds `=` is still one value.
#[test]
fn file_values_reach_the_parser_whole() {
    let dir = TempDir::new();
    let path = dir.file(
        "lameduck.toml",
        "log_level = \"info,hyper=warn\"\nready_path = \"/a=b\"\n",
    );
    let config = parse(&["--config", arg(&path)]).unwrap();
    assert_eq!(config.log.filter, "info,hyper=warn");
    assert_eq!(config.ready_path, "/a=b");

    let path = dir.file("negative.toml", "grace_period = -1\n");
    assert_eq!(
        invalid(&["--config", arg(&path)]),
        format!(
            "error: config file {}: key `grace_period`: invalid value '-1': \
             expected a duration such as 500ms, 30s, 2m, 1h or 900",
            path.display()
        )
    );
}

/// The final event's mode and data from a config file: a JSON object as a TOML string, kept
/// compact; and `--print-config` writes them back as a file would.
#[test]
fn sse_shutdown_options_come_from_a_config_file_too() {
    let dir = TempDir::new();
    let path = dir.file(
        "lameduck.toml",
        "sse_shutdown_event = \"openai\"\nsse_shutdown_data = '{ \"error\": \"bye\" }'\n",
    );
    let config = parse(&["--config", arg(&path)]).unwrap();
    assert_eq!(config.sse_shutdown_event, SseShutdownEvent::Openai);
    let data = config.sse_shutdown_data.as_ref().unwrap();
    assert_eq!(data.as_str(), r#"{"error":"bye"}"#);
    let described = config.describe();
    let reparsed = described.parse::<toml::Table>().unwrap();
    assert_eq!(reparsed["sse_shutdown_event"].as_str(), Some("openai"));
    assert_eq!(
        reparsed["sse_shutdown_data"].as_str(),
        Some(r#"{ "error": "bye" }"#)
    );

    let path = dir.file("array.toml", "sse_shutdown_data = '[1]'\n");
    let line = invalid(&["--config", arg(&path)]);
    assert!(
        line.contains("key `sse_shutdown_data`") && line.contains("expected a JSON object"),
        "{line}"
    );
}

#[test]
fn config_file_errors_name_the_file_the_key_and_the_reason() {
    let dir = TempDir::new();
    let path = dir.file("bad-value.toml", "port = 8001\ngrace_period = \"banana\"\n");
    assert_eq!(
        invalid(&["--config", arg(&path)]),
        format!(
            "error: config file {}: key `grace_period`: invalid value 'banana': \
             expected a duration such as 500ms, 30s, 2m, 1h or 900",
            path.display()
        )
    );

    let path = dir.file("unknown.toml", "grace_periods = \"30s\"\n");
    let line = invalid(&["--config", arg(&path)]);
    assert!(
        line.contains("unknown.toml")
            && line.contains("`grace_periods`")
            && line.contains("unknown key (expected one of: port, bind, upstream, "),
        "{line}"
    );
    // The files themselves are not keys.
    let (_, keys) = line.split_once("expected one of: ").unwrap();
    assert!(
        !keys.contains("config") && !keys.contains("cerebrium"),
        "{line}"
    );
    assert!(
        line.ends_with(", log_format, log_level, access_log)"),
        "{line}"
    );

    let path = dir.file("broken.toml", "grace_period = \"30s\nport = 1\n");
    let line = invalid(&["--config", arg(&path)]);
    assert!(
        line.contains("broken.toml") && line.contains("line 1"),
        "{line}"
    );
    assert!(!line.contains('\n'));

    let path = dir.file("no-value.toml", "port = 1\ngrace_period = \n");
    let line = invalid(&["--config", arg(&path)]);
    assert!(
        line.contains("no-value.toml") && line.contains("grace_period"),
        "{line}"
    );
    assert!(!line.contains('\n'), "{line:?}");

    let path = dir.file("array.toml", "max_concurrency = [1, 2]\n");
    assert_eq!(
        invalid(&["--config", arg(&path)]),
        format!(
            "error: config file {}: key `max_concurrency`: expected a string, number or boolean",
            path.display()
        )
    );

    // Of several bad values, the first in the table is reported, whatever is wrong with the others.
    let path = dir.file(
        "two.toml",
        "max_concurrency = [1]\nqueue_timeout = \"x\"\ngrace_period = \"banana\"\n",
    );
    let line = invalid(&["--config", arg(&path)]);
    assert!(
        line.contains("key `grace_period`: invalid value 'banana'"),
        "{line}"
    );

    let line = invalid(&["--config", "/nonexistent/lameduck.toml"]);
    assert!(line.contains("/nonexistent/lameduck.toml"), "{line}");
}

#[test]
fn cerebrium_toml_is_read_in_both_schemas_below_the_config_file() {
    let dir = TempDir::new();
    let prefixed = dir.file(
        "cerebrium.toml",
        "[cerebrium.runtime.custom]\nport = 8192\nreadycheck_endpoint = \"/r\"\nhealthcheck_endpoint = \"/h\"\nentrypoint = [\"x\"]\n\n[cerebrium.scaling]\nresponse_grace_period = 900\nreplica_concurrency = 3\n",
    );
    let config = parse(&["--cerebrium-toml", arg(&prefixed)]).unwrap();
    assert_eq!(config.listen.port(), 8192);
    assert_eq!(config.ready_path, "/r");
    assert_eq!(config.health_path, "/h");
    assert_eq!(config.grace_period, Duration::from_secs(900));
    assert_eq!(config.max_concurrency, 3);
    assert_eq!(
        source_of(&config, "grace_period"),
        &Source::Cerebrium(prefixed.clone(), "response_grace_period")
    );
    assert_eq!(config.from_cerebrium().len(), 5);
    assert!(config
        .from_cerebrium()
        .contains(&"grace_period=900".to_string()));

    let plain = dir.file(
        "plain-cerebrium.toml",
        "[runtime.custom]\nport = 8193\n[scaling]\nresponse_grace_period = 60\n",
    );
    let file = dir.file("over.toml", "grace_period = \"20s\"\n");
    let config = parse(&["--cerebrium-toml", arg(&plain), "--config", arg(&file)]).unwrap();
    assert_eq!(config.listen.port(), 8193);
    assert_eq!(config.grace_period, Duration::from_secs(20));

    let bad = dir.file(
        "bad-cerebrium.toml",
        "[cerebrium.scaling]\nreplica_concurrency = \"many\"\n",
    );
    assert_eq!(
        invalid(&["--cerebrium-toml", arg(&bad)]),
        format!(
            "error: {}: key `replica_concurrency`: invalid value 'many': \
             expected a whole number (0 for no limit)",
            bad.display()
        )
    );
    // A flag above it hides the bad value.
    assert!(parse(&["--cerebrium-toml", arg(&bad), "--max-concurrency", "2"]).is_ok());
}

/// The cerebrium.toml mapping names options of the table, not copies of them.
#[test]
fn cerebrium_keys_map_onto_options() {
    let cmd = command();
    let ids: Vec<&str> = options(&cmd).map(|arg| arg.get_id().as_str()).collect();
    for (_, _, ours) in layers::CEREBRIUM_KEYS {
        assert!(ids.contains(&ours), "{ours} is not an option");
    }
}

#[test]
fn the_table_is_well_formed() {
    command().debug_assert();
    let cmd = command();
    for option in options(&cmd) {
        let key = option.get_id().as_str();
        // The TOML key, the flag and the env var are one name in three spellings.
        assert_eq!(option.get_long(), Some(key.replace('_', "-").as_str()));
        let env = layers::env_name(option);
        assert!(env.starts_with("LAMEDUCK_"), "{key}: {env}");
    }
}

/// How to change an option is said in the words of where it was set: the flag (also for a
/// default), the env var, the config file's key, or cerebrium.toml's own key in whole seconds.
#[test]
fn a_setting_is_told_in_the_words_of_its_source() {
    let dir = TempDir::new();
    let cerebrium = dir.file(
        "cerebrium.toml",
        "[cerebrium.scaling]\nresponse_grace_period = 20\n",
    );
    let file = dir.file("lameduck.toml", "grace_period = \"25s\"\n");
    let to = |config: &Config| {
        config
            .setting("grace_period")
            .set_to(Duration::from_millis(47_200))
    };
    let config = parse(&["--cerebrium-toml", "/dev/null"]).unwrap();
    assert_eq!(to(&config), "--grace-period 48s");
    let config = parse(&["--cerebrium-toml", arg(&cerebrium)]).unwrap();
    assert_eq!(
        to(&config),
        format!("response_grace_period = 48 in {}", cerebrium.display())
    );
    let config = parse(&["--config", arg(&file)]).unwrap();
    assert_eq!(
        to(&config),
        format!("grace_period = \"48s\" in {}", file.display())
    );
    let setting = Setting {
        key: "grace_period".into(),
        source: Source::Env("LAMEDUCK_GRACE_PERIOD".into()),
    };
    assert_eq!(
        setting.set_to(Duration::from_secs(48)),
        "LAMEDUCK_GRACE_PERIOD=48s"
    );
}
