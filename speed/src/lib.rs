//! The speed layer: Kafka → decode → quarantine bad events → drop duplicates → per-bucket
//! partial states in a view store, committed together with the offsets they reflect.

pub mod aggregate;
pub mod counters;
pub mod error;
pub mod kafka;
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
    EmbeddedStore, PartitionBatch, PartitionKey, Quarantined, RedisStore, SpeedBatch, StoreStats,
    ViewStore,
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
    // take every partition in the store first (a Redis store then refuses any other worker
    // still writing them), then start where the store says
    let mut parts = Vec::new();
    for t in &topics {
        for p in kafka::topic_partitions(&cfg.kafka, bootstrap, t, Duration::from_secs(60)).await? {
            parts.push(PartitionKey {
                group: group.clone(),
                topic: t.clone(),
                partition: p,
            });
        }
    }
    store.assign(&parts).await?;
    let mut start: HashMap<(String, i32), i64> = HashMap::new();
    for t in &topics {
        for (p, o) in store.offsets(&group, t).await? {
            start.insert((t.clone(), p), o);
        }
    }
    let consumer = kafka::AssignedConsumer::new(
        &cfg.kafka,
        bootstrap,
        &group,
        &topics,
        |t, p| start.get(&(t.to_string(), p)).copied(),
        Duration::from_secs(60),
    )
    .await?;
    tracing::info!(%group, ?topics, "Speed layer consuming.");
    let _lag = AbortOnDrop(consumer.watch_lag(counters.clone(), Duration::from_secs(2)));
    let wait = Duration::from_millis(cfg.speed_batch_ms as u64);
    loop {
        let msgs = tokio::select! {
            _ = shutdown.wait_for(|s| *s) => break,
            m = consumer.next_batch(cfg.speed.batch_max, wait) => m?,
        };
        if msgs.is_empty() {
            continue;
        }
        counters
            .consumed
            .fetch_add(msgs.len() as u64, Ordering::Relaxed);
        let now = now_ms();
        let frontiers = sealed.borrow().clone();
        let (batch, stats) = agg.build(&msgs, store.as_ref(), now, &frontiers).await?;
        let progress: HashMap<(String, i32), i64> = batch
            .offsets()
            .map(|(k, o)| ((k.topic.clone(), k.partition), o))
            .collect();
        let started = Instant::now();
        store.commit(batch).await?;
        counters.commit_latency.observe(started.elapsed());
        consumer.commit_progress(&progress);
        counters.applied.fetch_add(stats.applied, Ordering::Relaxed);
        counters
            .duplicates
            .fetch_add(stats.duplicates, Ordering::Relaxed);
        counters
            .quarantined
            .fetch_add(stats.quarantined, Ordering::Relaxed);
        counters.late.fetch_add(stats.late, Ordering::Relaxed);
        counters.batches.fetch_add(1, Ordering::Relaxed);
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
