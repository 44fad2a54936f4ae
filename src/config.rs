//! Command line, environment, `--config` file and cerebrium.toml -> a validated [`Config`].
//!
//! Every option is looked up once, in precedence order (flag > env var > `--config` file >
//! cerebrium.toml > default), and whichever layer supplies it, its raw text goes through the same
//! parser, so an error always names the option, the bad value and where it came from. Nothing is
//! bound, spawned or signalled here.

use std::ffi::OsString;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, Parser};
use http::uri::{Authority, Scheme, Uri};

/// Margin kept between the end of lameduck's own work and the platform's SIGKILL.
pub const EXIT_MARGIN: Duration = Duration::from_secs(1);

/// The command line. Values stay raw text here: [`Layers`] parses them, whatever layer they
/// come from, so that defaults, files and flags are validated the same way.
#[derive(Parser, Debug)]
#[command(
    name = "lameduck",
    version,
    about = "A sidecar reverse proxy that gives any HTTP server a correct shutdown",
    override_usage = "lameduck [OPTIONS] [-- COMMAND [ARG]...]",
    after_help = "DURATION: 500ms, 30s, 2m, 1h, or a bare number of seconds.\n\
                  Precedence: flag > env var > --config file > cerebrium.toml > default."
)]
struct Args {
    /// Public port to listen on [default: 8000]
    #[arg(long, env = "LAMEDUCK_PORT", value_name = "PORT")]
    port: Option<String>,

    /// Address to listen on, `::` for IPv6 [default: 0.0.0.0]
    #[arg(long, env = "LAMEDUCK_BIND", value_name = "ADDR")]
    bind: Option<String>,

    /// The backend, as http://HOST:PORT [default: http://127.0.0.1:8080]
    #[arg(long, env = "LAMEDUCK_UPSTREAM", value_name = "URL")]
    upstream: Option<String>,

    /// How to talk to the backend: http1, or http2 (h2c, for gRPC) [default: http1]
    #[arg(long, env = "LAMEDUCK_UPSTREAM_PROTOCOL", value_name = "PROTOCOL")]
    upstream_protocol: Option<String>,

    /// Time from SIGTERM to the platform's SIGKILL [default: 30s]
    #[arg(long, env = "LAMEDUCK_GRACE_PERIOD", value_name = "DURATION")]
    grace_period: Option<String>,

    /// After SIGTERM, keep admitting new requests this long while /ready already fails [default: 0s]
    #[arg(long, env = "LAMEDUCK_DRAIN_DELAY", value_name = "DURATION")]
    drain_delay: Option<String>,

    /// End the drain delay early once no new request has arrived for this long
    #[arg(long, env = "LAMEDUCK_DRAIN_QUIET", value_name = "DURATION")]
    drain_quiet: Option<String>,

    /// Time the child is given between its SIGTERM and SIGKILL [default: 5s]
    #[arg(long, env = "LAMEDUCK_CHILD_STOP_TIMEOUT", value_name = "DURATION")]
    child_stop_timeout: Option<String>,

    /// Readiness endpoint answered by lameduck [default: /ready]
    #[arg(long, env = "LAMEDUCK_READY_PATH", value_name = "PATH")]
    ready_path: Option<String>,

    /// Liveness endpoint answered by lameduck [default: /health]
    #[arg(long, env = "LAMEDUCK_HEALTH_PATH", value_name = "PATH")]
    health_path: Option<String>,

    /// At the drain deadline, end event streams with a server_restarting event: on or off [default: on]
    #[arg(long, env = "LAMEDUCK_SSE_SHUTDOWN_EVENT", value_name = "on|off")]
    sse_shutdown_event: Option<String>,

    /// Proxied requests in flight at most; 0 for no limit [default: 0]
    #[arg(long, env = "LAMEDUCK_MAX_CONCURRENCY", value_name = "N")]
    max_concurrency: Option<String>,

    /// How long a request over the limit waits for a slot before a 503 [default: 30s]
    #[arg(long, env = "LAMEDUCK_QUEUE_TIMEOUT", value_name = "DURATION")]
    queue_timeout: Option<String>,

    /// The backend counts as up only once this path answers 2xx (else: once its port accepts)
    #[arg(long, env = "LAMEDUCK_BACKEND_READY_PATH", value_name = "PATH")]
    backend_ready_path: Option<String>,

    /// /health also requires this backend path to answer 2xx (checked in the background)
    #[arg(long, env = "LAMEDUCK_BACKEND_HEALTH_PATH", value_name = "PATH")]
    backend_health_path: Option<String>,

    /// Backend not up by then: stop the child and exit 1 [default: 10m]
    #[arg(long, env = "LAMEDUCK_STARTUP_TIMEOUT", value_name = "DURATION")]
    startup_timeout: Option<String>,

    /// Serve Prometheus metrics at this path
    #[arg(long, env = "LAMEDUCK_METRICS_PATH", value_name = "PATH")]
    metrics_path: Option<String>,

    /// Log format: text or json [default: text]
    #[arg(long, env = "LAMEDUCK_LOG_FORMAT", value_name = "FORMAT")]
    log_format: Option<String>,

    /// Log level or filter (trace, debug, info, warn, error); RUST_LOG is honoured too [default: info]
    #[arg(long, env = "LAMEDUCK_LOG", value_name = "LEVEL")]
    log_level: Option<String>,

    /// Log one line per request: method, path, status, bytes, duration
    #[arg(long, env = "LAMEDUCK_ACCESS_LOG", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    access_log: Option<String>,

    /// TOML file with the same keys as the options (grace_period = "30s", ...)
    #[arg(long, env = "LAMEDUCK_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,

    /// Read port, probe paths, grace period and concurrency from this cerebrium.toml
    /// [default: ./cerebrium.toml if present]
    #[arg(long, env = "LAMEDUCK_CEREBRIUM_TOML", value_name = "FILE")]
    cerebrium_toml: Option<PathBuf>,

    /// Print the effective configuration, with where each value came from, and exit
    #[arg(long)]
    print_config: bool,

    /// The backend to spawn and supervise
    #[arg(last = true, value_name = "COMMAND")]
    command: Vec<OsString>,
}

/// Everything lameduck needs to run, validated.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub upstream: Upstream,
    pub upstream_protocol: Protocol,
    pub grace_period: Duration,
    pub drain_delay: Duration,
    pub drain_quiet: Option<Duration>,
    pub child_stop_timeout: Duration,
    pub ready_path: String,
    pub health_path: String,
    /// At the drain deadline, end `text/event-stream` responses with a `server_restarting` event.
    pub sse_shutdown_event: bool,
    /// 0: no limit.
    pub max_concurrency: usize,
    pub queue_timeout: Duration,
    pub backend_ready_path: Option<String>,
    pub backend_health_path: Option<String>,
    pub startup_timeout: Duration,
    pub metrics_path: Option<String>,
    pub log: LogConfig,
    pub command: Option<Command>,
    /// `--print-config`: describe the configuration and exit.
    pub print_config: bool,
    /// Every option's value and where it came from, in the order resolved.
    pub sources: Vec<Resolved>,
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    pub format: LogFormat,
    /// An `EnvFilter` directive: a level such as `info`, or `RUST_LOG` syntax.
    pub filter: String,
    pub access_log: bool,
}

/// How lameduck talks to the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    /// HTTP/2 over cleartext (h2c, prior knowledge): gRPC backends.
    Http2,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// The child to spawn: a program and its arguments.
#[derive(Debug, Clone)]
pub struct Command {
    pub program: OsString,
    pub args: Vec<OsString>,
}

/// The backend's address: plain HTTP on a host and port.
#[derive(Debug, Clone)]
pub struct Upstream {
    pub authority: Authority,
    pub host: String,
    pub port: u16,
}

/// Where an option's value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Flag,
    Env(String),
    File(PathBuf),
    Cerebrium(PathBuf, &'static str),
    RustLog,
    Default,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Flag => f.write_str("flag"),
            Source::Env(name) => write!(f, "env {name}"),
            Source::File(path) => write!(f, "config file {}", path.display()),
            Source::Cerebrium(path, key) => write!(f, "{} {key}", path.display()),
            Source::RustLog => f.write_str("env RUST_LOG"),
            Source::Default => f.write_str("default"),
        }
    }
}

/// One option's effective value (as text) and its source; `None` when unset.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub key: &'static str,
    pub value: Option<String>,
    pub source: Source,
}

/// Why no [`Config`] could be built.
#[derive(Debug)]
pub enum ConfigError {
    /// `--help` or `--version`: print it and exit 0.
    Info(String),
    /// Anything else: one line, exit 2.
    Invalid(String),
}

impl Config {
    /// Parses `std::env::args_os()`, the `LAMEDUCK_*` environment, and the files they name.
    pub fn from_env() -> Result<Config, ConfigError> {
        Self::parse_from(std::env::args_os())
    }

    pub fn parse_from<I, T>(args: I) -> Result<Config, ConfigError>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let matches = Args::command().try_get_matches_from(args).map_err(|err| {
            use clap::error::ErrorKind::{DisplayHelp, DisplayVersion};
            match err.kind() {
                DisplayHelp | DisplayVersion => ConfigError::Info(err.render().to_string()),
                _ => ConfigError::Invalid(first_line(&err.render().to_string())),
            }
        })?;
        let config_file = matches.get_one::<PathBuf>("config").cloned();
        let cerebrium = match matches.get_one::<PathBuf>("cerebrium_toml") {
            Some(path) => Some(path.clone()),
            None => Some(PathBuf::from("cerebrium.toml")).filter(|path| path.is_file()),
        };
        let mut layers = Layers {
            file: config_file
                .map(|path| read_config_file(&path))
                .transpose()?,
            cerebrium: cerebrium.map(|path| read_cerebrium(&path)).transpose()?,
            matches: &matches,
            resolved: Vec::new(),
        };

        let port = layers.required("port", "8000", |v| {
            v.parse::<u16>()
                .map_err(|_| "expected a port number (0-65535)".to_string())
        })?;
        let bind = layers.required("bind", "0.0.0.0", |v| {
            v.parse::<IpAddr>()
                .map_err(|_| "expected an IP address such as 0.0.0.0 or ::".to_string())
        })?;
        let upstream = layers.required("upstream", "http://127.0.0.1:8080", parse_upstream)?;
        let upstream_protocol = layers.required("upstream_protocol", "http1", |v| match v {
            "http1" => Ok(Protocol::Http1),
            "http2" => Ok(Protocol::Http2),
            _ => Err("expected http1 or http2".to_string()),
        })?;
        let grace_period = layers.required("grace_period", "30s", parse_duration)?;
        let drain_delay = layers.required("drain_delay", "0s", parse_duration)?;
        let drain_quiet = layers.optional("drain_quiet", parse_duration)?;
        let child_stop_timeout = layers.required("child_stop_timeout", "5s", parse_duration)?;
        let ready_path = layers.required("ready_path", "/ready", parse_path)?;
        let health_path = layers.required("health_path", "/health", parse_path)?;
        let sse_shutdown_event = layers.required("sse_shutdown_event", "on", parse_bool)?;
        let max_concurrency = layers.required("max_concurrency", "0", |v| {
            v.parse::<usize>()
                .map_err(|_| "expected a whole number (0 for no limit)".to_string())
        })?;
        let queue_timeout = layers.required("queue_timeout", "30s", parse_duration)?;
        let backend_ready_path = layers.optional("backend_ready_path", parse_path)?;
        let backend_health_path = layers.optional("backend_health_path", parse_path)?;
        let startup_timeout = layers.required("startup_timeout", "10m", parse_duration)?;
        let metrics_path = layers.optional("metrics_path", parse_path)?;
        let format = layers.required("log_format", "text", |v| match v {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            _ => Err("expected text or json".to_string()),
        })?;
        let filter = layers.log_filter()?;
        let access_log = layers.required("access_log", "false", parse_bool)?;

        let mut own_paths = vec![
            ("--ready-path", &ready_path),
            ("--health-path", &health_path),
        ];
        if let Some(metrics_path) = &metrics_path {
            own_paths.push(("--metrics-path", metrics_path));
        }
        for (i, (name, path)) in own_paths.iter().enumerate() {
            if let Some((other, _)) = own_paths[..i].iter().find(|(_, p)| p == path) {
                return Err(ConfigError::Invalid(format!(
                    "error: {other} and {name} are both '{path}'"
                )));
            }
        }

        let mut command = matches
            .get_many::<OsString>("command")
            .into_iter()
            .flatten()
            .cloned();
        let command = command.next().map(|program| Command {
            program,
            args: command.collect(),
        });
        Ok(Config {
            listen: SocketAddr::new(bind, port),
            upstream,
            upstream_protocol,
            grace_period,
            drain_delay,
            drain_quiet,
            child_stop_timeout,
            ready_path,
            health_path,
            sse_shutdown_event,
            max_concurrency,
            queue_timeout,
            backend_ready_path,
            backend_health_path,
            startup_timeout,
            metrics_path,
            log: LogConfig {
                format,
                filter,
                access_log,
            },
            command,
            print_config: matches.get_flag("print_config"),
            sources: layers.resolved,
        })
    }

    /// How long after the shutdown signal the drain may last: the grace period less the child's
    /// stop timeout and a safety margin, so lameduck has exited before the platform's SIGKILL.
    pub fn drain_budget(&self) -> Duration {
        self.grace_period
            .saturating_sub(self.child_stop_timeout)
            .saturating_sub(EXIT_MARGIN)
    }

    /// The effective configuration as a TOML document usable with `--config`, each value
    /// annotated with its source.
    pub fn describe(&self) -> String {
        let mut out = String::from("# lameduck: effective configuration\n");
        for resolved in &self.sources {
            let line = match &resolved.value {
                Some(value) => format!("{} = {}", resolved.key, toml_literal(value)),
                None => format!("# {} (unset)", resolved.key),
            };
            out.push_str(&format!("{line:<44} # {}\n", resolved.source));
        }
        match &self.command {
            Some(command) => {
                let words: Vec<_> = std::iter::once(&command.program)
                    .chain(&command.args)
                    .map(|word| word.to_string_lossy())
                    .collect();
                out.push_str(&format!("# command: {}\n", words.join(" ")));
            }
            None => out.push_str("# command: none (fronting an already-running backend)\n"),
        }
        out
    }

    /// The options that came from a cerebrium.toml, for the startup log.
    pub fn from_cerebrium(&self) -> Vec<String> {
        self.sources
            .iter()
            .filter(|r| matches!(r.source, Source::Cerebrium(..)))
            .map(|r| format!("{}={}", r.key, r.value.as_deref().unwrap_or("")))
            .collect()
    }
}

/// The layers an option's value may come from, highest precedence first.
struct Layers<'a> {
    matches: &'a ArgMatches,
    file: Option<(PathBuf, toml::Table)>,
    cerebrium: Option<Cerebrium>,
    resolved: Vec<Resolved>,
}

impl Layers<'_> {
    /// The option's raw text and source, from the first layer that has it.
    fn raw(&self, key: &'static str) -> Result<Option<(String, Source)>, ConfigError> {
        if let Some(value) = self.matches.get_one::<String>(key) {
            let source = match self.matches.value_source(key) {
                Some(ValueSource::EnvVariable) => Source::Env(env_name(key)),
                _ => Source::Flag,
            };
            return Ok(Some((value.clone(), source)));
        }
        if let Some((path, table)) = &self.file {
            if let Some(value) = table.get(key) {
                let text = toml_text(value).map_err(|reason| {
                    ConfigError::Invalid(format!(
                        "error: config file {}: key `{key}`: {reason}",
                        path.display()
                    ))
                })?;
                return Ok(Some((text, Source::File(path.clone()))));
            }
        }
        if let Some(cerebrium) = &self.cerebrium {
            if let Some(value) = cerebrium.values.iter().find(|value| value.ours == key) {
                let source = Source::Cerebrium(cerebrium.path.clone(), value.theirs);
                return Ok(Some((value.text.clone(), source)));
            }
        }
        Ok(None)
    }

    /// Looks the option up and parses it, recording its value and source.
    fn lookup<T>(
        &mut self,
        key: &'static str,
        default: Option<&str>,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Result<Option<T>, ConfigError> {
        let raw = self
            .raw(key)?
            .or_else(|| default.map(|d| (d.to_string(), Source::Default)));
        let Some((text, source)) = raw else {
            self.resolved.push(Resolved {
                key,
                value: None,
                source: Source::Default,
            });
            return Ok(None);
        };
        let value = parse(&text).map_err(|reason| invalid(key, &text, &source, &reason))?;
        self.resolved.push(Resolved {
            key,
            value: Some(text),
            source,
        });
        Ok(Some(value))
    }

    fn required<T>(
        &mut self,
        key: &'static str,
        default: &str,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Result<T, ConfigError> {
        let value = self.lookup(key, Some(default), parse)?;
        // Cannot be None: a default was given, and lookup only returns None without one.
        Ok(value.expect("a default always yields a value"))
    }

    fn optional<T>(
        &mut self,
        key: &'static str,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Result<Option<T>, ConfigError> {
        self.lookup(key, None, parse)
    }

    /// `--log-level` (or `LAMEDUCK_LOG`, or the file) if given, else `RUST_LOG`, else `info`.
    fn log_filter(&mut self) -> Result<String, ConfigError> {
        let rust_log = std::env::var("RUST_LOG").ok().filter(|v| !v.is_empty());
        if self.raw("log_level")?.is_none() {
            if let Some(filter) = rust_log {
                parse_filter(&filter)
                    .map_err(|reason| invalid("log_level", &filter, &Source::RustLog, &reason))?;
                self.resolved.push(Resolved {
                    key: "log_level",
                    value: Some(filter.clone()),
                    source: Source::RustLog,
                });
                return Ok(filter);
            }
        }
        self.required("log_level", "info", |v| {
            parse_filter(v).map(|()| v.to_string())
        })
    }
}

/// One line naming the option, the value and where it came from.
fn invalid(key: &str, value: &str, source: &Source, reason: &str) -> ConfigError {
    let flag = format!("--{}", key.replace('_', "-"));
    let line = match source {
        Source::Flag | Source::Default => {
            format!("error: invalid value '{value}' for {flag}: {reason}")
        }
        Source::Env(name) => {
            format!("error: invalid value '{value}' for {flag} (from env {name}): {reason}")
        }
        Source::RustLog => format!("error: invalid value '{value}' in RUST_LOG: {reason}"),
        Source::File(path) => format!(
            "error: config file {}: key `{key}`: invalid value '{value}': {reason}",
            path.display()
        ),
        Source::Cerebrium(path, theirs) => format!(
            "error: {}: key `{theirs}`: invalid value '{value}': {reason}",
            path.display()
        ),
    };
    ConfigError::Invalid(line)
}

/// The env var clap reads for an option.
fn env_name(key: &str) -> String {
    Args::command()
        .get_arguments()
        .find(|arg| arg.get_id() == key)
        .and_then(|arg| arg.get_env())
        .map(|env| env.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Options that a `--config` file may set: every option but the files themselves.
fn file_keys() -> Vec<String> {
    Args::command()
        .get_arguments()
        .filter(|arg| arg.get_long().is_some() && arg.get_env().is_some())
        .map(|arg| arg.get_id().to_string())
        .filter(|id| id != "config" && id != "cerebrium_toml")
        .collect()
}

fn read_toml(path: &Path, what: &str) -> Result<toml::Table, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|err| ConfigError::Invalid(format!("error: {what} {}: {err}", path.display())))?;
    text.parse::<toml::Table>().map_err(|err| {
        let line = err
            .span()
            .map(|span| text[..span.start].lines().count().max(1));
        let at = line.map(|l| format!(" (line {l})")).unwrap_or_default();
        let key = err.span().and_then(|span| key_at(&text, span.start));
        let key = key.map(|k| format!(" key `{k}`:")).unwrap_or_default();
        // One line: TOML's message may span several.
        let message: Vec<&str> = err
            .message()
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty())
            .collect();
        ConfigError::Invalid(format!(
            "error: {what} {}{at}:{key} {}",
            path.display(),
            message.join("; ")
        ))
    })
}

/// The key on the line holding `offset`, if that line looks like `key = value`.
fn key_at(text: &str, offset: usize) -> Option<&str> {
    let start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
    let line = text[start..].lines().next()?;
    let (key, _) = line.split_once('=')?;
    let key = key.trim();
    (!key.is_empty() && !key.starts_with('[')).then_some(key)
}

fn read_config_file(path: &Path) -> Result<(PathBuf, toml::Table), ConfigError> {
    let table = read_toml(path, "config file")?;
    let known = file_keys();
    if let Some(key) = table.keys().find(|key| !known.contains(key)) {
        return Err(ConfigError::Invalid(format!(
            "error: config file {}: key `{key}`: unknown key (expected one of: {})",
            path.display(),
            known.join(", ")
        )));
    }
    Ok((path.to_path_buf(), table))
}

/// What lameduck took from a cerebrium.toml.
struct Cerebrium {
    path: PathBuf,
    values: Vec<CerebriumValue>,
}

struct CerebriumValue {
    /// lameduck's option.
    ours: &'static str,
    /// Cerebrium's key.
    theirs: &'static str,
    text: String,
}

/// What lameduck takes from a cerebrium.toml: (section, Cerebrium's key, lameduck's option).
const CEREBRIUM_KEYS: [(&str, &str, &str); 5] = [
    ("runtime.custom", "port", "port"),
    ("runtime.custom", "readycheck_endpoint", "ready_path"),
    ("runtime.custom", "healthcheck_endpoint", "health_path"),
    ("scaling", "response_grace_period", "grace_period"),
    ("scaling", "replica_concurrency", "max_concurrency"),
];

fn read_cerebrium(path: &Path) -> Result<Cerebrium, ConfigError> {
    let root = read_toml(path, "cerebrium file")?;
    let mut values = Vec::new();
    for (section, theirs, ours) in CEREBRIUM_KEYS {
        // `[cerebrium.runtime.custom]` wins over the unprefixed `[runtime.custom]`.
        let prefixed = format!("cerebrium.{section}");
        let found = [prefixed.as_str(), section]
            .into_iter()
            .find_map(|section| table_at(&root, section)?.get(theirs));
        let Some(value) = found else { continue };
        let text = toml_text(value).map_err(|reason| {
            ConfigError::Invalid(format!(
                "error: {}: key `{theirs}`: {reason}",
                path.display()
            ))
        })?;
        // Cerebrium writes "" for an endpoint it does not use.
        if !text.is_empty() {
            values.push(CerebriumValue { ours, theirs, text });
        }
    }
    Ok(Cerebrium {
        path: path.to_path_buf(),
        values,
    })
}

fn table_at<'t>(root: &'t toml::Table, dotted: &str) -> Option<&'t toml::Table> {
    dotted
        .split('.')
        .try_fold(root, |table, part| table.get(part)?.as_table())
}

/// A TOML scalar as the text a flag would carry.
fn toml_text(value: &toml::Value) -> Result<String, String> {
    match value {
        toml::Value::String(s) => Ok(s.clone()),
        toml::Value::Integer(i) => Ok(i.to_string()),
        toml::Value::Float(f) => Ok(f.to_string()),
        toml::Value::Boolean(b) => Ok(b.to_string()),
        _ => Err("expected a string, number or boolean".to_string()),
    }
}

/// How a value prints in `--print-config`'s TOML.
fn toml_literal(value: &str) -> String {
    let bare = value.parse::<i64>().is_ok() || value == "true" || value == "false";
    if bare {
        value.to_string()
    } else {
        toml::Value::String(value.to_string()).to_string()
    }
}

fn first_line(rendered: &str) -> String {
    rendered
        .lines()
        .find(|line| !line.trim().is_empty())
        .unwrap_or("error: invalid arguments")
        .to_string()
}

/// `500ms`, `30s`, `2m`, `1h`, or a bare number of seconds (`900`, as cerebrium.toml writes it).
pub fn parse_duration(value: &str) -> Result<Duration, String> {
    const EXPECTED: &str = "expected a duration such as 500ms, 30s, 2m, 1h or 900";
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return value
            .parse::<f64>()
            .ok()
            .and_then(|secs| Duration::try_from_secs_f64(secs).ok())
            .ok_or_else(|| EXPECTED.to_string());
    }
    humantime::parse_duration(value).map_err(|_| EXPECTED.to_string())
}

fn parse_bool(value: &str) -> Result<bool, String> {
    match value.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err("expected true or false".to_string()),
    }
}

fn parse_filter(value: &str) -> Result<(), String> {
    tracing_subscriber::EnvFilter::builder()
        .parse(value)
        .map(|_| ())
        .map_err(|_| {
            "expected a level (trace, debug, info, warn, error) or a RUST_LOG filter".to_string()
        })
}

fn parse_path(value: &str) -> Result<String, String> {
    if value.starts_with('/') && !value.contains(['?', '#', ' ']) {
        Ok(value.to_string())
    } else {
        Err("expected an absolute path such as /ready".to_string())
    }
}

fn parse_upstream(value: &str) -> Result<Upstream, String> {
    const EXPECTED: &str = "expected http://HOST:PORT";
    let uri: Uri = value.parse().map_err(|_| EXPECTED.to_string())?;
    if uri.scheme() != Some(&Scheme::HTTP) {
        return Err(format!("{EXPECTED} (only plain http is supported)"));
    }
    let authority = uri.authority().ok_or_else(|| EXPECTED.to_string())?;
    if authority.as_str().contains('@') {
        return Err(format!("{EXPECTED} (no user info)"));
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(format!("{EXPECTED} (no path or query)"));
    }
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    if host.is_empty() {
        return Err(EXPECTED.to_string());
    }
    let port = authority.port_u16().unwrap_or(80);
    // Always carry the port, so the authority handed to the client is exactly the one probed.
    let authority = if authority.port().is_some() {
        authority.clone()
    } else {
        format!("{}:{port}", authority.host())
            .parse()
            .map_err(|_| EXPECTED.to_string())?
    };
    Ok(Upstream {
        authority,
        host,
        port,
    })
}

#[cfg(test)]
mod tests {
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

    fn temp_file(name: &str, text: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("lameduck-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    fn source_of<'c>(config: &'c Config, key: &str) -> &'c Source {
        &config.sources.iter().find(|r| r.key == key).unwrap().source
    }

    #[test]
    fn durations_take_units_and_bare_seconds() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("900"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("banana").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn upstream_must_be_plain_http_with_a_host() {
        let up = parse_upstream("http://127.0.0.1:9000").unwrap();
        assert_eq!((up.host.as_str(), up.port), ("127.0.0.1", 9000));
        let up = parse_upstream("http://localhost").unwrap();
        assert_eq!(up.authority.as_str(), "localhost:80");
        let up = parse_upstream("http://[::1]:81/").unwrap();
        assert_eq!((up.host.as_str(), up.port), ("::1", 81));
        assert!(parse_upstream("https://127.0.0.1:9000").is_err());
        assert!(parse_upstream("127.0.0.1:9000").is_err());
        assert!(parse_upstream("http://127.0.0.1:9000/api").is_err());
        assert!(parse_upstream("http://u:p@127.0.0.1:9000").is_err());
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
        assert!(config.sse_shutdown_event);
        assert_eq!(config.queue_timeout, Duration::from_secs(30));
        assert_eq!(config.startup_timeout, Duration::from_secs(600));
        assert_eq!(config.log.format, LogFormat::Text);
        assert!(!config.log.access_log);
        assert!(config.command.is_none());
        assert_eq!(config.drain_budget(), Duration::from_secs(24));
        assert_eq!(source_of(&config, "grace_period"), &Source::Default);
    }

    #[test]
    fn command_follows_the_double_dash() {
        let config = parse(&["--port", "9", "--", "python3", "-m", "http.server"]).unwrap();
        let command = config.command.unwrap();
        assert_eq!(command.program, "python3");
        assert_eq!(command.args, vec!["-m", "http.server"]);
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

    #[test]
    fn budget_never_goes_negative() {
        let config = parse(&["--grace-period", "2s", "--child-stop-timeout", "5s"]).unwrap();
        assert_eq!(config.drain_budget(), Duration::ZERO);
    }

    #[test]
    fn a_config_file_sets_options_and_flags_override_it() {
        let path = temp_file(
            "lameduck.toml",
            "grace_period = \"45s\"\nmax_concurrency = 4\ndrain_delay = 3\naccess_log = true\n",
        );
        let config = parse(&["--config", path.to_str().unwrap(), "--drain-delay", "1s"]).unwrap();
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

    #[test]
    fn config_file_errors_name_the_file_the_key_and_the_reason() {
        let path = temp_file("bad-value.toml", "port = 8001\ngrace_period = \"banana\"\n");
        let line = invalid(&["--config", path.to_str().unwrap()]);
        assert!(
            line.contains("bad-value.toml")
                && line.contains("`grace_period`")
                && line.contains("banana"),
            "{line}"
        );

        let path = temp_file("unknown.toml", "grace_periods = \"30s\"\n");
        let line = invalid(&["--config", path.to_str().unwrap()]);
        assert!(
            line.contains("unknown.toml")
                && line.contains("`grace_periods`")
                && line.contains("unknown key"),
            "{line}"
        );

        let path = temp_file("broken.toml", "grace_period = \"30s\nport = 1\n");
        let line = invalid(&["--config", path.to_str().unwrap()]);
        assert!(
            line.contains("broken.toml") && line.contains("line 1"),
            "{line}"
        );
        assert!(!line.contains('\n'));

        let path = temp_file("no-value.toml", "port = 1\ngrace_period = \n");
        let line = invalid(&["--config", path.to_str().unwrap()]);
        assert!(
            line.contains("no-value.toml") && line.contains("grace_period"),
            "{line}"
        );
        assert!(!line.contains('\n'), "{line:?}");

        let line = invalid(&["--config", "/nonexistent/lameduck.toml"]);
        assert!(line.contains("/nonexistent/lameduck.toml"), "{line}");
    }

    #[test]
    fn cerebrium_toml_is_read_in_both_schemas_below_the_config_file() {
        let prefixed = temp_file(
            "cerebrium.toml",
            "[cerebrium.runtime.custom]\nport = 8192\nreadycheck_endpoint = \"/r\"\nhealthcheck_endpoint = \"/h\"\nentrypoint = [\"x\"]\n\n[cerebrium.scaling]\nresponse_grace_period = 900\nreplica_concurrency = 3\n",
        );
        let config = parse(&["--cerebrium-toml", prefixed.to_str().unwrap()]).unwrap();
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

        let plain = temp_file(
            "plain-cerebrium.toml",
            "[runtime.custom]\nport = 8193\n[scaling]\nresponse_grace_period = 60\n",
        );
        let file = temp_file("over.toml", "grace_period = \"20s\"\n");
        let config = parse(&[
            "--cerebrium-toml",
            plain.to_str().unwrap(),
            "--config",
            file.to_str().unwrap(),
        ])
        .unwrap();
        assert_eq!(config.listen.port(), 8193);
        assert_eq!(config.grace_period, Duration::from_secs(20));

        let bad = temp_file(
            "bad-cerebrium.toml",
            "[cerebrium.scaling]\nreplica_concurrency = \"many\"\n",
        );
        let line = invalid(&["--cerebrium-toml", bad.to_str().unwrap()]);
        assert!(
            line.contains("bad-cerebrium.toml") && line.contains("replica_concurrency"),
            "{line}"
        );
    }
}
