//! Where the speed layer stands in each partition it owns, by the store's offsets (the truth),
//! and which consumed messages it may apply.
//!
//! Kafka's group position and the store can disagree: the group's committed offset is written
//! after the store's (for monitoring), a Redis server may lose its last writes, and messages
//! fetched before a seek may still be in hand. So a message is applied only if it is the next
//! one the store expects; a gap (compaction, transaction markers) is accepted only in a batch
//! whose read began after the consumer was sought to the store's offset, so that it cannot be
//! a skip. The consumer is sought between two reads, never during one, and seeks are counted
//! (see [`crate::kafka::GroupConsumer::seeks`]): a batch read ahead before a seek is told
//! apart by the count its read began at.

use hashbrown::HashMap;

use crate::kafka::Msg;

/// One owned partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Position {
    /// The next offset the store expects (`None`: nothing applied yet).
    next: Option<i64>,
    /// The consumer's seek count once it was sought to `next` (`None`: not sought yet).
    sought_at: Option<u64>,
    /// Whether a seek to `next` was asked for and has not been reported yet.
    asked: bool,
}

/// A partition the consumer must be sought in: to `next`, or to its start for `None`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seek {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// The offset to read next.
    pub next: Option<i64>,
}

/// The owned partitions and their positions, by topic and partition (looked up per message
/// without allocating, with hashbrown's hasher: topics and partitions are the broker's, not
/// chosen by whoever writes events).
#[derive(Debug, Default)]
pub struct Positions {
    parts: HashMap<String, HashMap<i32, Position>>,
}

impl Positions {
    /// Owns `topic`/`partition` from the store's `next` offset; the consumer must be sought.
    pub fn take(&mut self, topic: &str, partition: i32, next: Option<i64>) {
        self.parts.entry(topic.to_string()).or_default().insert(
            partition,
            Position {
                next,
                sought_at: None,
                asked: false,
            },
        );
    }

    /// Gives up `topic`/`partition`.
    pub fn revoke(&mut self, topic: &str, partition: i32) {
        if let Some(t) = self.parts.get_mut(topic) {
            t.remove(&partition);
        }
    }

    /// Every owned partition.
    pub fn owned(&self) -> Vec<(String, i32)> {
        let mut v: Vec<(String, i32)> = self
            .parts
            .iter()
            .flat_map(|(t, ps)| ps.keys().map(move |p| (t.clone(), *p)))
            .collect();
        v.sort();
        v
    }

    /// Whether to apply `m`, of a batch whose read began at seek count `read_from` (messages
    /// asked in order): it must be of an owned partition and continue where the store stands.
    /// Others are dropped: already applied, not owned, or read from a position the consumer
    /// had not been sought from when the batch's read began (they are read again).
    pub fn admits(&mut self, m: &Msg, read_from: u64) -> bool {
        let Some(pos) = self
            .parts
            .get_mut(m.topic.as_str())
            .and_then(|t| t.get_mut(&m.partition))
        else {
            return false;
        };
        let ok = match pos.next {
            Some(n) if m.offset < n => false,
            Some(n) if m.offset == n => true,
            _ => pos.sought_at.is_some_and(|at| at <= read_from),
        };
        if ok {
            pos.next = Some(m.offset + 1);
        }
        ok
    }

    /// The partitions the consumer must still be sought in, to where the store stands, and
    /// not asked for yet: each is asked for now (see [`Positions::sought`] and
    /// [`Positions::not_sought`]).
    pub fn ask_seeks(&mut self) -> Vec<Seek> {
        let out = self.unsought(false);
        for p in self.parts.values_mut().flat_map(|ps| ps.values_mut()) {
            p.asked |= p.sought_at.is_none();
        }
        out
    }

    /// The partitions the consumer must still be sought in, to where the store stands (with
    /// `asked`, also those whose seek was asked for already).
    fn unsought(&self, asked: bool) -> Vec<Seek> {
        let mut v: Vec<Seek> = self
            .parts
            .iter()
            .flat_map(|(topic, ps)| {
                ps.iter()
                    .filter(move |(_, p)| p.sought_at.is_none() && (asked || !p.asked))
                    .map(move |(partition, p)| Seek {
                        topic: topic.clone(),
                        partition: *partition,
                        next: p.next,
                    })
            })
            .collect();
        v.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
        v
    }

    /// Records that the consumer was sought in `topic`/`partition` to `to`, its seek count
    /// then being `at`: batches whose read began at that count or later are read from there.
    /// A seek to a later offset than the store's (asked for before the partition was taken
    /// again) is not one: the partition is sought again.
    pub fn sought(&mut self, topic: &str, partition: i32, to: Option<i64>, at: u64) {
        if let Some(p) = self
            .parts
            .get_mut(topic)
            .and_then(|t| t.get_mut(&partition))
        {
            if to.is_none_or(|to| p.next.is_some_and(|n| to <= n)) {
                p.sought_at = Some(at);
            }
            p.asked = false;
        }
    }

    /// Records that a seek asked for in `topic`/`partition` failed (the partition was not
    /// assigned yet): it is asked for again.
    pub fn not_sought(&mut self, topic: &str, partition: i32) {
        if let Some(p) = self
            .parts
            .get_mut(topic)
            .and_then(|t| t.get_mut(&partition))
        {
            p.asked = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(p: i32, offset: i64) -> Msg {
        Msg {
            topic: "t".into(),
            partition: p,
            offset,
            payload: Vec::new(),
            timestamp_ms: None,
        }
    }

    /// The messages of `msgs` that `p` admits, in order.
    fn filter(p: &mut Positions, msgs: Vec<Msg>, read_from: u64) -> Vec<Msg> {
        msgs.into_iter()
            .filter(|m| p.admits(m, read_from))
            .collect()
    }

    fn offsets(m: &[Msg]) -> Vec<(i32, i64)> {
        m.iter().map(|m| (m.partition, m.offset)).collect()
    }

    #[test]
    fn only_what_continues_the_store_is_applied() {
        let mut p = Positions::default();
        p.take("t", 0, Some(5));
        p.take("t", 1, None);
        // before the seek: replays and jumps ahead are dropped, the exact next is kept;
        // a partition with nothing stored waits for its seek; unowned partitions are dropped
        let got = filter(
            &mut p,
            vec![
                msg(0, 3),
                msg(0, 5),
                msg(0, 6),
                msg(0, 9),
                msg(1, 7),
                msg(2, 0),
            ],
            0,
        );
        assert_eq!(offsets(&got), vec![(0, 5), (0, 6)]);
        assert_eq!(
            p.unsought(true),
            vec![
                Seek {
                    topic: "t".into(),
                    partition: 0,
                    next: Some(7)
                },
                Seek {
                    topic: "t".into(),
                    partition: 1,
                    next: None
                }
            ]
        );
        // asked for once: a seek not reported yet is not asked for again, a failed one is
        assert_eq!(p.ask_seeks().len(), 2);
        assert!(p.ask_seeks().is_empty());
        p.not_sought("t", 1);
        assert_eq!(p.ask_seeks().len(), 1);
        // a seek beyond where the store stands is no seek
        p.sought("t", 0, Some(8), 1);
        assert_eq!(p.unsought(true).len(), 2);
        p.sought("t", 0, Some(7), 1);
        p.sought("t", 1, None, 2);
        assert!(p.unsought(true).is_empty());
        // a batch whose read began before a seek ended (read ahead while the consumer was
        // sought): its gaps may be skips, so they wait
        let got = filter(&mut p, vec![msg(0, 8), msg(1, 7)], 1);
        assert_eq!(offsets(&got), vec![(0, 8)]);
        // after it: a gap is real (compaction, transaction markers)
        let got = filter(&mut p, vec![msg(0, 6), msg(0, 10), msg(1, 7), msg(1, 8)], 2);
        assert_eq!(offsets(&got), vec![(0, 10), (1, 7), (1, 8)]);
        p.revoke("t", 0);
        assert!(filter(&mut p, vec![msg(0, 11)], 2).is_empty());
        assert_eq!(p.owned(), vec![("t".to_string(), 1)]);
    }
}
