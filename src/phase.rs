//! Where lameduck is in its life: one `watch` cell, the only copy of the phase.
//!
//! The lifecycle holds the one [`PhaseWriter`]; everything else holds [`Phases`], which can read
//! the phase and wait for it to change but never set it.

use std::future::Future;
use std::sync::atomic::{AtomicU8, Ordering::Relaxed};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use tokio::sync::watch;

/// Where lameduck is in its lifecycle. Ordered: later phases compare greater.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// The backend is not accepting yet; requests wait for it.
    Starting,
    /// Proxying.
    Ready,
    /// Shutdown has begun: `/ready` fails, but new requests are still proxied (`--drain-delay`).
    DrainDelay,
    /// New requests are refused; in-flight ones finish.
    Draining,
    /// Nothing more is proxied; the child is being stopped.
    Stopping,
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

    /// Whether a request arriving now is proxied.
    pub fn admits(self) -> bool {
        matches!(self, Phase::Ready | Phase::DrainDelay)
    }

    /// Whether shutdown has begun (HTTP/1.1 responses then carry `Connection: close`).
    pub fn is_shutting_down(self) -> bool {
        self >= Phase::DrainDelay
    }
}

/// A new phase cell, in [`Phase::Starting`]: the writer for the lifecycle, the reader for the rest.
pub fn cell() -> (PhaseWriter, Phases) {
    let (tx, rx) = watch::channel(Phase::Starting);
    let now = Arc::new(AtomicU8::new(Phase::Starting as u8));
    (PhaseWriter(tx, Arc::clone(&now)), Phases { rx, now })
}

/// The right to move the phase on. Deliberately not `Clone`: only the lifecycle has it.
#[derive(Debug)]
pub struct PhaseWriter(watch::Sender<Phase>, Arc<AtomicU8>);

impl PhaseWriter {
    /// Moves to `phase`. Phases only move forwards; an attempt to go back is ignored.
    pub fn set(&self, phase: Phase) {
        self.0.send_if_modified(|current| {
            let forward = phase > *current;
            if forward {
                *current = phase;
                self.1.store(phase as u8, Relaxed);
            }
            forward
        });
    }

    pub fn get(&self) -> Phase {
        *self.0.borrow()
    }
}

/// A reader of the phase, cheap to clone.
#[derive(Debug, Clone)]
pub struct Phases {
    rx: watch::Receiver<Phase>,
    /// The phase as a plain atomic: read on every request, where the channel's own read would
    /// take its lock (an atomic write on a line every worker thread shares).
    now: Arc<AtomicU8>,
}

impl Phases {
    pub fn get(&self) -> Phase {
        Phase::ALL[usize::from(self.now.load(Relaxed))]
    }

    /// A receiver that wakes on every change (connections use it to start their graceful close).
    pub fn subscribe(&self) -> Subscription {
        let mut rx = self.rx.clone();
        rx.borrow_and_update();
        Subscription(rx)
    }

    /// Waits, at most `limit`, for startup to end; returns the phase it ended in, or `None` if
    /// lameduck is still starting.
    pub async fn wait_started(&self, limit: Duration) -> Option<Phase> {
        let mut rx = self.rx.clone();
        let started = tokio::time::timeout(limit, rx.wait_for(|p| *p != Phase::Starting)).await;
        match started {
            Ok(Ok(phase)) => Some(*phase),
            // The writer is gone: lameduck is stopping.
            Ok(Err(_)) => Some(Phase::Stopping),
            Err(_) => None,
        }
    }
}

/// One connection's (or task's) view of phase changes.
#[derive(Debug)]
pub struct Subscription(watch::Receiver<Phase>);

impl Subscription {
    /// Resolves once the phase has moved on since last seen, or the writer is gone (`Err`).
    /// Cheap to poll again and again, as a connection's task does on each of its wake-ups: after
    /// the first poll has registered the task, later ones only compare the channel's version
    /// (polling tokio's waiting future again would take the channel's lock every time).
    pub async fn changed(&mut self) -> Result<(), watch::error::RecvError> {
        let probe = self.0.clone();
        let mut registered = false;
        let mut changed = std::pin::pin!(self.0.changed());
        std::future::poll_fn(|cx| {
            if registered && matches!(probe.has_changed(), Ok(false)) {
                return Poll::Pending;
            }
            registered = true;
            changed.as_mut().poll(cx)
        })
        .await
    }

    /// The phase now, marked as seen.
    pub fn borrow_and_update(&mut self) -> Phase {
        *self.0.borrow_and_update()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_phase_only_moves_forwards() {
        let (writer, phases) = cell();
        assert_eq!(phases.get(), Phase::Starting);
        writer.set(Phase::Draining);
        writer.set(Phase::Ready);
        assert_eq!(phases.get(), Phase::Draining);
        assert!(!phases.get().admits());
        assert!(phases.get().is_shutting_down());
    }

    /// A subscription polled many times without a change stays pending, and wakes its task
    /// once the phase moves; the writer gone ends it.
    #[tokio::test(start_paused = true)]
    async fn a_subscription_wakes_on_a_change_however_often_it_was_polled() {
        let (writer, phases) = cell();
        let mut subscription = phases.subscribe();
        let waiter = tokio::spawn(async move {
            {
                let mut changed = std::pin::pin!(subscription.changed());
                for _ in 0..3 {
                    let polled =
                        std::future::poll_fn(|cx| Poll::Ready(changed.as_mut().poll(cx))).await;
                    assert!(polled.is_pending());
                    tokio::task::yield_now().await;
                }
                changed.await.unwrap();
            }
            let now = subscription.borrow_and_update();
            (now, subscription.changed().await.is_err())
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        writer.set(Phase::Ready);
        tokio::time::sleep(Duration::from_millis(10)).await;
        drop(writer);
        assert_eq!(waiter.await.unwrap(), (Phase::Ready, true));
        assert_eq!(phases.get(), Phase::Ready);
    }

    #[tokio::test(start_paused = true)]
    async fn requests_waiting_for_startup_learn_how_it_ended() {
        let (writer, phases) = cell();
        let waiter = tokio::spawn({
            let phases = phases.clone();
            async move { phases.wait_started(Duration::from_secs(60)).await }
        });
        tokio::task::yield_now().await;
        writer.set(Phase::Ready);
        assert_eq!(waiter.await.unwrap(), Some(Phase::Ready));
        writer.set(Phase::Draining);
        let ended = phases.wait_started(Duration::from_secs(1)).await;
        assert!(!ended.unwrap().admits());
        let (_writer, phases) = cell();
        assert_eq!(phases.wait_started(Duration::from_secs(1)).await, None);
    }
}
