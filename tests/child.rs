//! The child: its exit status, forwarded signals, spawn failures, and nothing left behind.

mod support;

use std::os::unix::fs::PermissionsExt as _;

use http::StatusCode;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use support::*;

async fn backend_pid(ld: &Lameduck) -> u32 {
    get(ld.port, "/pid").await.unwrap().body.parse().unwrap()
}

#[tokio::test]
async fn a_child_that_exits_on_its_own_gives_lameduck_its_status() {
    let mut ld = Builder::with_backend().spawn().await;
    ld.wait_ready().await;
    let reply = get(ld.port, "/exit?code=3").await.unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    ld.expect_exit(3).await;
}

#[tokio::test]
async fn a_child_killed_by_a_signal_gives_128_plus_n() {
    let mut ld = Builder::with_backend().spawn().await;
    ld.wait_ready().await;
    let pid = backend_pid(&ld).await;
    kill(Pid::from_raw(pid as i32), Signal::SIGKILL).unwrap();
    ld.expect_exit(137).await;
}

#[tokio::test]
async fn hup_usr1_usr2_and_winch_are_forwarded_to_the_child() {
    let dir = TempDir::new("signals");
    let log = dir.join("signals.log");
    let mut ld = Builder::with_backend()
        .env("BACKEND_SIGNAL_LOG", log.to_str().unwrap())
        .spawn()
        .await;
    ld.wait_ready().await;
    let expected = ["SIGHUP", "SIGUSR1", "SIGUSR2", "SIGWINCH"];
    for signal in [
        Signal::SIGHUP,
        Signal::SIGUSR1,
        Signal::SIGUSR2,
        Signal::SIGWINCH,
    ] {
        ld.signal(signal);
    }
    wait_for(
        &format!("the child to log {expected:?} in {log:?}"),
        || async {
            let seen = std::fs::read_to_string(&log).unwrap_or_default();
            expected
                .iter()
                .all(|name| seen.lines().any(|line| line == *name))
        },
    )
    .await;
    // None of them stopped lameduck or the child.
    assert_eq!(get(ld.port, "/ready").await.unwrap().status, StatusCode::OK);
    ld.signal(Signal::SIGTERM);
    ld.expect_exit(0).await;
}

#[tokio::test]
async fn a_missing_command_exits_127_and_a_non_executable_one_126() {
    let mut ld = Builder::with_command(&["/nonexistent/lameduck-backend"])
        .spawn()
        .await;
    ld.expect_exit(127).await;
    // lameduck's own line, not only a status the command could have exited with itself.
    assert!(
        ld.log().contains("cannot start the backend")
            && ld.log().contains("No such file or directory"),
        "{}",
        ld.log()
    );

    let dir = TempDir::new("noexec");
    let path = dir.join("backend.sh");
    std::fs::write(&path, "#!/bin/sh\nexit 0\n").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut ld = Builder::with_command(&[path.to_str().unwrap()])
        .spawn()
        .await;
    ld.expect_exit(126).await;
    assert!(
        ld.log().contains("cannot start the backend") && ld.log().contains("Permission denied"),
        "{}",
        ld.log()
    );

    // Executable, but no program the kernel can run (no `#!` line): not handed to /bin/sh.
    let path = dir.join("not-a-program");
    std::fs::write(&path, "this is not a program\n").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut ld = Builder::with_command(&[path.to_str().unwrap()])
        .spawn()
        .await;
    ld.expect_exit(126).await;
    assert!(
        ld.log().contains("cannot start the backend") && ld.log().contains("Exec format error"),
        "{}",
        ld.log()
    );
}

/// Kills a process when dropped, so that a failing test leaves none behind.
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if alive(self.0) {
            let _ = kill(Pid::from_raw(self.0 as i32), Signal::SIGKILL);
        }
    }
}

/// lameduck killed outright (SIGKILL, the OOM killer) cannot stop its child: the kernel does, with
/// the parent-death signal, so no orphan keeps serving on the port.
#[tokio::test]
async fn the_child_dies_with_a_sigkilled_lameduck() {
    let mut ld = Builder::with_backend()
        .env("BACKEND_ON_TERM", "ignore")
        .spawn()
        .await;
    ld.wait_ready().await;
    let backend = backend_pid(&ld).await;
    let _guard = KillOnDrop(backend);
    // Still the leader of a process group of its own, with `PORT`, after the trampoline.
    assert_eq!(process_group(backend), backend);
    assert_ne!(process_group(backend), ld.pid().as_raw() as u32);
    let environ = std::fs::read(format!("/proc/{backend}/environ")).unwrap();
    let port = format!("PORT={}", ld.upstream_port);
    assert!(environ
        .split(|&byte| byte == 0)
        .any(|var| var == port.as_bytes()));

    ld.signal(Signal::SIGKILL);
    assert_eq!(ld.wait_exit(PATIENCE).await, 137);
    wait_for("the child to die with lameduck", || async {
        !alive(backend)
    })
    .await;
}

/// The trampoline asks for the parent-death signal, then checks its parent is still lameduck: if
/// lameduck died first, the signal would never come, so it gives up instead of running the command.
#[test]
fn the_trampoline_does_not_run_the_command_once_lameduck_is_gone() {
    let dir = TempDir::new("trampoline");
    let marker = dir.join("ran");
    let script = format!("echo ran > {}", marker.display());
    // Parent pid 1: not the test's pid, which is the trampoline's actual parent here.
    let out = run_to_exit(
        &[
            lameduck::child::TRAMPOLINE,
            "1",
            "999",
            "-",
            "sh",
            "-c",
            &script,
        ],
        &[],
        None,
    );
    assert_eq!(out.code, 1, "{out:?}");
    assert!(!marker.exists(), "the command ran");

    // With the right parent it runs the command in its place.
    let out = run_to_exit(
        &[
            lameduck::child::TRAMPOLINE,
            &std::process::id().to_string(),
            "999",
            "-",
            "sh",
            "-c",
            &script,
        ],
        &[],
        None,
    );
    assert_eq!(out.code, 0, "{out:?}");
    assert!(marker.exists(), "the command did not run");
}

/// lameduck raises its soft open-file limit to the hard limit (it holds two descriptors per
/// client), and gives its child back the limit it was started with, as Go does.
#[tokio::test]
async fn lameduck_raises_its_open_file_limit_and_the_child_gets_the_original() {
    let (_, hard) = open_files_limits(std::process::id());
    assert!(
        hard > 256,
        "the test needs a hard open-file limit above 256, not {hard}"
    );
    let ld = Builder::with_backend().soft_open_files(256).spawn().await;
    ld.wait_ready().await;
    let lameduck = ld.pid().as_raw() as u32;
    assert_eq!(open_files_limits(lameduck), (hard, hard));
    assert!(
        ld.log().contains(&format!("open_files_limit={hard}")),
        "{}",
        ld.log()
    );
    assert_eq!(open_files_limits(backend_pid(&ld).await), (256, hard));
}

#[tokio::test]
async fn no_descendant_of_the_child_survives_lameduck() {
    let mut ld = Builder::with_backend().spawn().await;
    ld.wait_ready().await;
    let backend = backend_pid(&ld).await;
    let spawned = get(ld.port, "/spawn").await.unwrap().body;
    let grandchildren: Vec<u32> = spawned.split(' ').map(|pid| pid.parse().unwrap()).collect();
    assert_eq!(grandchildren.len(), 2, "{spawned}");
    assert!(grandchildren.iter().all(|&pid| alive(pid)));

    ld.signal(Signal::SIGTERM);
    ld.expect_exit(0).await;
    for pid in grandchildren.into_iter().chain([backend]) {
        assert!(!alive(pid), "process {pid} outlived lameduck");
    }
}

#[tokio::test]
async fn a_child_that_ignores_sigterm_is_killed_and_lameduck_exits_1() {
    let mut ld = Builder::with_backend()
        .env("BACKEND_ON_TERM", "ignore")
        .args(&["--child-stop-timeout", "500ms"])
        .spawn()
        .await;
    ld.wait_ready().await;
    let backend = backend_pid(&ld).await;
    ld.signal(Signal::SIGTERM);
    ld.expect_exit(1).await;
    assert!(!alive(backend));
    assert!(ld.log().contains("SIGKILL"), "{}", ld.log());
}

#[tokio::test]
async fn the_child_gets_port_set_to_the_upstream_port() {
    // The test backend binds $PORT; lameduck only becomes ready if that is the upstream's port.
    let ld = Builder::with_command(&["sh", "-c", "exec \"$0\"", backend_path().to_str().unwrap()])
        .spawn()
        .await;
    ld.wait_ready().await;
    assert_eq!(get(ld.port, "/hello").await.unwrap().body, "hello");
}
