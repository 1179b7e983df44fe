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
    let t0 = 1_796_032_800_000 + (seed as i64 % 7) * 61_000;
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
