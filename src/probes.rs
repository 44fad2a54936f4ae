//! The answers to `/ready` and `/health`, and the background check of the backend's own health
//! path (`--backend-health-path`) that `/health` folds in.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use http::StatusCode;
use serde_json::json;
use tracing::{info, warn};

use crate::admission::Admission;
use crate::backend::Backend;
use crate::phase::{Phase, Phases};

/// How often `--backend-health-path` is checked.
pub const HEALTH_INTERVAL: Duration = Duration::from_secs(2);

/// What the probes know beyond the phase and the in-flight count: whether the child has died,
/// and whether the backend's own health check fails.
#[derive(Debug)]
pub struct Probes {
    phase: Phases,
    admission: Arc<Admission>,
    child_death: OnceLock<String>,
    /// Why the backend's own health check fails, while it does.
    backend_failure: Mutex<Option<String>>,
}

/// A probe's answer: its status code and JSON body.
#[derive(Debug, PartialEq, Eq)]
pub struct Answer {
    pub status: StatusCode,
    pub body: String,
}

/// The `status` `/ready` reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Readiness {
    Ready,
    Starting,
    AtCapacity,
    Draining,
}

impl Readiness {
    fn name(self) -> &'static str {
        match self {
            Readiness::Ready => "ready",
            Readiness::Starting => "starting",
            Readiness::AtCapacity => "at_capacity",
            Readiness::Draining => "draining",
        }
    }
}

impl Probes {
    pub fn new(phase: Phases, admission: Arc<Admission>) -> Probes {
        Probes {
            phase,
            admission,
            child_death: OnceLock::new(),
            backend_failure: Mutex::new(None),
        }
    }

    /// The answer to `/ready`: 200 only while the backend is up and requests are admitted.
    pub fn readiness(&self) -> Answer {
        let readiness = match self.phase.get() {
            // A dead child cannot serve: report it as going away (`/health` says why).
            _ if self.child_death.get().is_some() => Readiness::Draining,
            Phase::Starting => Readiness::Starting,
            Phase::Ready if self.admission.at_capacity() => Readiness::AtCapacity,
            Phase::Ready => Readiness::Ready,
            Phase::DrainDelay | Phase::Draining | Phase::Stopping => Readiness::Draining,
        };
        let status = match readiness {
            Readiness::Ready => StatusCode::OK,
            _ => StatusCode::SERVICE_UNAVAILABLE,
        };
        let body = json!({
            "status": readiness.name(),
            "active_requests": self.admission.active(),
            "max_concurrency": self.admission.max_concurrency(),
        });
        Answer {
            status,
            body: body.to_string(),
        }
    }

    /// The answer to `/health`: healthy for as long as the child lives, the whole drain included.
    /// A failing backend health check counts only before the drain.
    pub fn health(&self) -> Answer {
        let reason = match self.child_death.get() {
            Some(reason) => Some(reason.clone()),
            None if self.phase.get().is_shutting_down() => None,
            None => self.backend_failure().clone(),
        };
        match reason {
            None => Answer {
                status: StatusCode::OK,
                body: json!({"status": "healthy"}).to_string(),
            },
            Some(reason) => Answer {
                status: StatusCode::SERVICE_UNAVAILABLE,
                body: json!({"status": "unhealthy", "reason": reason}).to_string(),
            },
        }
    }

    /// Records that the child has died; `/health` and `/ready` fail from now on.
    pub fn child_died(&self, reason: String) {
        // Only the first death counts: later calls describe the same one.
        let _ = self.child_death.set(reason);
    }

    /// Checks the backend's `path` every [`HEALTH_INTERVAL`], forever, folding the result into
    /// `/health`.
    pub async fn watch_backend_health(self: Arc<Self>, backend: Arc<Backend>, path: String) {
        loop {
            tokio::time::sleep(HEALTH_INTERVAL).await;
            let failure = backend.check(&path).await.err();
            let mut current = self.backend_failure();
            match (&failure, current.is_some()) {
                (Some(reason), false) => warn!(%reason, "the backend's health check fails"),
                (None, true) => info!(path, "the backend's health check passes again"),
                _ => {}
            }
            *current = failure;
        }
    }

    fn backend_failure(&self) -> std::sync::MutexGuard<'_, Option<String>> {
        // A panic while holding this lock leaves a plain Option behind: still usable.
        self.backend_failure
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    #[cfg(test)]
    fn set_backend_failure(&self, failure: Option<&str>) {
        *self.backend_failure() = failure.map(str::to_string);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::phase;

    #[test]
    fn probes_report_the_phase_and_the_child() {
        let (writer, phases) = phase::cell();
        let probes = Probes::new(phases.clone(), Admission::for_test(phases, 0));
        assert_eq!(probes.readiness().status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(probes.readiness().body.contains(r#""status":"starting""#));
        probes.set_backend_failure(Some("backend /healthz answered 500"));
        assert_eq!(probes.health().status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(probes.health().body.contains("answered 500"));
        probes.set_backend_failure(None);
        writer.set(Phase::Ready);
        assert_eq!(
            probes.readiness(),
            Answer {
                status: StatusCode::OK,
                body: r#"{"status":"ready","active_requests":0,"max_concurrency":null}"#.into()
            }
        );
        writer.set(Phase::DrainDelay);
        assert!(probes.readiness().body.contains(r#""status":"draining""#));
        // The backend's own check never fails /health during the drain.
        probes.set_backend_failure(Some("backend /healthz answered 500"));
        assert_eq!(probes.health().status, StatusCode::OK);
        probes.child_died("exited with status 3".into());
        assert_eq!(probes.health().status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(probes.health().body.contains("exited with status 3"));
    }

    #[test]
    fn ready_reports_capacity() {
        let (writer, phases) = phase::cell();
        writer.set(Phase::Ready);
        let admission = Admission::for_test(phases.clone(), 1);
        let probes = Probes::new(phases, Arc::clone(&admission));
        let mut held = admission.admit(&http::Method::GET, "/").now();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(admission.take_slot(&mut held, Duration::ZERO))
            .unwrap();
        let answer = probes.readiness();
        assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            answer.body,
            r#"{"status":"at_capacity","active_requests":1,"max_concurrency":1}"#
        );
    }
}
