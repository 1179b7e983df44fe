//! Scale-out on Kafka's group protocol with the Redis store: speed workers share one consumer
//! group; partitions move as a worker joins, one leaves, and another crashes; the store's
//! fencing and offsets keep every view exact.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use duet_config::Config;
use duet_jobs::generator::Generator;
use duet_speed::store::LocalRedis;
use duet_speed::{RedisStore, SpeedCounters, ViewStore};
use tokio::sync::watch;

use crate::support::{
    Broker, caught_up, generated, ground_truth, produce, reference_config, rendered,
};

const T0: i64 = 1_793_448_000_000;

/// A speed worker of the group, with a Redis connection of its own.
struct Worker {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    counters: Arc<SpeedCounters>,
}

async fn worker(cfg: &Arc<Config>, bootstrap: &str, redis: &str) -> Worker {
    let store: Arc<dyn ViewStore> = Arc::new(
        RedisStore::connect(redis, "duet", &cfg.views)
            .await
            .unwrap(),
    );
    let (stop, rx) = watch::channel(false);
    let counters = Arc::new(SpeedCounters::default());
    let task = tokio::spawn(duet_jobs::app::speed(
        cfg.clone(),
        bootstrap.to_string(),
        store,
        counters.clone(),
        duet_jobs::app::no_seals(),
        rx,
    ));
    Worker {
        stop,
        task,
        counters,
    }
}

/// Waits until the group has given `w` partitions (its lag is known for some).
async fn assigned(w: &Worker) {
    let start = std::time::Instant::now();
    while w.counters.lag().is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "a worker got no partitions"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn applied_by(w: &Worker, more_than: u64) {
    let start = std::time::Instant::now();
    while w
        .counters
        .applied
        .load(std::sync::atomic::Ordering::Relaxed)
        <= more_than
    {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "a worker applied nothing"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn workers_joining_leaving_and_crashing_stay_exact() {
    tokio::time::timeout(Duration::from_secs(240), run(false))
        .await
        .expect("the group test timed out");
}

/// The same on a broker nobody here wrote.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn workers_joining_leaving_and_crashing_stay_exact_on_tansu() {
    tokio::time::timeout(Duration::from_secs(240), run(true))
        .await
        .expect("the group test timed out");
}

async fn run(tansu: bool) {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = reference_config(dir.path());
    cfg.kafka.partitions = 6;
    cfg.speed.batch_max = 50;
    let cfg = Arc::new(cfg);
    let redis = LocalRedis::start(&dir.path().join("redis")).unwrap();
    let topics: Vec<String> = cfg.sources.iter().map(|s| s.topic.clone()).collect();
    let kafka = Broker::start(tansu, dir.path(), &topics, cfg.kafka.partitions);
    let bootstrap = kafka.bootstrap();
    let producer = duet_jobs::producer::producer(&cfg.kafka, &bootstrap).unwrap();
    let group = duet_speed::group(&cfg);

    let mut all = generated(&mut Generator::new(21, 40), &cfg, 6_000, T0, 50);
    // 2 % re-deliveries of earlier messages (same key, so the same partition)
    let copies: Vec<_> = all.iter().step_by(50).cloned().collect();
    all.extend(copies);
    let quarter = all.len() / 4;
    let mut end = HashMap::new();
    produce(&producer, &all[..quarter], &mut end).await;

    // two workers share the partitions (each applies events once it has some)
    let a = worker(&cfg, &bootstrap, &redis.url()).await;
    let b = worker(&cfg, &bootstrap, &redis.url()).await;
    assigned(&a).await;
    assigned(&b).await;
    produce(&producer, &all[quarter..2 * quarter], &mut end).await;
    applied_by(&a, 0).await;
    applied_by(&b, 0).await;

    // a third joins mid-stream
    let c = worker(&cfg, &bootstrap, &redis.url()).await;
    assigned(&c).await;
    produce(&producer, &all[2 * quarter..3 * quarter], &mut end).await;
    applied_by(&c, 0).await;

    // one leaves (its partitions move to the others), then one crashes (its task is aborted
    // wherever it is; the group moves its partitions after the session timeout)
    b.stop.send(true).unwrap();
    b.task.await.unwrap().unwrap();
    produce(&producer, &all[3 * quarter..], &mut end).await;
    c.task.abort();
    let _ = c.task.await;

    let reader = RedisStore::connect(&redis.url(), "duet", &cfg.views)
        .await
        .unwrap();
    let start = std::time::Instant::now();
    while !caught_up(&reader, &group, &end).await {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "the group did not catch up"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // the crashed worker's partitions reach the last one after the session timeout, whether or
    // not they had anything left to read (a fast worker may have read everything before it
    // was aborted, and the group then catches up without moving them)
    let every = topics.len() * usize::try_from(cfg.kafka.partitions).unwrap();
    while a.counters.lag().len() < every {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "the crashed worker's partitions never moved"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    a.stop.send(true).unwrap();
    a.task.await.unwrap().unwrap();

    let delivered: Vec<(String, Vec<u8>)> =
        all.iter().map(|(t, _, b)| (t.clone(), b.clone())).collect();
    let truth = ground_truth(&delivered);
    let got = rendered(&cfg, &reader).await;
    for (view, expected) in &truth {
        assert_eq!(
            &got[view], expected,
            "{view} after joins, a leave and a crash"
        );
    }
    // partitions moved: worker a shared them with b at first and holds them all at the end.
    // How many rebalances it saw on the way depends on the assignor's choices (on tansu the
    // joining worker may take only the leaving one's partitions), so only the first and the
    // last are certain
    let rebalances = a
        .counters
        .rebalances
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(rebalances >= 2, "worker a saw {rebalances} rebalances");
    drop(kafka);
}
