//! The embedded Kafka: librdkafka's mock cluster, a real Kafka protocol server on 127.0.0.1,
//! in memory, living as long as this value. It keeps at most 5 MB per partition, so it suits
//! demos and tests whose consumers keep up; production points `[kafka] bootstrap_servers` at
//! a real cluster.

use anyhow::{Context, Result};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;

/// A running embedded cluster.
pub struct EmbeddedKafka {
    cluster: MockCluster<'static, DefaultProducerContext>,
}

impl EmbeddedKafka {
    /// Starts a one-broker cluster with `topics`, each of `partitions` partitions.
    pub fn start(topics: &[String], partitions: i32) -> Result<EmbeddedKafka> {
        let cluster = MockCluster::new(1).context("start the embedded Kafka mock cluster")?;
        for t in topics {
            cluster
                .create_topic(t, partitions, 1)
                .with_context(|| format!("create topic {t}"))?;
        }
        Ok(EmbeddedKafka { cluster })
    }

    /// `bootstrap.servers` of the cluster.
    pub fn bootstrap(&self) -> String {
        self.cluster.bootstrap_servers()
    }
}
