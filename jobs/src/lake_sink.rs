//! The lake sink: its own consumer group reads the source topics and appends raw events to
//! `raw/<source>`, one Delta commit per flush (N records or T seconds). Resumes after the
//! offsets recorded in the tables' `txn` actions, so re-delivery writes nothing twice.
//! Malformed events are not written (the speed layer quarantines them with their reason).

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{Context, Result};
use duet_config::Config;
use duet_lake::{Lake, RawRecord, RawWriter};
use duet_speed::kafka::{AssignedConsumer, topic_partitions};
use tokio::sync::watch;

/// The lake sink's consumer group.
pub fn group(cfg: &Config) -> String {
    format!("{}-lake", cfg.kafka.group_prefix)
}

/// Runs the lake sink until `shutdown` turns true.
pub async fn run(
    cfg: &Config,
    bootstrap: &str,
    lake: &Lake,
    mut shutdown: watch::Receiver<bool>,
) -> Result<()> {
    let group = group(cfg);
    let mut writers: HashMap<String, RawWriter> = HashMap::new();
    for s in &cfg.sources {
        writers.insert(s.name.clone(), RawWriter::open(lake, s, &group).await?);
    }
    let mut topics: Vec<String> = cfg.sources.iter().map(|s| s.topic.clone()).collect();
    topics.sort();
    topics.dedup();
    let mut start: HashMap<(String, i32), i64> = HashMap::new();
    for t in &topics {
        for p in topic_partitions(&cfg.kafka, bootstrap, t, Duration::from_secs(60)).await? {
            for s in cfg.sources.iter().filter(|s| &s.topic == t) {
                let next = match writers.get_mut(&s.name) {
                    Some(w) => w.committed_offset(p).await?.map_or(0, |o| o + 1),
                    None => 0,
                };
                let e = start.entry((t.clone(), p)).or_insert(next);
                *e = (*e).min(next);
            }
        }
    }
    let consumer = AssignedConsumer::new(
        &cfg.kafka,
        bootstrap,
        &group,
        &topics,
        |t, p| start.get(&(t.to_string(), p)).copied().filter(|o| *o > 0),
        Duration::from_secs(60),
    )
    .await?;
    tracing::info!(%group, ?topics, "Lake sink consuming.");
    let wait = Duration::from_millis(cfg.lake_flush_ms as u64);
    loop {
        let msgs = tokio::select! {
            _ = shutdown.wait_for(|s| *s) => break,
            m = consumer.next_batch(cfg.lake.flush_records, wait) => m?,
        };
        if msgs.is_empty() {
            continue;
        }
        let mut per_source: HashMap<&str, Vec<RawRecord>> = HashMap::new();
        for m in &msgs {
            for s in cfg.sources.iter().filter(|s| s.topic == m.topic) {
                if let Ok(event) = s.decode(&m.payload) {
                    per_source
                        .entry(s.name.as_str())
                        .or_default()
                        .push(RawRecord {
                            event,
                            partition: m.partition,
                            offset: m.offset,
                            payload: String::from_utf8_lossy(&m.payload).into_owned(),
                        });
                }
            }
        }
        for (source, records) in per_source {
            if let Some(w) = writers.get_mut(source) {
                let v = w
                    .append(&records)
                    .await
                    .with_context(|| format!("lake sink for source `{source}`"))?;
                tracing::debug!(source, records = records.len(), version = ?v, "Raw events committed.");
            }
        }
        let progress = msgs
            .iter()
            .map(|m| ((m.topic.clone(), m.partition), m.offset + 1))
            .collect();
        consumer.commit_progress(&progress);
    }
    Ok(())
}
