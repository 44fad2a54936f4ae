//! Parse, set up logging, run, and turn the outcome into the process's exit status.

#![forbid(unsafe_code)]

use std::ffi::OsString;
use std::io::IsTerminal;
use std::process::ExitCode;

use lameduck::config::{Config, ConfigError, LogConfig, LogFormat};
use lameduck::lifecycle::{self, exit, Budget};
use lameduck::{child, limits, probe_command, signals};
use tracing_subscriber::EnvFilter;

/// Writes `text` to stdout. A reader that has gone (`lameduck --help | head`) is no error:
/// `print!` would panic there.
fn print_out(text: &str) {
    use std::io::Write as _;
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
}

fn main() -> ExitCode {
    // lameduck's executable run again as the trampoline to its child (see `child`).
    let args: Vec<OsString> = std::env::args_os().collect();
    if args.get(1).is_some_and(|arg| arg == child::TRAMPOLINE) {
        return child::trampoline(&args[2..]);
    }
    // `lameduck probe`: a health check client, not lameduck (see `probe_command`).
    if args.get(1).is_some_and(|arg| arg == probe_command::NAME) {
        return probe_command::run(&args[2..]);
    }

    // The options, then whether the shutdown fits in the grace period with them.
    let checked = Config::from_env().and_then(|config| {
        let budget = Budget::fit(&config)?;
        Ok((config, budget))
    });
    let (config, budget) = match checked {
        Ok(checked) => checked,
        Err(ConfigError::Info(text)) => {
            print_out(&text);
            return ExitCode::SUCCESS;
        }
        Err(ConfigError::Invalid(line)) => {
            eprintln!("lameduck: {line}");
            return ExitCode::from(exit::USAGE);
        }
    };
    if config.print_config {
        let described = config.describe_with(&budget.effective());
        print_out(&format!("{described}# {}\n", budget.summary()));
        return ExitCode::SUCCESS;
    }
    init_logging(&config.log);
    let from_cerebrium = config.from_cerebrium();
    if !from_cerebrium.is_empty() {
        tracing::info!(values = %from_cerebrium.join(" "), "read from cerebrium.toml");
    }
    budget.log();
    let open_files = match limits::raise_open_files() {
        Ok(open_files) => {
            if open_files.was != open_files.now {
                tracing::debug!(
                    was = open_files.was,
                    now = open_files.now,
                    "raised the open-file limit to the hard limit"
                );
            }
            Some(open_files.now)
        }
        Err(err) => {
            tracing::warn!(error = %err, "cannot raise the open-file limit");
            None
        }
    };

    // This thread accepts connections and runs the lifecycle; the workers that serve the
    // connections run event loops of their own (see `server`).
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("lameduck: cannot start the runtime: {err}");
            return ExitCode::from(exit::FORCED);
        }
    };
    let status = runtime.block_on(async {
        let listener = match tokio::net::TcpListener::bind(config.listen).await {
            Ok(listener) => listener,
            Err(err) => {
                tracing::error!(address = %config.listen, error = %err, "cannot listen");
                return exit::FORCED;
            }
        };
        // With `--port 0` the kernel picks the port: log the one actually bound, which is how
        // tests (and scripts) find it.
        let address = listener.local_addr().unwrap_or(config.listen);
        tracing::info!(%address, open_files_limit = open_files, "listening");
        let signals = match signals::listen() {
            Ok(signals) => signals,
            Err(err) => {
                tracing::error!(error = %err, "cannot install signal handlers");
                return exit::FORCED;
            }
        };
        lifecycle::run(config, budget, listener, signals).await
    });
    // Connections still open are dropped here; nothing of the child's is left by now.
    runtime.shutdown_background();
    ExitCode::from(status)
}

/// tracing to stderr, as text or one JSON object per line. The access log (target `access`) is
/// on whenever `--access-log` is, whatever the level.
fn init_logging(log: &LogConfig) {
    let mut filter = EnvFilter::builder().parse_lossy(&log.filter);
    if log.access_log {
        // Cannot fail: a constant, valid directive.
        filter = filter.add_directive("access=info".parse().expect("valid directive"));
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    match log.format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}
