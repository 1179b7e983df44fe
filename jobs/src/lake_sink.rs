//! The lake sink: its own consumer group reads the source topics and appends raw events to
//! `raw/<source>`, one Delta commit per flush (N records or T seconds). Resumes after the
//! offsets recorded in the tables' `txn` actions, so re-delivery writes nothing twice.
//! Malformed events are not written (the speed layer quarantines them with their reason).
//!
//! With each commit it records the source's event-time watermark: the minimum over the
//! topic's partitions of the highest event time each delivered, idle partitions aside (see
//! [`duet_lake::watermark`]). The scheduler seals a bucket only once that watermark passed it.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{Context, Result};
use duet_config::Config;
use duet_lake::late::late_marks;
use duet_lake::watermark::Watermarks;
use duet_lake::{Lake, LedgerReader, RawRecord, RawWriter, SealLedger};
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
    let mut clocks: HashMap<String, Watermarks> = HashMap::new();
    for s in &cfg.sources {
        writers.insert(s.name.clone(), RawWriter::open(lake, s, &group).await?);
        clocks.insert(s.name.clone(), Watermarks::new(cfg.lake_idle_ms));
    }
    let mut topics: Vec<String> = cfg.sources.iter().map(|s| s.topic.clone()).collect();
    topics.sort();
    topics.dedup();
    // next offset to read per (topic, partition): the lowest any source of the topic needs
    let mut next: HashMap<(String, i32), i64> = HashMap::new();
    for t in &topics {
        for p in topic_partitions(&cfg.kafka, bootstrap, t, Duration::from_secs(60)).await? {
            for s in cfg.sources.iter().filter(|s| &s.topic == t) {
                let resume = match writers.get_mut(&s.name) {
                    Some(w) => w.committed_offset(p).await?.map_or(0, |o| o + 1),
                    None => 0,
                };
                let e = next.entry((t.clone(), p)).or_insert(resume);
                *e = (*e).min(resume);
                if let Some(c) = clocks.get_mut(&s.name) {
                    c.add_partition(p);
                }
            }
        }
    }
    let consumer = AssignedConsumer::new(
        &cfg.kafka,
        bootstrap,
        &group,
        &topics,
        |t, p| next.get(&(t.to_string(), p)).copied().filter(|o| *o > 0),
        Duration::from_secs(60),
    )
    .await?;
    tracing::info!(%group, ?topics, "Lake sink consuming.");
    let mut ledger = LedgerReader::new(lake);
    let wait = Duration::from_millis(cfg.lake_flush_ms as u64);
    loop {
        let msgs = tokio::select! {
            _ = shutdown.wait_for(|s| *s) => break,
            m = consumer.next_batch(cfg.lake.flush_records, wait) => m?,
        };
        let now = duet_speed::now_ms();
        let mut per_source: HashMap<&str, Vec<RawRecord>> = HashMap::new();
        for m in &msgs {
            next.insert((m.topic.clone(), m.partition), m.offset + 1);
            for s in cfg.sources.iter().filter(|s| s.topic == m.topic) {
                let decoded = s.decode_at(&m.payload, m.produced_ms(now));
                if let Some(c) = clocks.get_mut(&s.name) {
                    c.observe(m.partition, decoded.as_ref().ok().map(|e| e.time_ms), now);
                }
                if let Ok(event) = decoded {
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
        for s in &cfg.sources {
            let (Some(w), Some(clock)) = (writers.get_mut(&s.name), clocks.get_mut(&s.name)) else {
                continue;
            };
            // a partition quiet for the idle timeout is idle if nothing is left to read in it
            let quiet: Vec<i32> = clock
                .partitions()
                .iter()
                .filter(|(_, p)| p.last_data_ms.is_none_or(|t| now - t >= cfg.lake_idle_ms))
                .map(|(p, _)| *p)
                .collect();
            for p in quiet {
                let at = next.get(&(s.topic.clone(), p)).copied().unwrap_or(0);
                clock.set_caught_up(p, consumer.caught_up(&s.topic, p, at).await);
            }
            let records = per_source.remove(s.name.as_str()).unwrap_or_default();
            // events for sealed (or sealable) buckets are marked late before they are written
            let fresh = w.unwritten(&records).await?;
            if !fresh.is_empty() {
                let views: Vec<_> = cfg.views.iter().filter(|v| v.source == s.name).collect();
                let marks = late_marks(
                    &views,
                    cfg.lateness_ms,
                    w.watermark(),
                    &*ledger.snapshot().await?,
                    &fresh,
                    |p| w.app(p),
                    now,
                );
                if !marks.is_empty() {
                    let events: i64 = marks.iter().map(|m| m.events).sum();
                    tracing::info!(source = %s.name, buckets = marks.len(), events, "Late events for sealed buckets; marked for recompute.");
                    SealLedger::new(lake).mark_late(&marks).await?;
                }
            }
            let v = w
                .append(&records, clock.watermark(now))
                .await
                .with_context(|| format!("lake sink for source `{}`", s.name))?;
            if v.is_some() {
                tracing::debug!(source = %s.name, records = records.len(), version = ?v, watermark = ?w.watermark(), "Raw events committed.");
            }
        }
        if !msgs.is_empty() {
            let progress = msgs
                .iter()
                .map(|m| ((m.topic.clone(), m.partition), m.offset + 1))
                .collect();
            consumer.commit_progress(&progress);
        }
    }
    Ok(())
}
