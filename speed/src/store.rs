//! The view store: where the speed layer keeps per-bucket partial states, the consumer
//! offsets they reflect, the dedup ids, the quarantine and watermarks. One [`SpeedBatch`] is
//! applied atomically, which is what makes the speed layer exactly-once in effect.

pub mod embedded;

use std::collections::{BTreeMap, HashMap};

use duet_config::{DimKey, Row, State};

use crate::error::Result;

pub use embedded::EmbeddedStore;

/// A malformed event, kept with its reason, origin and bytes.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Quarantined {
    /// Source whose schema refused it.
    pub source: String,
    /// Kafka topic.
    pub topic: String,
    /// Kafka partition.
    pub partition: i32,
    /// Kafka offset.
    pub offset: i64,
    /// Why it was refused.
    pub reason: String,
    /// The message bytes.
    pub payload: Vec<u8>,
    /// When it was quarantined, epoch ms.
    pub at_ms: i64,
}

/// Everything one consumer batch changes, applied in one transaction.
#[derive(Debug, Clone, Default)]
pub struct SpeedBatch {
    /// Partial states to merge, per view, bucket and dimensions.
    pub deltas: BTreeMap<(String, i64, DimKey), Vec<State>>,
    /// Event ids now seen, per source, with their event time.
    pub seen: Vec<(String, String, i64)>,
    /// Refused events.
    pub quarantine: Vec<Quarantined>,
    /// Next offset to read, per (group, topic, partition).
    pub offsets: BTreeMap<(String, String, i32), i64>,
    /// Highest event time seen, per source.
    pub watermarks: BTreeMap<String, i64>,
    /// Forget the seen ids of a source whose event time is before this (dedup retention).
    pub forget_seen_before: BTreeMap<String, i64>,
}

/// A view store. The embedded store is the default; a Redis store serves production.
#[async_trait::async_trait]
pub trait ViewStore: Send + Sync {
    /// Applies a batch atomically: all of it or none of it.
    async fn commit(&self, batch: SpeedBatch) -> Result<()>;
    /// The next offsets to read for a consumer group and topic, per partition.
    async fn offsets(&self, group: &str, topic: &str) -> Result<HashMap<i32, i64>>;
    /// Which of `ids` of `source` were already seen.
    async fn seen(&self, source: &str, ids: &[&str]) -> Result<Vec<bool>>;
    /// Rows of `view` with a bucket in `[from, to)`, by bucket then dimensions.
    async fn read(&self, view: &str, from: i64, to: i64) -> Result<Vec<Row>>;
    /// The newest quarantined events, newest first, at most `limit`.
    async fn quarantine(&self, limit: usize) -> Result<Vec<Quarantined>>;
    /// Highest event time applied for `source`.
    async fn watermark(&self, source: &str) -> Result<Option<i64>>;
}
