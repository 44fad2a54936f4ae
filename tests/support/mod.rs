//! Helpers that run the real lameduck binary against real backends, and a small HTTP client.
//!
//! Ports: lameduck always binds `--port 0` (or `port = 0` in a config file) and the helpers read
//! the address it bound from its `listening` log line, so two tests can never be handed the same
//! port. Only the port of a backend that lameduck spawns must be known before it starts (lameduck
//! passes it to the child as `PORT`); those come from [`backend_port`], which hands out ports
//! outside the kernel's ephemeral range (see there why that cannot race).
//!
//! Clean-up: every process and file a test creates is owned by a guard ([`Lameduck`],
//! [`Backend`], [`TempDir`]) whose `Drop` stops or removes it, so a failing test leaves nothing
//! behind either.
#![allow(dead_code)]

pub mod raw;

use std::io::Read;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::body::{Body, Frame, Incoming};
use hyper_util::rt::TokioIo;
use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;

/// How long any wait for a condition may take before the test fails. Generous: the suite runs on
/// small, shared machines, and a bound only decides how long a broken build takes to fail.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// Polls `condition` every 20 ms until it holds; fails the test, saying `what` did not happen,
/// after [`PATIENCE`].
pub async fn wait_for<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !condition().await {
        assert!(start.elapsed() < PATIENCE, "waited {PATIENCE:?}: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Temporary files

/// A fresh, empty directory for one test's files, removed (with its contents) when dropped.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        loop {
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let path = std::env::temp_dir()
                .join(format!("lameduck-test-{}-{n}-{name}", std::process::id()));
            // `create_dir` (not `create_dir_all`) fails if the directory exists: a leftover of
            // an earlier process with the same pid is never reused.
            match std::fs::create_dir(&path) {
                Ok(()) => return TempDir { path },
                Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(err) => panic!("create {}: {err}", path.display()),
            }
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A path inside the directory.
    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

// ---------------------------------------------------------------------------------------------
// Ports

/// A port for a backend that lameduck spawns, which must bind the port lameduck names in `PORT`
/// and so cannot use port 0.
///
/// "Bind port 0, note the port, release it, let the backend bind it later" races: between the
/// release and the backend's bind any other test's port-0 bind (lameduck's `--port 0`, a client
/// connection's local port) may be handed the same port, and a test then talks to another test's
/// server. So these ports come from outside the kernel's ephemeral range
/// (`/proc/sys/net/ipv4/ip_local_port_range`), which the kernel never hands out for port 0 or for
/// outgoing connections. Within this process an atomic counter never hands out a port twice;
/// the starting point is offset by the pid so that test binaries running side by side (nextest,
/// another worktree) start far apart; and a trial bind skips ports some other program holds.
pub fn backend_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let (start, len) = *reserved_range();
    let offset = std::process::id().wrapping_mul(7919) % len;
    for _ in 0..len {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (start + (offset + n) % len) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {start}..{}", start + len);
}

/// The block of ports [`backend_port`] hands out from: the larger of the gaps below and above the
/// ephemeral range, leaving out the ports below 10000 where developers' own servers tend to run.
fn reserved_range() -> &'static (u32, u32) {
    static RANGE: OnceLock<(u32, u32)> = OnceLock::new();
    RANGE.get_or_init(|| {
        let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .unwrap_or_else(|_| "32768 60999".into());
        let mut bounds = text.split_whitespace().map(|n| n.parse::<u32>().unwrap());
        let (low, high) = (bounds.next().unwrap(), bounds.next().unwrap());
        let below = (10000.min(low), low.saturating_sub(10000.min(low)));
        let above = (high + 1, 65535 - high);
        let best = if below.1 >= above.1 { below } else { above };
        assert!(
            best.1 >= 1000,
            "the ephemeral range {low}-{high} leaves too few other ports for the tests"
        );
        best
    })
}

// ---------------------------------------------------------------------------------------------
// The test backend

/// The in-suite test backend (tests/support/backend.rs), built by cargo as an example.
pub fn backend_path() -> PathBuf {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_lameduck"));
    let path = bin.parent().unwrap().join("examples").join("test-backend");
    assert!(
        path.exists(),
        "{} missing: run `cargo test` (it builds examples)",
        path.display()
    );
    path
}

/// The test backend running on its own (not as lameduck's child), on a port it picked itself.
/// Killed when dropped.
pub struct Backend {
    child: Child,
    pub port: u16,
}

impl Backend {
    /// Starts the backend with `PORT=0` and reads the port it bound from its `listening` line.
    pub fn spawn(envs: &[(&str, &str)]) -> Backend {
        let mut child = Command::new(backend_path())
            .env("PORT", "0")
            .envs(envs.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn the test backend");
        let mut stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = Vec::new();
            let mut byte = [0u8];
            while stdout.read(&mut byte).unwrap_or(0) == 1 && byte[0] != b'\n' {
                line.push(byte[0]);
            }
            let _ = tx.send(String::from_utf8_lossy(&line).into_owned());
            // Keep reading so that the backend never blocks on a full pipe.
            let _ = std::io::copy(&mut stdout, &mut std::io::sink());
        });
        let mut backend = Backend { child, port: 0 };
        let line = rx
            .recv_timeout(PATIENCE)
            .expect("the test backend never said where it listens");
        backend.port = line
            .strip_prefix("listening ")
            .and_then(|addr| addr.parse::<SocketAddr>().ok())
            .unwrap_or_else(|| panic!("not a listening line: {line:?}"))
            .port();
        backend
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------------
// lameduck

/// The environment lameduck gets from the test, never from whoever runs `cargo test`.
fn isolate(cmd: &mut Command) {
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if key.starts_with("LAMEDUCK_") || key == "PORT" || key == "RUST_LOG" {
            cmd.env_remove(&*key);
        }
    }
}

/// What a lameduck run without a backend printed, and how it exited.
#[derive(Debug)]
pub struct Output {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs lameduck with `args` in `dir`, expecting it to exit by itself (bad options,
/// `--print-config`, `--help`): it is killed, and the test fails, if it is still running after
/// [`PATIENCE`] (for instance because it accepted a value it should have refused and started).
pub fn run_to_exit(args: &[&str], envs: &[(&str, &str)], dir: Option<&Path>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_lameduck"));
    isolate(&mut cmd);
    cmd.args(args)
        .envs(envs.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(dir) = dir {
        cmd.current_dir(dir);
    }
    let mut child = cmd.spawn().expect("run lameduck");
    let reader = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut text = Vec::new();
            let _ = pipe.read_to_end(&mut text);
            String::from_utf8_lossy(&text).into_owned()
        })
    };
    let stdout = reader(Box::new(child.stdout.take().unwrap()));
    let stderr = reader(Box::new(child.stderr.take().unwrap()));
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if start.elapsed() > PATIENCE {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "lameduck {args:?} {envs:?} did not exit; stderr: {}",
                stderr.join().unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Output {
        code: code(status),
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    }
}

/// How lameduck learns its public port.
enum PortChoice {
    /// `--port 0`; the port is read from the `listening` log line.
    Zero,
    /// The configuration (a file, cerebrium.toml) sets `port = 0`; read the same way.
    FromConfig,
    /// `--port N` with a port from [`backend_port`], for runs whose log level hides the
    /// `listening` line.
    Fixed(u16),
}

pub struct Builder {
    args: Vec<String>,
    envs: Vec<(String, String)>,
    backend: Option<Vec<String>>,
    upstream_port: u16,
    /// `--upstream`, when not `http://127.0.0.1:{upstream_port}`.
    upstream: Option<String>,
    port: PortChoice,
    dir: Option<PathBuf>,
    soft_open_files: Option<u64>,
}

impl Builder {
    /// lameduck in front of the test backend, spawned as its child.
    pub fn with_backend() -> Builder {
        Builder {
            args: Vec::new(),
            envs: Vec::new(),
            backend: Some(vec![backend_path().to_string_lossy().into_owned()]),
            upstream_port: backend_port(),
            upstream: None,
            port: PortChoice::Zero,
            dir: None,
            soft_open_files: None,
        }
    }

    /// lameduck with no child, fronting whatever listens on `upstream_port`.
    pub fn without_child(upstream_port: u16) -> Builder {
        Builder {
            args: Vec::new(),
            envs: Vec::new(),
            backend: None,
            upstream_port,
            upstream: None,
            port: PortChoice::Zero,
            dir: None,
            soft_open_files: None,
        }
    }

    /// lameduck with an arbitrary child command.
    pub fn with_command(command: &[&str]) -> Builder {
        let mut builder = Builder::with_backend();
        builder.backend = Some(command.iter().map(|s| s.to_string()).collect());
        builder
    }

    /// `--upstream unix:{path}` instead of the TCP port: the backend (the test backend, when
    /// spawned by lameduck) listens on that socket.
    pub fn unix_upstream(mut self, path: &Path) -> Builder {
        self.upstream = Some(format!("unix:{}", path.display()));
        self
    }

    pub fn args(mut self, args: &[&str]) -> Builder {
        self.args.extend(args.iter().map(|s| s.to_string()));
        self
    }

    /// An environment variable for lameduck (and so for the backend it spawns).
    pub fn env(mut self, key: &str, value: &str) -> Builder {
        self.envs.push((key.into(), value.into()));
        self
    }

    /// The configuration (a file, cerebrium.toml) sets `port = 0`: do not pass `--port`.
    pub fn port_from_config(mut self) -> Builder {
        self.port = PortChoice::FromConfig;
        self
    }

    /// Pass a fixed `--port` instead of 0: for runs that do not log the `listening` line (a log
    /// level above info).
    pub fn fixed_port(mut self) -> Builder {
        self.port = PortChoice::Fixed(backend_port());
        self
    }

    /// Start lameduck with this soft open-file limit (through `sh`'s `ulimit`, which then `exec`s
    /// lameduck: same pid).
    pub fn soft_open_files(mut self, limit: u64) -> Builder {
        self.soft_open_files = Some(limit);
        self
    }

    /// Run lameduck in this working directory.
    pub fn current_dir(mut self, dir: &Path) -> Builder {
        self.dir = Some(dir.to_path_buf());
        self
    }

    /// Starts lameduck and, unless its port is fixed, waits until it logs where it listens. If
    /// lameduck exits first (as it should for a bad command), the port is 0 and the exit status
    /// is kept for [`Lameduck::wait_exit`].
    pub async fn spawn(self) -> Lameduck {
        let dir = TempDir::new("lameduck");
        let log = dir.join("stderr.log");
        let mut cmd = match self.soft_open_files {
            None => Command::new(env!("CARGO_BIN_EXE_lameduck")),
            Some(limit) => {
                let mut sh = Command::new("sh");
                sh.arg("-c")
                    .arg(format!("ulimit -S -n {limit} && exec \"$0\" \"$@\""))
                    .arg(env!("CARGO_BIN_EXE_lameduck"));
                sh
            }
        };
        isolate(&mut cmd);
        match self.port {
            PortChoice::Zero => {
                cmd.args(["--port", "0"]);
            }
            PortChoice::Fixed(port) => {
                cmd.args(["--port", &port.to_string()]);
            }
            PortChoice::FromConfig => {}
        }
        if let Some(dir) = &self.dir {
            cmd.current_dir(dir);
        }
        cmd.args(["--bind", "127.0.0.1"])
            .args([
                "--upstream",
                &self
                    .upstream
                    .clone()
                    .unwrap_or_else(|| format!("http://127.0.0.1:{}", self.upstream_port)),
            ])
            .args(&self.args)
            // The `listening` line is logged at info: a level that hides it must come with
            // `fixed_port`.
            .env(
                "RUST_LOG",
                std::env::var("TEST_LAMEDUCK_LOG").unwrap_or_else(|_| "info".into()),
            )
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"));
        if let Some(backend) = &self.backend {
            cmd.arg("--").args(backend);
        }
        let child = cmd.spawn().expect("spawn lameduck");
        let mut ld = Lameduck {
            child: Some(child),
            exited: None,
            port: 0,
            upstream_port: self.upstream_port,
            log,
            _dir: dir,
        };
        match self.port {
            PortChoice::Fixed(port) => ld.port = port,
            PortChoice::Zero | PortChoice::FromConfig => ld.port = ld.wait_listening().await,
        }
        ld
    }
}

/// The address in lameduck's `listening` log line, text (`INFO listening address=127.0.0.1:41234`)
/// or JSON (`{"message":"listening","address":"127.0.0.1:41234",...}`).
pub fn listening_address(log: &str) -> Option<SocketAddr> {
    log.lines().find_map(|line| {
        if let Ok(serde_json::Value::Object(object)) = serde_json::from_str(line) {
            if object.get("message")?.as_str()? != "listening" {
                return None;
            }
            let address = object
                .get("address")
                .or_else(|| object.get("fields")?.get("address"))?;
            return address.as_str()?.parse().ok();
        }
        let line = strip_ansi(line);
        let mut words = line.split_whitespace();
        words.find(|word| *word == "listening")?;
        words.find_map(|word| word.strip_prefix("address=")?.parse().ok())
    })
}

/// `line` without ANSI colour sequences (`ESC [ ... m`).
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A running lameduck: stopped (SIGQUIT, then SIGKILL with its child's process group) and its
/// log removed when dropped, whether the test passed or not.
pub struct Lameduck {
    child: Option<Child>,
    /// The exit status, once reaped.
    exited: Option<i32>,
    pub port: u16,
    pub upstream_port: u16,
    log: PathBuf,
    /// Holds the log; declared last so that it is removed after the process is stopped.
    _dir: TempDir,
}

impl Lameduck {
    async fn wait_listening(&mut self) -> u16 {
        let start = Instant::now();
        loop {
            if let Some(address) = listening_address(&self.log()) {
                return address.port();
            }
            if self.try_exit().is_some() {
                // It may have logged the line just before exiting.
                return listening_address(&self.log()).map_or(0, |a| a.port());
            }
            assert!(
                start.elapsed() < PATIENCE,
                "lameduck never logged `listening`; log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The exit status if lameduck has exited (reaping it).
    fn try_exit(&mut self) -> Option<i32> {
        if let Some(child) = self.child.as_mut() {
            if let Some(status) = child.try_wait().expect("try_wait") {
                self.exited = Some(code(status));
                self.child = None;
            }
        }
        self.exited
    }

    /// Whether lameduck is still running.
    pub fn running(&mut self) -> bool {
        self.try_exit().is_none()
    }

    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.as_ref().expect("lameduck has exited").id() as i32)
    }

    pub fn signal(&self, signal: Signal) {
        kill(self.pid(), signal).expect("signal lameduck");
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Everything lameduck has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until `/ready` answers 200.
    pub async fn wait_ready(&self) {
        self.wait_ready_at("/ready").await
    }

    /// Waits until `path` (lameduck's readiness path) answers 200.
    pub async fn wait_ready_at(&self, path: &str) {
        let start = Instant::now();
        loop {
            if let Ok(resp) = get(self.port, path).await {
                if resp.status == StatusCode::OK {
                    return;
                }
            }
            assert!(
                self.exited.is_none() && start.elapsed() < PATIENCE,
                "lameduck never became ready (exit status {:?}); log:\n{}",
                self.exited,
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until `/ready` answers 503 `draining`: lameduck has seen the SIGTERM.
    pub async fn wait_draining(&self) {
        wait_draining(self.port).await
    }

    /// Waits for lameduck to exit (at most `limit`) and returns its exit code.
    pub async fn wait_exit(&mut self, limit: Duration) -> i32 {
        let start = Instant::now();
        loop {
            if let Some(code) = self.try_exit() {
                return code;
            }
            assert!(
                start.elapsed() < limit,
                "lameduck did not exit within {limit:?}; log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Asserts that lameduck exits, within 10 s, with `code`.
    pub async fn expect_exit(&mut self, code: i32) {
        let status = self.wait_exit(Duration::from_secs(10)).await;
        assert_eq!(status, code, "unexpected exit status; log:\n{}", self.log());
    }
}

impl Drop for Lameduck {
    /// A failed test must not leave processes behind: SIGQUIT (lameduck stops its child), then,
    /// if lameduck lingers, SIGKILL for it and for its children's process groups.
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = child.id();
        let mut children: std::collections::BTreeSet<u32> = children_of(pid).into_iter().collect();
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGQUIT);
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(15) {
            if let Ok(Some(_)) = child.try_wait() {
                break;
            }
            children.extend(children_of(pid));
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
        for child in children {
            // lameduck starts its child in a process group of its own, led by the child. It has
            // normally stopped it by now; this is for a lameduck that died or hung.
            if alive(child) {
                let _ = killpg(Pid::from_raw(child as i32), Signal::SIGKILL);
            }
        }
    }
}

/// The pids of a process's children, from /proc.
pub fn children_of(pid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("children")).ok())
        .flat_map(|list| {
            list.split_whitespace()
                .filter_map(|pid| pid.parse().ok())
                .collect::<Vec<_>>()
        })
        .collect()
}

fn code(status: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt as _;
    status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

// ---------------------------------------------------------------------------------------------
// Probes

/// `/ready`'s status and JSON body.
pub async fn ready_json(port: u16) -> (StatusCode, serde_json::Value) {
    let reply = get(port, "/ready").await.expect("GET /ready");
    let body = serde_json::from_str(&reply.body)
        .unwrap_or_else(|e| panic!("/ready answered {:?}: {e}", reply.body));
    (reply.status, body)
}

/// Waits until `/ready` reports `n` active requests.
pub async fn wait_active(port: u16, n: u64) {
    wait_for(&format!("/ready to report {n} active requests"), || async {
        ready_json(port).await.1["active_requests"] == n
    })
    .await
}

/// A sample's value in lameduck's metrics (served at `/metrics`, which the test must configure).
pub async fn metric(port: u16, sample: &str) -> Option<f64> {
    let reply = get(port, "/metrics").await.expect("GET /metrics");
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    reply.body.lines().find_map(|line| {
        let (name, value) = line.rsplit_once(' ')?;
        (name == sample).then(|| value.parse().ok())?
    })
}

/// Waits until lameduck's metrics report `n` requests waiting for a concurrency slot.
pub async fn wait_queued(port: u16, n: u64) {
    wait_for(&format!("{n} requests queued"), || async {
        metric(port, "lameduck_requests_queued").await == Some(n as f64)
    })
    .await
}

/// Waits until `/ready` answers 503 `draining`.
pub async fn wait_draining(port: u16) {
    wait_for("/ready to answer 503 draining", || async {
        let (status, body) = ready_json(port).await;
        status == StatusCode::SERVICE_UNAVAILABLE && body["status"] == "draining"
    })
    .await
}

/// The first answer to GET `path` once lameduck accepts connections.
pub async fn first_reply(port: u16, path: &str) -> Reply {
    let start = Instant::now();
    loop {
        if let Ok(reply) = get(port, path).await {
            return reply;
        }
        assert!(start.elapsed() < PATIENCE, "lameduck never answered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP client

/// A response read whole.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: http::HeaderMap,
    pub body: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Sends one request on a new connection and returns the response head with its body still
/// streaming.
pub async fn send<B>(port: u16, req: Request<B>) -> Result<Response<Incoming>, String>
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| e.to_string())?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    sender.send_request(req).await.map_err(|e| e.to_string())
}

/// Sends one request and reads the whole response.
pub async fn request<B>(port: u16, req: Request<B>) -> Result<Reply, String>
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let resp = send(port, req).await?;
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok(Reply {
        status: parts.status,
        headers: parts.headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

pub async fn get(port: u16, path: &str) -> Result<Reply, String> {
    request(port, get_request(path)).await
}

pub fn get_request(path: &str) -> Request<Empty<Bytes>> {
    Request::get(path)
        .header("host", "test.local")
        .body(Empty::new())
        .unwrap()
}

/// A request body of `remaining` bytes produced on the fly, never held in memory.
pub struct Generated {
    pub remaining: u64,
    chunk: Bytes,
}

impl Generated {
    pub fn new(len: u64) -> Generated {
        Generated {
            remaining: len,
            chunk: Bytes::from(vec![b'y'; 64 * 1024]),
        }
    }
}

impl Body for Generated {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        let n = self.remaining.min(self.chunk.len() as u64) as usize;
        self.remaining -= n as u64;
        Poll::Ready(Some(Ok(Frame::data(self.chunk.slice(..n)))))
    }
}

/// The peak resident memory of a process, in KiB (VmHWM).
pub fn peak_rss_kib(pid: Pid) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/status: {e}"));
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmHWM in /proc/{pid}/status"))
}

/// The soft and hard open-file limits of a process, from /proc/PID/limits.
pub fn open_files_limits(pid: u32) -> (u64, u64) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/limits: {e}"));
    let line = limits
        .lines()
        .find_map(|line| line.strip_prefix("Max open files"))
        .unwrap_or_else(|| panic!("no open-file limit in {limits}"));
    let mut numbers = line.split_whitespace().map(|n| n.parse().unwrap());
    (numbers.next().unwrap(), numbers.next().unwrap())
}

/// The process group of a process, from /proc/PID/stat (the field after the parent's pid).
pub fn process_group(pid: u32) -> u32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/stat: {e}"));
    let after_name = &stat[stat.rfind(')').unwrap() + 1..];
    after_name
        .split_whitespace()
        .nth(2)
        .unwrap()
        .parse()
        .unwrap()
}

/// Whether a process exists (and is not a zombie).
pub fn alive(pid: u32) -> bool {
    let Ok(mut file) = std::fs::File::open(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let mut stat = String::new();
    let _ = file.read_to_string(&mut stat);
    let state = stat
        .rsplit(')')
        .next()
        .and_then(|rest| rest.split_whitespace().next());
    !matches!(state, Some("Z" | "X") | None)
}

/// A keep-alive HTTP/1.1 connection to lameduck, for several requests in turn; a task drives it.
pub async fn h1_connect(port: u16) -> hyper::client::conn::http1::SendRequest<Empty<Bytes>> {
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("h1 handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    sender
}

/// An HTTP/2 (h2c, prior knowledge) connection to lameduck, and the task driving it: the task
/// ends when the server closes the connection (for instance with GOAWAY).
pub async fn h2_connect(
    port: u16,
) -> (
    hyper::client::conn::http2::SendRequest<http_body_util::Full<Bytes>>,
    tokio::task::JoinHandle<()>,
) {
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let (sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        TokioIo::new(stream),
    )
    .await
    .expect("h2 handshake");
    let task = tokio::spawn(async move {
        let _ = conn.await;
    });
    (sender, task)
}
