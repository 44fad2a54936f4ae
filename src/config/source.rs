//! Where an option's value came from, and the one line that names it when the value is bad.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use clap::error::{ContextKind, ContextValue, ErrorKind};

use super::ConfigError;

/// Where an option's value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Source {
    Flag,
    /// The option's own `LAMEDUCK_*` variable.
    Env(String),
    /// The `--config` file.
    File(PathBuf),
    /// A cerebrium.toml, and Cerebrium's name for the key.
    Cerebrium(PathBuf, &'static str),
    /// `RUST_LOG`, for the log filter.
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

/// One option's effective value (as the text it was given as) and its source; `None` when unset.
#[derive(Debug, Clone)]
pub(super) struct Resolved {
    /// The option's id: its TOML key.
    pub(super) key: String,
    pub(super) value: Option<String>,
    pub(super) source: Source,
}

/// An option and where its value came from: to tell the operator how to change it, in the words
/// of the place they set it.
#[derive(Debug, Clone)]
pub struct Setting {
    pub(super) key: String,
    pub(super) source: Source,
}

impl Setting {
    /// How to give this duration option `value` (whole seconds, rounded up) where it is set now:
    /// `--grace-period 48s`, `LAMEDUCK_GRACE_PERIOD=48s`, `grace_period = "48s" in FILE`, or
    /// `response_grace_period = 48 in cerebrium.toml` (Cerebrium counts whole seconds).
    pub fn set_to(&self, value: Duration) -> String {
        let secs = value.as_secs() + u64::from(value.subsec_nanos() > 0);
        let key = &self.key;
        match &self.source {
            Source::Env(name) => format!("{name}={secs}s"),
            Source::File(path) => format!("{key} = \"{secs}s\" in {}", path.display()),
            Source::Cerebrium(path, theirs) => format!("{theirs} = {secs} in {}", path.display()),
            Source::Flag | Source::Default | Source::RustLog => {
                format!("--{} {secs}s", key.replace('_', "-"))
            }
        }
    }
}

/// One line naming the option, the bad value and where it came from.
pub(super) fn invalid(key: &str, value: &str, source: &Source, reason: &str) -> ConfigError {
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

/// clap's error in lameduck's words. A value that one of the table's parsers rejected gets the
/// line [`invalid`] writes, naming its source (`source_of` gets the option's id; clap's own line,
/// `for '--opt <VALUE>'`, cannot tell a flag from an env var or a file). Help and version are
/// [`ConfigError::Info`]; any other error keeps the first line of clap's.
pub(super) fn from_clap(
    err: clap::Error,
    cmd: &clap::Command,
    source_of: impl FnOnce(&str) -> Source,
) -> ConfigError {
    match err.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            return ConfigError::Info(err.render().to_string())
        }
        ErrorKind::ValueValidation => {
            if let Some((key, value, reason)) = rejected(&err, cmd) {
                return invalid(&key, &value, &source_of(&key), &reason);
            }
        }
        _ => {}
    }
    ConfigError::Invalid(first_line(&err.render().to_string()))
}

/// The option's id, the value and the parser's reason from a `ValueValidation` error.
fn rejected(err: &clap::Error, cmd: &clap::Command) -> Option<(String, String, String)> {
    let context = |kind| match err.get(kind) {
        Some(ContextValue::String(text)) => Some(text.as_str()),
        _ => None,
    };
    // Rendered as `--grace-period <DURATION>`.
    let arg = context(ContextKind::InvalidArg)?;
    let long = arg.split_whitespace().next()?.strip_prefix("--")?;
    let key = cmd
        .get_arguments()
        .find(|candidate| candidate.get_long() == Some(long))?
        .get_id()
        .to_string();
    let value = context(ContextKind::InvalidValue)?.to_string();
    let reason = std::error::Error::source(err)?.to_string();
    Some((key, value, reason))
}

/// The first non-blank line: lameduck's errors are one line.
pub(crate) fn first_line(rendered: &str) -> String {
    rendered
        .lines()
        .find(|line| !line.trim().is_empty())
        .unwrap_or("error: invalid arguments")
        .to_string()
}
