//! The serving tests' deployment: a config with two views and a speed store holding rows of
//! both (no sealed buckets).

use std::sync::Arc;

use duet_config::{Config, Num, State};
use duet_lake::Lake;
use duet_speed::store::StateKey;
use duet_speed::{EmbeddedStore, SpeedBatch, ViewStore};

use crate::http::AppState;
use crate::query::LakeReaders;

pub(crate) const CFG: &str = r#"
    [[sources]]
    name = "orders"
    topic = "orders"
    event_id = "orderId"
    event_time = "createTime"
    fields = { orderId = "string", createTime = "int", totalAmount = "decimal(2)", city = "string", userId = "string" }

    [[views]]
    name = "gmv"
    source = "orders"
    bucket = "1m"
    dimensions = ["city"]
    measures = [{ name = "gmv", kind = "sum", field = "totalAmount" }, { name = "n", kind = "count" }]

    [[views]]
    name = "buyers"
    source = "orders"
    bucket = "1m"
    dimensions = ["city"]
    measures = [
      { name = "users", kind = "distinct_count", field = "userId" },
      { name = "avg_order", kind = "avg", field = "totalAmount" },
      { name = "top_users", kind = "top_k", field = "userId", by = "totalAmount", k = 2 },
    ]
"#;

/// The orders the `buyers` view holds: (minute of the second hour, city, user, amount).
pub(crate) const ORDERS: &[(i64, &str, &str, &str)] = &[
    (0, "Beijing", "u1", "10.00"),
    (0, "Beijing", "u2", "20.00"),
    (1, "Beijing", "u1", "30.00"),
    (1, "Shanghai", "u3", "5.50"),
    (2, "Beijing", "u2", "1.00"),
    (2, "Shanghai", "u1", "2.00"),
];

/// The serving state over a fresh lake and a store holding:
/// - `gmv`: minute 1 and 2 of 1970 in Hangzhou (the second an overflowed sum), and five
///   minutes of the second hour for three cities (gmv (m+1)·1.00 + c cents, count m+c+1);
/// - `buyers`: the [`ORDERS`].
pub(crate) async fn fixture(dir: &std::path::Path) -> (AppState, Arc<EmbeddedStore>) {
    let cfg = Config::from_toml_str(CFG, "t.toml".as_ref()).unwrap();
    let store = EmbeddedStore::open(&dir.join("s.redb")).unwrap();
    let mut b = SpeedBatch::default();
    b.unpartitioned().deltas.insert(
        StateKey {
            view: "gmv".into(),
            bucket: 60_000,
            dims: vec![Some("Hangzhou".into())],
        },
        vec![State::Sum(Num::Dec(12_990)), State::Count(1)],
    );
    // a bucket whose sum overflowed 38 digits
    b.unpartitioned().deltas.insert(
        StateKey {
            view: "gmv".into(),
            bucket: 120_000,
            dims: vec![Some("Hangzhou".into())],
        },
        vec![State::Sum(Num::Overflow), State::Count(2)],
    );
    for m in 0..5i64 {
        for (c, city) in ["Beijing", "Hangzhou", "Shanghai"].iter().enumerate() {
            let c = c as i64;
            b.unpartitioned().deltas.insert(
                StateKey {
                    view: "gmv".into(),
                    bucket: 3_600_000 + m * 60_000,
                    dims: vec![Some(city.to_string())],
                },
                vec![
                    State::Sum(Num::Dec(i128::from((m + 1) * 100 + c))),
                    State::Count(m + c + 1),
                ],
            );
        }
    }
    let buyers = cfg.view("buyers").unwrap();
    for (i, (minute, city, user, amount)) in ORDERS.iter().enumerate() {
        let text = format!(
            r#"{{"orderId":"o{i}","createTime":{},"totalAmount":{amount},"city":"{city}","userId":"{user}"}}"#,
            3_600_000 + minute * 60_000 + 5
        );
        let ev = cfg.sources[0].decode(text.as_bytes()).unwrap();
        for c in buyers.contributions(&ev) {
            let key = StateKey {
                view: "buyers".into(),
                bucket: c.bucket,
                dims: c.dims,
            };
            match b.unpartitioned().deltas.get_mut(&key) {
                Some(acc) => duet_config::measure::merge_row(acc, c.states).unwrap(),
                None => {
                    b.unpartitioned().deltas.insert(key, c.states);
                }
            }
        }
    }
    b.watermarks.insert("orders".into(), 120_000);
    store.commit(b).await.unwrap();
    let lake = Lake::open(dir.join("lake").to_str().unwrap()).unwrap();
    let store = Arc::new(store);
    let state = AppState {
        lake: Arc::new(LakeReaders::new(&lake, &cfg)),
        cfg: Arc::new(cfg),
        store: store.clone() as Arc<dyn ViewStore>,
        counters: Arc::default(),
        parts: Arc::default(),
        checks: Arc::default(),
        metrics: Arc::default(),
    };
    (state, store)
}

/// A self-signed certificate for `localhost` and 127.0.0.1, made with `openssl`: the
/// certificate's and the key's paths.
pub(crate) fn certificate(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let out = std::process::Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .args(["-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (cert, key)
}
