//! Errors of the speed layer.

pub use duet_config::ViewMismatch;

/// Errors of the `duet-speed` crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A Kafka client call failed.
    #[error("kafka ({context})")]
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
    #[error("view store {path}: {operation}")]
    Store {
        /// Store location.
        path: String,
        /// What was being done.
        operation: &'static str,
        /// The store's error.
        #[source]
        source: Box<redb::Error>,
    },
    /// The Redis store failed.
    #[error("Redis store {server}: {operation}")]
    Redis {
        /// The server, without credentials.
        server: String,
        /// What was being done.
        operation: &'static str,
        /// The client's error.
        #[source]
        source: redis::RedisError,
    },
    /// The Redis store refused a batch: another worker took the partition since (a rebalance),
    /// or the server lost writes (a restart without them). Nothing of the batch's partition was
    /// written; the worker starts again from the stored offsets.
    #[error("Redis store refused a batch ({detail}); starting again from the stored offsets")]
    Fenced {
        /// The script's reason.
        detail: String,
    },
    /// A local `redis-server` could not be started.
    #[error("local Redis server: {detail}")]
    RedisServer {
        /// What failed.
        detail: String,
        /// The I/O error, if one.
        #[source]
        source: Option<std::io::Error>,
    },
    /// A blocking store task died.
    #[error("view store {path}: {operation}: the task failed")]
    Task {
        /// Store location.
        path: String,
        /// What was being done.
        operation: &'static str,
        /// The join error.
        #[source]
        source: tokio::task::JoinError,
    },
    /// A task of the speed layer's own died (a panic) or ended before it should have.
    #[error("speed layer: {what} stopped")]
    Stopped {
        /// Which task.
        what: &'static str,
        /// The join error, when the task died.
        #[source]
        source: Option<tokio::task::JoinError>,
    },
    /// A stored record could not be decoded.
    #[error("view store: corrupt {what}")]
    Corrupt {
        /// What was being read.
        what: &'static str,
        /// The decode error.
        #[source]
        source: serde_json::Error,
    },
    /// Stored bytes are not what the store wrote.
    #[error("view store: unreadable {what}")]
    Unreadable {
        /// What was being read.
        what: &'static str,
    },
    /// Merging states failed (states of different kinds).
    #[error("view `{view}`: merging states")]
    Merge {
        /// View name.
        view: String,
        /// The algebra error.
        #[source]
        source: duet_config::Error,
    },
    /// Stored views were written under another definition than the configured one.
    #[error("{store} holds views written under another definition:\n  {}", mismatches.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n  "))]
    ViewChanged {
        /// Which store.
        store: String,
        /// Each view and what changed.
        mismatches: Vec<ViewMismatch>,
    },
}

/// Result with the crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
