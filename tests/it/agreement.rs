//! Speed and batch are two compilations of one view spec: for any event stream they must
//! produce identical partial states per bucket. Here the speed side is the algebra the speed
//! layer folds with; the batch side is the Polars plan over a real Delta raw table.

use std::collections::{BTreeMap, HashSet};

use duet_config::{Row, State};
use duet_jobs::generator::Generator;
use duet_lake::{Lake, RawRecord, RawWriter, ViewTable};

use crate::support::{Key, reference_config};

async fn agree(seed: u64, events: i64) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = reference_config(dir.path());
    let lake = Lake::open(&cfg.lake.url).unwrap();
    let mut g = Generator::new(seed, 30);
    let t0 = 1_793_440_800_000 + (seed as i64 % 7) * 61_000;
    let mut writers = BTreeMap::new();
    for s in &cfg.sources {
        writers.insert(
            s.name.clone(),
            RawWriter::open(&lake, s, "duet-lake").await.unwrap(),
        );
    }
    let mut speed: BTreeMap<(String, Key), Vec<State>> = BTreeMap::new();
    let mut seen = HashSet::new();
    let mut records: BTreeMap<String, Vec<RawRecord>> = BTreeMap::new();
    for i in 0..events {
        let e = g.next(t0 + i * 411);
        let source = cfg.source(e.source).unwrap();
        let bytes = serde_json::to_vec(&e.value).unwrap();
        let event = source.decode(&bytes).unwrap();
        // every 17th event is delivered twice
        let copies = if i % 17 == 0 { 2 } else { 1 };
        for _ in 0..copies {
            let recs = records.entry(source.name.clone()).or_default();
            let offset = recs.len() as i64;
            recs.push(RawRecord {
                event: event.clone(),
                partition: 0,
                offset,
                payload: String::new(),
            });
        }
        if !seen.insert((source.name.clone(), event.id.clone())) {
            continue;
        }
        for v in cfg.views.iter().filter(|v| v.source == source.name) {
            for c in v.contributions(&event) {
                let acc = speed
                    .entry((v.name.clone(), (c.bucket, c.dims)))
                    .or_insert_with(|| v.identity());
                duet_config::measure::merge_row(acc, c.states).unwrap();
            }
        }
    }
    for (source, recs) in &records {
        // two commits, to read across files
        let w = writers.get_mut(source).unwrap();
        let half = recs.len() / 2;
        w.append(&recs[..half], None).await.unwrap();
        w.append(&recs[half..], None).await.unwrap();
    }
    // compacting the raw partitions changes files, never answers
    for source in records.keys() {
        duet_lake::raw::compact_raw(&lake, source, i64::MAX)
            .await
            .unwrap();
    }
    let (from, to) = (t0 - 86_400_000, t0 + 86_400_000);
    for v in &cfg.views {
        duet_batch::recompute(&lake, &cfg, v, from, to, t0)
            .await
            .unwrap();
        let (_, rows) = ViewTable::new(&lake, v).read_range(from, to).await.unwrap();
        let batch: Vec<Row> = rows;
        let expected: Vec<Row> = speed
            .iter()
            .filter(|((name, _), _)| name == &v.name)
            .map(|((_, (bucket, dims)), states)| Row {
                bucket: *bucket,
                dims: dims.clone(),
                states: states.clone(),
            })
            .collect();
        assert!(!expected.is_empty(), "{}", v.name);
        assert_eq!(batch, expected, "view {} (seed {seed})", v.name);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn speed_and_batch_agree_on_generated_streams() {
    for seed in [1, 2, 3] {
        agree(seed, 700).await;
    }
}

/// Decimals are exact at any size in both layers, and a sum that leaves its type's range is
/// an error for that bucket in both layers alike, never a wrapped or rounded value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_decimals_are_exact_and_overflow_is_a_bucket_error() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = duet_config::Config::from_toml_str(
        r#"
        [[sources]]
        name = "pay"
        topic = "pay"
        event_id = "id"
        event_time = "ts"
        fields = { id = "string", ts = "int", amount = "decimal(2)", n = "int" }

        [[views]]
        name = "totals"
        source = "pay"
        bucket = "1m"
        measures = [
          { name = "amount", kind = "sum", field = "amount" },
          { name = "biggest", kind = "max", field = "amount" },
          { name = "n", kind = "sum", field = "n" },
          { name = "avg", kind = "avg", field = "amount" },
        ]
        "#,
        "t.toml".as_ref(),
    )
    .unwrap();
    let lake = Lake::open(dir.path().join("lake").to_str().unwrap()).unwrap();
    let source = &cfg.sources[0];
    let view = &cfg.views[0];
    let big = "12345678901234567890123.45"; // 25 digits of units: far beyond f64
    let events = [
        // minute 0: exact big sums
        format!(r#"{{"id":"a","ts":1000,"amount":{big},"n":1}}"#),
        format!(r#"{{"id":"b","ts":2000,"amount":"{big}","n":2}}"#),
        r#"{"id":"c","ts":3000,"amount":0.01,"n":3}"#.to_string(),
        // minute 1: the decimal sum overflows 128 bits
        r#"{"id":"d","ts":61000,"amount":990000000000000000000000000000000000.00,"n":1}"#.to_string(),
        r#"{"id":"e","ts":62000,"amount":990000000000000000000000000000000000.00,"n":1}"#.to_string(),
        // minute 2: beyond 38 digits, within 128 bits; and the int sum overflows 64 bits
        r#"{"id":"f","ts":121000,"amount":600000000000000000000000000000000000.00,"n":9223372036854775807}"#.to_string(),
        r#"{"id":"g","ts":122000,"amount":600000000000000000000000000000000000.00,"n":1}"#.to_string(),
    ];
    let mut records = Vec::new();
    let mut speed: BTreeMap<i64, Vec<State>> = BTreeMap::new();
    for (i, text) in events.iter().enumerate() {
        let event = source.decode(text.as_bytes()).unwrap();
        for c in view.contributions(&event) {
            let acc = speed.entry(c.bucket).or_insert_with(|| view.identity());
            duet_config::measure::merge_row(acc, c.states).unwrap();
        }
        records.push(RawRecord {
            event,
            partition: 0,
            offset: i as i64,
            payload: String::new(),
        });
    }
    let mut w = RawWriter::open(&lake, source, "g").await.unwrap();
    w.append(&records, None).await.unwrap();
    duet_batch::recompute(&lake, &cfg, view, 0, 180_000, 1)
        .await
        .unwrap();
    let (_, rows) = ViewTable::new(&lake, view)
        .read_range(0, 180_000)
        .await
        .unwrap();
    let batch: BTreeMap<i64, Vec<State>> = rows.into_iter().map(|r| (r.bucket, r.states)).collect();
    assert_eq!(batch, speed, "the two layers must agree exactly");

    let render = |b: i64| serde_json::Value::Object(view.render(&batch[&b]));
    assert_eq!(render(0)["amount"], "24691357802469135780246.91");
    assert_eq!(render(0)["biggest"], big);
    for b in [60_000, 120_000] {
        assert!(render(b)["amount"].is_null(), "{}", render(b));
        assert!(render(b)["avg"].is_null(), "{}", render(b));
        assert!(view.measures[0].kind.problem(&batch[&b][0]).is_some());
    }
    assert!(render(120_000)["n"].is_null());
    assert_eq!(render(60_000)["n"], 2);
}

/// The two layers write the same bytes: a random generated stream over three partitions, with
/// re-deliveries through other partitions, through the real speed aggregator and store and,
/// separately, through the raw table and the Polars recompute; every bucket's stored state
/// bytes are identical in the speed store and in the view table's `_state` column.
async fn identical_bytes(seed: u64, events: i64, users: u32) {
    use duet_speed::{Aggregator, ViewStore};
    let dir = tempfile::tempdir().unwrap();
    let cfg = reference_config(dir.path());
    let lake = Lake::open(&cfg.lake.url).unwrap();
    let store = duet_speed::EmbeddedStore::open(&dir.path().join("store.redb")).unwrap();
    duet_speed::store::check_definitions(&store, &cfg.views)
        .await
        .unwrap();
    let agg = Aggregator::new(&cfg, "speed");
    let t0 = 1_793_440_800_000 + (seed as i64 % 11) * 37_000;
    let msgs = crate::support::generated(&mut Generator::new(seed, users), &cfg, events, t0, 97);
    let mut rng = seed;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut offsets = std::collections::HashMap::new();
    let mut delivered = Vec::new();
    for (i, (topic, _, bytes)) in msgs.iter().enumerate() {
        let copies = if next() % 13 == 0 { 2 } else { 1 };
        for _ in 0..copies {
            let partition = (next() % 3) as i32;
            let o = offsets.entry((topic.clone(), partition)).or_insert(0i64);
            delivered.push(duet_speed::kafka::Msg {
                topic: topic.as_str().into(),
                partition,
                offset: *o,
                payload: bytes.clone(),
                timestamp_ms: Some(t0 + i as i64 * 97),
            });
            *o += 1;
        }
    }
    for chunk in delivered.chunks(150) {
        let (b, _) = agg
            .build(chunk, &store, t0, &BTreeMap::new())
            .await
            .unwrap();
        store.commit(b).await.unwrap();
    }
    for s in &cfg.sources {
        let records: Vec<RawRecord> = delivered
            .iter()
            .filter(|m| m.topic == s.topic)
            .filter_map(|m| {
                Some(RawRecord {
                    event: s.decode(&m.payload).ok()?,
                    partition: m.partition,
                    offset: m.offset,
                    payload: String::new(),
                })
            })
            .collect();
        let mut w = RawWriter::open(&lake, s, "lake").await.unwrap();
        w.append(&records, None).await.unwrap();
    }
    let (from, to) = (t0 - 86_400_000, t0 + 86_400_000);
    for v in &cfg.views {
        duet_batch::recompute(&lake, &cfg, v, from, to, t0)
            .await
            .unwrap();
        let batch = ViewTable::new(&lake, v)
            .read_encoded(from, to)
            .await
            .unwrap();
        let speed: Vec<(i64, Vec<Option<String>>, Vec<u8>)> = store
            .read_encoded(&v.name, from, to)
            .unwrap()
            .into_iter()
            .map(|r| (r.bucket, r.dims, r.bytes))
            .collect();
        assert!(!batch.is_empty(), "{}", v.name);
        assert_eq!(batch.len(), speed.len(), "{} (seed {seed})", v.name);
        for (b, s) in batch.iter().zip(&speed) {
            assert_eq!(b, s, "{} (seed {seed}): bytes differ", v.name);
        }
        // and the store reads them back as the same states
        assert_eq!(
            store.read(&v.name, from, to).await.unwrap().len(),
            speed.len()
        );
    }
}

#[test]
fn both_layers_write_identical_state_bytes() {
    let cases: u64 = std::env::var("DUET_PROPERTY_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(2);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    for case in 0..cases {
        // seeds vary from run to run; the failing one is in the message
        let seed = duet_speed::now_ms() as u64 ^ (case.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        // one case with more than 4 096 distinct users in an hour (HyperLogLog states)
        let (events, users) = if case == 0 {
            (9_000, 8_000)
        } else {
            (2_000, 60)
        };
        rt.block_on(identical_bytes(seed, events, users));
    }
}
