//! Helpers that run the real lameduck binary against real backends, and a small HTTP client.
#![allow(dead_code)]

use std::io::Read as _;
use std::net::TcpListener;
use std::path::PathBuf;
use std::pin::Pin;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::body::{Body, Frame, Incoming};
use hyper_util::rt::TokioIo;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// A fresh, empty directory for one test's files.
pub fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("lameduck-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create a temp dir");
    dir
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind an ephemeral port")
        .port()
}

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

/// A running lameduck.
pub struct Lameduck {
    pub child: Option<Child>,
    pub port: u16,
    pub upstream_port: u16,
    log: PathBuf,
}

pub struct Builder {
    args: Vec<String>,
    envs: Vec<(String, String)>,
    backend: Option<Vec<String>>,
    upstream_port: u16,
    /// `None`: pass `--port` with a free port. `Some(port)`: the configuration sets this port.
    configured_port: Option<u16>,
    dir: Option<PathBuf>,
}

impl Builder {
    /// lameduck in front of the test backend, spawned as its child.
    pub fn with_backend() -> Builder {
        Builder {
            args: Vec::new(),
            envs: Vec::new(),
            backend: Some(vec![backend_path().to_string_lossy().into_owned()]),
            upstream_port: free_port(),
            configured_port: None,
            dir: None,
        }
    }

    /// lameduck with no child, fronting whatever listens on `upstream_port`.
    pub fn without_child(upstream_port: u16) -> Builder {
        Builder {
            args: Vec::new(),
            envs: Vec::new(),
            backend: None,
            upstream_port,
            configured_port: None,
            dir: None,
        }
    }

    /// lameduck with an arbitrary child command.
    pub fn with_command(command: &[&str]) -> Builder {
        let mut builder = Builder::with_backend();
        builder.backend = Some(command.iter().map(|s| s.to_string()).collect());
        builder
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

    /// The configuration (a file, cerebrium.toml) sets the public port: do not pass `--port`.
    pub fn port_from_config(mut self, port: u16) -> Builder {
        self.configured_port = Some(port);
        self
    }

    /// Run lameduck in this working directory.
    pub fn current_dir(mut self, dir: &std::path::Path) -> Builder {
        self.dir = Some(dir.to_path_buf());
        self
    }

    pub fn spawn(self) -> Lameduck {
        let port = self.configured_port.unwrap_or_else(free_port);
        let log =
            std::env::temp_dir().join(format!("lameduck-test-{}-{port}.log", std::process::id()));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_lameduck"));
        if self.configured_port.is_none() {
            cmd.args(["--port", &port.to_string()]);
        }
        if let Some(dir) = &self.dir {
            cmd.current_dir(dir);
        }
        cmd.args(["--bind", "127.0.0.1"])
            .args([
                "--upstream",
                &format!("http://127.0.0.1:{}", self.upstream_port),
            ])
            .args(&self.args)
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
        Lameduck {
            child: Some(child),
            port,
            upstream_port: self.upstream_port,
            log,
        }
    }
}

impl Lameduck {
    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.as_ref().unwrap().id() as i32)
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
                start.elapsed() < Duration::from_secs(20),
                "lameduck never became ready; log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits for lameduck to exit (at most `limit`) and returns its exit code.
    pub async fn wait_exit(&mut self, limit: Duration) -> i32 {
        let start = Instant::now();
        loop {
            let child = self.child.as_mut().unwrap();
            if let Some(status) = child.try_wait().expect("try_wait") {
                self.child = None;
                return code(status);
            }
            assert!(
                start.elapsed() < limit,
                "lameduck did not exit within {limit:?}; log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for Lameduck {
    /// A failed test must not leave processes behind: SIGQUIT (lameduck stops its child), then
    /// SIGKILL if it lingers.
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGQUIT);
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(_)) = child.try_wait() {
                let _ = std::fs::remove_file(&self.log);
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

fn code(status: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt as _;
    status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

impl Lameduck {
    /// Asserts that lameduck exits, within 10 s, with `code`.
    pub async fn expect_exit(&mut self, code: i32) {
        let status = self.wait_exit(Duration::from_secs(10)).await;
        assert_eq!(status, code, "unexpected exit status; log:\n{}", self.log());
    }
}

/// `/ready`'s status and JSON body.
pub async fn ready_json(port: u16) -> (StatusCode, serde_json::Value) {
    let reply = get(port, "/ready").await.unwrap();
    (reply.status, serde_json::from_str(&reply.body).unwrap())
}

/// Waits until `/ready` reports `n` active requests.
pub async fn wait_active(port: u16, n: u64) {
    let start = Instant::now();
    while ready_json(port).await.1["active_requests"] != n {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "never saw {n} active"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The first answer to GET `path` once lameduck accepts connections.
pub async fn first_reply(port: u16, path: &str) -> Reply {
    let start = Instant::now();
    loop {
        if let Ok(reply) = get(port, path).await {
            return reply;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "lameduck never answered"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

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
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
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
