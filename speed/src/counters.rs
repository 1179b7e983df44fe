//! Running totals and gauges of the speed layer, shared with `/metrics` and the status line.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the commit-latency histogram's buckets, in seconds (Prometheus `le`).
pub const LATENCY_BOUNDS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// A latency histogram with fixed buckets ([`LATENCY_BOUNDS`] and `+Inf`).
#[derive(Debug, Default)]
pub struct LatencyHistogram {
    /// Per bucket (the last one is `+Inf`), the observations that fell into it (not cumulative).
    counts: [AtomicU64; LATENCY_BOUNDS.len() + 1],
    sum_us: AtomicU64,
}

/// A point-in-time copy of a [`LatencyHistogram`].
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    /// Cumulative counts per bound of [`LATENCY_BOUNDS`], then the total (`+Inf`).
    pub cumulative: Vec<u64>,
    /// Sum of all observations, seconds.
    pub sum_s: f64,
}

impl LatencyHistogram {
    /// Records one observation.
    pub fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        let i = LATENCY_BOUNDS
            .iter()
            .position(|b| s <= *b)
            .unwrap_or(LATENCY_BOUNDS.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(
            d.as_micros().min(u64::MAX as u128) as u64,
            Ordering::Relaxed,
        );
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
#[derive(Debug, Default)]
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
    lag: Mutex<BTreeMap<(String, i32), i64>>,
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
