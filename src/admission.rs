//! Which requests are proxied: the in-flight count (and its guard), the `--max-concurrency`
//! slots with their first-come-first-served queue, the arrival times `--drain-quiet` needs, and
//! the [`ledger`] of requests in flight. When a request ends, its guard tells the [`Advisor`] how
//! long it took, and, during the drain, the [`Cut`] that it completed on its own.
//!
//! Counting a request is one atomic increment and decrement, and its entry in the ledger two
//! locks no other thread contends for.

mod ledger;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use http::Method;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::advisor::{Advisor, RequestKind};
use crate::cut::{Cut, Ending};
use crate::phase::{Phase, Phases};
pub use ledger::Oldest;
use ledger::{Ledger, Ticket};

/// Decides, for each request that is not a probe, whether it is proxied, and counts it while it is.
#[derive(Debug)]
pub struct Admission {
    phase: Phases,
    cut: Arc<Cut>,
    advisor: Arc<Advisor>,
    ledger: Ledger,
    /// Proxied requests admitted and not finished, queued ones included.
    in_flight: Gauge,
    /// Of those, the ones waiting for a concurrency slot.
    queued: AtomicUsize,
    /// `--max-concurrency` slots; `None` without a limit.
    slots: Option<Arc<Semaphore>>,
    max_concurrency: Option<usize>,
    /// When the last request arrived during the drain delay, in ms since `epoch`.
    last_arrival_ms: AtomicU64,
    epoch: Instant,
}

/// What to do with a request.
#[derive(Debug)]
pub enum Admit {
    /// Proxy it now.
    Now(InFlight),
    /// The backend is still starting: wait for it, then proxy.
    AfterStartup(InFlight),
    /// Shutdown is past the drain delay: answer 503.
    Refused,
}

#[cfg(test)]
impl Admission {
    /// An admission with a cut of its own and the default options' advisor.
    pub fn for_test(phase: Phases, max_concurrency: usize) -> Arc<Admission> {
        Admission::new(phase, Cut::new(), Advisor::for_test(&[]), max_concurrency)
    }
}

#[cfg(test)]
impl Admit {
    /// The request's guard, for a test that expects it admitted now.
    pub fn now(self) -> InFlight {
        match self {
            Admit::Now(in_flight) => in_flight,
            other => panic!("expected the request admitted now, got {other:?}"),
        }
    }
}

/// A concurrency slot could not be had within `--queue-timeout`.
#[derive(Debug)]
pub struct AtCapacity;

impl Admission {
    /// `max_concurrency`: proxied requests in flight at most; 0 for no limit.
    pub fn new(
        phase: Phases,
        cut: Arc<Cut>,
        advisor: Arc<Advisor>,
        max_concurrency: usize,
    ) -> Arc<Admission> {
        let max_concurrency = (max_concurrency > 0).then_some(max_concurrency);
        Arc::new(Admission {
            phase,
            cut,
            advisor,
            ledger: Ledger::new(),
            in_flight: Gauge::default(),
            queued: AtomicUsize::new(0),
            slots: max_concurrency.map(|n| Arc::new(Semaphore::new(n))),
            max_concurrency,
            last_arrival_ms: AtomicU64::new(0),
            epoch: Instant::now(),
        })
    }

    /// Counts the request in, then reads the phase. Counting first means that once the lifecycle
    /// has moved past the drain delay and then seen zero in flight, no request can slip through.
    pub fn admit(self: &Arc<Self>, method: &Method, path: &str) -> Admit {
        self.in_flight.enter();
        let phase = self.phase.get();
        match phase {
            Phase::Draining | Phase::Stopping => {
                self.in_flight.leave();
                return Admit::Refused;
            }
            Phase::DrainDelay => {
                let now = self.epoch.elapsed().as_millis() as u64;
                self.last_arrival_ms.store(now, Relaxed);
            }
            Phase::Starting | Phase::Ready => {}
        }
        let guard = InFlight {
            admission: Arc::clone(self),
            slot: None,
            ticket: self.ledger.enter(method, path),
            kind: RequestKind::Request,
        };
        if phase == Phase::Starting {
            Admit::AfterStartup(guard)
        } else {
            Admit::Now(guard)
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

    /// Proxied requests in flight (queued ones and those waiting for the backend to start included).
    pub fn in_flight(&self) -> usize {
        self.in_flight.get()
    }

    /// Requests waiting for a concurrency slot.
    pub fn queued(&self) -> usize {
        self.queued.load(SeqCst)
    }

    /// Requests being served (holding a slot, or not yet queued): in flight less queued.
    pub fn active(&self) -> usize {
        self.in_flight().saturating_sub(self.queued())
    }

    /// `--max-concurrency`, if set.
    pub fn max_concurrency(&self) -> Option<usize> {
        self.max_concurrency
    }

    /// Whether every concurrency slot is taken.
    pub fn at_capacity(&self) -> bool {
        self.slots
            .as_ref()
            .is_some_and(|slots| slots.available_permits() == 0)
    }

    /// How long ago the last request arrived during the drain delay (or the delay began, if
    /// none has), the delay having begun at `since`.
    pub fn quiet_for(&self, since: Instant) -> Duration {
        let last = self.epoch + Duration::from_millis(self.last_arrival_ms.load(Relaxed));
        since.max(last).elapsed()
    }

    /// Resolves once no proxied request is in flight.
    pub async fn wait_idle(&self) {
        self.in_flight.wait_zero().await
    }

    /// The request in flight the longest, and its age.
    pub fn oldest(&self) -> Option<Oldest> {
        self.ledger.oldest()
    }
}

/// One proxied request in flight, with its concurrency slot once it has one; dropping it counts
/// the request out and frees the slot.
#[derive(Debug)]
pub struct InFlight {
    admission: Arc<Admission>,
    slot: Option<OwnedSemaphorePermit>,
    ticket: Ticket,
    kind: RequestKind,
}

impl InFlight {
    /// What the request turned out to be, once its response head says.
    pub fn set_kind(&mut self, kind: RequestKind) {
        self.kind = kind;
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        // Free the slot before counting out, so a waiter for idleness never sees a held slot.
        self.slot.take();
        let admission = &*self.admission;
        let warning = admission.advisor.finished(self.kind, self.ticket.elapsed());
        let request = admission.ledger.leave(&self.ticket, warning.is_some());
        if let (Some(warning), Some(request)) = (warning, request) {
            admission.advisor.warn(warning, &request);
        }
        if admission.phase.get().is_shutting_down() && !admission.cut.has_come() {
            admission.cut.count(Ending::Completed);
        }
        admission.in_flight.leave();
    }
}

/// A count that can be waited on to reach zero. Only a count that someone waits on ever touches
/// the notifier (and its lock): ordinary traffic costs two atomic operations.
#[derive(Debug, Default)]
pub struct Gauge {
    count: AtomicUsize,
    watched: AtomicBool,
    zero: Notify,
}

impl Gauge {
    pub fn get(&self) -> usize {
        self.count.load(SeqCst)
    }

    /// Counts one in for as long as the returned guard lives.
    pub fn enter_guarded(self: &Arc<Self>) -> Counted {
        self.enter();
        Counted(Arc::clone(self))
    }

    fn enter(&self) {
        self.count.fetch_add(1, SeqCst);
    }

    fn leave(&self) {
        // SeqCst on both sides: either the waiter sees zero, or this sees the waiter.
        if self.count.fetch_sub(1, SeqCst) == 1 && self.watched.load(SeqCst) {
            self.zero.notify_waiters();
        }
    }

    /// Resolves once the count is zero.
    pub async fn wait_zero(&self) {
        self.watched.store(true, SeqCst);
        loop {
            let notified = self.zero.notified();
            tokio::pin!(notified);
            // Register before checking, so a change between the check and the await still wakes us.
            notified.as_mut().enable();
            if self.get() == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// One unit of a [`Gauge`]; dropping it counts out.
#[derive(Debug)]
pub struct Counted(Arc<Gauge>);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.leave();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::phase;

    #[test]
    fn admission_follows_the_phase() {
        let (writer, phases) = phase::cell();
        let admission = Admission::for_test(phases, 0);
        assert!(matches!(
            admission.admit(&Method::GET, "/"),
            Admit::AfterStartup(_)
        ));
        writer.set(Phase::Ready);
        let held = admission.admit(&Method::GET, "/");
        assert!(matches!(held, Admit::Now(_)));
        assert_eq!(admission.in_flight(), 1);
        writer.set(Phase::DrainDelay);
        assert!(matches!(admission.admit(&Method::GET, "/"), Admit::Now(_)));
        writer.set(Phase::Draining);
        assert!(matches!(admission.admit(&Method::GET, "/"), Admit::Refused));
        assert_eq!(admission.in_flight(), 1);
        drop(held);
        assert_eq!(admission.in_flight(), 0);
    }

    #[tokio::test]
    async fn slots_are_handed_out_first_come_first_served() {
        let (writer, phases) = phase::cell();
        writer.set(Phase::Ready);
        let admission = Admission::for_test(phases, 1);
        let mut first = admission.admit(&Method::GET, "/").now();
        admission
            .take_slot(&mut first, Duration::ZERO)
            .await
            .unwrap();
        assert!(admission.at_capacity());
        let mut second = admission.admit(&Method::GET, "/").now();
        assert!(admission
            .take_slot(&mut second, Duration::ZERO)
            .await
            .is_err());
        let waiter = tokio::spawn({
            let admission = Arc::clone(&admission);
            async move {
                let took = admission
                    .take_slot(&mut second, Duration::from_secs(10))
                    .await;
                (took.is_ok(), second)
            }
        });
        while admission.queued() == 0 {
            tokio::task::yield_now().await;
        }
        assert_eq!((admission.in_flight(), admission.active()), (2, 1));
        drop(first);
        let (took, second) = waiter.await.unwrap();
        assert!(took);
        assert_eq!(admission.queued(), 0);
        drop(second);
        assert!(!admission.at_capacity());
    }

    #[tokio::test]
    async fn wait_idle_wakes_when_the_last_request_ends() {
        let (writer, phases) = phase::cell();
        writer.set(Phase::Ready);
        let admission = Admission::for_test(phases, 0);
        let guard = admission.admit(&Method::GET, "/").now();
        let waiter = tokio::spawn({
            let admission = Arc::clone(&admission);
            async move { admission.wait_idle().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        drop(guard);
        waiter.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn quiet_time_counts_from_the_last_arrival_in_the_drain_delay() {
        let (writer, phases) = phase::cell();
        writer.set(Phase::DrainDelay);
        let admission = Admission::for_test(phases, 0);
        let since = Instant::now();
        tokio::time::advance(Duration::from_secs(3)).await;
        assert_eq!(admission.quiet_for(since), Duration::from_secs(3));
        drop(admission.admit(&Method::GET, "/"));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(admission.quiet_for(since), Duration::from_secs(1));
    }
}
