//! Counters and the recent-latency window of one model, updated by slot threads and read by
//! telemetry. Counters are atomics; the window is a short mutex-guarded ring of recent requests.

use parking_lot::Mutex;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Most requests the latency window remembers.
const WINDOW_CAPACITY: usize = 4096;

/// Per-model counters since start.
#[derive(Debug)]
pub(crate) struct ModelStats {
    pub in_flight: AtomicU64,
    pub images_total: AtomicU64,
    pub batches_total: AtomicU64,
    pub rejected_total: AtomicU64,
    pub oom_events_total: AtomicU64,
    pub failed_total: AtomicU64,
    window: Mutex<LatencyWindow>,
}

impl ModelStats {
    pub fn new(window: Duration) -> Self {
        Self {
            in_flight: AtomicU64::new(0),
            images_total: AtomicU64::new(0),
            batches_total: AtomicU64::new(0),
            rejected_total: AtomicU64::new(0),
            oom_events_total: AtomicU64::new(0),
            failed_total: AtomicU64::new(0),
            window: Mutex::new(LatencyWindow::new(window)),
        }
    }

    /// Counts one refused request.
    pub fn reject(&self) {
        self.rejected_total.fetch_add(1, Ordering::Relaxed);
    }

    /// Records answered requests' enqueue-to-answer latencies.
    pub fn record_answers(&self, latencies: impl IntoIterator<Item = Duration>) {
        let now = Instant::now();
        let mut w = self.window.lock();
        let mut n = 0u64;
        for l in latencies {
            w.push(now, l);
            n += 1;
        }
        drop(w);
        self.images_total.fetch_add(n, Ordering::Relaxed);
    }

    /// (p50 ms, p99 ms, images per second) over the recent window.
    pub fn window_summary(&self) -> (f64, f64, f64) {
        self.window.lock().summary(Instant::now())
    }
}

/// Recent (completion time, latency) pairs, bounded by age and count.
#[derive(Debug)]
pub(crate) struct LatencyWindow {
    span: Duration,
    started: Instant,
    samples: VecDeque<(Instant, Duration)>,
}

impl LatencyWindow {
    pub fn new(span: Duration) -> Self {
        Self {
            span,
            started: Instant::now(),
            samples: VecDeque::new(),
        }
    }

    fn evict(&mut self, now: Instant) {
        while self.samples.len() > WINDOW_CAPACITY
            || self
                .samples
                .front()
                .is_some_and(|(t, _)| now.saturating_duration_since(*t) > self.span)
        {
            self.samples.pop_front();
        }
    }

    pub fn push(&mut self, at: Instant, latency: Duration) {
        self.samples.push_back((at, latency));
        self.evict(at);
    }

    /// (p50 ms, p99 ms, completions per second) of the samples still in the window.
    pub fn summary(&mut self, now: Instant) -> (f64, f64, f64) {
        self.evict(now);
        let mut ms: Vec<f64> = self
            .samples
            .iter()
            .map(|(_, l)| l.as_secs_f64() * 1e3)
            .collect();
        ms.sort_by(f64::total_cmp);
        // The samples cover the whole span (or the time since start), unless the count bound
        // evicted some younger than the span: then only the time since the oldest one kept.
        let covered = match self.samples.front() {
            Some((oldest, _)) if self.samples.len() >= WINDOW_CAPACITY => {
                now.saturating_duration_since(*oldest)
            }
            _ => now.saturating_duration_since(self.started).min(self.span),
        }
        .as_secs_f64();
        let rate = if covered > 0.0 {
            ms.len() as f64 / covered
        } else {
            0.0
        };
        (percentile(&ms, 0.50), percentile(&ms, 0.99), rate)
    }
}

/// Nearest-rank percentile of sorted values (0 for none).
pub(crate) fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Median of unsorted values (0 for none).
pub(crate) fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_and_median() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), 50.0);
        assert_eq!(percentile(&v, 0.99), 99.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
    }

    #[test]
    fn window_forgets_old_samples() {
        let start = Instant::now();
        let mut w = LatencyWindow::new(Duration::from_secs(10));
        w.push(start, Duration::from_millis(5));
        w.push(start + Duration::from_secs(11), Duration::from_millis(7));
        let (p50, p99, _) = w.summary(start + Duration::from_secs(11));
        assert_eq!((p50, p99), (7.0, 7.0));
    }

    #[test]
    fn the_rate_holds_beyond_the_sample_bound() {
        // 1000 answers a second for 10 s: more than the window keeps, so the rate must come from
        // the time the kept samples cover, not from the whole span.
        let start = Instant::now();
        let mut w = LatencyWindow::new(Duration::from_secs(30));
        for i in 0..10_000u64 {
            w.push(start + Duration::from_millis(i), Duration::from_millis(3));
        }
        let (_, _, rate) = w.summary(start + Duration::from_secs(10));
        assert!((rate - 1000.0).abs() < 10.0, "{rate}");
        // Below the bound, the span (here the 10 s since start) is the divisor.
        let mut w = LatencyWindow::new(Duration::from_secs(30));
        for i in 0..500u64 {
            w.push(
                start + Duration::from_millis(20 * i),
                Duration::from_millis(3),
            );
        }
        let (_, _, rate) = w.summary(start + Duration::from_secs(10));
        assert!((rate - 50.0).abs() < 1.0, "{rate}");
    }
}
