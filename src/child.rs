//! The backend as lameduck's child: spawned in its own process group with a parent-death signal,
//! sent forwarded signals, stopped (SIGTERM, then SIGKILL), and reaped, along with every orphan
//! that lands on lameduck.
//!
//! # The parent-death signal, without `unsafe`
//!
//! If lameduck itself is killed (SIGKILL, the OOM killer) outside a container, its child must not
//! live on as an orphan holding the port. The kernel can signal a process when its parent dies
//! (`PR_SET_PDEATHSIG`), but only the process itself can ask for it, between `fork` and `exec`,
//! which in Rust takes `unsafe` (`CommandExt::pre_exec`). So lameduck runs its own executable
//! (`/proc/self/exe`) as a small trampoline ([`trampoline`]): it asks for SIGKILL on its parent's
//! death, checks that its parent is still lameduck (else lameduck died before the request and the
//! trampoline gives up), gives back the open-file limit lameduck was started with (see
//! [`crate::limits`]), and `exec`s the command, keeping its pid, its process group and its
//! environment (`PORT` or `LAMEDUCK_UPSTREAM_SOCKET`). The signal survives `exec` (but not a
//! set-user-id or set-group-id program's, or one with file capabilities). Why an `exec` failed
//! comes back to lameduck through a close-on-exec pipe, as `std::process::Command` does it, so a
//! missing or non-executable command is still reported as such (127, 126).

use std::ffi::{CString, OsString};
use std::fmt;
use std::io::{self, Read as _, Write as _};
use std::os::fd::AsRawFd as _;
use std::os::unix::ffi::OsStringExt as _;
use std::os::unix::process::CommandExt as _;
use std::process::{Command, ExitCode};
use std::time::Duration;

use futures_util::StreamExt;
use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, FdFlag, OFlag};
use nix::sys::signal::{kill, killpg, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use signal_hook::consts::signal::SIGCHLD;
use tracing::{debug, warn};

use crate::config::{self, Upstream};
use crate::limits;

/// The first argument that makes lameduck's executable the [`trampoline`] instead of lameduck.
/// Not an option: lameduck's own command line takes no bare word before `--`.
pub const TRAMPOLINE: &str = "__lameduck_exec_child";

/// The executable the trampoline runs from: lameduck's own, even if its file has since been
/// replaced or deleted.
const SELF_EXE: &str = "/proc/self/exe";

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    Code(i32),
    Signal(i32),
}

impl ExitStatus {
    /// The shell convention: the exit code, or 128 + N when killed by signal N.
    pub fn code(self) -> u8 {
        match self {
            ExitStatus::Code(code) => (code & 0xff) as u8,
            ExitStatus::Signal(sig) => (128 + sig).clamp(0, 255) as u8,
        }
    }
}

impl fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            ExitStatus::Code(code) => write!(f, "exit status {code}"),
            ExitStatus::Signal(sig) => {
                write!(f, "killed by {}", crate::signals::name(sig))
            }
        }
    }
}

/// The command could not be started.
#[derive(Debug, thiserror::Error)]
#[error("cannot run {program}: {source}")]
pub struct SpawnError {
    program: String,
    source: io::Error,
}

impl SpawnError {
    /// 127 when the command does not exist, 126 when it exists but cannot be run (as shells do).
    pub fn exit_code(&self) -> u8 {
        match self.source.kind() {
            io::ErrorKind::NotFound => 127,
            _ => 126,
        }
    }
}

/// How stopping the child went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// It exited within its stop timeout.
    Exited(ExitStatus),
    /// It had to be SIGKILLed.
    Killed,
}

/// The running backend. Reaping is done here for every process that lameduck parents, so the
/// child's own status is caught by the same `waitpid(-1)` loop that clears orphans.
pub struct Child {
    pid: Pid,
    sigchld: signal_hook_tokio::Signals,
    status: Option<ExitStatus>,
}

impl fmt::Debug for Child {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Child")
            .field("pid", &self.pid)
            .field("status", &self.status)
            .finish()
    }
}

impl Child {
    /// Spawns `command` in a process group of its own (so a terminal's Ctrl-C reaches lameduck
    /// alone, and stopping can reach every descendant), told where to listen: `PORT` set to the
    /// upstream's port, or for a Unix socket `LAMEDUCK_UPSTREAM_SOCKET` set to its path (and no
    /// `PORT`, so a backend that honours both does not bind a port as well).
    pub fn spawn(command: &config::Command, upstream: &Upstream) -> Result<Child, SpawnError> {
        let spawn_error = |source| SpawnError {
            program: command.program.to_string_lossy().into_owned(),
            source,
        };
        // Listen for SIGCHLD before the child exists, so its exit can never be missed.
        let sigchld = signal_hook_tokio::Signals::new([SIGCHLD]).map_err(spawn_error)?;
        // Orphaned descendants must be reparented to lameduck (not to a PID 1 that may never
        // reap them) so they are reaped and can be stopped; as PID 1 this is already so.
        if let Err(err) = nix::sys::prctl::set_child_subreaper(true) {
            warn!(error = %err, "cannot become a child subreaper; orphans will go to PID 1");
        }
        let child = match spawn_through_trampoline(command, upstream) {
            Ok(spawned) => spawned.map_err(spawn_error)?,
            Err(err) => {
                // No /proc (lameduck's own executable cannot be run again): start the command
                // without the parent-death signal rather than not at all.
                warn!(error = %err, "cannot give the child a parent-death signal; it may outlive a killed lameduck");
                let mut plain = Command::new(&command.program);
                plain.args(&command.args).process_group(0);
                listen_where(&mut plain, upstream);
                plain.spawn().map_err(spawn_error)?
            }
        };
        let pid = Pid::from_raw(child.id() as i32);
        Ok(Child {
            pid,
            sigchld,
            status: None,
        })
    }

    pub fn pid(&self) -> u32 {
        self.pid.as_raw() as u32
    }

    /// Sends `signal` to the child alone, unchanged.
    pub fn forward(&self, signal: i32) {
        if self.status.is_some() {
            return;
        }
        match Signal::try_from(signal) {
            Ok(signal) => {
                if let Err(err) = kill(self.pid, signal) {
                    warn!(error = %err, ?signal, "cannot forward signal to the child");
                }
            }
            Err(err) => warn!(error = %err, signal, "unknown signal"),
        }
    }

    /// Waits for the child to exit and returns its status. Cancel-safe.
    pub async fn wait(&mut self) -> ExitStatus {
        loop {
            self.reap();
            if let Some(status) = self.status {
                return status;
            }
            if self.sigchld.next().await.is_none() {
                // The SIGCHLD stream never closes; should it, poll instead.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    /// SIGTERM to the child's process group, then up to `timeout` for the child to exit, then
    /// SIGKILL to the group. A killed child is reaped by [`Child::clean_up`], which is bounded:
    /// waiting here could outlast the grace period (a process in uninterruptible sleep dies only
    /// when the kernel lets it).
    pub async fn stop(&mut self, timeout: Duration) -> Stopped {
        if let Some(status) = self.status {
            return Stopped::Exited(status);
        }
        signal_group(self.pid, Signal::SIGTERM);
        if let Ok(status) = tokio::time::timeout(timeout, self.wait()).await {
            return Stopped::Exited(status);
        }
        warn!(timeout = ?timeout, "the child did not exit in time; sending SIGKILL");
        signal_group(self.pid, Signal::SIGKILL);
        Stopped::Killed
    }

    /// Leaves nothing of the child's running: SIGKILL to whatever remains of its process group
    /// and to every orphan reparented to lameduck (those that left the group included), then
    /// reaps them. Gives up after `limit`, so it fits in the shutdown budget.
    pub async fn clean_up(&mut self, limit: Duration) {
        const ROUND: Duration = Duration::from_millis(10);
        signal_group(self.pid, Signal::SIGKILL);
        let give_up = tokio::time::Instant::now() + limit;
        loop {
            self.reap();
            let orphans = children_of(std::process::id());
            if orphans.is_empty() {
                return;
            }
            if tokio::time::Instant::now() >= give_up {
                warn!(
                    left = orphans.len(),
                    "some descendants of the child could not be stopped"
                );
                return;
            }
            for pid in orphans {
                debug!(pid, "killing an orphan of the child");
                let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
            }
            tokio::time::sleep(ROUND).await;
        }
    }

    /// Collects every exited process lameduck parents, remembering the child's own status.
    fn reap(&mut self) {
        for (pid, status) in reap_all() {
            if pid == self.pid {
                self.status = Some(status);
            } else {
                debug!(pid = pid.as_raw(), %status, "reaped an orphan");
            }
        }
    }
}

/// Tells the child where lameduck expects it: `PORT`, or `LAMEDUCK_UPSTREAM_SOCKET` for a Unix
/// socket. Whichever does not apply is removed from the environment lameduck passes on.
fn listen_where(command: &mut Command, upstream: &Upstream) {
    match &upstream.socket {
        Some(path) => command.env(SOCKET_ENV, path).env_remove("PORT"),
        None => command
            .env("PORT", upstream.port.to_string())
            .env_remove(SOCKET_ENV),
    };
}

/// The child's environment variable naming the Unix socket it should listen on.
pub const SOCKET_ENV: &str = "LAMEDUCK_UPSTREAM_SOCKET";

/// Runs `command` through the [`trampoline`]. The outer error: the trampoline itself could not be
/// started; the inner one: the command could not be (its `exec` failed, and the trampoline has
/// been reaped).
///
/// The kernel sends the parent-death signal when the *thread* that spawned the child ends, not the
/// process: this runs on lameduck's main thread (the lifecycle's), which lives as long as lameduck.
fn spawn_through_trampoline(
    command: &config::Command,
    upstream: &Upstream,
) -> io::Result<io::Result<std::process::Child>> {
    // Close-on-exec in lameduck, but the trampoline must inherit the write end: cleared on it
    // alone, for this one spawn (lameduck starts no other process).
    let (report, report_to) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
    fcntl(report_to.as_raw_fd(), FcntlArg::F_SETFD(FdFlag::empty()))?;
    let open_files = limits::original_open_files().map_or("-".to_string(), |n| n.to_string());
    let mut trampoline = Command::new(SELF_EXE);
    trampoline
        .arg(TRAMPOLINE)
        .arg(std::process::id().to_string())
        .arg(report_to.as_raw_fd().to_string())
        .arg(open_files)
        .arg(&command.program)
        .args(&command.args)
        .process_group(0);
    listen_where(&mut trampoline, upstream);
    let spawned = trampoline.spawn();
    // lameduck's copy, closed so that the read below ends when the trampoline's does.
    drop(report_to);
    let mut child = spawned?;
    // Ends at once: at the trampoline's `exec` (the end closes, nothing was written) or its exit.
    // A failed read (none is expected from a pipe) counts as a started child: if it is not, its
    // exit status soon says so, whereas an error here would start the command a second time.
    let mut errno = Vec::new();
    let _ = std::fs::File::from(report).read_to_end(&mut errno);
    match <[u8; 4]>::try_from(errno.as_slice()) {
        Ok(bytes) => {
            let _ = child.wait();
            Ok(Err(io::Error::from_raw_os_error(i32::from_ne_bytes(bytes))))
        }
        Err(_) => Ok(Ok(child)),
    }
}

/// The trampoline between lameduck and its child (see the module's doc): `args` are lameduck's
/// pid, the report pipe's descriptor, the open-file limit to give back (`-`: none), then the
/// command. Returns only if the command could not be run: 127 if it was not found, 126 otherwise,
/// as shells do; why, lameduck learns through the pipe and logs.
pub fn trampoline(args: &[OsString]) -> ExitCode {
    let [parent, report_to, open_files, command @ ..] = args else {
        eprintln!("lameduck: {TRAMPOLINE} is lameduck's own, internal invocation");
        return ExitCode::from(2);
    };
    let number = |arg: &OsString| arg.to_str().and_then(|text| text.parse::<u64>().ok());
    let (Some(parent), Some(report_to), false) =
        (number(parent), number(report_to), command.is_empty())
    else {
        eprintln!("lameduck: {TRAMPOLINE} is lameduck's own, internal invocation");
        return ExitCode::from(2);
    };
    // SIGKILL, not SIGTERM: nobody is left to escalate, and the port must be freed. (Fails only
    // for an invalid signal.)
    let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
    // Asked too late: lameduck died before the request and the signal will never come.
    if u64::try_from(nix::unistd::getppid().as_raw()).ok() != Some(parent) {
        return ExitCode::from(1);
    }
    if let Some(soft) = number(open_files) {
        let _ = limits::restore_open_files(soft);
    }
    let report_to = report_to as i32;
    // The command must not inherit the pipe; a successful `exec` closes it, which tells lameduck.
    let _ = fcntl(report_to, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC));
    let words: Result<Vec<CString>, _> = command
        .iter()
        .map(|word| CString::new(word.clone().into_vec()))
        .collect();
    let errno = match words {
        Ok(words) => exec_from_path(&words),
        // A word holding a NUL byte cannot be passed to a program.
        Err(_) => Errno::EINVAL,
    };
    // The descriptor by its /proc name: borrowing a raw descriptor is `unsafe`, opening a
    // pipe's /proc entry is not (and reaches the same pipe).
    if let Ok(mut pipe) = std::fs::OpenOptions::new()
        .write(true)
        .open(format!("/proc/self/fd/{report_to}"))
    {
        let _ = pipe.write_all(&(errno as i32).to_ne_bytes());
    }
    ExitCode::from(if errno == Errno::ENOENT { 127 } else { 126 })
}

/// Runs `words[0]`, looked up in `PATH` unless it names a path, as `std::process::Command`
/// does: unlike `execvp`, a file the kernel cannot run (no `#!` line) is an error (ENOEXEC, so
/// 126), not a script handed to `/bin/sh`. Returns only the error.
fn exec_from_path(words: &[CString]) -> Errno {
    let program = words[0].as_bytes();
    let exec = |path: &CString| match nix::unistd::execv(path, words) {
        Err(errno) => errno,
        Ok(never) => match never {},
    };
    if program.contains(&b'/') {
        return exec(&words[0]);
    }
    let path = std::env::var_os("PATH").map_or_else(
        || b"/usr/local/bin:/usr/bin:/bin".to_vec(),
        std::os::unix::ffi::OsStringExt::into_vec,
    );
    // As execvp: a directory without the file, or not a directory, is passed over; a file
    // found but not executable is reported only if no later directory has a runnable one.
    let mut denied = false;
    for dir in path.split(|&byte| byte == b':') {
        let dir = if dir.is_empty() { &b"."[..] } else { dir };
        let Ok(candidate) = CString::new([dir, b"/", program].concat()) else {
            continue;
        };
        match exec(&candidate) {
            Errno::ENOENT | Errno::ENOTDIR => {}
            Errno::EACCES => denied = true,
            errno => return errno,
        }
    }
    if denied {
        Errno::EACCES
    } else {
        Errno::ENOENT
    }
}

/// Reaps orphans forever: what PID 1 must do when there is no child to supervise.
pub async fn reap_orphans() {
    let Ok(mut sigchld) = signal_hook_tokio::Signals::new([SIGCHLD]) else {
        warn!("cannot listen for SIGCHLD; orphans will not be reaped");
        return;
    };
    loop {
        for (pid, status) in reap_all() {
            debug!(pid = pid.as_raw(), %status, "reaped an orphan");
        }
        if sigchld.next().await.is_none() {
            return;
        }
    }
}

/// `waitpid(-1, WNOHANG)` until nothing more has exited.
fn reap_all() -> Vec<(Pid, ExitStatus)> {
    let mut reaped = Vec::new();
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) => reaped.push((pid, ExitStatus::Code(code))),
            Ok(WaitStatus::Signaled(pid, signal, _)) => {
                reaped.push((pid, ExitStatus::Signal(signal as i32)))
            }
            Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return reaped,
            Ok(_) => {}
            Err(Errno::EINTR) => {}
            Err(err) => {
                warn!(error = %err, "waitpid failed");
                return reaped;
            }
        }
    }
}

fn signal_group(pgid: Pid, signal: Signal) {
    match killpg(pgid, signal) {
        Ok(()) | Err(Errno::ESRCH) => {}
        Err(err) => warn!(error = %err, ?signal, "cannot signal the child's process group"),
    }
}

/// The pids whose parent is `parent`, read from /proc.
fn children_of(parent: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| parent_of(pid) == Some(parent))
        .collect()
}

/// The parent pid from /proc/PID/stat: the field after the state, which follows the
/// parenthesised command name (itself free to hold spaces and parentheses).
fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_the_shell_convention() {
        assert_eq!(ExitStatus::Code(3).code(), 3);
        assert_eq!(ExitStatus::Signal(15).code(), 143);
        assert_eq!(ExitStatus::Signal(9).code(), 137);
    }

    #[test]
    fn parent_of_reads_proc() {
        assert_eq!(
            parent_of(std::process::id()),
            Some(std::os::unix::process::parent_id())
        );
    }
}
