//! Producing events to Kafka: the demo's load generator and a helper for tests.

use std::time::Duration;

use anyhow::{Context, Result};
use duet_config::{Config, KafkaConfig};
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio::sync::watch;

use crate::generator::Generator;

/// An idempotent producer for `bootstrap`.
pub fn producer(kafka: &KafkaConfig, bootstrap: &str) -> Result<FutureProducer> {
    let mut c = duet_speed::kafka::client_config(kafka, bootstrap, None);
    c.set("enable.idempotence", "true")
        .set("linger.ms", "10")
        .set("compression.type", "lz4");
    c.create().context("create Kafka producer")
}

/// Sends one message and waits for the broker's acknowledgement.
pub async fn send(p: &FutureProducer, topic: &str, key: &str, value: &[u8]) -> Result<(i32, i64)> {
    let d = p
        .send(
            FutureRecord::to(topic).key(key).payload(value),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)
        .with_context(|| format!("produce to {topic}"))?;
    Ok((d.partition, d.offset))
}

/// Produces generated events at `rate` per second until `shutdown` turns true.
pub async fn generate(
    cfg: &Config,
    bootstrap: &str,
    rate: u32,
    mut shutdown: watch::Receiver<bool>,
) -> Result<()> {
    let p = producer(&cfg.kafka, bootstrap)?;
    let topic_of = |source: &str| cfg.source(source).map(|s| s.topic.clone());
    // one message in 500 is malformed, so that the quarantine has something to show
    let mut g = Generator::new(rand::random(), 2_000).with_malformed_every(500);
    let tick = Duration::from_millis(100);
    let per_tick = (rate as f64 / 10.0).max(0.0);
    let mut owed = 0.0;
    let mut interval = tokio::time::interval(tick);
    loop {
        tokio::select! {
            _ = shutdown.wait_for(|s| *s) => break,
            _ = interval.tick() => {}
        }
        owed += per_tick;
        while owed >= 1.0 {
            owed -= 1.0;
            let e = g.next(duet_speed::now_ms());
            let Some(topic) = topic_of(e.source) else {
                continue;
            };
            let bytes = e.payload();
            let record = FutureRecord::to(&topic).key(&e.key).payload(&bytes);
            if let Err((err, _)) = p.send_result(record).map(|_| ()) {
                tracing::warn!(error = %err, "Generator could not enqueue an event.");
            }
        }
    }
    Ok(())
}
