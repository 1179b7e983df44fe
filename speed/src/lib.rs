//! The speed layer: Kafka → decode → quarantine bad events → drop duplicates → per-bucket
//! partial states in a view store, committed together with the offsets they reflect.

pub mod aggregate;
pub mod counters;
pub mod error;
pub mod kafka;
pub mod positions;
pub mod store;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use duet_config::Config;
use tokio::sync::watch;

pub use aggregate::{Aggregator, BatchStats};
pub use counters::{PartitionLag, SpeedCounters};
pub use error::{Error, Result};
pub use store::{
    EmbeddedStore, Marked, PartitionBatch, PartitionKey, Quarantined, RedisStore, SpeedBatch,
    StoreStats, ViewStore,
};

/// Per view, the end of its contiguous sealed range, as the batch layer publishes it: the
/// speed layer forgets dedup ids that no unsealed bucket needs.
pub type SealedUntil = watch::Receiver<BTreeMap<String, i64>>;

/// The speed layer's consumer group name.
pub fn group(cfg: &Config) -> String {
    format!("{}-speed", cfg.kafka.group_prefix)
}

/// Runs the speed layer until `shutdown` turns true. Refuses to start when the store holds
/// states of a view written under another definition (see [`store::check_definitions`]).
pub async fn run(
    cfg: &Config,
    bootstrap: &str,
    store: Arc<dyn ViewStore>,
    counters: Arc<SpeedCounters>,
    sealed: SealedUntil,
    mut shutdown: watch::Receiver<bool>,
) -> Result<()> {
    store::check_definitions(store.as_ref(), &cfg.views).await?;
    let group = group(cfg);
    let agg = Aggregator::new(cfg, &group);
    let topics = agg.topics();
    let consumer = kafka::GroupConsumer::new(
        &cfg.kafka,
        bootstrap,
        &group,
        &topics,
        Duration::from_secs(60),
    )
    .await?;
    tracing::info!(%group, ?topics, "Speed layer joined its consumer group.");
    let _lag = AbortOnDrop(consumer.watch_lag(counters.clone(), Duration::from_secs(2)));
    let wait = Duration::from_millis(cfg.speed_batch_ms as u64);
    let mut positions = positions::Positions::default();
    // the batch being committed while the next one is read and folded
    let mut inflight: Option<InFlight> = None;
    loop {
        let msgs = tokio::select! {
            _ = shutdown.wait_for(|s| *s) => break,
            m = consumer.next_batch(cfg.speed.batch_max, wait) => m?,
        };
        // partitions the group gave or took while we polled: taken ones start where the store
        // says (a Redis store refuses from now on any worker that held them before)
        let events = consumer.rebalances();
        if !events.is_empty() {
            // what was read of a revoked partition is in the store before anyone takes it
            if let Some(f) = inflight.take()
                && !f.finish(&consumer, &counters).await?
            {
                retake(store.as_ref(), &group, &mut positions).await?;
            }
        }
        for event in events {
            counters.rebalances.fetch_add(1, Ordering::Relaxed);
            match event {
                kafka::Rebalanced::Revoked(list) => {
                    tracing::info!(%group, partitions = ?list, "Partitions revoked.");
                    for (t, p) in &list {
                        positions.revoke(t, *p);
                    }
                    store.release(&keys(&group, &list)).await?;
                }
                kafka::Rebalanced::Assigned(list) => {
                    tracing::info!(%group, partitions = ?list, "Partitions assigned.");
                    take(store.as_ref(), &group, &list, &mut positions).await?;
                }
            }
        }
        counters
            .consumed
            .fetch_add(msgs.len() as u64, Ordering::Relaxed);
        let msgs = positions.filter(msgs);
        for s in positions.unsought() {
            match consumer.seek(&s.topic, s.partition, s.next) {
                Ok(()) => positions.sought(&s.topic, s.partition),
                Err(e) => tracing::debug!(error = %e, "Seek deferred."),
            }
        }
        if msgs.is_empty() {
            // idle: let the batch in flight land
            if let Some(f) = inflight.take()
                && !f.finish(&consumer, &counters).await?
            {
                retake(store.as_ref(), &group, &mut positions).await?;
            }
            continue;
        }
        let produced: Vec<i64> = msgs.iter().filter_map(|m| m.timestamp_ms).collect();
        let now = now_ms();
        let frontiers = sealed.borrow().clone();
        let none = aggregate::PendingIds::new();
        let committing = inflight.as_ref().map_or(&none, |f| &f.pending);
        let (batch, stats) = agg
            .build_after(&msgs, store.as_ref(), now, &frontiers, committing)
            .await?;
        if let Some(f) = inflight.take()
            && !f.finish(&consumer, &counters).await?
        {
            // the batch built on it is dropped: read again from the stored offsets
            retake(store.as_ref(), &group, &mut positions).await?;
            continue;
        }
        let progress: HashMap<(String, i32), i64> = batch
            .offsets()
            .map(|(k, o)| ((k.topic.clone(), k.partition), o))
            .collect();
        let pending = aggregate::pending_ids(&batch);
        let task = {
            let store = store.clone();
            tokio::spawn(async move {
                let started = Instant::now();
                store.commit(batch).await?;
                Ok(Committed {
                    took: started.elapsed(),
                    visible_ms: now_ms(),
                })
            })
        };
        inflight = Some(InFlight {
            task,
            pending,
            progress,
            stats,
            produced,
        });
    }
    if let Some(f) = inflight.take() {
        f.finish(&consumer, &counters).await?;
    }
    Ok(())
}

/// A batch being committed.
struct InFlight {
    task: tokio::task::JoinHandle<Result<Committed>>,
    pending: aggregate::PendingIds,
    progress: HashMap<(String, i32), i64>,
    stats: BatchStats,
    produced: Vec<i64>,
}

/// When and how fast a batch was committed.
struct Committed {
    took: Duration,
    visible_ms: i64,
}

impl InFlight {
    /// Waits for the commit and records it. `Ok(false)`: the store refused it (fenced), and
    /// the worker must take its partitions again.
    async fn finish(
        self,
        consumer: &kafka::GroupConsumer,
        counters: &SpeedCounters,
    ) -> Result<bool> {
        let done = self.task.await.map_err(|source| Error::Task {
            path: "the view store".into(),
            operation: "commit a batch",
            source,
        })?;
        let done = match done {
            Ok(c) => c,
            Err(Error::Fenced { detail }) => {
                tracing::warn!(%detail, "Store refused a batch; reading again from the stored offsets.");
                return Ok(false);
            }
            Err(e) => return Err(e),
        };
        counters.commit_latency.observe(done.took);
        for t in self.produced {
            let ms = u64::try_from(done.visible_ms.saturating_sub(t)).unwrap_or(0);
            counters.freshness.observe(Duration::from_millis(ms));
        }
        consumer.commit_progress(&self.progress);
        let s = self.stats;
        counters.applied.fetch_add(s.applied, Ordering::Relaxed);
        counters
            .duplicates
            .fetch_add(s.duplicates, Ordering::Relaxed);
        counters
            .quarantined
            .fetch_add(s.quarantined, Ordering::Relaxed);
        counters.late.fetch_add(s.late, Ordering::Relaxed);
        counters.batches.fetch_add(1, Ordering::Relaxed);
        Ok(true)
    }
}

/// Takes every owned partition again from the store's offsets (after a fenced batch).
async fn retake(
    store: &dyn ViewStore,
    group: &str,
    positions: &mut positions::Positions,
) -> Result<()> {
    let owned = positions.owned();
    *positions = positions::Positions::default();
    take(store, group, &owned, positions).await
}

fn keys(group: &str, list: &[(String, i32)]) -> Vec<PartitionKey> {
    list.iter()
        .map(|(t, p)| PartitionKey {
            group: group.to_string(),
            topic: t.clone(),
            partition: *p,
        })
        .collect()
}

/// Takes `list` in the store and records where the store stands in each.
async fn take(
    store: &dyn ViewStore,
    group: &str,
    list: &[(String, i32)],
    positions: &mut positions::Positions,
) -> Result<()> {
    store.assign(&keys(group, list)).await?;
    let mut stored: HashMap<String, HashMap<i32, i64>> = HashMap::new();
    for (t, p) in list {
        if !stored.contains_key(t) {
            stored.insert(t.clone(), store.offsets(group, t).await?);
        }
        positions.take(t, *p, stored.get(t).and_then(|o| o.get(p)).copied());
    }
    Ok(())
}

/// Aborts a background task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Wall-clock time in epoch ms.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
