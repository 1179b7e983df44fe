//! The whole Lambda path on embedded defaults: a known stream (with a duplicate, malformed
//! events and a late event) through the mock cluster, the speed layer, the lake sink and one
//! batch run, checked over HTTP against a ground truth computed here from the same events.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use duet_jobs::embedded::EmbeddedKafka;
use duet_jobs::generator::Generator;
use duet_lake::Lake;
use duet_speed::{EmbeddedStore, ViewStore};
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::support::{Key, Truth, generated, ground_truth, reference_config};

/// 2026-10-31T10:00:00Z.
const T0: i64 = 1_793_440_800_000;
const WAIT: Duration = Duration::from_secs(90);

/// The known stream: generated seed-shaped events over three minutes, a duplicate of a
/// behaviour event and of a payment, two malformed events, and a late event for the first
/// minute sent last.
fn stream(cfg: &duet_config::Config) -> Vec<(String, String, Vec<u8>)> {
    let mut out = generated(&mut Generator::new(42, 40), cfg, 600, T0, 300);
    let dup_b = out
        .iter()
        .find(|m| m.0 == "user-behavior")
        .cloned()
        .unwrap();
    let dup_o = out
        .iter()
        .find(|m| m.0 == "orders" && String::from_utf8_lossy(&m.2).contains("\"paid\""))
        .cloned()
        .unwrap();
    out.push(dup_b);
    out.push(dup_o);
    out.push((
        "user-behavior".into(),
        "user_x".into(),
        b"{\"eventId\": \"evt_bad\", \"userId\": ".to_vec(),
    ));
    let negative = json!({"orderId": "ord_neg", "userId": "user_x", "orderStatus": "created",
        "createTime": T0 + 1_000, "totalAmount": -5.0, "currency": "CNY", "items": []});
    out.push((
        "orders".into(),
        "user_x".into(),
        serde_json::to_vec(&negative).unwrap(),
    ));
    let late = json!({"eventId": "evt_late", "userId": "user_late", "sessionId": "s_late", "eventType": "view",
        "productId": "prod_tea", "categoryId": "cat_food", "timestamp": T0 + 30_000,
        "deviceInfo": {"platform": "ios"}, "pageInfo": {}});
    out.push((
        "user-behavior".into(),
        "user_late".into(),
        serde_json::to_vec(&late).unwrap(),
    ));
    out
}

async fn wait_until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = std::time::Instant::now();
    while !check().await {
        assert!(start.elapsed() < WAIT, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Rows of a view over HTTP as (bucket, dims) → (values, source).
async fn fetch(
    http: &reqwest::Client,
    base: &str,
    view: &str,
    dims: &[String],
) -> BTreeMap<Key, (Value, String)> {
    let url = format!(
        "{base}/v1/views/{view}?from={}&to={}",
        T0 - 3_600_000,
        T0 + 3 * 3_600_000
    );
    let body: Value = http.get(&url).send().await.unwrap().json().await.unwrap();
    let mut out = BTreeMap::new();
    for r in body["rows"].as_array().unwrap_or_else(|| panic!("{body}")) {
        let dims: Vec<Option<String>> = dims
            .iter()
            .map(|d| r["dims"][d].as_str().map(String::from))
            .collect();
        out.insert(
            (r["bucket_ms"].as_i64().unwrap(), dims),
            (
                r["values"].clone(),
                r["source"].as_str().unwrap().to_string(),
            ),
        );
    }
    out
}

fn check_against(
    truth: &Truth,
    got: &BTreeMap<String, BTreeMap<Key, (Value, String)>>,
    source: &str,
) {
    for (view, expected) in truth {
        let rows = &got[view];
        assert!(
            !expected.is_empty(),
            "{view}: the stream should produce rows"
        );
        let values: BTreeMap<_, _> = rows
            .iter()
            .map(|(k, (v, _))| (k.clone(), v.clone()))
            .collect();
        assert_eq!(
            &values, expected,
            "{view}: values differ from the ground truth"
        );
        for (k, (_, s)) in rows {
            assert_eq!(s, source, "{view} {k:?} should come from {source}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn merged_answers_are_exact_before_and_after_the_batch_run() {
    tokio::time::timeout(Duration::from_secs(240), run())
        .await
        .expect("the end-to-end test timed out");
}

async fn run() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = reference_config(dir.path());
    let topics: Vec<String> = cfg.sources.iter().map(|s| s.topic.clone()).collect();
    let kafka = EmbeddedKafka::start(&topics, cfg.kafka.partitions).unwrap();
    let bootstrap = kafka.bootstrap();

    // produce the known stream, remembering where each message landed
    let producer = duet_jobs::producer::producer(&cfg.kafka, &bootstrap).unwrap();
    let messages = stream(&cfg);
    let mut end: HashMap<(String, i32), i64> = HashMap::new();
    for (topic, key, bytes) in &messages {
        let (p, o) = duet_jobs::producer::send(&producer, topic, key, bytes)
            .await
            .unwrap();
        let e = end.entry((topic.clone(), p)).or_insert(0);
        *e = (*e).max(o + 1);
    }
    let truth = ground_truth(
        &messages
            .iter()
            .map(|(t, _, b)| (t.clone(), b.clone()))
            .collect::<Vec<_>>(),
    );

    // speed layer, lake sink, serving
    let cfg = Arc::new(cfg);
    let lake = Lake::open(&cfg.lake.url).unwrap();
    let store = Arc::new(EmbeddedStore::open(cfg.store.path.as_ref()).unwrap());
    let (stop, rx) = watch::channel(false);
    let counters = Arc::new(duet_speed::SpeedCounters::default());
    let speed = tokio::spawn(duet_jobs::app::speed(
        cfg.clone(),
        bootstrap.clone(),
        store.clone(),
        counters.clone(),
        duet_jobs::app::no_seals(),
        rx.clone(),
    ));
    let sink = tokio::spawn(duet_jobs::app::lake_sink(
        cfg.clone(),
        bootstrap.clone(),
        lake.clone(),
        rx.clone(),
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let state = duet_serving::AppState {
        cfg: cfg.clone(),
        lake: Arc::new(duet_serving::query::LakeReaders::new(&lake, &cfg)),
        store: store.clone(),
        counters: counters.clone(),
        parts: Arc::default(),
        checks: Arc::default(),
        metrics: Arc::default(),
    };
    let serving = tokio::spawn(duet_serving::serve(listener, state, None, rx.clone()));

    // wait until the speed layer has applied every message
    let group = duet_speed::group(&cfg);
    wait_until("the speed layer to catch up", || {
        let (store, end, group) = (store.clone(), end.clone(), group.clone());
        async move {
            for ((t, p), o) in &end {
                let done = store.offsets(&group, t).await.unwrap();
                if done.get(p) != Some(o) {
                    return false;
                }
            }
            true
        }
    })
    .await;

    let http = reqwest::Client::new();
    let views: Vec<(String, Vec<String>)> = cfg
        .views
        .iter()
        .map(|v| (v.name.clone(), v.dimensions.clone()))
        .collect();
    let mut before = BTreeMap::new();
    for (v, dims) in &views {
        before.insert(v.clone(), fetch(&http, &base, v, dims).await);
    }
    check_against(&truth, &before, "speed");

    // the malformed events are quarantined with their reason and offset
    let q: Value = http
        .get(format!("{base}/v1/quarantine"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let q = q["quarantine"].as_array().unwrap().clone();
    assert_eq!(q.len(), 2, "{q:#?}");
    assert!(
        q.iter()
            .any(|r| r["reason"].as_str().unwrap().starts_with("not valid JSON")),
        "{q:#?}"
    );
    assert!(
        q.iter()
            .any(|r| r["reason"] == "check `totalAmount > 0` does not hold"),
        "{q:#?}"
    );
    assert!(q.iter().all(|r| r["offset"].as_i64().is_some()));

    // the speed layer's totals, as Prometheus sees them: 2 re-deliveries, 2 malformed events,
    // every other message applied
    let metrics = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let applied = messages.len() - 4;
    for line in [
        format!("duet_speed_events_applied_total {applied}"),
        "duet_speed_duplicates_total 2".to_string(),
        "duet_speed_quarantined_total 2".to_string(),
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "missing {line:?} in\n{metrics}"
        );
    }

    // wait until the lake sink has written every valid delivery (duplicates included: raw is raw)
    let valid = |topic: &str| {
        messages
            .iter()
            .filter(|(t, _, b)| {
                t == topic
                    && cfg
                        .sources
                        .iter()
                        .any(|s| &s.topic == t && s.decode(b).is_ok())
            })
            .count() as u64
    };
    let (want_b, want_o) = (valid("user-behavior"), valid("orders"));
    wait_until("the lake sink to write every event", || {
        let lake = lake.clone();
        async move {
            duet_lake::raw::raw_count(&lake, "behavior").await.unwrap() == want_b
                && duet_lake::raw::raw_count(&lake, "orders").await.unwrap() == want_o
        }
    })
    .await;

    // one batch run per view seals everything
    for v in &cfg.views {
        let r = duet_batch::recompute(
            &lake,
            &cfg,
            v,
            T0 - 3_600_000,
            T0 + 3 * 3_600_000,
            T0 + 4 * 3_600_000,
        )
        .await
        .unwrap();
        assert_eq!(r.rows, truth[&v.name].len(), "{}: rows written", v.name);
    }
    let mut after = BTreeMap::new();
    for (v, dims) in &views {
        after.insert(v.clone(), fetch(&http, &base, v, dims).await);
    }
    check_against(&truth, &after, "batch");

    // a Delta reader Duet did not write sees the same tables
    crosscheck(&cfg, &truth, &lake_dir(&cfg), want_b, want_o);

    // API errors are JSON with a message
    let r = http
        .get(format!("{base}/v1/views/nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unknown_view");
    let r = http
        .get(format!("{base}/v1/views/orders_per_minute?from=yesterday"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.unwrap();
    assert!(
        body["error"]["message"].as_str().unwrap().contains("from"),
        "{body}"
    );

    stop.send(true).unwrap();
    speed.await.unwrap().unwrap();
    sink.await.unwrap().unwrap();
    serving.await.unwrap().unwrap();
    drop(kafka);
}

fn lake_dir(cfg: &duet_config::Config) -> String {
    cfg.lake.url.clone()
}

/// Runs `scripts/crosscheck.py` (Python `deltalake`) over the lake against the ground truth.
fn crosscheck(cfg: &duet_config::Config, truth: &Truth, lake: &str, behavior: u64, orders: u64) {
    let python = std::env::var("DUET_PYTHON").unwrap_or_else(|_| {
        format!(
            "{}/.cache/duet-venv/bin/python",
            std::env::var("HOME").unwrap_or_default()
        )
    });
    assert!(
        std::path::Path::new(&python).exists(),
        "no Python with deltalake at {python}: run ./scripts/setup.sh (or set DUET_PYTHON)"
    );
    let views: serde_json::Map<String, Value> = cfg
        .views
        .iter()
        .map(|v| {
            let rows: Vec<Value> = truth[&v.name]
                .iter()
                .map(|((b, dims), values)| json!({"bucket_ms": b, "dims": dims, "values": values}))
                .collect();
            (v.name.clone(), json!({"dims": v.dimensions, "rows": rows}))
        })
        .collect();
    let expected = json!({"raw": {"behavior": behavior, "orders": orders}, "views": views});
    let file = std::path::Path::new(lake).join("expected.json");
    std::fs::write(&file, expected.to_string()).unwrap();
    let script = crate::support::manifest_dir().join("../scripts/crosscheck.py");
    let out = std::process::Command::new(&python)
        .arg(script)
        .arg(lake)
        .arg(&file)
        .output()
        .unwrap();
    // The verdict is the script's last line; deltalake's runtime threads sometimes abort the
    // Python process after it was printed ("terminate called without an active exception"),
    // so a crash after a "match" verdict is not a mismatch.
    let stdout = String::from_utf8_lossy(&out.stdout);
    let verdict = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with("crosscheck:"))
        .unwrap_or_default();
    assert!(
        verdict.ends_with(" match"),
        "cross-check failed (exit {:?}):\n{stdout}{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
}
