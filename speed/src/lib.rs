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
    let agg = Arc::new(Aggregator::new(cfg, &group));
    let topics = agg.topics();
    let consumer = Arc::new(
        kafka::GroupConsumer::new(
            &cfg.kafka,
            bootstrap,
            &group,
            &topics,
            Duration::from_secs(60),
        )
        .await?,
    );
    tracing::info!(%group, ?topics, "Speed layer joined its consumer group.");
    let _lag = AbortOnDrop(consumer.watch_lag(counters.clone(), Duration::from_secs(2)));
    let wait = Duration::from_millis(cfg.speed_batch_ms as u64);
    // the next batches are read and decoded on their own (one decoded while the one after it
    // is read) while this one is folded and the one before it committed
    let (ahead, mut reads) = tokio::sync::mpsc::channel(1);
    let seeks = SeekRequests::default();
    let _reader = AbortOnDrop(tokio::spawn(read_ahead(
        consumer.clone(),
        agg.clone(),
        cfg.speed.batch_max,
        wait,
        seeks.clone(),
        ahead,
    )));
    let mut positions = positions::Positions::default();
    // the batch being committed while the next one is read and folded
    let mut inflight: Option<InFlight> = None;
    loop {
        let read = tokio::select! {
            _ = shutdown.wait_for(|s| *s) => break,
            r = next_read(&mut reads) => r?,
        };
        let Read {
            decoded,
            rebalances: events,
            read_from,
            sought,
        } = read;
        // the seeks done before this batch was read
        for done in sought {
            let s = &done.seek;
            match done.at {
                Some(at) => positions.sought(&s.topic, s.partition, s.next, at),
                None => positions.not_sought(&s.topic, s.partition),
            }
        }
        // partitions the group gave or took while we polled: taken ones start where the store
        // says (a Redis store refuses from now on any worker that held them before)
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
            .fetch_add(decoded.len() as u64, Ordering::Relaxed);
        let decoded = agg.retain(decoded, |m| positions.admits(m, read_from));
        let asked = positions.ask_seeks();
        if !asked.is_empty() {
            seeks
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .extend(asked);
        }
        if decoded.is_empty() {
            // idle: let the batch in flight land
            if let Some(f) = inflight.take()
                && !f.finish(&consumer, &counters).await?
            {
                retake(store.as_ref(), &group, &mut positions).await?;
            }
            continue;
        }
        let produced = decoded.timestamps();
        let now = now_ms();
        let frontiers = sealed.borrow().clone();
        let none = aggregate::PendingIds::new();
        let committing = inflight.as_ref().map_or(&none, |f| &f.pending);
        let (batch, stats) = agg
            .build_decoded(decoded, store.as_ref(), now, &frontiers, committing)
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

/// Seeks asked for by the speed layer's loop, done by its reader between two reads (never
/// during one, so that a batch is read wholly before or wholly after a seek).
type SeekRequests = Arc<std::sync::Mutex<Vec<positions::Seek>>>;

/// A seek the reader did, or tried: `at` is the seek count it ended (`None`: it failed, the
/// partition not being assigned yet).
struct SeekDone {
    seek: positions::Seek,
    at: Option<u64>,
}

/// A batch read ahead: its messages decoded, the rebalances that happened while it was read,
/// the consumer's seek count when its read began (see [`positions::Positions::admits`]), and
/// the seeks done just before.
struct Read {
    decoded: aggregate::Decoded,
    rebalances: Vec<kafka::Rebalanced>,
    read_from: u64,
    sought: Vec<SeekDone>,
}

/// A batch read ahead, being decoded.
type Decoding = tokio::task::JoinHandle<Result<Read>>;

/// The next batch [`read_ahead`] hands on, once decoded.
async fn next_read(reads: &mut tokio::sync::mpsc::Receiver<Decoding>) -> Result<Read> {
    let decoding = reads.recv().await.ok_or(Error::Stopped {
        what: "the Kafka reader",
        source: None,
    })?;
    decoding.await.map_err(|source| Error::Stopped {
        what: "the decoding of a batch",
        source: Some(source),
    })?
}

/// Reads batches of up to `max` messages (waiting at most `wait` for each) and hands them to
/// `ahead` in order, each being decoded off the async workers while the next one is read,
/// until its receiver is gone; before each read, does the seeks asked for in `seeks`. A read
/// error is handed on like a batch.
async fn read_ahead(
    consumer: Arc<kafka::GroupConsumer>,
    agg: Arc<Aggregator>,
    max: usize,
    wait: Duration,
    seeks: SeekRequests,
    ahead: tokio::sync::mpsc::Sender<Decoding>,
) {
    loop {
        let asked = std::mem::take(
            &mut *seeks
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        let sought: Vec<SeekDone> = asked
            .into_iter()
            .map(|seek| {
                let at = consumer
                    .seek(&seek.topic, seek.partition, seek.next)
                    .inspect_err(|e| tracing::debug!(error = %e, "Seek deferred."))
                    .ok();
                SeekDone { seek, at }
            })
            .collect();
        let read_from = consumer.seeks();
        let decoding = match consumer.next_batch(max, wait).await {
            Ok(msgs) => {
                let rebalances = consumer.rebalances();
                let agg = agg.clone();
                tokio::task::spawn_blocking(move || {
                    Ok(Read {
                        decoded: agg.decode(msgs, now_ms()),
                        rebalances,
                        read_from,
                        sought,
                    })
                })
            }
            Err(e) => tokio::task::spawn(std::future::ready(Err(e))),
        };
        if ahead.send(decoding).await.is_err() {
            return;
        }
    }
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
        // messages read together were mostly produced in the same millisecond: each run of
        // equal times is recorded at once
        for run in self.produced.chunk_by(|a, b| a == b) {
            let ms = u64::try_from(done.visible_ms.saturating_sub(run[0])).unwrap_or(0);
            counters
                .freshness
                .observe_times(Duration::from_millis(ms), run.len() as u64);
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
