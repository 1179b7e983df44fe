//! The merged answer equals a from-scratch recompute of every event delivered, whatever the
//! stream: random streams over three partitions, out of order and late, with duplicates
//! delivered through other partitions, more than 4 096 distinct users in one bucket (the
//! HyperLogLog path), two dimensions, int and decimal sums (big ones too), a view timed by a
//! second time field; processed in random chunks by the real speed aggregator and store, the
//! real lake sink (watermarks, late marks) and Delta tables, sealed at random points by the
//! real scheduler's Polars recompute; queried over random ranges through serving's merge.
//!
//! At every check: every bucket not flagged `late_pending` equals the recompute of the events
//! delivered so far. After the last delivery and one more scheduled run: every bucket equals
//! it, and nothing is flagged.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use duet_config::{Config, State};
use duet_lake::{Lake, SealLedger};
use duet_serving::query::{LakeReaders, merged};
use duet_speed::kafka::Msg;
use duet_speed::{Aggregator, EmbeddedStore, ViewStore};
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;

/// 2026-09-21T…: on the hour, in the past.
const T0: i64 = 1_789_999_200_000;
const TOPIC: &str = "ev";
const PARTITIONS: i32 = 3;

const CONFIG: &str = r#"
[batch]
lateness = "10s"

[lake]
idle_timeout = "30s"

[[sources]]
name = "ev"
topic = "ev"
event_id = "id"
event_time = "t"
fields = { id = "string", t = "int", pay = "int", user = "string", region = "string", kind = "string", n = "int", amount = "decimal(2)" }

[[views]]
name = "by_region"
source = "ev"
bucket = "1m"
dimensions = ["region", "kind"]
measures = [
  { name = "c", kind = "count" },
  { name = "n", kind = "sum", field = "n" },
  { name = "amount", kind = "sum", field = "amount" },
  { name = "low", kind = "min", field = "amount" },
  { name = "high", kind = "max", field = "n" },
  { name = "mean", kind = "avg", field = "amount" },
  { name = "users", kind = "distinct_count", field = "user" },
  { name = "top", kind = "top_k", field = "user", by = "n", k = 3 },
]

[[views]]
name = "users"
source = "ev"
bucket = "1h"
measures = [
  { name = "u", kind = "distinct_count", field = "user" },
  { name = "c", kind = "count" },
  { name = "amount", kind = "sum", field = "amount" },
]

[[views]]
name = "paid"
source = "ev"
filter = "kind == 'buy' and amount > 0"
time = "pay"
bucket = "5m"
measures = [
  { name = "c", kind = "count" },
  { name = "a", kind = "sum", field = "amount" },
  { name = "best", kind = "top_k", field = "region" },
]

[[jobs]]
name = "seal"
views = ["by_region", "users", "paid"]
schedule = "0 * * * * *"
"#;

/// The shape of one random stream.
#[derive(Debug, Clone)]
struct Shape {
    seed: u64,
    events: usize,
    late: f64,
    dup: f64,
    wide_users: bool,
}

/// One message as produced: its partition and bytes.
#[derive(Debug, Clone)]
struct Produced {
    partition: i32,
    payload: Vec<u8>,
}

fn stream(shape: &Shape) -> Vec<Produced> {
    let mut rng = StdRng::seed_from_u64(shape.seed);
    let mut out: Vec<Produced> = Vec::new();
    let mut later: Vec<(usize, Produced)> = Vec::new();
    for i in 0..shape.events {
        let mut t = T0 + i as i64 * 300 + rng.random_range(-3_000..3_000);
        if rng.random_bool(shape.late) {
            t -= rng.random_range(60_000..1_800_000);
        }
        let user = if shape.wide_users {
            format!("u{i}")
        } else {
            format!("u{}", rng.random_range(0..200))
        };
        let region = ["north", "south", "east", "west"][rng.random_range(0..4)];
        let kind = ["buy", "view", "cart"][rng.random_range(0..3)];
        let amount = match rng.random_range(0..10) {
            0 => format!(
                "{}{}.{:02}",
                rng.random_range(1..100),
                "0".repeat(18),
                rng.random_range(0..100)
            ),
            1 => "-3.50".to_string(),
            _ => format!(
                "{}.{:02}",
                rng.random_range(0..5_000),
                rng.random_range(0..100)
            ),
        };
        let mut v = serde_json::json!({
            "id": format!("e{}-{i}", shape.seed), "t": t, "user": user, "kind": kind,
            "n": rng.random_range(-5..1_000_000),
            "amount": serde_json::Value::String(amount),
        });
        if rng.random_bool(0.9) {
            v["region"] = serde_json::json!(region);
        }
        if rng.random_bool(0.8) {
            v["pay"] = serde_json::json!(t + rng.random_range(0..90_000));
        }
        let payload = serde_json::to_vec(&v).unwrap();
        let partition = rng.random_range(0..PARTITIONS);
        if rng.random_bool(shape.dup) {
            // a re-delivery later, possibly through another partition
            let at = i + rng.random_range(1..400);
            later.push((
                at,
                Produced {
                    partition: rng.random_range(0..PARTITIONS),
                    payload: payload.clone(),
                },
            ));
        }
        out.push(Produced { partition, payload });
        later.retain(|(at, p)| {
            if *at <= i {
                out.push(p.clone());
                false
            } else {
                true
            }
        });
    }
    out.extend(later.into_iter().map(|(_, p)| p));
    out
}

/// The from-scratch recompute: first copy of each id, folded with the algebra.
fn recompute(cfg: &Config, delivered: &[Vec<u8>]) -> crate::support::Truth {
    let source = &cfg.sources[0];
    let mut seen = HashSet::new();
    let mut states: BTreeMap<String, BTreeMap<crate::support::Key, Vec<State>>> = BTreeMap::new();
    for bytes in delivered {
        let Ok(e) = source.decode(bytes) else {
            continue;
        };
        if !seen.insert(e.id.clone()) {
            continue;
        }
        for v in &cfg.views {
            for c in v.contributions(&e) {
                let acc = states
                    .entry(v.name.clone())
                    .or_default()
                    .entry((c.bucket, c.dims))
                    .or_insert_with(|| v.identity());
                duet_config::measure::merge_row(acc, c.states).unwrap();
            }
        }
    }
    cfg.views
        .iter()
        .map(|v| {
            let rows = states
                .remove(&v.name)
                .unwrap_or_default()
                .into_iter()
                .map(|(k, s)| (k, Value::Object(v.render(&s))))
                .collect();
            (v.name.clone(), rows)
        })
        .collect()
}

struct World {
    cfg: Arc<Config>,
    lake: Lake,
    store: Arc<EmbeddedStore>,
    /// Serving over both protocols: the HTTP API's address and the PostgreSQL port.
    http: String,
    pg: u16,
    readers: LakeReaders,
    agg: Aggregator,
    sink: duet_jobs::lake_sink::Sink,
    sealed: BTreeMap<String, i64>,
    offsets: HashMap<i32, i64>,
    now: i64,
    /// Serving runs until this is dropped.
    _stop: tokio::sync::watch::Sender<bool>,
}

impl World {
    async fn deliver(&mut self, chunk: &[Produced]) {
        let msgs: Vec<Msg> = chunk
            .iter()
            .map(|p| {
                let o = self.offsets.entry(p.partition).or_insert(0);
                *o += 1;
                Msg {
                    topic: TOPIC.into(),
                    partition: p.partition,
                    offset: *o - 1,
                    payload: p.payload.clone(),
                    timestamp_ms: Some(self.now),
                }
            })
            .collect();
        let (batch, _) = self
            .agg
            .build(&msgs, self.store.as_ref(), self.now, &self.sealed)
            .await
            .unwrap();
        self.store.commit(batch).await.unwrap();
        self.sink.receive(&msgs, self.now);
        self.sink.commit(self.now, &HashSet::new()).await.unwrap();
    }

    async fn seal(&mut self) {
        let views: Vec<String> = self.cfg.views.iter().map(|v| v.name.clone()).collect();
        duet_jobs::scheduler::seal_due(&self.cfg, &self.lake, &views, self.now).await;
        let ledger = SealLedger::new(&self.lake).snapshot().await.unwrap();
        self.sealed = self
            .cfg
            .views
            .iter()
            .filter_map(|v| Some((v.name.clone(), ledger.view(&v.name).sealed_until()?)))
            .collect();
    }

    /// Compares the merged answer over `[from, to)` of every view with the recompute.
    async fn check(&self, delivered: &[Vec<u8>], from: i64, to: i64, strict: bool) {
        let truth = recompute(&self.cfg, delivered);
        for v in &self.cfg.views {
            let (from, to) = (v.bucket_of(from), v.bucket_of(to - 1) + v.bucket_ms);
            let m = merged(&self.readers, self.store.as_ref(), v, from, to)
                .await
                .unwrap();
            if strict {
                assert!(
                    m.late_pending.is_empty(),
                    "{}: still dirty {:?}",
                    v.name,
                    m.late_pending
                );
            }
            let got: BTreeMap<_, _> = m
                .rows
                .iter()
                .map(|r| {
                    (
                        (r.row.bucket, r.row.dims.clone()),
                        (Value::Object(v.render(&r.row.states)), r.late_pending),
                    )
                })
                .collect();
            let want: BTreeMap<_, _> = truth[&v.name]
                .iter()
                .filter(|((b, _), _)| *b >= from && *b < to)
                .collect();
            for (key, value) in &want {
                match got.get(*key) {
                    Some((g, None)) => assert_eq!(g, *value, "{} {key:?}", v.name),
                    Some((_, Some(_))) => {} // flagged: the next run recomputes it
                    None => assert!(
                        m.late_pending.contains_key(&key.0),
                        "{} {key:?}: missing from the answer and not flagged",
                        v.name
                    ),
                }
            }
            for (key, (_, pending)) in &got {
                assert!(
                    want.contains_key(key) || pending.is_some(),
                    "{} {key:?}: in the answer but not in the recompute",
                    v.name
                );
            }
        }
    }
}

impl World {
    /// A world over `dir`: the lake, the embedded store, a lake sink, and serving over both
    /// protocols, its clock ten days after [`T0`].
    async fn new(dir: &std::path::Path) -> World {
        let mut cfg = Config::from_toml_str(CONFIG, "property.toml".as_ref()).unwrap();
        cfg.lake.url = dir.join("lake").to_string_lossy().into_owned();
        let cfg = Arc::new(cfg);
        let lake = Lake::open(&cfg.lake.url).unwrap();
        let store = Arc::new(EmbeddedStore::open(&dir.join("store.redb")).unwrap());
        duet_speed::store::check_definitions(store.as_ref(), &cfg.views)
            .await
            .unwrap();
        let (http, pg, stop) = serve_both(&cfg, &lake, store.clone()).await;
        let partitions = HashMap::from([(TOPIC.to_string(), (0..PARTITIONS).collect::<Vec<_>>())]);
        let sink = duet_jobs::lake_sink::Sink::open(cfg.clone(), &lake, "g", &partitions)
            .await
            .unwrap();
        World {
            readers: LakeReaders::new(&lake, &cfg),
            agg: Aggregator::new(&cfg, "speed"),
            cfg: cfg.clone(),
            lake,
            store,
            http,
            pg,
            sink,
            sealed: BTreeMap::new(),
            offsets: HashMap::new(),
            now: T0 + 10 * 86_400_000,
            _stop: stop,
        }
    }
}

async fn run(shape: Shape) {
    let dir = tempfile::tempdir().unwrap();
    let mut world = World::new(dir.path()).await;
    let produced = stream(&shape);
    let mut rng = StdRng::seed_from_u64(shape.seed ^ 0x5eed);
    let mut delivered: Vec<Vec<u8>> = Vec::new();
    let mut at = 0;
    while at < produced.len() {
        let n = rng.random_range(50..600).min(produced.len() - at);
        let chunk = &produced[at..at + n];
        world.deliver(chunk).await;
        delivered.extend(chunk.iter().map(|p| p.payload.clone()));
        at += n;
        world.now += 1_000;
        if rng.random_bool(0.35) {
            world.seal().await;
        }
        if rng.random_bool(0.35) {
            let a = T0 - 3_600_000 + rng.random_range(0..4 * 3_600_000);
            let b = a + rng.random_range(60_000..3 * 3_600_000);
            world.check(&delivered, a, b, false).await;
            // a roll-up over both protocols, over a range where the events are
            let a = T0 - 600_000 + rng.random_range(0..2_400_000);
            let b = a + rng.random_range(300_000..3_600_000);
            let ask = Ask::random(&mut rng);
            world.check_protocols(&delivered, a, b, &ask).await;
        }
    }
    // the end of the stream: every partition idle and read to its end, one more run
    world.now += 60_000;
    let all: HashSet<(String, i32)> = (0..PARTITIONS).map(|p| (TOPIC.to_string(), p)).collect();
    world.sink.commit(world.now, &all).await.unwrap();
    world.seal().await;
    world
        .check(&delivered, T0 - 3 * 3_600_000, T0 + 4 * 3_600_000, true)
        .await;
    for _ in 0..3 {
        let ask = Ask::random(&mut rng);
        world
            .check_protocols(&delivered, T0 - 3 * 3_600_000, T0 + 4 * 3_600_000, &ask)
            .await;
    }
    // the wide case went through the HyperLogLog path in both layers
    if shape.wide_users {
        let rows = world.store.read("users", T0, T0 + 3_600_000).await.unwrap();
        assert!(!rows.is_empty());
        assert!(
            rows.iter().any(|r| matches!(
                &r.states[0],
                State::Distinct(duet_config::sketch::Distinct::Hll(_))
            )),
            "no HyperLogLog state"
        );
    }
}

/// A roll-up asked of `by_region` over both protocols: a grain, a subset of its dimensions, a
/// filter.
#[derive(Debug, Clone)]
struct Ask {
    grain_ms: i64,
    group_by: Vec<&'static str>,
    filter: Option<Condition>,
}

/// A condition on `by_region`'s dimensions: as HTTP `where` and SQL write it, and as the
/// recompute applies it to a row's dimension values ([region, kind]).
#[derive(Debug, Clone, Copy)]
struct Condition {
    text: &'static str,
    keep: fn(&[Option<String>]) -> bool,
}

impl Ask {
    fn random(rng: &mut StdRng) -> Ask {
        let grain_ms = [60_000, 300_000, 3_600_000][rng.random_range(0..3)];
        let group_by = match rng.random_range(0..4) {
            0 => vec![],
            1 => vec!["region"],
            2 => vec!["kind"],
            _ => vec!["kind", "region"],
        };
        // dims of by_region: [region, kind]; a null matches neither = nor <> (SQL)
        let filters: [Condition; 4] = [
            Condition {
                text: "region = 'north'",
                keep: |d| d[0].as_deref() == Some("north"),
            },
            Condition {
                text: "kind <> 'view'",
                keep: |d| d[1].as_deref().is_some_and(|k| k != "view"),
            },
            Condition {
                text: "region IN ('north', 'south') AND kind = 'buy'",
                keep: |d| {
                    matches!(d[0].as_deref(), Some("north" | "south"))
                        && d[1].as_deref() == Some("buy")
                },
            },
            Condition {
                text: "region <> 'east'",
                keep: |d| d[0].as_deref().is_some_and(|r| r != "east"),
            },
        ];
        let filter = rng
            .random_bool(0.6)
            .then(|| filters[rng.random_range(0..filters.len())]);
        Ask {
            grain_ms,
            group_by,
            filter,
        }
    }
}

/// Serves `cfg` over HTTP and the PostgreSQL port on loopback: their addresses, and the
/// switch that stops both.
async fn serve_both(
    cfg: &Arc<Config>,
    lake: &Lake,
    store: Arc<EmbeddedStore>,
) -> (String, u16, tokio::sync::watch::Sender<bool>) {
    let (tx, rx) = tokio::sync::watch::channel(false);
    let state = duet_serving::AppState {
        cfg: cfg.clone(),
        lake: Arc::new(LakeReaders::new(lake, cfg)),
        store: store.clone(),
        counters: Arc::default(),
        parts: Arc::default(),
        checks: Arc::default(),
        metrics: Arc::default(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http = listener.local_addr().unwrap().to_string();
    tokio::spawn(duet_serving::serve(listener, state, None, rx.clone()));
    let ctx = duet_serving::pg::session(&cfg.views, Arc::new(LakeReaders::new(lake, cfg)), store)
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let pg = listener.local_addr().unwrap().port();
    tokio::spawn(duet_serving::pg::serve(
        listener,
        ctx,
        Default::default(),
        rx,
    ));
    (http, pg, tx)
}

/// `by_region`'s rows over `[from, to)` (view buckets) rolled up as `ask` says, from the
/// events: (grain bucket, grouped dims) → rendered values.
fn rolled_truth(
    cfg: &Config,
    delivered: &[Vec<u8>],
    from: i64,
    to: i64,
    ask: &Ask,
) -> BTreeMap<crate::support::Key, Value> {
    let view = cfg.views.iter().find(|v| v.name == "by_region").unwrap();
    let source = &cfg.sources[0];
    let mut seen = HashSet::new();
    let mut acc: BTreeMap<crate::support::Key, Vec<State>> = BTreeMap::new();
    for bytes in delivered {
        let Ok(e) = source.decode(bytes) else {
            continue;
        };
        if !seen.insert(e.id.clone()) {
            continue;
        }
        for c in view.contributions(&e) {
            if c.bucket < from || c.bucket >= to || !ask.filter.is_none_or(|f| (f.keep)(&c.dims)) {
                continue;
            }
            let dims: Vec<Option<String>> = ask
                .group_by
                .iter()
                .map(|d| c.dims[view.dimensions.iter().position(|x| x == d).unwrap()].clone())
                .collect();
            let key = (c.bucket - c.bucket.rem_euclid(ask.grain_ms), dims);
            let states = acc.entry(key).or_insert_with(|| view.identity());
            duet_config::measure::merge_row(states, c.states).unwrap();
        }
    }
    acc.into_iter()
        .map(|(k, s)| (k, Value::Object(view.render(&s))))
        .collect()
}

/// Whether the grain bucket starting at `b` holds a dirty (late-pending) view bucket.
fn dirty(b: i64, grain: i64, late: &[i64]) -> bool {
    late.iter().any(|t| *t >= b && *t < b + grain)
}

impl World {
    /// Asks `by_region` for `ask` over `[a, b)` through the HTTP API and the PostgreSQL port
    /// (psql) and compares both with the roll-up of a recompute: every output bucket that holds
    /// no dirty bucket is exact in both.
    async fn check_protocols(&self, delivered: &[Vec<u8>], a: i64, b: i64, ask: &Ask) {
        use duet_config::time::iso;
        let view = self
            .cfg
            .views
            .iter()
            .find(|v| v.name == "by_region")
            .unwrap();
        let (from, to) = (view.bucket_of(a), view.bucket_of(b - 1) + view.bucket_ms);
        let truth = rolled_truth(&self.cfg, delivered, from, to, ask);
        let what = format!("{ask:?} over [{}, {})", iso(from), iso(to));
        // the dirty buckets, as both answers see them (nothing is written in between)
        let late: Vec<i64> = SealLedger::new(&self.lake)
            .snapshot()
            .await
            .unwrap()
            .view("by_region")
            .dirty()
            .into_keys()
            .collect();

        // HTTP
        let mut url =
            reqwest::Url::parse(&format!("http://{}/v1/views/by_region", self.http)).unwrap();
        url.query_pairs_mut()
            .append_pair("from", &from.to_string())
            .append_pair("to", &to.to_string())
            .append_pair("grain", &format!("{}ms", ask.grain_ms))
            .append_pair("group_by", &ask.group_by.join(","))
            .append_pair("limit", "100000");
        if let Some(f) = ask.filter {
            url.query_pairs_mut().append_pair("where", f.text);
        }
        let body: Value = reqwest::get(url).await.unwrap().json().await.unwrap();
        assert!(body["next_cursor"].is_null(), "{what}: {body}");
        let mut http: BTreeMap<crate::support::Key, Value> = BTreeMap::new();
        for r in body["rows"].as_array().unwrap() {
            let dims = ask
                .group_by
                .iter()
                .map(|d| r["dims"][d].as_str().map(str::to_string))
                .collect();
            http.insert(
                (r["bucket_ms"].as_i64().unwrap(), dims),
                r["values"].clone(),
            );
        }
        compare(
            "HTTP",
            &what,
            &truth,
            &http,
            ask.grain_ms,
            &late,
            |want, got| want == got,
        );

        // SQL over the PostgreSQL wire protocol (psql)
        let dims_sql: String = ask.group_by.iter().map(|d| format!(", {d}")).collect();
        let sql = format!(
            "SELECT CAST(extract(epoch from date_bin(INTERVAL '{} milliseconds', bucket)) * 1000 AS BIGINT) AS b{dims_sql}, \
             sum(c), sum(n), sum(amount), min(low), max(high), avg_merge(mean_state), \
             distinct_count_merge(users_state), state_merge(top_state) \
             FROM by_region WHERE bucket >= '{}' AND bucket < '{}'{} GROUP BY 1{dims_sql} ORDER BY 1{dims_sql}",
            ask.grain_ms,
            iso(from),
            iso(to),
            ask.filter
                .map(|f| format!(" AND ({})", f.text))
                .unwrap_or_default(),
        );
        let out = tokio::task::spawn_blocking({
            let port = self.pg;
            move || {
                std::process::Command::new("psql")
                    .args([
                        "-X",
                        "-A",
                        "-t",
                        "-F",
                        "\t",
                        "-P",
                        "null=<null>",
                        "-v",
                        "ON_ERROR_STOP=1",
                    ])
                    .args(["-h", "127.0.0.1", "-U", "duet", "-d", "duet", "-p"])
                    .arg(port.to_string())
                    .arg("-c")
                    .arg(sql)
                    .output()
                    .expect("psql runs (./scripts/setup.sh installs it)")
            }
        })
        .await
        .unwrap();
        assert!(
            out.status.success(),
            "{what}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).unwrap();
        let mut sql_rows: BTreeMap<crate::support::Key, Value> = BTreeMap::new();
        for line in text.lines().filter(|l| !l.is_empty()) {
            let cols: Vec<&str> = line.split('\t').collect();
            let n = ask.group_by.len();
            let opt = |c: &str| (c != "<null>").then(|| c.to_string());
            let dims = cols[1..=n].iter().map(|c| opt(c)).collect();
            let m = &cols[n + 1..];
            let num = |c: &str| -> Value {
                match opt(c) {
                    None => Value::Null,
                    Some(t) => t
                        .parse::<i64>()
                        .map(Value::from)
                        .unwrap_or(Value::String(t)),
                }
            };
            let values = serde_json::json!({
                "c": num(m[0]), "n": num(m[1]),
                // decimals render as strings with the scale, as in the JSON answer
                "amount": opt(m[2]).map_or(Value::Null, Value::String),
                "low": opt(m[3]).map_or(Value::Null, Value::String),
                "high": num(m[4]),
                "mean": opt(m[5]).map_or(Value::Null, |t| serde_json::json!(t.parse::<f64>().unwrap())),
                "users": num(m[6]),
                "top": serde_json::from_str::<Value>(m[7]).unwrap(),
            });
            sql_rows.insert((cols[0].parse().unwrap(), dims), values);
        }
        compare(
            "SQL",
            &what,
            &truth,
            &sql_rows,
            ask.grain_ms,
            &late,
            |want, got| {
                // floats as text and back: equal to 12 significant digits
                let close = |x: &Value, y: &Value| match (x.as_f64(), y.as_f64()) {
                    (Some(x), Some(y)) => (x - y).abs() <= 1e-12 * x.abs().max(y.abs()).max(1.0),
                    _ => x == y,
                };
                want.as_object().unwrap().iter().all(|(k, w)| {
                    let g = &got[k];
                    if k == "mean" { close(w, g) } else { w == g }
                })
            },
        );
    }
}

/// Every key not in a dirty grain bucket is in both, with equal values.
fn compare(
    protocol: &str,
    what: &str,
    truth: &BTreeMap<crate::support::Key, Value>,
    got: &BTreeMap<crate::support::Key, Value>,
    grain: i64,
    late: &[i64],
    equal: impl Fn(&Value, &Value) -> bool,
) {
    for (key, want) in truth {
        if dirty(key.0, grain, late) {
            continue;
        }
        let g = got.get(key);
        assert!(
            g.is_some_and(|g| equal(want, g)),
            "{protocol} {what} {key:?}: got {g:?}, the recompute says {want}"
        );
    }
    for key in got.keys() {
        assert!(
            truth.contains_key(key) || dirty(key.0, grain, late),
            "{protocol} {what} {key:?}: in the answer but not in the recompute"
        );
    }
}

fn cases() -> u32 {
    std::env::var("DUET_PROPERTY_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(3)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), max_shrink_iters: 0, ..ProptestConfig::default() })]

    #[test]
    fn merged_answers_equal_a_full_recompute(
        seed in any::<u64>(),
        events in 1_500usize..6_000,
        late in 0.0f64..0.12,
        dup in 0.0f64..0.12,
        wide in any::<bool>(),
    ) {
        let shape = Shape { seed, events: if wide { events.max(4_600) } else { events }, late, dup, wide_users: wide };
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(run(shape));
    }
}

/// The widest case, always run: more than 4 096 distinct users in one hour.
#[test]
fn the_hyperloglog_path_agrees_too() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run(Shape {
        seed: 7,
        events: 5_000,
        late: 0.05,
        dup: 0.05,
        wide_users: true,
    }));
}

/// One page of `by_region` in bucket order: its rows (key → values), next cursor and batch
/// version.
async fn page(
    http: &str,
    from: i64,
    to: i64,
    cursor: Option<&str>,
) -> (
    Vec<(crate::support::Key, Value)>,
    Option<String>,
    Option<i64>,
) {
    let mut url = reqwest::Url::parse(&format!("http://{http}/v1/views/by_region")).unwrap();
    url.query_pairs_mut()
        .append_pair("from", &from.to_string())
        .append_pair("to", &to.to_string())
        .append_pair("limit", "40");
    if let Some(c) = cursor {
        url.query_pairs_mut().append_pair("cursor", c);
    }
    let r = reqwest::get(url).await.unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    let version = r
        .headers()
        .get("duet-batch-version")
        .and_then(|v| v.to_str().ok()?.parse().ok());
    let body: Value = r.json().await.unwrap();
    let rows = body["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let dims = ["region", "kind"]
                .iter()
                .map(|d| r["dims"][d].as_str().map(str::to_string))
                .collect();
            (
                (r["bucket_ms"].as_i64().unwrap(), dims),
                r["values"].clone(),
            )
        })
        .collect();
    (
        rows,
        body["next_cursor"].as_str().map(str::to_string),
        version,
    )
}

/// A bucket resealed between two pages of one answer: the pages after the reseal show the
/// new batch version's values, no row is repeated and none is skipped, and every page's rows
/// are exact for the version it was read at (boundary case of issue 7's item 7).
#[test]
fn a_bucket_resealed_between_two_pages_is_neither_repeated_nor_skipped() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let mut world = World::new(dir.path()).await;
        let produced = stream(&Shape {
            seed: 11,
            events: 2_000,
            late: 0.0,
            dup: 0.0,
            wide_users: false,
        });
        let mut delivered: Vec<Vec<u8>> = produced.iter().map(|p| p.payload.clone()).collect();
        world.deliver(&produced).await;
        world.now += 60_000;
        let all: HashSet<(String, i32)> = (0..PARTITIONS).map(|p| (TOPIC.to_string(), p)).collect();
        world.sink.commit(world.now, &all).await.unwrap();
        world.seal().await;
        // a range the first seal covered
        let (from, to) = (T0 - 60_000, T0 + 8 * 60_000);
        assert!(world.sealed["by_region"] >= to, "{:?}", world.sealed);

        // the first page, read at the first seal
        let (first, cursor, v1) = page(&world.http, from, to, None).await;
        let cursor = cursor.expect("more than one page");
        let last = first.last().unwrap().0.0;
        // late events into a bucket the first page showed and one it did not, then a reseal
        let view = world
            .cfg
            .views
            .iter()
            .find(|v| v.name == "by_region")
            .unwrap();
        let (shown, unseen) = (view.bucket_of(T0 + 30_000), view.bucket_of(last + 180_000));
        assert!(shown <= last && unseen > last);
        // (a new row in the shown bucket, before the cursor: paging by row offsets would
        // repeat a row; a changed row after it)
        let late: Vec<Produced> = [(shown, "center"), (unseen, "north")]
            .iter()
            .enumerate()
            .map(|(i, (b, region))| Produced {
                partition: 0,
                payload: serde_json::to_vec(&serde_json::json!({
                    "id": format!("late-{i}"), "t": b + 1_000, "user": "late", "kind": "buy",
                    "region": region, "n": 1_000_000, "amount": "1.00",
                }))
                .unwrap(),
            })
            .collect();
        delivered.extend(late.iter().map(|p| p.payload.clone()));
        world.deliver(&late).await;
        world.now += 60_000;
        world.sink.commit(world.now, &all).await.unwrap();
        world.seal().await;

        // the rest of the pages, read after the reseal
        let mut rest = Vec::new();
        let (mut next, mut v2) = (Some(cursor), None);
        while let Some(c) = next {
            let (rows, n, v) = page(&world.http, from, to, Some(&c)).await;
            rest.extend(rows);
            (next, v2) = (n, v);
        }
        assert!(v2 > v1, "no reseal between the pages: {v1:?} then {v2:?}");
        // the whole answer now, its pages followed with nothing written in between
        let mut now_rows = Vec::new();
        let mut next = None::<String>;
        loop {
            let (rows, n, _) = page(&world.http, from, to, next.as_deref()).await;
            now_rows.extend(rows);
            match n {
                Some(c) => next = Some(c),
                None => break,
            }
        }
        // no row twice; the pages after the cursor are exactly the rows of the answer now that
        // follow the first page's last row (keyset pages: none repeated, none skipped). A row
        // that appeared before the cursor is not among them: a client sees it on a new read.
        let keys: Vec<_> = first.iter().chain(&rest).map(|(k, _)| k.clone()).collect();
        let unique: HashSet<_> = keys.iter().cloned().collect();
        assert_eq!(unique.len(), keys.len(), "a row repeated across the pages");
        let last_key = first.last().unwrap().0.clone();
        let after: Vec<_> = now_rows
            .iter()
            .filter(|(k, _)| *k > last_key)
            .cloned()
            .collect();
        assert_eq!(
            rest, after,
            "the pages after the reseal are not the answer's rest"
        );
        let now: BTreeMap<_, _> = now_rows.into_iter().collect();
        let late_key = (
            unseen,
            vec![Some("north".to_string()), Some("buy".to_string())],
        );
        assert_eq!(
            rest.iter().find(|(k, _)| *k == late_key).map(|(_, v)| v),
            now.get(&late_key)
        );
        let truth = recompute(&world.cfg, &delivered);
        let truth = &truth["by_region"];
        assert_eq!(
            Some(&now[&late_key]),
            truth.get(&late_key),
            "the resealed bucket is exact"
        );
        // the pages were read through serving's lake caches: partitions reused while their
        // files stayed, re-read after the reseal; the ledger likewise
        let metrics = reqwest::get(format!("http://{}/metrics", world.http))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let count = |line: &str| -> u64 {
            metrics
                .lines()
                .find_map(|l| l.strip_prefix(line)?.trim().parse().ok())
                .unwrap_or(0)
        };
        for cache in ["ledger", "view_partitions"] {
            for result in ["hit", "miss"] {
                let line =
                    format!("duet_serving_cache_total{{cache=\"{cache}\",result=\"{result}\"}} ");
                assert!(count(&line) > 0, "{line} in {metrics}");
            }
        }
        let shown_key = (
            shown,
            vec![Some("center".to_string()), Some("buy".to_string())],
        );
        assert!(first.iter().all(|(k, _)| *k != shown_key) && now.contains_key(&shown_key));
        assert_eq!(Some(&now[&shown_key]), truth.get(&shown_key));
    });
}
