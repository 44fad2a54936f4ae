//! Value parsers: an option's text -> its typed value, or the reason it is not one.
//!
//! clap runs them (they are the option table's `value_parser`s) on flags, env vars and defaults,
//! and on the `--config` file's and cerebrium.toml's values too, so a value is checked the same
//! way whichever layer it came from. The reasons are the end of lameduck's one-line messages
//! (`error: invalid value 'x' for --opt: <reason>`); scripts and docs quote them, so they stay put.

use std::net::IpAddr;
use std::time::Duration;

use http::uri::{Scheme, Uri};

use super::{JsonObject, LogFormat, Protocol, SseShutdownEvent, Upstream};

/// `500ms`, `30s`, `2m`, `1h` (any humantime duration), or a bare number of seconds (`900`,
/// `1.5`), as cerebrium.toml writes it.
pub(super) fn duration(value: &str) -> Result<Duration, String> {
    const EXPECTED: &str = "expected a duration such as 500ms, 30s, 2m, 1h or 900";
    let value = value.trim();
    // Only digits and dots: humantime wants a unit, cerebrium.toml never writes one.
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return value
            .parse::<f64>()
            .ok()
            .and_then(|secs| Duration::try_from_secs_f64(secs).ok())
            .ok_or_else(|| EXPECTED.to_string());
    }
    humantime::parse_duration(value).map_err(|_| EXPECTED.to_string())
}

/// A duration above zero: a timeout that is always on.
pub(super) fn timeout(value: &str) -> Result<Duration, String> {
    const EXPECTED: &str = "expected a duration above zero such as 500ms, 10s, 2m or 60";
    match duration(value) {
        Ok(duration) if !duration.is_zero() => Ok(duration),
        _ => Err(EXPECTED.to_string()),
    }
}

/// The smallest and largest header size limits: below 1 KiB ordinary browser requests fail;
/// above 16 MiB a limit protects nothing.
const SIZE_RANGE: std::ops::RangeInclusive<usize> = 1024..=16 * 1024 * 1024;

/// A size in bytes: `65536`, or with a unit as nginx and Kubernetes write them: `64k`, `64K`,
/// `64KB`, `64KiB`, `1m`, `1MiB` (every unit is a power of 1024), between 1 KiB and 16 MiB.
pub(super) fn size(value: &str) -> Result<usize, String> {
    const EXPECTED: &str = "expected a size between 1KiB and 16MiB such as 32KiB, 64k or 65536";
    let value = value.trim();
    let digits = value.bytes().take_while(u8::is_ascii_digit).count();
    let (number, unit) = value.split_at(digits);
    let scale = match unit.trim_start().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1024,
        "m" | "mb" | "mib" => 1024 * 1024,
        _ => return Err(EXPECTED.to_string()),
    };
    number
        .parse::<usize>()
        .ok()
        .and_then(|n| n.checked_mul(scale))
        .filter(|bytes| SIZE_RANGE.contains(bytes))
        .ok_or_else(|| EXPECTED.to_string())
}

/// A TCP port, 0 included (the kernel picks one).
pub(super) fn port(value: &str) -> Result<u16, String> {
    value
        .parse()
        .map_err(|_| "expected a port number (0-65535)".to_string())
}

/// An IPv4 or IPv6 address to listen on.
pub(super) fn ip_addr(value: &str) -> Result<IpAddr, String> {
    value
        .parse()
        .map_err(|_| "expected an IP address such as 0.0.0.0 or ::".to_string())
}

/// A whole number, 0 meaning "no limit".
pub(super) fn limit(value: &str) -> Result<usize, String> {
    value
        .parse()
        .map_err(|_| "expected a whole number (0 for no limit)".to_string())
}

/// A whole number, 0 included.
pub(super) fn count(value: &str) -> Result<usize, String> {
    value
        .parse()
        .map_err(|_| "expected a whole number".to_string())
}

/// `true`/`false`, `1`/`0`, `yes`/`no`, `on`/`off`, in any case.
pub(super) fn switch(value: &str) -> Result<bool, String> {
    match value.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err("expected true or false".to_string()),
    }
}

/// `openai`, or a [`switch`] spelling: on (`true`, `yes`, `1`, ...) or off (`false`, `no`, `0`, ...).
pub(super) fn sse_shutdown_event(value: &str) -> Result<SseShutdownEvent, String> {
    if value.eq_ignore_ascii_case("openai") {
        return Ok(SseShutdownEvent::Openai);
    }
    match switch(value) {
        Ok(true) => Ok(SseShutdownEvent::On),
        Ok(false) => Ok(SseShutdownEvent::Off),
        Err(_) => Err("expected on, off or openai".to_string()),
    }
}

/// A JSON object (`{...}`), re-serialized compactly so that it fits on one `data:` line.
pub(super) fn json_object(value: &str) -> Result<JsonObject, String> {
    match serde_json::from_str::<serde_json::Value>(value) {
        Ok(object @ serde_json::Value::Object(_)) => Ok(JsonObject(object.to_string())),
        Ok(_) => Err("expected a JSON object such as {\"error\":\"restarting\"}".to_string()),
        Err(err) => Err(format!("not JSON ({err})")),
    }
}

/// An absolute URL path without query or fragment, as lameduck compares it to request paths.
pub(super) fn path(value: &str) -> Result<String, String> {
    if value.starts_with('/') && !value.contains(['?', '#', ' ']) {
        Ok(value.to_string())
    } else {
        Err("expected an absolute path such as /ready".to_string())
    }
}

/// `http1` or `http2`.
pub(super) fn protocol(value: &str) -> Result<Protocol, String> {
    match value {
        "http1" => Ok(Protocol::Http1),
        "http2" => Ok(Protocol::Http2),
        _ => Err("expected http1 or http2".to_string()),
    }
}

/// `text` or `json`.
pub(super) fn log_format(value: &str) -> Result<LogFormat, String> {
    match value {
        "text" => Ok(LogFormat::Text),
        "json" => Ok(LogFormat::Json),
        _ => Err("expected text or json".to_string()),
    }
}

/// A level (`trace`, `debug`, `info`, `warn`, `error`, `off`) or a `RUST_LOG`-style list of
/// directives (`info,hyper=warn`), kept as text: `main` builds the filter from it.
///
/// Every directive must name its level. tracing reads a bare word as a target enabled at every
/// level, so a misspelt level (`verbose`, `warning`) would be taken as the name of a target that
/// never logs, and lameduck would run with all logging silently off; that is refused instead
/// (`myapp=trace` still enables one target at every level).
pub(super) fn log_filter(value: &str) -> Result<String, String> {
    const EXPECTED: &str = "expected a level (trace, debug, info, warn, error, off) or \
                            comma-separated directives each naming one, such as info,hyper=warn";
    let mut directives = value
        .split(',')
        .map(str::trim)
        .filter(|directive| !directive.is_empty())
        .peekable();
    if directives.peek().is_none() {
        return Err(EXPECTED.to_string());
    }
    for directive in directives {
        // The level follows the last `=`: one inside a span's field filter
        // (`target[span{field=value}]`) leaves brackets after it, which no level holds.
        let level = directive
            .rsplit_once('=')
            .map_or(directive, |(_, level)| level);
        let is_level =
            !level.is_empty() && level.parse::<tracing::level_filters::LevelFilter>().is_ok();
        if !is_level {
            return Err(EXPECTED.to_string());
        }
    }
    tracing_subscriber::EnvFilter::builder()
        .parse(value)
        .map(|_| value.to_string())
        .map_err(|_| EXPECTED.to_string())
}

/// `http://HOST[:PORT]` or `unix:/PATH`, nothing else: lameduck speaks plain HTTP to a backend
/// next to it.
pub(super) fn upstream(value: &str) -> Result<Upstream, String> {
    const EXPECTED: &str = "expected http://HOST:PORT or unix:/PATH";
    if let Some(path) = value.strip_prefix("unix:") {
        return unix_upstream(path);
    }
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
        addrs: super::addrs_without_lookup(&host, port),
        authority,
        host,
        port,
        socket: None,
    })
}

/// The longest socket path the kernel takes (`sun_path` is 108 bytes, with its final NUL).
const MAX_SOCKET_PATH: usize = 107;

/// `unix:/PATH`: an absolute path, since the child may run in another directory. Requests carry
/// `Host: localhost` when the client sent none, as curl's `--unix-socket` does.
fn unix_upstream(path: &str) -> Result<Upstream, String> {
    if !path.starts_with('/') {
        return Err("expected unix:/PATH with an absolute path".to_string());
    }
    if path.len() > MAX_SOCKET_PATH {
        return Err(format!(
            "the socket path is longer than {MAX_SOCKET_PATH} bytes, the most a Unix socket takes"
        ));
    }
    if path.contains('\0') {
        return Err("expected unix:/PATH (no NUL byte)".to_string());
    }
    Ok(Upstream {
        authority: http::uri::Authority::from_static("localhost"),
        host: "localhost".to_string(),
        port: 80,
        addrs: Vec::new(),
        socket: Some(path.into()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_units_and_bare_seconds() {
        assert_eq!(duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(duration("900"), Ok(Duration::from_secs(900)));
        assert_eq!(duration("1.5"), Ok(Duration::from_millis(1500)));
        assert!(duration("banana").is_err());
        assert!(duration("").is_err());
        assert!(duration("-1s").is_err());
        assert!(duration("-1").is_err());
    }

    #[test]
    fn timeouts_are_durations_above_zero() {
        assert_eq!(timeout("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(timeout("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(timeout("60"), Ok(Duration::from_secs(60)));
        for bad in ["0s", "0", "", "soon", "-1s"] {
            assert!(timeout(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sizes_take_bytes_and_units_of_1024() {
        assert_eq!(size("32KiB"), Ok(32 * 1024));
        assert_eq!(size("64k"), Ok(64 * 1024));
        assert_eq!(size("64K"), Ok(64 * 1024));
        assert_eq!(size("16kb"), Ok(16 * 1024));
        assert_eq!(size("65536"), Ok(65536));
        assert_eq!(size("4096b"), Ok(4096));
        assert_eq!(size("1MiB"), Ok(1024 * 1024));
        assert_eq!(size("2 m"), Ok(2 * 1024 * 1024));
        assert_eq!(size("1KiB"), Ok(1024));
        assert_eq!(size("16MiB"), Ok(16 * 1024 * 1024));
        for bad in [
            "",
            "k",
            "32 KiB B",
            "1.5k",
            "-1k",
            "32GiB",
            "1023",
            "17MiB",
            "0",
            "99999999999999999999k",
        ] {
            assert!(size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn upstream_must_be_plain_http_with_a_host() {
        let up = upstream("http://127.0.0.1:9000").unwrap();
        assert_eq!((up.host.as_str(), up.port), ("127.0.0.1", 9000));
        let up = upstream("http://localhost").unwrap();
        assert_eq!(up.authority.as_str(), "localhost:80");
        let up = upstream("http://[::1]:81/").unwrap();
        assert_eq!((up.host.as_str(), up.port), ("::1", 81));
        let up = upstream("http://backend.internal:8080").unwrap();
        assert_eq!(up.host, "backend.internal");
        assert!(upstream("https://127.0.0.1:9000").is_err());
        assert!(upstream("127.0.0.1:9000").is_err());
        assert!(upstream("http://127.0.0.1:9000/api").is_err());
        assert!(upstream("http://u:p@127.0.0.1:9000").is_err());
        assert!(upstream("http://127.0.0.1:9000").unwrap().socket.is_none());
    }

    #[test]
    fn unix_upstream_needs_an_absolute_path() {
        let up = upstream("unix:/run/app.sock").unwrap();
        assert_eq!(
            up.socket.as_deref(),
            Some(std::path::Path::new("/run/app.sock"))
        );
        assert_eq!(up.authority.as_str(), "localhost");
        assert!(up.addrs.is_empty());
        for bad in [
            "unix:",
            "unix:app.sock",
            "unix:./app.sock",
            "unix:~/app.sock",
        ] {
            let err = upstream(bad).unwrap_err();
            assert!(err.contains("absolute path"), "{bad}: {err}");
        }
        let long = format!("unix:/{}", "a".repeat(MAX_SOCKET_PATH));
        assert!(upstream(&long)
            .unwrap_err()
            .contains("longer than 107 bytes"));
        let longest = format!("unix:/{}", "a".repeat(MAX_SOCKET_PATH - 1));
        assert!(upstream(&longest).is_ok());
        assert!(upstream("unix:/a\0b").is_err());
    }

    /// No name lookup for IP literals and `localhost`: a static lameduck in an empty root has no
    /// `/etc/hosts` to look in. The authority (the `Host` header) stays as written.
    #[test]
    fn upstream_addresses_need_no_lookup_for_ips_and_localhost() {
        use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
        let loopback = |port| {
            vec![
                SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
                SocketAddr::from((Ipv6Addr::LOCALHOST, port)),
            ]
        };
        let up = upstream("http://127.0.0.1:9000").unwrap();
        assert_eq!(up.addrs, vec![([127, 0, 0, 1], 9000).into()]);
        let up = upstream("http://[::1]:81").unwrap();
        assert_eq!(up.addrs, vec!["[::1]:81".parse().unwrap()]);
        for host in ["localhost", "LocalHost", "localhost."] {
            let up = upstream(&format!("http://{host}:3000")).unwrap();
            assert_eq!(up.addrs, loopback(3000), "{host}");
            assert_eq!(up.authority.as_str(), format!("{host}:3000"));
        }
        assert_eq!(upstream("http://localhost").unwrap().addrs, loopback(80));
        for name in [
            "backend",
            "localhost.example",
            "my-localhost",
            "localhost..",
        ] {
            let up = upstream(&format!("http://{name}:3000")).unwrap();
            assert!(up.addrs.is_empty(), "{name}: {:?}", up.addrs);
        }
    }

    #[test]
    fn switches_take_the_usual_spellings() {
        for yes in ["true", "1", "yes", "on", "ON", "True"] {
            assert_eq!(switch(yes), Ok(true), "{yes}");
        }
        for no in ["false", "0", "no", "off", "OFF"] {
            assert_eq!(switch(no), Ok(false), "{no}");
        }
        assert!(switch("maybe").is_err());
        assert!(switch("").is_err());
    }

    #[test]
    fn sse_shutdown_events_take_switch_spellings_and_openai() {
        for on in ["on", "true", "yes", "1", "ON"] {
            assert_eq!(sse_shutdown_event(on), Ok(SseShutdownEvent::On), "{on}");
        }
        for off in ["off", "false", "no", "0", "Off"] {
            assert_eq!(sse_shutdown_event(off), Ok(SseShutdownEvent::Off), "{off}");
        }
        for openai in ["openai", "OpenAI"] {
            assert_eq!(sse_shutdown_event(openai), Ok(SseShutdownEvent::Openai));
        }
        for bad in ["", "maybe", "open-ai", "anthropic"] {
            assert_eq!(
                sse_shutdown_event(bad),
                Err("expected on, off or openai".to_string()),
                "{bad}"
            );
        }
    }

    #[test]
    fn shutdown_data_is_one_json_object_on_one_line() {
        let data = json_object("{\n  \"error\": \"bye\",\n  \"retry_ms\": 500\n}").unwrap();
        assert_eq!(data.as_str(), r#"{"error":"bye","retry_ms":500}"#);
        // A newline inside a string stays escaped: still one line.
        let data = json_object(r#"{"message":"a\nb"}"#).unwrap();
        assert_eq!(data.as_str(), r#"{"message":"a\nb"}"#);
        assert!(!data.as_str().contains('\n'));
        for bad in ["", "{", "error", "{'a':1}", "{\"a\":1} x"] {
            let reason = json_object(bad).unwrap_err();
            assert!(reason.starts_with("not JSON"), "{bad}: {reason}");
        }
        for not_object in ["[1,2]", "\"text\"", "1", "null", "true"] {
            let reason = json_object(not_object).unwrap_err();
            assert!(
                reason.starts_with("expected a JSON object"),
                "{not_object}: {reason}"
            );
        }
    }

    #[test]
    fn paths_are_absolute_without_query() {
        assert_eq!(path("/ready"), Ok("/ready".to_string()));
        for bad in ["ready", "", "/a b", "/a?b", "/a#b"] {
            assert!(path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn log_filters_are_checked_but_kept_as_written() {
        assert_eq!(log_filter("info,hyper=warn"), Ok("info,hyper=warn".into()));
        for good in [
            "trace",
            "debug",
            "info",
            "warn",
            "error",
            "off",
            "WARN",
            "3",
            "info,",
            "lameduck=debug",
            "lameduck::child=trace,warn",
            "x[conn{peer=1}]=debug",
        ] {
            assert_eq!(log_filter(good), Ok(good.to_string()), "{good}");
        }
    }

    /// A bare word is a target to tracing: `verbose` would enable a target that never logs.
    #[test]
    fn every_log_directive_must_name_a_level() {
        for bad in [
            "verbose",
            "warning",
            "info,verbose",
            "lameduck",
            "x=",
            "x=loud",
            "",
            ",",
            "x[conn{peer=1}]",
            "info,x=notalevel",
        ] {
            let reason = log_filter(bad).unwrap_err();
            assert!(reason.starts_with("expected a level"), "{bad}: {reason}");
        }
    }
}
