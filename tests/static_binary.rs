//! The static binary (README, "Static binary"): built with the documented command, it runs from a
//! root directory holding nothing but itself (no libc, no `/etc`, no `/proc`), as in a scratch
//! image: it proxies, spawns and stops a child, answers `lameduck probe`, and exits 0 on SIGTERM.
//!
//! The build is the README's command, into this test run's target directory: minutes the first
//! time (a release build with LTO), a no-op while nothing changed. The tests are skipped, saying
//! why, on a machine that cannot build a static glibc binary (no `libc.a`) or cannot `chroot`
//! (neither root nor `unshare --user` available).

mod support;

use std::io::{Read as _, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use http::StatusCode;
use http_body_util::BodyExt;
use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use support::*;

const TARGET: &str = "x86_64-unknown-linux-gnu";

/// What the tests run: the static binary and how to enter an empty root.
struct Static {
    binary: PathBuf,
    /// The command that runs a program inside a root directory: `chroot`, run as root or in a user
    /// namespace of its own (`unshare --user --map-root-user chroot`).
    chroot: Vec<PathBuf>,
}

/// The static binary, built once for all the tests here; `None` (the reason printed) when this
/// machine cannot build or run it. A failing build fails the tests.
fn prepared() -> Option<&'static Static> {
    static PREPARED: OnceLock<Option<Static>> = OnceLock::new();
    PREPARED
        .get_or_init(|| {
            prepare()
                .map_err(|why| {
                    // Straight to stderr, once: `eprintln!` would be captured with a passing
                    // test's output, and a skip must be seen.
                    let line = format!("tests/static_binary.rs: SKIPPED: {why}\n");
                    let _ = std::io::stderr().write_all(line.as_bytes());
                })
                .ok()
        })
        .as_ref()
}

fn prepare() -> Result<Static, String> {
    if !cfg!(all(
        target_arch = "x86_64",
        target_os = "linux",
        target_env = "gnu"
    )) {
        return Err(format!("the documented static build is for {TARGET} hosts"));
    }
    if !has_static_libc() {
        return Err("no static C library (libc.a): install libc6-dev or glibc-static".into());
    }
    let chroot = find_chroot().ok_or(
        "cannot chroot: not root, and `unshare --user --map-root-user chroot` does not work here",
    )?;
    Ok(Static {
        binary: build(),
        chroot,
    })
}

/// Whether the C compiler finds a `libc.a` (it prints the bare name when it does not).
fn has_static_libc() -> bool {
    let Ok(out) = Command::new("cc").arg("-print-file-name=libc.a").output() else {
        return false;
    };
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    out.status.success() && path.is_absolute() && path.exists()
}

fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

fn find_chroot() -> Option<Vec<PathBuf>> {
    let chroot = find_program("chroot")?;
    let works = |prefix: &[PathBuf]| {
        Command::new(&prefix[0])
            .args(&prefix[1..])
            .args(["/", "true"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success())
    };
    let as_root = vec![chroot.clone()];
    if works(&as_root) {
        return Some(as_root);
    }
    let unshare = find_program("unshare")?;
    let in_namespace = vec![unshare, "--user".into(), "--map-root-user".into(), chroot];
    works(&in_namespace).then_some(in_namespace)
}

/// Runs the README's command: `RUSTFLAGS='-C target-feature=+crt-static' cargo build --release
/// --target x86_64-unknown-linux-gnu --bin lameduck`, into `static-test` under this run's target
/// directory, with the release profile's link-time optimisation off: the same static binary,
/// built in half the time (the suite must stay short on a 2-core machine), and a user's own
/// optimised build in `target/` left alone.
fn build() -> PathBuf {
    // CARGO_BIN_EXE_lameduck is TARGET_DIR/PROFILE/lameduck, or TARGET_DIR/TRIPLE/PROFILE/lameduck
    // when the tests themselves were built with --target.
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_lameduck"));
    let mut target_dir = exe.parent().and_then(Path::parent).unwrap().to_path_buf();
    if target_dir.ends_with(TARGET) {
        target_dir.pop();
    }
    let target_dir = target_dir.join("static-test");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    eprintln!("building the static binary (minutes the first time)");
    let start = Instant::now();
    let out = Command::new(cargo)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args([
            "build",
            "--release",
            "--target",
            TARGET,
            "--bin",
            "lameduck",
        ])
        .arg("--target-dir")
        .arg(&target_dir)
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .env("CARGO_PROFILE_RELEASE_LTO", "off")
        .env("CARGO_PROFILE_RELEASE_CODEGEN_UNITS", "16")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .stdin(Stdio::null())
        .output()
        .expect("run cargo");
    assert!(
        out.status.success(),
        "the static build failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("static build: {:?}", start.elapsed());
    let binary = target_dir.join(TARGET).join("release").join("lameduck");
    assert!(binary.is_file(), "{} missing", binary.display());
    binary
}

/// A directory holding only the static binary, as `/lameduck`; removed when dropped.
struct EmptyRoot {
    dir: PathBuf,
}

impl EmptyRoot {
    /// The binary goes in as a hard link (the root is in the target directory, like the binary):
    /// a copy would be open for writing while another test forks, and a child forked in that
    /// moment holds it open until it execs, so that running the copy fails with "Text file
    /// busy".
    fn new(prepared: &Static) -> EmptyRoot {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
            "empty-root-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the root");
        let root = EmptyRoot { dir };
        std::fs::hard_link(&prepared.binary, root.dir.join("lameduck"))
            .expect("link the binary into the root");
        root
    }

    /// `/lameduck ARGS...` inside the root, with an empty environment but for `envs`.
    fn command(&self, prepared: &Static, args: &[&str], envs: &[(&str, &str)]) -> Command {
        let mut cmd = Command::new(&prepared.chroot[0]);
        cmd.args(&prepared.chroot[1..])
            .arg(&self.dir)
            .arg("/lameduck")
            .args(args)
            .env_clear()
            .envs(envs.iter().copied())
            .stdin(Stdio::null());
        cmd
    }

    /// Runs `/lameduck ARGS...` inside the root to its exit: its status and stderr.
    fn run(&self, prepared: &Static, args: &[&str], envs: &[(&str, &str)]) -> (i32, String) {
        let mut child = self
            .command(prepared, args, envs)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run the static lameduck");
        let start = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if start.elapsed() > PATIENCE {
                let _ = child.kill();
                let _ = child.wait();
                panic!("lameduck {args:?} did not exit");
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let mut stderr = String::new();
        let _ = child.stderr.take().unwrap().read_to_string(&mut stderr);
        (status.code().unwrap_or(-1), stderr)
    }

    /// Starts `/lameduck ARGS...` inside the root, logging to a file outside it.
    fn spawn(&self, prepared: &Static, args: &[&str]) -> Jailed {
        let logs = TempDir::new("static-log");
        let log = logs.join("stderr.log");
        let child = self
            .command(prepared, args, &[("LAMEDUCK_LOG", "info")])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start the static lameduck");
        Jailed {
            child: Some(child),
            log,
            _logs: logs,
        }
    }
}

impl Drop for EmptyRoot {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A lameduck running inside an empty root. When dropped (a failed test) it is killed, with its
/// child's process group: without `/proc` its child has no parent-death signal.
struct Jailed {
    child: Option<Child>,
    log: PathBuf,
    _logs: TempDir,
}

impl Jailed {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// The address of lameduck's own `listening` line (its child, another lameduck, logs one
    /// too, on `not`).
    async fn wait_listening(&mut self, not: Option<u16>) -> u16 {
        let start = Instant::now();
        loop {
            let found = self
                .log()
                .lines()
                .filter_map(listening_address)
                .map(|address: SocketAddr| address.port())
                .find(|&port| Some(port) != not);
            if let Some(port) = found {
                return port;
            }
            let exited = self.child.as_mut().unwrap().try_wait().unwrap();
            assert!(
                exited.is_none() && start.elapsed() < PATIENCE,
                "the static lameduck never listened ({exited:?}); log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn wait_ready(&mut self, port: u16) {
        let start = Instant::now();
        while !matches!(get(port, "/ready").await, Ok(reply) if reply.status == StatusCode::OK) {
            let exited = self.child.as_mut().unwrap().try_wait().unwrap();
            assert!(
                exited.is_none() && start.elapsed() < PATIENCE,
                "the static lameduck never became ready ({exited:?}); log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGTERM, then its exit status (at most 15 s).
    async fn terminate(&mut self) -> i32 {
        let mut child = self.child.take().unwrap();
        kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status.code().unwrap_or(-1);
            }
            if start.elapsed() > Duration::from_secs(15) {
                let _ = child.kill();
                let _ = child.wait();
                panic!("no exit 15 s after SIGTERM; log:\n{}", self.log());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for Jailed {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let children = children_of(child.id());
        let _ = child.kill();
        let _ = child.wait();
        for pid in children {
            let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
    }
}

/// Fronting a backend outside the root: `--version`, `/ready`, a proxied request, `lameduck
/// probe` run inside the root too, and a clean exit on SIGTERM.
#[tokio::test]
async fn runs_from_an_empty_root() {
    let Some(prepared) = prepared() else { return };
    let backend = Backend::spawn(&[]);
    let root = EmptyRoot::new(prepared);

    let (code, stderr) = root.run(prepared, &["--version"], &[]);
    assert_eq!(code, 0, "{stderr}");

    let upstream = format!("http://127.0.0.1:{}", backend.port);
    let mut ld = root.spawn(
        prepared,
        &[
            "--port",
            "0",
            "--bind",
            "127.0.0.1",
            "--upstream",
            &upstream,
        ],
    );
    let port = ld.wait_listening(None).await;
    ld.wait_ready(port).await;
    let reply = get(port, "/hello").await.expect("GET /hello");
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (StatusCode::OK, "hello")
    );

    // The probe, from inside the root too: no shell, curl or resolver there.
    let port_text = port.to_string();
    let env = [("LAMEDUCK_PORT", port_text.as_str())];
    let (code, stderr) = root.run(prepared, &["probe"], &env);
    assert_eq!(code, 0, "{stderr}");
    let url = format!("http://localhost:{port}/ready");
    let (code, stderr) = root.run(prepared, &["probe", &url], &[]);
    assert_eq!(code, 0, "{stderr}");
    let (code, stderr) = root.run(prepared, &["probe", "/status?code=503"], &env);
    assert_eq!(code, 1);
    assert!(stderr.contains("answered 503"), "{stderr}");

    assert_eq!(ld.terminate().await, 0, "log:\n{}", ld.log());
    let log = ld.log();
    assert!(!log.contains("ERROR") && !log.contains("WARN"), "{log}");
}

/// Spawning and stopping a child inside the root, with the upstream named `localhost`: the
/// child is the static lameduck again, fronting the backend outside. HTTP/1.1 requests reach it
/// over lameduck's own links, HTTP/2 ones through its pooled client: both find `localhost` with
/// no resolver.
#[tokio::test]
async fn spawns_its_child_from_an_empty_root() {
    let Some(prepared) = prepared() else { return };
    let backend = Backend::spawn(&[]);
    let root = EmptyRoot::new(prepared);

    let inner_port = backend_port();
    let upstream = format!("http://localhost:{inner_port}");
    let inner_port_text = inner_port.to_string();
    let inner_upstream = format!("http://127.0.0.1:{}", backend.port);
    let mut ld = root.spawn(
        prepared,
        &[
            "--port",
            "0",
            "--bind",
            "127.0.0.1",
            "--upstream",
            &upstream,
            "--",
            "/lameduck",
            "--port",
            &inner_port_text,
            "--bind",
            "127.0.0.1",
            "--upstream",
            &inner_upstream,
        ],
    );
    let port = ld.wait_listening(Some(inner_port)).await;
    ld.wait_ready(port).await;
    let children = children_of(ld.pid());
    assert_eq!(children.len(), 1, "log:\n{}", ld.log());

    let reply = get(port, "/hello").await.expect("GET /hello");
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (StatusCode::OK, "hello")
    );
    let (mut h2, _conn) = h2_connect(port).await;
    let req = http::Request::get(format!("http://127.0.0.1:{port}/hello"))
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let resp = h2.send_request(req).await.expect("HTTP/2 GET /hello");
    assert_eq!(resp.status(), StatusCode::OK, "log:\n{}", ld.log());
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"hello");
    drop(h2);

    assert_eq!(ld.terminate().await, 0, "log:\n{}", ld.log());
    assert!(!alive(children[0]), "the child outlived lameduck");
}
