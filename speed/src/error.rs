//! Errors of the speed layer.

/// Errors of the `duet-speed` crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A Kafka client call failed.
    #[error("kafka ({context}): {source}")]
    Kafka {
        /// What was being done.
        context: String,
        /// The client error.
        #[source]
        source: rdkafka::error::KafkaError,
    },
    /// A topic did not appear in the cluster's metadata in time.
    #[error("topic `{topic}` does not exist on {bootstrap} (waited {waited_ms} ms)")]
    TopicMissing {
        /// The topic.
        topic: String,
        /// The cluster.
        bootstrap: String,
        /// How long we waited.
        waited_ms: u64,
    },
    /// The embedded store failed.
    #[error("view store {path}: {message}")]
    Store {
        /// Store location.
        path: String,
        /// What failed.
        message: String,
    },
    /// A stored state or record could not be decoded.
    #[error("view store: corrupt {what}: {message}")]
    Corrupt {
        /// What was being read.
        what: &'static str,
        /// The decode error.
        message: String,
    },
    /// Merging states failed (a view's measures changed under stored state).
    #[error("view `{view}`: {source}")]
    Merge {
        /// View name.
        view: String,
        /// The algebra error.
        #[source]
        source: duet_config::Error,
    },
}

/// Result with the crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
