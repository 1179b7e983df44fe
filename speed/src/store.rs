//! The view store: where the speed layer keeps per-bucket partial states, the consumer
//! offsets they reflect, the dedup ids, the quarantine and watermarks. One [`SpeedBatch`] is
//! applied atomically, which is what makes the speed layer exactly-once in effect.

pub mod embedded;
pub mod local_redis;
pub mod redis;

use std::collections::{BTreeMap, HashMap};

use compact_str::CompactString;
use duet_config::{DimKey, Row, State, ViewDefinition, ViewSpec};

use crate::error::{Error, Result, ViewMismatch};

pub use embedded::{EmbeddedStore, EncodedRow};
pub use local_redis::{LocalRedis, LocalRedisCluster};
pub use redis::RedisStore;

pub use duet_config::Quarantined;

/// The key of one partial-state row: a view, a bucket and the dimension values.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StateKey {
    /// View name.
    pub view: String,
    /// Bucket start, epoch ms.
    pub bucket: i64,
    /// Dimension values.
    pub dims: DimKey,
}

/// Where one consumer group stands in one Kafka partition.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PartitionKey {
    /// Consumer group.
    pub group: String,
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
}

/// A bucket of a view that an applied event contributed to, by its end: the event's id must
/// be remembered (for dedup) until the view is sealed past it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Release {
    /// View name (kept inline up to 24 bytes: one per view and event, not allocated).
    pub view: CompactString,
    /// End of the latest bucket of the view the event contributed to, epoch ms.
    pub bucket_end: i64,
}

/// An event id now seen, and the buckets it contributed to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeenId {
    /// Source name (kept inline up to 24 bytes).
    pub source: CompactString,
    /// Event id (up to 24 bytes kept inline).
    pub id: CompactString,
    /// Per view, the end of the latest bucket it contributed to (up to two kept inline: an
    /// event counts in a few views, and a list allocated per event cost more to build, read on
    /// the commit's thread and free there than the rest of its dedup bookkeeping).
    pub releases: smallvec::SmallVec<[Release; 2]>,
}

/// What one consumer batch changes in one Kafka partition: the deltas of the events read
/// from it, their ids, and the next offset to read. A store may apply the partitions of a
/// batch separately (the Redis store does, one atomic script each); each partition's states
/// and offset always change together.
#[derive(Debug, Clone, Default)]
pub struct PartitionBatch {
    /// Partial states to merge, per view, bucket and dimensions.
    pub deltas: BTreeMap<StateKey, Vec<State>>,
    /// Event ids now seen.
    pub seen: Vec<SeenId>,
    /// Next offset to read (`None` for deltas that came from no message, as in tools and tests).
    pub next_offset: Option<i64>,
}

/// Everything one consumer batch changes. The embedded store applies it in one transaction;
/// the Redis store applies each partition's share atomically.
#[derive(Debug, Clone, Default)]
pub struct SpeedBatch {
    /// Per consumer group, topic and partition read: what its events change.
    pub parts: BTreeMap<PartitionKey, PartitionBatch>,
    /// Refused events (each names its topic and partition).
    pub quarantine: Vec<Quarantined>,
    /// Highest event time seen, per source.
    pub watermarks: BTreeMap<String, i64>,
    /// Per view, the end of its contiguous sealed range: the ids of events whose buckets of
    /// every view are all sealed are forgotten (no speed bucket they count in can change).
    pub sealed_until: BTreeMap<String, i64>,
    /// Per view, drop the speed states of buckets that start before this (sealed longer ago
    /// than the retention; they are served from the batch layer).
    pub drop_states_before: BTreeMap<String, i64>,
    /// When the batch was applied, epoch ms.
    pub at_ms: i64,
    /// How much of the quarantine the store keeps after this batch.
    pub quarantine_keep: QuarantineKeep,
}

/// The store's bound on its quarantine (the lake's `quarantine` table keeps every event).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuarantineKeep {
    /// Most events kept (the newest; per partition in the Redis store).
    pub cap: usize,
    /// Events quarantined before this (epoch ms) are dropped.
    pub since_ms: i64,
}

impl Default for QuarantineKeep {
    fn default() -> Self {
        QuarantineKeep {
            cap: 10_000,
            since_ms: i64::MIN,
        }
    }
}

impl SpeedBatch {
    /// The share of partition `key`, created empty if the batch has none yet.
    pub fn part(&mut self, key: PartitionKey) -> &mut PartitionBatch {
        self.parts.entry(key).or_default()
    }

    /// The share of deltas that came from no Kafka partition (tools and tests): group, topic
    /// empty, partition 0.
    pub fn unpartitioned(&mut self) -> &mut PartitionBatch {
        self.part(PartitionKey {
            group: String::new(),
            topic: String::new(),
            partition: 0,
        })
    }

    /// The next offset of every partition the batch read.
    pub fn offsets(&self) -> impl Iterator<Item = (&PartitionKey, i64)> {
        self.parts
            .iter()
            .filter_map(|(k, p)| p.next_offset.map(|o| (k, o)))
    }
}

/// Sizes of a store, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Event ids remembered for dedup.
    pub seen_ids: u64,
    /// Size of the store on disk, bytes.
    pub bytes: u64,
    /// Stored states that could not be read and were set aside.
    pub corrupt: u64,
    /// When the last batch was applied, epoch ms.
    pub last_commit_ms: Option<i64>,
}

/// A view's rows with the marks serving shows beside them ([`ViewStore::read_marked`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Marked {
    /// The rows, by bucket then dimensions.
    pub rows: Vec<Row>,
    /// Highest event time applied for the view's source.
    pub watermark: Option<i64>,
    /// When the last batch was applied, epoch ms.
    pub last_commit_ms: Option<i64>,
}

/// A view store. The embedded store is the default; a Redis store serves production.
#[async_trait::async_trait]
pub trait ViewStore: Send + Sync {
    /// Takes `parts` for this worker before it reads their offsets: a store shared by several
    /// workers (Redis) refuses from now on the writes of any other worker that held them. The
    /// embedded store, which one process owns, has nothing to do.
    async fn assign(&self, parts: &[PartitionKey]) -> Result<()> {
        let _ = parts;
        Ok(())
    }
    /// Gives up `parts` (revoked from this worker): what is held of them in memory is dropped.
    async fn release(&self, parts: &[PartitionKey]) -> Result<()> {
        let _ = parts;
        Ok(())
    }
    /// Applies a batch atomically: all of it or none of it.
    async fn commit(&self, batch: SpeedBatch) -> Result<()>;
    /// The next offsets to read for a consumer group and topic, per partition.
    async fn offsets(&self, group: &str, topic: &str) -> Result<HashMap<i32, i64>>;
    /// Whether states are kept per Kafka partition (Redis, the default) rather than one per
    /// view, bucket and dimension key (the embedded store, which applies a batch in one
    /// transaction): the speed layer then folds the deltas of all the partitions a thread
    /// reads into one, handed to the store with the first of those partitions.
    fn states_per_partition(&self) -> bool {
        true
    }
    /// Whether ids are remembered per Kafka partition (Redis) rather than across all of them
    /// (the embedded store): the speed layer then asks [`ViewStore::seen`] per partition.
    fn dedup_per_partition(&self) -> bool {
        false
    }
    /// Which of `ids` of `source`, read from partition `part`, were already seen. The embedded
    /// store answers over all partitions; the Redis store over the ids read from `part` (see
    /// `docs/semantics.md`).
    async fn seen(&self, part: &PartitionKey, source: &str, ids: &[&str]) -> Result<Vec<bool>>;
    /// Rows of `view` with a bucket in `[from, to)`, by bucket then dimensions.
    async fn read(&self, view: &str, from: i64, to: i64) -> Result<Vec<Row>>;
    /// What serving reads per query, together: the rows of `view` with a bucket in
    /// `[from, to)`, the watermark of `source` and the time of the last commit. The embedded
    /// store reads them in one transaction; the default reads them one after the other.
    async fn read_marked(&self, view: &str, source: &str, from: i64, to: i64) -> Result<Marked> {
        Ok(Marked {
            rows: self.read(view, from, to).await?,
            watermark: self.watermark(source).await?,
            last_commit_ms: self.stats().await?.last_commit_ms,
        })
    }
    /// The newest quarantined events, newest first, at most `limit`.
    async fn quarantine(&self, limit: usize) -> Result<Vec<Quarantined>>;
    /// Highest event time applied for `source`.
    async fn watermark(&self, source: &str) -> Result<Option<i64>>;
    /// Sizes, for metrics.
    async fn stats(&self) -> Result<StoreStats>;
    /// The definitions the stored views were written under.
    async fn definitions(&self) -> Result<BTreeMap<String, ViewDefinition>>;
    /// Records the definitions of views (their states are written under them from now on).
    async fn record_definitions(&self, defs: BTreeMap<String, ViewDefinition>) -> Result<()>;
    /// Drops everything stored of a view: its states, its definition, its share of the dedup ids.
    async fn drop_view(&self, view: &str) -> Result<()>;
}

/// Checks that the store's states of each of `views` were written under the view's current
/// definition; records the definition of views the store holds nothing of yet. Every view
/// whose stored states were written under another definition (or by a Duet that recorded
/// none) is named, with what changed, in [`Error::ViewChanged`].
pub async fn check_definitions(store: &dyn ViewStore, views: &[ViewSpec]) -> Result<()> {
    let stored = store.definitions().await?;
    let mut mismatches = Vec::new();
    let mut new = BTreeMap::new();
    for v in views {
        let now = v.definition();
        match stored.get(&v.name) {
            Some(was) if *was == now => {}
            Some(was) => mismatches.push(ViewMismatch {
                view: v.name.clone(),
                changes: was.changes(&now),
            }),
            None => {
                if store.read(&v.name, i64::MIN, i64::MAX).await?.is_empty() {
                    new.insert(v.name.clone(), now);
                } else {
                    mismatches.push(ViewMismatch {
                        view: v.name.clone(),
                        changes: vec![
                            "its stored states were written by an earlier Duet that recorded no definition".into(),
                        ],
                    });
                }
            }
        }
    }
    if !mismatches.is_empty() {
        return Err(Error::ViewChanged {
            store: "the speed layer's view store".into(),
            mismatches,
        });
    }
    if !new.is_empty() {
        store.record_definitions(new).await?;
    }
    Ok(())
}
