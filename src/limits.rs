//! The open-file limit (`RLIMIT_NOFILE`): raised to the hard limit for lameduck at start, and the
//! limit lameduck was given handed back to its child.
//!
//! Every client connection takes a file descriptor and its backend connection another, so the
//! soft limit many systems start processes with (1024) would cap lameduck at a few hundred
//! clients; the hard limit is what the operator allows. nginx (`worker_rlimit_nofile`) and Go's
//! runtime raise it the same way. Go also gives child processes back the original soft limit,
//! since programs built on `select()` break with descriptors past 1024: lameduck does the same
//! (see [`crate::child`]), so the backend runs exactly as it would without lameduck.

use std::sync::OnceLock;

use nix::sys::resource::{getrlimit, setrlimit, Resource};

/// The soft limit lameduck was started with, once [`raise_open_files`] has raised it.
static ORIGINAL: OnceLock<u64> = OnceLock::new();

/// The soft open-file limit before and after [`raise_open_files`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenFiles {
    pub was: u64,
    pub now: u64,
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit, once, at start.
pub fn raise_open_files() -> nix::Result<OpenFiles> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft >= hard {
        return Ok(OpenFiles {
            was: soft,
            now: soft,
        });
    }
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    let _ = ORIGINAL.set(soft);
    Ok(OpenFiles {
        was: soft,
        now: hard,
    })
}

/// The soft limit to give the child back: `Some` only if lameduck raised its own.
pub fn original_open_files() -> Option<u64> {
    ORIGINAL.get().copied()
}

/// Sets the soft `RLIMIT_NOFILE` to `soft`, keeping the hard limit: what the child is given
/// back before its program starts.
pub fn restore_open_files(soft: u64) -> nix::Result<()> {
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    setrlimit(Resource::RLIMIT_NOFILE, soft.min(hard), hard)
}
