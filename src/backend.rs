//! Probing the backend: whether it is up (its port accepts, or `--backend-ready-path` answers
//! 2xx) and whether it stays healthy (`--backend-health-path`, checked in the background).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Uri};
use http_body_util::Empty;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::net::TcpStream;
use tracing::{info, warn};

use crate::config::Upstream;
use crate::readiness::State;

/// How long one probe of a backend path may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// How often `--backend-health-path` is checked.
pub const HEALTH_INTERVAL: Duration = Duration::from_secs(2);

#[derive(Debug)]
pub struct Backend {
    upstream: Upstream,
    client: Client<HttpConnector, Empty<Bytes>>,
}

impl Backend {
    pub fn new(upstream: Upstream) -> Backend {
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(0)
            .build(HttpConnector::new());
        Backend { upstream, client }
    }

    /// Whether the backend is up: its port accepts, or, given a path, that path answers 2xx.
    pub async fn is_up(&self, ready_path: Option<&str>) -> bool {
        match ready_path {
            Some(path) => self.check(path).await.is_ok(),
            None => TcpStream::connect((self.upstream.host.as_str(), self.upstream.port))
                .await
                .is_ok(),
        }
    }

    /// GET `path` on the backend: `Ok` on 2xx, else why not.
    pub async fn check(&self, path: &str) -> Result<(), String> {
        let uri: Uri = format!("http://{}{path}", self.upstream.authority)
            .parse()
            .map_err(|err| format!("bad path {path}: {err}"))?;
        let req = Request::get(uri)
            .header("user-agent", "lameduck")
            .body(Empty::new())
            .map_err(|err| err.to_string())?;
        match tokio::time::timeout(PROBE_TIMEOUT, self.client.request(req)).await {
            Ok(Ok(resp)) if resp.status().is_success() => Ok(()),
            Ok(Ok(resp)) => Err(format!(
                "backend {path} answered {}",
                resp.status().as_u16()
            )),
            Ok(Err(err)) => Err(format!("backend {path} failed: {err}")),
            Err(_) => Err(format!(
                "backend {path} did not answer within {PROBE_TIMEOUT:?}"
            )),
        }
    }

    /// Checks `path` forever, folding the result into `/health`.
    pub async fn watch_health(self: Arc<Self>, path: String, state: Arc<State>) {
        let mut healthy = true;
        loop {
            tokio::time::sleep(HEALTH_INTERVAL).await;
            let result = self.check(&path).await;
            match (&result, healthy) {
                (Err(reason), true) => warn!(%reason, "the backend's health check fails"),
                (Ok(()), false) => info!(path, "the backend's health check passes again"),
                _ => {}
            }
            healthy = result.is_ok();
            state.set_backend_health(result.err());
        }
    }
}
