//! `duet bench`: throughput and latency of each layer on the reference deployment, each figure
//! beside a baseline measured in the same process, written as a Markdown report.
//!
//! Baselines: Kafka consume-and-discard for the speed layer and the lake sink (how fast could
//! any consumer go here), in-memory decode + fold for the speed layer's CPU share, and
//! `/health` for query latency. The embedded broker keeps at most 5 MB per partition, so the
//! event count is capped.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use duet_config::Config;
use duet_lake::Lake;
use duet_speed::kafka::AssignedConsumer;
use duet_speed::{EmbeddedStore, ViewStore};
use rdkafka::producer::FutureRecord;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

use crate::embedded::EmbeddedKafka;
use crate::generator::Generator;

/// Most events `duet bench` produces (the embedded broker's retention).
pub const MAX_EVENTS: usize = 60_000;
const T0: i64 = 1_793_440_800_000;

/// Options of a benchmark run.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Events to produce.
    pub events: usize,
    /// HTTP queries per endpoint.
    pub queries: usize,
    /// Scratch folder (removed afterwards).
    pub dir: PathBuf,
    /// Minutely seals of `gmv_per_minute` for the steady-state section (1 440: a day).
    pub seals: usize,
    /// Events through the speed layer's store for the dedup-state section, spread over
    /// `store_days` simulated days.
    pub store_events: usize,
    /// Simulated days of the dedup-state section.
    pub store_days: usize,
}

pub(crate) fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines().next().map(|l| {
                l.split_whitespace()
                    .nth(1)
                    .unwrap_or("0")
                    .parse::<u64>()
                    .unwrap_or(0)
            })
        })
        .map_or("unknown".into(), |kb| {
            format!("{:.1} GiB", kb as f64 / 1_048_576.0)
        });
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!(
        "{cpu}, {cores} cores, {mem} RAM, {} build",
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        }
    )
}

pub(crate) fn peak_rss_mib() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: f64 = s
        .lines()
        .find(|l| l.starts_with("VmHWM"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

/// `events` seed-shaped messages (topic, key, JSON bytes) for `users` users, the i-th at
/// `t0 + i * step_ms`, from a generator with a fixed seed.
pub(crate) fn generate(
    cfg: &Config,
    users: u32,
    events: usize,
    t0: i64,
    step_ms: i64,
) -> Result<Vec<(String, String, Vec<u8>)>> {
    let mut g = Generator::new(7, users);
    let mut msgs = Vec::with_capacity(events);
    for i in 0..events {
        let e = g.next(t0 + i as i64 * step_ms);
        let topic = cfg
            .source(e.source)
            .map(|s| s.topic.clone())
            .context("generator source")?;
        msgs.push((topic, e.key, serde_json::to_vec(&e.value)?));
    }
    Ok(msgs)
}

/// Produces `msgs` (topic, key, bytes), 5 000 in flight at a time; returns the next offset of
/// every partition written.
pub(crate) async fn produce_all(
    producer: &rdkafka::producer::FutureProducer,
    msgs: &[(String, String, Vec<u8>)],
) -> Result<HashMap<(String, i32), i64>> {
    let mut end: HashMap<(String, i32), i64> = HashMap::new();
    for chunk in msgs.chunks(5_000) {
        let futs: Vec<_> = chunk
            .iter()
            .map(|(topic, key, v)| {
                producer.send(
                    FutureRecord::to(topic).key(key).payload(v),
                    Duration::from_secs(30),
                )
            })
            .collect();
        for (d, (topic, _, _)) in futures::future::join_all(futs).await.into_iter().zip(chunk) {
            let d = d.map_err(|(e, _)| e).context("produce")?;
            let e = end.entry((topic.clone(), d.partition)).or_insert(0);
            *e = (*e).max(d.offset + 1);
        }
    }
    Ok(end)
}

/// How long a consumer of group `group` takes to read and discard `events` messages of
/// `topics` from their start: the ceiling any consumer of this broker reaches here.
pub(crate) async fn consume_all(
    cfg: &Config,
    bootstrap: &str,
    group: &str,
    topics: &[String],
    events: usize,
) -> Result<Consumed> {
    let baseline = AssignedConsumer::new(
        &cfg.kafka,
        bootstrap,
        group,
        topics,
        |_, _| None,
        Duration::from_secs(30),
    )
    .await?;
    let started = Instant::now();
    // timed from the first message, as the speed layer is
    let mut first: Option<(Instant, Option<CpuTime>)> = None;
    let mut seen = 0;
    while seen < events {
        let n = baseline
            .next_batch(10_000, Duration::from_millis(50))
            .await?
            .len();
        if n > 0 && first.is_none() {
            first = Some((Instant::now(), CpuTime::now()));
        }
        seen += n;
        if started.elapsed() > Duration::from_secs(600) {
            bail!("baseline consumer stalled at {seen} of {events}");
        }
    }
    let (t, cpu) = first.unwrap_or((started, None));
    let elapsed = t.elapsed();
    Ok(Consumed {
        elapsed,
        cores: cpu.and_then(|c| c.cores_since(elapsed)),
    })
}

/// How long a consume-and-discard read took, and the cores the process used meanwhile.
pub(crate) struct Consumed {
    /// From the first message to the last.
    pub elapsed: Duration,
    /// The cores used over `elapsed`.
    pub cores: Option<Cores>,
}

/// CPU time (user + system, seconds) used so far (Linux): by the whole process, and by the
/// thread of the in-process mock broker (librdkafka's mock cluster, `rdk:mock`), which
/// serves every fetch of the benchmark's embedded broker.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CpuTime {
    process: f64,
    broker: f64,
}

/// Cores used over a span (2.0: both cores of a 2-core machine).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Cores {
    /// By the whole process.
    pub process: f64,
    /// By the mock broker's thread (0 without one).
    pub broker: f64,
}

/// User + system CPU seconds in a `/proc/.../stat` line (USER_HZ: 100 on every Linux this
/// runs on), and the command name it holds.
fn stat_seconds(stat: &str) -> Option<(&str, f64)> {
    // the command name is in parentheses and may hold spaces
    let (head, rest) = stat.rsplit_once(')')?;
    let comm = head.split_once('(')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some((comm, ticks / 100.0))
}

impl CpuTime {
    /// The CPU time used so far; `None` where `/proc` cannot be read.
    pub(crate) fn now() -> Option<CpuTime> {
        let process = stat_seconds(&std::fs::read_to_string("/proc/self/stat").ok()?)?.1;
        let mut broker = 0.0;
        for task in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
            // a thread that ended meanwhile is skipped
            if let Ok(stat) = std::fs::read_to_string(task.path().join("stat"))
                && let Some((comm, secs)) = stat_seconds(&stat)
                && comm.starts_with("rdk:mock")
            {
                broker += secs;
            }
        }
        Some(CpuTime { process, broker })
    }

    /// The cores used from this reading to now, over `elapsed`.
    pub(crate) fn cores_since(self, elapsed: Duration) -> Option<Cores> {
        let now = CpuTime::now()?;
        let secs = elapsed.as_secs_f64().max(1e-9);
        Some(Cores {
            process: (now.process - self.process) / secs,
            // the broker's thread may have ended (a broker stopped meanwhile): never below 0
            broker: ((now.broker - self.broker) / secs).max(0.0),
        })
    }
}

/// Waits until a speed layer has read its first message (joining its group is not part of
/// its throughput).
pub(crate) async fn first_message(counters: &Arc<duet_speed::SpeedCounters>) -> Result<Duration> {
    wait_for(
        "the first message",
        Duration::from_secs(120),
        Duration::from_millis(1),
        || {
            let c = counters.clone();
            async move { Ok(c.consumed.load(std::sync::atomic::Ordering::Relaxed) > 0) }
        },
    )
    .await
}

pub(crate) async fn wait_for<F, Fut>(
    what: &str,
    limit: Duration,
    poll: Duration,
    mut done: F,
) -> Result<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool>>,
{
    let start = Instant::now();
    while !done().await? {
        if start.elapsed() > limit {
            bail!("{what} did not finish within {limit:?}");
        }
        tokio::time::sleep(poll).await;
    }
    Ok(start.elapsed())
}

async fn http_get(addr: std::net::SocketAddr, path: &str) -> Result<u16> {
    Ok(http_exchange(addr, path).await?.0)
}

/// The body of a 200 answer to `GET path` (an error for any other status).
pub(crate) async fn http_body(addr: std::net::SocketAddr, path: &str) -> Result<String> {
    let (code, body) = http_exchange(addr, path).await?;
    if code != 200 {
        bail!("GET {path} answered {code}: {body}");
    }
    Ok(body)
}

/// `GET path` over one HTTP/1.1 connection: the status and the body.
async fn http_exchange(addr: std::net::SocketAddr, path: &str) -> Result<(u16, String)> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await?;
    let text = String::from_utf8_lossy(&buf).to_string();
    let code = text
        .get(9..12)
        .and_then(|c| c.parse().ok())
        .context("malformed HTTP response")?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((code, body))
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

async fn latencies(addr: std::net::SocketAddr, path: &str, n: usize) -> Result<Vec<Duration>> {
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let code = http_get(addr, path).await?;
        if code != 200 {
            bail!("GET {path} answered {code}");
        }
        v.push(t.elapsed());
    }
    v.sort();
    Ok(v)
}

/// Runs the benchmark and returns the report.
pub async fn run(base: &Config, opts: &BenchOptions) -> Result<String> {
    let events = opts.events.clamp(1_000, MAX_EVENTS);
    std::fs::create_dir_all(&opts.dir)?;
    let mut cfg = base.clone();
    cfg.kafka.bootstrap_servers = None;
    cfg.kafka.partitions = 4;
    cfg.lake.url = opts.dir.join("lake").to_string_lossy().into_owned();
    cfg.store.path = opts.dir.join("store.redb").to_string_lossy().into_owned();
    cfg.serving.bind = "127.0.0.1:0".into();
    cfg.lake.flush_records = 10_000;
    cfg.lake_flush_ms = 500;
    cfg.speed.batch_max = 2_000;
    cfg.speed_batch_ms = 20;
    let cfg = Arc::new(cfg);
    let topics: Vec<String> = cfg.sources.iter().map(|s| s.topic.clone()).collect();
    let kafka = EmbeddedKafka::start(&topics, cfg.kafka.partitions)?;
    let bootstrap = kafka.bootstrap();

    // produce
    let msgs = generate(&cfg, 5_000, events, T0, 20)?;
    let bytes: usize = msgs.iter().map(|m| m.2.len()).sum();
    let producer = crate::producer::producer(&cfg.kafka, &bootstrap)?;
    let t = Instant::now();
    let end = produce_all(&producer, &msgs).await?;
    let produce = t.elapsed();

    // baseline: consume and discard
    let consume = consume_all(&cfg, &bootstrap, "bench-baseline", &topics, events)
        .await?
        .elapsed;

    // CPU share: decode and fold in memory
    let t = Instant::now();
    let mut rows = 0usize;
    for (topic, _, bytes) in &msgs {
        for s in cfg.sources.iter().filter(|s| &s.topic == topic) {
            if let Ok(ev) = s.decode(bytes) {
                for v in cfg.views.iter().filter(|v| v.source == s.name) {
                    rows += v.contributions(&ev).len();
                }
            }
        }
    }
    let fold = t.elapsed();

    // speed layer, end to end (Kafka → store commits)
    let store = Arc::new(EmbeddedStore::open(std::path::Path::new(&cfg.store.path))?);
    let (stop, rx) = watch::channel(false);
    let counters = Arc::new(duet_speed::SpeedCounters::default());
    let speed = tokio::spawn(crate::app::speed(
        cfg.clone(),
        bootstrap.clone(),
        store.clone(),
        counters.clone(),
        crate::app::no_seals(),
        rx.clone(),
    ));
    // timed from the first message: joining the consumer group is not throughput
    first_message(&counters).await?;
    let t = Instant::now();
    let group = duet_speed::group(&cfg);
    wait_for(
        "the speed layer",
        Duration::from_secs(600),
        Duration::from_millis(5),
        || {
            let (store, end, group) = (store.clone(), end.clone(), group.clone());
            async move {
                for ((topic, p), o) in &end {
                    if store.offsets(&group, topic).await?.get(p) != Some(o) {
                        return Ok(false);
                    }
                }
                Ok(true)
            }
        },
    )
    .await?;
    let speed_time = t.elapsed();

    // lake sink
    let lake = Lake::open(&cfg.lake.url)?;
    let want: HashMap<String, u64> = cfg
        .sources
        .iter()
        .map(|s| {
            (
                s.name.clone(),
                msgs.iter()
                    .filter(|m| m.0 == s.topic && s.decode(&m.2).is_ok())
                    .count() as u64,
            )
        })
        .collect();
    let t = Instant::now();
    let sink = tokio::spawn(crate::app::lake_sink(
        cfg.clone(),
        bootstrap.clone(),
        lake.clone(),
        rx.clone(),
    ));
    wait_for(
        "the lake sink",
        Duration::from_secs(600),
        Duration::from_millis(100),
        || {
            let (lake, want) = (lake.clone(), want.clone());
            async move {
                for (s, n) in &want {
                    if duet_lake::raw::raw_count(&lake, s).await? != *n {
                        return Ok(false);
                    }
                }
                Ok(true)
            }
        },
    )
    .await?;
    let sink_time = t.elapsed();

    // batch: recompute every view over all the data
    let (from, to) = (T0 - 3_600_000, T0 + events as i64 * 20 + 7_200_000);
    let mut batch = Vec::new();
    for v in &cfg.views {
        let t = Instant::now();
        let r = duet_batch::recompute(&lake, &cfg, v, from, to, T0).await?;
        batch.push((v.name.clone(), r.rows, t.elapsed()));
    }

    // serving latency
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let state = duet_serving::AppState {
        cfg: cfg.clone(),
        lake: Arc::new(duet_serving::query::LakeReaders::new(&lake, &cfg)),
        store: store.clone(),
        counters: counters.clone(),
        parts: Arc::default(),
        checks: Arc::default(),
        metrics: Arc::default(),
    };
    let serving = tokio::spawn(duet_serving::serve(listener, state, None, rx.clone()));
    let q = opts.queries.max(10);
    let health = latencies(addr, "/health", q).await?;
    let range = format!("from={from}&to={to}");
    let merged = latencies(addr, &format!("/v1/views/gmv_per_minute?{range}"), q).await?;
    let top = latencies(addr, &format!("/v1/views/behavior_per_minute?{range}"), q).await?;

    let _ = stop.send(true);
    let _ = speed.await;
    let _ = sink.await;
    let _ = serving.await;
    drop(producer);
    drop(kafka);
    let steady = steady_state(&cfg, opts, q).await?;
    let growth = store_growth(&cfg, opts).await?;
    let rss = peak_rss_mib();
    let _ = std::fs::remove_dir_all(&opts.dir);

    let per_s = |n: usize, d: Duration| n as f64 / d.as_secs_f64();
    let base_rate = per_s(events, consume);
    let mut r = String::new();
    writeln!(r, "# Duet benchmark\n")?;
    writeln!(r, "- Machine: {}", machine())?;
    writeln!(
        r,
        "- Workload: {events} seed-shaped events ({:.1} MB of JSON, avg {} B), reference config, embedded Kafka (4 partitions per topic)",
        bytes as f64 / 1e6,
        bytes / events
    )?;
    writeln!(
        r,
        "- Peak RSS of the whole process: {}\n",
        rss.map_or("unknown".into(), |m| format!("{m:.0} MiB"))
    )?;
    writeln!(r, "## Throughput\n")?;
    writeln!(r, "| stage | events/s | vs. baseline |")?;
    writeln!(r, "|---|---:|---:|")?;
    writeln!(
        r,
        "| baseline: consume and discard (same broker, same process) | {base_rate:.0} | 1.00 |"
    )?;
    writeln!(
        r,
        "| produce (idempotent, lz4, acks) | {:.0} | {:.2} |",
        per_s(events, produce),
        per_s(events, produce) / base_rate
    )?;
    writeln!(
        r,
        "| decode + fold into {rows} view rows, in memory (no I/O) | {:.0} | {:.2} |",
        per_s(events, fold),
        per_s(events, fold) / base_rate
    )?;
    writeln!(
        r,
        "| speed layer end to end (Kafka → decode → dedup → fold → redb commit) | {:.0} | {:.2} |",
        per_s(events, speed_time),
        per_s(events, speed_time) / base_rate
    )?;
    writeln!(
        r,
        "| lake sink (Kafka → Delta commits, flush {} records / {} ms) | {:.0} | {:.2} |",
        cfg.lake.flush_records,
        cfg.lake_flush_ms,
        per_s(events, sink_time),
        per_s(events, sink_time) / base_rate
    )?;
    writeln!(
        r,
        "\n## Batch recompute of all the data (Polars plan → Delta commit → seal)\n"
    )?;
    writeln!(r, "| view | rows written | seconds | raw events/s |")?;
    writeln!(r, "|---|---:|---:|---:|")?;
    for (v, rows, d) in &batch {
        writeln!(
            r,
            "| {v} | {rows} | {:.3} | {:.0} |",
            d.as_secs_f64(),
            per_s(events, *d)
        )?;
    }
    writeln!(
        r,
        "\n## Query latency ({q} sequential requests each, new connection per request)\n"
    )?;
    writeln!(r, "| endpoint | p50 ms | p99 ms | p50 vs. /health |")?;
    writeln!(r, "|---|---:|---:|---:|")?;
    for (name, l) in [
        ("/health (baseline)", &health),
        ("gmv_per_minute, all sealed", &merged),
        ("behavior_per_minute, all sealed, 2 dims", &top),
    ] {
        writeln!(
            r,
            "| {name} | {:.2} | {:.2} | {:.1} |",
            percentile(l, 0.5),
            percentile(l, 0.99),
            percentile(l, 0.5) / percentile(&health, 0.5)
        )?;
    }
    writeln!(
        r,
        "\n## Steady state: a fresh lake, then after {} minutely seals\n",
        steady.seals
    )?;
    writeln!(
        r,
        "Seed-shaped orders ({} events, about a day) in the raw table; the first 4 hours of \
         `gmv_per_minute` sealed at once (the fresh lake), then {} more minutes sealed one at a \
         time as the scheduler does (ledger compaction included). The same 4-hour query ({q} \
         sequential requests, 240 sealed rows) and nine one-minute seals, measured on the fresh \
         lake and after the seals.\n",
        steady.events, steady.seals
    )?;
    writeln!(
        r,
        "| figure | fresh lake | after the seals | after / fresh |"
    )?;
    writeln!(r, "|---|---:|---:|---:|")?;
    for (name, a, b) in [
        ("query p50, ms", steady.fresh.p50, steady.aged.p50),
        ("query p99, ms", steady.fresh.p99, steady.aged.p99),
        (
            "seal of one minute, ms (median of 9)",
            steady.fresh.seal_ms,
            steady.aged.seal_ms,
        ),
        (
            "files in the view's and the ledger's _delta_log",
            steady.fresh.ledger_files as f64,
            steady.aged.ledger_files as f64,
        ),
    ] {
        writeln!(
            r,
            "| {name} | {a:.2} | {b:.2} | {:.2} |",
            b / a.max(f64::MIN_POSITIVE)
        )?;
    }
    writeln!(
        r,
        "\n{} seals took {:.1} s in all ({:.1} ms each on average).",
        steady.seals,
        steady.all_seals.as_secs_f64(),
        steady.all_seals.as_secs_f64() * 1000.0 / steady.seals.max(1) as f64
    )?;
    writeln!(
        r,
        "\n## Dedup state over {} simulated days\n",
        growth.days.len()
    )?;
    writeln!(
        r,
        "{} events through the speed layer's aggregator and embedded store ({:.0} events/s), \
         views sealed a minute behind the newest event as the scheduler would; the store's \
         size and the ids it keeps at the end of each day, beside the first day's.\n",
        growth.events, growth.rate
    )?;
    writeln!(
        r,
        "| day | events so far | seen ids kept | store size MiB | size vs. day 1 |"
    )?;
    writeln!(r, "|---:|---:|---:|---:|---:|")?;
    let first = growth.days.first().map_or(1, |d| d.bytes.max(1));
    for (i, d) in growth.days.iter().enumerate() {
        writeln!(
            r,
            "| {} | {} | {} | {:.1} | {:.2} |",
            i + 1,
            d.events,
            d.seen_ids,
            d.bytes as f64 / 1_048_576.0,
            d.bytes as f64 / first as f64
        )?;
    }
    Ok(r)
}

/// Query latency and seal time at one point of the steady-state section.
#[derive(Debug, Clone, Copy)]
struct Point {
    p50: f64,
    p99: f64,
    seal_ms: f64,
    ledger_files: usize,
}

/// The steady-state section's figures.
#[derive(Debug, Clone)]
struct Steady {
    events: usize,
    seals: usize,
    fresh: Point,
    aged: Point,
    all_seals: Duration,
}

/// Fills a raw table with a day of orders and seals the first four hours of `gmv_per_minute`
/// at once; then measures the 4-hour query and the seal of the next minute on that fresh lake,
/// seals `opts.seals` more minutes one at a time (with the scheduler's ledger compaction), and
/// measures the same query and another one-minute seal again.
async fn steady_state(base: &Arc<Config>, opts: &BenchOptions, queries: usize) -> Result<Steady> {
    let dir = opts.dir.join("steady");
    let mut cfg = (**base).clone();
    cfg.lake.url = dir.join("lake").to_string_lossy().into_owned();
    let cfg = Arc::new(cfg);
    let lake = Lake::open(&cfg.lake.url)?;
    let orders = cfg
        .source("orders")
        .context("the reference config has orders")?;
    let view = cfg
        .view("gmv_per_minute")
        .context("the reference config has gmv_per_minute")?;
    let hours = 4;
    let minutes = hours * 60 + opts.seals as i64 + 20;
    // orders (about 40 a minute), written as the lake sink would, a commit per minute
    let mut g = Generator::new(11, 2_000);
    let mut w = duet_lake::RawWriter::open(&lake, orders, "bench").await?;
    let mut offset = 0;
    let mut events = 0;
    for m in 0..minutes {
        let mut records = Vec::new();
        for i in 0..200 {
            let e = g.next(T0 + m * 60_000 + i * 300);
            if e.source != "orders" {
                continue;
            }
            if let Ok(event) = orders.decode(&e.payload()) {
                records.push(duet_lake::RawRecord {
                    event,
                    partition: 0,
                    offset,
                    payload: String::new(),
                });
                offset += 1;
            }
        }
        events += records.len();
        w.append(&records, Some(T0 + (m + 1) * 60_000)).await?;
    }
    crate::scheduler::compact_closed_hours(&cfg, &lake, i64::MAX).await;
    let store = Arc::new(EmbeddedStore::open(&dir.join("store.redb"))?);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop, rx) = watch::channel(false);
    let state = duet_serving::AppState {
        cfg: cfg.clone(),
        lake: Arc::new(duet_serving::query::LakeReaders::new(&lake, &cfg)),
        store,
        counters: Arc::default(),
        parts: Arc::default(),
        checks: Arc::default(),
        metrics: Arc::default(),
    };
    let serving = tokio::spawn(duet_serving::serve(listener, state, None, rx));
    let end = T0 + hours * 3_600_000;
    let query = format!("/v1/views/gmv_per_minute?from={T0}&to={end}");
    let ledger = duet_lake::SealLedger::new(&lake);
    let seal = async |from: i64, to: i64| -> Result<f64> {
        let t = Instant::now();
        let range = duet_lake::Interval::new(from, to);
        duet_batch::recompute_ranges(&lake, &cfg, view, &[range], T0).await?;
        ledger.compact().await?;
        Ok(t.elapsed().as_secs_f64() * 1000.0)
    };
    let log_files = || -> usize {
        [
            "lake/views/gmv_per_minute/_delta_log",
            "lake/ledger/entries/_delta_log",
        ]
        .iter()
        .map(|d| std::fs::read_dir(dir.join(d)).map_or(0, |r| r.count()))
        .sum()
    };
    // the median of nine one-minute seals, then the query
    let measure = async |minute: i64| -> Result<Point> {
        let mut times = Vec::new();
        for m in minute..minute + 9 {
            let from = end + m * 60_000;
            times.push(seal(from, from + 60_000).await?);
        }
        times.sort_by(f64::total_cmp);
        let seal_ms = times[times.len() / 2];
        let l = latencies(addr, &query, queries).await?;
        Ok(Point {
            p50: percentile(&l, 0.5),
            p99: percentile(&l, 0.99),
            seal_ms,
            ledger_files: log_files(),
        })
    };
    seal(T0, end).await?;
    let fresh = measure(0).await?;
    let t = Instant::now();
    for m in 9..9 + opts.seals as i64 {
        let from = end + m * 60_000;
        seal(from, from + 60_000).await?;
    }
    let all_seals = t.elapsed();
    let aged = measure(9 + opts.seals as i64).await?;
    let _ = stop.send(true);
    let _ = serving.await;
    Ok(Steady {
        events,
        seals: opts.seals,
        fresh,
        aged,
        all_seals,
    })
}

/// The store at the end of one simulated day.
#[derive(Debug, Clone, Copy)]
struct Day {
    events: usize,
    seen_ids: u64,
    bytes: u64,
}

/// The dedup-state section's figures.
#[derive(Debug, Clone)]
struct Growth {
    events: usize,
    rate: f64,
    days: Vec<Day>,
}

/// Runs `opts.store_events` generated events, spread over `opts.store_days` simulated days,
/// through the speed layer's aggregator and embedded store, the views sealed a minute behind
/// the newest event; the store's size and seen ids at the end of each day.
async fn store_growth(base: &Arc<Config>, opts: &BenchOptions) -> Result<Growth> {
    use duet_speed::kafka::Msg;
    let dir = opts.dir.join("growth");
    std::fs::create_dir_all(&dir)?;
    let store = EmbeddedStore::open(&dir.join("store.redb"))?;
    duet_speed::store::check_definitions(&store, &base.views).await?;
    let agg = duet_speed::Aggregator::new(base, "bench");
    let days = opts.store_days.max(1);
    let span = days as i64 * 86_400_000;
    let step = (span / opts.store_events.max(1) as i64).max(1);
    let mut g = Generator::new(3, 50_000);
    let batch = 2_000;
    let mut out = Vec::new();
    let mut offsets: HashMap<String, i64> = HashMap::new();
    let t = Instant::now();
    let mut done = 0;
    let mut day_end = T0 + 86_400_000;
    while done < opts.store_events {
        let n = batch.min(opts.store_events - done);
        let mut msgs = Vec::with_capacity(n);
        let mut newest = T0;
        for i in 0..n {
            let at = T0 + (done + i) as i64 * step;
            newest = at;
            let e = g.next(at);
            let topic = base
                .source(e.source)
                .map(|s| s.topic.clone())
                .context("generator source")?;
            let o = offsets.entry(topic.clone()).or_insert(0);
            *o += 1;
            msgs.push(Msg {
                topic: topic.into(),
                partition: 0,
                offset: *o - 1,
                payload: e.payload(),
                timestamp_ms: Some(at),
            });
        }
        // the scheduler seals every view up to a minute behind the newest event
        let sealed: std::collections::BTreeMap<String, i64> = base
            .views
            .iter()
            .map(|v| (v.name.clone(), v.bucket_of(newest - 60_000)))
            .collect();
        let (b, _) = agg.build(&msgs, &store, newest, &sealed).await?;
        store.commit(b).await?;
        done += n;
        if newest >= day_end || done >= opts.store_events {
            let st = store.stats().await?;
            out.push(Day {
                events: done,
                seen_ids: st.seen_ids,
                bytes: st.bytes,
            });
            day_end += 86_400_000;
        }
    }
    Ok(Growth {
        events: done,
        rate: done as f64 / t.elapsed().as_secs_f64(),
        days: out,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stat_line_is_read_past_its_command_name() {
        // a thread name may hold spaces and parentheses; utime and stime are the 14th and
        // 15th fields, in ticks of 1/100 s
        let line = "4242 (rdk:mock (1) x) S 1 2 3 4 5 6 7 8 9 10 250 75 0 0 20 0 9 0";
        let (comm, secs) = stat_seconds(line).expect("a stat line");
        assert_eq!(comm, "rdk:mock (1) x");
        assert!((secs - 3.25).abs() < 1e-9, "{secs}");
        assert!(stat_seconds("4242 rdk:mock S 1").is_none());
        assert!(stat_seconds("4242 (x) S 1 2").is_none());
    }

    #[test]
    fn this_process_reads_its_own_cpu_time() {
        // the process's own stat line parses (its threads' lines are read where they can be)
        let t = CpuTime::now().expect("/proc on Linux");
        assert!(t.process >= 0.0 && t.broker >= 0.0);
    }
}
