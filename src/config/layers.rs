//! The layers below flags and env vars: a `--config` file, a cerebrium.toml, and `RUST_LOG`.
//!
//! clap reads flags and env vars and knows the defaults. These layers fill in the options clap
//! left at their default, highest first: `--config` file > cerebrium.toml > `RUST_LOG` (log
//! filter only) > default. They only find text: [`Layers::apply`] hands it to clap, so the option
//! table's parsers check it exactly as they check a flag.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use clap::{Arg, ArgMatches, Command};

use super::source::{self, Resolved, Source};
use super::{options, ConfigError};

/// What lameduck takes from a cerebrium.toml: (section, Cerebrium's key, lameduck's option).
/// Values are checked by the option's own parser; defaults stay the option table's.
pub(super) const CEREBRIUM_KEYS: [(&str, &str, &str); 5] = [
    ("runtime.custom", "port", "port"),
    ("runtime.custom", "readycheck_endpoint", "ready_path"),
    ("runtime.custom", "healthcheck_endpoint", "health_path"),
    ("scaling", "response_grace_period", "grace_period"),
    ("scaling", "replica_concurrency", "max_concurrency"),
];

/// The option that `RUST_LOG` sets when no flag, env var or file does.
const RUST_LOG_OPTION: &str = "log_level";

/// The values found below flags and env vars.
pub(super) struct Layers {
    /// The `--config` file and its table, keys checked.
    file: Option<(PathBuf, toml::Table)>,
    cerebrium: Option<Cerebrium>,
    /// `RUST_LOG`, if set and not empty.
    rust_log: Option<String>,
}

impl Layers {
    /// Reads the `--config` file, the cerebrium.toml (`./cerebrium.toml` when none is named and
    /// one is there) and `RUST_LOG`. A file that cannot be read or parsed, or a `--config` key
    /// that is not an option, is an error here, before any value is looked at.
    pub(super) fn read(
        cmd: &Command,
        config_file: Option<&Path>,
        cerebrium_toml: Option<&Path>,
    ) -> Result<Layers, ConfigError> {
        let cerebrium = match cerebrium_toml {
            Some(path) => Some(path.to_path_buf()),
            None => Some(PathBuf::from("cerebrium.toml")).filter(|path| path.is_file()),
        };
        Ok(Layers {
            file: config_file
                .map(|path| read_config_file(cmd, path))
                .transpose()?,
            cerebrium: cerebrium.map(|path| read_cerebrium(&path)).transpose()?,
            rust_log: std::env::var("RUST_LOG").ok().filter(|v| !v.is_empty()),
        })
    }

    /// Puts these layers under clap's `matches` (from `argv`): returns the matches with the
    /// layers' values in, and every option's value and source in table order.
    ///
    /// The layers' values reach clap as `--option=value` arguments placed before the user's
    /// own, and only for options that neither a flag nor an env var set (clap reads an env var
    /// only for an option absent from the command line, so one placed there would hide it).
    /// clap then parses them with the table's parsers, in table order, like any flag.
    pub(super) fn apply(
        &self,
        cmd: &Command,
        argv: &[OsString],
        matches: ArgMatches,
    ) -> Result<(ArgMatches, Vec<Resolved>), ConfigError> {
        let mut resolved = Vec::new();
        let mut lowered: Vec<OsString> = Vec::new();
        // A value that is no scalar at all: reported once the options before it are checked, so
        // that of several bad values the first in the table is the one reported.
        let mut not_scalar = None;
        for arg in options(cmd) {
            let key = arg.get_id().as_str();
            let clap_text = || {
                let mut raw = matches.get_raw(key)?;
                raw.next().map(|text| text.to_string_lossy().into_owned())
            };
            let (value, source) = match matches.value_source(key) {
                Some(ValueSource::CommandLine) => (clap_text(), Source::Flag),
                Some(ValueSource::EnvVariable) => (clap_text(), Source::Env(env_name(arg))),
                _ => match self.lookup(key) {
                    Ok(Some((text, source))) => {
                        lowered.push(format!("--{}={text}", long(arg)).into());
                        (Some(text), source)
                    }
                    Ok(None) => (clap_text(), Source::Default),
                    Err(err) => {
                        not_scalar = Some(err);
                        break;
                    }
                },
            };
            resolved.push(Resolved {
                key: key.to_string(),
                value,
                source,
            });
        }
        let matches = if lowered.is_empty() {
            matches
        } else {
            reparse(cmd, argv, lowered, &resolved)?
        };
        match not_scalar {
            Some(err) => Err(err),
            None => Ok((matches, resolved)),
        }
    }

    /// The option's text and source from the highest layer that has it.
    fn lookup(&self, key: &str) -> Result<Option<(String, Source)>, ConfigError> {
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
        if key == RUST_LOG_OPTION {
            if let Some(filter) = &self.rust_log {
                return Ok(Some((filter.clone(), Source::RustLog)));
            }
        }
        Ok(None)
    }
}

/// clap's matches for `argv` with the `lowered` arguments before the user's own.
fn reparse(
    cmd: &Command,
    argv: &[OsString],
    lowered: Vec<OsString>,
    resolved: &[Resolved],
) -> Result<ArgMatches, ConfigError> {
    let program = argv
        .first()
        .cloned()
        .unwrap_or_else(|| cmd.get_name().into());
    let rest = argv.get(1..).unwrap_or_default();
    let argv = std::iter::once(program)
        .chain(lowered)
        .chain(rest.iter().cloned());
    cmd.clone().try_get_matches_from(argv).map_err(|err| {
        // Flags and env vars passed this parse once already: a rejected value is a layer's.
        source::from_clap(err, cmd, |key| {
            resolved
                .iter()
                .find(|r| r.key == key)
                .map_or(Source::Default, |r| r.source.clone())
        })
    })
}

/// The env var clap reads for an option.
pub(super) fn env_name(arg: &Arg) -> String {
    arg.get_env()
        .map(|env| env.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The option's long name; every option in the table has one.
fn long(arg: &Arg) -> &str {
    arg.get_long().unwrap_or(arg.get_id().as_str())
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

/// A `--config` file: a TOML table whose keys are options.
fn read_config_file(cmd: &Command, path: &Path) -> Result<(PathBuf, toml::Table), ConfigError> {
    let table = read_toml(path, "config file")?;
    let known: Vec<&str> = options(cmd).map(|arg| arg.get_id().as_str()).collect();
    if let Some(key) = table.keys().find(|key| !known.contains(&key.as_str())) {
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
