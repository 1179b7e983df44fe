//! The Redis store: the speed layer's views in a real Redis, readable with `redis-cli`, with
//! the same code on one server (`redis://…`) and on a Redis Cluster
//! (`redis-cluster://host1:port,host2:port`, pipelines split by hash tag).
//!
//! # Key layout (prefix `duet`, see `docs/redis.md`)
//! Everything one Kafka partition's events change lives under one hash tag, the partition's
//! *tag* `<group>/<topic>/<partition>`, so one Lua script can change it atomically on a
//! cluster too:
//!
//! | key | type | holds |
//! |---|---|---|
//! | `duet:{tag}:state:<view>:<bucket RFC 3339>` | hash | field: dimension values as JSON (`["paid"]`), value: the binary state ([`duet_config::codec`]) |
//! | `duet:{tag}:buckets:<view>` | sorted set | bucket labels scored by bucket start (ms) |
//! | `duet:{tag}:seen:<view>` | sorted set | ids of events read from the partition that count in the view, scored by the end of the latest bucket they count in; removed once the view is sealed past it |
//! | `duet:{tag}:offset` | string | next offset to read |
//! | `duet:{tag}:epoch` | string | the assignment epoch of the worker that owns the partition |
//! | `duet:{tag}:committed_at` | string | when the last batch was applied, epoch ms |
//! | `duet:{tag}:quarantine` | list | malformed events read from the partition, JSON, newest first (`[speed] quarantine_cap`; expires `quarantine_retention` after the last one) |
//! | `duet:{tag}:corrupt` | list | stored states that could not be read, set aside, JSON |
//! | `duet:partitions` | set | every tag written to |
//! | `duet:definitions` | hash | view → the definition its states were written under, JSON |
//! | `duet:watermarks` | hash | source → highest event time applied, ms |
//!
//! A view's answer merges its partitions' states with the measure algebra when read.
//!
//! # Exactly-once effect
//! A worker takes a partition by incrementing its epoch and reading its offset. Each batch is
//! one `EVAL` per partition (pipelined, one round trip for the whole batch) that first checks
//! the epoch *and* that the stored offset is the one this worker last wrote, then writes the
//! new states, ids, quarantine and offset together. A worker that lost the partition (its
//! epoch is stale) or whose server lost writes (a restart without them) is refused with
//! [`Error::Fenced`]; it forgets everything it holds and starts again from the stored offsets.
//!
//! # Dedup
//! Ids are remembered per partition: the Redis store drops a copy of an event read from the
//! same partition (Kafka producers retry into the partition of the original, and keyed
//! producers send an id's copies to one partition); a copy in another partition is counted
//! by the speed layer and removed by the batch layer's seal.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use duet_config::{DimKey, Row, State, ViewDefinition, ViewSpec, codec};
use redis::Value;
use redis::aio::ConnectionManager;
use redis::cluster_async::ClusterConnection;

use super::{PartitionKey, Quarantined, SpeedBatch, StateKey, StoreStats, ViewStore};
use crate::error::{Error, Result};

/// The newest set-aside states kept per partition.
const CORRUPT_CAP: usize = 1_000;
/// Hot states kept in memory between commits, at most (then the cache starts again).
const CACHE_CAP: usize = 200_000;

/// The script that applies one partition's share of a batch; see the module docs.
const APPLY: &str = r"
local base = ARGV[1]
local epoch = redis.call('GET', KEYS[1])
if epoch ~= ARGV[2] then
  return redis.error_reply('DUET_FENCED epoch of ' .. base .. ' is ' .. tostring(epoch) .. ', not ' .. ARGV[2])
end
local offset = redis.call('GET', KEYS[2])
if (offset or '') ~= ARGV[3] then
  return redis.error_reply('DUET_FENCED offset of ' .. base .. ' is ' .. tostring(offset) .. ', not ' .. ARGV[3])
end
if ARGV[4] ~= '' then redis.call('SET', KEYS[2], ARGV[4]) end
redis.call('SET', KEYS[3], ARGV[5])
local function expire_at_least(key, at)
  local t = redis.call('PEXPIRETIME', key)
  if t >= 0 and t < tonumber(at) then redis.call('PEXPIREAT', key, at) end
  if t == -1 then redis.call('PEXPIREAT', key, at) end
end
-- the latest expiry each sorted set needs, set once per set
local expiry = {}
local i = 6
local n = tonumber(ARGV[i]); i = i + 1
for _ = 1, n do
  local view, ms, label, field, bytes, exp = ARGV[i], ARGV[i+1], ARGV[i+2], ARGV[i+3], ARGV[i+4], ARGV[i+5]
  i = i + 6
  local h = base .. 'state:' .. view .. ':' .. label
  redis.call('HSET', h, field, bytes)
  redis.call('PEXPIREAT', h, exp)
  local z = base .. 'buckets:' .. view
  redis.call('ZADD', z, ms, label)
  if not expiry[z] or expiry[z] < tonumber(exp) then expiry[z] = tonumber(exp) end
end
n = tonumber(ARGV[i]); i = i + 1
for _ = 1, n do
  local view, before = ARGV[i], ARGV[i+1]
  i = i + 2
  local z = base .. 'buckets:' .. view
  for _, label in ipairs(redis.call('ZRANGEBYSCORE', z, '-inf', '(' .. before)) do
    redis.call('DEL', base .. 'state:' .. view .. ':' .. label)
  end
  redis.call('ZREMRANGEBYSCORE', z, '-inf', '(' .. before)
end
n = tonumber(ARGV[i]); i = i + 1
for _ = 1, n do
  local view, cutoff = ARGV[i], ARGV[i+1]
  i = i + 2
  redis.call('ZREMRANGEBYSCORE', base .. 'seen:' .. view, '-inf', cutoff)
end
n = tonumber(ARGV[i]); i = i + 1
for _ = 1, n do
  local view, id, score, exp = ARGV[i], ARGV[i+1], ARGV[i+2], ARGV[i+3]
  i = i + 4
  local z = base .. 'seen:' .. view
  redis.call('ZADD', z, 'GT', score, id)
  if not expiry[z] or expiry[z] < tonumber(exp) then expiry[z] = tonumber(exp) end
end
for key, at in pairs(expiry) do expire_at_least(key, at) end
n = tonumber(ARGV[i]); i = i + 1
for _ = 1, n do
  redis.call('LPUSH', KEYS[4], ARGV[i]); i = i + 1
end
if n > 0 then
  redis.call('LTRIM', KEYS[4], 0, tonumber(ARGV[i]) - 1)
  redis.call('PEXPIREAT', KEYS[4], ARGV[i + 1])
end
i = i + 2
n = tonumber(ARGV[i]); i = i + 1
for _ = 1, n do
  redis.call('LPUSH', KEYS[5], ARGV[i]); i = i + 1
end
if n > 0 then redis.call('LTRIM', KEYS[5], 0, tonumber(ARGV[i]) - 1) end
return 'OK'
";

/// Raises a source's watermark in `duet:watermarks` if the new one is higher.
const RAISE_WATERMARK: &str = r"
local old = redis.call('HGET', KEYS[1], ARGV[1])
if not old or tonumber(old) < tonumber(ARGV[2]) then redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) end
return 'OK'
";

/// A view's bucket width and how long its states are kept after a bucket ends.
#[derive(Debug, Clone, Copy)]
struct ViewTimes {
    bucket_ms: i64,
    retention_ms: i64,
}

/// What a worker holds of a partition it owns.
#[derive(Debug, Clone)]
struct Owned {
    /// The epoch it took the partition with.
    epoch: i64,
    /// The offset it last wrote (`None`: none stored).
    offset: Option<i64>,
}

/// The Redis view store.
pub struct RedisStore {
    conn: Conn,
    /// The server, without credentials (for errors).
    server: String,
    prefix: String,
    /// Per view, its bucket width and retention, ms.
    views: HashMap<String, ViewTimes>,
    /// Per source, its views.
    by_source: HashMap<String, Vec<String>>,
    owned: Mutex<HashMap<PartitionKey, Owned>>,
    /// States as last written by this worker, per partition and key.
    cache: Mutex<HashMap<(PartitionKey, StateKey), Vec<State>>>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("server", &self.server)
            .field("prefix", &self.prefix)
            .finish()
    }
}

/// A connection to one server, or to a Redis Cluster.
#[derive(Clone)]
enum Conn {
    /// One server (reconnects by itself).
    Single(ConnectionManager),
    /// A cluster (follows its slots).
    Cluster(ClusterConnection),
}

/// The key a command is routed by: its first key (for `EVAL`, the first of its `KEYS`).
fn routing_key(cmd: &redis::Cmd) -> Vec<u8> {
    let args: Vec<&[u8]> = cmd
        .args_iter()
        .filter_map(|a| match a {
            redis::Arg::Simple(b) => Some(b),
            _ => None,
        })
        .collect();
    let first = if args
        .first()
        .is_some_and(|n| n.eq_ignore_ascii_case(b"EVAL"))
    {
        args.get(3)
    } else {
        args.get(1)
    };
    first.map(|k| k.to_vec()).unwrap_or_default()
}

/// The part of a key that decides its cluster slot: what is between the first `{` and the
/// next `}` if that is not empty, else the whole key.
fn hash_tag(key: &[u8]) -> &[u8] {
    if let Some(open) = key.iter().position(|b| *b == b'{')
        && let Some(len) = key[open + 1..].iter().position(|b| *b == b'}')
        && len > 0
    {
        return &key[open + 1..open + 1 + len];
    }
    key
}

/// `redis-cluster://h1:p1,h2:p2` → the nodes' `redis://` URLs (`None`: not a cluster URL).
fn cluster_nodes(url: &str) -> Option<Vec<String>> {
    let rest = url.strip_prefix("redis-cluster://")?;
    Some(
        rest.split(',')
            .filter(|n| !n.is_empty())
            .map(|n| format!("redis://{n}"))
            .collect(),
    )
}

/// `redis://user:secret@host` → `redis://host`.
fn without_credentials(url: &str) -> String {
    match (url.split_once("://"), url.rfind('@')) {
        (Some((scheme, _)), Some(at)) => format!("{scheme}://{}", &url[at + 1..]),
        _ => url.to_string(),
    }
}

/// The script's refusal in `e` (alone or in a pipeline), if it is one.
fn fenced(e: &redis::RedisError) -> Option<String> {
    if e.code() == Some("DUET_FENCED") {
        return Some(e.detail().unwrap_or_default().to_string());
    }
    e.clone()
        .into_server_errors()?
        .iter()
        .find(|(_, s)| s.code() == "DUET_FENCED")
        .map(|(_, s)| s.details().unwrap_or_default().to_string())
}

fn tag(p: &PartitionKey) -> String {
    format!("{}/{}/{}", p.group, p.topic, p.partition)
}

fn dims_field(dims: &DimKey) -> String {
    serde_json::to_string(dims).unwrap_or_default()
}

fn bytes(v: &Value) -> Option<&[u8]> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.as_bytes()),
        _ => None,
    }
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::Int(i) => Some(i.to_string()),
        Value::Double(d) => Some(d.to_string()),
        other => bytes(other).map(|b| String::from_utf8_lossy(b).into_owned()),
    }
}

fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        Value::Double(d) => Some(*d as i64),
        other => text(other).and_then(|t| t.parse::<f64>().ok().map(|f| f as i64)),
    }
}

/// The (field, value) pairs of a hash reply, RESP2 or RESP3.
fn pairs(v: Value) -> Vec<(Value, Value)> {
    match v {
        Value::Map(m) => m,
        Value::Array(a) => {
            let mut out = Vec::with_capacity(a.len() / 2);
            let mut it = a.into_iter();
            while let (Some(k), Some(v)) = (it.next(), it.next()) {
                out.push((k, v));
            }
            out
        }
        _ => Vec::new(),
    }
}

fn items(v: Value) -> Vec<Value> {
    match v {
        Value::Array(a) | Value::Set(a) => a,
        Value::Nil => Vec::new(),
        other => vec![other],
    }
}

impl RedisStore {
    /// Connects to the Redis server at `url`; keys start with `prefix`; `views` gives each
    /// view's source and retention. Reconnects by itself when the connection drops.
    pub async fn connect(url: &str, prefix: &str, views: &[ViewSpec]) -> Result<RedisStore> {
        let server = without_credentials(url);
        let err = |operation: &'static str| {
            let server = server.clone();
            move |source| Error::Redis {
                server,
                operation,
                source,
            }
        };
        let conn = match cluster_nodes(url) {
            Some(nodes) => Conn::Cluster(
                redis::cluster::ClusterClient::new(nodes)
                    .map_err(err("open"))?
                    .get_async_connection()
                    .await
                    .map_err(err("connect"))?,
            ),
            None => {
                let client = redis::Client::open(url).map_err(err("open"))?;
                let config = redis::aio::ConnectionManagerConfig::new()
                    .set_number_of_retries(3)
                    .set_connection_timeout(Some(std::time::Duration::from_secs(5)))
                    .set_response_timeout(Some(std::time::Duration::from_secs(30)));
                Conn::Single(
                    ConnectionManager::new_with_config(client, config)
                        .await
                        .map_err(err("connect"))?,
                )
            }
        };
        let mut by_source: HashMap<String, Vec<String>> = HashMap::new();
        for v in views {
            by_source
                .entry(v.source.clone())
                .or_default()
                .push(v.name.clone());
        }
        Ok(RedisStore {
            conn,
            server,
            prefix: prefix.to_string(),
            views: views
                .iter()
                .map(|v| {
                    (
                        v.name.clone(),
                        ViewTimes {
                            bucket_ms: v.bucket_ms,
                            retention_ms: v.retention_ms,
                        },
                    )
                })
                .collect(),
            by_source,
            owned: Mutex::new(HashMap::new()),
            cache: Mutex::new(HashMap::new()),
        })
    }

    fn err(&self, operation: &'static str) -> impl FnOnce(redis::RedisError) -> Error + '_ {
        move |source| {
            if let Some(detail) = fenced(&source) {
                Error::Fenced { detail }
            } else {
                Error::Redis {
                    server: self.server.clone(),
                    operation,
                    source,
                }
            }
        }
    }

    /// `duet:{tag}:` — the start of every key of a partition.
    fn base(&self, tag: &str) -> String {
        format!("{}:{{{tag}}}:", self.prefix)
    }

    fn global(&self, name: &str) -> String {
        format!("{}:{name}", self.prefix)
    }

    async fn query<T: redis::FromRedisValue>(
        &self,
        operation: &'static str,
        cmd: &redis::Cmd,
    ) -> Result<T> {
        match &self.conn {
            Conn::Single(c) => cmd.query_async(&mut c.clone()).await,
            Conn::Cluster(c) => cmd.query_async(&mut c.clone()).await,
        }
        .map_err(self.err(operation))
    }

    /// Sends the commands of `p` and returns one reply per command, in order: as one pipeline
    /// to a single server; to a cluster, as one pipeline per hash tag (a cluster pipeline may
    /// touch one slot only), all at once.
    async fn pipeline(&self, operation: &'static str, p: &redis::Pipeline) -> Result<Vec<Value>> {
        if p.cmd_iter().next().is_none() {
            return Ok(Vec::new());
        }
        let c = match &self.conn {
            Conn::Single(c) => {
                return p
                    .query_async(&mut c.clone())
                    .await
                    .map_err(self.err(operation));
            }
            Conn::Cluster(c) => c,
        };
        let mut groups: Vec<(Vec<u8>, redis::Pipeline, Vec<usize>)> = Vec::new();
        for (i, cmd) in p.cmd_iter().enumerate() {
            let key = routing_key(cmd);
            let tag = hash_tag(&key).to_vec();
            let g = match groups.iter().position(|(t, _, _)| *t == tag) {
                Some(g) => g,
                None => {
                    groups.push((tag, redis::pipe(), Vec::new()));
                    groups.len() - 1
                }
            };
            groups[g].1.add_command(cmd.clone());
            groups[g].2.push(i);
        }
        let sent = futures::future::join_all(groups.iter().map(|(_, pipe, _)| {
            let mut c = c.clone();
            async move { pipe.query_async::<Vec<Value>>(&mut c).await }
        }))
        .await;
        let mut out = vec![Value::Nil; p.cmd_iter().count()];
        for ((_, _, idx), replies) in groups.iter().zip(sent) {
            for (i, v) in idx.iter().zip(replies.map_err(self.err(operation))?) {
                out[*i] = v;
            }
        }
        Ok(out)
    }

    /// Every partition tag written to.
    async fn tags(&self) -> Result<Vec<String>> {
        let mut t: Vec<String> = self
            .query(
                "list partitions",
                redis::cmd("SMEMBERS").arg(self.global("partitions")),
            )
            .await?;
        t.sort();
        Ok(t)
    }

    /// The fingerprint of `view`'s recorded definition (0 without one).
    async fn fingerprint(&self, view: &str) -> Result<u64> {
        let def: Option<String> = self
            .query(
                "read a definition",
                redis::cmd("HGET").arg(self.global("definitions")).arg(view),
            )
            .await?;
        Ok(match def {
            Some(d) => serde_json::from_str::<ViewDefinition>(&d)
                .map_err(|source| Error::Corrupt {
                    what: "view definition",
                    source,
                })?
                .fingerprint_u64(),
            None => 0,
        })
    }

    fn forget_ownership(&self) {
        self.owned.lock().unwrap_or_else(|e| e.into_inner()).clear();
        self.cache.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// Takes `parts` for this worker: a new epoch each (a worker still writing with an older
    /// one is refused from now on) and their stored offsets.
    async fn take(&self, parts: &[PartitionKey]) -> Result<()> {
        let mut p = redis::pipe();
        for part in parts {
            let base = self.base(&tag(part));
            p.cmd("INCR").arg(format!("{base}epoch"));
            p.cmd("GET").arg(format!("{base}offset"));
            p.cmd("SADD").arg(self.global("partitions")).arg(tag(part));
        }
        let replies = self.pipeline("take partitions", &p).await?;
        let mut owned = self.owned.lock().unwrap_or_else(|e| e.into_inner());
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        for (part, r) in parts.iter().zip(replies.chunks(3)) {
            let epoch = r.first().and_then(int).unwrap_or(0);
            let offset = r.get(1).and_then(int);
            owned.insert(part.clone(), Owned { epoch, offset });
            cache.retain(|(p, _), _| p != part);
        }
        Ok(())
    }

    /// How long `view` keeps a state after its bucket ends (a view unknown to this process:
    /// one week).
    fn retention(&self, view: &str) -> i64 {
        self.views
            .get(view)
            .map_or(7 * 86_400_000, |t| t.retention_ms)
    }

    /// How long after `bucket` started a state of `view` is kept: to the bucket's end plus
    /// the view's retention (a view unknown to this process: one week).
    fn keep(&self, view: &str) -> i64 {
        self.views.get(view).map_or(7 * 86_400_000, |t| {
            t.bucket_ms.saturating_add(t.retention_ms)
        })
    }

    async fn apply(&self, mut batch: SpeedBatch) -> Result<()> {
        // quarantined events are kept under their partition: give each one's a share
        let group = batch
            .parts
            .keys()
            .next()
            .map(|k| k.group.clone())
            .unwrap_or_default();
        for q in &batch.quarantine {
            if !batch
                .parts
                .keys()
                .any(|k| k.topic == q.topic && k.partition == q.partition)
            {
                batch.parts.insert(
                    PartitionKey {
                        group: group.clone(),
                        topic: q.topic.clone(),
                        partition: q.partition,
                    },
                    super::PartitionBatch::default(),
                );
            }
        }
        // partitions this worker does not hold yet (tools, tests, a first batch) are taken now
        let missing: Vec<PartitionKey> = {
            let owned = self.owned.lock().unwrap_or_else(|e| e.into_inner());
            batch
                .parts
                .keys()
                .filter(|k| !owned.contains_key(*k))
                .cloned()
                .collect()
        };
        if !missing.is_empty() {
            self.take(&missing).await?;
        }
        // the states to merge into: from the cache, else read (pipelined)
        let mut current: HashMap<(PartitionKey, StateKey), Option<Vec<u8>>> = HashMap::new();
        let mut cached: HashMap<(PartitionKey, StateKey), Vec<State>> = HashMap::new();
        {
            let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            for (part, share) in &batch.parts {
                for key in share.deltas.keys() {
                    let k = (part.clone(), key.clone());
                    match cache.get(&k) {
                        Some(s) => {
                            cached.insert(k, s.clone());
                        }
                        None => {
                            current.insert(k, None);
                        }
                    }
                }
            }
        }
        if !current.is_empty() {
            let keys: Vec<(PartitionKey, StateKey)> = current.keys().cloned().collect();
            let mut p = redis::pipe();
            for (part, key) in &keys {
                p.cmd("HGET")
                    .arg(format!(
                        "{}state:{}:{}",
                        self.base(&tag(part)),
                        key.view,
                        duet_config::time::iso(key.bucket)
                    ))
                    .arg(dims_field(&key.dims));
            }
            let replies = self.pipeline("read states", &p).await?;
            for (k, v) in keys.into_iter().zip(replies) {
                current.insert(k, bytes(&v).map(<[u8]>::to_vec));
            }
        }
        let mut prints: HashMap<String, u64> = HashMap::new();
        for share in batch.parts.values() {
            for key in share.deltas.keys() {
                if !prints.contains_key(&key.view) {
                    prints.insert(key.view.clone(), self.fingerprint(&key.view).await?);
                }
            }
        }
        let owned: HashMap<PartitionKey, Owned> =
            self.owned.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let mut quarantine: HashMap<(&str, i32), Vec<&Quarantined>> = HashMap::new();
        for q in &batch.quarantine {
            quarantine
                .entry((q.topic.as_str(), q.partition))
                .or_default()
                .push(q);
        }
        let now = crate::now_ms();
        let mut written: Vec<((PartitionKey, StateKey), Vec<State>)> = Vec::new();
        let mut next_offsets: Vec<(PartitionKey, Option<i64>)> = Vec::new();
        let mut p = redis::pipe();
        for (part, share) in &batch.parts {
            let Some(own) = owned.get(part) else {
                continue;
            };
            let base = self.base(&tag(part));
            let mut corrupt: Vec<String> = Vec::new();
            let mut states: Vec<(StateKey, Vec<State>)> = Vec::new();
            for (key, delta) in &share.deltas {
                let print = prints.get(&key.view).copied().unwrap_or(0);
                let k = (part.clone(), key.clone());
                let merged = match cached.remove(&k) {
                    Some(mut s) => duet_config::measure::merge_row(&mut s, delta.clone())
                        .map(|()| s)
                        .map_err(|e| (e.to_string(), None)),
                    None => match current.get(&k).cloned().flatten() {
                        None => Ok(delta.clone()),
                        Some(b) => codec::decode(print, &b)
                            .map_err(|e| e.to_string())
                            .and_then(|mut s| {
                                duet_config::measure::merge_row(&mut s, delta.clone())
                                    .map(|()| s)
                                    .map_err(|e| e.to_string())
                            })
                            .map_err(|e| (e, Some(b))),
                    },
                };
                let s = match merged {
                    Ok(s) => s,
                    Err((reason, stored)) => {
                        tracing::error!(view = %key.view, bucket = %duet_config::time::iso(key.bucket),
                            error = %reason, "Unreadable stored state set aside; the bucket starts again.");
                        corrupt.push(
                            serde_json::json!({
                                "at_ms": batch.at_ms, "view": key.view, "bucket": key.bucket,
                                "dims": key.dims, "reason": reason, "state": stored,
                            })
                            .to_string(),
                        );
                        delta.clone()
                    }
                };
                states.push((key.clone(), s));
            }
            let mut cmd = redis::cmd("EVAL");
            cmd.arg(APPLY)
                .arg(5)
                .arg(format!("{base}epoch"))
                .arg(format!("{base}offset"))
                .arg(format!("{base}committed_at"))
                .arg(format!("{base}quarantine"))
                .arg(format!("{base}corrupt"))
                .arg(&base)
                .arg(own.epoch)
                .arg(own.offset.map(|o| o.to_string()).unwrap_or_default())
                .arg(share.next_offset.map(|o| o.to_string()).unwrap_or_default())
                .arg(batch.at_ms)
                .arg(states.len());
            for (key, s) in &states {
                let print = prints.get(&key.view).copied().unwrap_or(0);
                // retention after the bucket ends, or after this write if that is later
                let end = key
                    .bucket
                    .saturating_add(self.keep(&key.view))
                    .max(now.saturating_add(self.retention(&key.view)));
                cmd.arg(&key.view)
                    .arg(key.bucket)
                    .arg(duet_config::time::iso(key.bucket))
                    .arg(dims_field(&key.dims))
                    .arg(codec::encode(print, s))
                    .arg(end);
            }
            cmd.arg(batch.drop_states_before.len());
            for (view, before) in &batch.drop_states_before {
                cmd.arg(view).arg(*before);
            }
            // ids of views sealed past them are released; new ones kept per view they count in
            cmd.arg(batch.sealed_until.len());
            for (view, cut) in &batch.sealed_until {
                cmd.arg(view).arg(*cut);
            }
            let live: Vec<(&str, &str, i64)> = share
                .seen
                .iter()
                .flat_map(|s| {
                    s.releases
                        .iter()
                        .filter(|r| {
                            batch
                                .sealed_until
                                .get(r.view.as_str())
                                .is_none_or(|cut| r.bucket_end > *cut)
                        })
                        .map(|r| (r.view.as_str(), s.id.as_str(), r.bucket_end))
                })
                .collect();
            cmd.arg(live.len());
            for (view, id, end) in &live {
                let keep = self.keep(view);
                let expire = end.saturating_add(keep).max(now.saturating_add(keep));
                cmd.arg(*view).arg(*id).arg(*end).arg(expire);
            }
            let q = quarantine
                .remove(&(part.topic.as_str(), part.partition))
                .unwrap_or_default();
            cmd.arg(q.len());
            for r in q {
                cmd.arg(serde_json::to_string(r).map_err(|source| Error::Corrupt {
                    what: "quarantine record",
                    source,
                })?);
            }
            let keep_ms = batch
                .at_ms
                .saturating_sub(batch.quarantine_keep.since_ms)
                .clamp(60_000, 100 * 365 * 86_400_000);
            cmd.arg(batch.quarantine_keep.cap.max(1))
                .arg(now.saturating_add(keep_ms));
            cmd.arg(corrupt.len());
            for c in &corrupt {
                cmd.arg(c);
            }
            cmd.arg(CORRUPT_CAP);
            p.add_command(cmd);
            next_offsets.push((part.clone(), share.next_offset.or(own.offset)));
            written.extend(states.into_iter().map(|(k, s)| ((part.clone(), k), s)));
        }
        for (source, t) in &batch.watermarks {
            p.cmd("EVAL")
                .arg(RAISE_WATERMARK)
                .arg(1)
                .arg(self.global("watermarks"))
                .arg(source)
                .arg(*t);
        }
        if let Err(e) = self.pipeline("commit a batch", &p).await {
            // which partitions were written is unknown: hold none until taken again
            self.forget_ownership();
            return Err(e);
        }
        let mut owned = self.owned.lock().unwrap_or_else(|e| e.into_inner());
        for (part, offset) in next_offsets {
            if let Some(o) = owned.get_mut(&part) {
                o.offset = offset;
            }
        }
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() + written.len() > CACHE_CAP {
            cache.clear();
        }
        for (k, s) in written {
            cache.insert(k, s);
        }
        if !batch.drop_states_before.is_empty() {
            cache.retain(|(_, k), _| {
                batch
                    .drop_states_before
                    .get(&k.view)
                    .is_none_or(|before| k.bucket >= *before)
            });
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl ViewStore for RedisStore {
    async fn assign(&self, parts: &[PartitionKey]) -> Result<()> {
        self.take(parts).await
    }

    fn dedup_per_partition(&self) -> bool {
        true
    }

    async fn release(&self, parts: &[PartitionKey]) -> Result<()> {
        let mut owned = self.owned.lock().unwrap_or_else(|e| e.into_inner());
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        for p in parts {
            owned.remove(p);
            cache.retain(|(q, _), _| q != p);
        }
        Ok(())
    }

    async fn commit(&self, batch: SpeedBatch) -> Result<()> {
        self.apply(batch).await
    }

    async fn offsets(&self, group: &str, topic: &str) -> Result<HashMap<i32, i64>> {
        let prefix = format!("{group}/{topic}/");
        let parts: Vec<(i32, String)> = self
            .tags()
            .await?
            .into_iter()
            .filter_map(|t| {
                let p = t.strip_prefix(&prefix)?.parse().ok()?;
                Some((p, t))
            })
            .collect();
        let mut p = redis::pipe();
        for (_, t) in &parts {
            p.cmd("GET").arg(format!("{}offset", self.base(t)));
        }
        let replies = self.pipeline("read offsets", &p).await?;
        Ok(parts
            .into_iter()
            .zip(replies)
            .filter_map(|((p, _), v)| int(&v).map(|o| (p, o)))
            .collect())
    }

    async fn seen(&self, part: &PartitionKey, source: &str, ids: &[&str]) -> Result<Vec<bool>> {
        let mut out = vec![false; ids.len()];
        let views = self.by_source.get(source).cloned().unwrap_or_default();
        if ids.is_empty() || views.is_empty() {
            return Ok(out);
        }
        // seen if the id is kept for any view of the source
        let base = self.base(&tag(part));
        let mut p = redis::pipe();
        for v in &views {
            p.cmd("ZMSCORE").arg(format!("{base}seen:{v}")).arg(ids);
        }
        for reply in self.pipeline("look up event ids", &p).await? {
            for (i, v) in items(reply).iter().enumerate().take(ids.len()) {
                out[i] |= !matches!(v, Value::Nil);
            }
        }
        Ok(out)
    }

    async fn read(&self, view: &str, from: i64, to: i64) -> Result<Vec<Row>> {
        if from >= to {
            return Ok(Vec::new());
        }
        let print = self.fingerprint(view).await?;
        let tags = self.tags().await?;
        let mut p = redis::pipe();
        for t in &tags {
            p.cmd("ZRANGEBYSCORE")
                .arg(format!("{}buckets:{view}", self.base(t)))
                .arg(from)
                .arg(format!("({to}"))
                .arg("WITHSCORES");
        }
        let replies = self.pipeline("list buckets", &p).await?;
        let mut wanted: Vec<(String, i64)> = Vec::new();
        for (t, r) in tags.iter().zip(replies) {
            let flat = items(r);
            for pair in flat.chunks(2) {
                if let (Some(label), Some(ms)) =
                    (pair.first().and_then(text), pair.get(1).and_then(int))
                {
                    wanted.push((format!("{}state:{view}:{label}", self.base(t)), ms));
                }
            }
        }
        let mut p = redis::pipe();
        for (key, _) in &wanted {
            p.cmd("HGETALL").arg(key);
        }
        let replies = self.pipeline("read states", &p).await?;
        let mut merged: BTreeMap<(i64, DimKey), Vec<State>> = BTreeMap::new();
        for ((_, bucket), r) in wanted.into_iter().zip(replies) {
            for (field, value) in pairs(r) {
                let Some(dims) = text(&field) else { continue };
                let dims: DimKey =
                    serde_json::from_str(&dims).map_err(|source| Error::Corrupt {
                        what: "dimension key",
                        source,
                    })?;
                let Some(b) = bytes(&value) else { continue };
                match codec::decode(print, b) {
                    Ok(states) => match merged.get_mut(&(bucket, dims.clone())) {
                        Some(acc) => {
                            duet_config::measure::merge_row(acc, states).map_err(|source| {
                                Error::Merge {
                                    view: (*view).into(),
                                    source,
                                }
                            })?
                        }
                        None => {
                            merged.insert((bucket, dims), states);
                        }
                    },
                    Err(err) => {
                        tracing::warn!(view = %view, bucket = %duet_config::time::iso(bucket), error = %err, "Unreadable stored state skipped.");
                    }
                }
            }
        }
        Ok(merged
            .into_iter()
            .map(|((bucket, dims), states)| Row {
                bucket,
                dims,
                states,
            })
            .collect())
    }

    async fn quarantine(&self, limit: usize) -> Result<Vec<Quarantined>> {
        let tags = self.tags().await?;
        let mut p = redis::pipe();
        for t in &tags {
            p.cmd("LRANGE")
                .arg(format!("{}quarantine", self.base(t)))
                .arg(0)
                .arg(limit.saturating_sub(1));
        }
        let mut out = Vec::new();
        for r in self.pipeline("read the quarantine", &p).await? {
            for v in items(r) {
                if let Some(b) = bytes(&v) {
                    out.push(serde_json::from_slice::<Quarantined>(b).map_err(|source| {
                        Error::Corrupt {
                            what: "quarantine record",
                            source,
                        }
                    })?);
                }
            }
        }
        out.sort_by(|a, b| {
            (b.at_ms, &b.topic, b.partition, b.offset).cmp(&(
                a.at_ms,
                &a.topic,
                a.partition,
                a.offset,
            ))
        });
        out.truncate(limit);
        Ok(out)
    }

    async fn watermark(&self, source: &str) -> Result<Option<i64>> {
        let v: Option<i64> = self
            .query(
                "read a watermark",
                redis::cmd("HGET")
                    .arg(self.global("watermarks"))
                    .arg(source),
            )
            .await?;
        Ok(v)
    }

    async fn stats(&self) -> Result<StoreStats> {
        let tags = self.tags().await?;
        let sources: Vec<&String> = self.views.keys().collect();
        let mut p = redis::pipe();
        for t in &tags {
            let base = self.base(t);
            for v in &sources {
                p.cmd("ZCARD").arg(format!("{base}seen:{v}"));
            }
            p.cmd("LLEN").arg(format!("{base}corrupt"));
            p.cmd("GET").arg(format!("{base}committed_at"));
        }
        let replies = self.pipeline("read sizes", &p).await?;
        let mut st = StoreStats::default();
        for chunk in replies.chunks(sources.len() + 2) {
            let (seen, rest) = chunk.split_at(sources.len());
            st.seen_ids += seen.iter().filter_map(int).sum::<i64>().max(0) as u64;
            st.corrupt += rest.first().and_then(int).unwrap_or(0).max(0) as u64;
            if let Some(at) = rest.get(1).and_then(int) {
                st.last_commit_ms = st.last_commit_ms.max(Some(at));
            }
        }
        // one server's text, or (on a cluster) a map of every node's: summed
        let info: Value = self
            .query("read memory use", redis::cmd("INFO").arg("memory"))
            .await?;
        let texts: Vec<String> = match info {
            Value::Map(m) => m.iter().filter_map(|(_, v)| text(v)).collect(),
            other => text(&other).into_iter().collect(),
        };
        st.bytes = texts
            .iter()
            .filter_map(|t| {
                t.lines()
                    .find_map(|l| l.strip_prefix("used_memory:"))
                    .and_then(|v| v.trim().parse::<u64>().ok())
            })
            .sum();
        Ok(st)
    }

    async fn definitions(&self) -> Result<BTreeMap<String, ViewDefinition>> {
        let v: Value = self
            .query(
                "read definitions",
                redis::cmd("HGETALL").arg(self.global("definitions")),
            )
            .await?;
        let mut out = BTreeMap::new();
        for (k, v) in pairs(v) {
            let (Some(k), Some(v)) = (text(&k), bytes(&v)) else {
                continue;
            };
            let def = serde_json::from_slice(v).map_err(|source| Error::Corrupt {
                what: "view definition",
                source,
            })?;
            out.insert(k, def);
        }
        Ok(out)
    }

    async fn record_definitions(&self, defs: BTreeMap<String, ViewDefinition>) -> Result<()> {
        let mut p = redis::pipe();
        for (view, def) in &defs {
            let json = serde_json::to_string(def).map_err(|source| Error::Corrupt {
                what: "view definition",
                source,
            })?;
            p.cmd("HSET")
                .arg(self.global("definitions"))
                .arg(view)
                .arg(json);
        }
        self.pipeline("record definitions", &p).await?;
        Ok(())
    }

    async fn drop_view(&self, view: &str) -> Result<()> {
        let tags = self.tags().await?;
        let mut p = redis::pipe();
        for t in &tags {
            p.cmd("ZRANGE")
                .arg(format!("{}buckets:{view}", self.base(t)))
                .arg(0)
                .arg(-1);
        }
        let replies = self.pipeline("list a view's buckets", &p).await?;
        let mut p = redis::pipe();
        for (t, r) in tags.iter().zip(replies) {
            let base = self.base(t);
            for label in items(r).iter().filter_map(text) {
                p.cmd("DEL").arg(format!("{base}state:{view}:{label}"));
            }
            p.cmd("DEL").arg(format!("{base}buckets:{view}"));
        }
        p.cmd("HDEL").arg(self.global("definitions")).arg(view);
        self.pipeline("drop a view", &p).await?;
        self.cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(_, k), _| k.view != view);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{LocalRedis, LocalRedisCluster, Release, SeenId};
    use duet_config::Config;

    const CONFIG: &str = r#"
[[sources]]
name = "s"
topic = "t"
event_id = "id"
event_time = "ts"
[sources.fields]
id = "string"
ts = "int"
k = "string"

[[views]]
name = "a"
source = "s"
bucket = "1m"
dimensions = ["k"]
measures = [{ name = "n", kind = "count" }]

[[views]]
name = "b"
source = "s"
bucket = "1h"
retention = "2h"
dimensions = ["k"]
measures = [{ name = "n", kind = "count" }]
"#;

    fn views() -> Vec<ViewSpec> {
        Config::from_toml_str(CONFIG, Path::new("test.toml"))
            .unwrap()
            .views
    }

    use std::path::Path;

    fn part(p: i32) -> PartitionKey {
        PartitionKey {
            group: "g".into(),
            topic: "t".into(),
            partition: p,
        }
    }

    fn key(view: &str, bucket: i64) -> StateKey {
        StateKey {
            view: view.into(),
            bucket,
            dims: vec![Some("x".into())],
        }
    }

    fn seen(id: &str, releases: &[(&str, i64)]) -> SeenId {
        SeenId {
            source: "s".into(),
            id: id.into(),
            releases: releases
                .iter()
                .map(|(view, end)| Release {
                    view: (*view).into(),
                    bucket_end: *end,
                })
                .collect(),
        }
    }

    async fn server() -> (tempfile::TempDir, LocalRedis, RedisStore) {
        let dir = tempfile::tempdir().unwrap();
        let server = LocalRedis::start(&dir.path().join("redis")).unwrap();
        let store = RedisStore::connect(&server.url(), "duet", &views())
            .await
            .unwrap();
        (dir, server, store)
    }

    /// A three-node Redis Cluster: the same code, keys spread over the nodes by partition.
    async fn cluster() -> (tempfile::TempDir, LocalRedisCluster, RedisStore) {
        let dir = tempfile::tempdir().unwrap();
        let cluster = LocalRedisCluster::start(&dir.path().join("cluster"), 3).unwrap();
        let store = RedisStore::connect(&cluster.url(), "duet", &views())
            .await
            .unwrap();
        (dir, cluster, store)
    }

    fn batch(p: i32, next: i64, deltas: &[(StateKey, i64)], ids: &[SeenId]) -> SpeedBatch {
        let mut b = SpeedBatch {
            at_ms: 1_000,
            ..SpeedBatch::default()
        };
        let share = b.part(part(p));
        for (k, n) in deltas {
            share.deltas.insert(k.clone(), vec![State::Count(*n)]);
        }
        share.seen.extend(ids.iter().cloned());
        share.next_offset = Some(next);
        b
    }

    async fn raw<T: redis::FromRedisValue>(store: &RedisStore, cmd: &redis::Cmd) -> T {
        store.query("test", cmd).await.unwrap()
    }

    #[tokio::test]
    async fn partitions_merge_when_read_and_keys_are_readable() {
        let (_dir, server, store) = server().await;
        merge_and_read(&server.url(), store).await;
    }

    #[tokio::test]
    async fn partitions_merge_when_read_on_a_cluster() {
        let (_dir, cluster, store) = cluster().await;
        merge_and_read(&cluster.url(), store).await;
    }

    async fn merge_and_read(url: &str, store: RedisStore) {
        store.assign(&[part(0), part(1)]).await.unwrap();
        store
            .commit(batch(
                0,
                5,
                &[(key("a", 60_000), 2)],
                &[seen("e1", &[("a", 120_000)])],
            ))
            .await
            .unwrap();
        store
            .commit(batch(0, 9, &[(key("a", 60_000), 3)], &[]))
            .await
            .unwrap();
        store
            .commit(batch(
                1,
                4,
                &[(key("a", 60_000), 10), (key("a", 120_000), 1)],
                &[],
            ))
            .await
            .unwrap();
        let rows = store.read("a", 0, 180_000).await.unwrap();
        assert_eq!(
            rows.iter()
                .map(|r| (r.bucket, r.states.clone()))
                .collect::<Vec<_>>(),
            vec![
                (60_000, vec![State::Count(15)]),
                (120_000, vec![State::Count(1)])
            ]
        );
        assert!(store.read("a", 180_000, 240_000).await.unwrap().is_empty());
        assert_eq!(
            store.offsets("g", "t").await.unwrap(),
            HashMap::from([(0, 9), (1, 4)])
        );
        // dedup ids are per partition
        assert_eq!(
            store.seen(&part(0), "s", &["e1", "e2"]).await.unwrap(),
            vec![true, false]
        );
        assert_eq!(
            store.seen(&part(1), "s", &["e1"]).await.unwrap(),
            vec![false]
        );
        // the layout a person reads with redis-cli
        let field: Option<Vec<u8>> = raw(
            &store,
            redis::cmd("HGET")
                .arg("duet:{g/t/0}:state:a:1970-01-01T00:01:00.000Z")
                .arg(r#"["x"]"#),
        )
        .await;
        assert!(field.is_some());
        let offset: Option<String> =
            raw(&store, redis::cmd("GET").arg("duet:{g/t/1}:offset")).await;
        assert_eq!(offset.as_deref(), Some("4"));
        // a state expires its view's retention after its bucket ends, or after it was
        // written if that is later (as here: the bucket is in 1970)
        let ttl: i64 = raw(
            &store,
            redis::cmd("PEXPIRETIME").arg("duet:{g/t/0}:state:a:1970-01-01T00:01:00.000Z"),
        )
        .await;
        let week = 7 * 86_400_000;
        assert!((crate::now_ms() + week - ttl).abs() < 60_000, "{ttl}");
        // a second process reads the same
        let other = RedisStore::connect(url, "duet", &views()).await.unwrap();
        assert_eq!(other.read("a", 0, 180_000).await.unwrap(), rows);
        assert_eq!(other.stats().await.unwrap().seen_ids, 1);
    }

    /// A worker that lost its partition to another has its write refused and, after taking
    /// the partition again, continues from the stored offset; so does a worker whose server
    /// lost its last writes.
    #[tokio::test]
    async fn stale_workers_are_fenced() {
        let (_dir, server, old) = server().await;
        fencing(&server.url(), old).await;
    }

    #[tokio::test]
    async fn stale_workers_are_fenced_on_a_cluster() {
        let (_dir, cluster, old) = cluster().await;
        fencing(&cluster.url(), old).await;
    }

    async fn fencing(url: &str, old: RedisStore) {
        old.assign(&[part(0)]).await.unwrap();
        old.commit(batch(0, 3, &[(key("a", 0), 3)], &[]))
            .await
            .unwrap();
        // a rebalance: another worker takes partition 0
        let new = RedisStore::connect(url, "duet", &views()).await.unwrap();
        new.assign(&[part(0)]).await.unwrap();
        assert_eq!(new.offsets("g", "t").await.unwrap()[&0], 3);
        let refused = old.commit(batch(0, 5, &[(key("a", 0), 2)], &[])).await;
        assert!(matches!(refused, Err(Error::Fenced { .. })), "{refused:?}");
        new.commit(batch(0, 4, &[(key("a", 0), 1)], &[]))
            .await
            .unwrap();
        assert_eq!(
            new.read("a", 0, 60_000).await.unwrap()[0].states,
            vec![State::Count(4)]
        );
        // the server lost a write (its offset went back): the next batch is refused
        let _: () = new
            .query("test", redis::cmd("SET").arg("duet:{g/t/0}:offset").arg(3))
            .await
            .unwrap();
        let refused = new.commit(batch(0, 6, &[(key("a", 0), 1)], &[])).await;
        assert!(matches!(refused, Err(Error::Fenced { .. })), "{refused:?}");
        // taken again, it goes on from what is stored
        new.assign(&[part(0)]).await.unwrap();
        new.commit(batch(0, 6, &[(key("a", 0), 1)], &[]))
            .await
            .unwrap();
        assert_eq!(
            new.read("a", 0, 60_000).await.unwrap()[0].states,
            vec![State::Count(5)]
        );
    }

    #[tokio::test]
    async fn ids_are_released_as_views_seal_and_old_states_dropped() {
        let (_dir, _server, store) = server().await;
        let ids: Vec<SeenId> = (1..=10)
            .map(|t| seen(&format!("id{t}"), &[("a", t * 60_000), ("b", 3_600_000)]))
            .collect();
        store
            .commit(batch(
                0,
                1,
                &[(key("b", 0), 1), (key("b", 3_600_000), 2)],
                &ids,
            ))
            .await
            .unwrap();
        // an id is kept once per view it counts in
        assert_eq!(store.stats().await.unwrap().seen_ids, 20);
        let ids: Vec<String> = (1..=10).map(|t| format!("id{t}")).collect();
        // view a sealed to minute 5: b still needs every id
        let mut b = batch(0, 2, &[], &[]);
        b.sealed_until.insert("a".into(), 300_000);
        store.commit(b).await.unwrap();
        assert_eq!(store.stats().await.unwrap().seen_ids, 15);
        assert!(
            store
                .seen(
                    &part(0),
                    "s",
                    &ids.iter().map(String::as_str).collect::<Vec<_>>()
                )
                .await
                .unwrap()
                .iter()
                .all(|s| *s)
        );
        // b sealed past the hour: every id goes; b's first hour is dropped after retention
        let mut b = batch(
            0,
            3,
            &[],
            &[seen("late", &[("a", 60_000), ("b", 3_600_000)])],
        );
        b.sealed_until.insert("a".into(), 600_000);
        b.sealed_until.insert("b".into(), 3_600_000);
        b.drop_states_before.insert("b".into(), 3_600_000);
        store.commit(b).await.unwrap();
        assert_eq!(store.stats().await.unwrap().seen_ids, 0);
        let kept: Vec<i64> = store
            .read("b", i64::MIN, i64::MAX)
            .await
            .unwrap()
            .iter()
            .map(|r| r.bucket)
            .collect();
        assert_eq!(kept, vec![3_600_000]);
    }

    #[tokio::test]
    async fn quarantine_watermarks_definitions_and_reset() {
        let (_dir, _server, store) = server().await;
        let mut b = batch(1, 8, &[(key("a", 0), 1)], &[]);
        b.watermarks.insert("s".into(), 500);
        b.quarantine.push(Quarantined {
            source: "s".into(),
            topic: "t".into(),
            partition: 1,
            offset: 7,
            reason: "not valid JSON".into(),
            payload: b"{".to_vec(),
            at_ms: 1_000,
        });
        store.commit(b).await.unwrap();
        let mut b = batch(1, 9, &[], &[]);
        b.watermarks.insert("s".into(), 400);
        store.commit(b).await.unwrap();
        assert_eq!(store.watermark("s").await.unwrap(), Some(500));
        let q = store.quarantine(10).await.unwrap();
        assert_eq!(q.len(), 1);
        assert_eq!((q[0].offset, q[0].reason.as_str()), (7, "not valid JSON"));
        let defs: BTreeMap<String, ViewDefinition> = views()
            .iter()
            .map(|v| (v.name.clone(), v.definition()))
            .collect();
        store.record_definitions(defs.clone()).await.unwrap();
        assert_eq!(store.definitions().await.unwrap(), defs);
        let st = store.stats().await.unwrap();
        assert!(st.bytes > 0 && st.last_commit_ms == Some(1_000), "{st:?}");
        store.drop_view("a").await.unwrap();
        assert!(
            store
                .read("a", i64::MIN, i64::MAX)
                .await
                .unwrap()
                .is_empty()
        );
        assert!(!store.definitions().await.unwrap().contains_key("a"));
    }

    /// States survive a restart of the server (append-only file); a worker whose server lost
    /// its last writes in the crash is refused and starts again from what is stored.
    #[tokio::test]
    async fn a_restarted_server_keeps_what_it_acknowledged() {
        let (_dir, mut server, store) = server().await;
        store.assign(&[part(0)]).await.unwrap();
        store
            .commit(batch(0, 3, &[(key("a", 0), 3)], &[]))
            .await
            .unwrap();
        // everysec: give the append-only file its second
        tokio::time::sleep(std::time::Duration::from_millis(1_500)).await;
        server.restart().unwrap();
        let mut applied = false;
        for _ in 0..50 {
            match store.commit(batch(0, 5, &[(key("a", 0), 2)], &[])).await {
                Ok(()) => {
                    applied = true;
                    break;
                }
                Err(Error::Fenced { .. }) => store.assign(&[part(0)]).await.unwrap(),
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
            }
        }
        assert!(applied);
        assert_eq!(
            store.read("a", 0, 60_000).await.unwrap()[0].states,
            vec![State::Count(5)]
        );
        assert_eq!(store.offsets("g", "t").await.unwrap()[&0], 5);
    }
}
