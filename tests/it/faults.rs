//! Fault tests, bounded in time and count, each comparing every view with a ground truth
//! computed independently from the produced events: the broker restarted mid-stream, the
//! Redis server restarted mid-stream, 5 % malformed events, and speed workers killed with
//! SIGKILL five times while 100 000 events with 2 % duplicates are produced (both stores).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use duet_config::Config;
use duet_jobs::generator::Generator;
use duet_speed::store::LocalRedis;
use duet_speed::{EmbeddedStore, RedisStore, SpeedCounters, ViewStore};
use tokio::sync::watch;

use crate::support::{
    Broker, caught_up, generated, ground_truth, produce, reference_config, rendered,
};

const T0: i64 = 1_793_448_000_000;

/// Waits (up to `secs`) until `group` in `store` has read everything in `end`.
async fn wait_caught_up(
    store: &dyn ViewStore,
    group: &str,
    end: &HashMap<(String, i32), i64>,
    secs: u64,
) {
    let start = std::time::Instant::now();
    while !caught_up(store, group, end).await {
        assert!(
            start.elapsed() < Duration::from_secs(secs),
            "the speed layer did not catch up within {secs} s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Every view in `store` equals the ground truth of `messages`.
async fn assert_exact(
    cfg: &Config,
    store: &dyn ViewStore,
    messages: &[(String, String, Vec<u8>)],
    what: &str,
) {
    let delivered: Vec<(String, Vec<u8>)> = messages
        .iter()
        .map(|(t, _, b)| (t.clone(), b.clone()))
        .collect();
    let truth = ground_truth(&delivered);
    let got = rendered(cfg, store).await;
    for (view, expected) in &truth {
        assert_eq!(&got[view], expected, "{view} {what}");
    }
}

fn spawn_speed(
    cfg: &Arc<Config>,
    bootstrap: &str,
    store: Arc<dyn ViewStore>,
    counters: Arc<SpeedCounters>,
) -> (
    watch::Sender<bool>,
    tokio::task::JoinHandle<anyhow::Result<()>>,
) {
    let (stop, rx) = watch::channel(false);
    let task = tokio::spawn(duet_jobs::app::speed(
        cfg.clone(),
        bootstrap.to_string(),
        store,
        counters,
        duet_jobs::app::no_seals(),
        rx,
    ));
    (stop, task)
}

/// The broker (tansu, on SQLite) is killed and started again while events flow: the speed
/// layer reconnects and ends exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_broker_restarted_mid_stream() {
    tokio::time::timeout(Duration::from_secs(180), broker_restart())
        .await
        .expect("timed out");
}

async fn broker_restart() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = Arc::new(reference_config(dir.path()));
    let topics: Vec<String> = cfg.sources.iter().map(|s| s.topic.clone()).collect();
    let Broker::Tansu(mut broker) = Broker::start(true, dir.path(), &topics, 3) else {
        unreachable!()
    };
    let bootstrap = broker.bootstrap();
    let all = generated(&mut Generator::new(31, 30), &cfg, 3_000, T0, 100);
    let (first, second) = all.split_at(1_500);
    let mut end = HashMap::new();
    {
        let producer = duet_jobs::producer::producer(&cfg.kafka, &bootstrap).unwrap();
        produce(&producer, first, &mut end).await;
    }
    let store: Arc<dyn ViewStore> = Arc::new(EmbeddedStore::open(cfg.store.path.as_ref()).unwrap());
    let counters = Arc::new(SpeedCounters::default());
    let (stop, task) = spawn_speed(&cfg, &bootstrap, store.clone(), counters.clone());
    let start = std::time::Instant::now();
    while counters.applied.load(Relaxed) == 0 {
        assert!(start.elapsed() < Duration::from_secs(60), "nothing applied");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    broker.restart().unwrap();
    {
        let producer = duet_jobs::producer::producer(&cfg.kafka, &bootstrap).unwrap();
        produce(&producer, second, &mut end).await;
    }
    wait_caught_up(store.as_ref(), &duet_speed::group(&cfg), &end, 120).await;
    stop.send(true).unwrap();
    task.await.unwrap().unwrap();
    assert_exact(&cfg, store.as_ref(), &all, "after a broker restart").await;
}

/// The Redis server (append-only file on) is killed and started again while events flow: the
/// worker either goes on (nothing was lost) or is refused, starts again from the stored
/// offsets, and ends exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_redis_server_restarted_mid_stream() {
    tokio::time::timeout(Duration::from_secs(180), redis_restart())
        .await
        .expect("timed out");
}

async fn redis_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = reference_config(dir.path());
    cfg.speed.batch_max = 20;
    let cfg = Arc::new(cfg);
    let topics: Vec<String> = cfg.sources.iter().map(|s| s.topic.clone()).collect();
    let kafka = Broker::start(false, dir.path(), &topics, 3);
    let bootstrap = kafka.bootstrap();
    let mut redis = LocalRedis::start(&dir.path().join("redis")).unwrap();
    let producer = duet_jobs::producer::producer(&cfg.kafka, &bootstrap).unwrap();
    let all = generated(&mut Generator::new(41, 30), &cfg, 4_000, T0, 100);
    let mut end = HashMap::new();
    produce(&producer, &all, &mut end).await;
    let store: Arc<dyn ViewStore> = Arc::new(
        RedisStore::connect(&redis.url(), "duet", &cfg.views)
            .await
            .unwrap(),
    );
    let counters = Arc::new(SpeedCounters::default());
    // the part's supervisor restarts the speed layer when it fails; here, a loop does
    let (stop, rx) = watch::channel(false);
    let supervised = {
        let (cfg, bootstrap, store, counters) = (
            cfg.clone(),
            bootstrap.clone(),
            store.clone(),
            counters.clone(),
        );
        tokio::spawn(async move {
            let mut failures = 0;
            while !*rx.borrow() {
                let r = duet_jobs::app::speed(
                    cfg.clone(),
                    bootstrap.clone(),
                    store.clone(),
                    counters.clone(),
                    duet_jobs::app::no_seals(),
                    rx.clone(),
                )
                .await;
                if r.is_err() {
                    failures += 1;
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
            failures
        })
    };
    let start = std::time::Instant::now();
    while counters.applied.load(Relaxed) < 500 {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "too little applied"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let at_restart = counters.applied.load(Relaxed);
    assert!(at_restart < 3_800, "all applied before the restart");
    redis.restart().unwrap();
    let reader = RedisStore::connect(&redis.url(), "duet", &cfg.views)
        .await
        .unwrap();
    wait_caught_up(&reader, &duet_speed::group(&cfg), &end, 120).await;
    stop.send(true).unwrap();
    let failures = supervised.await.unwrap();
    assert!(failures < 20, "{failures} failures");
    assert_exact(&cfg, &reader, &all, "after a Redis restart").await;
}

/// One message in twenty is malformed: every one is quarantined with its reason and offset,
/// every valid event counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn five_percent_malformed_events() {
    tokio::time::timeout(Duration::from_secs(120), malformed())
        .await
        .expect("timed out");
}

async fn malformed() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = Arc::new(reference_config(dir.path()));
    let topics: Vec<String> = cfg.sources.iter().map(|s| s.topic.clone()).collect();
    let kafka = Broker::start(false, dir.path(), &topics, 3);
    let bootstrap = kafka.bootstrap();
    let producer = duet_jobs::producer::producer(&cfg.kafka, &bootstrap).unwrap();
    let all = generated(
        &mut Generator::new(51, 30).with_malformed_every(20),
        &cfg,
        4_000,
        T0,
        100,
    );
    let mut end = HashMap::new();
    produce(&producer, &all, &mut end).await;
    let store: Arc<dyn ViewStore> = Arc::new(EmbeddedStore::open(cfg.store.path.as_ref()).unwrap());
    let counters = Arc::new(SpeedCounters::default());
    let (stop, task) = spawn_speed(&cfg, &bootstrap, store.clone(), counters.clone());
    let lake = duet_lake::Lake::open(&cfg.lake.url).unwrap();
    let sink = tokio::spawn(duet_jobs::app::lake_sink(
        cfg.clone(),
        bootstrap.clone(),
        lake.clone(),
        stop.subscribe(),
    ));
    wait_caught_up(store.as_ref(), &duet_speed::group(&cfg), &end, 60).await;
    // the lake keeps every malformed event, once, with its reason and bytes
    let start = std::time::Instant::now();
    let kept = loop {
        let kept = duet_lake::read_quarantine(&lake).await.unwrap();
        if kept.len() >= 200 || start.elapsed() > Duration::from_secs(60) {
            break kept;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    stop.send(true).unwrap();
    task.await.unwrap().unwrap();
    sink.await.unwrap().unwrap();
    assert_eq!(kept.len(), 200, "the lake's quarantine table");
    let produced: std::collections::HashSet<&[u8]> =
        all.iter().map(|(_, _, b)| b.as_slice()).collect();
    assert!(
        kept.iter()
            .all(|r| produced.contains(r.payload.as_slice()) && !r.reason.is_empty())
    );
    assert_exact(&cfg, store.as_ref(), &all, "with 5 % malformed events").await;
    let q = store.quarantine(10_000).await.unwrap();
    assert_eq!(q.len(), 200, "one in twenty of 4 000 quarantined");
    assert!(q.iter().all(|r| !r.reason.is_empty() && r.offset >= 0));
    assert_eq!(counters.quarantined.load(Relaxed), 200);
    assert_eq!(
        counters.applied.load(Relaxed) + counters.duplicates.load(Relaxed),
        3_800
    );
}

/// The `duet` binary of this build (built beside the test binaries by `cargo test --workspace`).
fn duet_binary() -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let bin = exe
        .parent()
        .and_then(std::path::Path::parent)
        .map(|d| d.join("duet"))
        .unwrap();
    assert!(
        bin.exists(),
        "{} is missing: run the tests with `cargo test --workspace` (scripts/test.sh)",
        bin.display()
    );
    bin
}

/// The `/metrics` text of the process serving `addr` (empty while it does not answer).
async fn metrics(http: &reqwest::Client, addr: &str) -> String {
    match http.get(format!("http://{addr}/metrics")).send().await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// A `duet run` child process, killed with SIGKILL when dropped.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// SIGKILL a speed worker at random points, five times, while 100 000 events with 2 %
/// duplicates are produced; restart it each time; the views end exact. Embedded store.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn speed_workers_killed_five_times_embedded() {
    tokio::time::timeout(Duration::from_secs(420), killed(false))
        .await
        .expect("timed out");
}

/// The same with the Redis store (`duet run --only speed`).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn speed_workers_killed_five_times_redis() {
    tokio::time::timeout(Duration::from_secs(420), killed(true))
        .await
        .expect("timed out");
}

async fn killed(redis: bool) {
    use rand::{Rng, SeedableRng};
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = reference_config(dir.path());
    // 100 000 events over 12 partitions stay within the mock cluster's 5 MB per partition
    cfg.kafka.partitions = 12;
    let topics: Vec<String> = cfg.sources.iter().map(|s| s.topic.clone()).collect();
    let kafka = Broker::start(false, dir.path(), &topics, cfg.kafka.partitions);
    let bootstrap = kafka.bootstrap();
    let server = redis.then(|| LocalRedis::start(&dir.path().join("redis")).unwrap());
    // the reference deployment without its jobs: nothing is sealed, so the speed store keeps
    // every bucket for the comparison
    let text = std::fs::read_to_string(
        crate::support::manifest_dir().join("../config/examples/ecommerce.toml"),
    )
    .unwrap();
    let text = &text[..text.find("[[jobs]]").unwrap()];
    let file = dir.path().join("duet.toml");
    std::fs::write(&file, text).unwrap();
    let store_env = match &server {
        Some(s) => ("DUET_STORE__URL", s.url()),
        None => ("DUET_STORE__PATH", cfg.store.path.clone()),
    };
    let start_worker = || {
        let mut cmd = std::process::Command::new(duet_binary());
        cmd.args(["run", "--http", "127.0.0.1:0", "-c"]).arg(&file);
        if redis {
            cmd.args(["--only", "speed"]);
        }
        let mut child = cmd
            .env("DUET_KAFKA__BOOTSTRAP_SERVERS", &bootstrap)
            .env("DUET_LAKE__URL", &cfg.lake.url)
            .env(store_env.0, &store_env.1)
            .env("DUET_SPEED__BATCH_MAX", "500")
            .env("DUET_LOG", "warn")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // the banner names the HTTP API, whose /metrics says what this worker applied
        use std::io::BufRead;
        let out = std::io::BufReader::new(child.stdout.take().unwrap());
        let addr = out
            .lines()
            .map_while(Result::ok)
            .find_map(|l| {
                l.trim()
                    .strip_prefix("HTTP API:")
                    .and_then(|a| a.trim().strip_prefix("http://"))
                    .and_then(|a| a.split('/').next())
                    .map(str::to_string)
            })
            .expect("duet run prints its HTTP address");
        (Child(child), addr)
    };
    let http = reqwest::Client::new();
    let applied = async |addr: &str| -> u64 {
        metrics(&http, addr)
            .await
            .lines()
            .find_map(|l| l.strip_prefix("duet_speed_events_applied_total "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };

    let mut all = generated(&mut Generator::new(61, 500), &cfg, 100_000, T0, 10);
    // 2 % duplicates: copies of earlier messages (same key, so the same partition)
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut with_copies = Vec::with_capacity(102_000);
    for (i, m) in all.drain(..).enumerate() {
        with_copies.push(m);
        if i % 50 == 49 {
            let j = rng.random_range(i.saturating_sub(500)..=i);
            with_copies.push(with_copies[j.min(with_copies.len() - 1)].clone());
        }
    }
    let all = with_copies;
    let producer = duet_jobs::producer::producer(&cfg.kafka, &bootstrap).unwrap();
    let mut end = HashMap::new();
    let chunks: Vec<&[(String, String, Vec<u8>)]> = all.chunks(all.len() / 6 + 1).collect();
    for chunk in &chunks[..5] {
        let (worker, addr) = start_worker();
        produce(&producer, chunk, &mut end).await;
        // kill it at a random point after it started applying
        let start = std::time::Instant::now();
        while applied(&addr).await == 0 {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "a worker applied nothing"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..1_500))).await;
        drop(worker); // SIGKILL
    }
    produce(&producer, chunks[5], &mut end).await;
    let group = duet_speed::group(&cfg);
    let store: Arc<dyn ViewStore> = match &server {
        Some(s) => {
            let _worker = start_worker().0;
            let store: Arc<dyn ViewStore> = Arc::new(
                RedisStore::connect(&s.url(), "duet", &cfg.views)
                    .await
                    .unwrap(),
            );
            wait_caught_up(store.as_ref(), &group, &end, 240).await;
            store
        }
        None => {
            // the embedded file is the worker's while it runs: once its consumer has read
            // everything, stop it (SIGTERM: it commits its batch and leaves) and look
            let partitions = topics.len() * cfg.kafka.partitions as usize;
            let mut rounds = 0;
            loop {
                let (mut worker, addr) = start_worker();
                let start = std::time::Instant::now();
                loop {
                    let lags: Vec<i64> = metrics(&http, &addr)
                        .await
                        .lines()
                        .filter(|l| l.starts_with("duet_speed_consumer_lag{"))
                        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
                        .collect();
                    if lags.len() == partitions && lags.iter().all(|l| *l == 0) {
                        break;
                    }
                    assert!(
                        start.elapsed() < Duration::from_secs(180),
                        "the speed layer did not read everything: lags {lags:?}"
                    );
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
                let pid = worker.0.id().to_string();
                std::process::Command::new("kill")
                    .args(["-TERM", &pid])
                    .status()
                    .unwrap();
                let _ = worker.0.wait();
                let store = EmbeddedStore::open(cfg.store.path.as_ref()).unwrap();
                if caught_up(&store, &group, &end).await {
                    break Arc::new(store);
                }
                rounds += 1;
                assert!(rounds < 3, "the speed layer did not catch up");
            }
        }
    };
    assert_exact(&cfg, store.as_ref(), &all, "after five SIGKILLs").await;
}
