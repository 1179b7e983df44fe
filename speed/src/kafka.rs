//! Kafka plumbing shared by Duet's consumers: client settings from config, partition
//! discovery, manual assignment from offsets that Duet stores itself, and batched polling.
//!
//! Offsets live with the state they produced (view store, Delta `txn`), not in Kafka: each
//! consumer is assigned every partition of its topics and starts where its own state says.
//! Offsets are also committed to the group (asynchronously) so lag tools see progress.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use duet_config::KafkaConfig;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use crate::error::{Error, Result};

/// One consumed message, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Msg {
    /// Topic (a name of up to 24 bytes is kept inline, without an allocation).
    pub topic: compact_str::CompactString,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Value bytes (empty for a null value).
    pub payload: Vec<u8>,
    /// The message's timestamp (epoch ms, as the producer or broker set it), if it has one.
    pub timestamp_ms: Option<i64>,
}

impl Msg {
    /// When the message was produced: its timestamp, or `received_ms` if it has none.
    pub fn produced_ms(&self, received_ms: i64) -> i64 {
        self.timestamp_ms.unwrap_or(received_ms)
    }
}

/// librdkafka settings for a client of `bootstrap` in `group` (a consumer: with Duet's fetch
/// settings, 10 ms for `fetch.wait.max.ms` and `fetch.queue.backoff.ms`), with the config's
/// pass-through settings applied last.
pub fn client_config(kafka: &KafkaConfig, bootstrap: &str, group: Option<&str>) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap);
    if let Some(g) = group {
        c.set("group.id", g)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest");
    }
    if group.is_some() {
        // a broker holds a fetch until data arrives or `fetch.wait.max.ms` passes: 500 ms by
        // default, which would be the speed layer's freshness on a quiet partition; and once
        // the local queue is full, librdkafka postpones a partition's next fetch by
        // `fetch.queue.backoff.ms`, 1 s by default, which starves a consumer that drains the
        // queue unevenly (the speed layer read 112 k events/s with it, 156 k with 5 ms)
        c.set("fetch.wait.max.ms", "10")
            .set("fetch.queue.backoff.ms", "10");
    }
    for (k, v) in &kafka.client {
        c.set(k, v);
    }
    c
}

/// A consumer assigned to all partitions of some topics.
pub struct AssignedConsumer {
    consumer: std::sync::Arc<StreamConsumer>,
    group: String,
}

impl AssignedConsumer {
    /// Creates the consumer, waits (up to `wait`) for the topics to exist, and assigns every
    /// partition at `start(topic, partition)` (or the earliest offset).
    pub async fn new(
        kafka: &KafkaConfig,
        bootstrap: &str,
        group: &str,
        topics: &[String],
        start: impl Fn(&str, i32) -> Option<i64>,
        wait: Duration,
    ) -> Result<AssignedConsumer> {
        let consumer: StreamConsumer = client_config(kafka, bootstrap, Some(group))
            .create()
            .map_err(|source| Error::Kafka {
                context: format!("create consumer for {bootstrap}"),
                source,
            })?;
        let mut tpl = TopicPartitionList::new();
        for topic in topics {
            for p in partitions(&consumer, bootstrap, topic, wait).await? {
                let offset = start(topic, p).map_or(Offset::Beginning, Offset::Offset);
                tpl.add_partition_offset(topic, p, offset)
                    .map_err(|source| Error::Kafka {
                        context: format!("assign {topic}/{p}"),
                        source,
                    })?;
            }
        }
        consumer.assign(&tpl).map_err(|source| Error::Kafka {
            context: "assign partitions".into(),
            source,
        })?;
        Ok(AssignedConsumer {
            consumer: std::sync::Arc::new(consumer),
            group: group.to_string(),
        })
    }

    /// Receives up to `max` messages, waiting at most `wait` after the first call.
    pub async fn next_batch(&self, max: usize, wait: Duration) -> Result<Vec<Msg>> {
        receive(&self.consumer, &self.group, max, wait).await
    }

    /// Whether the consumer has read everything the broker has of `topic`/`partition`, given
    /// the next offset it will read: the partition's high watermark, asked of the broker, is
    /// not beyond `next`. `None` when the broker does not answer within five seconds.
    pub async fn caught_up(&self, topic: &str, partition: i32, next: i64) -> Option<bool> {
        let (consumer, topic) = (self.consumer.clone(), topic.to_string());
        let high = tokio::task::spawn_blocking(move || {
            consumer.fetch_watermarks(&topic, partition, Duration::from_secs(5))
        })
        .await;
        match high {
            Ok(Ok((_, high))) => Some(next >= high),
            _ => None,
        }
    }

    /// Tells the group how far we got (monitoring only; Duet's own state is the truth).
    pub fn commit_progress(&self, next: &HashMap<(String, i32), i64>) {
        commit_progress(self.consumer.as_ref(), &self.group, next);
    }
}

/// Commits `next` offsets to the group, asynchronously (monitoring only).
fn commit_progress<C: ConsumerContext>(
    consumer: &impl Consumer<C>,
    group: &str,
    next: &HashMap<(String, i32), i64>,
) {
    let mut tpl = TopicPartitionList::new();
    for ((t, p), o) in next {
        if tpl.add_partition_offset(t, *p, Offset::Offset(*o)).is_err() {
            return;
        }
    }
    if let Err(e) = consumer.commit(&tpl, CommitMode::Async) {
        tracing::debug!(%group, error = %e, "Offset commit to the group failed.");
    }
}

/// Receives up to `max` messages from `consumer`, waiting at most `wait`.
///
/// One message stream serves the whole batch, and a message already queued is taken without
/// arming a timer or reading the clock: the deadline is looked at only when the queue is
/// empty, and every [`CLOCK_EVERY`] messages (a queue refilled as fast as it is read would
/// otherwise hold the batch open until it is full).
async fn receive<C: ConsumerContext + 'static>(
    consumer: &StreamConsumer<C>,
    group: &str,
    max: usize,
    wait: Duration,
) -> Result<Vec<Msg>> {
    use futures::{FutureExt as _, StreamExt as _};
    let deadline = tokio::time::Instant::now() + wait;
    let mut stream = consumer.stream();
    let mut out = Vec::new();
    while out.len() < max {
        let ready = if out.len() % CLOCK_EVERY == CLOCK_EVERY - 1
            && tokio::time::Instant::now() >= deadline
        {
            break;
        } else {
            stream.next().now_or_never()
        };
        let next = match ready {
            Some(next) => next,
            None => match tokio::time::timeout_at(deadline, stream.next()).await {
                Err(_) => break,
                Ok(next) => next,
            },
        };
        match next {
            // a consumer's stream never ends
            None => break,
            Some(Err(e)) => {
                tracing::warn!(%group, error = %e, "Kafka receive error.");
                if tokio::time::Instant::now() >= deadline {
                    break;
                }
            }
            Some(Ok(m)) => out.push(Msg {
                topic: m.topic().into(),
                partition: m.partition(),
                offset: m.offset(),
                payload: m.payload().map(<[u8]>::to_vec).unwrap_or_default(),
                timestamp_ms: m.timestamp().to_millis().filter(|t| *t >= 0),
            }),
        }
    }
    Ok(out)
}

/// How many messages [`receive`] takes between two looks at the clock.
const CLOCK_EVERY: usize = 256;

/// A change of a group member's partitions, as the group protocol reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rebalanced {
    /// Partitions added to this member (topic, partition).
    Assigned(Vec<(String, i32)>),
    /// Partitions taken from this member.
    Revoked(Vec<(String, i32)>),
}

/// Collects rebalances as librdkafka reports them (inside a poll) for the consumer's owner to
/// act on between batches.
#[derive(Default)]
pub struct GroupContext {
    events: std::sync::Mutex<Vec<Rebalanced>>,
}

impl rdkafka::ClientContext for GroupContext {}

impl ConsumerContext for GroupContext {
    fn post_rebalance(
        &self,
        _consumer: &rdkafka::consumer::BaseConsumer<Self>,
        rebalance: &rdkafka::consumer::Rebalance<'_>,
    ) {
        use rdkafka::consumer::Rebalance;
        let list = |tpl: &TopicPartitionList| -> Vec<(String, i32)> {
            tpl.elements()
                .iter()
                .map(|e| (e.topic().to_string(), e.partition()))
                .collect()
        };
        let event = match rebalance {
            Rebalance::Assign(tpl) => Rebalanced::Assigned(list(tpl)),
            Rebalance::Revoke(tpl) => Rebalanced::Revoked(list(tpl)),
            Rebalance::Error(e) => {
                tracing::warn!(error = %e, "Kafka rebalance error.");
                return;
            }
        };
        self.events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(event);
    }
}

/// A member of a consumer group (cooperative-sticky assignment): Kafka spreads the topics'
/// partitions over the group's members and moves them as members come and go.
pub struct GroupConsumer {
    consumer: std::sync::Arc<StreamConsumer<GroupContext>>,
    group: String,
    /// Seeks done so far (see [`GroupConsumer::seeks`]).
    seeks: std::sync::atomic::AtomicU64,
}

impl GroupConsumer {
    /// Joins `group` for `topics` (waiting up to `wait` for the topics to exist).
    pub async fn new(
        kafka: &KafkaConfig,
        bootstrap: &str,
        group: &str,
        topics: &[String],
        wait: Duration,
    ) -> Result<GroupConsumer> {
        let mut config = client_config(kafka, bootstrap, Some(group));
        // defaults a config's pass-through settings may override: a crashed member's
        // partitions move after `session.timeout.ms`, 10 s rather than librdkafka's 45 s (6 s
        // is the brokers' usual minimum)
        for (k, v) in [
            ("partition.assignment.strategy", "cooperative-sticky"),
            ("session.timeout.ms", "10000"),
            ("heartbeat.interval.ms", "1000"),
        ] {
            if !kafka.client.contains_key(k) {
                config.set(k, v);
            }
        }
        let consumer: StreamConsumer<GroupContext> = config
            .create_with_context(GroupContext::default())
            .map_err(|source| Error::Kafka {
                context: format!("create consumer for {bootstrap}"),
                source,
            })?;
        for topic in topics {
            partitions(&consumer, bootstrap, topic, wait).await?;
        }
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        consumer.subscribe(&names).map_err(|source| Error::Kafka {
            context: format!("subscribe to {}", names.join(", ")),
            source,
        })?;
        Ok(GroupConsumer {
            consumer: std::sync::Arc::new(consumer),
            group: group.to_string(),
            seeks: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// Receives up to `max` messages, waiting at most `wait`. Rebalances happen inside this
    /// call; [`GroupConsumer::rebalances`] tells what they changed.
    pub async fn next_batch(&self, max: usize, wait: Duration) -> Result<Vec<Msg>> {
        receive(&self.consumer, &self.group, max, wait).await
    }

    /// The rebalances since the last call, oldest first.
    pub fn rebalances(&self) -> Vec<Rebalanced> {
        std::mem::take(
            &mut *self
                .consumer
                .context()
                .events
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        )
    }

    /// Makes the next message read from `topic`/`partition` the one at `next` (the start of
    /// the partition for `None`), and returns the seek count it ends (see
    /// [`GroupConsumer::seeks`]). Fails while the partition is not assigned yet.
    pub fn seek(&self, topic: &str, partition: i32, next: Option<i64>) -> Result<u64> {
        let offset = next.map_or(Offset::Beginning, Offset::Offset);
        self.consumer
            .seek(topic, partition, offset, Duration::from_secs(5))
            .map_err(|source| Error::Kafka {
                context: format!("seek {topic}/{partition} to {offset:?}"),
                source,
            })?;
        Ok(self.seeks.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1)
    }

    /// How many seeks have ended so far. A batch whose read began at count `n` holds only
    /// messages read after every seek counted up to `n` (librdkafka drops what it fetched of
    /// a partition before a seek in it).
    pub fn seeks(&self) -> u64 {
        self.seeks.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Starts a task that, every `every`, asks the broker for the high watermark of each
    /// assigned partition and records in `counters` how far the consumer's position is behind
    /// it (replacing what was recorded: revoked partitions drop out). A round stops at the
    /// first partition the broker does not answer for within five seconds.
    pub fn watch_lag(
        &self,
        counters: std::sync::Arc<crate::SpeedCounters>,
        every: Duration,
    ) -> tokio::task::JoinHandle<()> {
        let consumer = self.consumer.clone();
        tokio::spawn(async move {
            loop {
                let c = consumer.clone();
                if let Ok(lags) = tokio::task::spawn_blocking(move || lags(c.as_ref())).await {
                    counters.clear_lag();
                    counters.set_lag(lags);
                }
                tokio::time::sleep(every).await;
            }
        })
    }

    /// Tells the group how far we got (monitoring only; the store's offsets are the truth).
    pub fn commit_progress(&self, next: &HashMap<(String, i32), i64>) {
        commit_progress(self.consumer.as_ref(), &self.group, next);
    }
}

/// The lag of each partition assigned to `consumer`: the broker's high watermark minus the
/// consumer's position (its low watermark before the first fetch).
fn lags<C: ConsumerContext>(consumer: &impl Consumer<C>) -> Vec<crate::PartitionLag> {
    let Ok(positions) = consumer.position() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in positions.elements() {
        // the round ends at the first question the broker does not answer: a silent broker
        // costs one timeout, not one per partition (the round runs in a blocking task that a
        // stopping process waits for); the next round asks again
        let Ok((low, high)) =
            consumer.fetch_watermarks(e.topic(), e.partition(), Duration::from_secs(5))
        else {
            break;
        };
        let next = match e.offset() {
            Offset::Offset(o) => o,
            _ => low,
        };
        out.push(crate::PartitionLag {
            topic: e.topic().to_string(),
            partition: e.partition(),
            lag: (high - next).max(0),
        });
    }
    out
}

/// The partition ids of `topic` on `bootstrap`, waiting up to `wait` for it to appear.
pub async fn topic_partitions(
    kafka: &KafkaConfig,
    bootstrap: &str,
    topic: &str,
    wait: Duration,
) -> Result<Vec<i32>> {
    let consumer: StreamConsumer =
        client_config(kafka, bootstrap, None)
            .create()
            .map_err(|source| Error::Kafka {
                context: format!("create metadata client for {bootstrap}"),
                source,
            })?;
    partitions(&consumer, bootstrap, topic, wait).await
}

/// The partition ids of `topic`, waiting up to `wait` for it to appear.
pub async fn partitions<C: ConsumerContext>(
    consumer: &impl Consumer<C>,
    bootstrap: &str,
    topic: &str,
    wait: Duration,
) -> Result<Vec<i32>> {
    let start = Instant::now();
    loop {
        let md = consumer.fetch_metadata(Some(topic), Duration::from_secs(5));
        if let Ok(md) = md
            && let Some(t) = md.topics().iter().find(|t| t.name() == topic)
            && t.error().is_none()
            && !t.partitions().is_empty()
        {
            return Ok(t.partitions().iter().map(|p| p.id()).collect());
        }
        if start.elapsed() >= wait {
            return Err(Error::TopicMissing {
                topic: topic.into(),
                bootstrap: bootstrap.into(),
                waited_ms: wait.as_millis() as u64,
            });
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A round of lag questions to a broker that does not answer ends within one timeout,
    /// not one per partition (with 154 partitions, a stopped speed layer once waited minutes
    /// for it to end).
    #[test]
    fn lag_questions_to_a_silent_broker_end_within_one_timeout() {
        let c: rdkafka::consumer::BaseConsumer =
            client_config(&KafkaConfig::default(), "127.0.0.1:1", Some("g"))
                .create()
                .unwrap();
        let mut tpl = TopicPartitionList::new();
        for p in 0..4 {
            tpl.add_partition_offset("t", p, Offset::Offset(0)).unwrap();
        }
        c.assign(&tpl).unwrap();
        let started = std::time::Instant::now();
        assert!(lags(&c).is_empty());
        let took = started.elapsed();
        assert!(took < Duration::from_secs(9), "a round took {took:?}");
    }

    #[test]
    fn consumers_fetch_without_long_backoffs_unless_configured() {
        let mut kafka = KafkaConfig::default();
        let c = client_config(&kafka, "127.0.0.1:1", Some("g"));
        assert_eq!(c.get("fetch.queue.backoff.ms"), Some("10"));
        assert_eq!(c.get("fetch.wait.max.ms"), Some("10"));
        // producers and admin clients keep librdkafka's defaults
        assert_eq!(
            client_config(&kafka, "127.0.0.1:1", None).get("fetch.queue.backoff.ms"),
            None
        );
        // the config's pass-through settings win
        kafka
            .client
            .insert("fetch.queue.backoff.ms".into(), "200".into());
        let c = client_config(&kafka, "127.0.0.1:1", Some("g"));
        assert_eq!(c.get("fetch.queue.backoff.ms"), Some("200"));
    }
}
