//! A raw HTTP/1 client, bytes in and bytes out, for what no well-behaved client would send (two
//! `Host` headers, control characters, a head that never ends), and a counting backend that shows
//! what lameduck forwarded.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::PATIENCE;

/// One response, read whole.
#[derive(Debug)]
pub struct Raw {
    /// `HTTP/1.1 200 OK`.
    pub status_line: String,
    pub status: u16,
    /// Header lines, names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Raw {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The JSON body, which must be one.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.text()))
    }

    /// The `detail` of a JSON error body, asserting its `error` too.
    pub fn detail(&self, error: &str) -> String {
        let body = self.json();
        assert_eq!(body["error"], error, "{body}");
        body["detail"].as_str().expect("a detail").to_string()
    }
}

/// A client connection on which anything can be written, and responses read one by one.
pub struct RawConn {
    stream: TcpStream,
    read: Vec<u8>,
    closed: bool,
}

impl RawConn {
    pub async fn open(port: u16) -> RawConn {
        let stream = TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect to lameduck");
        RawConn {
            stream,
            read: Vec::new(),
            closed: false,
        }
    }

    /// Writes `bytes`. lameduck may refuse and close before it has read them all: the error is
    /// returned, for the test to ignore.
    pub async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes).await
    }

    /// Reads more; false once the connection is closed (or reset).
    async fn fill(&mut self, deadline: Instant) -> bool {
        if self.closed {
            return false;
        }
        let mut chunk = [0u8; 16 * 1024];
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, self.stream.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => {
                self.read.extend_from_slice(&chunk[..n]);
                true
            }
            Ok(_) => {
                self.closed = true;
                false
            }
            Err(_) => panic!(
                "no answer within {PATIENCE:?}; read so far: {:?}",
                String::from_utf8_lossy(&self.read)
            ),
        }
    }

    /// The next response; `None` if the connection closes before one starts.
    pub async fn response(&mut self) -> Option<Raw> {
        let deadline = Instant::now() + PATIENCE;
        let head_end = loop {
            if let Some(at) = find(&self.read, b"\r\n\r\n") {
                break at;
            }
            if !self.fill(deadline).await {
                assert!(
                    self.read.is_empty(),
                    "closed within a response head: {:?}",
                    String::from_utf8_lossy(&self.read)
                );
                return None;
            }
        };
        let head = String::from_utf8_lossy(&self.read[..head_end]).into_owned();
        self.read.drain(..head_end + 4);
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default().to_string();
        let status = status_line
            .split(' ')
            .nth(1)
            .and_then(|code| code.parse().ok())
            .unwrap_or_else(|| panic!("not a status line: {status_line:?}"));
        let headers: Vec<(String, String)> = lines
            .filter_map(|line| line.split_once(':'))
            .map(|(name, value)| (name.to_ascii_lowercase(), value.trim().to_string()))
            .collect();
        let mut raw = Raw {
            status_line,
            status,
            headers,
            body: Vec::new(),
        };
        if raw.header("transfer-encoding") == Some("chunked") {
            raw.body = self.chunked(deadline).await;
        } else if let Some(len) = raw.header("content-length") {
            let len: usize = len.parse().expect("a content length");
            while self.read.len() < len {
                assert!(self.fill(deadline).await, "body cut short");
            }
            raw.body = self.read.drain(..len).collect();
        } else if status >= 200 && status != 204 && status != 304 {
            // Delimited by the close.
            while self.fill(deadline).await {}
            raw.body = std::mem::take(&mut self.read);
        }
        Some(raw)
    }

    async fn chunked(&mut self, deadline: Instant) -> Vec<u8> {
        let mut body = Vec::new();
        loop {
            let line_end = loop {
                if let Some(at) = find(&self.read, b"\r\n") {
                    break at;
                }
                assert!(self.fill(deadline).await, "chunked body cut short");
            };
            let size = String::from_utf8_lossy(&self.read[..line_end]).into_owned();
            let size = usize::from_str_radix(size.split(';').next().unwrap().trim(), 16)
                .unwrap_or_else(|_| panic!("not a chunk size: {size:?}"));
            self.read.drain(..line_end + 2);
            while self.read.len() < size + 2 {
                assert!(self.fill(deadline).await, "chunked body cut short");
            }
            body.extend(self.read.drain(..size));
            self.read.drain(..2);
            if size == 0 {
                return body;
            }
        }
    }

    /// The next `n` bytes, whatever they are (an upgraded connection's).
    pub async fn bytes(&mut self, n: usize) -> Vec<u8> {
        let deadline = Instant::now() + PATIENCE;
        while self.read.len() < n {
            assert!(self.fill(deadline).await, "closed before {n} bytes");
        }
        self.read.drain(..n).collect()
    }

    /// Waits for lameduck to close the connection, with nothing more sent; returns how long
    /// that took.
    pub async fn closed(&mut self) -> Duration {
        let start = Instant::now();
        let deadline = start + PATIENCE;
        while self.fill(deadline).await {}
        assert!(
            self.read.is_empty(),
            "unexpected bytes before the close: {:?}",
            String::from_utf8_lossy(&self.read)
        );
        start.elapsed()
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

/// Sends `bytes` on a new connection and reads the first response (`None`: closed without one).
pub async fn exchange(port: u16, bytes: &[u8]) -> Option<Raw> {
    let mut conn = RawConn::open(port).await;
    let _ = conn.send(bytes).await;
    conn.response().await
}

/// A backend in the test's process that answers every request `200 ok` and records the
/// request line of each (`GET /path`), so that a test can tell what lameduck forwarded.
pub struct Recording {
    pub port: u16,
    seen: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Recording {
    pub async fn start() -> Recording {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let task = tokio::spawn({
            let seen = Arc::clone(&seen);
            async move {
                while let Ok((stream, _)) = listener.accept().await {
                    let seen = Arc::clone(&seen);
                    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                        seen.lock()
                            .unwrap()
                            .push(format!("{} {}", req.method(), req.uri()));
                        async move {
                            // The body is not read: answered at once, whatever it is.
                            Ok::<_, std::convert::Infallible>(Response::new(Full::new(
                                Bytes::from_static(b"ok"),
                            )))
                        }
                    });
                    tokio::spawn(async move {
                        // Room for the X-Forwarded-* headers lameduck adds to a request with
                        // as many headers as it accepts.
                        let _ = hyper::server::conn::http1::Builder::new()
                            .max_headers(200)
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
            }
        });
        Recording { port, seen, task }
    }

    /// The request lines received so far.
    pub fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for Recording {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A body read whole, for the hyper clients of the tests.
pub async fn collect(body: Incoming) -> Result<Bytes, hyper::Error> {
    Ok(body.collect().await?.to_bytes())
}
