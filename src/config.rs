//! Command line and environment -> a validated [`Config`].
//!
//! Parsing does no work: nothing is bound, spawned or signalled here. Every value is checked once,
//! so the rest of the program can trust it.

use std::ffi::OsString;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use clap::Parser;
use http::uri::{Authority, Scheme, Uri};

/// Margin kept between the end of lameduck's own work and the platform's SIGKILL.
pub const EXIT_MARGIN: Duration = Duration::from_secs(1);

#[derive(Parser, Debug)]
#[command(
    name = "lameduck",
    version,
    about = "A sidecar reverse proxy that gives any HTTP server a correct shutdown",
    override_usage = "lameduck [OPTIONS] [-- COMMAND [ARG]...]"
)]
struct Args {
    /// Public port to listen on
    #[arg(long, env = "LAMEDUCK_PORT", default_value_t = 8000)]
    port: u16,

    /// Address to listen on (`::` for IPv6)
    #[arg(long, env = "LAMEDUCK_BIND", default_value = "0.0.0.0")]
    bind: IpAddr,

    /// The backend, as http://HOST:PORT
    #[arg(long, env = "LAMEDUCK_UPSTREAM", default_value = "http://127.0.0.1:8080", value_parser = parse_upstream)]
    upstream: Upstream,

    /// Time from SIGTERM to the platform's SIGKILL
    #[arg(long, env = "LAMEDUCK_GRACE_PERIOD", default_value = "30s", value_parser = parse_duration)]
    grace_period: Duration,

    /// After SIGTERM, keep admitting new requests this long while /ready already answers 503
    #[arg(long, env = "LAMEDUCK_DRAIN_DELAY", default_value = "0s", value_parser = parse_duration)]
    drain_delay: Duration,

    /// Time the child is given between its SIGTERM and SIGKILL
    #[arg(long, env = "LAMEDUCK_CHILD_STOP_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    child_stop_timeout: Duration,

    /// Backend not accepting by then: stop the child and exit 1
    #[arg(long, env = "LAMEDUCK_STARTUP_TIMEOUT", default_value = "10m", value_parser = parse_duration)]
    startup_timeout: Duration,

    /// Readiness endpoint answered by lameduck
    #[arg(long, env = "LAMEDUCK_READY_PATH", default_value = "/ready", value_parser = parse_path)]
    ready_path: String,

    /// Liveness endpoint answered by lameduck
    #[arg(long, env = "LAMEDUCK_HEALTH_PATH", default_value = "/health", value_parser = parse_path)]
    health_path: String,

    /// The backend to spawn and supervise
    #[arg(last = true, value_name = "COMMAND")]
    command: Vec<OsString>,
}

/// Everything lameduck needs to run, validated.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub upstream: Upstream,
    pub grace_period: Duration,
    pub drain_delay: Duration,
    pub child_stop_timeout: Duration,
    pub startup_timeout: Duration,
    pub ready_path: String,
    pub health_path: String,
    pub command: Option<Command>,
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

/// Why the command line could not become a [`Config`].
#[derive(Debug)]
pub enum ConfigError {
    /// `--help` or `--version`: print it and exit 0.
    Info(String),
    /// Anything else: one line, exit 2.
    Invalid(String),
}

impl Config {
    /// Parses `std::env::args_os()` and the `LAMEDUCK_*` environment.
    pub fn from_env() -> Result<Config, ConfigError> {
        Self::parse_from(std::env::args_os())
    }

    pub fn parse_from<I, T>(args: I) -> Result<Config, ConfigError>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let args = Args::try_parse_from(args).map_err(|err| {
            use clap::error::ErrorKind::{DisplayHelp, DisplayVersion};
            match err.kind() {
                DisplayHelp | DisplayVersion => ConfigError::Info(err.render().to_string()),
                _ => ConfigError::Invalid(first_line(&err.render().to_string())),
            }
        })?;
        if args.ready_path == args.health_path {
            return Err(ConfigError::Invalid(format!(
                "error: --ready-path and --health-path are both '{}'",
                args.ready_path
            )));
        }
        let mut command = args.command.into_iter();
        let command = command.next().map(|program| Command {
            program,
            args: command.collect(),
        });
        Ok(Config {
            listen: SocketAddr::new(args.bind, args.port),
            upstream: args.upstream,
            grace_period: args.grace_period,
            drain_delay: args.drain_delay,
            child_stop_timeout: args.child_stop_timeout,
            startup_timeout: args.startup_timeout,
            ready_path: args.ready_path,
            health_path: args.health_path,
            command,
        })
    }

    /// How long after the shutdown signal the drain may last: the grace period less the child's
    /// stop timeout and a safety margin, so lameduck has exited before the platform's SIGKILL.
    pub fn drain_budget(&self) -> Duration {
        self.grace_period
            .saturating_sub(self.child_stop_timeout)
            .saturating_sub(EXIT_MARGIN)
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
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return value
            .parse::<f64>()
            .ok()
            .and_then(|secs| Duration::try_from_secs_f64(secs).ok())
            .ok_or_else(|| "expected a duration such as 500ms, 30s, 2m, 1h or 900".to_string());
    }
    humantime::parse_duration(value)
        .map_err(|_| "expected a duration such as 500ms, 30s, 2m, 1h or 900".to_string())
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
        let config = parse(&[]).unwrap();
        assert_eq!(config.listen, "0.0.0.0:8000".parse().unwrap());
        assert_eq!(config.upstream.authority.as_str(), "127.0.0.1:8080");
        assert_eq!(config.grace_period, Duration::from_secs(30));
        assert_eq!(config.drain_delay, Duration::ZERO);
        assert_eq!(config.child_stop_timeout, Duration::from_secs(5));
        assert_eq!(config.ready_path, "/ready");
        assert_eq!(config.health_path, "/health");
        assert!(config.command.is_none());
        assert_eq!(config.drain_budget(), Duration::from_secs(24));
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
        assert!(!invalid(&["--nope"]).contains('\n'));
    }

    #[test]
    fn budget_never_goes_negative() {
        let config = parse(&["--grace-period", "2s", "--child-stop-timeout", "5s"]).unwrap();
        assert_eq!(config.drain_budget(), Duration::ZERO);
    }
}
