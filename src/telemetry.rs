//! What operators see of the traffic: Prometheus metrics and the access log.
//!
//! Both are off unless asked for, and then cost a few atomic operations per request: counters
//! and histogram buckets are plain atomics read at scrape time, gauges (in flight, queued, phase)
//! are read from the shared state when scraped, never updated per request.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use http::{Method, StatusCode};
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use tokio::time::Instant;
use tracing::info;

use crate::admission::Admission;
use crate::phase::{Phase, Phases};

/// Upper bounds of the request duration histogram, in seconds: from fast API calls to long
/// generations.
const BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// Metrics and access log, shared by every request.
#[derive(Debug)]
pub struct Telemetry {
    metrics: Option<Arc<Metrics>>,
    registry: Option<Registry>,
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
        let (metrics, registry) = if metrics {
            let metrics = Arc::new(Metrics::new(admission, phase));
            let mut registry = Registry::with_prefix("lameduck");
            registry.register_collector(Box::new(Arc::clone(&metrics)));
            (Some(metrics), Some(registry))
        } else {
            (None, None)
        };
        Arc::new(Telemetry {
            metrics,
            registry,
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
            metrics.cut.fetch_add(cut as u64, Relaxed);
        }
    }

    /// The exposition and its content type, or `None` when metrics are off: OpenMetrics for
    /// clients that ask for it (Prometheus does), the classic Prometheus text format otherwise.
    pub fn render(&self, openmetrics: bool) -> Option<(String, &'static str)> {
        let registry = self.registry.as_ref()?;
        let mut out = String::with_capacity(4096);
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, registry);
        Some(if openmetrics {
            (
                out,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )
        } else {
            (classic(&out), "text/plain; version=0.0.4; charset=utf-8")
        })
    }
}

/// The classic Prometheus text format (0.0.4) from OpenMetrics text: there a counter family
/// `x` has samples `x_total`; here the family itself is named `x_total`. No `# UNIT`, no `# EOF`.
fn classic(openmetrics: &str) -> String {
    let counters: Vec<&str> = openmetrics
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(&name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        out.push_str(renamed.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
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

/// The counters behind the exposition.
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_classic_format_names_counter_families_by_their_samples() {
        let openmetrics = "# HELP x_requests Requests.\n# TYPE x_requests counter\nx_requests_total{code=\"200\"} 3\n# HELP x_up Up.\n# TYPE x_up gauge\nx_up 1\n# EOF\n";
        assert_eq!(
            classic(openmetrics),
            "# HELP x_requests_total Requests.\n# TYPE x_requests_total counter\nx_requests_total{code=\"200\"} 3\n# HELP x_up Up.\n# TYPE x_up gauge\nx_up 1\n"
        );
    }
}

#[derive(Debug)]
struct Metrics {
    admission: Arc<Admission>,
    phase: Phases,
    /// Responses by status code, indexed by `code - 100`.
    by_status: Box<[AtomicU64]>,
    /// Counts per bucket of `BUCKETS` (not cumulative), plus +Inf.
    buckets: [AtomicU64; BUCKETS.len() + 1],
    duration_sum_micros: AtomicU64,
    cut: AtomicU64,
}

impl Metrics {
    fn new(admission: Arc<Admission>, phase: Phases) -> Metrics {
        Metrics {
            admission,
            phase,
            by_status: (100..600).map(|_| AtomicU64::new(0)).collect(),
            buckets: Default::default(),
            duration_sum_micros: AtomicU64::new(0),
            cut: AtomicU64::new(0),
        }
    }

    fn record(&self, status: StatusCode, elapsed: Duration) {
        // StatusCode is always within 100..=999; codes past 599 are not counted.
        if let Some(count) = self.by_status.get(usize::from(status.as_u16()) - 100) {
            count.fetch_add(1, Relaxed);
        }
        let secs = elapsed.as_secs_f64();
        let bucket = BUCKETS
            .iter()
            .position(|&le| secs <= le)
            .unwrap_or(BUCKETS.len());
        self.buckets[bucket].fetch_add(1, Relaxed);
        self.duration_sum_micros
            .fetch_add(elapsed.as_micros() as u64, Relaxed);
    }
}

impl prometheus_client::collector::Collector for Metrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let gauge = |encoder: &mut DescriptorEncoder, name, help, value: usize| {
            let metric = ConstGauge::new(value as i64);
            metric.encode(encoder.encode_descriptor(name, help, None, MetricType::Gauge)?)
        };
        gauge(
            &mut encoder,
            "requests_in_flight",
            "Proxied requests in flight, queued ones included",
            self.admission.in_flight(),
        )?;
        gauge(
            &mut encoder,
            "requests_queued",
            "Requests waiting for a concurrency slot",
            self.admission.queued(),
        )?;

        let mut family = encoder.encode_descriptor(
            "requests",
            "Requests answered, by status code",
            None,
            MetricType::Counter,
        )?;
        let mut code = String::with_capacity(3);
        for (i, count) in self.by_status.iter().enumerate() {
            let count = count.load(Relaxed);
            if count > 0 {
                code.clear();
                let _ = write!(code, "{}", i + 100);
                let labels = [("code", code.as_str())];
                ConstCounter::new(count).encode(family.encode_family(&labels)?)?;
            }
        }

        // Per-bucket counts: the encoder makes them cumulative.
        let buckets: Vec<(f64, u64)> = BUCKETS
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .zip(&self.buckets)
            .map(|(le, count)| (le, count.load(Relaxed)))
            .collect();
        let count = buckets.iter().map(|(_, n)| n).sum();
        let sum = self.duration_sum_micros.load(Relaxed) as f64 / 1e6;
        encoder
            .encode_descriptor(
                "request_duration_seconds",
                "Time from request to the end of its response",
                None,
                MetricType::Histogram,
            )?
            .encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                sum, count, &buckets, None,
            )?;

        let current = self.phase.get();
        let mut family = encoder.encode_descriptor(
            "phase",
            "The lifecycle phase lameduck is in (1 for the current one)",
            None,
            MetricType::Gauge,
        )?;
        for phase in Phase::ALL {
            let labels = [("phase", phase.name())];
            ConstGauge::new(i64::from(phase == current)).encode(family.encode_family(&labels)?)?;
        }

        ConstCounter::new(self.cut.load(Relaxed)).encode(encoder.encode_descriptor(
            "requests_cut",
            "Requests still in flight when the drain deadline (or a fast stop) cut them",
            None,
            MetricType::Counter,
        )?)
    }
}
