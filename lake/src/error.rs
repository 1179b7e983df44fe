//! Errors of the lake.

/// Errors of the `duet-lake` crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The lake URL is not usable.
    #[error("lake location `{url}`: {message}")]
    Location {
        /// The configured URL or path.
        url: String,
        /// What is wrong.
        message: String,
    },
    /// A Delta operation failed.
    #[error("delta table {table}: {source}")]
    Delta {
        /// Table URL.
        table: String,
        /// The Delta error.
        #[source]
        source: Box<deltalake::DeltaTableError>,
    },
    /// Another writer committed to the table first in a way that invalidates this commit
    /// (two recomputes of one range, two compactions of one partition); recompute and retry.
    #[error("delta table {table}: a concurrent commit conflicts with this one")]
    Conflict {
        /// Table URL.
        table: String,
        /// The Delta error.
        #[source]
        source: Box<deltalake::DeltaTableError>,
    },
    /// Another process recorded the same Kafka offsets in the table: two lake sinks of one
    /// consumer group are running.
    #[error(
        "delta table {table}: another writer recorded offsets for `{app}` (two lake sinks of one consumer group?)"
    )]
    ConcurrentWriter {
        /// Table URL.
        table: String,
        /// The `txn` app id.
        app: String,
    },
    /// A table holds data Duet cannot read back (a column of an unexpected type).
    #[error("{what}: not what Duet wrote")]
    Corrupt {
        /// What was read.
        what: String,
    },
    /// A view table was written under another definition than the configured one.
    #[error("{0}")]
    ViewChanged(duet_config::ViewMismatch),
    /// Building or reading Arrow data failed.
    #[error("arrow data of table {table}: {source}")]
    Arrow {
        /// Table URL.
        table: String,
        /// The Arrow error.
        #[source]
        source: deltalake::arrow::error::ArrowError,
    },
    /// Reading a Parquet file failed.
    #[error("parquet file {file}: {source}")]
    Parquet {
        /// File path.
        file: String,
        /// The Parquet error.
        #[source]
        source: deltalake::parquet::errors::ParquetError,
    },
    /// Object storage failed.
    #[error("object store {path}: {source}")]
    ObjectStore {
        /// Object path.
        path: String,
        /// The object_store error.
        #[source]
        source: object_store::Error,
    },
    /// A stored view state could not be decoded.
    #[error("view `{view}`: stored state is unreadable: {message}")]
    State {
        /// View name.
        view: String,
        /// What went wrong.
        message: String,
    },
}

/// Result with the crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
