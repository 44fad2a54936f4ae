//! `lameduck probe [PATH|URL]`: asks a running lameduck for its health, for Docker's
//! `HEALTHCHECK` and Kubernetes exec probes in images that have no shell, no curl and no resolver
//! (scratch, distroless/static).
//!
//! It sends `GET` to lameduck's health path (or the PATH given) on the address lameduck listens
//! on, found the way lameduck finds it: `LAMEDUCK_PORT`, `LAMEDUCK_BIND` and
//! `LAMEDUCK_HEALTH_PATH`, the `--config` file named by `LAMEDUCK_CONFIG`, a `./cerebrium.toml`,
//! else the defaults (`http://127.0.0.1:8000/health`). A wildcard bind address (`0.0.0.0`, `::`) is reached on
//! loopback. Flags given to the lameduck being probed are not visible here: a `--port` flag must
//! be repeated as `LAMEDUCK_PORT` or as a URL (`lameduck probe http://127.0.0.1:9000/health`).
//!
//! Exit status: 0 when the answer is 2xx; 1 for anything else, with one line on stderr saying
//! why (refused, no answer within [`TIMEOUT`], another status, bad arguments). Never 2: Docker
//! reserves it.

use std::ffi::OsString;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use http::uri::{Authority, PathAndQuery, Scheme, Uri};
use http::{header, Request, StatusCode};
use http_body_util::Empty;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::config::{self, first_line, Config, ConfigError};

/// The first argument that makes lameduck's executable this probe instead of lameduck.
pub const NAME: &str = "probe";

/// The whole probe's time: connecting, sending and the response head.
pub const TIMEOUT: Duration = Duration::from_secs(2);

/// Runs `lameduck probe` with `args`, the words after `probe`.
pub fn run(args: &[OsString]) -> ExitCode {
    let argv = std::iter::once(OsString::from(NAME)).chain(args.iter().cloned());
    let matches = match command().try_get_matches_from(argv) {
        Ok(matches) => matches,
        Err(err) if err.kind() == clap::error::ErrorKind::DisplayHelp => {
            print!("{}", err.render());
            return ExitCode::SUCCESS;
        }
        Err(err) => return fail(first_line(&err.render().to_string())),
    };
    let target = match Target::new(matches.get_one::<String>("target").map(String::as_str)) {
        Ok(target) => target,
        Err(why) => return fail(why),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => return fail(format!("cannot start the runtime: {err}")),
    };
    let outcome = runtime.block_on(async { tokio::time::timeout(TIMEOUT, target.get()).await });
    // Not a plain drop, which would wait for a name lookup still running past the timeout.
    runtime.shutdown_background();
    match outcome {
        Ok(Ok(status)) if status.is_success() => ExitCode::SUCCESS,
        Ok(Ok(status)) => fail(format!("GET {target}: answered {status}")),
        Ok(Err(why)) => fail(format!("GET {target}: {why}")),
        Err(_) => fail(format!("GET {target}: no answer within {TIMEOUT:?}")),
    }
}

/// The subcommand's arguments and help.
fn command() -> clap::Command {
    clap::Command::new(NAME)
        .bin_name("lameduck probe")
        .about(
            "GET a running lameduck's health endpoint: exit 0 on 2xx, 1 otherwise (for Docker \
             HEALTHCHECK and Kubernetes exec probes)",
        )
        .arg(clap::Arg::new("target").value_name("PATH|URL").help(
            "A path on lameduck's address (/ready), or a whole http:// URL [default: the \
             health path]",
        ))
        .after_help(
            "Address: 127.0.0.1 and LAMEDUCK_PORT (default 8000), or wherever LAMEDUCK_BIND, \
             the file in LAMEDUCK_CONFIG or ./cerebrium.toml put lameduck.\n\
             Timeout: 2s in all. No shell, curl or resolver needed.",
        )
}

/// Prints why the probe failed, in one line, and exits 1.
fn fail(why: String) -> ExitCode {
    eprintln!("lameduck probe: {why}");
    ExitCode::FAILURE
}

/// Where the probe goes.
#[derive(Debug)]
struct Target {
    /// The `Host` header: lameduck answers an HTTP/1.1 request without one with 400.
    authority: Authority,
    /// Where to connect, in order; empty: look the host name up.
    addrs: Vec<SocketAddr>,
    path: PathAndQuery,
}

impl Target {
    /// The URL given, or lameduck's own address with the PATH given or its health path.
    fn new(given: Option<&str>) -> Result<Target, String> {
        let path = match given {
            Some(url) if url.contains("://") => return Target::from_url(url),
            Some(path) if path.starts_with('/') => Some(path),
            Some(other) => {
                return Err(format!(
                    "error: invalid value '{other}': expected a path such as /ready or a URL \
                     such as http://127.0.0.1:8000/health"
                ))
            }
            None => None,
        };
        let config = configured()?;
        let path = path.unwrap_or(&config.health_path);
        let path = path
            .parse()
            .map_err(|_| format!("error: invalid path '{path}'"))?;
        Target::local(config.listen, path)
    }

    /// `http://HOST[:PORT][/PATH]`, as given.
    fn from_url(url: &str) -> Result<Target, String> {
        let invalid = |why: &str| format!("error: invalid URL '{url}': {why}");
        let uri: Uri = url
            .parse()
            .map_err(|_| invalid("expected http://HOST:PORT/PATH"))?;
        if uri.scheme() != Some(&Scheme::HTTP) {
            return Err(invalid("only plain http is supported"));
        }
        let authority = uri
            .authority()
            .filter(|authority| !authority.host().is_empty())
            .ok_or_else(|| invalid("expected http://HOST:PORT/PATH"))?;
        if authority.as_str().contains('@') {
            return Err(invalid("no user info"));
        }
        let port = authority.port_u16().unwrap_or(80);
        Ok(Target {
            addrs: config::addrs_without_lookup(authority.host(), port),
            authority: authority.clone(),
            path: uri
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/")),
        })
    }

    /// `path` on the address lameduck listens on.
    fn local(listen: SocketAddr, path: PathAndQuery) -> Result<Target, String> {
        let port = listen.port();
        if port == 0 {
            return Err(
                "error: lameduck's port is 0 (picked by the kernel): give the probe a \
                        URL such as http://127.0.0.1:PORT/health"
                    .to_string(),
            );
        }
        let addrs: Vec<SocketAddr> = match listen.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => vec![(Ipv4Addr::LOCALHOST, port).into()],
            // `::` usually takes IPv4 too; either loopback reaches it.
            IpAddr::V6(ip) if ip.is_unspecified() => vec![
                (Ipv6Addr::LOCALHOST, port).into(),
                (Ipv4Addr::LOCALHOST, port).into(),
            ],
            _ => vec![listen],
        };
        // Cannot fail: an IP address and a port always form an authority.
        let authority = addrs[0]
            .to_string()
            .parse()
            .expect("a socket address is an authority");
        Ok(Target {
            authority,
            addrs,
            path,
        })
    }

    /// GET the target and return the response's status.
    async fn get(&self) -> Result<StatusCode, String> {
        let stream = if self.addrs.is_empty() {
            let port = self.authority.port_u16().unwrap_or(80);
            TcpStream::connect((self.authority.host(), port)).await
        } else {
            TcpStream::connect(&self.addrs[..]).await
        };
        let stream = stream.map_err(|err| format!("cannot connect: {err}"))?;
        let (mut sender, conn) = http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
            .await
            .map_err(|err| err.to_string())?;
        // Driven until the response head is in; dropped with the runtime after that.
        tokio::spawn(conn);
        let req = Request::get(Uri::from(self.path.clone()))
            .header(header::HOST, self.authority.as_str())
            .header(header::USER_AGENT, "lameduck-probe")
            .body(Empty::new())
            .map_err(|err| err.to_string())?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|err| err.to_string())?;
        Ok(resp.status())
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "http://{}{}", self.authority, self.path)
    }
}

/// lameduck's configuration as it would read it without flags: its env vars and files.
fn configured() -> Result<Config, String> {
    Config::parse_from(["lameduck"]).map_err(|err| match err {
        ConfigError::Info(text) | ConfigError::Invalid(text) => first_line(&text),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_binds_are_reached_on_loopback() {
        let path = PathAndQuery::from_static("/health");
        let target = Target::local("0.0.0.0:8000".parse().unwrap(), path.clone()).unwrap();
        assert_eq!(target.to_string(), "http://127.0.0.1:8000/health");
        let target = Target::local("[::]:8000".parse().unwrap(), path.clone()).unwrap();
        assert_eq!(target.addrs.len(), 2);
        assert_eq!(target.authority.as_str(), "[::1]:8000");
        let target = Target::local("10.1.2.3:80".parse().unwrap(), path.clone()).unwrap();
        assert_eq!(target.to_string(), "http://10.1.2.3:80/health");
        assert!(Target::local("127.0.0.1:0".parse().unwrap(), path).is_err());
    }

    #[test]
    fn urls_keep_their_authority_and_skip_the_lookup_for_localhost() {
        let target = Target::new(Some("http://localhost:9000/ready?x=1")).unwrap();
        assert_eq!(target.authority.as_str(), "localhost:9000");
        assert_eq!(target.addrs.len(), 2);
        assert_eq!(target.to_string(), "http://localhost:9000/ready?x=1");
        let target = Target::new(Some("http://[::1]:81")).unwrap();
        assert_eq!(target.addrs, vec!["[::1]:81".parse().unwrap()]);
        assert_eq!(target.path.as_str(), "/");
        for bad in [
            "https://127.0.0.1/",
            "http://u@127.0.0.1/",
            "ready",
            "ftp://x",
        ] {
            assert!(Target::new(Some(bad)).is_err(), "{bad}");
        }
    }
}
