//! Where the speed layer stands in each partition it owns, by the store's offsets (the truth),
//! and which consumed messages it may apply.
//!
//! Kafka's group position and the store can disagree: the group's committed offset is written
//! after the store's (for monitoring), a Redis server may lose its last writes, and messages
//! fetched before a seek may still be in hand. So a message is applied only if it is the next
//! one the store expects; a gap (compaction, transaction markers) is accepted only once the
//! consumer has been sought to the store's offset, so that it cannot be a skip.

use std::collections::HashMap;

use crate::kafka::Msg;

/// One owned partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Position {
    /// The next offset the store expects (`None`: nothing applied yet).
    next: Option<i64>,
    /// Whether the consumer was sought to `next` before the batch being filtered was read.
    sought: bool,
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
/// without allocating).
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
                sought: false,
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

    /// The messages of `msgs` to apply, in order: those of owned partitions that continue
    /// where the store stands. Others are dropped: already applied, not owned, or read from a
    /// position the consumer has not been sought from yet (they are read again).
    pub fn filter(&mut self, msgs: Vec<Msg>) -> Vec<Msg> {
        msgs.into_iter()
            .filter(|m| {
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
                    _ => pos.sought,
                };
                if ok {
                    pos.next = Some(m.offset + 1);
                }
                ok
            })
            .collect()
    }

    /// The partitions the consumer must still be sought in, to where the store stands.
    pub fn unsought(&self) -> Vec<Seek> {
        let mut v: Vec<Seek> = self
            .parts
            .iter()
            .flat_map(|(topic, ps)| {
                ps.iter()
                    .filter(|(_, p)| !p.sought)
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

    /// Records that the consumer was sought in `topic`/`partition`.
    pub fn sought(&mut self, topic: &str, partition: i32) {
        if let Some(p) = self
            .parts
            .get_mut(topic)
            .and_then(|t| t.get_mut(&partition))
        {
            p.sought = true;
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
        let got = p.filter(vec![
            msg(0, 3),
            msg(0, 5),
            msg(0, 6),
            msg(0, 9),
            msg(1, 7),
            msg(2, 0),
        ]);
        assert_eq!(offsets(&got), vec![(0, 5), (0, 6)]);
        assert_eq!(
            p.unsought(),
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
        p.sought("t", 0);
        p.sought("t", 1);
        // after it: a gap is real (compaction, transaction markers)
        let got = p.filter(vec![msg(0, 6), msg(0, 8), msg(1, 7), msg(1, 8)]);
        assert_eq!(offsets(&got), vec![(0, 8), (1, 7), (1, 8)]);
        p.revoke("t", 0);
        assert!(p.filter(vec![msg(0, 9)]).is_empty());
        assert_eq!(p.owned(), vec![("t".to_string(), 1)]);
    }
}
