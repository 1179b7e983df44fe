//! Starting a whole deployment in one process: Kafka (embedded or configured), the speed
//! layer, the lake sink, the scheduler, serving and (optionally) the event generator.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use duet_config::Config;
use duet_lake::Lake;
use duet_speed::{EmbeddedStore, SpeedCounters, ViewStore};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::embedded::EmbeddedKafka;

/// A running deployment.
pub struct Running {
    /// Address of the HTTP API.
    pub http: SocketAddr,
    /// Kafka `bootstrap.servers`.
    pub bootstrap: String,
    /// Whether Kafka is the embedded mock cluster.
    pub embedded: bool,
    shutdown: watch::Sender<bool>,
    tasks: JoinSet<(&'static str, Result<()>)>,
    _kafka: Option<EmbeddedKafka>,
}

/// The speed layer as an owned future, ready to spawn.
pub async fn speed(
    cfg: Arc<Config>,
    bootstrap: String,
    store: Arc<dyn ViewStore>,
    counters: Arc<SpeedCounters>,
    shutdown: watch::Receiver<bool>,
) -> Result<()> {
    Ok(duet_speed::run(&cfg, &bootstrap, store, counters, shutdown).await?)
}

/// The lake sink as an owned future, ready to spawn.
pub async fn lake_sink(
    cfg: Arc<Config>,
    bootstrap: String,
    lake: Lake,
    shutdown: watch::Receiver<bool>,
) -> Result<()> {
    crate::lake_sink::run(&cfg, &bootstrap, &lake, shutdown).await
}

/// Gives this run consumer groups of its own. The embedded cluster lives and dies with the
/// process: each run is a new cluster whose offsets start at 0 again, so offsets stored by an
/// earlier run (view store, raw tables' `txn` actions) must not be read as this run's. The
/// views' state, the seen ids and the lake carry over.
pub fn isolate_run(cfg: &mut Config) {
    cfg.kafka.group_prefix = format!("{}-{:08x}", cfg.kafka.group_prefix, rand::random::<u32>());
}

/// Starts every part of `cfg`; `generate` sets the event generator's rate per second.
pub async fn start(mut cfg: Config, generate: Option<u32>) -> Result<Running> {
    if cfg.kafka.bootstrap_servers.is_none() {
        isolate_run(&mut cfg);
    }
    let cfg = Arc::new(cfg);
    let (kafka, bootstrap) = match &cfg.kafka.bootstrap_servers {
        Some(b) => (None, b.clone()),
        None => {
            let mut topics: Vec<String> = cfg.sources.iter().map(|s| s.topic.clone()).collect();
            topics.dedup();
            let k = EmbeddedKafka::start(&topics, cfg.kafka.partitions)?;
            let b = k.bootstrap();
            (Some(k), b)
        }
    };
    let lake = Lake::open(&cfg.lake.url)?;
    let store: Arc<dyn ViewStore> = Arc::new(
        EmbeddedStore::open(Path::new(&cfg.store.path))
            .with_context(|| format!("open the view store at {}", cfg.store.path))?,
    );
    let listener = tokio::net::TcpListener::bind(&cfg.serving.bind)
        .await
        .with_context(|| format!("bind the HTTP API to {}", cfg.serving.bind))?;
    let http = listener.local_addr()?;
    let (tx, rx) = watch::channel(false);
    let mut tasks: JoinSet<(&'static str, Result<()>)> = JoinSet::new();
    let counters = Arc::new(SpeedCounters::default());
    let f = speed(
        cfg.clone(),
        bootstrap.clone(),
        store.clone(),
        counters.clone(),
        rx.clone(),
    );
    tasks.spawn(async move { ("speed", f.await) });
    let f = lake_sink(cfg.clone(), bootstrap.clone(), lake.clone(), rx.clone());
    tasks.spawn(async move { ("lake sink", f.await) });
    {
        let (cfg, lake, rx) = (cfg.clone(), lake.clone(), rx.clone());
        tasks.spawn(async move { ("scheduler", crate::scheduler::run(&cfg, &lake, rx).await) });
    }
    {
        let state = duet_serving::AppState {
            cfg: cfg.clone(),
            lake: lake.clone(),
            store: store.clone(),
            counters,
        };
        let rx = rx.clone();
        tasks.spawn(async move {
            (
                "serving",
                duet_serving::serve(listener, state, rx)
                    .await
                    .map_err(Into::into),
            )
        });
    }
    if let Some(rate) = generate {
        let (cfg, b, rx) = (cfg.clone(), bootstrap.clone(), rx.clone());
        tasks.spawn(async move {
            (
                "generator",
                crate::producer::generate(&cfg, &b, rate, rx).await,
            )
        });
    }
    Ok(Running {
        http,
        bootstrap,
        embedded: kafka.is_some(),
        shutdown: tx,
        tasks,
        _kafka: kafka,
    })
}

impl Running {
    /// Runs until Ctrl-C or until a part fails; then stops every part.
    pub async fn wait(mut self) -> Result<()> {
        let failed = tokio::select! {
            _ = tokio::signal::ctrl_c() => None,
            Some(done) = self.tasks.join_next() => Some(done),
        };
        let _ = self.shutdown.send(true);
        let mut result = Ok(());
        if let Some(done) = failed {
            result = match done {
                Ok((name, Ok(()))) => Err(anyhow::anyhow!("{name} stopped unexpectedly")),
                Ok((name, Err(e))) => Err(e.context(format!("{name} failed"))),
                Err(e) => Err(anyhow::anyhow!("a task panicked: {e}")),
            };
        }
        while let Some(done) = self.tasks.join_next().await {
            if let Ok((name, Err(e))) = done {
                tracing::error!(part = name, error = %e, "Stopped with an error.");
            }
        }
        result
    }
}
