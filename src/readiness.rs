//! The shared lifecycle state: the phase, in-flight and connection counting, and the answers to
//! `/ready` and `/health`.
//!
//! The lifecycle writes the phase; the request path only reads it, with one atomic load. Counting a
//! request is one atomic increment and decrement; the notification that wakes the lifecycle is
//! only sent once shutdown has begun, so the hot path never takes a lock.

use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http::StatusCode;
use tokio::sync::{watch, Notify};

/// Where lameduck is in its lifecycle. Ordered: later phases compare greater.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Phase {
    /// The backend is not accepting yet; requests wait for it.
    Starting = 0,
    /// Proxying.
    Ready = 1,
    /// Shutdown has begun: `/ready` fails, but new requests are still proxied (`--drain-delay`).
    DrainDelay = 2,
    /// New requests are refused; in-flight ones finish.
    Draining = 3,
    /// Nothing more is proxied; the child is being stopped.
    Stopping = 4,
}

impl Phase {
    fn from_u8(value: u8) -> Phase {
        match value {
            0 => Phase::Starting,
            1 => Phase::Ready,
            2 => Phase::DrainDelay,
            3 => Phase::Draining,
            _ => Phase::Stopping,
        }
    }

    /// Whether a request arriving now is proxied.
    pub fn admits(self) -> bool {
        matches!(self, Phase::Ready | Phase::DrainDelay)
    }

    /// Whether shutdown has begun (responses then carry `Connection: close`).
    pub fn is_shutting_down(self) -> bool {
        self >= Phase::DrainDelay
    }
}

/// State shared by the lifecycle, the accept loop and every request.
#[derive(Debug)]
pub struct State {
    phase: AtomicU8,
    phase_tx: watch::Sender<Phase>,
    in_flight: Gauge,
    connections: Gauge,
    child_death: OnceLock<String>,
}

/// What to do with a request that is not a probe.
#[derive(Debug)]
pub enum Admission {
    /// Proxy it now.
    Now(InFlight),
    /// The backend is still starting: wait for it, then proxy.
    AfterStartup(InFlight),
    /// Shutdown is past the drain delay: answer 503.
    Refused,
}

impl State {
    pub fn new() -> Arc<State> {
        Arc::new(State {
            phase: AtomicU8::new(Phase::Starting as u8),
            phase_tx: watch::Sender::new(Phase::Starting),
            in_flight: Gauge::default(),
            connections: Gauge::default(),
            child_death: OnceLock::new(),
        })
    }

    pub fn phase(&self) -> Phase {
        Phase::from_u8(self.phase.load(SeqCst))
    }

    /// Moves to `phase`. Only the lifecycle calls this, and only forwards.
    pub fn set_phase(&self, phase: Phase) {
        self.phase.store(phase as u8, SeqCst);
        self.phase_tx.send_replace(phase);
    }

    /// Follows phase changes (connections use it to start their graceful close).
    pub fn subscribe(&self) -> watch::Receiver<Phase> {
        self.phase_tx.subscribe()
    }

    /// Counts the request in, then decides. Counting first means that once the lifecycle has moved
    /// past the drain delay and seen zero in flight, no request can still slip through.
    pub fn admit(self: &Arc<Self>) -> Admission {
        self.in_flight.count.fetch_add(1, SeqCst);
        let guard = InFlight(Arc::clone(self));
        match self.phase() {
            Phase::Starting => Admission::AfterStartup(guard),
            Phase::Ready | Phase::DrainDelay => Admission::Now(guard),
            Phase::Draining | Phase::Stopping => Admission::Refused,
        }
    }

    /// Waits until the backend is up (or startup ends another way, or `limit` passes); returns
    /// whether the request may now be proxied.
    pub async fn wait_started(&self, limit: Duration) -> bool {
        let mut phase = self.subscribe();
        let started = tokio::time::timeout(limit, phase.wait_for(|p| *p != Phase::Starting)).await;
        matches!(started, Ok(Ok(phase)) if phase.admits())
    }

    /// Proxied requests in flight (including those waiting for the backend to start).
    pub fn in_flight(&self) -> usize {
        self.in_flight.count.load(SeqCst)
    }

    /// Resolves once no proxied request is in flight.
    pub async fn wait_idle(&self) {
        self.in_flight.wait_zero().await
    }

    /// Counts one client connection for as long as the returned guard lives.
    pub fn open_connection(self: &Arc<Self>) -> Connection {
        self.connections.count.fetch_add(1, SeqCst);
        Connection(Arc::clone(self))
    }

    /// Resolves once every client connection is closed.
    pub async fn wait_connections_closed(&self) {
        self.connections.wait_zero().await
    }

    /// Records that the child has died; `/health` and `/ready` fail from now on.
    pub fn child_died(&self, reason: String) {
        let _ = self.child_death.set(reason);
    }

    /// The answer to `/ready`.
    pub fn readiness(&self) -> (StatusCode, String) {
        let status = match self.phase() {
            _ if self.child_death.get().is_some() => "draining",
            Phase::Starting => "starting",
            Phase::Ready => "ready",
            _ => "draining",
        };
        let code = if status == "ready" {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        let body = format!(
            r#"{{"status":"{status}","active_requests":{},"max_concurrency":null}}"#,
            self.in_flight()
        );
        (code, body)
    }

    /// The answer to `/health`: healthy for as long as the child lives, the whole drain included.
    pub fn health(&self) -> (StatusCode, String) {
        match self.child_death.get() {
            None => (StatusCode::OK, r#"{"status":"healthy"}"#.to_string()),
            Some(reason) => (
                StatusCode::SERVICE_UNAVAILABLE,
                serde_json::json!({"status": "unhealthy", "reason": reason}).to_string(),
            ),
        }
    }

    /// Called when a gauge drops to zero: wake the lifecycle, but only once it may be waiting,
    /// so that ordinary traffic never touches the notifier's lock.
    fn reached_zero(&self, gauge: &Gauge) {
        if self.phase().is_shutting_down() {
            gauge.zero.notify_waiters();
        }
    }
}

/// A count with a way to wait for it to reach zero.
#[derive(Debug, Default)]
struct Gauge {
    count: AtomicUsize,
    zero: Notify,
}

impl Gauge {
    async fn wait_zero(&self) {
        loop {
            let notified = self.zero.notified();
            tokio::pin!(notified);
            // Register before checking, so a decrement between the check and the await still wakes us.
            notified.as_mut().enable();
            if self.count.load(SeqCst) == 0 {
                return;
            }
            notified.await;
        }
    }

    /// Returns true when this took the count to zero.
    fn leave(&self) -> bool {
        self.count.fetch_sub(1, SeqCst) == 1
    }
}

/// One proxied request in flight; dropping it counts the request out.
#[derive(Debug)]
pub struct InFlight(Arc<State>);

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.in_flight.leave() {
            self.0.reached_zero(&self.0.in_flight);
        }
    }
}

/// One open client connection; dropping it counts the connection out.
#[derive(Debug)]
pub struct Connection(Arc<State>);

impl Drop for Connection {
    fn drop(&mut self) {
        if self.0.connections.leave() {
            self.0.reached_zero(&self.0.connections);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admission_follows_the_phase() {
        let state = State::new();
        assert!(matches!(state.admit(), Admission::AfterStartup(_)));
        state.set_phase(Phase::Ready);
        let held = state.admit();
        assert!(matches!(held, Admission::Now(_)));
        assert_eq!(state.in_flight(), 1);
        state.set_phase(Phase::DrainDelay);
        assert!(matches!(state.admit(), Admission::Now(_)));
        state.set_phase(Phase::Draining);
        assert!(matches!(state.admit(), Admission::Refused));
        assert_eq!(state.in_flight(), 1);
        drop(held);
        assert_eq!(state.in_flight(), 0);
    }

    #[test]
    fn probes_report_the_phase() {
        let state = State::new();
        assert_eq!(state.readiness().0, StatusCode::SERVICE_UNAVAILABLE);
        assert!(state.readiness().1.contains(r#""status":"starting""#));
        state.set_phase(Phase::Ready);
        assert_eq!(
            state.readiness(),
            (
                StatusCode::OK,
                r#"{"status":"ready","active_requests":0,"max_concurrency":null}"#.to_string()
            )
        );
        state.set_phase(Phase::DrainDelay);
        assert!(state.readiness().1.contains(r#""status":"draining""#));
        assert_eq!(state.health().0, StatusCode::OK);
        state.child_died("exited with status 3".into());
        assert_eq!(state.health().0, StatusCode::SERVICE_UNAVAILABLE);
        assert!(state.health().1.contains("exited with status 3"));
    }

    #[tokio::test]
    async fn wait_idle_wakes_when_the_last_request_ends() {
        let state = State::new();
        state.set_phase(Phase::Ready);
        let Admission::Now(guard) = state.admit() else {
            panic!("ready state must admit")
        };
        state.set_phase(Phase::Draining);
        let waiter = tokio::spawn({
            let state = Arc::clone(&state);
            async move { state.wait_idle().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        drop(guard);
        waiter.await.unwrap();
    }
}
