//! What operators see of the traffic: Prometheus metrics and the access log.
//!
//! Both are off unless asked for, and then cost a few atomic operations per request. Metrics are
//! kept and encoded by the `prometheus` crate, in the classic text format (0.0.4) that every
//! scraper reads; the gauges (in flight, queued, phase), the advisor's figures per request kind
//! and the drain's outcome are read from the lifecycle's parts when scraped, never updated per
//! request.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use http::{Method, StatusCode};
use prometheus::core::{Collector, Desc};
use prometheus::proto::{self, LabelPair, MetricFamily, MetricType};
use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGaugeVec, Opts, PullingGauge, Registry,
    TextEncoder,
};
use tokio::time::Instant;
use tracing::{info, warn};

use crate::admission::Admission;
use crate::advisor::{Advisor, RequestKind};
use crate::cut::{Cut, Ending};
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
    drain: Arc<DrainClock>,
}

/// The lifecycle's parts the metrics read when scraped.
#[derive(Debug)]
pub struct Parts {
    pub admission: Arc<Admission>,
    pub phase: Phases,
    pub advisor: Arc<Advisor>,
    pub cut: Arc<Cut>,
}

/// When the drain began and ended, once they have.
#[derive(Debug, Default)]
struct DrainClock(Mutex<(Option<Instant>, Option<Instant>)>);

impl DrainClock {
    fn times(&self) -> std::sync::MutexGuard<'_, (Option<Instant>, Option<Instant>)> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// How long the drain has lasted so far, or lasted; zero before it begins.
    fn duration(&self) -> Duration {
        match *self.times() {
            (Some(began), Some(ended)) => ended.saturating_duration_since(began),
            (Some(began), None) => began.elapsed(),
            (None, _) => Duration::ZERO,
        }
    }
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
    pub fn new(parts: Parts, metrics: bool, access_log: bool) -> Arc<Telemetry> {
        let drain = Arc::new(DrainClock::default());
        let metrics = metrics.then(|| Metrics::new(parts, Arc::clone(&drain)));
        Arc::new(Telemetry {
            metrics,
            access_log,
            drain,
        })
    }

    /// The drain began at `at` (the shutdown signal).
    pub fn drain_began(&self, at: Instant) {
        self.drain.times().0.get_or_insert(at);
    }

    /// The drain is over: nothing left in flight, or the cut has ended what was.
    pub fn drain_ended(&self) {
        self.drain.times().1.get_or_insert_with(Instant::now);
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
    fn new(parts: Parts, drain: Arc<DrainClock>) -> Metrics {
        let Parts {
            admission,
            phase,
            advisor,
            cut: endings,
        } = parts;
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
        let readings = Readings::new(advisor, endings, drain);
        let collectors: [Box<dyn prometheus::core::Collector>; 8] = [
            Box::new(readings),
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

/// The metrics read from the advisor, the cut and the drain's clock when scraped:
/// `requests_over_budget_total{kind}`, `request_longest_seconds{kind}`,
/// `drain_duration_seconds` and `drain_requests_total{ending}`.
#[derive(Debug)]
struct Readings {
    advisor: Arc<Advisor>,
    cut: Arc<Cut>,
    drain: Arc<DrainClock>,
    descs: [Desc; 4],
}

impl Readings {
    const FAMILIES: [(&'static str, &'static str, &'static str, MetricType); 4] = [
        (
            "requests_over_budget_total",
            "Proxied requests that ran longer than the drain budget, by kind",
            "kind",
            MetricType::COUNTER,
        ),
        (
            "request_longest_seconds",
            "The longest proxied request seen, by kind",
            "kind",
            MetricType::GAUGE,
        ),
        (
            "drain_duration_seconds",
            "How long the drain has lasted (0 before shutdown), or lasted once over",
            "",
            MetricType::GAUGE,
        ),
        (
            "drain_requests_total",
            "Requests in flight during the drain, by how they ended: completed on their own, \
             or at the cut",
            "ending",
            MetricType::COUNTER,
        ),
    ];

    fn new(advisor: Arc<Advisor>, cut: Arc<Cut>, drain: Arc<DrainClock>) -> Readings {
        let descs = Self::FAMILIES.map(|(name, help, label, _)| {
            let labels = if label.is_empty() {
                Vec::new()
            } else {
                vec![label.to_string()]
            };
            // Cannot fail: the names and labels are valid constants.
            Desc::new(name.into(), help.into(), labels, HashMap::new()).expect("a valid desc")
        });
        Readings {
            advisor,
            cut,
            drain,
            descs,
        }
    }
}

impl Collector for Readings {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let kinds = || RequestKind::ALL.iter().map(|kind| Some(kind.name()));
        let endings = Ending::ALL.iter().map(|ending| {
            let value = self.cut.ended(*ending) as f64;
            (Some(ending.name()), value)
        });
        let samples: [Vec<(Option<&str>, f64)>; 4] = [
            kinds()
                .zip(RequestKind::ALL.map(|kind| self.advisor.over_budget(kind) as f64))
                .collect(),
            kinds()
                .zip(RequestKind::ALL.map(|kind| self.advisor.longest(kind).as_secs_f64()))
                .collect(),
            vec![(None, self.drain.duration().as_secs_f64())],
            endings.collect(),
        ];
        Self::FAMILIES
            .iter()
            .zip(samples)
            .map(|((name, help, label, kind), samples)| {
                let mut family = MetricFamily::default();
                family.set_name(name.to_string());
                family.set_help(help.to_string());
                family.set_field_type(*kind);
                let metrics = samples.into_iter().map(|(value_label, value)| {
                    let mut metric = proto::Metric::default();
                    if let Some(value_label) = value_label {
                        let mut pair = LabelPair::default();
                        pair.set_name(label.to_string());
                        pair.set_value(value_label.to_string());
                        metric.set_label(vec![pair]);
                    }
                    if *kind == MetricType::COUNTER {
                        let mut counter = proto::Counter::default();
                        counter.set_value(value);
                        metric.set_counter(counter);
                    } else {
                        let mut gauge = proto::Gauge::default();
                        gauge.set_value(value);
                        metric.set_gauge(gauge);
                    }
                    metric
                });
                family.set_metric(metrics.collect());
                family
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::phase;

    /// The parts for `args` (after `lameduck`), and the phase's writer.
    fn parts(args: &[&str]) -> (phase::PhaseWriter, Parts) {
        let (writer, phases) = phase::cell();
        let advisor = Advisor::for_test(args);
        let cut = Cut::new();
        let admission = Admission::new(phases.clone(), Arc::clone(&cut), Arc::clone(&advisor), 0);
        let parts = Parts {
            admission,
            phase: phases,
            advisor,
            cut,
        };
        (writer, parts)
    }

    #[test]
    fn the_exposition_counts_by_status_and_reads_gauges_when_scraped() {
        let (writer, parts) = parts(&[]);
        let admission = Arc::clone(&parts.admission);
        let telemetry = Telemetry::new(parts, true, false);
        writer.set(phase::Phase::Ready);
        let _held = admission.admit(&Method::GET, "/");
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
            "lameduck_drain_duration_seconds 0",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
    }

    /// Requests over the drain budget are counted by kind, with the longest of each kind; the
    /// drain's length and its requests' endings are read at the scrape.
    #[tokio::test(start_paused = true)]
    async fn the_exposition_shows_requests_over_budget_and_the_drain() {
        // A 1 s drain budget.
        let (writer, parts) = parts(&["--grace-period", "3s", "--child-stop-timeout", "1s"]);
        let admission = Arc::clone(&parts.admission);
        let cut = Arc::clone(&parts.cut);
        let telemetry = Telemetry::new(parts, true, false);
        writer.set(phase::Phase::Ready);
        let admit = || match admission.admit(&Method::POST, "/generate") {
            crate::admission::Admit::Now(in_flight) => in_flight,
            other => panic!("not admitted: {other:?}"),
        };
        let (short, long) = (admit(), admit());
        let mut stream = admit();
        stream.set_kind(RequestKind::EventStream);
        tokio::time::advance(Duration::from_millis(500)).await;
        drop(short);
        tokio::time::advance(Duration::from_millis(1000)).await;
        drop(long);
        tokio::time::advance(Duration::from_millis(1000)).await;
        let draining = admit();
        let shutdown = Instant::now();
        writer.set(phase::Phase::DrainDelay);
        telemetry.drain_began(shutdown);
        drop(stream);
        tokio::time::advance(Duration::from_millis(250)).await;
        cut.now();
        drop(draining);
        cut.count(Ending::Torn);
        telemetry.drain_ended();
        tokio::time::advance(Duration::from_secs(5)).await;
        let text = telemetry.render().unwrap();
        for line in [
            "# TYPE lameduck_requests_over_budget_total counter",
            "lameduck_requests_over_budget_total{kind=\"request\"} 1",
            "lameduck_requests_over_budget_total{kind=\"event_stream\"} 1",
            "lameduck_requests_over_budget_total{kind=\"grpc\"} 0",
            "# TYPE lameduck_request_longest_seconds gauge",
            "lameduck_request_longest_seconds{kind=\"request\"} 1.5",
            "lameduck_request_longest_seconds{kind=\"event_stream\"} 2.5",
            "lameduck_request_longest_seconds{kind=\"websocket\"} 0",
            "lameduck_drain_duration_seconds 0.25",
            "lameduck_drain_requests_total{ending=\"completed\"} 1",
            "lameduck_drain_requests_total{ending=\"torn\"} 1",
            "lameduck_drain_requests_total{ending=\"sse_ended\"} 0",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
    }

    #[test]
    fn nothing_is_observed_or_rendered_when_off() {
        let (_writer, parts) = parts(&[]);
        let telemetry = Telemetry::new(parts, false, false);
        assert!(telemetry.observe(&Method::GET, "/").is_none());
        assert!(telemetry.render().is_none());
    }
}
