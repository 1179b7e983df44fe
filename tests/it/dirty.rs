//! Late data for sealed buckets, and holes left by manual runs.
//!
//! - Late events (with re-deliveries) for buckets already sealed are marked dirty by the lake
//!   sink; serving flags those buckets with the number of late events pending; the next
//!   scheduled run recomputes exactly the dirty buckets, and the answer equals the ground
//!   truth with every late event counted once.
//! - A manual run ahead of the sealed frontier leaves a gap that the scheduler fills.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use duet_config::Config;
use duet_jobs::generator::Generator;
use duet_lake::{Interval, Lake, SealLedger};
use duet_serving::query::{LakeReaders, Provenance, merged};
use duet_speed::EmbeddedStore;
use serde_json::Value;
use tokio::sync::watch;

use crate::support::{Truth, generated, ground_truth, reference_config};

const T0: i64 = 1_793_466_000_000;
/// A clock far ahead: only the lake's watermark limits what is sealed.
const LATER: i64 = T0 + 30 * 86_400_000;

async fn produce_all(
    producer: &rdkafka::producer::FutureProducer,
    msgs: &[(String, String, Vec<u8>)],
) {
    for (topic, key, bytes) in msgs {
        duet_jobs::producer::send(producer, topic, key, bytes)
            .await
            .unwrap();
    }
}

/// Waits until the lake holds `n` valid deliveries per source.
async fn lake_holds(cfg: &Config, lake: &Lake, msgs: &[(String, String, Vec<u8>)]) {
    let mut want: BTreeMap<String, u64> = BTreeMap::new();
    for (topic, _, bytes) in msgs {
        for s in cfg.sources.iter().filter(|s| &s.topic == topic) {
            if s.decode(bytes).is_ok() {
                *want.entry(s.name.clone()).or_default() += 1;
            }
        }
    }
    let start = std::time::Instant::now();
    for (source, n) in &want {
        while duet_lake::raw::raw_count(lake, source).await.unwrap() < *n {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "the sink stalled"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Checks every batch row against the truth; returns the late events pending per view.
async fn check_sealed(
    cfg: &Config,
    readers: &LakeReaders,
    store: &EmbeddedStore,
    truth: &Truth,
    strict: bool,
) -> BTreeMap<String, BTreeMap<i64, i64>> {
    let mut pending = BTreeMap::new();
    for v in &cfg.views {
        let m = merged(readers, store, v, T0 - 3_600_000, T0 + 3_600_000)
            .await
            .unwrap();
        for r in m.rows.iter().filter(|r| r.source == Provenance::Batch) {
            let key = (r.row.bucket, r.row.dims.clone());
            let got = Value::Object(v.render(&r.row.states));
            if strict {
                assert_eq!(Some(&got), truth[&v.name].get(&key), "{} {key:?}", v.name);
            }
            assert_eq!(
                r.late_pending,
                m.late_pending.get(&r.row.bucket).copied(),
                "{}",
                v.name
            );
        }
        pending.insert(v.name.clone(), m.late_pending);
    }
    pending
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn late_events_for_sealed_buckets_are_recomputed_once() {
    tokio::time::timeout(Duration::from_secs(240), late_run())
        .await
        .expect("the dirty-bucket test timed out");
}

async fn late_run() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = Arc::new(reference_config(dir.path()));
    let topics: Vec<String> = cfg.sources.iter().map(|s| s.topic.clone()).collect();
    let kafka = duet_jobs::embedded::EmbeddedKafka::start(&topics, 3).unwrap();
    let producer = duet_jobs::producer::producer(&cfg.kafka, &kafka.bootstrap()).unwrap();
    let lake = Lake::open(&cfg.lake.url).unwrap();
    let store = EmbeddedStore::open(&dir.path().join("empty.redb")).unwrap();
    let readers = LakeReaders::new(&lake, &cfg);
    let (stop, rx) = watch::channel(false);
    let sink = tokio::spawn(duet_jobs::app::lake_sink(
        cfg.clone(),
        kafka.bootstrap(),
        lake.clone(),
        rx,
    ));
    let views: Vec<String> = cfg.views.iter().map(|v| v.name.clone()).collect();

    // three minutes of events, sealed as far as the watermark allows
    let first = generated(&mut Generator::new(31, 40), &cfg, 600, T0, 300);
    produce_all(&producer, &first).await;
    lake_holds(&cfg, &lake, &first).await;
    let sealed = duet_jobs::scheduler::seal_due(&cfg, &lake, &views, LATER).await;
    assert!(!sealed.is_empty());
    let truth_first = ground_truth(&pairs(&first));
    let pending = check_sealed(&cfg, &readers, &store, &truth_first, true).await;
    assert!(pending.values().all(BTreeMap::is_empty), "{pending:?}");

    // late events for the first two minutes (already sealed), some delivered twice, and
    // re-deliveries of old events
    let mut late = generated(&mut Generator::new(32, 40), &cfg, 200, T0 + 1_000, 500);
    late.retain(|(_, _, b)| {
        let v: Value = serde_json::from_slice(b).unwrap_or_default();
        let t = v["payTime"]
            .as_i64()
            .or(v["timestamp"].as_i64())
            .or(v["createTime"].as_i64());
        t.is_some_and(|t| t < T0 + 110_000)
    });
    let again: Vec<_> = late.iter().step_by(7).cloned().collect();
    let old: Vec<_> = first.iter().step_by(11).cloned().collect();
    let mut second = late.clone();
    second.extend(again);
    second.extend(old);
    produce_all(&producer, &second).await;
    let everything: Vec<_> = first.iter().chain(&second).cloned().collect();
    lake_holds(&cfg, &lake, &everything).await;
    let truth = ground_truth(&pairs(&everything));

    // serving flags the dirty buckets, with the late events pending
    let pending = check_sealed(&cfg, &readers, &store, &truth, false).await;
    let dirty: usize = pending.values().map(BTreeMap::len).sum();
    assert!(dirty > 0, "no bucket was marked dirty: {pending:?}");
    let ledger = SealLedger::new(&lake).snapshot().await.unwrap();
    let expected: BTreeMap<String, Vec<Interval>> = views
        .iter()
        .map(|v| (v.clone(), ledger.view(v).dirty_ranges()))
        .collect();

    // the next run recomputes exactly the dirty buckets, and the answer is exact
    let runs = duet_jobs::scheduler::seal_due(&cfg, &lake, &views, LATER).await;
    let mut done: BTreeMap<String, Vec<Interval>> = BTreeMap::new();
    for r in &runs {
        done.entry(r.view.clone())
            .or_default()
            .extend(r.ranges.iter().copied());
    }
    for v in &views {
        assert_eq!(
            done.get(v).cloned().unwrap_or_default(),
            expected[v],
            "{v}: the run should recompute the dirty buckets and nothing else"
        );
    }
    let pending = check_sealed(&cfg, &readers, &store, &truth, true).await;
    assert!(pending.values().all(BTreeMap::is_empty), "{pending:?}");

    stop.send(true).unwrap();
    sink.await.unwrap().unwrap();
    drop(kafka);
}

fn pairs(msgs: &[(String, String, Vec<u8>)]) -> Vec<(String, Vec<u8>)> {
    msgs.iter()
        .map(|(t, _, b)| (t.clone(), b.clone()))
        .collect()
}

/// A manual run ahead of the frontier: the scheduler still fills the gap before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scheduler_fills_gaps_left_by_manual_runs() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = reference_config(dir.path());
    let lake = Lake::open(&cfg.lake.url).unwrap();
    let msgs = generated(&mut Generator::new(41, 30), &cfg, 400, T0, 1_500);
    let mut writers = BTreeMap::new();
    for s in &cfg.sources {
        let mut w = duet_lake::RawWriter::open(&lake, s, "g").await.unwrap();
        let records: Vec<_> = msgs
            .iter()
            .filter(|(t, _, _)| t == &s.topic)
            .enumerate()
            .filter_map(|(i, (_, _, b))| {
                Some(duet_lake::RawRecord {
                    event: s.decode(b).ok()?,
                    partition: 0,
                    offset: i as i64,
                    payload: String::new(),
                })
            })
            .collect();
        let max = records.iter().map(|r| r.event.time_ms).max();
        w.append(&records, max).await.unwrap();
        writers.insert(s.name.clone(), w);
    }
    let view = cfg.view("orders_per_minute").unwrap();
    // minutes 4 and 5 by hand, ahead of anything sealed
    duet_batch::recompute(&lake, &cfg, view, T0 + 240_000, T0 + 360_000, LATER)
        .await
        .unwrap();
    let runs =
        duet_jobs::scheduler::seal_due(&cfg, &lake, std::slice::from_ref(&view.name), LATER).await;
    let ranges: Vec<Interval> = runs.iter().flat_map(|r| r.ranges.clone()).collect();
    assert_eq!(
        ranges.first().map(|r| r.to),
        Some(T0 + 240_000),
        "{ranges:?}"
    );
    assert!(ranges.iter().any(|r| r.from == T0 + 360_000), "{ranges:?}");
    let seals = SealLedger::new(&lake)
        .snapshot()
        .await
        .unwrap()
        .view(&view.name);
    assert_eq!(seals.sealed.len(), 1, "no gap left: {:?}", seals.sealed);
    let truth = ground_truth(&pairs(&msgs));
    let readers = LakeReaders::new(&lake, &cfg);
    let store = EmbeddedStore::open(&dir.path().join("empty.redb")).unwrap();
    let m = merged(&readers, &store, view, T0, T0 + 540_000)
        .await
        .unwrap();
    let got: BTreeMap<_, _> = m
        .rows
        .iter()
        .map(|r| {
            assert_eq!(r.source, Provenance::Batch);
            (
                (r.row.bucket, r.row.dims.clone()),
                Value::Object(view.render(&r.row.states)),
            )
        })
        .collect();
    let want: BTreeMap<_, _> = truth[&view.name]
        .iter()
        .filter(|((b, _), _)| *b < T0 + 540_000)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    assert_eq!(got, want);
}
