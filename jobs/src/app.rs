//! Starting a whole deployment in one process: Kafka (embedded or configured), the speed
//! layer, the lake sink, the scheduler, serving and (optionally) the event generator.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use duet_config::Config;
use duet_lake::Lake;
use duet_speed::{EmbeddedStore, RedisStore, SpeedCounters, ViewStore};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::embedded::EmbeddedKafka;
use crate::supervise::{Backoff, supervise};
use duet_serving::health::Parts;

/// A running deployment.
pub struct Running {
    /// Address of the HTTP API.
    pub http: SocketAddr,
    /// Address of the PostgreSQL port, if served.
    pub pg: Option<SocketAddr>,
    /// Kafka `bootstrap.servers`.
    pub bootstrap: String,
    /// Whether Kafka is the embedded mock cluster.
    pub embedded: bool,
    /// Whether both ports speak TLS (`[serving.tls]`).
    pub tls: bool,
    parts: Arc<Parts>,
    shutdown: watch::Sender<bool>,
    tasks: JoinSet<()>,
    _kafka: Option<EmbeddedKafka>,
}

/// The speed layer as an owned future, ready to spawn.
pub async fn speed(
    cfg: Arc<Config>,
    bootstrap: String,
    store: Arc<dyn ViewStore>,
    counters: Arc<SpeedCounters>,
    sealed: duet_speed::SealedUntil,
    shutdown: watch::Receiver<bool>,
) -> Result<()> {
    Ok(duet_speed::run(&cfg, &bootstrap, store, counters, sealed, shutdown).await?)
}

/// Opens the view store `[store]` names: the Redis server of `url` when it is set, else the
/// embedded file at `path` (which only one process can hold open).
pub async fn open_store(cfg: &Config) -> Result<Arc<dyn ViewStore>> {
    Ok(match &cfg.store.url {
        Some(url) => Arc::new(
            RedisStore::connect(url, &cfg.store.prefix, &cfg.views)
                .await
                .with_context(|| {
                    format!(
                        "connect to the Redis view store (`store.url` of {})",
                        cfg.file.display()
                    )
                })?,
        ),
        None => Arc::new(
            EmbeddedStore::open(Path::new(&cfg.store.path))
                .with_context(|| format!("open the view store at {}", cfg.store.path))?,
        ),
    })
}

/// A sealed-frontier channel that never moves (for tests and tools that seal nothing).
pub fn no_seals() -> duet_speed::SealedUntil {
    watch::channel(std::collections::BTreeMap::new()).1
}

/// Checks that every view's stored state (speed store and batch table) was written under its
/// current definition; records the definition where nothing is stored yet. The error names
/// each changed view, what changed, and the command that resets it.
pub async fn check_views(cfg: &Config, lake: &Lake, store: &dyn ViewStore) -> Result<()> {
    let mut problems = Vec::new();
    if let Err(e) = duet_speed::store::check_definitions(store, &cfg.views).await {
        match e {
            duet_speed::Error::ViewChanged { mismatches, .. } => {
                problems.extend(mismatches.iter().map(|m| format!("speed store: {m}")));
            }
            other => return Err(other.into()),
        }
    }
    for v in &cfg.views {
        if let Some(m) = duet_lake::ViewTable::new(lake, v)
            .check_definition()
            .await?
        {
            problems.push(format!("views/{}: {m}", v.name));
        }
    }
    if problems.is_empty() {
        return Ok(());
    }
    anyhow::bail!(
        "refusing to start: stored state was written under another view definition:\n  {}",
        problems.join("\n  ")
    )
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

/// A part of a deployment that can run in a process of its own (`duet run --only PART`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// The speed layer: a member of the speed consumer group.
    Speed,
    /// The lake sink.
    Lake,
    /// The scheduler: batch recomputes, seals, compaction, vacuum.
    Batch,
    /// Only the HTTP API.
    Serving,
}

impl std::fmt::Display for Part {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Part::Speed => "speed",
            Part::Lake => "lake",
            Part::Batch => "batch",
            Part::Serving => "serving",
        })
    }
}

/// Starts every part of `cfg`, each under a supervisor that restarts it when it fails;
/// `generate` sets the event generator's rate per second.
pub async fn start(cfg: Config, generate: Option<u32>) -> Result<Running> {
    start_parts(cfg, generate, None).await
}

/// Checks that `cfg` lets `only` run in a process of its own: the other processes must reach
/// the same Kafka and view store, so neither may be the embedded one.
pub fn check_split(cfg: &Config, only: Part) -> Result<()> {
    if cfg.kafka.bootstrap_servers.is_none() {
        anyhow::bail!(
            "`--only {only}` runs one part in this process, so the others must reach its Kafka: set `[kafka] bootstrap_servers` in {} (the embedded cluster lives inside one process)",
            cfg.file.display()
        );
    }
    if cfg.store.url.is_none() {
        anyhow::bail!(
            "`--only {only}` runs one part in this process, so the others must reach its view store: set `[store] url` (Redis) in {} (the embedded store is a file one process holds; with it every part runs in one process)",
            cfg.file.display()
        );
    }
    Ok(())
}

/// Starts the parts of `cfg` (all of them, or only `only` and the HTTP API, which every
/// process serves for `/health` and `/metrics`), each under a supervisor that restarts it
/// when it fails; `generate` sets the event generator's rate per second. A speed layer
/// without the scheduler in its process follows the seal ledger itself.
pub async fn start_parts(
    mut cfg: Config,
    generate: Option<u32>,
    only: Option<Part>,
) -> Result<Running> {
    if let Some(part) = only {
        check_split(&cfg, part)?;
    }
    let runs = |p: Part| only.is_none_or(|o| o == p);
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
    let store = open_store(&cfg).await?;
    check_views(&cfg, &lake, store.as_ref()).await?;
    let listener = tokio::net::TcpListener::bind(&cfg.serving.bind)
        .await
        .with_context(|| format!("bind the HTTP API to {}", cfg.serving.bind))?;
    let http = listener.local_addr()?;
    // an open API (no tokens) listens on loopback only, on both ports
    let tokens = duet_serving::auth::Tokens::new(&cfg.serving.tokens);
    duet_serving::auth::check_exposure("[serving] bind", &http, &tokens)
        .map_err(anyhow::Error::msg)?;
    if !tokens.enabled() {
        tracing::info!(%http, "No [[serving.tokens]]: the HTTP API is open, on loopback only.");
    }
    let pg_listener = match &cfg.serving.pg_bind {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("bind the PostgreSQL port to {addr}"))?,
        ),
        None => None,
    };
    let pg = pg_listener.as_ref().map(|l| l.local_addr()).transpose()?;
    if let Some(addr) = &pg {
        duet_serving::auth::check_exposure("[serving] pg_bind", addr, &tokens)
            .map_err(anyhow::Error::msg)?;
        if tokens.enabled() && !tokens.any_pg() {
            tracing::warn!(%addr, "No [[serving.tokens]] has a pg_password: nobody can log in to the PostgreSQL port.");
        }
    }
    let tokens = Arc::new(tokens);
    // one certificate for both ports; a bad file stops the start with the key and file named
    let tls = match &cfg.serving.tls {
        Some(t) => Some(duet_serving::tls::acceptor(
            std::path::Path::new(&t.cert),
            std::path::Path::new(&t.key),
        )?),
        None => None,
    };
    // serving's counters, shared by the HTTP API and the PostgreSQL port
    let serving_metrics = Arc::new(duet_serving::metrics::ServingMetrics::default());
    let (tx, rx) = watch::channel(false);
    let parts = Arc::new(Parts::default());
    let mut tasks = JoinSet::new();
    let counters = Arc::new(SpeedCounters::default());
    let checks = Arc::new(duet_serving::health::SealChecks::default());
    let backoff = Backoff::default();
    let (sealed_tx, sealed_rx) = watch::channel(std::collections::BTreeMap::new());
    let sealed_tx = Arc::new(sealed_tx);
    tasks.spawn(crate::status::run(
        counters.clone(),
        sealed_tx.subscribe(),
        rx.clone(),
    ));
    let mut spawn = |name: &'static str, start: Box<dyn FnMut() -> PartFuture + Send>| {
        tasks.spawn(supervise(name, parts.clone(), backoff, rx.clone(), start));
    };
    if runs(Part::Speed) {
        let sealed_rx = sealed_rx.clone();
        let (cfg, bootstrap, store, counters, rx) = (
            cfg.clone(),
            bootstrap.clone(),
            store.clone(),
            counters.clone(),
            rx.clone(),
        );
        spawn(
            "speed",
            Box::new(move || {
                Box::pin(speed(
                    cfg.clone(),
                    bootstrap.clone(),
                    store.clone(),
                    counters.clone(),
                    sealed_rx.clone(),
                    rx.clone(),
                ))
            }),
        );
    }
    if runs(Part::Lake) {
        let (cfg, bootstrap, lake, rx) = (cfg.clone(), bootstrap.clone(), lake.clone(), rx.clone());
        spawn(
            "lake sink",
            Box::new(move || {
                Box::pin(lake_sink(
                    cfg.clone(),
                    bootstrap.clone(),
                    lake.clone(),
                    rx.clone(),
                ))
            }),
        );
    }
    if runs(Part::Batch) {
        let (cfg, lake, rx) = (cfg.clone(), lake.clone(), rx.clone());
        let check = crate::scheduler::SealCheck {
            store: store.clone(),
            checks: checks.clone(),
            sealed: sealed_tx.subscribe(),
            retention_ms: cfg.sealed_retention_ms,
        };
        spawn(
            "scheduler",
            Box::new(move || {
                let (cfg, lake, rx, sealed, check) = (
                    cfg.clone(),
                    lake.clone(),
                    rx.clone(),
                    sealed_tx.clone(),
                    check.clone(),
                );
                Box::pin(async move {
                    crate::scheduler::run(&cfg, &lake, &sealed, Some(&check), rx).await
                })
            }),
        );
    } else if runs(Part::Speed) {
        // the scheduler runs elsewhere: learn the sealed frontiers from the ledger
        let (cfg, lake, rx) = (cfg.clone(), lake.clone(), rx.clone());
        spawn(
            "seal follower",
            Box::new(move || {
                let (cfg, lake, mut rx, sealed) =
                    (cfg.clone(), lake.clone(), rx.clone(), sealed_tx.clone());
                Box::pin(async move {
                    loop {
                        crate::scheduler::publish_sealed(&cfg, &lake, &sealed).await?;
                        tokio::select! {
                            _ = rx.wait_for(|s| *s) => return Ok(()),
                            () = tokio::time::sleep(std::time::Duration::from_secs(10)) => {}
                        }
                    }
                })
            }),
        );
    }
    // one set of lake readers (and their caches) for the HTTP API and the PostgreSQL port
    let readers = Arc::new(duet_serving::query::LakeReaders::new(&lake, &cfg));
    if let (Some(listener), Some(pg)) = (pg_listener, pg) {
        let (cfg, store, rx) = (cfg.clone(), store.clone(), rx.clone());
        let options = duet_serving::pg::PgOptions {
            metrics: serving_metrics.clone(),
            tokens: tokens.clone(),
            tls: tls.clone(),
        };
        let readers = readers.clone();
        // the first run serves on the listener bound above; a restart binds the same address
        let mut first = Some(listener);
        spawn(
            "sql",
            Box::new(move || {
                let (cfg, store, readers, rx, listener, options) = (
                    cfg.clone(),
                    store.clone(),
                    readers.clone(),
                    rx.clone(),
                    first.take(),
                    options.clone(),
                );
                Box::pin(async move {
                    let listener = match listener {
                        Some(l) => l,
                        None => tokio::net::TcpListener::bind(pg)
                            .await
                            .with_context(|| format!("bind the PostgreSQL port to {pg}"))?,
                    };
                    let guard = duet_serving::sql_limits::SqlGuard {
                        limits: Default::default(),
                        metrics: options.metrics.clone(),
                    };
                    let ctx = duet_serving::pg::session_with(&cfg.views, readers, store, guard)?;
                    Ok(duet_serving::pg::serve(listener, ctx, options, rx).await?)
                })
            }),
        );
    }
    {
        let state = duet_serving::AppState {
            cfg: cfg.clone(),
            lake: readers.clone(),
            store: store.clone(),
            counters,
            parts: parts.clone(),
            checks,
            metrics: serving_metrics.clone(),
        };
        let rx = rx.clone();
        // the first run serves on the listener bound above; a restart binds the same address
        let mut first = Some(listener);
        spawn(
            "serving",
            Box::new(move || {
                let (state, rx, listener, tls) =
                    (state.clone(), rx.clone(), first.take(), tls.clone());
                Box::pin(async move {
                    let listener = match listener {
                        Some(l) => l,
                        None => tokio::net::TcpListener::bind(http)
                            .await
                            .with_context(|| format!("bind the HTTP API to {http}"))?,
                    };
                    Ok(duet_serving::serve(listener, state, tls, rx).await?)
                })
            }),
        );
    }
    if let Some(rate) = generate {
        let (cfg, b, rx) = (cfg.clone(), bootstrap.clone(), rx.clone());
        spawn(
            "generator",
            Box::new(move || {
                let (cfg, b, rx) = (cfg.clone(), b.clone(), rx.clone());
                Box::pin(async move { crate::producer::generate(&cfg, &b, rate, rx).await })
            }),
        );
    }
    Ok(Running {
        http,
        pg,
        bootstrap,
        embedded: kafka.is_some(),
        tls: cfg.serving.tls.is_some(),
        parts,
        shutdown: tx,
        tasks,
        _kafka: kafka,
    })
}

type PartFuture = std::pin::Pin<Box<dyn std::future::Future<Output = Result<()>> + Send>>;

impl Running {
    /// The status of every part, as `/health` reports it.
    pub fn parts(&self) -> Arc<Parts> {
        self.parts.clone()
    }

    /// Runs until Ctrl-C or SIGTERM; failing parts are restarted meanwhile. Then stops
    /// every part.
    pub async fn wait(self) -> Result<()> {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("listen for SIGTERM")?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        self.stop().await;
        Ok(())
    }

    /// Stops every part and waits for them to finish.
    pub async fn stop(mut self) {
        let _ = self.shutdown.send(true);
        while self.tasks.join_next().await.is_some() {}
    }
}
