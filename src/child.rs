//! The backend as lameduck's child: spawned in its own process group, sent forwarded signals,
//! stopped (SIGTERM, then SIGKILL), and reaped, along with every orphan that lands on lameduck.

use std::fmt;
use std::io;
use std::os::unix::process::CommandExt as _;
use std::process::Command;
use std::time::Duration;

use futures_util::StreamExt;
use nix::errno::Errno;
use nix::sys::signal::{kill, killpg, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use signal_hook::consts::signal::SIGCHLD;
use tracing::{debug, warn};

use crate::config;

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
    /// alone, and stopping can reach every descendant), with `PORT` set to the upstream's port.
    pub fn spawn(command: &config::Command, port: u16) -> Result<Child, SpawnError> {
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
        let child = Command::new(&command.program)
            .args(&command.args)
            .env("PORT", port.to_string())
            .process_group(0)
            .spawn()
            .map_err(spawn_error)?;
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
