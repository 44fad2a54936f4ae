//! The shared lifecycle state: the phase, in-flight and connection counting, and the answers to
//! `/ready` and `/health`.
//!
//! The lifecycle writes the phase; the request path only reads it, with one atomic load. Counting a
//! request is one atomic increment and decrement; the notification that wakes the lifecycle is
//! only sent once shutdown has begun, so the hot path never takes a lock.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{
    AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering::Relaxed, Ordering::SeqCst,
};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use http::StatusCode;
use tokio::sync::futures::OwnedNotified;
use tokio::sync::{watch, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

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
    pub const ALL: [Phase; 5] = [
        Phase::Starting,
        Phase::Ready,
        Phase::DrainDelay,
        Phase::Draining,
        Phase::Stopping,
    ];

    /// The phase's name in logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Starting => "starting",
            Phase::Ready => "ready",
            Phase::DrainDelay => "drain_delay",
            Phase::Draining => "draining",
            Phase::Stopping => "stopping",
        }
    }

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
    /// Proxied requests admitted and not finished, queued ones included.
    in_flight: Gauge,
    /// Of those, the ones waiting for a concurrency slot.
    queued: AtomicUsize,
    /// `--max-concurrency` slots, handed out first come first served; `None` without a limit.
    slots: Option<Arc<Semaphore>>,
    max_concurrency: usize,
    connections: Gauge,
    /// When the last request arrived during the drain delay, in ms since `epoch`.
    last_arrival_ms: AtomicU64,
    epoch: Instant,
    child_death: OnceLock<String>,
    /// Set at the drain deadline (or a fast stop): every request still in flight ends now, each
    /// as gracefully as its kind allows.
    cut: AtomicBool,
    cut_notify: Arc<Notify>,
    endings: [AtomicUsize; Ending::COUNT],
    /// Why the backend's own health check fails, if it does.
    backend_unhealthy: AtomicBool,
    backend_health_reason: Mutex<String>,
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

/// A concurrency slot could not be had within `--queue-timeout`.
#[derive(Debug)]
pub struct AtCapacity;

impl State {
    /// `max_concurrency`: proxied requests in flight at most; 0 for no limit.
    pub fn new(max_concurrency: usize) -> Arc<State> {
        Arc::new(State {
            phase: AtomicU8::new(Phase::Starting as u8),
            phase_tx: watch::Sender::new(Phase::Starting),
            in_flight: Gauge::default(),
            queued: AtomicUsize::new(0),
            slots: (max_concurrency > 0).then(|| Arc::new(Semaphore::new(max_concurrency))),
            max_concurrency,
            connections: Gauge::default(),
            last_arrival_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            child_death: OnceLock::new(),
            cut: AtomicBool::new(false),
            cut_notify: Arc::new(Notify::new()),
            endings: Default::default(),
            backend_unhealthy: AtomicBool::new(false),
            backend_health_reason: Mutex::new(String::new()),
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
        let guard = InFlight {
            state: Arc::clone(self),
            slot: None,
            cut: None,
        };
        match self.phase() {
            Phase::Starting => Admission::AfterStartup(guard),
            Phase::Ready => Admission::Now(guard),
            Phase::DrainDelay => {
                let now = self.epoch.elapsed().as_millis() as u64;
                self.last_arrival_ms.store(now, Relaxed);
                Admission::Now(guard)
            }
            Phase::Draining | Phase::Stopping => Admission::Refused,
        }
    }

    /// Takes a concurrency slot for an admitted request, waiting first come first served for at
    /// most `queue_timeout`. Without a limit this costs nothing.
    pub async fn take_slot(
        &self,
        in_flight: &mut InFlight,
        queue_timeout: Duration,
    ) -> Result<(), AtCapacity> {
        let Some(slots) = &self.slots else {
            return Ok(());
        };
        if let Ok(slot) = Arc::clone(slots).try_acquire_owned() {
            in_flight.slot = Some(slot);
            return Ok(());
        }
        if queue_timeout.is_zero() {
            return Err(AtCapacity);
        }
        self.queued.fetch_add(1, SeqCst);
        let waited = tokio::time::timeout(queue_timeout, Arc::clone(slots).acquire_owned()).await;
        self.queued.fetch_sub(1, SeqCst);
        match waited {
            Ok(Ok(slot)) => {
                in_flight.slot = Some(slot);
                Ok(())
            }
            // The semaphore is never closed; a timeout is the only way here.
            _ => Err(AtCapacity),
        }
    }

    /// Requests waiting for a concurrency slot.
    pub fn queued(&self) -> usize {
        self.queued.load(SeqCst)
    }

    /// How long ago the last request arrived during the drain delay (or the delay began, if
    /// none has), measured from `since`, the delay's start.
    pub fn quiet_for(&self, since: Instant) -> Duration {
        let last = self.epoch + Duration::from_millis(self.last_arrival_ms.load(Relaxed));
        since.max(last).elapsed()
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

    /// Cuts every request still in flight: each ends as gracefully as its kind allows.
    pub fn cut(&self) {
        self.cut.store(true, SeqCst);
        self.cut_notify.notify_waiters();
    }

    pub fn is_cut(&self) -> bool {
        self.cut.load(SeqCst)
    }

    /// Resolves once [`State::cut`] has been called.
    pub async fn cut_signal(&self) {
        wait_until(&self.cut_notify, || self.is_cut()).await
    }

    /// Counts how one request in flight at the cut ended.
    pub fn count_ending(&self, ending: Ending) {
        self.endings[ending as usize].fetch_add(1, Relaxed);
    }

    /// How the requests cut so far ended, for the final log line.
    pub fn endings(&self) -> String {
        Ending::ALL
            .iter()
            .map(|ending| {
                format!(
                    "{}={}",
                    ending.name(),
                    self.endings[*ending as usize].load(Relaxed)
                )
            })
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Records that the child has died; `/health` and `/ready` fail from now on.
    pub fn child_died(&self, reason: String) {
        let _ = self.child_death.set(reason);
    }

    /// Proxied requests being served (holding a slot, or not yet queued): in flight less queued.
    pub fn active(&self) -> usize {
        self.in_flight().saturating_sub(self.queued())
    }

    fn at_capacity(&self) -> bool {
        self.slots
            .as_ref()
            .is_some_and(|slots| slots.available_permits() == 0)
    }

    /// The answer to `/ready`.
    pub fn readiness(&self) -> (StatusCode, String) {
        let status = match self.phase() {
            _ if self.child_death.get().is_some() => "draining",
            Phase::Starting => "starting",
            Phase::Ready if self.at_capacity() => "at_capacity",
            Phase::Ready => "ready",
            _ => "draining",
        };
        let code = if status == "ready" {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        let max = match self.max_concurrency {
            0 => "null".to_string(),
            n => n.to_string(),
        };
        let body = format!(
            r#"{{"status":"{status}","active_requests":{},"max_concurrency":{max}}}"#,
            self.active()
        );
        (code, body)
    }

    /// The answer to `/health`: healthy for as long as the child lives, the whole drain included.
    /// A failing backend health check (`--backend-health-path`) counts only before the drain.
    pub fn health(&self) -> (StatusCode, String) {
        let reason = match self.child_death.get() {
            Some(reason) => reason.clone(),
            None if self.backend_unhealthy.load(Relaxed) && !self.phase().is_shutting_down() => {
                self.backend_health_reason
                    .lock()
                    .map(|reason| reason.clone())
                    .unwrap_or_default()
            }
            None => return (StatusCode::OK, r#"{"status":"healthy"}"#.to_string()),
        };
        (
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({"status": "unhealthy", "reason": reason}).to_string(),
        )
    }

    /// Records the outcome of the background check of the backend's own health path.
    pub fn set_backend_health(&self, failure: Option<String>) {
        if let Some(reason) = &failure {
            if let Ok(mut slot) = self.backend_health_reason.lock() {
                slot.clone_from(reason);
            }
        }
        self.backend_unhealthy.store(failure.is_some(), Relaxed);
    }

    /// Called when a gauge drops to zero: wake the lifecycle, but only once it may be waiting,
    /// so that ordinary traffic never touches the notifier's lock.
    fn reached_zero(&self, gauge: &Gauge) {
        if self.phase().is_shutting_down() {
            gauge.zero.notify_waiters();
        }
    }
}

/// How a request in flight at the cut was ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// An event stream closed after its last complete event (and the `server_restarting` event).
    SseEnded,
    /// A WebSocket sent close frames 1001 both ways.
    WebSocketClosed,
    /// A gRPC response ended with `grpc-status: 14`.
    GrpcUnavailable,
    /// A request whose response had not started got 503.
    Refused,
    /// Anything else: the body or tunnel was cut off.
    Torn,
}

impl Ending {
    const COUNT: usize = 5;
    const ALL: [Ending; Ending::COUNT] = [
        Ending::SseEnded,
        Ending::WebSocketClosed,
        Ending::GrpcUnavailable,
        Ending::Refused,
        Ending::Torn,
    ];

    fn name(self) -> &'static str {
        match self {
            Ending::SseEnded => "sse_ended",
            Ending::WebSocketClosed => "websockets_closed",
            Ending::GrpcUnavailable => "grpc_unavailable",
            Ending::Refused => "refused",
            Ending::Torn => "torn",
        }
    }
}

/// Resolves once `done()` holds, re-checking each time `notify` wakes its waiters.
async fn wait_until(notify: &Notify, done: impl Fn() -> bool) {
    loop {
        let notified = notify.notified();
        tokio::pin!(notified);
        // Register before checking, so a change between the check and the await still wakes us.
        notified.as_mut().enable();
        if done() {
            return;
        }
        notified.await;
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
        wait_until(&self.zero, || self.count.load(SeqCst) == 0).await
    }

    /// Returns true when this took the count to zero.
    fn leave(&self) -> bool {
        self.count.fetch_sub(1, SeqCst) == 1
    }
}

/// One proxied request in flight, with its concurrency slot once it has one; dropping it counts
/// the request out and frees the slot.
#[derive(Debug)]
pub struct InFlight {
    state: Arc<State>,
    slot: Option<OwnedSemaphorePermit>,
    /// Registered for the cut only once the response first waits, so responses that never wait
    /// cost nothing.
    cut: Option<Pin<Box<OwnedNotified>>>,
}

impl InFlight {
    pub fn state(&self) -> &Arc<State> {
        &self.state
    }

    pub fn is_cut(&self) -> bool {
        self.state.is_cut()
    }

    /// Ready once the cut has come; registers for a wake-up otherwise.
    pub fn poll_cut(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let notified = self.cut.get_or_insert_with(|| {
            let mut notified = Box::pin(Arc::clone(&self.state.cut_notify).notified_owned());
            // Register before checking the flag, so a cut in between still wakes us.
            notified.as_mut().enable();
            notified
        });
        if self.state.is_cut() {
            return Poll::Ready(());
        }
        notified.as_mut().poll(cx)
    }

    /// Counts how this request ended at the cut.
    pub fn count_ending(&self, ending: Ending) {
        self.state.count_ending(ending);
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.slot.take();
        if self.state.in_flight.leave() {
            self.state.reached_zero(&self.state.in_flight);
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
        let state = State::new(0);
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
        let state = State::new(0);
        assert_eq!(state.readiness().0, StatusCode::SERVICE_UNAVAILABLE);
        state.set_backend_health(Some("backend /healthz answered 500".into()));
        assert_eq!(state.health().0, StatusCode::SERVICE_UNAVAILABLE);
        state.set_backend_health(None);
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
    async fn slots_are_handed_out_first_come_first_served_and_ready_reports_capacity() {
        let state = State::new(1);
        state.set_phase(Phase::Ready);
        let Admission::Now(mut first) = state.admit() else {
            panic!("ready state must admit")
        };
        state.take_slot(&mut first, Duration::ZERO).await.unwrap();
        let (code, body) = state.readiness();
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            body,
            r#"{"status":"at_capacity","active_requests":1,"max_concurrency":1}"#
        );

        let Admission::Now(mut second) = state.admit() else {
            panic!("ready state must admit")
        };
        assert!(state.take_slot(&mut second, Duration::ZERO).await.is_err());
        let waiter = tokio::spawn({
            let state = Arc::clone(&state);
            async move {
                let result = state.take_slot(&mut second, Duration::from_secs(10)).await;
                (result.is_ok(), second)
            }
        });
        while state.queued() == 0 {
            tokio::task::yield_now().await;
        }
        assert_eq!(state.active(), 1);
        drop(first);
        let (took, second) = waiter.await.unwrap();
        assert!(took);
        assert_eq!(state.queued(), 0);
        drop(second);
        assert_eq!(state.readiness().0, StatusCode::OK);
    }

    #[tokio::test]
    async fn wait_idle_wakes_when_the_last_request_ends() {
        let state = State::new(0);
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
