//! The declarative model of a Duet deployment: config types, sources and view specs, the
//! measure algebra, time buckets and event decoding. Every layer compiles from this crate;
//! it is pure (no async, no I/O beyond reading the config file).
//!
//! ```
//! let cfg = duet_config::Config::from_toml_str(r#"
//!     [[sources]]
//!     name = "orders"
//!     topic = "orders"
//!     event_id = "orderId"
//!     event_time = "createTime"
//!     fields = { orderId = "string", createTime = "int" }
//!
//!     [[views]]
//!     name = "orders_per_minute"
//!     source = "orders"
//!     bucket = "1m"
//!     measures = [{ name = "orders", kind = "count" }]
//! "#, "inline.toml".as_ref()).unwrap();
//! assert_eq!(cfg.views[0].bucket_ms, 60_000);
//! ```

pub mod codec;
pub mod decode;
mod decode_plan;
pub mod duration;
pub mod error;
pub mod filter;
pub mod measure;
pub mod model;
pub mod sketch;
pub mod time;
pub mod types;
mod validate;
pub use validate::is_pg_password_hash;
pub mod view;

use std::path::{Path, PathBuf};

pub use decode::DecodeError;
pub use error::{Error, Problem, Result};
pub use filter::{CmpOp, Filter, Literal};
pub use measure::{MeasureKind, State};
pub use model::{
    BatchConfig, JobConfig, KafkaConfig, LakeConfig, ServingConfig, SpeedConfig, StoreConfig,
    TlsConfig, TokenConfig,
};
pub use types::{FieldMap, FieldType, Num, NumType, Value};
pub use view::{
    Contribution, DimKey, Event, MeasureSpec, Quarantined, Row, RowRef, STATE_FORMAT, Source,
    ViewDefinition, ViewMismatch, ViewSpec,
};

/// A loaded, validated deployment.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The file it came from.
    pub file: PathBuf,
    /// `[kafka]`.
    pub kafka: KafkaConfig,
    /// `[lake]`.
    pub lake: LakeConfig,
    /// `[store]`.
    pub store: StoreConfig,
    /// `[speed]`.
    pub speed: SpeedConfig,
    /// `[batch]`.
    pub batch: BatchConfig,
    /// `[serving]`.
    pub serving: ServingConfig,
    /// `[[sources]]`, resolved.
    pub sources: Vec<Source>,
    /// `[[views]]`, resolved.
    pub views: Vec<ViewSpec>,
    /// `[[jobs]]`.
    pub jobs: Vec<JobConfig>,
    /// `[lake] flush_interval` in ms.
    pub lake_flush_ms: i64,
    /// `[lake] idle_timeout` in ms.
    pub lake_idle_ms: i64,
    /// `[speed] batch_interval` in ms.
    pub speed_batch_ms: i64,
    /// `[speed] sealed_retention` in ms.
    pub sealed_retention_ms: i64,
    /// `[speed] quarantine_retention` in ms.
    pub quarantine_retention_ms: i64,
    /// `[batch] lateness` in ms.
    pub lateness_ms: i64,
}

impl Config {
    /// Reads and validates a config file, reporting every problem at once.
    pub fn load(file: &Path) -> Result<Config> {
        Config::load_with_env(file, std::iter::empty())
    }

    /// Reads a config file with `DUET_<SECTION>__<KEY>` overrides taken from `env` (pass
    /// `std::env::vars()`), reporting every problem at once.
    pub fn load_with_env(
        file: &Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config> {
        let text = std::fs::read_to_string(file).map_err(|source| Error::Read {
            file: file.to_path_buf(),
            source,
        })?;
        Config::from_toml_str_with_env(&text, file, env)
    }

    /// Validates config text; `file` is used in messages.
    pub fn from_toml_str(text: &str, file: &Path) -> Result<Config> {
        Config::from_toml_str_with_env(text, file, std::iter::empty())
    }

    /// Validates config text with environment overrides (see [`Config::load_with_env`]).
    pub fn from_toml_str_with_env(
        text: &str,
        file: &Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config> {
        let env: Vec<(String, String)> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with("DUET_"))
            .collect();
        validate::load(text, file, &env)
    }

    /// The source named `name`.
    pub fn source(&self, name: &str) -> Option<&Source> {
        self.sources.iter().find(|s| s.name == name)
    }

    /// The view named `name`.
    pub fn view(&self, name: &str) -> Option<&ViewSpec> {
        self.views.iter().find(|v| v.name == name)
    }
}
