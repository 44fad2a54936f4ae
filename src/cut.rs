//! The cut: at the drain deadline (or a fast stop) every request still in flight is ended, each
//! as gracefully as its kind allows, and how each one ended is counted for the final log line
//! and the metrics, beside the requests that completed on their own during the drain.
//!
//! The lifecycle calls [`Cut::now`] once; the request path waits for it ([`Cut::signal`] in async
//! code, [`CutWatch`] in poll-based bodies) and reports each [`Ending`].

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

/// The cut, shared by the lifecycle and every request.
#[derive(Debug, Default)]
pub struct Cut {
    token: CancellationToken,
    endings: [AtomicUsize; Ending::ALL.len()],
}

/// How a request in flight during the drain ended: on its own, or at the cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// Completed during the drain, before the cut.
    Completed,
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
    pub const ALL: [Ending; 6] = [
        Ending::Completed,
        Ending::SseEnded,
        Ending::WebSocketClosed,
        Ending::GrpcUnavailable,
        Ending::Refused,
        Ending::Torn,
    ];

    /// The ending's name in logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Ending::Completed => "completed",
            Ending::SseEnded => "sse_ended",
            Ending::WebSocketClosed => "websockets_closed",
            Ending::GrpcUnavailable => "grpc_unavailable",
            Ending::Refused => "refused",
            Ending::Torn => "torn",
        }
    }
}

impl Cut {
    pub fn new() -> Arc<Cut> {
        Arc::default()
    }

    /// Cuts every request still in flight.
    pub fn now(&self) {
        self.token.cancel();
    }

    pub fn has_come(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Resolves once the cut has come.
    pub async fn signal(&self) {
        self.token.cancelled().await
    }

    /// A watch for code that polls (response bodies): it registers for the wake-up only when
    /// first polled, so responses that never wait cost nothing.
    pub fn watch(self: &Arc<Self>) -> CutWatch {
        CutWatch {
            cut: Arc::clone(self),
            wait: None,
        }
    }

    /// Counts how one request ended.
    pub fn count(&self, ending: Ending) {
        self.endings[ending as usize].fetch_add(1, Relaxed);
    }

    /// How many requests ended so.
    pub fn ended(&self, ending: Ending) -> usize {
        self.endings[ending as usize].load(Relaxed)
    }

    /// How the requests cut so far ended, as `name=count` pairs for the log.
    pub fn endings(&self) -> Endings<'_> {
        Endings(self)
    }
}

/// The ending counts, displayed as `completed=3 sse_ended=1 websockets_closed=0 ...`.
pub struct Endings<'a>(&'a Cut);

impl fmt::Display for Endings<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, ending) in Ending::ALL.iter().enumerate() {
            let count = self.0.endings[*ending as usize].load(Relaxed);
            let sep = if i == 0 { "" } else { " " };
            write!(f, "{sep}{}={count}", ending.name())?;
        }
        Ok(())
    }
}

/// A response body's view of the cut.
#[derive(Debug)]
pub struct CutWatch {
    cut: Arc<Cut>,
    wait: Option<Pin<Box<WaitForCancellationFutureOwned>>>,
}

impl CutWatch {
    pub fn has_come(&self) -> bool {
        self.cut.has_come()
    }

    /// Ready once the cut has come; registers for a wake-up otherwise.
    pub fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.cut.has_come() {
            return Poll::Ready(());
        }
        let token = &self.cut.token;
        let wait = self
            .wait
            .get_or_insert_with(|| Box::pin(token.clone().cancelled_owned()));
        wait.as_mut().poll(cx)
    }

    /// Counts how this request ended at the cut.
    pub fn count(&self, ending: Ending) {
        self.cut.count(ending);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waiters_wake_at_the_cut_and_endings_are_counted() {
        let cut = Cut::new();
        let waiter = tokio::spawn({
            let cut = Arc::clone(&cut);
            async move { cut.signal().await }
        });
        let mut watch = cut.watch();
        assert!(watch
            .poll(&mut Context::from_waker(std::task::Waker::noop()))
            .is_pending());
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        cut.now();
        waiter.await.unwrap();
        assert!(watch
            .poll(&mut Context::from_waker(std::task::Waker::noop()))
            .is_ready());
        watch.count(Ending::SseEnded);
        cut.count(Ending::Torn);
        assert_eq!(
            cut.endings().to_string(),
            "completed=0 sse_ended=1 websockets_closed=0 grpc_unavailable=0 refused=0 torn=1"
        );
    }
}
