//! The configuration file as written: serde types, one per TOML section.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `[kafka]`: where events come from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// `bootstrap.servers`; absent → an embedded mock cluster is started in-process.
    pub bootstrap_servers: Option<String>,
    /// Prefix of the consumer groups: `<prefix>-speed` and `<prefix>-lake`.
    #[serde(default = "default_group_prefix")]
    pub group_prefix: String,
    /// Partitions per topic when Duet creates topics (embedded cluster, demo).
    #[serde(default = "default_partitions")]
    pub partitions: i32,
    /// Extra librdkafka client settings passed through (SASL, TLS, timeouts).
    #[serde(default)]
    pub client: BTreeMap<String, String>,
}

fn default_group_prefix() -> String {
    "duet".into()
}
fn default_partitions() -> i32 {
    4
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            bootstrap_servers: None,
            group_prefix: default_group_prefix(),
            partitions: default_partitions(),
            client: BTreeMap::new(),
        }
    }
}

/// `[lake]`: the master dataset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LakeConfig {
    /// object_store URL or local folder of the lake.
    #[serde(default = "default_lake_url")]
    pub url: String,
    /// The raw sink commits after this many events...
    #[serde(default = "default_flush_records")]
    pub flush_records: usize,
    /// ...or after this long, whichever comes first (`60s`).
    #[serde(default = "default_flush_interval")]
    pub flush_interval: String,
    /// A Kafka partition with no new data for this long, and nothing left to read, stops
    /// holding back its source's event-time watermark (`30s`).
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: String,
}

fn default_idle_timeout() -> String {
    "30s".into()
}

fn default_lake_url() -> String {
    "duet-data/lake".into()
}
fn default_flush_records() -> usize {
    1000
}
fn default_flush_interval() -> String {
    "60s".into()
}

impl Default for LakeConfig {
    fn default() -> Self {
        LakeConfig {
            url: default_lake_url(),
            flush_records: default_flush_records(),
            flush_interval: default_flush_interval(),
            idle_timeout: default_idle_timeout(),
        }
    }
}

/// `[store]`: the speed layer's view store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// File of the embedded store (used when `url` is not set).
    #[serde(default = "default_store_path")]
    pub path: String,
    /// A Redis server (`redis://host:6379/0`, `rediss://…` for TLS) or cluster
    /// (`redis-cluster://host1:6379,host2:6379`): the speed layer's views live there instead
    /// of the embedded file.
    pub url: Option<String>,
    /// Prefix of every Redis key Duet writes (`duet`).
    #[serde(default = "default_store_prefix")]
    pub prefix: String,
    /// How long Redis keeps a bucket's state after the bucket ends (`7d`), unless the view
    /// sets its own `retention`: a backstop for buckets the batch layer never seals.
    #[serde(default = "default_store_retention")]
    pub retention: String,
}

fn default_store_prefix() -> String {
    "duet".into()
}

fn default_store_retention() -> String {
    "7d".into()
}

fn default_store_path() -> String {
    "duet-data/store.redb".into()
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            path: default_store_path(),
            url: None,
            prefix: default_store_prefix(),
            retention: default_store_retention(),
        }
    }
}

/// `[speed]`: consumer batching.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpeedConfig {
    /// Most events applied in one store transaction.
    #[serde(default = "default_batch_max")]
    pub batch_max: usize,
    /// Longest wait before a partial batch is applied (`200ms`).
    #[serde(default = "default_batch_interval")]
    pub batch_interval: String,
    /// How long the speed layer keeps its state of a bucket after the bucket was sealed
    /// (`1h`); sealed buckets are served from the batch layer.
    #[serde(default = "default_sealed_retention")]
    pub sealed_retention: String,
    /// How long the view store keeps a quarantined event (`7d`); the lake's `quarantine`
    /// table keeps every one.
    #[serde(default = "default_quarantine_retention")]
    pub quarantine_retention: String,
    /// Most quarantined events the view store keeps (the newest; per partition with Redis).
    #[serde(default = "default_quarantine_cap")]
    pub quarantine_cap: usize,
}

fn default_sealed_retention() -> String {
    "1h".into()
}

fn default_quarantine_retention() -> String {
    "7d".into()
}

fn default_quarantine_cap() -> usize {
    10_000
}

fn default_batch_max() -> usize {
    1000
}
fn default_batch_interval() -> String {
    "200ms".into()
}

impl Default for SpeedConfig {
    fn default() -> Self {
        SpeedConfig {
            batch_max: default_batch_max(),
            batch_interval: default_batch_interval(),
            sealed_retention: default_sealed_retention(),
            quarantine_retention: default_quarantine_retention(),
            quarantine_cap: default_quarantine_cap(),
        }
    }
}

/// `[batch]`: sealing policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchConfig {
    /// A bucket is sealed by scheduled jobs only once its end is this far behind both the
    /// clock and the lake's event-time watermark (`30s`).
    #[serde(default = "default_lateness")]
    pub lateness: String,
}

fn default_lateness() -> String {
    "30s".into()
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            lateness: default_lateness(),
        }
    }
}

/// `[serving]`: the query API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServingConfig {
    /// Address of the HTTP server.
    #[serde(default = "default_bind")]
    pub bind: String,
    /// Address of the PostgreSQL wire protocol server (SQL for BI tools); none: not served.
    #[serde(default)]
    pub pg_bind: Option<String>,
    /// Bearer tokens of the HTTP API; none: the API is open and binds only to loopback.
    #[serde(default)]
    pub tokens: Vec<TokenConfig>,
    /// TLS on both ports; none: plain HTTP and PostgreSQL without TLS.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
}

/// `[serving.tls]`: the certificate both serving ports present.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file of the certificate chain, the server's first.
    pub cert: String,
    /// PEM file of the private key (PKCS#8, PKCS#1 or SEC1).
    pub key: String,
}

/// `[[serving.tokens]]`: one client of the serving layer: a bearer token of the HTTP API
/// (stored as its SHA-256), a password of the PostgreSQL port (stored as its PBKDF2 hash, the
/// user being `name`), or both; the views it may read and its request rate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// Who holds it (in logs and metrics, never the token); the PostgreSQL user name.
    pub name: String,
    /// SHA-256 of the HTTP bearer token, 64 hex digits (`duet token new` prints a token and
    /// its hash); none: no HTTP access.
    #[serde(default)]
    pub sha256: Option<String>,
    /// The PostgreSQL password as `pbkdf2-sha256$4096$<salt hex>$<hash hex>` (SCRAM-SHA-256's
    /// salted password; `duet token new --pg` prints a password and its hash); none: no SQL
    /// access.
    #[serde(default)]
    pub pg_password: Option<String>,
    /// The views it may read; `"*"`: all of them, and the quarantine and metrics.
    #[serde(default = "all_views")]
    pub views: Vec<String>,
    /// Requests per second it may make (a burst of as many).
    #[serde(default = "default_rate")]
    pub rate: u32,
}

fn all_views() -> Vec<String> {
    vec!["*".into()]
}

fn default_rate() -> u32 {
    100
}

fn default_bind() -> String {
    "127.0.0.1:8080".into()
}

impl Default for ServingConfig {
    fn default() -> Self {
        ServingConfig {
            bind: default_bind(),
            pg_bind: None,
            tokens: Vec::new(),
            tls: None,
        }
    }
}

/// One string or a list of strings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    /// A single name.
    One(String),
    /// Several names.
    Many(Vec<String>),
}

impl OneOrMany {
    /// The names as a list.
    pub fn to_vec(&self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s.clone()],
            OneOrMany::Many(v) => v.clone(),
        }
    }
}

/// `[[sources]]`: a Kafka topic of JSON events.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// Source name (also the lake table `raw/<name>`).
    pub name: String,
    /// Kafka topic.
    pub topic: String,
    /// Field or fields whose values identify an event; duplicates are dropped.
    pub event_id: OneOrMany,
    /// Int field with the event time in epoch milliseconds.
    pub event_time: String,
    /// Declared fields and their types (`string`, `int`, `decimal(2)`, `array<struct<…>>`).
    pub fields: BTreeMap<String, String>,
    /// Fields that must be present and non-null, or the event is quarantined.
    #[serde(default)]
    pub required: Vec<String>,
    /// A filter every valid event must pass, or it is quarantined (`totalAmount > 0`).
    pub check: Option<String>,
    /// Events whose time is further than this ahead of the time their message was produced
    /// are quarantined (`1h`).
    #[serde(default = "default_max_future")]
    pub max_future: String,
}

fn default_max_future() -> String {
    "1h".into()
}

/// One measure of a view.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeasureConfig {
    /// Name of the output column.
    pub name: String,
    /// count, sum, min, max, avg, distinct_count or top_k.
    pub kind: String,
    /// Input field (all kinds but count; the key for top_k).
    pub field: Option<String>,
    /// top_k only: numeric weight field (absent → count rows).
    pub by: Option<String>,
    /// top_k only: how many keys (default 10).
    pub k: Option<usize>,
}

/// `[[views]]`: an aggregate kept by both layers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ViewConfig {
    /// View name (also the lake table `views/<name>`).
    pub name: String,
    /// What the view shows, for people.
    pub description: Option<String>,
    /// Source name.
    pub source: String,
    /// Rows kept (`orderStatus == 'paid'`).
    pub filter: Option<String>,
    /// Int field giving the time of a row (default: the source's event time).
    pub time: Option<String>,
    /// Bucket width (`1m`, `1h`).
    pub bucket: String,
    /// Array field whose elements become the rows (`items`).
    pub explode: Option<String>,
    /// Group-by fields.
    #[serde(default)]
    pub dimensions: Vec<String>,
    /// Aggregates.
    pub measures: Vec<MeasureConfig>,
    /// How long the Redis store keeps a bucket's state after the bucket ends (default
    /// `[store] retention`).
    pub retention: Option<String>,
}

/// `[[jobs]]`: scheduled batch recomputes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobConfig {
    /// Job name.
    pub name: String,
    /// One view...
    pub view: Option<String>,
    /// ...or several.
    #[serde(default)]
    pub views: Vec<String>,
    /// Cron expression with seconds: `0 * * * * *` = every minute.
    pub schedule: String,
}

impl JobConfig {
    /// Every view the job recomputes.
    pub fn all_views(&self) -> Vec<String> {
        self.view
            .iter()
            .cloned()
            .chain(self.views.iter().cloned())
            .collect()
    }
}
