//! What a worker measures, and the summary of a workload part.
//!
//! Each worker records into its own [`Stats`] (no locks, no shared counters on the hot path);
//! the workers' stats are merged once at the end.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;
use serde_json::{Map, Value};

/// How many failed requests of each part are kept to show.
const SAMPLES_MAX: usize = 5;

/// One worker's (or, merged, one part's) measurements.
#[derive(Debug, Clone)]
pub struct Stats {
    /// Latency of successful requests, in microseconds.
    latency_us: Histogram<u64>,
    /// Requests that got an HTTP answer, whatever its status.
    pub answered: u64,
    /// Requests answered with 2xx.
    pub ok: u64,
    /// Events written or read by the successful requests.
    pub events: u64,
    /// Appends refused with `wrong_expected_version` where the workload expects that may
    /// happen: a business outcome, not a failure.
    pub conflicts: u64,
    /// Failures by `"<status> <code>"` (or `"connection"`).
    pub errors: BTreeMap<String, u64>,
    /// The first few failures, described.
    pub samples: Vec<String>,
    /// When the last measured request finished.
    pub end: Option<Instant>,
}

impl Default for Stats {
    fn default() -> Stats {
        Stats::new()
    }
}

impl Stats {
    pub fn new() -> Stats {
        Stats {
            // Three significant digits, resized as larger values arrive.
            latency_us: Histogram::new(3).expect("up to five significant digits are supported"),
            answered: 0,
            ok: 0,
            events: 0,
            conflicts: 0,
            errors: BTreeMap::new(),
            samples: Vec::new(),
            end: None,
        }
    }

    /// A successful request that took `latency` and carried `events` events.
    pub fn ok(&mut self, latency: Duration, events: u64) {
        self.answered += 1;
        self.ok += 1;
        self.events += events;
        self.record_latency(latency);
        self.end = Some(Instant::now());
    }

    /// A latency sample that is not a request (time to catch up, delivery delay).
    pub fn record_latency(&mut self, latency: Duration) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX).max(1);
        // `record` grows the histogram as needed (`saturating_record` would clamp instead).
        if self.latency_us.record(us).is_err() {
            self.latency_us.saturating_record(us);
        }
    }

    /// A request answered with a status that counts as a conflict, not a failure.
    pub fn conflict(&mut self) {
        self.answered += 1;
        self.conflicts += 1;
        self.end = Some(Instant::now());
    }

    /// A request answered with a failing status.
    pub fn failed(&mut self, key: String, sample: impl FnOnce() -> String) {
        self.answered += 1;
        self.error(key, sample);
    }

    /// A failure without an HTTP answer (connection refused, reset, stream cut short).
    pub fn error(&mut self, key: String, sample: impl FnOnce() -> String) {
        *self.errors.entry(key).or_insert(0) += 1;
        if self.samples.len() < SAMPLES_MAX {
            self.samples.push(sample());
        }
        self.end = Some(Instant::now());
    }

    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    pub fn merge(&mut self, other: &Stats) {
        // Both histograms auto-resize, so adding cannot fail for range reasons.
        let _ = self.latency_us.add(&other.latency_us);
        self.answered += other.answered;
        self.ok += other.ok;
        self.events += other.events;
        self.conflicts += other.conflicts;
        for (key, count) in &other.errors {
            *self.errors.entry(key.clone()).or_insert(0) += count;
        }
        for sample in &other.samples {
            if self.samples.len() < SAMPLES_MAX {
                self.samples.push(sample.clone());
            }
        }
        self.end = match (self.end, other.end) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
    }

    /// The time from `start` to the last measured completion.
    pub fn elapsed_since(&self, start: Instant) -> Duration {
        self.end
            .map(|end| end.saturating_duration_since(start))
            .unwrap_or_default()
    }

    /// The summary of this part over `elapsed`.
    pub fn summary(&self, elapsed: Duration) -> PartReport {
        let seconds = elapsed.as_secs_f64();
        let rate = |n: u64| if seconds > 0.0 { n as f64 / seconds } else { 0.0 };
        let ms = |us: u64| us as f64 / 1000.0;
        let h = &self.latency_us;
        let latency = if h.is_empty() {
            None
        } else {
            Some(Latency {
                samples: h.len(),
                mean_ms: h.mean() / 1000.0,
                p50_ms: ms(h.value_at_quantile(0.5)),
                p90_ms: ms(h.value_at_quantile(0.9)),
                p99_ms: ms(h.value_at_quantile(0.99)),
                p999_ms: ms(h.value_at_quantile(0.999)),
                max_ms: ms(h.max()),
            })
        };
        PartReport {
            elapsed_s: seconds,
            requests: self.answered,
            ok: self.ok,
            requests_per_s: rate(self.answered),
            events: self.events,
            events_per_s: rate(self.events),
            latency_ms: latency,
            errors: self.error_count(),
            errors_by_kind: self.errors.clone(),
            error_samples: self.samples.clone(),
            conflicts: self.conflicts,
            extra: Map::new(),
        }
    }
}

/// Latency percentiles, in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub samples: u64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

/// The summary of one part of a workload (appends, reads, a subscription).
#[derive(Debug, Clone, Serialize)]
pub struct PartReport {
    pub elapsed_s: f64,
    /// Requests answered, whatever the status.
    pub requests: u64,
    /// Requests answered with 2xx.
    pub ok: u64,
    pub requests_per_s: f64,
    pub events: u64,
    pub events_per_s: f64,
    /// Over successful requests only (what a request measures is said per workload).
    pub latency_ms: Option<Latency>,
    pub errors: u64,
    pub errors_by_kind: BTreeMap<String, u64>,
    pub error_samples: Vec<String>,
    pub conflicts: u64,
    /// Figures of this workload only (pages, verification, positions...).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl PartReport {
    pub fn with(mut self, key: &str, value: impl Into<Value>) -> PartReport {
        self.extra.insert(key.to_owned(), value.into());
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merged_stats_add_up_and_keep_few_samples() {
        let mut a = Stats::new();
        a.ok(Duration::from_millis(2), 10);
        a.failed("409 duplicate_event_id".into(), || "first".into());
        let mut b = Stats::new();
        b.ok(Duration::from_millis(4), 5);
        b.conflict();
        for i in 0..10 {
            b.error("connection".into(), || format!("reset {i}"));
        }
        a.merge(&b);
        assert_eq!((a.answered, a.ok, a.events, a.conflicts), (4, 2, 15, 1));
        assert_eq!(a.error_count(), 11);
        assert_eq!(a.samples.len(), SAMPLES_MAX);
        assert_eq!(a.samples[0], "first");
        let report = a.summary(Duration::from_secs(2));
        assert_eq!(report.events_per_s, 7.5);
        assert_eq!(report.requests_per_s, 2.0);
        let latency = report.latency_ms.expect("latency");
        assert_eq!(latency.samples, 2);
        assert!((3.9..=4.01).contains(&latency.max_ms), "{}", latency.max_ms);
        assert!((1.99..=2.01).contains(&latency.p50_ms), "{}", latency.p50_ms);
    }
}
