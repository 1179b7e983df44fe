//! Exactly-once in effect across restarts: the speed layer is aborted mid-stream (its task
//! cancelled wherever it is), the store is closed and reopened, more events arrive (with
//! re-deliveries of old ones), and the restarted layer's answer is still exact.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use duet_config::Config;
use duet_jobs::embedded::EmbeddedKafka;
use duet_jobs::generator::Generator;
use duet_speed::store::{LocalRedis, LocalRedisCluster};
use duet_speed::{EmbeddedStore, RedisStore, ViewStore};
use tokio::sync::watch;

use crate::support::{caught_up, generated, ground_truth, produce, reference_config, rendered};

const T0: i64 = 1_793_448_000_000;

/// Which kind of view store a test runs on.
#[derive(Clone, Copy)]
enum Kind {
    Embedded,
    Redis,
    Cluster,
}

/// The view store a test runs on.
enum Stores {
    /// The embedded file.
    Embedded(std::path::PathBuf),
    /// A real `redis-server` (kept running for the test).
    Redis(LocalRedis, Vec<duet_config::ViewSpec>),
    /// A three-node Redis Cluster.
    Cluster(LocalRedisCluster, Vec<duet_config::ViewSpec>),
}

impl Stores {
    fn new(kind: Kind, cfg: &Config, dir: &std::path::Path) -> Stores {
        match kind {
            Kind::Redis => Stores::Redis(
                LocalRedis::start(&dir.join("redis")).unwrap(),
                cfg.views.clone(),
            ),
            Kind::Cluster => Stores::Cluster(
                LocalRedisCluster::start(&dir.join("cluster"), 3).unwrap(),
                cfg.views.clone(),
            ),
            Kind::Embedded => Stores::Embedded(cfg.store.path.clone().into()),
        }
    }

    /// Opens the store as a restarted worker does: the embedded file once a cancelled task's
    /// last blocking commit let go of it; Redis with a new connection (and new epochs).
    async fn reopen(&self) -> Arc<dyn ViewStore> {
        match self {
            Stores::Embedded(path) => {
                for _ in 0..100 {
                    if let Ok(s) = EmbeddedStore::open(path) {
                        return Arc::new(s);
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                panic!("the store at {} stayed locked", path.display());
            }
            Stores::Redis(server, views) => Arc::new(
                RedisStore::connect(&server.url(), "duet", views)
                    .await
                    .unwrap(),
            ),
            Stores::Cluster(cluster, views) => Arc::new(
                RedisStore::connect(&cluster.url(), "duet", views)
                    .await
                    .unwrap(),
            ),
        }
    }
}

fn spawn_speed(
    cfg: &Arc<Config>,
    bootstrap: &str,
    store: Arc<dyn ViewStore>,
    rx: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<anyhow::Result<()>> {
    tokio::spawn(duet_jobs::app::speed(
        cfg.clone(),
        bootstrap.to_string(),
        store,
        Arc::default(),
        duet_jobs::app::no_seals(),
        rx,
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_aborted_speed_layer_restarts_without_loss_or_double_count() {
    tokio::time::timeout(Duration::from_secs(180), run(Kind::Embedded))
        .await
        .expect("the restart test timed out");
}

/// The same with the Redis store: each restart is a new worker that takes the partitions
/// with new epochs, while the aborted one's last script may still be in flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_aborted_speed_layer_restarts_without_loss_or_double_count_on_redis() {
    tokio::time::timeout(Duration::from_secs(180), run(Kind::Redis))
        .await
        .expect("the restart test timed out");
}

/// The same with a three-node Redis Cluster: partitions' keys spread over the nodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_aborted_speed_layer_restarts_without_loss_or_double_count_on_a_redis_cluster() {
    tokio::time::timeout(Duration::from_secs(180), run(Kind::Cluster))
        .await
        .expect("the restart test timed out");
}

async fn run(kind: Kind) {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = reference_config(dir.path());
    cfg.speed.batch_max = 20;
    let stores = Stores::new(kind, &cfg, dir.path());
    let cfg = Arc::new(cfg);
    let topics: Vec<String> = cfg.sources.iter().map(|s| s.topic.clone()).collect();
    let kafka = EmbeddedKafka::start(&topics, cfg.kafka.partitions).unwrap();
    let bootstrap = kafka.bootstrap();
    let producer = duet_jobs::producer::producer(&cfg.kafka, &bootstrap).unwrap();
    let group = duet_speed::group(&cfg);

    let all = generated(&mut Generator::new(9, 25), &cfg, 800, T0, 200);
    let (first, second) = all.split_at(500);
    let mut second = second.to_vec();
    second.extend(first.iter().step_by(50).cloned()); // re-deliveries of old events

    let mut end = HashMap::new();
    produce(&producer, first, &mut end).await;

    // run, then abort mid-stream, a few times
    // run, and abort as soon as another batch has been committed, three times
    let total: i64 = end.values().sum();
    let done = |store: Arc<dyn ViewStore>| {
        let (topics, group) = (topics.clone(), group.clone());
        async move {
            let mut n = 0;
            for t in &topics {
                n += store
                    .offsets(&group, t)
                    .await
                    .unwrap()
                    .values()
                    .sum::<i64>();
            }
            n
        }
    };
    let mut progress = vec![0];
    for _ in 0..3 {
        let store = stores.reopen().await;
        let (_stop, rx) = watch::channel(false);
        let task = spawn_speed(&cfg, &bootstrap, store.clone(), rx);
        let before = *progress.last().unwrap_or(&0);
        let start = std::time::Instant::now();
        while done(store.clone()).await == before && start.elapsed() < Duration::from_secs(60) {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        task.abort();
        let _ = task.await;
        progress.push(done(store.clone()).await);
        drop(store);
    }
    assert!(
        progress[1] > 0,
        "no batch was committed before the first abort: {progress:?}"
    );
    assert!(
        progress[1] < total,
        "the first run finished before it was aborted: {progress:?} of {total}"
    );

    produce(&producer, &second, &mut end).await;
    let store = stores.reopen().await;
    let (stop, rx) = watch::channel(false);
    let task = spawn_speed(&cfg, &bootstrap, store.clone(), rx);
    let start = std::time::Instant::now();
    while !caught_up(store.as_ref(), &group, &end).await {
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "speed layer did not catch up"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop.send(true).unwrap();
    task.await.unwrap().unwrap();

    let delivered: Vec<(String, Vec<u8>)> = first
        .iter()
        .chain(second.iter())
        .map(|(t, _, b)| (t.clone(), b.clone()))
        .collect();
    let truth = ground_truth(&delivered);
    let got = rendered(&cfg, store.as_ref()).await;
    for (view, expected) in &truth {
        assert_eq!(&got[view], expected, "{view} after aborts and restart");
    }
    drop(kafka);
}

/// Two runs of the embedded cluster (each new and empty) feed one lake: every event of both
/// runs must land, although the second run's offsets start at 0 again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_new_embedded_cluster_does_not_reuse_old_offsets() {
    tokio::time::timeout(Duration::from_secs(180), two_runs())
        .await
        .expect("timed out");
}

async fn two_runs() {
    let dir = tempfile::tempdir().unwrap();
    let base = reference_config(dir.path());
    let lake = duet_lake::Lake::open(&base.lake.url).unwrap();
    let mut g = Generator::new(11, 20);
    let mut expected = 0;
    for run in 0..2 {
        let mut cfg = base.clone();
        duet_jobs::app::isolate_run(&mut cfg);
        let cfg = Arc::new(cfg);
        let topics: Vec<String> = cfg.sources.iter().map(|s| s.topic.clone()).collect();
        let kafka = EmbeddedKafka::start(&topics, cfg.kafka.partitions).unwrap();
        let producer = duet_jobs::producer::producer(&cfg.kafka, &kafka.bootstrap()).unwrap();
        let msgs: Vec<_> = generated(&mut g, &cfg, 150, T0 + run * 100_000, 100)
            .into_iter()
            .filter(|m| m.0 == "orders")
            .collect();
        expected += msgs.len() as u64;
        produce(&producer, &msgs, &mut HashMap::new()).await;
        let (stop, rx) = watch::channel(false);
        let sink = tokio::spawn(duet_jobs::app::lake_sink(
            cfg.clone(),
            kafka.bootstrap(),
            lake.clone(),
            rx,
        ));
        let start = std::time::Instant::now();
        while duet_lake::raw::raw_count(&lake, "orders").await.unwrap() < expected {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "run {run}: the lake has fewer than {expected} orders"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        stop.send(true).unwrap();
        sink.await.unwrap().unwrap();
        assert_eq!(
            duet_lake::raw::raw_count(&lake, "orders").await.unwrap(),
            expected,
            "run {run}"
        );
        drop(producer);
        drop(kafka);
    }
}
