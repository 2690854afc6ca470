//! The server's Prometheus metrics, hand-written in the text exposition format: request and
//! error counters, per-stage latency histograms, the batch size histogram, the queue depth and
//! the evaluation jobs by outcome.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Stages of a search request, each with its own latency histogram.
pub const STAGES: [&str; 6] = ["decode", "preprocess", "queue", "inference", "search", "total"];

/// Latency buckets (seconds): 100 µs to 10 s.
const LATENCY_BUCKETS: [f64; 15] =
    [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];
/// Batch size buckets (images per ONNX Runtime run).
const BATCH_BUCKETS: [f64; 9] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

/// A cumulative histogram with fixed upper bounds.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// Non-cumulative count per bucket, plus one for `+Inf`.
    counts: Vec<AtomicU64>,
    /// Sum of the observations in millionths (µs for latencies), to stay atomic.
    sum_micros: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, value: f64) {
        let bucket = self.bounds.iter().position(|&b| value <= b).unwrap_or(self.bounds.len());
        self.counts[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add((value.max(0.0) * 1e6).round() as u64, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        let sep = if labels.is_empty() { "" } else { "," };
        for (i, count) in self.counts.iter().enumerate() {
            cumulative += count.load(Ordering::Relaxed);
            let le = self.bounds.get(i).map_or("+Inf".to_string(), |b| b.to_string());
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {cumulative}");
        }
        let braces = if labels.is_empty() { String::new() } else { format!("{{{labels}}}") };
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum{braces} {sum}");
        let _ = writeln!(out, "{name}_count{braces} {cumulative}");
    }
}

/// One request in flight, counted until dropped.
#[derive(Debug)]
pub struct InFlight(Arc<Metrics>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// All metrics of one server.
#[derive(Debug)]
pub struct Metrics {
    /// Requests by (route, status code).
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    /// Requests received and not yet answered.
    in_flight: AtomicU64,
    /// Error responses by error kind (the `error` field of the JSON error).
    errors: Mutex<BTreeMap<String, u64>>,
    stages: Vec<Histogram>,
    batch_size: Histogram,
    queue_depth: AtomicUsize,
    queue_capacity: usize,
    shed: AtomicU64,
    index_size: AtomicU64,
    evaluations_running: AtomicU64,
    evaluations_done: AtomicU64,
    evaluations_failed: AtomicU64,
}

impl Metrics {
    pub fn new(queue_capacity: usize) -> Self {
        Metrics {
            requests: Mutex::default(),
            in_flight: AtomicU64::new(0),
            errors: Mutex::default(),
            stages: STAGES.iter().map(|_| Histogram::new(&LATENCY_BUCKETS)).collect(),
            batch_size: Histogram::new(&BATCH_BUCKETS),
            queue_depth: AtomicUsize::new(0),
            queue_capacity,
            shed: AtomicU64::new(0),
            index_size: AtomicU64::new(0),
            evaluations_running: AtomicU64::new(0),
            evaluations_done: AtomicU64::new(0),
            evaluations_failed: AtomicU64::new(0),
        }
    }

    /// Counts a request from its headers to its answer (or its end, if the client leaves).
    pub fn request_started(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(Arc::clone(self))
    }

    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    pub fn record_request(&self, route: &str, status: u16) {
        let mut requests = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        *requests.entry((route.to_string(), status)).or_default() += 1;
    }

    pub fn record_error(&self, kind: &str) {
        let mut errors = self.errors.lock().unwrap_or_else(|p| p.into_inner());
        *errors.entry(kind.to_string()).or_default() += 1;
    }

    /// Records the time of one stage (one of [`STAGES`]; others are ignored).
    pub fn record_stage(&self, stage: &str, time: Duration) {
        if let Some(i) = STAGES.iter().position(|s| *s == stage) {
            self.stages[i].observe(time.as_secs_f64());
        }
    }

    pub fn stage(&self, stage: &str) -> Option<&Histogram> {
        STAGES.iter().position(|s| *s == stage).map(|i| &self.stages[i])
    }

    pub fn record_batch(&self, images: usize) {
        self.batch_size.observe(images as f64);
    }

    pub fn batch_size(&self) -> &Histogram {
        &self.batch_size
    }

    pub fn queue_entered(&self) {
        self.queue_depth.fetch_add(1, Ordering::Relaxed);
    }

    pub fn queue_left(&self) {
        self.queue_depth.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn queue_depth(&self) -> usize {
        self.queue_depth.load(Ordering::Relaxed)
    }

    pub fn queue_capacity(&self) -> usize {
        self.queue_capacity
    }

    pub fn record_shed(&self) {
        self.shed.fetch_add(1, Ordering::Relaxed);
    }

    pub fn set_index_size(&self, items: usize) {
        self.index_size.store(items as u64, Ordering::Relaxed);
    }

    pub fn evaluation_started(&self) {
        self.evaluations_running.fetch_add(1, Ordering::Relaxed);
    }

    /// A job ended, `done` or failed.
    pub fn evaluation_finished(&self, done: bool) {
        self.evaluations_running.fetch_sub(1, Ordering::Relaxed);
        let outcome = if done { &self.evaluations_done } else { &self.evaluations_failed };
        outcome.fetch_add(1, Ordering::Relaxed);
    }

    /// The Prometheus text exposition (format 0.0.4).
    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str("# HELP hashsrv_requests_total HTTP requests by route and status.\n");
        out.push_str("# TYPE hashsrv_requests_total counter\n");
        for ((route, status), n) in self.requests.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            let _ = writeln!(out, "hashsrv_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}");
        }
        out.push_str("# HELP hashsrv_requests_in_flight Requests received and not yet answered.\n");
        out.push_str("# TYPE hashsrv_requests_in_flight gauge\n");
        let _ = writeln!(out, "hashsrv_requests_in_flight {}", self.in_flight());
        out.push_str("# HELP hashsrv_errors_total Error responses by kind.\n");
        out.push_str("# TYPE hashsrv_errors_total counter\n");
        for (kind, n) in self.errors.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            let _ = writeln!(out, "hashsrv_errors_total{{kind=\"{kind}\"}} {n}");
        }
        out.push_str("# HELP hashsrv_stage_seconds Time spent in each stage of a search request.\n");
        out.push_str("# TYPE hashsrv_stage_seconds histogram\n");
        for (stage, histogram) in STAGES.iter().zip(&self.stages) {
            histogram.render(&mut out, "hashsrv_stage_seconds", &format!("stage=\"{stage}\""));
        }
        out.push_str("# HELP hashsrv_batch_size Images per ONNX Runtime run.\n");
        out.push_str("# TYPE hashsrv_batch_size histogram\n");
        self.batch_size.render(&mut out, "hashsrv_batch_size", "");
        out.push_str("# HELP hashsrv_queue_depth Requests waiting for the batcher.\n");
        out.push_str("# TYPE hashsrv_queue_depth gauge\n");
        let _ = writeln!(out, "hashsrv_queue_depth {}", self.queue_depth());
        out.push_str("# HELP hashsrv_queue_capacity Most requests that may wait; more are shed with 503.\n");
        out.push_str("# TYPE hashsrv_queue_capacity gauge\n");
        let _ = writeln!(out, "hashsrv_queue_capacity {}", self.queue_capacity);
        out.push_str("# HELP hashsrv_shed_total Requests refused with 503 because the queue was full.\n");
        out.push_str("# TYPE hashsrv_shed_total counter\n");
        let _ = writeln!(out, "hashsrv_shed_total {}", self.shed.load(Ordering::Relaxed));
        out.push_str("# HELP hashsrv_index_items Items in the served index.\n");
        out.push_str("# TYPE hashsrv_index_items gauge\n");
        let _ = writeln!(out, "hashsrv_index_items {}", self.index_size.load(Ordering::Relaxed));
        out.push_str("# HELP hashsrv_evaluations_total Evaluation jobs that ended, by outcome.\n");
        out.push_str("# TYPE hashsrv_evaluations_total counter\n");
        for (outcome, n) in [("done", &self.evaluations_done), ("failed", &self.evaluations_failed)] {
            let _ = writeln!(out, "hashsrv_evaluations_total{{outcome=\"{outcome}\"}} {}", n.load(Ordering::Relaxed));
        }
        out.push_str("# HELP hashsrv_evaluations_running Evaluation jobs running (at most one).\n");
        out.push_str("# TYPE hashsrv_evaluations_running gauge\n");
        let _ = writeln!(out, "hashsrv_evaluations_running {}", self.evaluations_running.load(Ordering::Relaxed));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_sum_is_kept() {
        let m = Metrics::new(4);
        m.record_batch(1);
        m.record_batch(3);
        m.record_batch(3);
        m.record_batch(1000);
        let text = m.render();
        assert!(text.contains("hashsrv_batch_size_bucket{le=\"1\"} 1\n"), "{text}");
        assert!(text.contains("hashsrv_batch_size_bucket{le=\"2\"} 1\n"));
        assert!(text.contains("hashsrv_batch_size_bucket{le=\"4\"} 3\n"));
        assert!(text.contains("hashsrv_batch_size_bucket{le=\"256\"} 3\n"));
        assert!(text.contains("hashsrv_batch_size_bucket{le=\"+Inf\"} 4\n"));
        assert!(text.contains("hashsrv_batch_size_sum 1007\n"));
        assert!(text.contains("hashsrv_batch_size_count 4\n"));
    }

    #[test]
    fn requests_in_flight_are_counted_until_their_guard_drops() {
        let m = Arc::new(Metrics::new(8));
        let first = m.request_started();
        let second = m.request_started();
        assert!(m.render().contains("hashsrv_requests_in_flight 2\n"));
        drop(first);
        assert_eq!(m.in_flight(), 1);
        drop(second);
        assert!(m.render().contains("hashsrv_requests_in_flight 0\n"));
    }

    #[test]
    fn counters_and_stage_labels_render() {
        let m = Metrics::new(8);
        m.record_request("/search", 200);
        m.record_request("/search", 200);
        m.record_request("/search", 400);
        m.record_error("bad_request");
        m.record_stage("inference", Duration::from_millis(3));
        m.record_stage("no-such-stage", Duration::from_millis(3));
        m.queue_entered();
        let text = m.render();
        assert!(text.contains("hashsrv_requests_total{route=\"/search\",status=\"200\"} 2\n"));
        assert!(text.contains("hashsrv_requests_total{route=\"/search\",status=\"400\"} 1\n"));
        assert!(text.contains("hashsrv_errors_total{kind=\"bad_request\"} 1\n"));
        assert!(text.contains("hashsrv_stage_seconds_bucket{stage=\"inference\",le=\"0.0025\"} 0\n"));
        assert!(text.contains("hashsrv_stage_seconds_bucket{stage=\"inference\",le=\"0.005\"} 1\n"));
        assert!(text.contains("hashsrv_stage_seconds_count{stage=\"decode\"} 0\n"));
        assert!(text.contains("hashsrv_queue_depth 1\n"));
        assert_eq!(m.stage("inference").map(Histogram::count), Some(1));
    }

    #[test]
    fn evaluation_jobs_are_counted_by_outcome() {
        let m = Metrics::new(1);
        m.evaluation_started();
        assert!(m.render().contains("hashsrv_evaluations_running 1\n"));
        m.evaluation_finished(false);
        m.evaluation_started();
        m.evaluation_finished(true);
        m.evaluation_started();
        m.evaluation_finished(true);
        let text = m.render();
        assert!(text.contains("hashsrv_evaluations_total{outcome=\"done\"} 2\n"), "{text}");
        assert!(text.contains("hashsrv_evaluations_total{outcome=\"failed\"} 1\n"), "{text}");
        assert!(text.contains("hashsrv_evaluations_running 0\n"), "{text}");
    }
}
