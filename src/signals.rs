//! Turns OS signals into lifecycle events.
//!
//! [`listen`] is the production source; the lifecycle takes any stream of [`Signal`]s, so tests
//! can inject them.

use std::io;

use futures_util::{Stream, StreamExt};
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

impl Signal {
    fn from_raw(signal: i32) -> Signal {
        match signal {
            SIGTERM | SIGINT => Signal::Terminate(signal),
            SIGQUIT => Signal::Quit,
            other => Signal::Forward(other),
        }
    }
}

/// The signals lameduck handles, as they arrive. Installing the handlers replaces the signals'
/// default dispositions, so none of them kills lameduck. Must be called inside the runtime.
/// The stream never ends; dropping a `next()` future never loses a signal.
pub fn listen() -> io::Result<impl Stream<Item = Signal> + Unpin> {
    let signals = signal_hook_tokio::Signals::new([
        SIGTERM, SIGINT, SIGQUIT, SIGHUP, SIGUSR1, SIGUSR2, SIGWINCH,
    ])?;
    Ok(signals.map(Signal::from_raw))
}

/// A signal's name for logs, such as `SIGHUP`.
pub fn name(signal: i32) -> &'static str {
    signal_name(signal).unwrap_or("signal")
}
