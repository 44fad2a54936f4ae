//! The grace-period advisor: how long proxied requests take, per kind, against the drain budget,
//! and a warning when an ordinary request or a gRPC call outlives it, so that the operator learns
//! the grace period is too short before a deploy cuts their users' requests.
//!
//! Streams and WebSockets longer than the budget are expected (the cut ends them gracefully):
//! they are counted, never warned about. Warnings come at most once a minute, each with the
//! count of requests over the budget since the one before.
//!
//! Recording a request is a comparison and, for a new longest duration, one atomic store: no lock.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use tokio::time::Instant;
use tracing::warn;

use crate::config::{Config, Setting};
use crate::lifecycle::{self, Budget};

/// At most one warning this often.
const WARNING_INTERVAL: Duration = Duration::from_secs(60);

/// What a proxied request turned out to be, from its response head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    /// An ordinary request and response.
    Request,
    /// A `text/event-stream` response.
    EventStream,
    /// An upgraded connection (a WebSocket, or another protocol's tunnel).
    WebSocket,
    /// A gRPC call (`application/grpc`).
    Grpc,
}

impl RequestKind {
    pub const ALL: [RequestKind; 4] = [
        RequestKind::Request,
        RequestKind::EventStream,
        RequestKind::WebSocket,
        RequestKind::Grpc,
    ];

    /// The kind's name in logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            RequestKind::Request => "request",
            RequestKind::EventStream => "event_stream",
            RequestKind::WebSocket => "websocket",
            RequestKind::Grpc => "grpc",
        }
    }

    /// Whether outliving the drain budget is a problem: the cut tears an ordinary response and
    /// fails a gRPC call, while a stream or a WebSocket is ended the way its client expects.
    fn must_fit(self) -> bool {
        matches!(self, RequestKind::Request | RequestKind::Grpc)
    }
}

/// A warning due about a request that outlived the drain budget.
#[derive(Debug)]
pub struct Warning {
    kind: RequestKind,
    elapsed: Duration,
    /// Requests over the budget since the last warning, this one included.
    requests: u64,
}

/// Request durations against the drain budget, shared by every request.
#[derive(Debug)]
pub struct Advisor {
    budget: Budget,
    /// Where the grace period was set, to say how to raise it in the same words.
    grace_period: Setting,
    /// Per kind: requests over the budget, and the longest duration (µs).
    over_budget: [AtomicU64; RequestKind::ALL.len()],
    longest_us: [AtomicU64; RequestKind::ALL.len()],
    /// Requests that needed a warning since the last one was logged.
    unwarned: AtomicU64,
    /// When the next warning may be logged, in ms since `epoch`.
    next_warning_ms: AtomicU64,
    epoch: Instant,
}

impl Advisor {
    pub fn new(config: &Config, budget: &Budget) -> Advisor {
        Advisor {
            budget: budget.clone(),
            grace_period: config.setting("grace_period"),
            over_budget: Default::default(),
            longest_us: Default::default(),
            unwarned: AtomicU64::new(0),
            next_warning_ms: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    /// A request of `kind` ended after `elapsed`: records it, and returns the warning due, if
    /// one is (then [`Advisor::warn`] it, naming the request).
    pub fn finished(&self, kind: RequestKind, elapsed: Duration) -> Option<Warning> {
        let us = elapsed.as_micros().min(u128::from(u64::MAX)) as u64;
        let longest = &self.longest_us[kind as usize];
        // Two racing writers may each store a new longest and the larger lose: rare, and only
        // this gauge can be off, by less than the race's window.
        if us > longest.load(Relaxed) {
            longest.store(us, Relaxed);
        }
        if elapsed <= self.budget.drain {
            return None;
        }
        self.over_budget[kind as usize].fetch_add(1, Relaxed);
        if !kind.must_fit() {
            return None;
        }
        self.unwarned.fetch_add(1, Relaxed);
        let now_ms = self.epoch.elapsed().as_millis() as u64;
        let next = self.next_warning_ms.load(Relaxed);
        let after = now_ms + WARNING_INTERVAL.as_millis() as u64;
        let due = now_ms >= next
            && self
                .next_warning_ms
                .compare_exchange(next, after, Relaxed, Relaxed)
                .is_ok();
        due.then(|| Warning {
            kind,
            elapsed,
            requests: self.unwarned.swap(0, Relaxed),
        })
    }

    /// Logs `warning` about `request` (`GET /path`).
    pub fn warn(&self, warning: Warning, request: &str) {
        let covering = self.budget.covering(warning.elapsed);
        warn!(
            request,
            kind = %warning.kind.name(),
            duration = %format_args!("{:.1}s", warning.elapsed.as_secs_f64()),
            drain_budget = %lifecycle::show(self.budget.drain),
            grace_period = %lifecycle::show(self.budget.grace_period),
            covering_grace_period = %lifecycle::show(covering),
            over_budget_since_last_warning = warning.requests,
            "a request outlived the drain budget: a SIGTERM at its start would have cut it. \
             To let such requests finish, set {} (and give the platform as long from SIGTERM \
             to SIGKILL)",
            self.grace_period.set_to(covering)
        );
    }

    /// The advisor for lameduck's options `args` (after the program's name), for tests.
    #[cfg(test)]
    pub fn for_test(args: &[&str]) -> std::sync::Arc<Advisor> {
        let config = Config::parse_from(std::iter::once("lameduck").chain(args.iter().copied()))
            .expect("the options parse");
        let budget = Budget::fit(&config).expect("the options fit");
        std::sync::Arc::new(Advisor::new(&config, &budget))
    }

    /// Requests of `kind` that outlived the drain budget.
    pub fn over_budget(&self, kind: RequestKind) -> u64 {
        self.over_budget[kind as usize].load(Relaxed)
    }

    /// The longest duration seen of a request of `kind`.
    pub fn longest(&self, kind: RequestKind) -> Duration {
        Duration::from_micros(self.longest_us[kind as usize].load(Relaxed))
    }
}
