//! `duet bench serving`: query latency and throughput of the serving layer on loopback, with
//! `wrk` (Debian) for HTTP and psycopg for the PostgreSQL port, beside `redis-benchmark` GET
//! on a `redis-server` of the same machine in the same run (the floor: one key read over one
//! round trip); a Markdown report.
//!
//! The deployment: the reference config, with a day of seed-shaped events (the generator's,
//! 100 000 over 24 hours) applied by the real speed aggregator to an embedded store, so that
//! `gmv_per_minute` holds 1 440 minute buckets. The lake is empty: every bucket is served
//! from the speed store, and the ledger and view table are still read on every query.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use duet_config::Config;
use duet_config::time::iso;
use duet_lake::Lake;
use duet_speed::kafka::Msg;
use duet_speed::store::LocalRedis;
use duet_speed::{Aggregator, EmbeddedStore, ViewStore};
use tokio::sync::watch;

use crate::bench::{generate, machine};

/// Start of the benchmark's day: 2026-11-01T00:00:00Z.
const DAY0: i64 = 1_793_491_200_000;
const DAY_MS: i64 = 86_400_000;

/// Options of `duet bench serving`.
#[derive(Debug, Clone)]
pub struct ServingBenchOptions {
    /// Seconds each `wrk` run lasts.
    pub seconds: u64,
    /// Open connections of each `wrk` run.
    pub connections: u32,
    /// Queries of each single-client run (HTTP and PostgreSQL).
    pub queries: usize,
    /// Scratch folder (removed afterwards).
    pub dir: PathBuf,
}

/// Requests per second and latency percentiles of one run.
#[derive(Debug, Clone, Copy)]
struct Load {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
}

/// A `wrk` latency such as `635.00us`, `2.31ms` or `1.02s`, in ms.
fn wrk_ms(text: &str) -> Option<f64> {
    let t = text.trim();
    let (num, factor) = if let Some(n) = t.strip_suffix("us") {
        (n, 0.001)
    } else if let Some(n) = t.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1000.0)
    } else {
        return None;
    };
    num.parse::<f64>().ok().map(|n| n * factor)
}

/// Reads `wrk --latency` output: requests/s and the 50 % and 99 % latencies.
fn parse_wrk(out: &str) -> Option<Load> {
    let mut p50 = None;
    let mut p99 = None;
    let mut rps = None;
    for line in out.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["50%", v] => p50 = wrk_ms(v),
            ["99%", v] => p99 = wrk_ms(v),
            ["Requests/sec:", v] => rps = v.parse().ok(),
            _ => {}
        }
    }
    Some(Load {
        rps: rps?,
        p50_ms: p50?,
        p99_ms: p99?,
    })
}

/// `wrk` against `url` for `seconds` over `connections` connections (2 threads).
fn wrk(url: &str, seconds: u64, connections: u32) -> Result<(Load, u64)> {
    let out = Command::new("wrk")
        .args(["-t2", "--latency"])
        .arg(format!("-c{connections}"))
        .arg(format!("-d{seconds}s"))
        .arg(url)
        .output()
        .context("run wrk (Debian's wrk: ./scripts/setup.sh installs it)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!("wrk failed: {text}{}", String::from_utf8_lossy(&out.stderr));
    }
    // non-2xx answers would make the figures meaningless
    if let Some(line) = text.lines().find(|l| l.contains("Non-2xx")) {
        bail!("wrk saw errors for {url}: {line}");
    }
    let requests = text
        .lines()
        .find_map(|l| l.trim().split_once(" requests in "))
        .and_then(|(n, _)| n.trim().parse().ok())
        .unwrap_or(0);
    Ok((parse_wrk(&text).context("read wrk's output")?, requests))
}

/// `redis-benchmark` GET against `port`: requests/s, p50, p99.
fn redis_get(port: u16, connections: u32) -> Result<Load> {
    let out = Command::new("redis-benchmark")
        .args(["-h", "127.0.0.1", "-t", "get", "-n", "200000", "--csv"])
        .arg("-p")
        .arg(port.to_string())
        .arg("-c")
        .arg(connections.to_string())
        .output()
        .context("run redis-benchmark (Debian's redis-tools)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    // "test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms","max_latency_ms"
    let line = text
        .lines()
        .find(|l| l.starts_with("\"GET\""))
        .with_context(|| format!("redis-benchmark printed no GET line: {text}"))?;
    let f: Vec<f64> = line
        .split(',')
        .skip(1)
        .filter_map(|v| v.trim_matches('"').parse().ok())
        .collect();
    match f.as_slice() {
        [rps, _avg, _min, p50, _p95, p99, ..] => Ok(Load {
            rps: *rps,
            p50_ms: *p50,
            p99_ms: *p99,
        }),
        _ => bail!("unexpected redis-benchmark output: {line}"),
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// `queries` executions of `sql` over psycopg (one connection, one at a time): their
/// latencies in ms and the rows of the last answer.
fn psycopg(port: u16, sql: &str, queries: usize) -> Result<(Vec<f64>, u64)> {
    let python = std::env::var("DUET_PYTHON").unwrap_or_else(|_| {
        format!(
            "{}/.cache/duet-venv/bin/python",
            std::env::var("HOME").unwrap_or_default()
        )
    });
    let script = r#"
import json, sys, time
import psycopg
port, n, sql = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
with psycopg.connect(host="127.0.0.1", port=port, dbname="duet", user="duet", autocommit=True) as c:
    cur = c.cursor()
    cur.execute(sql); cur.fetchall()  # warm up
    ms = []
    for _ in range(n):
        t = time.perf_counter(); cur.execute(sql); rows = cur.fetchall(); ms.append((time.perf_counter() - t) * 1000)
print(json.dumps({"ms": ms, "rows": len(rows)}))
"#;
    let out = Command::new(&python)
        .arg("-c")
        .arg(script)
        .arg(port.to_string())
        .arg(queries.to_string())
        .arg(sql)
        .output()
        .with_context(|| format!("run {python} with psycopg (./scripts/setup.sh installs it)"))?;
    if !out.status.success() {
        bail!("psycopg: {}", String::from_utf8_lossy(&out.stderr));
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let mut ms: Vec<f64> = v["ms"]
        .as_array()
        .context("latencies")?
        .iter()
        .filter_map(serde_json::Value::as_f64)
        .collect();
    ms.sort_by(f64::total_cmp);
    Ok((ms, v["rows"].as_u64().unwrap_or(0)))
}

/// Fills `store` with a day of generated events through the real aggregator.
async fn fill(cfg: &Config, store: &EmbeddedStore) -> Result<u64> {
    let events = 100_000usize;
    let msgs = generate(cfg, 20_000, events, DAY0, DAY_MS / events as i64)?;
    let agg = Aggregator::new(cfg, "bench");
    let mut offsets: HashMap<String, i64> = HashMap::new();
    let mut applied = 0;
    for chunk in msgs.chunks(5_000) {
        let batch: Vec<Msg> = chunk
            .iter()
            .map(|(topic, _, bytes)| {
                let o = offsets.entry(topic.clone()).or_insert(0);
                *o += 1;
                Msg {
                    topic: topic.as_str().into(),
                    partition: 0,
                    offset: *o - 1,
                    payload: bytes.clone(),
                    timestamp_ms: Some(DAY0 + DAY_MS),
                }
            })
            .collect();
        let (b, stats) = agg
            .build(&batch, store, DAY0 + DAY_MS, &Default::default())
            .await?;
        applied += stats.applied;
        store.commit(b).await?;
    }
    Ok(applied)
}

/// Runs the benchmark; returns the report.
pub async fn run(base: &Config, opts: &ServingBenchOptions) -> Result<String> {
    std::fs::create_dir_all(&opts.dir)?;
    let result = run_in(base, opts).await;
    let _ = std::fs::remove_dir_all(&opts.dir);
    result
}

async fn run_in(base: &Config, opts: &ServingBenchOptions) -> Result<String> {
    let mut cfg = base.clone();
    cfg.lake.url = opts.dir.join("lake").to_string_lossy().into_owned();
    let cfg = Arc::new(cfg);
    let lake = Lake::open(&cfg.lake.url)?;
    let store = Arc::new(EmbeddedStore::open(&opts.dir.join("store.redb"))?);
    duet_speed::store::check_definitions(store.as_ref(), &cfg.views).await?;
    let applied = fill(&cfg, &store).await?;

    let (stop, rx) = watch::channel(false);
    let state = duet_serving::AppState {
        cfg: cfg.clone(),
        lake: Arc::new(duet_serving::query::LakeReaders::new(&lake, &cfg)),
        store: store.clone(),
        counters: Arc::default(),
        parts: Arc::default(),
        checks: Arc::default(),
        metrics: Arc::default(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let http = listener.local_addr()?;
    let serving = tokio::spawn(duet_serving::serve(listener, state, None, rx.clone()));
    let ctx = duet_serving::pg::session(
        &cfg.views,
        Arc::new(duet_serving::query::LakeReaders::new(&lake, &cfg)),
        store.clone() as Arc<dyn ViewStore>,
    )?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let pg = listener.local_addr()?.port();
    let sql = tokio::spawn(duet_serving::pg::serve(
        listener,
        ctx,
        Default::default(),
        rx,
    ));

    let day = format!("from={DAY0}&to={}", DAY0 + DAY_MS);
    let one = format!("from={}&to={}", DAY0 + 720 * 60_000, DAY0 + 721 * 60_000);
    let queries = [
        (
            "24 hours of `gmv_per_minute` at its minute grain (1 440 rows)",
            format!("/v1/views/gmv_per_minute?{day}"),
            "< 10 ms",
        ),
        (
            "the same 24 hours rolled up to hours (`grain=1h`, 24 rows)",
            format!("/v1/views/gmv_per_minute?{day}&grain=1h"),
            "",
        ),
        (
            "one minute bucket",
            format!("/v1/views/gmv_per_minute?{one}"),
            "< 2 ms",
        ),
    ];
    // the answers are what the benchmark says they are
    let rows = |path: &str| {
        let path = path.to_string();
        async move {
            let body = crate::bench::http_body(http, &path).await?;
            let v: serde_json::Value = serde_json::from_str(&body)?;
            anyhow::Ok(v["rows"].as_array().map_or(0, Vec::len))
        }
    };
    let counts = [
        rows(&queries[0].1).await?,
        rows(&queries[1].1).await?,
        rows(&queries[2].1).await?,
    ];
    if counts != [1440, 24, 1] {
        bail!("unexpected answers (rows per query {counts:?}): the benchmark's day is not full");
    }

    let redis = LocalRedis::start(&opts.dir.join("redis"))?;
    let redis_port: u16 = redis
        .url()
        .rsplit(':')
        .next()
        .and_then(|p| p.split('/').next())
        .and_then(|p| p.parse().ok())
        .context("redis port")?;
    let floor = redis_get(redis_port, opts.connections)?;

    let mut http_runs = Vec::new();
    for (what, path, target) in &queries {
        let url = format!("http://{http}{path}");
        let (load, requests) = wrk(&url, opts.seconds, opts.connections)?;
        // one client, one request at a time: latency without queueing
        let mut single: Vec<f64> = Vec::with_capacity(opts.queries);
        for _ in 0..opts.queries {
            let t = Instant::now();
            crate::bench::http_body(http, path).await?;
            single.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        single.sort_by(f64::total_cmp);
        http_runs.push((*what, *target, load, requests, single));
    }

    let day_sql = format!(
        "SELECT bucket, gmv, paid_orders, avg_order, max_order FROM gmv_per_minute \
         WHERE bucket >= '{}' AND bucket < '{}' ORDER BY bucket",
        iso(DAY0),
        iso(DAY0 + DAY_MS)
    );
    let (pg_ms, pg_rows) = tokio::task::spawn_blocking({
        let (sql, n) = (day_sql.clone(), opts.queries);
        move || psycopg(pg, &sql, n)
    })
    .await??;
    if pg_rows != 1440 {
        bail!("the PostgreSQL port answered {pg_rows} rows for the day, not 1 440");
    }

    let _ = stop.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(5), serving).await;
    sql.abort();
    drop(redis);

    let mut r = String::new();
    writeln!(r, "# Duet serving benchmark\n")?;
    writeln!(r, "- Machine: {}", machine())?;
    writeln!(
        r,
        "- Data: the reference deployment, {applied} generated events applied over one day by the speed aggregator (embedded store); `gmv_per_minute` holds 1 440 minute buckets, all served from the speed store (the lake is empty, its ledger and view table are still read per query)"
    )?;
    writeln!(
        r,
        "- Load: `wrk -t2 -c{} -d{}s --latency` on loopback; the floor is `redis-benchmark -t get -c{}` against Debian's `redis-server` on the same machine in the same run; single-client figures are {} sequential requests over one connection each (HTTP) or one connection (psycopg)\n",
        opts.connections, opts.seconds, opts.connections, opts.queries
    )?;
    writeln!(r, "## HTTP (`wrk`)\n")?;
    writeln!(
        r,
        "| query | requests/s | vs. Redis GET | p50 ms | p99 ms | single client p50 ms | single client p99 ms | target p99 |"
    )?;
    writeln!(r, "|---|---:|---:|---:|---:|---:|---:|---|")?;
    writeln!(
        r,
        "| Redis GET (the floor) | {:.0} | 1.00 | {:.3} | {:.3} | | | |",
        floor.rps, floor.p50_ms, floor.p99_ms
    )?;
    for (what, target, load, _requests, single) in &http_runs {
        writeln!(
            r,
            "| {what} | {:.0} | {:.3} | {:.2} | {:.2} | {:.2} | {:.2} | {target} |",
            load.rps,
            load.rps / floor.rps,
            load.p50_ms,
            load.p99_ms,
            percentile(single, 0.5),
            percentile(single, 0.99),
        )?;
    }
    writeln!(r, "\n## PostgreSQL port (psycopg)\n")?;
    writeln!(
        r,
        "| query | queries/s (one client) | p50 ms | p99 ms | target p99 |"
    )?;
    writeln!(r, "|---|---:|---:|---:|---|")?;
    let total: f64 = pg_ms.iter().sum();
    writeln!(
        r,
        "| 24 hours of `gmv_per_minute` (1 440 rows), `SELECT … WHERE bucket >= … AND bucket < … ORDER BY bucket` | {:.0} | {:.2} | {:.2} | < 50 ms |",
        pg_ms.len() as f64 / (total / 1000.0),
        percentile(&pg_ms, 0.5),
        percentile(&pg_ms, 0.99),
    )?;
    writeln!(
        r,
        "\nLatencies are measured by the client on loopback and include encoding the answer (JSON for HTTP, the PostgreSQL text format for psycopg) and, for psycopg, Python's decoding of 1 440 rows. `vs. Redis GET` is requests/s over the floor's requests/s: how far a merged, rendered answer is from a single-key read."
    )?;
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrk_output_is_read() {
        let out = "Running 5s test @ http://127.0.0.1:1/\n  2 threads and 8 connections\n  Thread Stats   Avg      Stdev     Max   +/- Stdev\n    Latency   1.10ms  300.00us   5.00ms   90.00%\n  Latency Distribution\n     50%  635.00us\n     75%    1.20ms\n     90%    1.80ms\n     99%    2.31ms\n  12000 requests in 5.00s, 10.00MB read\nRequests/sec:   2400.50\nTransfer/sec:      2.00MB\n";
        let l = parse_wrk(out).unwrap();
        assert_eq!(l.rps, 2400.5);
        assert!((l.p50_ms - 0.635).abs() < 1e-9);
        assert!((l.p99_ms - 2.31).abs() < 1e-9);
        assert_eq!(wrk_ms("1.5s"), Some(1500.0));
        assert_eq!(wrk_ms("nonsense"), None);
    }
}
