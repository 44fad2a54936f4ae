//! What operators see of the traffic: Prometheus metrics and the access log.
//!
//! Both are off unless asked for, and then cost a few atomic operations per request. Metrics are
//! kept and encoded by the `prometheus` crate, in the classic text format (0.0.4) that every
//! scraper reads; the gauges (in flight, queued, phase) are read from the lifecycle's parts when
//! scraped, never updated per request.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http::{Method, StatusCode};
use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGaugeVec, Opts, PullingGauge, Registry,
    TextEncoder,
};
use tokio::time::Instant;
use tracing::{info, warn};

use crate::admission::Admission;
use crate::phase::{Phase, Phases};

/// Upper bounds of the request duration histogram, in seconds: from fast API calls to long
/// generations.
const BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// The metrics exposition's content type.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Metrics and access log, shared by every request.
#[derive(Debug)]
pub struct Telemetry {
    metrics: Option<Metrics>,
    access_log: bool,
}

/// What is known of one request when its response ends.
#[derive(Debug)]
pub struct Observation {
    telemetry: Arc<Telemetry>,
    start: Instant,
    status: StatusCode,
    bytes: u64,
    /// Method and path, kept only for the access log.
    request: Option<Box<(Method, String)>>,
}

impl Telemetry {
    pub fn new(
        admission: Arc<Admission>,
        phase: Phases,
        metrics: bool,
        access_log: bool,
    ) -> Arc<Telemetry> {
        let metrics = metrics.then(|| Metrics::new(admission, phase));
        Arc::new(Telemetry {
            metrics,
            access_log,
        })
    }

    /// Starts observing a request, or `None` (and no cost) when neither metrics nor the access
    /// log is on.
    pub fn observe(self: &Arc<Self>, method: &Method, path: &str) -> Option<Observation> {
        if self.metrics.is_none() && !self.access_log {
            return None;
        }
        Some(Observation {
            telemetry: Arc::clone(self),
            start: Instant::now(),
            status: StatusCode::OK,
            bytes: 0,
            request: self
                .access_log
                .then(|| Box::new((method.clone(), path.to_string()))),
        })
    }

    /// Counts requests the drain deadline (or a fast stop) cut.
    pub fn record_cut(&self, cut: usize) {
        if let Some(metrics) = &self.metrics {
            metrics.cut.inc_by(cut as u64);
        }
    }

    /// Counts a request the backend failed, by its error code (`backend_refused`, ...).
    pub fn record_backend_error(&self, code: &'static str) {
        if let Some(metrics) = &self.metrics {
            metrics.backend_errors.with_label_values(&[code]).inc();
        }
    }

    /// The exposition ([`CONTENT_TYPE`]), or `None` when metrics are off.
    pub fn render(&self) -> Option<String> {
        let metrics = self.metrics.as_ref()?;
        let current = metrics.phase.get();
        for phase in Phase::ALL {
            let gauge = metrics.phases.with_label_values(&[phase.name()]);
            gauge.set(i64::from(phase == current));
        }
        let families = metrics.registry.gather();
        match TextEncoder::new().encode_to_string(&families) {
            Ok(text) => Some(text),
            Err(err) => {
                warn!(error = %err, "cannot encode the metrics");
                Some(String::new())
            }
        }
    }
}

impl Observation {
    pub fn set_status(&mut self, status: StatusCode) {
        self.status = status;
    }

    pub fn add_bytes(&mut self, n: usize) {
        self.bytes += n as u64;
    }
}

impl Drop for Observation {
    /// The response is over (complete, cut, or abandoned by the client): record it.
    fn drop(&mut self) {
        let elapsed = self.start.elapsed();
        if let Some(metrics) = &self.telemetry.metrics {
            metrics.record(self.status, elapsed);
        }
        if let Some(request) = &self.request {
            let (method, path) = &**request;
            info!(
                target: "access",
                %method,
                path,
                status = self.status.as_u16(),
                bytes = self.bytes,
                // Microsecond precision, without float noise.
                duration_ms = (elapsed.as_micros() as f64) / 1000.0,
                "request"
            );
        }
    }
}

/// The metrics, registered once in their own registry.
#[derive(Debug)]
struct Metrics {
    registry: Registry,
    phase: Phases,
    phases: IntGaugeVec,
    by_status: IntCounterVec,
    /// `by_status`'s counter for each status code (`code - 100`), looked up once: recording a
    /// response is then one atomic add, with no label hashing or lock.
    status_counters: Box<[OnceLock<IntCounter>]>,
    durations: Histogram,
    cut: IntCounter,
    backend_errors: IntCounterVec,
}

impl Metrics {
    fn new(admission: Arc<Admission>, phase: Phases) -> Metrics {
        let registry = Registry::new_custom(Some("lameduck".into()), None)
            // Cannot fail: the prefix is a valid metric name.
            .expect("a valid prefix");
        let gauge = |name: &str, help: &str, read: fn(&Admission) -> usize| {
            let admission = Arc::clone(&admission);
            let value = Box::new(move || read(&admission) as f64);
            // Cannot fail: the names are valid constants.
            PullingGauge::new(name, help, value).expect("a valid gauge")
        };
        let in_flight = gauge(
            "requests_in_flight",
            "Proxied requests in flight, queued ones included",
            Admission::in_flight,
        );
        let queued = gauge(
            "requests_queued",
            "Requests waiting for a concurrency slot",
            Admission::queued,
        );
        // Cannot fail below: names, labels and buckets are valid constants, each registered once.
        let by_status = IntCounterVec::new(
            Opts::new("requests_total", "Requests answered, by status code"),
            &["code"],
        )
        .expect("a valid counter");
        let durations = Histogram::with_opts(
            HistogramOpts::new(
                "request_duration_seconds",
                "Time from request to the end of its response",
            )
            .buckets(BUCKETS.to_vec()),
        )
        .expect("a valid histogram");
        let phases = IntGaugeVec::new(
            Opts::new(
                "phase",
                "The lifecycle phase lameduck is in (1 for the current one)",
            ),
            &["phase"],
        )
        .expect("a valid gauge");
        let cut = IntCounter::new(
            "requests_cut_total",
            "Requests still in flight when the drain deadline (or a fast stop) cut them",
        )
        .expect("a valid counter");
        let backend_errors = IntCounterVec::new(
            Opts::new(
                "backend_errors_total",
                "Requests the backend failed (or the client's body broke), by error code",
            ),
            &["detail"],
        )
        .expect("a valid counter");
        let collectors: [Box<dyn prometheus::core::Collector>; 7] = [
            Box::new(in_flight),
            Box::new(queued),
            Box::new(by_status.clone()),
            Box::new(durations.clone()),
            Box::new(phases.clone()),
            Box::new(cut.clone()),
            Box::new(backend_errors.clone()),
        ];
        for collector in collectors {
            registry.register(collector).expect("registered once");
        }
        Metrics {
            registry,
            phase,
            phases,
            by_status,
            status_counters: (100..600).map(|_| OnceLock::new()).collect(),
            durations,
            cut,
            backend_errors,
        }
    }

    fn record(&self, status: StatusCode, elapsed: Duration) {
        // StatusCode is always within 100..=999; codes past 599 are not counted.
        if let Some(counter) = self.status_counters.get(usize::from(status.as_u16()) - 100) {
            counter
                .get_or_init(|| self.by_status.with_label_values(&[status.as_str()]))
                .inc();
        }
        self.durations.observe(elapsed.as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::phase;

    #[test]
    fn the_exposition_counts_by_status_and_reads_gauges_when_scraped() {
        let (writer, phases) = phase::cell();
        let admission = Admission::new(phases.clone(), 0);
        let telemetry = Telemetry::new(Arc::clone(&admission), phases, true, false);
        writer.set(phase::Phase::Ready);
        let _held = admission.admit();
        for status in [200, 200, 503] {
            let mut observation = telemetry.observe(&Method::GET, "/").unwrap();
            observation.set_status(StatusCode::from_u16(status).unwrap());
        }
        telemetry.record_cut(2);
        let text = telemetry.render().unwrap();
        for line in [
            "# TYPE lameduck_requests_total counter",
            "lameduck_requests_total{code=\"200\"} 2",
            "lameduck_requests_total{code=\"503\"} 1",
            "lameduck_requests_in_flight 1",
            "lameduck_requests_queued 0",
            "lameduck_phase{phase=\"ready\"} 1",
            "lameduck_phase{phase=\"starting\"} 0",
            "lameduck_request_duration_seconds_count 3",
            "lameduck_request_duration_seconds_bucket{le=\"+Inf\"} 3",
            "lameduck_requests_cut_total 2",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
    }

    #[test]
    fn nothing_is_observed_or_rendered_when_off() {
        let (_writer, phases) = phase::cell();
        let telemetry = Telemetry::new(Admission::new(phases.clone(), 0), phases, false, false);
        assert!(telemetry.observe(&Method::GET, "/").is_none());
        assert!(telemetry.render().is_none());
    }
}
