//! Turns OS signals into lifecycle events.

use std::io;

use futures_util::StreamExt;
use signal_hook::consts::signal::{SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGUSR1, SIGUSR2, SIGWINCH};
use signal_hook::low_level::signal_name;

/// What a signal asks lameduck to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGTERM or SIGINT: drain (the first time), stop at once (the second time).
    Terminate(i32),
    /// SIGQUIT: skip the drain and stop the child.
    Quit,
    /// SIGHUP, SIGUSR1, SIGUSR2, SIGWINCH: pass to the child unchanged.
    Forward(i32),
}

/// The stream of signals lameduck handles. Creating it replaces their default dispositions, so
/// none of them kills lameduck.
pub struct Signals(signal_hook_tokio::Signals);

impl std::fmt::Debug for Signals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Signals")
    }
}

impl Signals {
    pub fn new() -> io::Result<Signals> {
        signal_hook_tokio::Signals::new([
            SIGTERM, SIGINT, SIGQUIT, SIGHUP, SIGUSR1, SIGUSR2, SIGWINCH,
        ])
        .map(Signals)
    }

    /// The next signal. Cancel-safe: a signal is never lost by dropping this future.
    pub async fn next(&mut self) -> Signal {
        match self.0.next().await {
            Some(sig @ (SIGTERM | SIGINT)) => Signal::Terminate(sig),
            Some(SIGQUIT) => Signal::Quit,
            Some(sig) => Signal::Forward(sig),
            // The stream only ends when closed, which nothing here does.
            None => std::future::pending().await,
        }
    }
}

/// A signal's name for logs, such as `SIGHUP`.
pub fn name(signal: i32) -> &'static str {
    signal_name(signal).unwrap_or("signal")
}
