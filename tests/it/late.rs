//! Late data under load: events whose times spread over three hours arrive in random order
//! while the scheduler seals and compacts every second. No part fails, and every event
//! reaches the lake (compaction rewrites hour partitions that late events are appended to).

use std::collections::HashMap;
use std::time::Duration;

use duet_jobs::generator::Generator;
use duet_serving::health::PartState;

use crate::support::{generated, ground_truth, reference_config};

/// A deterministic shuffle (xorshift), so that a failure can be replayed.
pub fn shuffle<T>(v: &mut [T], mut seed: u64) {
    for i in (1..v.len()).rev() {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        v.swap(i, (seed % (i as u64 + 1)) as usize);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn late_events_while_the_scheduler_compacts_and_seals() {
    tokio::time::timeout(Duration::from_secs(240), run())
        .await
        .expect("the late-data test timed out");
}

async fn run() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = reference_config(dir.path());
    cfg.serving.bind = "127.0.0.1:0".into();
    cfg.lateness_ms = 1_000;
    for j in &mut cfg.jobs {
        j.schedule = "* * * * * *".into(); // every second
    }
    // three hours of events, four hours ago, in random order
    let now = duet_speed::now_ms();
    let t0 = now - 4 * 3_600_000;
    let mut msgs = generated(&mut Generator::new(5, 200), &cfg, 3_000, t0, 3_600);
    shuffle(&mut msgs, 0x9e37_79b9_7f4a_7c15);
    let lake = duet_lake::Lake::open(&cfg.lake.url).unwrap();
    let lake_dir = cfg.lake.url.clone();
    let sources = cfg.sources.clone();
    let running = duet_jobs::app::start(cfg.clone(), None).await.unwrap();
    let producer =
        duet_jobs::producer::producer(&duet_config::KafkaConfig::default(), &running.bootstrap)
            .unwrap();
    let mut want: HashMap<String, u64> = HashMap::new();
    for chunk in msgs.chunks(100) {
        let sends = chunk
            .iter()
            .map(|(topic, key, bytes)| duet_jobs::producer::send(&producer, topic, key, bytes));
        for r in futures::future::join_all(sends).await {
            r.unwrap();
        }
        for (topic, _, bytes) in chunk {
            for s in sources.iter().filter(|s| &s.topic == topic) {
                if s.decode(bytes).is_ok() {
                    *want.entry(s.name.clone()).or_default() += 1;
                }
            }
        }
        // 30 chunks over ~12 s: the scheduler runs a dozen times meanwhile
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    let start = std::time::Instant::now();
    loop {
        let mut done = true;
        for (source, n) in &want {
            done &= duet_lake::raw::raw_count(&lake, source).await.unwrap() == *n;
        }
        if done {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "the lake did not receive every event: {:?}",
            running.parts().snapshot()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // no part failed on the way
    let parts = running.parts().snapshot();
    for (name, p) in &parts {
        assert_eq!(p.state, PartState::Running, "{name}: {p:?}");
        assert_eq!(p.restarts, 0, "{name} failed: {p:?}");
    }
    assert!(parts.contains_key("lake sink") && parts.contains_key("scheduler"));
    // and the scheduler did compact hour partitions while late events were appended to them
    let log = std::path::Path::new(&lake_dir).join("raw/orders/_delta_log");
    let optimized = std::fs::read_dir(&log)
        .unwrap()
        .filter_map(|e| std::fs::read_to_string(e.unwrap().path()).ok())
        .filter(|text| text.contains("\"operation\":\"OPTIMIZE\""))
        .count();
    assert!(optimized > 0, "no compaction happened");
    running.stop().await;

    // and nothing is lost from the answers: one more run seals what late events left dirty,
    // then every bucket of every view equals the ground truth
    let views: Vec<String> = cfg.views.iter().map(|v| v.name.clone()).collect();
    duet_jobs::scheduler::seal_due(&cfg, &lake, &views, now + 86_400_000).await;
    let store = duet_speed::EmbeddedStore::open(cfg.store.path.as_ref()).unwrap();
    let readers = duet_serving::query::LakeReaders::new(&lake, &cfg);
    let truth = ground_truth(
        &msgs
            .iter()
            .map(|(t, _, b)| (t.clone(), b.clone()))
            .collect::<Vec<_>>(),
    );
    for v in &cfg.views {
        let m = duet_serving::query::merged(&readers, &store, v, t0 - 86_400_000, now)
            .await
            .unwrap();
        assert!(
            m.late_pending.is_empty(),
            "{}: {:?}",
            v.name,
            m.late_pending
        );
        let got: std::collections::BTreeMap<_, _> = m
            .rows
            .iter()
            .map(|r| {
                (
                    (r.row.bucket, r.row.dims.clone()),
                    serde_json::Value::Object(v.render(&r.row.states)),
                )
            })
            .collect();
        assert_eq!(&got, &truth[&v.name], "{}", v.name);
    }
}
