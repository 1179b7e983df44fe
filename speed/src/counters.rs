//! Running totals and gauges of the speed layer, shared with `/metrics` and the status line.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the commit-latency histogram's buckets, in seconds (Prometheus `le`).
pub const LATENCY_BOUNDS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// Upper bounds of the freshness histogram's buckets, in seconds: fine enough (at most 20 %
/// apart up to a second) to read p50 and p99 from.
pub const FRESHNESS_BOUNDS: [f64; 49] = [
    0.001, 0.002, 0.003, 0.004, 0.005, 0.006, 0.007, 0.008, 0.009, 0.010, 0.012, 0.014, 0.016,
    0.018, 0.020, 0.025, 0.030, 0.035, 0.040, 0.045, 0.050, 0.060, 0.070, 0.080, 0.090, 0.100,
    0.120, 0.140, 0.160, 0.180, 0.200, 0.250, 0.300, 0.350, 0.400, 0.450, 0.500, 0.600, 0.700,
    0.800, 0.900, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0,
];

/// A latency histogram with fixed buckets (its bounds and `+Inf`).
#[derive(Debug)]
pub struct LatencyHistogram {
    bounds: &'static [f64],
    /// Per bucket (the last one is `+Inf`), the observations that fell into it (not cumulative).
    counts: Vec<AtomicU64>,
    sum_us: AtomicU64,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        LatencyHistogram::with_bounds(&LATENCY_BOUNDS)
    }
}

/// A point-in-time copy of a [`LatencyHistogram`].
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    /// The buckets' upper bounds, seconds (without `+Inf`).
    pub bounds: &'static [f64],
    /// Cumulative counts per bound, then the total (`+Inf`).
    pub cumulative: Vec<u64>,
    /// Sum of all observations, seconds.
    pub sum_s: f64,
}

impl HistogramSnapshot {
    /// The `q` quantile (0 to 1), seconds, interpolated linearly inside its bucket; `None`
    /// without observations. Past the last bound it is the last bound.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = *self.cumulative.last()?;
        if total == 0 {
            return None;
        }
        let rank = (q.clamp(0.0, 1.0) * total as f64).max(1.0);
        let mut below = 0u64;
        for (i, c) in self.cumulative.iter().enumerate() {
            if (*c as f64) >= rank {
                let Some(hi) = self.bounds.get(i) else {
                    return self.bounds.last().copied();
                };
                let lo = if i == 0 { 0.0 } else { self.bounds[i - 1] };
                let within = (*c - below) as f64;
                let frac = if within > 0.0 {
                    (rank - below as f64) / within
                } else {
                    1.0
                };
                return Some(lo + (hi - lo) * frac);
            }
            below = *c;
        }
        self.bounds.last().copied()
    }
}

impl LatencyHistogram {
    /// A histogram with buckets up to each of `bounds` (seconds, ascending) and `+Inf`.
    pub fn with_bounds(bounds: &'static [f64]) -> LatencyHistogram {
        LatencyHistogram {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_us: AtomicU64::new(0),
        }
    }

    /// Records one observation.
    pub fn observe(&self, d: Duration) {
        self.observe_times(d, 1);
    }

    /// Records `n` observations of `d` at once.
    pub fn observe_times(&self, d: Duration, n: u64) {
        if n == 0 {
            return;
        }
        let s = d.as_secs_f64();
        let i = self
            .bounds
            .iter()
            .position(|b| s <= *b)
            .unwrap_or(self.bounds.len());
        self.counts[i].fetch_add(n, Ordering::Relaxed);
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.sum_us
            .fetch_add(us.saturating_mul(n), Ordering::Relaxed);
    }

    /// Cumulative counts and the sum, as Prometheus exposes a histogram.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut acc = 0;
        let cumulative = self
            .counts
            .iter()
            .map(|c| {
                acc += c.load(Ordering::Relaxed);
                acc
            })
            .collect();
        HistogramSnapshot {
            bounds: self.bounds,
            cumulative,
            sum_s: self.sum_us.load(Ordering::Relaxed) as f64 / 1e6,
        }
    }
}

/// How far the speed layer's consumer is behind the broker in one partition.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct PartitionLag {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Messages the broker holds beyond what the consumer has read.
    pub lag: i64,
}

/// Running totals of the speed layer, for metrics and the status line.
#[derive(Debug)]
pub struct SpeedCounters {
    /// Messages consumed (every one is applied, dropped as a duplicate or quarantined).
    pub consumed: AtomicU64,
    /// Events applied to views.
    pub applied: AtomicU64,
    /// Duplicates dropped.
    pub duplicates: AtomicU64,
    /// Applied events that counted in a bucket the batch layer had already sealed (they are
    /// recomputed there too, see the late marks of the lake sink).
    pub late: AtomicU64,
    /// Events quarantined.
    pub quarantined: AtomicU64,
    /// Batches committed.
    pub batches: AtomicU64,
    /// Times the consumer's partition assignment changed.
    pub rebalances: AtomicU64,
    /// Time to commit one batch to the store.
    pub commit_latency: LatencyHistogram,
    /// Per applied event, from its message's timestamp (when it was produced) to the end of
    /// the commit that made it visible in the store.
    pub freshness: LatencyHistogram,
    lag: Mutex<BTreeMap<(String, i32), i64>>,
}

impl Default for SpeedCounters {
    fn default() -> Self {
        SpeedCounters {
            consumed: AtomicU64::new(0),
            applied: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            late: AtomicU64::new(0),
            quarantined: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            rebalances: AtomicU64::new(0),
            commit_latency: LatencyHistogram::default(),
            freshness: LatencyHistogram::with_bounds(&FRESHNESS_BOUNDS),
            lag: Mutex::new(BTreeMap::new()),
        }
    }
}

impl SpeedCounters {
    /// Records the consumer lag of partitions (replacing what was known of them).
    pub fn set_lag(&self, lags: impl IntoIterator<Item = PartitionLag>) {
        let mut m = self.lag.lock().unwrap_or_else(|e| e.into_inner());
        for l in lags {
            m.insert((l.topic, l.partition), l.lag);
        }
    }

    /// Forgets the lag of every partition (they were revoked).
    pub fn clear_lag(&self) {
        self.lag.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// The last known lag of each partition, by topic and partition.
    pub fn lag(&self) -> Vec<PartitionLag> {
        self.lag
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|((topic, partition), lag)| PartitionLag {
                topic: topic.clone(),
                partition: *partition,
                lag: *lag,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_is_cumulative_with_a_sum() {
        let h = LatencyHistogram::default();
        h.observe(Duration::from_micros(500));
        h.observe(Duration::from_millis(30));
        h.observe(Duration::from_secs(9));
        let s = h.snapshot();
        assert_eq!(s.cumulative.len(), LATENCY_BOUNDS.len() + 1);
        assert_eq!(s.cumulative[0], 1); // ≤ 1 ms
        assert_eq!(s.cumulative[4], 1); // ≤ 25 ms
        assert_eq!(s.cumulative[5], 2); // ≤ 50 ms
        assert_eq!(s.cumulative[11], 2); // ≤ 5 s
        assert_eq!(s.cumulative[12], 3); // +Inf
        assert!((s.sum_s - 9.0305).abs() < 1e-9, "{}", s.sum_s);
    }

    #[test]
    fn observations_at_once_count_as_many_apart() {
        let (apart, at_once) = (LatencyHistogram::default(), LatencyHistogram::default());
        for (d, n) in [(Duration::from_millis(3), 4), (Duration::from_secs(2), 2)] {
            for _ in 0..n {
                apart.observe(d);
            }
            at_once.observe_times(d, n);
        }
        at_once.observe_times(Duration::from_secs(1), 0);
        let (a, b) = (apart.snapshot(), at_once.snapshot());
        assert_eq!(a.cumulative, b.cumulative);
        assert!((a.sum_s - b.sum_s).abs() < 1e-12, "{} {}", a.sum_s, b.sum_s);
        assert!((b.sum_s - 4.012).abs() < 1e-9, "{}", b.sum_s);
    }

    #[test]
    fn quantiles_interpolate_inside_buckets() {
        let h = LatencyHistogram::with_bounds(&FRESHNESS_BOUNDS);
        assert_eq!(h.snapshot().quantile(0.5), None);
        for ms in 1..=100 {
            h.observe(Duration::from_micros(ms * 1_000 - 500));
        }
        let s = h.snapshot();
        let p50 = s.quantile(0.5).unwrap();
        let p99 = s.quantile(0.99).unwrap();
        assert!((p50 - 0.050).abs() < 0.002, "{p50}");
        assert!((p99 - 0.099).abs() < 0.003, "{p99}");
        h.observe(Duration::from_secs(100));
        assert_eq!(h.snapshot().quantile(1.0), Some(60.0));
    }

    #[test]
    fn lag_is_replaced_per_partition() {
        let c = SpeedCounters::default();
        let l = |p, lag| PartitionLag {
            topic: "t".into(),
            partition: p,
            lag,
        };
        c.set_lag([l(0, 5), l(1, 7)]);
        c.set_lag([l(1, 2)]);
        assert_eq!(c.lag(), vec![l(0, 5), l(1, 2)]);
        c.clear_lag();
        assert!(c.lag().is_empty());
    }
}
