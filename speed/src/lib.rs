//! The speed layer: Kafka → decode → quarantine bad events → drop duplicates → per-bucket
//! partial states in a view store, committed together with the offsets they reflect.

pub mod aggregate;
pub mod error;
pub mod kafka;
pub mod store;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use duet_config::Config;
use tokio::sync::watch;

pub use aggregate::{Aggregator, BatchStats};
pub use error::{Error, Result};
pub use store::{EmbeddedStore, Quarantined, SpeedBatch, ViewStore};

/// Running totals of the speed layer, for metrics.
#[derive(Debug, Default)]
pub struct SpeedCounters {
    /// Events applied to views.
    pub applied: AtomicU64,
    /// Duplicates dropped.
    pub duplicates: AtomicU64,
    /// Events quarantined.
    pub quarantined: AtomicU64,
    /// Batches committed.
    pub batches: AtomicU64,
}

/// The speed layer's consumer group name.
pub fn group(cfg: &Config) -> String {
    format!("{}-speed", cfg.kafka.group_prefix)
}

/// Runs the speed layer until `shutdown` turns true.
pub async fn run(
    cfg: &Config,
    bootstrap: &str,
    store: Arc<dyn ViewStore>,
    counters: Arc<SpeedCounters>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<()> {
    let group = group(cfg);
    let agg = Aggregator::new(cfg, &group);
    let topics = agg.topics();
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
    let wait = Duration::from_millis(cfg.speed_batch_ms as u64);
    loop {
        let msgs = tokio::select! {
            _ = shutdown.wait_for(|s| *s) => break,
            m = consumer.next_batch(cfg.speed.batch_max, wait) => m?,
        };
        if msgs.is_empty() {
            continue;
        }
        let now = now_ms();
        let (batch, stats) = agg.build(&msgs, store.as_ref(), now).await?;
        let progress: HashMap<(String, i32), i64> = batch
            .offsets
            .iter()
            .map(|((_, t, p), o)| ((t.clone(), *p), *o))
            .collect();
        store.commit(batch).await?;
        consumer.commit_progress(&progress);
        counters.applied.fetch_add(stats.applied, Ordering::Relaxed);
        counters
            .duplicates
            .fetch_add(stats.duplicates, Ordering::Relaxed);
        counters
            .quarantined
            .fetch_add(stats.quarantined, Ordering::Relaxed);
        counters.batches.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}

/// Wall-clock time in epoch ms.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
