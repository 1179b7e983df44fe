//! The lake sink: its own consumer group reads the source topics and appends raw events to
//! `raw/<source>`, one Delta commit per flush (N records or T seconds). Resumes after the
//! offsets recorded in the tables' `txn` actions, so re-delivery writes nothing twice.
//! Malformed events go to the lake's `quarantine` table with their reason and bytes (before
//! the raw events of the same flush, idempotent per partition like them); the speed layer's
//! store keeps the newest of them for the API.
//!
//! With each commit it records the source's event-time watermark: the minimum over the
//! topic's partitions of the highest event time each delivered, idle partitions aside (see
//! [`duet_lake::watermark`]). Before each commit it marks late the events that fall in sealed
//! (or sealable) buckets (see [`duet_lake::late`]), so the scheduler recomputes those buckets.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use anyhow::{Context, Result};
use duet_config::{Config, Quarantined};
use duet_lake::late::late_marks;
use duet_lake::watermark::Watermarks;
use duet_lake::{Lake, LedgerReader, QuarantineWriter, RawRecord, RawWriter, SealLedger};
use duet_speed::kafka::{AssignedConsumer, Msg, topic_partitions};
use tokio::sync::watch;

/// The lake sink's consumer group.
pub fn group(cfg: &Config) -> String {
    format!("{}-lake", cfg.kafka.group_prefix)
}

/// The lake sink's state: one raw writer and one watermark tracker per source, the next offset
/// per partition, and the ledger (to mark late events).
pub struct Sink {
    cfg: std::sync::Arc<Config>,
    /// Per source (in config order), every field compiled for decoding.
    keep: Vec<duet_config::decode::Keep>,
    lake: Lake,
    writers: HashMap<String, RawWriter>,
    clocks: HashMap<String, Watermarks>,
    next: HashMap<(String, i32), i64>,
    ledger: LedgerReader,
    pending: HashMap<String, Vec<RawRecord>>,
    quarantine: QuarantineWriter,
    refused: Vec<Quarantined>,
}

impl Sink {
    /// Opens the raw tables of every source for consumer group `group`; `partitions` gives
    /// each topic's partitions.
    pub async fn open(
        cfg: std::sync::Arc<Config>,
        lake: &Lake,
        group: &str,
        partitions: &HashMap<String, Vec<i32>>,
    ) -> Result<Sink> {
        let mut writers = HashMap::new();
        let mut clocks = HashMap::new();
        for s in &cfg.sources {
            writers.insert(s.name.clone(), RawWriter::open(lake, s, group).await?);
            clocks.insert(s.name.clone(), Watermarks::new(cfg.lake_idle_ms));
        }
        let mut next: HashMap<(String, i32), i64> = HashMap::new();
        for (t, parts) in partitions {
            for p in parts {
                for s in cfg.sources.iter().filter(|s| &s.topic == t) {
                    let resume = match writers.get_mut(&s.name) {
                        Some(w) => w.committed_offset(*p).await?.map_or(0, |o| o + 1),
                        None => 0,
                    };
                    let e = next.entry((t.clone(), *p)).or_insert(resume);
                    *e = (*e).min(resume);
                    if let Some(c) = clocks.get_mut(&s.name) {
                        c.add_partition(*p);
                    }
                }
            }
        }
        Ok(Sink {
            keep: cfg.sources.iter().map(|s| s.keep_all()).collect(),
            cfg,
            lake: lake.clone(),
            writers,
            clocks,
            next,
            ledger: LedgerReader::new(lake),
            pending: HashMap::new(),
            quarantine: QuarantineWriter::open(lake, group).await?,
            refused: Vec::new(),
        })
    }

    /// The next offset to read of a partition (where to resume).
    pub fn next_offset(&self, topic: &str, partition: i32) -> i64 {
        self.next
            .get(&(topic.to_string(), partition))
            .copied()
            .unwrap_or(0)
    }

    /// Takes in one flush's messages (received at `now`): decodes them and tracks each
    /// partition's event time. [`Sink::commit`] writes them.
    pub fn receive(&mut self, msgs: &[Msg], now: i64) {
        for m in msgs {
            self.next
                .insert((m.topic.to_string(), m.partition), m.offset + 1);
            for (s, keep) in self.cfg.sources.iter().zip(&self.keep) {
                if s.topic != m.topic {
                    continue;
                }
                let decoded = s.decode_keeping(&m.payload, m.produced_ms(now), keep);
                if let Some(c) = self.clocks.get_mut(&s.name) {
                    c.observe(m.partition, decoded.as_ref().ok().map(|e| e.time_ms), now);
                }
                match decoded {
                    Ok(event) => self
                        .pending
                        .entry(s.name.clone())
                        .or_default()
                        .push(RawRecord {
                            event,
                            partition: m.partition,
                            offset: m.offset,
                            payload: String::from_utf8_lossy(&m.payload).into_owned(),
                        }),
                    Err(e) => self.refused.push(Quarantined {
                        source: s.name.clone(),
                        topic: m.topic.to_string(),
                        partition: m.partition,
                        offset: m.offset,
                        reason: e.to_string(),
                        payload: m.payload.clone(),
                        at_ms: now,
                    }),
                }
            }
        }
    }

    /// The partitions quiet for the idle timeout at `now`, with their next offset: idle if
    /// nothing is left to read in them (the caller asks the broker, see [`Sink::commit`]).
    pub fn quiet_partitions(&self, now: i64) -> Vec<(String, i32, i64)> {
        let mut out = Vec::new();
        for s in &self.cfg.sources {
            let Some(clock) = self.clocks.get(&s.name) else {
                continue;
            };
            for (p, progress) in clock.partitions() {
                if progress
                    .quiet_since()
                    .is_none_or(|t| now - t >= self.cfg.lake_idle_ms)
                {
                    out.push((s.topic.clone(), *p, self.next_offset(&s.topic, *p)));
                }
            }
        }
        out.sort();
        out.dedup();
        out
    }

    /// Writes what was received: per source, marks late events, then appends the events with
    /// the source's new watermark in one commit. `caught_up` holds the quiet partitions that
    /// have nothing left to read (idle).
    pub async fn commit(&mut self, now: i64, caught_up: &HashSet<(String, i32)>) -> Result<()> {
        let cfg = self.cfg.clone();
        // malformed events first: a crash before the raw commit re-reads them, and the
        // quarantine table's offsets skip what it already holds
        if !self.refused.is_empty() {
            self.quarantine
                .append(&self.refused)
                .await
                .context("lake sink: the quarantine table")?;
            self.refused.clear();
        }
        for s in &cfg.sources {
            let (Some(w), Some(clock)) =
                (self.writers.get_mut(&s.name), self.clocks.get_mut(&s.name))
            else {
                continue;
            };
            let parts: Vec<i32> = clock.partitions().keys().copied().collect();
            for p in parts {
                clock.set_caught_up(p, caught_up.contains(&(s.topic.clone(), p)), now);
            }
            let records = self.pending.remove(&s.name).unwrap_or_default();
            // events for sealed (or sealable) buckets are marked late before they are written
            let fresh = w.unwritten(&records).await?;
            if !fresh.is_empty() {
                let views: Vec<_> = cfg.views.iter().filter(|v| v.source == s.name).collect();
                let marks = late_marks(
                    &views,
                    cfg.lateness_ms,
                    w.watermark(),
                    &*self.ledger.snapshot().await?,
                    &fresh,
                    |p| w.app(p),
                    now,
                );
                if !marks.is_empty() {
                    let events: i64 = marks.iter().map(|m| m.events).sum();
                    tracing::info!(source = %s.name, buckets = marks.len(), events, "Late events for sealed buckets; marked for recompute.");
                    SealLedger::new(&self.lake).mark_late(&marks).await?;
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
        Ok(())
    }
}

/// Of the quiet partitions (topic, partition, next offset), those the consumer has read to
/// the end of, as the broker says. The questions stop at the first one the broker does not
/// answer (the others count as not idle until the next pass): a silent broker costs one
/// timeout, not one per partition.
async fn idle_partitions(
    consumer: &AssignedConsumer,
    quiet: Vec<(String, i32, i64)>,
) -> HashSet<(String, i32)> {
    let mut idle = HashSet::new();
    for (topic, p, next) in quiet {
        match consumer.caught_up(&topic, p, next).await {
            Some(true) => {
                idle.insert((topic, p));
            }
            Some(false) => {}
            None => break,
        }
    }
    idle
}

/// Runs the lake sink until `shutdown` turns true.
pub async fn run(
    cfg: &Config,
    bootstrap: &str,
    lake: &Lake,
    mut shutdown: watch::Receiver<bool>,
) -> Result<()> {
    let group = group(cfg);
    let mut topics: Vec<String> = cfg.sources.iter().map(|s| s.topic.clone()).collect();
    topics.sort();
    topics.dedup();
    let mut partitions = HashMap::new();
    for t in &topics {
        let p = topic_partitions(&cfg.kafka, bootstrap, t, Duration::from_secs(60)).await?;
        partitions.insert(t.clone(), p);
    }
    let mut sink = Sink::open(std::sync::Arc::new(cfg.clone()), lake, &group, &partitions).await?;
    let consumer = AssignedConsumer::new(
        &cfg.kafka,
        bootstrap,
        &group,
        &topics,
        |t, p| Some(sink.next_offset(t, p)).filter(|o| *o > 0),
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
        let now = duet_speed::now_ms();
        sink.receive(&msgs, now);
        let idle = idle_partitions(&consumer, sink.quiet_partitions(now)).await;
        sink.commit(now, &idle).await?;
        if !msgs.is_empty() {
            let progress = msgs
                .iter()
                .map(|m| ((m.topic.to_string(), m.partition), m.offset + 1))
                .collect();
            consumer.commit_progress(&progress);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Questions about quiet partitions to a broker that stopped answering end within one
    /// timeout, not one per partition: a lake sink asked them in its loop, so an outage held
    /// it (and its stop) for five seconds per quiet partition.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_silent_broker_costs_one_timeout_not_one_per_partition() {
        let topics = ["t".to_string()];
        let kafka = crate::embedded::EmbeddedKafka::start(&topics, 4).unwrap();
        let consumer = AssignedConsumer::new(
            &duet_config::KafkaConfig::default(),
            &kafka.bootstrap(),
            "g",
            &topics,
            |_, _| None,
            Duration::from_secs(30),
        )
        .await
        .unwrap();
        let quiet = || (0..4).map(|p| ("t".to_string(), p, 0)).collect::<Vec<_>>();
        // all read (nothing was produced) while the broker answers
        assert_eq!(idle_partitions(&consumer, quiet()).await.len(), 4);
        drop(kafka);
        let started = std::time::Instant::now();
        assert!(idle_partitions(&consumer, quiet()).await.is_empty());
        let took = started.elapsed();
        assert!(took < Duration::from_secs(9), "the questions took {took:?}");
    }
}
