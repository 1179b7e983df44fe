//! Turning consumed messages into one atomic [`SpeedBatch`]: decode (bad → quarantine),
//! drop duplicate event ids (within the batch and against the store), and fold each event's
//! contributions into per-bucket partial states with the shared measure algebra.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::hash::BuildHasher as _;

use compact_str::CompactString;
use duet_config::DecodeError;
use duet_config::decode::Keep;
use duet_config::{Config, Event, Source, State, ViewSpec};

use crate::error::{Error, Result};
use crate::kafka::Msg;
use crate::store::{
    PartitionBatch, PartitionKey, Quarantined, Release, SeenId, SpeedBatch, StateKey, ViewStore,
};

/// Batches of at least this many messages are decoded on all cores.
const PARALLEL_FROM: usize = 256;

/// What one thread folded: the shares of its partitions (by index), and how many of its
/// events were late.
#[derive(Default)]
struct Folded {
    shares: HashMap<usize, PartitionBatch>,
    late: u64,
}

/// The states a batch adds to one partition, view, bucket and dimension key.
struct Delta {
    part: usize,
    view: usize,
    bucket: i64,
    dims: duet_config::DimKey,
    states: Vec<State>,
}

impl Delta {
    fn hash(&self, hasher: &hashbrown::DefaultHashBuilder) -> u64 {
        delta_hash(
            hasher,
            self.part,
            self.view,
            self.bucket,
            self.dims.iter().map(Option::as_deref),
        )
    }
}

/// The hash of a delta's key, from its dimension keys as they are read or kept.
fn delta_hash<'k>(
    hasher: &hashbrown::DefaultHashBuilder,
    part: usize,
    view: usize,
    bucket: i64,
    dims: impl Iterator<Item = Option<&'k str>>,
) -> u64 {
    use std::hash::{BuildHasher, Hash, Hasher};
    let mut h = hasher.build_hasher();
    (part, view, bucket).hash(&mut h);
    for d in dims {
        d.hash(&mut h);
    }
    h.finish()
}

/// One question to the store: which of these events' ids it has seen, in one partition (by
/// index) and source.
struct Ask<'a> {
    part: usize,
    source: &'a str,
    /// Indices of the events asked about.
    events: Vec<usize>,
}

/// Counts of what a batch did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchStats {
    /// Events applied.
    pub applied: u64,
    /// Duplicates dropped.
    pub duplicates: u64,
    /// Events quarantined.
    pub quarantined: u64,
    /// Applied events that counted in a bucket already sealed by the batch layer.
    pub late: u64,
}

/// Event ids of batches not committed yet, per source: the next batch counts them as seen.
pub type PendingIds = hashbrown::HashMap<String, hashbrown::HashSet<CompactString>>;

/// The ids `batch` remembers, per source.
pub fn pending_ids(batch: &SpeedBatch) -> PendingIds {
    let mut out = PendingIds::new();
    for s in batch.parts.values().flat_map(|p| p.seen.iter()) {
        // the source name is copied only for its first id
        out.entry_ref(s.source.as_str())
            .or_default()
            .insert(s.id.clone());
    }
    out
}

/// Messages read from Kafka and decoded, ahead of the batch they are built into: the speed
/// layer decodes the next batch while it folds and commits the one before.
pub struct Decoded {
    /// The messages, in the order read.
    msgs: Vec<Msg>,
    /// For each message, for each source of its topic in turn: the event, or why it is
    /// refused.
    events: Vec<std::result::Result<Event, DecodeError>>,
}

impl Decoded {
    /// How many messages there are.
    pub fn len(&self) -> usize {
        self.msgs.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.msgs.is_empty()
    }

    /// The messages' timestamps (those that have one).
    pub fn timestamps(&self) -> Vec<i64> {
        self.msgs.iter().filter_map(|m| m.timestamp_ms).collect()
    }
}

/// A source as the speed layer reads it: what it keeps of an event, and the views it feeds.
struct Reader {
    source: Source,
    keep: Keep,
    /// Indices into [`Aggregator::views`].
    views: Vec<usize>,
}

/// The speed layer's compiled form of a config.
pub struct Aggregator {
    /// Per topic, the sources read from it (a handful of topics: found by a scan, cheaper
    /// than hashing the topic of every message).
    by_topic: Vec<(String, Vec<Reader>)>,
    /// Every view, in config order.
    views: Vec<ViewSpec>,
    /// Threads a large batch is decoded and folded on (the machine's cores).
    threads: usize,
    group: String,
    sealed_retention_ms: i64,
    quarantine_cap: usize,
    quarantine_retention_ms: i64,
}

impl Aggregator {
    /// Compiles the sources and views of `cfg` for consumer group `group`.
    pub fn new(cfg: &Config, group: &str) -> Aggregator {
        // each source decodes only what its views read (and checks the rest)
        let mut by_topic: Vec<(String, Vec<Reader>)> = Vec::new();
        for s in &cfg.sources {
            let views: Vec<usize> = (0..cfg.views.len())
                .filter(|&i| cfg.views[i].source == s.name)
                .collect();
            let reader = Reader {
                source: s.clone(),
                keep: s.keep(views.iter().map(|&i| &cfg.views[i])),
                views,
            };
            match by_topic.iter_mut().find(|(t, _)| *t == s.topic) {
                Some((_, list)) => list.push(reader),
                None => by_topic.push((s.topic.clone(), vec![reader])),
            }
        }
        Aggregator {
            by_topic,
            views: cfg.views.clone(),
            threads: std::thread::available_parallelism().map_or(1, usize::from),
            group: group.to_string(),
            sealed_retention_ms: cfg.sealed_retention_ms,
            quarantine_cap: cfg.speed.quarantine_cap,
            quarantine_retention_ms: cfg.quarantine_retention_ms,
        }
    }

    /// The same, decoding and folding on `threads` threads (at least one) instead of one per
    /// core: the benchmark times the hot path on one.
    pub fn with_threads(mut self, threads: usize) -> Aggregator {
        self.threads = threads.max(1);
        self
    }

    /// The sources read from `topic` (none for a topic not consumed).
    fn sources_of(&self, topic: &str) -> &[Reader] {
        self.by_topic
            .iter()
            .find(|(t, _)| t == topic)
            .map_or(&[], |(_, list)| list.as_slice())
    }

    /// The topics to consume.
    pub fn topics(&self) -> Vec<String> {
        let mut t: Vec<String> = self.by_topic.iter().map(|(t, _)| t.clone()).collect();
        t.sort();
        t
    }

    /// Decodes `msgs`, received at `now_ms` (the produce time of messages without a
    /// timestamp), for [`Aggregator::build_decoded`].
    pub fn decode(&self, msgs: Vec<Msg>, now_ms: i64) -> Decoded {
        let events = self.decode_all(&msgs, now_ms);
        Decoded { msgs, events }
    }

    /// The messages of `decoded` for which `keep` says yes (asked in order), with their
    /// events; `decoded` itself, not moved into new lists, when it says yes to all.
    pub fn retain(&self, decoded: Decoded, mut keep: impl FnMut(&Msg) -> bool) -> Decoded {
        let kept: Vec<bool> = decoded.msgs.iter().map(&mut keep).collect();
        if kept.iter().all(|k| *k) {
            return decoded;
        }
        let mut kept = kept.into_iter();
        let mut out = Decoded {
            msgs: Vec::with_capacity(decoded.msgs.len()),
            events: Vec::with_capacity(decoded.events.len()),
        };
        let mut events = decoded.events.into_iter();
        for m in decoded.msgs {
            let n = self.sources_of(&m.topic).len();
            if kept.next().unwrap_or(false) {
                out.events.extend(events.by_ref().take(n));
                out.msgs.push(m);
            } else {
                events.by_ref().take(n).for_each(drop);
            }
        }
        out
    }

    /// Every message decoded by every source of its topic, in that order; on all cores
    /// when there are enough messages to share.
    fn decode_all(
        &self,
        msgs: &[Msg],
        now_ms: i64,
    ) -> Vec<std::result::Result<Event, DecodeError>> {
        let decode = |part: &[Msg]| -> Vec<_> {
            let mut out = Vec::with_capacity(part.len());
            for m in part {
                for r in self.sources_of(&m.topic) {
                    out.push(
                        r.source
                            .decode_keeping(&m.payload, m.produced_ms(now_ms), &r.keep),
                    );
                }
            }
            out
        };
        if self.threads < 2 || msgs.len() < PARALLEL_FROM {
            return decode(msgs);
        }
        let chunk = msgs.len().div_ceil(self.threads);
        std::thread::scope(|scope| {
            let mut parts = msgs.chunks(chunk);
            let first = parts.next().unwrap_or_default();
            let others: Vec<_> = parts.map(|p| scope.spawn(move || decode(p))).collect();
            let mut out = decode(first);
            for h in others {
                match h.join() {
                    Ok(mut v) => out.append(&mut v),
                    Err(panic) => std::panic::resume_unwind(panic),
                }
            }
            out
        })
    }

    /// Folds applied events (partition index, source, event) into their partitions' deltas
    /// and remembered ids. A row of an event is merged into its delta where it is read,
    /// without building its states or its key (see [`duet_config::RowRef::add_to`]).
    ///
    /// With `per_partition` false, the deltas of all the partitions in `events` are folded
    /// into one set, kept in the share of the first of them (see
    /// [`ViewStore::states_per_partition`]).
    fn fold(
        &self,
        events: Vec<(usize, &Reader, Event)>,
        sealed_until: &BTreeMap<String, i64>,
        per_partition: bool,
    ) -> Result<Folded> {
        let merged_into = events.first().map_or(0, |(part, _, _)| *part);
        let mut out = Folded::default();
        let hasher = hashbrown::DefaultHashBuilder::default();
        let mut deltas: hashbrown::HashTable<Delta> = hashbrown::HashTable::new();
        // per view (by index), the end of its sealed range
        let sealed: Vec<Option<i64>> = self
            .views
            .iter()
            .map(|v| sealed_until.get(&v.name).copied())
            .collect();
        for (part, reader, ev) in events {
            let delta_part = if per_partition { part } else { merged_into };
            let mut releases = smallvec::SmallVec::new();
            let mut late = false;
            for &vi in &reader.views {
                let view = &self.views[vi];
                let mut last_end = None;
                let mut failed = None;
                view.each_row(&ev, |row| {
                    last_end = last_end.max(Some(row.bucket + view.bucket_ms));
                    // the row's dimension keys, read once for the hash and the comparison
                    let keys: smallvec::SmallVec<[Option<Cow<'_, str>>; 4]> =
                        (0..view.dimensions.len())
                            .map(|i| row.dim(i).key_str())
                            .collect();
                    let h = delta_hash(
                        &hasher,
                        delta_part,
                        vi,
                        row.bucket,
                        keys.iter().map(Option::as_deref),
                    );
                    let found = deltas.find_mut(h, |d| {
                        d.part == delta_part
                            && d.view == vi
                            && d.bucket == row.bucket
                            && d.dims
                                .iter()
                                .zip(&keys)
                                .all(|(k, key)| k.as_deref() == key.as_deref())
                    });
                    let merged = match found {
                        Some(d) => row.add_to(&mut d.states),
                        None => {
                            deltas.insert_unique(
                                h,
                                Delta {
                                    part: delta_part,
                                    view: vi,
                                    bucket: row.bucket,
                                    dims: keys
                                        .iter()
                                        .map(|k| k.as_deref().map(str::to_string))
                                        .collect(),
                                    states: row.states(),
                                },
                                |d| d.hash(&hasher),
                            );
                            Ok(())
                        }
                    };
                    if let Err(source) = merged {
                        failed.get_or_insert(source);
                    }
                });
                if let Some(source) = failed {
                    return Err(Error::Merge {
                        view: view.name.clone(),
                        source,
                    });
                }
                if let Some(bucket_end) = last_end {
                    late |= sealed[vi].is_some_and(|sealed| bucket_end <= sealed);
                    releases.push(Release {
                        view: CompactString::new(&view.name),
                        bucket_end,
                    });
                }
            }
            out.late += u64::from(late);
            // an event that counts in no bucket needs no dedup: a copy would count in none
            if !releases.is_empty() {
                out.shares.entry(part).or_default().seen.push(SeenId {
                    source: CompactString::new(&reader.source.name),
                    id: ev.id,
                    releases,
                });
            }
        }
        for d in deltas {
            let view = &self.views[d.view];
            out.shares.entry(d.part).or_default().deltas.insert(
                StateKey {
                    view: view.name.clone(),
                    bucket: d.bucket,
                    dims: d.dims,
                },
                d.states,
            );
        }
        Ok(out)
    }

    /// Builds the batch for `msgs`, consulting `store` for ids seen in earlier batches;
    /// `sealed_until` (per view, the end of its contiguous sealed range) lets the store forget
    /// ids no speed bucket needs any more.
    pub async fn build(
        &self,
        msgs: &[Msg],
        store: &dyn ViewStore,
        now_ms: i64,
        sealed_until: &BTreeMap<String, i64>,
    ) -> Result<(SpeedBatch, BatchStats)> {
        let decoded = self.decode_all(msgs, now_ms);
        self.build_from(
            msgs,
            decoded,
            store,
            now_ms,
            sealed_until,
            &PendingIds::new(),
        )
        .await
    }

    /// [`Aggregator::build`] of messages decoded already, while the batch that remembers
    /// `pending` is still being committed: its ids count as seen.
    pub async fn build_decoded(
        &self,
        decoded: Decoded,
        store: &dyn ViewStore,
        now_ms: i64,
        sealed_until: &BTreeMap<String, i64>,
        pending: &PendingIds,
    ) -> Result<(SpeedBatch, BatchStats)> {
        let Decoded { msgs, events } = decoded;
        self.build_from(&msgs, events, store, now_ms, sealed_until, pending)
            .await
    }

    /// The batch of `msgs`, whose decoded events are `decoded` (see [`Aggregator::decode`]).
    async fn build_from(
        &self,
        msgs: &[Msg],
        decoded: Vec<std::result::Result<Event, DecodeError>>,
        store: &dyn ViewStore,
        now_ms: i64,
        sealed_until: &BTreeMap<String, i64>,
        pending: &PendingIds,
    ) -> Result<(SpeedBatch, BatchStats)> {
        let mut batch = SpeedBatch {
            at_ms: now_ms,
            sealed_until: sealed_until.clone(),
            drop_states_before: sealed_until
                .iter()
                .map(|(v, t)| (v.clone(), t.saturating_sub(self.sealed_retention_ms)))
                .collect(),
            quarantine_keep: crate::store::QuarantineKeep {
                cap: self.quarantine_cap,
                since_ms: now_ms.saturating_sub(self.quarantine_retention_ms),
            },
            ..SpeedBatch::default()
        };
        let mut stats = BatchStats::default();
        // the partitions of this batch, in the order first met; messages refer to them by index
        let mut parts: Vec<(PartitionKey, i64)> = Vec::new();
        let mut fresh: Vec<(usize, &Reader, Event)> = Vec::with_capacity(msgs.len());
        // the ids of `fresh`, as indices into it (nothing copied)
        let hasher = hashbrown::DefaultHashBuilder::default();
        let id_hash = |source: &str, id: &str| hasher.hash_one((source, id));
        let mut in_batch: hashbrown::HashTable<usize> =
            hashbrown::HashTable::with_capacity(msgs.len());
        let mut decoded = decoded.into_iter();
        for m in msgs {
            let part = match parts
                .iter()
                .rposition(|(k, _)| k.partition == m.partition && k.topic == m.topic)
            {
                Some(i) => i,
                None => {
                    parts.push((
                        PartitionKey {
                            group: self.group.clone(),
                            topic: m.topic.to_string(),
                            partition: m.partition,
                        },
                        m.offset + 1,
                    ));
                    parts.len() - 1
                }
            };
            parts[part].1 = parts[part].1.max(m.offset + 1);
            for reader in self.sources_of(&m.topic) {
                let source = &reader.source;
                let Some(result) = decoded.next() else {
                    break;
                };
                match result {
                    Err(e) => {
                        tracing::debug!(source = %source.name, topic = %m.topic, partition = m.partition,
                            offset = m.offset, error = %e, "Quarantined event.");
                        stats.quarantined += 1;
                        batch.quarantine.push(Quarantined {
                            source: source.name.clone(),
                            topic: m.topic.to_string(),
                            partition: m.partition,
                            offset: m.offset,
                            reason: e.to_string(),
                            payload: m.payload.clone(),
                            at_ms: now_ms,
                        });
                    }
                    Ok(ev) => {
                        let committing = pending
                            .get(&source.name)
                            .is_some_and(|ids| ids.contains(&ev.id));
                        let h = id_hash(&source.name, &ev.id);
                        let again = committing
                            || in_batch
                                .find(h, |&i| {
                                    fresh[i].1.source.name == source.name && fresh[i].2.id == ev.id
                                })
                                .is_some();
                        if again {
                            stats.duplicates += 1;
                        } else {
                            fresh.push((part, reader, ev));
                            in_batch.insert_unique(h, fresh.len() - 1, |&i| {
                                id_hash(&fresh[i].1.source.name, &fresh[i].2.id)
                            });
                        }
                    }
                }
            }
        }
        let mut shares: Vec<PartitionBatch> = parts
            .iter()
            .map(|(_, next)| PartitionBatch {
                next_offset: Some(*next),
                ..PartitionBatch::default()
            })
            .collect();
        // ids seen by earlier batches, asked per partition and source
        // (one question per source when the store remembers ids across partitions)
        let per_partition = store.dedup_per_partition();
        let states_per_partition = store.states_per_partition();
        // (the questions by partition index, each a source or two: found by a scan)
        let mut asks: Vec<Vec<Ask<'_>>> = (0..parts.len()).map(|_| Vec::new()).collect();
        for (i, (part, reader, _)) in fresh.iter().enumerate() {
            let part = if per_partition { *part } else { 0 };
            let source = reader.source.name.as_str();
            let list = &mut asks[part];
            match list.iter_mut().find(|a| a.source == source) {
                Some(a) => a.events.push(i),
                None => list.push(Ask {
                    part,
                    source,
                    events: vec![i],
                }),
            }
        }
        let asks: Vec<Ask<'_>> = asks.into_iter().flatten().collect();
        // all questions at once (a Redis store pipelines them into one round trip)
        let lists: Vec<Vec<&str>> = asks
            .iter()
            .map(|a| a.events.iter().map(|i| fresh[*i].2.id.as_str()).collect())
            .collect();
        let answers = futures::future::try_join_all(
            asks.iter()
                .zip(&lists)
                .map(|(a, ids)| store.seen(&parts[a.part].0, a.source, ids)),
        )
        .await?;
        let mut dup = vec![false; fresh.len()];
        for (a, seen) in asks.iter().zip(answers) {
            for (i, seen) in a.events.iter().zip(seen) {
                dup[*i] = seen;
            }
        }
        // what is applied, split by partition into one list per thread
        let threads = if fresh.len() >= PARALLEL_FROM {
            self.threads
        } else {
            1
        };
        let mut lists: Vec<Vec<(usize, &Reader, Event)>> = (0..threads)
            .map(|_| Vec::with_capacity(fresh.len() / threads + 1))
            .collect();
        for ((part, reader, ev), dup) in fresh.into_iter().zip(dup) {
            if dup {
                stats.duplicates += 1;
                continue;
            }
            stats.applied += 1;
            let name = &reader.source.name;
            match batch.watermarks.get_mut(name) {
                Some(w) => *w = (*w).max(ev.time_ms),
                None => {
                    batch.watermarks.insert(name.clone(), ev.time_ms);
                }
            }
            lists[part % threads].push((part, reader, ev));
        }
        let folded: Vec<Result<Folded>> = if threads == 1 {
            lists
                .into_iter()
                .map(|l| self.fold(l, sealed_until, states_per_partition))
                .collect()
        } else {
            std::thread::scope(|scope| {
                let handles: Vec<_> = lists
                    .into_iter()
                    .map(|l| scope.spawn(move || self.fold(l, sealed_until, states_per_partition)))
                    .collect();
                handles
                    .into_iter()
                    .map(|h| {
                        h.join()
                            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
                    })
                    .collect()
            })
        };
        for f in folded {
            let f = f?;
            stats.late += f.late;
            for (part, share) in f.shares {
                shares[part] = PartitionBatch {
                    next_offset: shares[part].next_offset,
                    ..share
                };
            }
        }
        for ((key, _), share) in parts.into_iter().zip(shares) {
            batch.parts.insert(key, share);
        }
        Ok((batch, stats))
    }
}
