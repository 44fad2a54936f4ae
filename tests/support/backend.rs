//! A test backend for lameduck's integration tests, run as a real child process.
//!
//! It binds `127.0.0.1:$PORT` and behaves like the servers lameduck must cope with: by default it
//! dies the instant it gets SIGTERM (like Node), it can start late, ignore SIGTERM, stream slowly,
//! spawn grandchildren and crash on demand.
//!
//! Environment:
//! - `PORT`: the port to bind (set by lameduck). `0`: any free port. Once bound, the backend
//!   prints `listening 127.0.0.1:PORT` on stdout, which is how a test running it on its own
//!   learns the port.
//! - `LAMEDUCK_UPSTREAM_SOCKET`: listen on this Unix socket path instead (set by lameduck for
//!   `--upstream unix:/PATH`; `PORT` is then not needed). A file already at the path is
//!   replaced, as uvicorn and gunicorn do.
//! - `BACKEND_DELAY_MS`: wait this long before binding.
//! - `BACKEND_ON_TERM=ignore`: ignore SIGTERM (only SIGKILL stops it).
//! - `BACKEND_SIGNAL_LOG=FILE`: append the name of every SIGHUP/SIGUSR1/SIGUSR2/SIGWINCH received.
//! - `BACKEND_READY_AFTER_MS`: `/readyz` answers 503 until this long after start, then 200.
//! - `BACKEND_UNHEALTHY_FILE=FILE`: `/healthz` answers 500 while this file exists.
//! - `BACKEND_WS_LOG=FILE`: append the close code of every WebSocket close frame received.
//!
//! It serves HTTP/1.1 and HTTP/2 (h2c, prior knowledge) on the same port.
//!
//! Routes: `/hello`, `/slow?ms=N`, `/sse?n=N&ms=M`, `/echo`, `/count`, `/download?bytes=N`,
//! `/headers`, `/upgrade`, `/spawn`, `/exit?code=N`, `/pid`, `/status?code=N`, `/readyz`,
//! `/healthz`, `/peer` (the port lameduck connected from), `/close` (the same, then the
//! connection closes), `/sse-pieces?n=N&ms=M` (each event written in two pieces), `/ws` (WebSocket
//! echo), `/grpc.Test/Stream?n=N&ms=M` (gRPC-shaped stream, each message in two pieces, then
//! `grpc-status: 0`), `/trailers`, `/env/NAME` (the backend's environment variable NAME, 404 if
//! unset).

use std::convert::Infallible;
use std::io::Write as _;
use std::os::unix::process::CommandExt as _;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::SinkExt as _;
use futures_util::StreamExt as _;
use http::HeaderMap;
use http::{Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use signal_hook::consts::{SIGHUP, SIGUSR1, SIGUSR2, SIGWINCH};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::{self, protocol::Role, Message};

type Body = BoxBody<Bytes, Infallible>;

static STARTED: OnceLock<Instant> = OnceLock::new();

#[tokio::main]
async fn main() {
    STARTED.get_or_init(Instant::now);
    if std::env::var("BACKEND_ON_TERM").as_deref() == Ok("ignore") {
        // A registered handler replaces the default action (death): SIGTERM is now a no-op.
        signal_hook::flag::register(
            signal_hook::consts::SIGTERM,
            Arc::new(AtomicBool::new(false)),
        )
        .expect("register SIGTERM");
    }
    if let Ok(path) = std::env::var("BACKEND_SIGNAL_LOG") {
        // Registered before the port is bound: once lameduck sees the backend up, a forwarded
        // SIGHUP must be logged, not take its default action (death).
        let signals =
            signal_hook_tokio::Signals::new([SIGHUP, SIGUSR1, SIGUSR2, SIGWINCH]).expect("signals");
        tokio::spawn(log_signals(signals, path));
    }
    if let Some(ms) = std::env::var("BACKEND_DELAY_MS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    if let Some(path) = std::env::var_os("LAMEDUCK_UPSTREAM_SOCKET") {
        return serve_unix(path.into()).await;
    }
    let port: u16 = std::env::var("PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .expect("PORT or LAMEDUCK_UPSTREAM_SOCKET must be set");
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("bind");
    let address = listener.local_addr().expect("local address");
    println!("listening {address}");
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(serve(stream, peer.port()));
    }
}

/// Serves on a Unix socket. Its connections have no port: each gets a number of its own in
/// place of `/peer`'s port, counting up from 1.
async fn serve_unix(path: std::path::PathBuf) {
    // A stale socket file from an earlier run would make the bind fail.
    let _ = std::fs::remove_file(&path);
    let listener = tokio::net::UnixListener::bind(&path).expect("bind the Unix socket");
    println!("listening unix:{}", path.display());
    let mut connections: u16 = 0;
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        connections = connections.wrapping_add(1);
        tokio::spawn(serve(stream, connections));
    }
}

async fn serve<S>(stream: S, peer_port: u16)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |req| route(req, peer_port));
    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
        .serve_connection_with_upgrades(TokioIo::new(stream), service)
        .await;
}

async fn log_signals(mut signals: signal_hook_tokio::Signals, path: String) {
    while let Some(sig) = signals.next().await {
        let name = signal_hook::low_level::signal_name(sig).unwrap_or("?");
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .expect("signal log");
        writeln!(file, "{name}").expect("write signal log");
    }
}

fn param(req: &Request<Incoming>, name: &str) -> Option<u64> {
    req.uri().query()?.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        (key == name).then(|| value.parse().ok())?
    })
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut resp = Response::new(Full::new(body.into()).boxed());
    *resp.status_mut() = status;
    resp
}

fn ok(body: impl Into<Bytes>) -> Response<Body> {
    text(StatusCode::OK, body)
}

/// A body fed by a task, one frame per message.
fn channel_body() -> (mpsc::Sender<Bytes>, Body) {
    let (tx, body) = frame_body();
    let (data_tx, mut data_rx) = mpsc::channel::<Bytes>(4);
    tokio::spawn(async move {
        while let Some(data) = data_rx.recv().await {
            if tx.send(Frame::data(data)).await.is_err() {
                return;
            }
        }
    });
    (data_tx, body)
}

/// A body fed by a task, data and trailers alike.
fn frame_body() -> (mpsc::Sender<Frame<Bytes>>, Body) {
    let (tx, mut rx) = mpsc::channel::<Frame<Bytes>>(4);
    let stream = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)).map(Ok::<_, Infallible>);
    (tx, BodyExt::boxed(StreamBody::new(stream)))
}

/// Appends a line to the file named by the environment variable `var`, if set, in one write
/// (`writeln!` may write the line and its newline apart, and two connections' lines then mix).
fn log_line(var: &str, line: &str) {
    if let Some(path) = std::env::var_os(var) {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .expect("log file");
        file.write_all(format!("{line}\n").as_bytes())
            .expect("write log");
    }
}

/// `peer_port`: the client's port on this connection, which identifies the connection.
async fn route(mut req: Request<Incoming>, peer_port: u16) -> Result<Response<Body>, Infallible> {
    let resp = match req.uri().path() {
        "/hello" => ok("hello"),
        path if path.starts_with("/env/") => match std::env::var(&path["/env/".len()..]) {
            Ok(value) => ok(value),
            Err(_) => text(StatusCode::NOT_FOUND, "unset"),
        },
        "/peer" => ok(peer_port.to_string()),
        "/close" => {
            let mut resp = ok(peer_port.to_string());
            resp.headers_mut()
                .insert("connection", "close".parse().unwrap());
            resp
        }
        "/readyz" => {
            let after = std::env::var("BACKEND_READY_AFTER_MS")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let started = STARTED.get().expect("set at start");
            if started.elapsed() >= Duration::from_millis(after) {
                ok("ready")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "loading")
            }
        }
        "/healthz" => match std::env::var_os("BACKEND_UNHEALTHY_FILE") {
            Some(path) if std::path::Path::new(&path).exists() => {
                text(StatusCode::INTERNAL_SERVER_ERROR, "unhealthy")
            }
            _ => ok("healthy"),
        },
        "/pid" => ok(std::process::id().to_string()),
        "/status" => text(
            StatusCode::from_u16(param(&req, "code").unwrap_or(200) as u16)
                .unwrap_or(StatusCode::OK),
            "status",
        ),
        "/slow" => {
            let ms = param(&req, "ms").unwrap_or(1000);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            ok(format!("slow {ms} done"))
        }
        "/sse" => {
            let n = param(&req, "n").unwrap_or(3);
            let ms = param(&req, "ms").unwrap_or(500);
            let (tx, body) = channel_body();
            tokio::spawn(async move {
                for i in 0..n {
                    if i > 0 {
                        tokio::time::sleep(Duration::from_millis(ms)).await;
                    }
                    let event = Bytes::from(format!("id: {i}\ndata: event {i}\n\n"));
                    if tx.send(event).await.is_err() {
                        return;
                    }
                }
            });
            let mut resp = Response::new(body);
            resp.headers_mut()
                .insert("content-type", "text/event-stream".parse().unwrap());
            resp
        }
        "/sse-pieces" => {
            let n = param(&req, "n").unwrap_or(3);
            let ms = param(&req, "ms").unwrap_or(200);
            let (tx, body) = channel_body();
            tokio::spawn(async move {
                for i in 0..n {
                    let first = Bytes::from(format!("id: {i}\ndata: part"));
                    let second = Bytes::from(format!("ial event {i}\n\n"));
                    for piece in [first, second] {
                        if tx.send(piece).await.is_err() {
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(ms / 2)).await;
                    }
                }
            });
            let mut resp = Response::new(body);
            resp.headers_mut()
                .insert("content-type", "text/event-stream".parse().unwrap());
            resp
        }
        "/grpc.Test/Stream" => {
            let n = param(&req, "n").unwrap_or(3);
            let ms = param(&req, "ms").unwrap_or(100);
            let (tx, body) = frame_body();
            tokio::spawn(async move {
                for i in 0..n {
                    let payload = format!("message {i:06}");
                    let mut message = vec![0u8];
                    message.extend_from_slice(&(payload.len() as u32).to_be_bytes());
                    message.extend_from_slice(payload.as_bytes());
                    let (first, second) = message.split_at(message.len() / 2);
                    for piece in [first, second] {
                        if tx
                            .send(Frame::data(Bytes::copy_from_slice(piece)))
                            .await
                            .is_err()
                        {
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(ms / 2)).await;
                    }
                }
                let mut trailers = HeaderMap::new();
                trailers.insert("grpc-status", "0".parse().unwrap());
                let _ = tx.send(Frame::trailers(trailers)).await;
            });
            let mut resp = Response::new(body);
            resp.headers_mut()
                .insert("content-type", "application/grpc".parse().unwrap());
            resp
        }
        "/trailers" => {
            let (tx, body) = frame_body();
            tokio::spawn(async move {
                let _ = tx
                    .send(Frame::data(Bytes::from_static(b"with trailers")))
                    .await;
                let mut trailers = HeaderMap::new();
                trailers.insert("x-checksum", "abc123".parse().unwrap());
                let _ = tx.send(Frame::trailers(trailers)).await;
            });
            Response::new(body)
        }
        "/ws" => {
            let Some(key) = req.headers().get("sec-websocket-key").cloned() else {
                return Ok(text(StatusCode::BAD_REQUEST, "not a websocket handshake"));
            };
            let upgrade = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                let Ok(upgraded) = upgrade.await else { return };
                let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
                    TokioIo::new(upgraded),
                    Role::Server,
                    None,
                )
                .await;
                while let Some(Ok(message)) = ws.next().await {
                    if let Message::Close(frame) = &message {
                        let code = frame.as_ref().map_or(0, |f| u16::from(f.code));
                        log_line("BACKEND_WS_LOG", &code.to_string());
                    } else if (message.is_text() || message.is_binary())
                        && ws.send(message).await.is_err()
                    {
                        return;
                    }
                }
            });
            let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
            let mut resp = text(StatusCode::SWITCHING_PROTOCOLS, "");
            let headers = resp.headers_mut();
            headers.insert("connection", "upgrade".parse().unwrap());
            headers.insert("upgrade", "websocket".parse().unwrap());
            headers.insert("sec-websocket-accept", accept.parse().unwrap());
            resp
        }
        "/echo" => {
            let (tx, body) = channel_body();
            let mut incoming = req.into_body();
            tokio::spawn(async move {
                while let Some(Ok(frame)) = incoming.frame().await {
                    if let Ok(data) = frame.into_data() {
                        if tx.send(data).await.is_err() {
                            return;
                        }
                    }
                }
            });
            Response::new(body)
        }
        "/count" => {
            let mut incoming = req.into_body();
            let mut total = 0u64;
            while let Some(Ok(frame)) = incoming.frame().await {
                if let Ok(data) = frame.into_data() {
                    total += data.len() as u64;
                }
            }
            ok(total.to_string())
        }
        "/download" => {
            let mut remaining = param(&req, "bytes").unwrap_or(0);
            let (tx, body) = channel_body();
            tokio::spawn(async move {
                let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
                while remaining > 0 {
                    let n = remaining.min(chunk.len() as u64) as usize;
                    if tx.send(chunk.slice(..n)).await.is_err() {
                        return;
                    }
                    remaining -= n as u64;
                }
            });
            Response::new(body)
        }
        "/headers" => {
            let mut out = format!("{} {} {:?}\n", req.method(), req.uri(), req.version());
            for (name, value) in req.headers() {
                out.push_str(&format!("{name}: {}\n", value.to_str().unwrap_or("?")));
            }
            ok(out)
        }
        "/upgrade" => {
            let upgrade = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                let Ok(upgraded) = upgrade.await else { return };
                let mut io = TokioIo::new(upgraded);
                let mut buf = [0u8; 4096];
                loop {
                    match io.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if io.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
            let mut resp = text(StatusCode::SWITCHING_PROTOCOLS, "");
            resp.headers_mut()
                .insert("connection", "upgrade".parse().unwrap());
            resp.headers_mut()
                .insert("upgrade", "echo".parse().unwrap());
            resp
        }
        "/spawn" => {
            // One grandchild stays in the backend's process group, one leaves it.
            let in_group = std::process::Command::new("sleep").arg("300").spawn();
            let own_group = std::process::Command::new("sleep")
                .arg("301")
                .process_group(0)
                .spawn();
            match (in_group, own_group) {
                (Ok(a), Ok(b)) => ok(format!("{} {}", a.id(), b.id())),
                _ => text(StatusCode::INTERNAL_SERVER_ERROR, "spawn failed"),
            }
        }
        "/exit" => {
            let code = param(&req, "code").unwrap_or(0) as i32;
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                std::process::exit(code);
            });
            ok("exiting")
        }
        _ => text(StatusCode::NOT_FOUND, "not found"),
    };
    Ok(resp)
}
