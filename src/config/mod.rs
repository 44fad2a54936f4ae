//! Command line, environment, `--config` file and cerebrium.toml -> a validated [`Config`].
//!
//! [`Config`] is the option table: each option is one field whose clap attributes give its flag,
//! env var, help, default (written there and nowhere else) and parser. Everything else derives
//! from the table: `--help`, the keys a `--config` file may set, `--print-config`, and the options
//! a cerebrium.toml maps onto. A new option is a field there plus the code that uses it.
//!
//! Precedence: flag > env var > `--config` file > cerebrium.toml > default. clap reads flags and
//! env vars; the files (module `layers`) fill in only what clap left at its default, and their
//! values go through clap too, so every value is checked by the same parser whatever layer it came
//! from, and a bad one is reported as one line naming the option, the value and its source
//! (module `source`). Nothing is bound, spawned or signalled here.
//!
//! - `parse`: the value parsers (durations, paths, the upstream URL, ...).
//! - `layers`: the `--config` file, cerebrium.toml and `RUST_LOG`, and how they sit below flags
//!   and env vars.
//! - `source`: where each value came from, and the one-line messages.

mod layers;
mod parse;
mod source;
#[cfg(test)]
mod tests;

use std::ffi::OsString;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgAction, Args as _, FromArgMatches as _};
use http::uri::Authority;

use layers::Layers;
pub(crate) use source::first_line;
pub use source::Setting;
use source::{Resolved, Source};

/// Everything lameduck needs to run, validated: build it with [`Config::from_env`] or
/// [`Config::parse_from`].
///
/// This struct is also the option table. Each option's field carries its flag, env var, help,
/// default and parser, and `--help`, the `--config` file's keys and `--print-config` follow from
/// them. (clap's derive also provides `Config::from_arg_matches`; on its own that skips the
/// `--config` file and cerebrium.toml, so use `parse_from`.)
#[derive(clap::Args, Debug, Clone)]
pub struct Config {
    /// Public port to listen on
    #[arg(long, env = "LAMEDUCK_PORT", value_name = "PORT")]
    #[arg(default_value = "8000", value_parser = parse::port)]
    port: u16,

    /// Address to listen on, `::` for IPv6
    #[arg(long, env = "LAMEDUCK_BIND", value_name = "ADDR")]
    #[arg(default_value = "0.0.0.0", value_parser = parse::ip_addr)]
    bind: IpAddr,

    /// `--bind` and `--port` together, set by [`Config::parse_from`] from the two.
    #[arg(skip = SocketAddr::from(([0, 0, 0, 0], 0)))]
    pub listen: SocketAddr,

    /// The backend, as http://HOST:PORT, or unix:/PATH for a Unix socket
    #[arg(long, env = "LAMEDUCK_UPSTREAM", value_name = "URL")]
    #[arg(default_value = "http://127.0.0.1:8080", value_parser = parse::upstream)]
    pub upstream: Upstream,

    /// How to talk to the backend: http1, or http2 (h2c, for gRPC)
    #[arg(long, env = "LAMEDUCK_UPSTREAM_PROTOCOL", value_name = "PROTOCOL")]
    #[arg(default_value = "http1", value_parser = parse::protocol)]
    pub upstream_protocol: Protocol,

    /// Time from SIGTERM to the platform's SIGKILL
    #[arg(long, env = "LAMEDUCK_GRACE_PERIOD", value_name = "DURATION")]
    #[arg(default_value = "30s", value_parser = parse::duration)]
    pub grace_period: Duration,

    /// After SIGTERM, keep admitting new requests this long while /ready already fails
    #[arg(long, env = "LAMEDUCK_DRAIN_DELAY", value_name = "DURATION")]
    #[arg(default_value = "0s", value_parser = parse::duration)]
    pub drain_delay: Duration,

    /// End the drain delay early once no new request has arrived for this long
    #[arg(long, env = "LAMEDUCK_DRAIN_QUIET", value_name = "DURATION")]
    #[arg(value_parser = parse::duration)]
    pub drain_quiet: Option<Duration>,

    /// Time the child is given between its SIGTERM and SIGKILL
    #[arg(long, env = "LAMEDUCK_CHILD_STOP_TIMEOUT", value_name = "DURATION")]
    #[arg(default_value = "5s", value_parser = parse::duration)]
    pub child_stop_timeout: Duration,

    /// Readiness endpoint answered by lameduck
    #[arg(long, env = "LAMEDUCK_READY_PATH", value_name = "PATH")]
    #[arg(default_value = "/ready", value_parser = parse::path)]
    pub ready_path: String,

    /// Liveness endpoint answered by lameduck
    #[arg(long, env = "LAMEDUCK_HEALTH_PATH", value_name = "PATH")]
    #[arg(default_value = "/health", value_parser = parse::path)]
    pub health_path: String,

    /// Request head (request line and headers) larger than this: 431; a request line over
    /// 8 KiB: 414. HTTP/2: the header list size advertised and enforced
    #[arg(long, env = "LAMEDUCK_MAX_HEADER_SIZE", value_name = "SIZE")]
    #[arg(default_value = "32KiB", value_parser = parse::size)]
    pub max_header_size: usize,

    /// A client's request head not complete by then (counted from its first byte, or from the
    /// connection's start for its first request): 408 and close
    #[arg(long, env = "LAMEDUCK_HEADER_READ_TIMEOUT", value_name = "DURATION")]
    #[arg(default_value = "10s", value_parser = parse::timeout)]
    pub header_read_timeout: Duration,

    /// Close a client connection idle this long between requests, or whose client accepts no
    /// response data this long; never an upgraded connection
    #[arg(long, env = "LAMEDUCK_IDLE_TIMEOUT", value_name = "DURATION")]
    #[arg(default_value = "60s", value_parser = parse::timeout)]
    pub idle_timeout: Duration,

    /// At the drain deadline, end event streams with a server_restarting event: on, off, or
    /// openai (an OpenAI-style error object with a message, for OpenAI SDKs)
    #[arg(
        long,
        env = "LAMEDUCK_SSE_SHUTDOWN_EVENT",
        value_name = "on|off|openai"
    )]
    #[arg(default_value = "on", value_parser = parse::sse_shutdown_event)]
    pub sse_shutdown_event: SseShutdownEvent,

    /// The data of that final event instead, as one JSON object; sent as `event: error` (unless
    /// --sse-shutdown-event off)
    #[arg(long, env = "LAMEDUCK_SSE_SHUTDOWN_DATA", value_name = "JSON")]
    #[arg(value_parser = parse::json_object)]
    pub sse_shutdown_data: Option<JsonObject>,

    /// Proxied requests in flight at most; 0 for no limit
    #[arg(long, env = "LAMEDUCK_MAX_CONCURRENCY", value_name = "N")]
    #[arg(default_value = "0", value_parser = parse::limit)]
    pub max_concurrency: usize,

    /// How long a request over the limit waits for a slot before a 503
    #[arg(long, env = "LAMEDUCK_QUEUE_TIMEOUT", value_name = "DURATION")]
    #[arg(default_value = "30s", value_parser = parse::duration)]
    pub queue_timeout: Duration,

    /// The backend counts as up only once this path answers 2xx (else: once its port accepts)
    #[arg(long, env = "LAMEDUCK_BACKEND_READY_PATH", value_name = "PATH")]
    #[arg(value_parser = parse::path)]
    pub backend_ready_path: Option<String>,

    /// /health also requires this backend path to answer 2xx (checked in the background)
    #[arg(long, env = "LAMEDUCK_BACKEND_HEALTH_PATH", value_name = "PATH")]
    #[arg(value_parser = parse::path)]
    pub backend_health_path: Option<String>,

    /// Backend not up by then: stop the child and exit 1
    #[arg(long, env = "LAMEDUCK_STARTUP_TIMEOUT", value_name = "DURATION")]
    #[arg(default_value = "10m", value_parser = parse::duration)]
    pub startup_timeout: Duration,

    /// The backend's response head not received by then: 504
    #[arg(long, env = "LAMEDUCK_BACKEND_TIMEOUT", value_name = "DURATION")]
    #[arg(value_parser = parse::duration)]
    pub backend_timeout: Option<Duration>,

    /// Idle backend connections kept per worker thread for the next requests (a backend
    /// connection is held only while a request uses it); 0 keeps none
    #[arg(long, env = "LAMEDUCK_UPSTREAM_IDLE_MAX", value_name = "N")]
    #[arg(default_value = "32", value_parser = parse::count)]
    pub upstream_idle_max: usize,

    /// Serve Prometheus metrics at this path
    #[arg(long, env = "LAMEDUCK_METRICS_PATH", value_name = "PATH")]
    #[arg(value_parser = parse::path)]
    pub metrics_path: Option<String>,

    #[command(flatten)]
    pub log: LogConfig,

    /// TOML file with the same keys as the options (grace_period = "30s", ...)
    #[arg(
        id = "config",
        long = "config",
        env = "LAMEDUCK_CONFIG",
        value_name = "FILE"
    )]
    config_file: Option<PathBuf>,

    /// Read port, probe paths, grace period and concurrency from this cerebrium.toml
    /// [default: ./cerebrium.toml if present]
    #[arg(long, env = "LAMEDUCK_CEREBRIUM_TOML", value_name = "FILE")]
    cerebrium_toml: Option<PathBuf>,

    /// Print the effective configuration, with where each value came from, and exit
    #[arg(long)]
    pub print_config: bool,

    /// The backend to spawn and supervise
    #[arg(id = "command", last = true, value_name = "COMMAND")]
    command_words: Vec<OsString>,

    /// The child to spawn, from the words after `--`; `None`: front a running backend.
    #[arg(skip)]
    pub command: Option<Command>,

    /// Every option's value and where it came from, in table order.
    #[arg(skip)]
    sources: Vec<Resolved>,
}

/// Logging: part of the option table, flattened into [`Config`].
#[derive(clap::Args, Debug, Clone)]
pub struct LogConfig {
    /// Log format: text or json
    #[arg(id = "log_format", long = "log-format", env = "LAMEDUCK_LOG_FORMAT")]
    #[arg(value_name = "FORMAT", default_value = "text", value_parser = parse::log_format)]
    pub format: LogFormat,

    /// Log level (trace, debug, info, warn, error, off) or filter (info,hyper=warn); RUST_LOG is
    /// honoured too
    #[arg(
        id = "log_level",
        long = "log-level",
        env = "LAMEDUCK_LOG",
        value_name = "LEVEL"
    )]
    #[arg(default_value = "info", value_parser = parse::log_filter)]
    pub filter: String,

    /// Log one line per request: method, path, status, bytes, duration
    #[arg(long, env = "LAMEDUCK_ACCESS_LOG", value_name = "BOOL")]
    #[arg(num_args = 0..=1, default_missing_value = "true", default_value = "false")]
    #[arg(value_parser = parse::switch, action = ArgAction::Set)]
    pub access_log: bool,
}

/// How lameduck talks to the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    /// HTTP/2 over cleartext (h2c, prior knowledge): gRPC backends.
    Http2,
}

/// How event streams end at the drain deadline (`--sse-shutdown-event`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SseShutdownEvent {
    /// `event: error`, data `{"error":"server_restarting","resume":true}`.
    On,
    /// No final event: the stream just ends after its last complete event.
    Off,
    /// `event: error`, with an OpenAI-style error object (`message`, `type`, `code`) that
    /// OpenAI SDKs raise as an error carrying the message.
    Openai,
}

/// A JSON object, kept as its compact serialization: one line, ready to follow `data: `.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonObject(String);

impl JsonObject {
    /// The object in compact JSON, without newlines.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    /// One JSON object per line.
    Json,
}

/// The child to spawn: a program and its arguments.
#[derive(Debug, Clone)]
pub struct Command {
    pub program: OsString,
    pub args: Vec<OsString>,
}

/// The backend's address: plain HTTP on a host and port, or on a Unix socket (`unix:/PATH`).
#[derive(Debug, Clone)]
pub struct Upstream {
    /// `host:port` as given (the port always written out): the `Host` header (and an HTTP/2
    /// backend's `:authority`) when a client sent none, and the key of the pooled client's
    /// connections. `localhost` for a Unix socket.
    pub authority: Authority,
    /// The host as given, without an IPv6 literal's brackets.
    pub host: String,
    pub port: u16,
    /// Where to connect when that needs no name lookup: the address given as an IP literal, or
    /// for `localhost` 127.0.0.1 then ::1 (see [`addrs_without_lookup`]). Empty for any other
    /// name, which is looked up (`/etc/hosts`, DNS) at each new connection.
    pub addrs: Vec<SocketAddr>,
    /// `unix:/PATH`: the socket every connection goes to instead (`host`, `port` and `addrs`
    /// then mean nothing). An absolute path.
    pub socket: Option<PathBuf>,
}

/// `host:port`, or `unix:/PATH`: for the log.
impl std::fmt::Display for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.socket {
            Some(path) => write!(f, "unix:{}", path.display()),
            None => f.write_str(self.authority.as_str()),
        }
    }
}

/// The addresses `host` stands for without a name lookup: an IP literal's (brackets allowed), or
/// for `localhost` (any case, with or without the final dot) 127.0.0.1 then ::1, in that order.
/// Empty for any other name.
///
/// `localhost` is answered here rather than by the system's resolver: a static lameduck may run
/// where there is no `/etc/hosts` to ask (an empty root), and each new backend connection would
/// otherwise wait for a lookup on a blocking thread. Both loopback addresses are kept, in case
/// the backend listens on ::1 alone (Node binds `localhost` there when the resolver puts ::1
/// first); connecting tries them in order.
pub fn addrs_without_lookup(host: &str, port: u16) -> Vec<SocketAddr> {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return vec![SocketAddr::new(ip, port)];
    }
    let name = host.strip_suffix('.').unwrap_or(host);
    if name.eq_ignore_ascii_case("localhost") {
        return vec![
            SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
            SocketAddr::from((Ipv6Addr::LOCALHOST, port)),
        ];
    }
    Vec::new()
}

/// A value that lameduck will use otherwise than as given, or that needs a word of warning: for
/// [`Config::describe_with`]. Found by whoever uses the option (the lifecycle fits the shutdown
/// timings into the grace period); configuration itself draws no such conclusions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Effective {
    /// The option's key, as in a `--config` file.
    pub key: &'static str,
    /// The value in effect, as a flag would give it, when it differs from the one given.
    pub value: Option<String>,
    /// Why, in one line.
    pub note: String,
}

/// Why no [`Config`] could be built.
#[derive(Debug)]
pub enum ConfigError {
    /// `--help` or `--version`: print it and exit 0.
    Info(String),
    /// Anything else: one line, exit 2.
    Invalid(String),
}

/// The clap command: [`Config`]'s options under lameduck's name, usage and help.
fn command() -> clap::Command {
    // After the table: the derive would make `Config`'s doc comment the program's description.
    Config::augment_args(clap::Command::new("lameduck"))
        .version(env!("CARGO_PKG_VERSION"))
        .about("A sidecar reverse proxy that gives any HTTP server a correct shutdown")
        .long_about(None)
        .override_usage(
            "lameduck [OPTIONS] [-- COMMAND [ARG]...]\n       \
             lameduck probe [PATH|URL]",
        )
        .after_help(
            "DURATION: 500ms, 30s, 2m, 1h, or a bare number of seconds.\n\
             SIZE: bytes, or with a unit: 64k, 32KiB, 1MiB (k and KiB both mean 1024).\n\
             Precedence: flag > env var > --config file > cerebrium.toml > default.\n\
             \n\
             lameduck probe [PATH|URL]: GET a running lameduck's health endpoint (or PATH, or \
             URL) on 127.0.0.1:$LAMEDUCK_PORT; exit 0 on 2xx, 1 otherwise, within 2s. For \
             HEALTHCHECK and exec probes; see `lameduck probe --help`.",
        )
}

/// The options proper: what a `--config` file may set and `--print-config` lists. Every argument
/// with an env var, but the files themselves.
fn options(cmd: &clap::Command) -> impl Iterator<Item = &clap::Arg> {
    cmd.get_arguments().filter(|arg| {
        arg.get_env().is_some() && !matches!(arg.get_id().as_str(), "config" | "cerebrium_toml")
    })
}

impl Config {
    /// Parses `std::env::args_os()`, the `LAMEDUCK_*` environment, and the files they name.
    pub fn from_env() -> Result<Config, ConfigError> {
        Self::parse_from(std::env::args_os())
    }

    /// Parses `args` (the first is the program's name), the `LAMEDUCK_*` environment, and the
    /// files they name.
    pub fn parse_from<I, T>(args: I) -> Result<Config, ConfigError>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let argv: Vec<OsString> = args.into_iter().map(Into::into).collect();
        let cmd = command();

        // 1. Flags, env vars and defaults.
        let matches = cmd
            .clone()
            .try_get_matches_from(&argv)
            .map_err(|err| source::from_clap(err, &cmd, |key| flag_or_env(&cmd, &argv, key)))?;
        let config = Config::from_matches(&matches)?;

        // 2. The files they name, below them.
        let layers = Layers::read(
            &cmd,
            config.config_file.as_deref(),
            config.cerebrium_toml.as_deref(),
        )?;
        let (matches, sources) = layers.apply(&cmd, &argv, matches)?;

        // 3. What the options mean together.
        let mut config = Config::from_matches(&matches)?;
        config.listen = SocketAddr::new(config.bind, config.port);
        let mut words = std::mem::take(&mut config.command_words).into_iter();
        config.command = words.next().map(|program| Command {
            program,
            args: words.collect(),
        });
        config.sources = sources;
        config.check_own_paths()?;
        Ok(config)
    }

    /// The typed options from clap's matches.
    fn from_matches(matches: &clap::ArgMatches) -> Result<Config, ConfigError> {
        // Cannot fail: the matches come from this very table, so every id and type agrees.
        Config::from_arg_matches(matches)
            .map_err(|err| ConfigError::Invalid(source::first_line(&err.render().to_string())))
    }

    /// lameduck's own endpoints must differ, or one would hide another.
    fn check_own_paths(&self) -> Result<(), ConfigError> {
        let mut own_paths = vec![
            ("--ready-path", &self.ready_path),
            ("--health-path", &self.health_path),
        ];
        if let Some(metrics_path) = &self.metrics_path {
            own_paths.push(("--metrics-path", metrics_path));
        }
        for (i, (name, path)) in own_paths.iter().enumerate() {
            if let Some((other, _)) = own_paths[..i].iter().find(|(_, p)| p == path) {
                return Err(ConfigError::Invalid(format!(
                    "error: {other} and {name} are both '{path}'"
                )));
            }
        }
        Ok(())
    }

    /// The effective configuration as a TOML document usable with `--config`, each value
    /// annotated with its source.
    pub fn describe(&self) -> String {
        self.describe_with(&[])
    }

    /// [`Config::describe`], with the values in `effective` replacing the ones given and their
    /// notes after the source.
    pub fn describe_with(&self, effective: &[Effective]) -> String {
        let mut out = String::from("# lameduck: effective configuration\n");
        for resolved in &self.sources {
            let adjusted = effective.iter().find(|e| e.key == resolved.key);
            let value = adjusted
                .and_then(|e| e.value.as_ref())
                .or(resolved.value.as_ref());
            let line = match value {
                Some(value) => format!("{} = {}", resolved.key, toml_literal(value)),
                None => format!("# {} (unset)", resolved.key),
            };
            let mut comment = resolved.source.to_string();
            if let Some(adjusted) = adjusted {
                comment = format!("{comment}; {}", adjusted.note);
            }
            out.push_str(&format!("{line:<44} # {comment}\n"));
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

    /// Whether `key` was left at its default by every layer.
    pub fn is_default(&self, key: &str) -> bool {
        self.resolved(key)
            .is_none_or(|resolved| resolved.source == Source::Default)
    }

    /// Where `key`'s value came from, for messages: `flag`, `env LAMEDUCK_...`, `default`, ...
    pub fn origin(&self, key: &str) -> String {
        self.resolved(key)
            .map_or_else(|| Source::Default.to_string(), |r| r.source.to_string())
    }

    /// `key` and where its value came from, to say how to change it.
    pub fn setting(&self, key: &str) -> Setting {
        Setting {
            key: key.to_string(),
            source: self
                .resolved(key)
                .map_or(Source::Default, |r| r.source.clone()),
        }
    }

    /// The one line refusing `key`'s value, given as it was and named by its source as every
    /// invalid value is, for a check that needs more than the option's own parser (one option
    /// against another).
    pub fn reject(&self, key: &str, reason: &str) -> ConfigError {
        let (value, source) = match self.resolved(key) {
            Some(resolved) => (resolved.value.as_deref().unwrap_or(""), &resolved.source),
            None => ("", &Source::Default),
        };
        source::invalid(key, value, source, reason)
    }

    fn resolved(&self, key: &str) -> Option<&Resolved> {
        self.sources.iter().find(|r| r.key == key)
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

/// Where the first parse's rejected value for `key` came from: its flag or its env var.
fn flag_or_env(cmd: &clap::Command, argv: &[OsString], key: &str) -> Source {
    // clap reads the whole command line before any env var: if the command line alone parses,
    // the rejected value was the env var's.
    let without_env = cmd.clone().mut_args(|arg| arg.env(None::<&str>));
    if without_env.try_get_matches_from(argv).is_err() {
        return Source::Flag;
    }
    let arg = cmd.get_arguments().find(|arg| arg.get_id() == key);
    Source::Env(arg.map(layers::env_name).unwrap_or_default())
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
