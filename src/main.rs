//! Parse, set up logging, run, and turn the outcome into the process's exit status.

use std::io::IsTerminal;
use std::process::ExitCode;

use lameduck::config::{Config, ConfigError};
use lameduck::lifecycle::{self, exit};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(ConfigError::Info(text)) => {
            print!("{text}");
            return ExitCode::SUCCESS;
        }
        Err(ConfigError::Invalid(line)) => {
            eprintln!("lameduck: {line}");
            return ExitCode::from(exit::USAGE);
        }
    };

    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .init();

    let runtime = match tokio::runtime::Builder::new_multi_thread()
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
        tracing::info!(address = %config.listen, "listening");
        lifecycle::run(config, listener).await
    });
    // Connections still open are dropped here; nothing of the child's is left by now.
    runtime.shutdown_background();
    ExitCode::from(status)
}
