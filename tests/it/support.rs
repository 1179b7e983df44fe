//! Shared helpers: configs in a temp folder, and a ground truth computed independently of
//! Duet's algebra, straight from the JSON events.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use duet_config::Config;
use duet_speed::ViewStore;
use serde_json::{Value, json};

/// A row key: bucket start and dimension values.
pub type Key = (i64, Vec<Option<String>>);
/// Expected values per view and key.
pub type Truth = BTreeMap<String, BTreeMap<Key, Value>>;

/// This package's folder, at run time (a test binary reused from another checkout of the same
/// sources must not read that checkout's files).
pub fn manifest_dir() -> std::path::PathBuf {
    std::env::var("CARGO_MANIFEST_DIR")
        .expect("cargo sets CARGO_MANIFEST_DIR")
        .into()
}

/// The reference config, with its lake and store in `dir` and short flush intervals.
pub fn reference_config(dir: &std::path::Path) -> Config {
    let mut cfg = Config::load(&manifest_dir().join("../config/examples/ecommerce.toml"))
        .expect("reference config");
    cfg.lake.url = dir.join("lake").to_string_lossy().into_owned();
    cfg.store.path = dir.join("store.redb").to_string_lossy().into_owned();
    cfg.kafka.partitions = 3;
    cfg.lake.flush_records = 200;
    cfg.lake_flush_ms = 300;
    cfg.speed.batch_max = 100;
    cfg.speed_batch_ms = 100;
    cfg
}

fn minute(t: i64) -> i64 {
    t - t.rem_euclid(60_000)
}

fn hour(t: i64) -> i64 {
    t - t.rem_euclid(3_600_000)
}

fn cents(v: &Value) -> Option<i64> {
    // amounts in the test streams have at most two decimals
    v.as_f64().map(|f| (f * 100.0).round() as i64)
}

/// Money as the API renders decimal(2) values: exact text with two decimals.
fn money(c: i64) -> Value {
    json!(format!(
        "{}{}.{:02}",
        if c < 0 { "-" } else { "" },
        c.abs() / 100,
        c.abs() % 100
    ))
}

/// Expected rows per view: (view, bucket, dims) → values, computed with plain JSON logic
/// from messages `(topic, bytes)` in delivery order. Invalid events (bad JSON, missing
/// user, non-positive amount) are skipped; duplicates keep the first delivery.
pub fn ground_truth(messages: &[(String, Vec<u8>)]) -> Truth {
    let mut seen = HashSet::new();
    let mut behavior = Vec::new();
    let mut orders = Vec::new();
    for (topic, bytes) in messages {
        let Ok(v) = serde_json::from_slice::<Value>(bytes) else {
            continue;
        };
        if !v.is_object() || v.get("userId").and_then(Value::as_str).is_none() {
            continue;
        }
        match topic.as_str() {
            "user-behavior" => {
                if v["eventType"].is_null() || v["timestamp"].as_i64().is_none_or(|t| t <= 0) {
                    continue;
                }
                if seen.insert(("b", v["eventId"].as_str().unwrap_or_default().to_string())) {
                    behavior.push(v);
                }
            }
            "orders" => {
                if cents(&v["totalAmount"]).is_none_or(|c| c <= 0)
                    || v["createTime"].as_i64().is_none_or(|t| t <= 0)
                {
                    continue;
                }
                let id = format!(
                    "{}|{}",
                    v["orderId"].as_str().unwrap_or_default(),
                    v["orderStatus"].as_str().unwrap_or_default()
                );
                if seen.insert(("o", id)) {
                    orders.push(v);
                }
            }
            _ => {}
        }
    }
    let mut out = Truth::new();

    // orders_per_minute: count and amount of created orders per minute of creation
    let mut opm: BTreeMap<i64, (i64, i64)> = BTreeMap::new();
    // gmv_per_minute: paid orders per minute of payment
    let mut gmv: BTreeMap<i64, (i64, i64, i64)> = BTreeMap::new();
    // large_orders_per_minute: paid orders of 5000.00 or more, per minute of payment and city
    let mut large: BTreeMap<Key, (i64, i64, i64)> = BTreeMap::new();
    // hot_products_hourly: quantity per product per hour of payment
    let mut hot: BTreeMap<i64, BTreeMap<String, i64>> = BTreeMap::new();
    for o in &orders {
        let c = cents(&o["totalAmount"]).unwrap_or_default();
        match o["orderStatus"].as_str() {
            Some("created") => {
                let e = opm
                    .entry(minute(o["createTime"].as_i64().unwrap_or_default()))
                    .or_default();
                e.0 += 1;
                e.1 += c;
            }
            Some("paid") => {
                let Some(pay) = o["payTime"].as_i64() else {
                    continue;
                };
                let e = gmv.entry(minute(pay)).or_default();
                e.0 += c;
                e.1 += 1;
                e.2 = e.2.max(c);
                if c >= 500_000 {
                    let city = o["shippingAddress"]["city"].as_str().map(String::from);
                    let e = large
                        .entry((minute(pay), vec![city]))
                        .or_insert((0, 0, i64::MAX));
                    e.0 += 1;
                    e.1 += c;
                    e.2 = e.2.min(c);
                }
                let h = hot.entry(hour(pay)).or_default();
                for item in o["items"].as_array().into_iter().flatten() {
                    *h.entry(item["productId"].as_str().unwrap_or_default().to_string())
                        .or_default() += item["quantity"].as_i64().unwrap_or_default();
                }
            }
            _ => {}
        }
    }
    out.insert(
        "orders_per_minute".into(),
        opm.into_iter()
            .map(|(b, (n, c))| ((b, vec![]), json!({"orders": n, "amount": money(c)})))
            .collect(),
    );
    out.insert(
        "gmv_per_minute".into(),
        gmv.into_iter()
            .map(|(b, (sum, n, max))| {
                let avg = json!((sum as f64 / 100.0) / n as f64);
                ((b, vec![]), json!({"gmv": money(sum), "paid_orders": n, "avg_order": avg, "max_order": money(max)}))
            })
            .collect(),
    );
    out.insert(
        "large_orders_per_minute".into(),
        large
            .into_iter()
            .map(|(k, (n, sum, min))| {
                (
                    k,
                    json!({"orders": n, "amount": money(sum), "min_amount": money(min)}),
                )
            })
            .collect(),
    );
    out.insert(
        "hot_products_hourly".into(),
        hot.into_iter()
            .map(|(b, m)| {
                let units: i64 = m.values().sum();
                let mut v: Vec<(String, i64)> = m.into_iter().collect();
                v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
                v.truncate(10);
                let top: Vec<Value> = v
                    .into_iter()
                    .map(|(k, q)| json!({"key": k, "value": q}))
                    .collect();
                ((b, vec![]), json!({"top_products": top, "units": units}))
            })
            .collect(),
    );

    // active_users_hourly and behavior_per_minute
    let mut users: BTreeMap<i64, (BTreeSet<String>, i64)> = BTreeMap::new();
    let mut bpm: BTreeMap<Key, (i64, BTreeSet<String>)> = BTreeMap::new();
    for b in &behavior {
        let t = b["timestamp"].as_i64().unwrap_or_default();
        let u = users.entry(hour(t)).or_default();
        u.0.insert(b["userId"].as_str().unwrap_or_default().to_string());
        u.1 += 1;
        let dims = vec![
            b["eventType"].as_str().map(String::from),
            b["deviceInfo"]["platform"].as_str().map(String::from),
        ];
        let e = bpm.entry((minute(t), dims)).or_default();
        e.0 += 1;
        if let Some(s) = b["sessionId"].as_str() {
            e.1.insert(s.to_string());
        }
    }
    out.insert(
        "active_users_hourly".into(),
        users
            .into_iter()
            .map(|(b, (u, n))| ((b, vec![]), json!({"users": u.len(), "events": n})))
            .collect(),
    );
    out.insert(
        "behavior_per_minute".into(),
        bpm.into_iter()
            .map(|(k, (n, s))| (k, json!({"events": n, "sessions": s.len()})))
            .collect(),
    );
    out
}

/// `n` generated messages `(topic, key, bytes)` at `t0`, `t0 + step`, …, with the topics of
/// the reference config.
pub fn generated(
    g: &mut duet_jobs::generator::Generator,
    cfg: &Config,
    n: i64,
    t0: i64,
    step: i64,
) -> Vec<(String, String, Vec<u8>)> {
    (0..n)
        .map(|i| {
            let e = g.next(t0 + i * step);
            let topic = cfg
                .source(e.source)
                .expect("generator sources are in the reference config")
                .topic
                .clone();
            (topic, e.key.clone(), e.payload())
        })
        .collect()
}

/// Produces `msgs` (topic, key, bytes), raising `end` to the next offset of each partition.
pub async fn produce(
    p: &rdkafka::producer::FutureProducer,
    msgs: &[(String, String, Vec<u8>)],
    end: &mut HashMap<(String, i32), i64>,
) {
    // up to 1 000 in flight (enqueued in order, so each partition keeps the order of `msgs`)
    for window in msgs.chunks(1_000) {
        let sent = futures::future::join_all(
            window
                .iter()
                .map(|(topic, key, bytes)| duet_jobs::producer::send(p, topic, key, bytes)),
        )
        .await;
        for ((topic, _, _), r) in window.iter().zip(sent) {
            let (part, off) = r.unwrap();
            let e = end.entry((topic.clone(), part)).or_insert(0);
            *e = (*e).max(off + 1);
        }
    }
}

/// Whether `group`'s offsets in `store` reached `end` in every partition.
pub async fn caught_up(
    store: &dyn ViewStore,
    group: &str,
    end: &HashMap<(String, i32), i64>,
) -> bool {
    for ((t, p), o) in end {
        if store.offsets(group, t).await.unwrap().get(p) != Some(o) {
            return false;
        }
    }
    true
}

/// Every row of every view in `store`, rendered as the API renders values.
pub async fn rendered(
    cfg: &Config,
    store: &dyn ViewStore,
) -> BTreeMap<String, BTreeMap<Key, Value>> {
    let mut out = BTreeMap::new();
    for v in &cfg.views {
        let rows = store.read(&v.name, 0, i64::MAX).await.unwrap();
        out.insert(
            v.name.clone(),
            rows.into_iter()
                .map(|r| ((r.bucket, r.dims), Value::Object(v.render(&r.states))))
                .collect(),
        );
    }
    out
}

/// The Kafka a test runs against: librdkafka's mock cluster, or a `tansu` broker (a
/// Kafka-compatible broker written elsewhere, keeping its data on SQLite).
pub enum Broker {
    /// The embedded mock cluster.
    Mock(duet_jobs::embedded::EmbeddedKafka),
    /// A `tansu` child process.
    Tansu(duet_jobs::tansu::LocalTansu),
}

impl Broker {
    /// Starts the broker with `topics` of `partitions` partitions.
    pub fn start(tansu: bool, dir: &std::path::Path, topics: &[String], partitions: i32) -> Broker {
        if tansu {
            Broker::Tansu(
                duet_jobs::tansu::LocalTansu::start(&dir.join("tansu"), topics, partitions)
                    .expect("start tansu (scripts/setup.sh installs it)"),
            )
        } else {
            Broker::Mock(duet_jobs::embedded::EmbeddedKafka::start(topics, partitions).unwrap())
        }
    }

    /// `bootstrap.servers`.
    pub fn bootstrap(&self) -> String {
        match self {
            Broker::Mock(k) => k.bootstrap(),
            Broker::Tansu(t) => t.bootstrap(),
        }
    }
}
