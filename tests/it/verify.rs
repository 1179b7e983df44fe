//! `duet verify` beside a running deployment (serving asked over HTTP) and without one (the
//! store read in process), and the scheduler's seal checks in `/metrics`.

use std::time::Duration;

use duet_jobs::generator::Generator;
use duet_lake::{Lake, RawRecord, RawWriter};

use crate::support::{generated, reference_config};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn verify_finds_what_differs_and_seals_are_checked() {
    tokio::time::timeout(Duration::from_secs(240), run())
        .await
        .expect("the verify test timed out");
}

async fn run() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = reference_config(dir.path());
    cfg.serving.bind = "127.0.0.1:0".into();
    cfg.lateness_ms = 1_000;
    for j in &mut cfg.jobs {
        j.schedule = "* * * * * *".into();
    }
    let now = duet_speed::now_ms();
    let t0 = now - 3_600_000 - now.rem_euclid(3_600_000);
    let msgs = generated(&mut Generator::new(51, 30), &cfg, 600, t0, 2_000);
    let running = duet_jobs::app::start(cfg.clone(), None).await.unwrap();
    // verify asks the running deployment at [serving] bind
    cfg.serving.bind = running.http.to_string();
    let producer = duet_jobs::producer::producer(&cfg.kafka, &running.bootstrap).unwrap();
    for (topic, key, bytes) in &msgs {
        duet_jobs::producer::send(&producer, topic, key, bytes)
            .await
            .unwrap();
    }
    let view = cfg.view("orders_per_minute").unwrap().clone();
    let http = reqwest::Client::new();
    let metrics = format!("http://{}/metrics", running.http);
    // wait until the scheduler has sealed and checked the view
    let start = std::time::Instant::now();
    loop {
        let text = http
            .get(&metrics)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if text.contains("duet_seal_mismatched_buckets{view=\"orders_per_minute\"} 0") {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "no clean seal check in /metrics:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let (from, to) = (t0, t0 + 20 * 60_000);
    let v = duet_jobs::verify::verify(&cfg, &view, from, to, duet_speed::now_ms())
        .await
        .unwrap();
    assert!(v.via.contains("HTTP"), "{}", v.via);
    assert!(v.range.is_some() && v.compared > 0, "{v:?}");
    assert!(v.agrees(), "{v:#?}");
    running.stop().await;

    // an event written to the lake behind the deployment's back, in a sealed bucket: verify
    // (now reading the store in process) names the bucket and the measure
    let lake = Lake::open(&cfg.lake.url).unwrap();
    let source = cfg.source("orders").unwrap();
    let sneaky = format!(
        r#"{{"orderId":"ord_sneaky","userId":"u","orderStatus":"created","createTime":{},"totalAmount":12.34}}"#,
        t0 + 61_000
    );
    let mut w = RawWriter::open(&lake, source, "someone-else")
        .await
        .unwrap();
    w.append(
        &[RawRecord {
            event: source.decode(sneaky.as_bytes()).unwrap(),
            partition: 0,
            offset: 0,
            payload: sneaky.clone(),
        }],
        None,
    )
    .await
    .unwrap();
    let v = duet_jobs::verify::verify(&cfg, &view, from, to, duet_speed::now_ms())
        .await
        .unwrap();
    assert!(v.via.contains("in this process"), "{}", v.via);
    assert_eq!(v.served.len(), 1, "{v:#?}");
    let (diff, served) = &v.served[0];
    assert_eq!(diff.bucket, t0 + 60_000);
    assert_eq!(served.as_ref().map(|s| s.source.as_str()), Some("batch"));
    assert!(diff.measures.iter().any(|m| m.measure == "orders"));
    assert!(!v.agrees());
}
