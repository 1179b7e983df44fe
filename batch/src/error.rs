//! Errors of the batch layer.

/// Errors of the `duet-batch` crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The Polars plan failed.
    #[error("view `{view}`: polars: {source}")]
    Polars {
        /// View name.
        view: String,
        /// The Polars error.
        #[source]
        source: polars::error::PolarsError,
    },
    /// Reading or writing the lake failed.
    #[error(transparent)]
    Lake(#[from] duet_lake::Error),
    /// A value produced by the plan did not parse as the measure's type.
    #[error("view `{view}`, measure `{measure}`: unexpected value `{value}` from the plan")]
    Value {
        /// View name.
        view: String,
        /// Measure name.
        measure: String,
        /// The text.
        value: String,
    },
    /// The view names an unknown source (config and lake disagree).
    #[error("view `{view}`: unknown source `{source_name}`")]
    UnknownSource {
        /// View name.
        view: String,
        /// Source name.
        source_name: String,
    },
    /// The range is empty or inverted.
    #[error("view `{view}`: empty range [{from}, {to})")]
    EmptyRange {
        /// View name.
        view: String,
        /// Start, epoch ms.
        from: i64,
        /// End, epoch ms.
        to: i64,
    },
    /// The compute task died.
    #[error("view `{view}`: compute task failed: {message}")]
    Task {
        /// View name.
        view: String,
        /// What happened.
        message: String,
    },
}

/// Result with the crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
