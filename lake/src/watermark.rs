//! A source's event-time watermark: the minimum over its Kafka partitions of the highest event
//! time each has delivered, so that a partition lagging behind its siblings holds the
//! watermark back (and no bucket is sealed before its events reach the lake).
//!
//! A partition stops holding it back when it is **idle**: nothing arrived from it for the idle
//! timeout *and* the consumer has read everything the broker has for it (as Flink's source
//! idleness, but a partition with unread data is never idle, however long the consumer takes
//! to reach it). A partition that never delivered anything counts its quiet from the first
//! time the sink looked at it. When every partition is idle, the watermark is the highest event time
//! delivered by any: everything there is has been read.

use std::collections::BTreeMap;

/// What is known of one partition.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PartitionProgress {
    /// Highest event time delivered (epoch ms), if any event was.
    pub max_time: Option<i64>,
    /// When the partition last delivered anything (epoch ms, wall clock).
    pub last_data_ms: Option<i64>,
    /// Whether the consumer has read everything the broker has for it.
    pub caught_up: bool,
    /// When the sink first looked at it (epoch ms, wall clock): a partition that has not
    /// delivered anything yet is quiet from then on.
    pub first_seen_ms: Option<i64>,
}

impl PartitionProgress {
    /// Since when the partition has been quiet: its last delivery, or, if it never
    /// delivered, the first time it was looked at; `None` if neither happened yet.
    pub fn quiet_since(&self) -> Option<i64> {
        self.last_data_ms.or(self.first_seen_ms)
    }
}

/// The watermark tracker of one source.
#[derive(Debug, Clone, Default)]
pub struct Watermarks {
    idle_ms: i64,
    partitions: BTreeMap<i32, PartitionProgress>,
}

impl Watermarks {
    /// A tracker whose partitions become idle after `idle_ms` without data.
    pub fn new(idle_ms: i64) -> Watermarks {
        Watermarks {
            idle_ms,
            partitions: BTreeMap::new(),
        }
    }

    /// Registers a partition of the source (one that may never deliver anything).
    pub fn add_partition(&mut self, partition: i32) {
        self.partitions.entry(partition).or_default();
    }

    /// `partition` delivered a message at wall-clock `now_ms`, with event time `time` if it
    /// decoded.
    pub fn observe(&mut self, partition: i32, time: Option<i64>, now_ms: i64) {
        let p = self.partitions.entry(partition).or_default();
        p.last_data_ms = Some(now_ms);
        if let Some(t) = time {
            p.max_time = Some(p.max_time.map_or(t, |m| m.max(t)));
        }
    }

    /// Records whether the consumer has read all of `partition`, as looked at `now_ms`.
    pub fn set_caught_up(&mut self, partition: i32, caught_up: bool, now_ms: i64) {
        let p = self.partitions.entry(partition).or_default();
        p.caught_up = caught_up;
        p.first_seen_ms.get_or_insert(now_ms);
    }

    /// The partitions and what is known of them.
    pub fn partitions(&self) -> &BTreeMap<i32, PartitionProgress> {
        &self.partitions
    }

    /// Read to its end and quiet for the idle timeout. A partition that has not delivered yet
    /// is no exception: it may simply not have been written to yet (its producer slower than
    /// the sink's first flush), so it too holds the watermark back for the idle timeout.
    fn idle(&self, p: &PartitionProgress, now_ms: i64) -> bool {
        p.caught_up
            && p.quiet_since()
                .is_some_and(|t| now_ms.saturating_sub(t) >= self.idle_ms)
    }

    /// The watermark at `now_ms`: the minimum over non-idle partitions of their highest
    /// event time; `None` while a non-idle partition has delivered no event yet (its time is
    /// unknown). With every partition idle, the highest event time of any.
    pub fn watermark(&self, now_ms: i64) -> Option<i64> {
        let mut active = self
            .partitions
            .values()
            .filter(|p| !self.idle(p, now_ms))
            .peekable();
        if active.peek().is_none() {
            return self.partitions.values().filter_map(|p| p.max_time).max();
        }
        active.map(|p| p.max_time).min().flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lagging_partition_holds_the_watermark_back() {
        let mut w = Watermarks::new(1_000);
        for p in 0..3 {
            w.add_partition(p);
        }
        assert_eq!(w.watermark(0), None, "nothing delivered yet");
        w.observe(0, Some(500), 0);
        w.observe(1, Some(900), 0);
        assert_eq!(w.watermark(10), None, "partition 2 has not delivered");
        w.observe(2, Some(100), 10);
        assert_eq!(w.watermark(20), Some(100));
        // out-of-order events do not move a partition's time back
        w.observe(2, Some(50), 30);
        w.observe(2, Some(300), 40);
        assert_eq!(w.watermark(50), Some(300));
        // quiet, but with unread data: still holding back
        assert_eq!(w.watermark(5_000), Some(300));
        // quiet and read to the end: idle, no longer holding back
        w.set_caught_up(2, true, 5_000);
        assert_eq!(w.watermark(5_000), Some(500));
        // it delivers again: active again
        w.observe(2, Some(350), 5_001);
        assert_eq!(w.watermark(5_002), Some(350));
        // everything idle: the highest time delivered
        for p in 0..3 {
            w.set_caught_up(p, true, 100_000);
        }
        assert_eq!(w.watermark(100_000), Some(900));
        // a partition that never delivers anything holds nothing back once read to its end
        // and quiet for the idle timeout since the sink first looked at it
        let mut w = Watermarks::new(1_000);
        w.add_partition(0);
        w.add_partition(1);
        w.set_caught_up(1, true, 0);
        w.observe(0, Some(7), 0);
        assert_eq!(w.watermark(1_000), Some(7));
    }

    /// The race a CI run hit (tests/it/lagging.rs): the sink flushes the fast partitions
    /// before the producer has written anything to the slow one, which the broker then calls
    /// read to its end. It must not count as idle at once: its events come a moment later and
    /// are older than the fast partitions' (the old code sealed buckets without them).
    #[test]
    fn a_partition_not_written_yet_is_not_idle_at_once() {
        let mut w = Watermarks::new(30_000);
        for p in 0..3 {
            w.add_partition(p);
        }
        w.observe(0, Some(100_000), 1_000);
        w.observe(1, Some(100_000), 1_000);
        w.set_caught_up(2, true, 1_000);
        assert_eq!(w.watermark(1_000), None, "partition 2 may still deliver");
        assert_eq!(w.watermark(30_999), None);
        // its events arrive, older than the others'
        w.observe(2, Some(25_000), 2_000);
        w.set_caught_up(2, false, 2_000);
        assert_eq!(w.watermark(2_000), Some(25_000));
        // a partition that stays empty stops holding back after the idle timeout
        let mut w = Watermarks::new(30_000);
        w.add_partition(0);
        w.add_partition(1);
        w.observe(0, Some(100_000), 1_000);
        w.set_caught_up(1, true, 1_000);
        assert_eq!(w.watermark(30_999), None);
        assert_eq!(w.watermark(31_000), Some(100_000));
    }
}
