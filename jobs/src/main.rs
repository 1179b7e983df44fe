//! `duet`: the Duet command line.

/// mimalloc instead of the system allocator: the speed layer's hot path allocates per event;
/// measured in `docs/benchmarks.md` (speed layer 72 k → 77–90 k events/s, peak RSS −20 %).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use duet_config::Config;
use duet_config::time::iso;
use duet_lake::Lake;

use duet_jobs::REFERENCE_CONFIG as REFERENCE;

/// mimalloc's `mi_option_purge_delay` (mimalloc v3's option number 15, which
/// `libmimalloc-sys` 0.1.49 does not name): how long freed memory waits before it is returned
/// to the OS, in milliseconds, `-1` for never.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Keeps the memory the process frees for reuse instead of returning it to the OS (mimalloc
/// returns it after 1 s by default). The speed layer decodes and folds each batch on fresh
/// threads, whose memory is freed by the commit: returned to the OS, it was faulted in and
/// zeroed again for later batches (about 9 % of the speed run's CPU samples). Measured in
/// `docs/benchmarks.md` (tenth session): about 1.18 times the speed layer's rate. The
/// resident size stays at its high-water mark. `MIMALLOC_PURGE_DELAY` in the environment
/// still decides, when it is set.
fn keep_freed_memory() {
    // SAFETY: sets one of mimalloc's options, which it reads at every purge; any value is
    // valid for this option, and the number is checked by a test against the option's
    // default (1000).
    #[allow(unsafe_code)]
    unsafe {
        libmimalloc_sys::mi_option_set_default(MI_OPTION_PURGE_DELAY, -1);
    }
}

#[derive(Parser)]
#[command(
    name = "duet",
    version,
    about = "Duet: one view declared once, kept by a speed and a batch layer, served merged.",
    after_help = "Every command reads its config from --config FILE, else $DUET_CONFIG, else ./duet.toml \
                  (`duet demo` uses the built-in reference deployment unless --config is given)."
)]
struct Cli {
    /// The config file (default: $DUET_CONFIG, else duet.toml).
    #[arg(long, short, global = true, env = "DUET_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the reference e-commerce deployment on embedded defaults, with generated events.
    ///
    /// Example: duet demo --rate 200 --data ./duet-data --http 127.0.0.1:8080
    Demo {
        /// Events per second produced by the generator.
        #[arg(long, default_value_t = 200)]
        rate: u32,
        /// Folder for the lake and the view store.
        #[arg(long, default_value = "duet-data")]
        data: PathBuf,
        /// Address of the HTTP API.
        #[arg(long)]
        http: Option<String>,
        /// Address of the PostgreSQL port (SQL for BI tools), or `off`.
        #[arg(long, default_value = "127.0.0.1:5433")]
        pg: String,
    },
    /// Run a deployment from its config file (Kafka from [kafka], embedded if absent).
    ///
    /// Example: duet run --config config/examples/ecommerce.toml
    Run {
        /// Also generate seed-shaped events at this rate per second.
        #[arg(long)]
        generate: Option<u32>,
        /// Run only this part in this process (and the HTTP API, for /health and /metrics);
        /// needs [kafka] bootstrap_servers and [store] url, which the processes share.
        #[arg(long, value_enum)]
        only: Option<OnlyPart>,
        /// Address of the HTTP API (default: [serving] bind).
        #[arg(long)]
        http: Option<String>,
        /// Address of the PostgreSQL port (default: [serving] pg_bind), or `off`.
        #[arg(long)]
        pg: Option<String>,
    },
    /// Bearer tokens of the HTTP API.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Config file commands.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Measure every layer on the reference deployment and write a Markdown report.
    ///
    /// Example: cargo run --release --bin duet -- bench --events 50000 --out bench-report.md
    #[command(args_conflicts_with_subcommands = true)]
    Bench {
        /// One layer's benchmark instead of the overall one.
        #[command(subcommand)]
        which: Option<BenchCommand>,
        /// Events to produce (the embedded broker caps this at 60000).
        #[arg(long, default_value_t = 20_000)]
        events: usize,
        /// HTTP requests per measured endpoint.
        #[arg(long, default_value_t = 200)]
        queries: usize,
        /// Where to write the report.
        #[arg(long, default_value = "bench-report.md")]
        out: PathBuf,
        /// Minutely seals for the steady-state figures (1440: a simulated day).
        #[arg(long, default_value_t = 1_440)]
        seals: usize,
        /// Events through the speed store for the dedup-state figures.
        #[arg(long, default_value_t = 1_000_000)]
        store_events: usize,
        /// Simulated days those events span.
        #[arg(long, default_value_t = 4)]
        store_days: usize,
    },
    /// Batch jobs: list them, show how far each view is sealed, or recompute by hand.
    Jobs {
        #[command(subcommand)]
        command: JobsCommand,
    },
    /// Recompute a range of a view from the lake and compare it with what serving answers
    /// and, for open buckets, with the speed store. Exit 0 when all agree, 1 otherwise.
    ///
    /// Buckets that may still receive events are not compared. Works beside a running
    /// deployment (it asks its HTTP API) or without one (it reads the store).
    /// Example: duet verify gmv_per_minute --from 2026-11-25T10:00:00Z --to 2026-11-25T11:00:00Z
    Verify {
        /// The view.
        view: String,
        /// First bucket (RFC 3339 or epoch ms); default: 60 buckets before `--to`.
        #[arg(long)]
        from: Option<String>,
        /// End of the range, exclusive; default: the end of the current bucket.
        #[arg(long)]
        to: Option<String>,
    },
    /// Views: list them with their definitions, or reset one whose definition changed.
    Views {
        #[command(subcommand)]
        command: ViewsCommand,
    },
    /// Malformed events: every one is kept in the lake's `quarantine` table with its reason;
    /// list them, show one, or send them back to their topic.
    Quarantine {
        #[command(subcommand)]
        command: QuarantineCommand,
    },
}

#[derive(Subcommand)]
enum QuarantineCommand {
    /// The quarantined events, newest first: id (topic/partition@offset), time, source, reason.
    List {
        /// Only this source's.
        #[arg(long)]
        source: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// One quarantined event in full, payload included.
    ///
    /// Example: duet quarantine show orders/2@1041
    Show {
        /// topic/partition@offset
        id: String,
    },
    /// Send quarantined events back to their topic, once they decode under the current
    /// config: as they are (after the config was fixed), or one with a corrected payload.
    ///
    /// Example: duet quarantine replay orders/2@1041 --payload fixed.json
    Replay {
        /// The events (topic/partition@offset); with --all, every one (of --source).
        ids: Vec<String>,
        /// Every quarantined event (of --source, if given).
        #[arg(long)]
        all: bool,
        /// With --all: only this source's.
        #[arg(long)]
        source: Option<String>,
        /// A file with the corrected message bytes (one event).
        #[arg(long)]
        payload: Option<PathBuf>,
        /// Kafka to send to (default: [kafka] bootstrap_servers).
        #[arg(long)]
        bootstrap: Option<String>,
        /// Check and report, send nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate a config file; print every problem and exit 2 if there are any.
    ///
    /// Example: duet config check config/examples/ecommerce.toml
    Check {
        /// The config file (default: --config, $DUET_CONFIG, duet.toml).
        file: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum JobsCommand {
    /// List the scheduled jobs and the views they seal.
    List,
    /// Show, per view, how far it is sealed, its gaps and dirty buckets, its batch version.
    ///
    /// Example: duet jobs status -c duet.toml
    Status,
    /// Recompute a view's buckets from the lake and seal them.
    ///
    /// Without --from/--to it recomputes what is due (like the scheduler).
    /// Example: duet jobs run gmv_per_minute --from 2026-11-25T10:00:00Z --to 2026-11-25T11:00:00Z -c duet.toml
    Run {
        /// The view.
        view: String,
        /// First bucket (RFC 3339 or epoch ms).
        #[arg(long)]
        from: Option<String>,
        /// End of the range, exclusive (RFC 3339 or epoch ms).
        #[arg(long)]
        to: Option<String>,
        /// Seal buckets that may still receive events (ended less than [batch] lateness
        /// before the clock or the lake's watermark).
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand)]
enum ViewsCommand {
    /// List the views with their definition fingerprints.
    List,
    /// Drop a view's state (speed store, batch table, seals) and rebuild it from the lake.
    ///
    /// Needed after a change to what defines the view (source, filter, time, bucket,
    /// dimensions, measures). Stop the deployment first: the embedded store is one process's.
    /// Example: duet views reset gmv_per_minute -c duet.toml
    Reset {
        /// The view.
        view: String,
    },
}

/// The config file a command reads: --config, $DUET_CONFIG (clap reads it into --config),
/// else `duet.toml`.
fn config_path(cli_config: &Option<PathBuf>) -> PathBuf {
    cli_config
        .clone()
        .unwrap_or_else(|| PathBuf::from("duet.toml"))
}

/// Loads the config of a command, saying how to name another file when it is missing.
fn load_config(path: &std::path::Path) -> Result<Config> {
    Config::load_with_env(path, std::env::vars()).map_err(|e| {
        let missing = matches!(&e, duet_config::Error::Read { source, .. } if source.kind() == std::io::ErrorKind::NotFound);
        let e = anyhow::Error::new(e);
        if missing {
            e.context("no config file (pass --config FILE or set DUET_CONFIG)")
        } else {
            e
        }
    })
}

/// The error and its causes on one line, each cause once (a message that already ends with
/// its cause's text does not repeat it).
fn chain(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.ends_with(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

fn parse_time(v: &str) -> Result<i64> {
    if let Ok(ms) = v.parse::<i64>() {
        return Ok(ms);
    }
    Ok(chrono::DateTime::parse_from_rfc3339(v)
        .with_context(|| format!("expected epoch milliseconds or RFC 3339, found {v:?}"))?
        .timestamp_millis())
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("DUET_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(
            "info,buoyant_kernel=warn,deltalake=warn,deltalake_core=warn",
        )
    });
    // the same time format as the API and the CLI: RFC 3339, UTC, milliseconds
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_timer(tracing_subscriber::fmt::time::ChronoUtc::new(
            "%Y-%m-%dT%H:%M:%S%.3fZ".into(),
        ))
        .with_writer(std::io::stderr)
        .init();
}

#[tokio::main]
#[allow(clippy::print_stderr)]
async fn main() -> ExitCode {
    keep_freed_memory();
    let cli = Cli::parse();
    init_logging();
    match run(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", chain(&e));
            ExitCode::from(1)
        }
    }
}

#[allow(clippy::print_stdout)]
async fn run(cli: Cli) -> Result<ExitCode> {
    let config = config_path(&cli.config);
    match cli.command {
        Command::Token {
            command:
                TokenCommand::New {
                    name,
                    views,
                    rate,
                    pg,
                },
        } => {
            use rand::Rng as _;
            let hex = |b: &[u8]| b.iter().map(|b| format!("{b:02x}")).collect::<String>();
            let token = hex(&rand::rng().random::<[u8; 32]>());
            let views: Vec<String> = views
                .split(',')
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(|v| format!("{v:?}"))
                .collect();
            let mut secrets = format!("HTTP bearer token:\n  {token}\n");
            let mut entry = format!(
                "[[serving.tokens]]\nname = {name:?}\nsha256 = \"{}\"\n",
                duet_serving::auth::hash_hex(&token)
            );
            if pg {
                let password = hex(&rand::rng().random::<[u8; 18]>());
                let hash = duet_serving::auth::pg_password_hash(&password, rand::rng().random());
                secrets.push_str(&format!(
                    "PostgreSQL user {name:?}, password:\n  {password}\n"
                ));
                entry.push_str(&format!("pg_password = \"{hash}\"\n"));
            }
            println!(
                "For {name} (not stored anywhere):\n{secrets}\nAdd to the config:\n\n{entry}views = [{}]\nrate = {rate}",
                views.join(", ")
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Config {
            command: ConfigCommand::Check { file },
        } => {
            let file = file.unwrap_or(config);
            match load_config(&file) {
                Ok(cfg) => {
                    println!(
                        "{}: ok ({} sources, {} views, {} jobs)",
                        file.display(),
                        cfg.sources.len(),
                        cfg.views.len(),
                        cfg.jobs.len()
                    );
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    println!("{}", chain(&e));
                    Ok(ExitCode::from(2))
                }
            }
        }
        Command::Demo {
            rate,
            data,
            http,
            pg,
        } => {
            let mut cfg = match &cli.config {
                Some(f) => load_config(f)?,
                None => Config::from_toml_str_with_env(
                    REFERENCE,
                    "config/examples/ecommerce.toml".as_ref(),
                    std::env::vars(),
                )?,
            };
            cfg.kafka.bootstrap_servers = None;
            cfg.lake.url = data.join("lake").to_string_lossy().into_owned();
            cfg.store.path = data.join("store.redb").to_string_lossy().into_owned();
            if let Some(h) = http {
                cfg.serving.bind = h;
            }
            cfg.serving.pg_bind = (pg != "off").then_some(pg);
            serve(cfg, Some(rate), None).await
        }
        Command::Bench {
            which:
                Some(BenchCommand::Speed {
                    events,
                    rate,
                    seconds,
                    out,
                }),
            ..
        } => {
            let cfg = Config::from_toml_str(REFERENCE, "config/examples/ecommerce.toml".as_ref())?;
            let dir = std::env::temp_dir().join(format!("duet-bench-speed-{}", std::process::id()));
            let opts = duet_jobs::bench_speed::SpeedBenchOptions {
                events,
                rate,
                seconds,
                dir,
            };
            let report = duet_jobs::bench_speed::run(&cfg, &opts).await?;
            write_report(&out, &report)
        }
        Command::Bench {
            which:
                Some(BenchCommand::Serving {
                    seconds,
                    connections,
                    queries,
                    out,
                }),
            ..
        } => {
            let cfg = Config::from_toml_str(REFERENCE, "config/examples/ecommerce.toml".as_ref())?;
            let dir =
                std::env::temp_dir().join(format!("duet-bench-serving-{}", std::process::id()));
            let opts = duet_jobs::bench_serving::ServingBenchOptions {
                seconds,
                connections,
                queries,
                dir,
            };
            let report = duet_jobs::bench_serving::run(&cfg, &opts).await?;
            write_report(&out, &report)
        }
        Command::Bench {
            which: None,
            events,
            queries,
            out,
            seals,
            store_events,
            store_days,
        } => {
            let cfg = Config::from_toml_str(REFERENCE, "config/examples/ecommerce.toml".as_ref())?;
            let dir = std::env::temp_dir().join(format!("duet-bench-{}", std::process::id()));
            let opts = duet_jobs::bench::BenchOptions {
                events,
                queries,
                dir,
                seals,
                store_events,
                store_days,
            };
            let report = duet_jobs::bench::run(&cfg, &opts).await?;
            std::fs::write(&out, &report).with_context(|| format!("write {}", out.display()))?;
            println!("{report}");
            println!("(written to {})", out.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Run {
            generate,
            only,
            http,
            pg,
        } => {
            let mut cfg = load_config(&config)?;
            if let Some(addr) = http {
                cfg.serving.bind = addr;
            }
            if let Some(addr) = pg {
                cfg.serving.pg_bind = (addr != "off").then_some(addr);
            }
            serve(cfg, generate, only.map(OnlyPart::part)).await
        }
        Command::Jobs {
            command: JobsCommand::List,
        } => {
            let cfg = load_config(&config)?;
            for j in &cfg.jobs {
                println!("{}\t{}\t{}", j.name, j.schedule, j.all_views().join(","));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Verify { view, from, to } => {
            let cfg = load_config(&config)?;
            let spec = find_view(&cfg, &view)?;
            let now = duet_speed::now_ms();
            let to = match to {
                Some(t) => parse_time(&t)?,
                None => spec.bucket_of(now) + spec.bucket_ms,
            };
            let from = match from {
                Some(f) => parse_time(&f)?,
                None => to - 60 * spec.bucket_ms,
            };
            if from >= to {
                anyhow::bail!("--from ({}) must be before --to ({})", iso(from), iso(to));
            }
            let v = duet_jobs::verify::verify(&cfg, spec, from, to, now).await?;
            let Some(range) = v.range else {
                println!(
                    "{view}: nothing to verify: every bucket of the range may still receive events"
                );
                return Ok(ExitCode::SUCCESS);
            };
            println!(
                "{view}: [{}, {}) recomputed from raw version {}, {} bucket rows compared (serving's answer {}){}",
                iso(range.from),
                iso(range.to),
                v.raw_version.map_or("-".to_string(), |r| r.to_string()),
                v.compared,
                v.via,
                if v.too_recent > 0 {
                    format!(
                        "; {} later buckets may still receive events and were not compared",
                        v.too_recent
                    )
                } else {
                    String::new()
                }
            );
            let dims = |d: &duet_config::DimKey| {
                if spec.dimensions.is_empty() {
                    return String::new();
                }
                let parts: Vec<String> = spec
                    .dimensions
                    .iter()
                    .zip(d)
                    .map(|(n, v)| format!("{n}={}", v.as_deref().unwrap_or("null")))
                    .collect();
                format!(" {{{}}}", parts.join(", "))
            };
            for (d, served) in &v.served {
                let from = match served {
                    Some(s) => match s.late_pending {
                        Some(n) => format!("{} ({n} late events pending)", s.source),
                        None => s.source.clone(),
                    },
                    None => "no row".into(),
                };
                for m in &d.measures {
                    println!(
                        "  served   {}{}: {} = {} from {from}, recomputed {}",
                        iso(d.bucket),
                        dims(&d.dims),
                        m.measure,
                        m.found,
                        m.expected
                    );
                }
            }
            for d in &v.speed {
                for m in &d.measures {
                    println!(
                        "  speed    {}{}: {} = {} in the speed store, recomputed {}",
                        iso(d.bucket),
                        dims(&d.dims),
                        m.measure,
                        m.found,
                        m.expected
                    );
                }
            }
            if v.agrees() {
                println!("{view}: all agree");
                Ok(ExitCode::SUCCESS)
            } else {
                println!(
                    "{view}: {} buckets differ in serving's answer, {} in the speed store",
                    v.served.len(),
                    v.speed.len()
                );
                Ok(ExitCode::from(1))
            }
        }
        Command::Quarantine { command } => {
            let cfg = load_config(&config)?;
            match command {
                QuarantineCommand::List { source, limit } => {
                    let records = duet_jobs::quarantine::records(&cfg, source.as_deref()).await?;
                    print!("{}", duet_jobs::quarantine::list(&records, limit));
                    Ok(ExitCode::SUCCESS)
                }
                QuarantineCommand::Show { id } => {
                    let records = duet_jobs::quarantine::records(&cfg, None).await?;
                    print!("{}", duet_jobs::quarantine::show(&records, &id)?);
                    Ok(ExitCode::SUCCESS)
                }
                QuarantineCommand::Replay {
                    ids,
                    all,
                    source,
                    payload,
                    bootstrap,
                    dry_run,
                } => {
                    let records = duet_jobs::quarantine::records(&cfg, source.as_deref()).await?;
                    let ids: Vec<String> = if all {
                        records.iter().map(|r| r.id()).collect()
                    } else {
                        ids
                    };
                    if ids.is_empty() {
                        anyhow::bail!(
                            "name the events to replay (topic/partition@offset) or pass --all"
                        );
                    }
                    let bootstrap = bootstrap
                        .or_else(|| cfg.kafka.bootstrap_servers.clone())
                        .context("replay needs a Kafka: pass --bootstrap ADDR or set [kafka] bootstrap_servers (the embedded cluster lives inside the running deployment; its address is in its banner)")?;
                    let payload = match payload {
                        Some(p) => Some(
                            std::fs::read(&p).with_context(|| format!("read {}", p.display()))?,
                        ),
                        None => None,
                    };
                    let done = duet_jobs::quarantine::replay(
                        &cfg, &bootstrap, &records, &ids, payload, dry_run,
                    )
                    .await?;
                    let mut refused = 0;
                    for r in &done {
                        match &r.refused {
                            None if dry_run => println!("{}	would be sent", r.id),
                            None => println!("{}	sent", r.id),
                            Some(why) => {
                                refused += 1;
                                println!("{}	not sent: {why}", r.id);
                            }
                        }
                    }
                    Ok(if refused == 0 {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::from(1)
                    })
                }
            }
        }
        Command::Views {
            command: ViewsCommand::List,
        } => {
            let cfg = load_config(&config)?;
            println!("view\tsource\tbucket\tfingerprint");
            for v in &cfg.views {
                println!(
                    "{}\t{}\t{}\t{}",
                    v.name,
                    v.source,
                    duet_config::duration::format_millis(v.bucket_ms),
                    v.definition().fingerprint()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Views {
            command: ViewsCommand::Reset { view },
        } => {
            let cfg = load_config(&config)?;
            let spec = find_view(&cfg, &view)?;
            let store = duet_jobs::app::open_store(&cfg)
                .await
                .context("stop the deployment that uses the view store first")?;
            let lake = Lake::open(&cfg.lake.url)?;
            let table = duet_lake::ViewTable::new(&lake, spec);
            store.drop_view(&view).await?;
            table.delete().await?;
            duet_lake::SealLedger::new(&lake).forget_view(&view).await?;
            store
                .record_definitions(std::collections::BTreeMap::from([(
                    view.clone(),
                    spec.definition(),
                )]))
                .await?;
            let now = duet_speed::now_ms();
            let runs =
                duet_jobs::scheduler::seal_due(&cfg, &lake, std::slice::from_ref(&view), now).await;
            let rows: usize = runs.iter().map(|r| r.rows).sum();
            let until = duet_lake::SealLedger::new(&lake)
                .snapshot()
                .await?
                .view(&view)
                .sealed_until();
            println!(
                "{view}: state dropped; rebuilt from the lake: {rows} rows, sealed until {} (later buckets are counted by the speed layer from now on)",
                until.map_or("-".to_string(), iso)
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Jobs {
            command: JobsCommand::Status,
        } => {
            let cfg = load_config(&config)?;
            let lake = Lake::open(&cfg.lake.url)?;
            let ledger = duet_lake::SealLedger::new(&lake).snapshot().await?;
            println!("view\tsealed_until\tgaps\tdirty\tlate_pending\tversion\tlast_sealed_at");
            for v in &cfg.views {
                let seals = ledger.view(&v.name);
                let Some(until) = seals.sealed_until() else {
                    println!("{}\t-\t0\t0\t0\t-\t-", v.name);
                    continue;
                };
                let dirty = seals.dirty();
                let (version, at) = seals
                    .last
                    .as_ref()
                    .map_or(("-".to_string(), "-".to_string()), |s| {
                        (s.version.to_string(), iso(s.sealed_at))
                    });
                println!(
                    "{}\t{}\t{}\t{}\t{}\t{}\t{}",
                    v.name,
                    iso(until),
                    seals.sealed.len() - 1,
                    dirty.len(),
                    dirty.values().sum::<i64>(),
                    version,
                    at
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Jobs {
            command:
                JobsCommand::Run {
                    view,
                    from,
                    to,
                    force,
                },
        } => {
            let cfg = load_config(&config)?;
            let spec = find_view(&cfg, &view)?;
            let lake = Lake::open(&cfg.lake.url)?;
            let now = duet_speed::now_ms();
            let ranges = match (from, to) {
                (Some(f), Some(t)) => {
                    let (f, t) = (parse_time(&f)?, parse_time(&t)?);
                    if f >= t {
                        anyhow::bail!("--from ({}) must be before --to ({})", iso(f), iso(t));
                    }
                    let to = spec.bucket_of(t - 1) + spec.bucket_ms;
                    let watermark = duet_lake::raw::raw_snapshot(&lake, &spec.source, None)
                        .await?
                        .watermark;
                    let limit = duet_batch::sealable_until(&cfg, spec, now, watermark);
                    if !force && limit.is_none_or(|l| to > l) {
                        let why = match watermark {
                            None => "the lake has no events of this source yet".to_string(),
                            Some(w) if w < now => {
                                format!("the lake's watermark for `{}` is {}", spec.source, iso(w))
                            }
                            Some(_) => format!("it is {}", iso(now)),
                        };
                        anyhow::bail!(
                            "refusing to seal buckets up to {}: the last bucket that may be sealed now ends at {} \
                             ({why}, and [batch] lateness is {}); events for later buckets may still be arriving, \
                             and a sealed bucket is served from the batch layer. Pass --force to seal them anyway \
                             (late events will then mark them for recompute).",
                            iso(to),
                            limit.map_or("-".to_string(), iso),
                            duet_config::duration::format_millis(cfg.lateness_ms)
                        );
                    }
                    vec![duet_lake::Interval::new(f, t)]
                }
                (None, None) => duet_batch::due(&lake, &cfg, spec, now)
                    .await?
                    .passes(duet_batch::pass_span(spec))
                    .into_iter()
                    .flatten()
                    .collect(),
                _ => anyhow::bail!("give both --from and --to, or neither"),
            };
            if ranges.is_empty() {
                println!("{view}: nothing due");
                return Ok(ExitCode::SUCCESS);
            }
            let passes = duet_batch::Due {
                gaps: ranges,
                dirty: Vec::new(),
            }
            .passes(duet_batch::pass_span(spec));
            for pass in passes {
                let r = duet_batch::recompute_ranges(&lake, &cfg, spec, &pass, now).await?;
                let sealed: Vec<String> = r
                    .ranges
                    .iter()
                    .map(|i| format!("[{}, {})", iso(i.from), iso(i.to)))
                    .collect();
                println!(
                    "{}: sealed {} with {} rows as version {} of views/{}{}",
                    r.view,
                    sealed.join(", "),
                    r.rows,
                    r.version,
                    r.view,
                    if r.resolved > 0 {
                        format!(" ({} late marks resolved)", r.resolved)
                    } else {
                        String::new()
                    }
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The benchmarks of one layer.
#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// The speed layer: throughput with the embedded and the Redis store beside the
    /// consume-and-discard ceiling of the same broker, freshness at a steady rate, peak memory.
    ///
    /// Example: duet bench speed --events 1000000 --out docs/bench/speed.md
    Speed {
        /// Events for the throughput runs.
        #[arg(long, default_value_t = 1_000_000)]
        events: usize,
        /// Events per second for the freshness runs.
        #[arg(long, default_value_t = 10_000)]
        rate: u32,
        /// Seconds each freshness run lasts.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Where to write the report.
        #[arg(long, default_value = "docs/bench/speed.md")]
        out: PathBuf,
    },
    /// The serving layer: requests/s and p50/p99 latency of a 24-hour minute-grain query, the
    /// same rolled up to hours and a single bucket over HTTP (`wrk`), and the 24-hour query over
    /// the PostgreSQL port (psycopg), beside `redis-benchmark` GET as the floor.
    ///
    /// Example: duet bench serving --out docs/bench/serving.md
    Serving {
        /// Seconds each `wrk` run lasts.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Connections of each `wrk` run (and of `redis-benchmark`).
        #[arg(long, default_value_t = 8)]
        connections: u32,
        /// Queries of each single-client run.
        #[arg(long, default_value_t = 300)]
        queries: usize,
        /// Where to write the report.
        #[arg(long, default_value = "docs/bench/serving.md")]
        out: PathBuf,
    },
}

/// `duet token …`.
#[derive(Subcommand)]
enum TokenCommand {
    /// Makes a new random token and prints it with the `[[serving.tokens]]` entry that admits
    /// it (only its SHA-256 goes into the config); with `--pg`, also a PostgreSQL password
    /// for the user NAME (only its PBKDF2 hash goes into the config).
    ///
    /// Example: duet token new grafana --views gmv_per_minute,orders_per_minute --pg
    New {
        /// The token's name (in logs and metrics); the PostgreSQL user name.
        name: String,
        /// Also make a password for the PostgreSQL port.
        #[arg(long)]
        pg: bool,
        /// Comma-separated views it may read (default: all, and the quarantine and metrics).
        #[arg(long, default_value = "*")]
        views: String,
        /// Requests per second it may make.
        #[arg(long, default_value_t = 100)]
        rate: u32,
    },
}

/// The parts `duet run --only` accepts.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum OnlyPart {
    /// The speed layer (a member of the speed consumer group).
    Speed,
    /// The lake sink.
    Lake,
    /// The scheduler (batch recomputes and seals).
    Batch,
    /// Only the HTTP API.
    Serving,
}

impl OnlyPart {
    fn part(self) -> duet_jobs::app::Part {
        match self {
            OnlyPart::Speed => duet_jobs::app::Part::Speed,
            OnlyPart::Lake => duet_jobs::app::Part::Lake,
            OnlyPart::Batch => duet_jobs::app::Part::Batch,
            OnlyPart::Serving => duet_jobs::app::Part::Serving,
        }
    }
}

fn find_view<'a>(cfg: &'a Config, view: &str) -> Result<&'a duet_config::ViewSpec> {
    cfg.view(view).with_context(|| {
        format!(
            "unknown view `{view}` (views: {})",
            cfg.views
                .iter()
                .map(|v| v.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )
    })
}

/// Writes a benchmark's report to `out` (creating its folder) and prints it.
#[allow(clippy::print_stdout)]
fn write_report(out: &std::path::Path, report: &str) -> Result<ExitCode> {
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).with_context(|| format!("create {}", parent.display()))?;
    }
    std::fs::write(out, report).with_context(|| format!("write {}", out.display()))?;
    println!("{report}");
    println!("(written to {})", out.display());
    Ok(ExitCode::SUCCESS)
}

#[allow(clippy::print_stdout)]
async fn serve(
    cfg: Config,
    generate: Option<u32>,
    only: Option<duet_jobs::app::Part>,
) -> Result<ExitCode> {
    use std::io::Write as _;
    let running = duet_jobs::app::start_parts(cfg, generate, only).await?;
    let (scheme, ssl) = if running.tls {
        ("https", "   (TLS: sslmode=require)")
    } else {
        ("http", "")
    };
    let pg = match running.pg {
        Some(a) => format!(
            "  PostgreSQL:      psql -h {} -p {} -d duet   (each view is a table){ssl}\n",
            a.ip(),
            a.port()
        ),
        None => String::new(),
    };
    let banner = format!(
        "Duet is running.\n  HTTP API:        {scheme}://{}/v1/views\n  Live page:       {scheme}://{}/\n{pg}  Kafka bootstrap: {}{}\n  Stop with Ctrl-C.\n",
        running.http,
        running.http,
        running.bootstrap,
        if running.embedded {
            " (embedded mock cluster)"
        } else {
            ""
        }
    );
    // A server must not die because whoever started it stopped reading its stdout.
    let mut out = std::io::stdout();
    let _ = out.write_all(banner.as_bytes()).and_then(|()| out.flush());
    running.wait().await?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Option 15 is the purge delay: its default is mimalloc's 1000 ms (the options around it
    /// default to 0 or 1), and keeping freed memory sets it to never (-1).
    #[test]
    #[allow(unsafe_code)]
    fn freed_memory_is_kept_through_the_purge_delay_option() {
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
            return;
        }
        // SAFETY: reads one of mimalloc's options
        let before = unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) };
        assert_eq!(before, 1000);
        keep_freed_memory();
        // SAFETY: as above
        let after = unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) };
        assert_eq!(after, -1);
    }
}
