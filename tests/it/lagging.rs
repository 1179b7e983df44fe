//! A lagging partition holds the watermark back: partitions 0 and 1 race ahead in event time
//! while partition 2's events trail behind. The scheduler seals whatever the lake's watermark
//! allows after every round, and at every point every sealed bucket already holds all of its
//! events: none is sealed before the lagging partition's events for it reached the lake.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use duet_jobs::generator::Generator;
use duet_serving::query::{Provenance, merged};
use duet_speed::EmbeddedStore;
use rdkafka::producer::FutureRecord;
use serde_json::Value;
use tokio::sync::watch;

use crate::support::{generated, ground_truth, reference_config};

const T0: i64 = 1_793_458_000_000;
const ROUNDS: usize = 6;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lagging_partition_holds_the_watermark_back() {
    tokio::time::timeout(Duration::from_secs(240), run())
        .await
        .expect("the lagging-partition test timed out");
}

async fn run() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = Arc::new(reference_config(dir.path()));
    let topics: Vec<String> = cfg.sources.iter().map(|s| s.topic.clone()).collect();
    let kafka = duet_jobs::embedded::EmbeddedKafka::start(&topics, 3).unwrap();
    let producer = duet_jobs::producer::producer(&cfg.kafka, &kafka.bootstrap()).unwrap();
    // partitions 0 and 1: ten minutes of events; partition 2: the same number of rounds
    // covering only the first two and a half minutes
    let fast = generated(&mut Generator::new(21, 50), &cfg, 1_200, T0, 500);
    let slow = generated(&mut Generator::new(22, 50), &cfg, 300, T0, 500);
    let all: Vec<(String, Vec<u8>)> = fast
        .iter()
        .chain(&slow)
        .map(|(t, _, b)| (t.clone(), b.clone()))
        .collect();
    let truth = ground_truth(&all);

    let lake = duet_lake::Lake::open(&cfg.lake.url).unwrap();
    let store = EmbeddedStore::open(&dir.path().join("empty.redb")).unwrap();
    let (stop, rx) = watch::channel(false);
    let sink = tokio::spawn(duet_jobs::app::lake_sink(
        cfg.clone(),
        kafka.bootstrap(),
        lake.clone(),
        rx,
    ));
    let views: Vec<String> = cfg.views.iter().map(|v| v.name.clone()).collect();
    let readers = duet_serving::query::LakeReaders::new(&lake, &cfg);
    let mut produced: BTreeMap<String, u64> = BTreeMap::new();
    let mut sealed_any = false;
    for round in 0..ROUNDS {
        let f = fast.len() / ROUNDS;
        let s = slow.len() / ROUNDS;
        let batch = fast[round * f..(round + 1) * f]
            .iter()
            .enumerate()
            .map(|(i, m)| (m, (i % 2) as i32))
            .chain(slow[round * s..(round + 1) * s].iter().map(|m| (m, 2)));
        for ((topic, key, bytes), partition) in batch {
            producer
                .send(
                    FutureRecord::to(topic)
                        .key(key)
                        .payload(bytes)
                        .partition(partition),
                    Duration::from_secs(10),
                )
                .await
                .map_err(|(e, _)| e)
                .unwrap();
            for src in cfg.sources.iter().filter(|s| &s.topic == topic) {
                if src.decode(bytes).is_ok() {
                    *produced.entry(src.name.clone()).or_default() += 1;
                }
            }
        }
        let start = std::time::Instant::now();
        for (source, n) in &produced {
            while duet_lake::raw::raw_count(&lake, source).await.unwrap() < *n {
                assert!(start.elapsed() < Duration::from_secs(60), "sink stalled");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        // the clock is far ahead: only the lake's watermark limits what is sealed
        let sealed =
            duet_jobs::scheduler::seal_due(&cfg, &lake, &views, T0 + 30 * 86_400_000).await;
        sealed_any |= !sealed.is_empty();
        for v in &cfg.views {
            let m = merged(&readers, &store, v, T0 - 3_600_000, T0 + 3 * 3_600_000)
                .await
                .unwrap();
            for r in m.rows.iter().filter(|r| r.source == Provenance::Batch) {
                let key = (r.row.bucket, r.row.dims.clone());
                let got = Value::Object(v.render(&r.row.states));
                assert_eq!(
                    Some(&got),
                    truth[&v.name].get(&key),
                    "round {round}: {} bucket {key:?} was sealed before all its events arrived",
                    v.name
                );
            }
        }
    }
    assert!(sealed_any, "nothing was ever sealed");
    stop.send(true).unwrap();
    sink.await.unwrap().unwrap();
    drop(kafka);
}
