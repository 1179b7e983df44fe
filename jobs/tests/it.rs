//! The `duet` command line, run as a user would.

use std::process::Command;

fn duet(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_duet"))
        .args(args)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// The reference config, found at run time (a test binary reused from another checkout of the
/// same sources must not read that checkout's files).
fn reference() -> &'static str {
    static PATH: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        format!(
            "{}/../config/examples/ecommerce.toml",
            std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR")
        )
    });
    &PATH
}

#[test]
fn config_check_accepts_the_reference() {
    let (code, out) = duet(&["config", "check", reference()]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("ok (2 sources, 6 views, 1 jobs)"), "{out}");
}

#[test]
fn config_check_lists_every_problem_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    let text = std::fs::read_to_string(reference())
        .unwrap()
        .replace("bucket = \"1m\"", "bucket = \"one minute\"")
        .replace(
            "kind = \"distinct_count\", field = \"userId\"",
            "kind = \"distinct_count\", field = \"nope\"",
        )
        .replace("bind = \"127.0.0.1:8080\"", "bind = \"somewhere\"");
    std::fs::write(&bad, text).unwrap();
    let (code, out) = duet(&["config", "check", bad.to_str().unwrap()]);
    assert_eq!(code, 2, "{out}");
    let file = bad.display().to_string();
    for needle in [
        format!("{file}: serving.bind: expected an address"),
        format!("{file}: views[0].bucket: duration `one minute`"),
        format!("{file}: views[2].measures[0].field: unknown field `nope`"),
    ] {
        assert!(out.contains(&needle), "missing {needle:?} in:\n{out}");
    }
    let (code, out) = duet(&["config", "check", "/no/such/file.toml"]);
    assert_eq!(code, 2, "{out}");
    // the cause once, and what to do
    assert!(
        out.contains("no config file (pass --config FILE or set DUET_CONFIG): cannot read config file /no/such/file.toml: No such file or directory (os error 2)\n"),
        "{out}"
    );
    assert_eq!(out.matches("os error 2").count(), 1, "{out}");
    // one rule for every command: --config, $DUET_CONFIG, ./duet.toml
    let dir = tempfile::tempdir().unwrap();
    for args in [&["jobs", "list"][..], &["run"][..], &["views", "list"][..]] {
        let out = Command::new(env!("CARGO_BIN_EXE_duet"))
            .args(args)
            .current_dir(dir.path())
            .env_remove("DUET_CONFIG")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {text}");
        assert!(
            text.contains("cannot read config file duet.toml"),
            "{args:?}: {text}"
        );
    }
    let out = Command::new(env!("CARGO_BIN_EXE_duet"))
        .args(["jobs", "list"])
        .env("DUET_CONFIG", reference())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
}

#[test]
fn jobs_list_and_errors() {
    let (code, out) = duet(&["jobs", "list", "-c", reference()]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("seal\t0 * * * * *\torders_per_minute,gmv_per_minute"),
        "{out}"
    );
    // status of a lake nobody sealed yet
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("duet.toml");
    let lake = dir.path().join("lake");
    std::fs::write(
        &cfg,
        std::fs::read_to_string(reference()).unwrap().replace(
            "url = \"duet-data/lake\"",
            &format!("url = {:?}", lake.to_str().unwrap()),
        ),
    )
    .unwrap();
    let (code, out) = duet(&["jobs", "status", "-c", cfg.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("gmv_per_minute\t-\t0\t0\t0\t-\t-"), "{out}");
    // a manual run ahead of what may be sealed is refused, and says why
    let run = |from: &str, to: &str, force: bool| {
        let mut args = vec!["jobs", "run", "gmv_per_minute", "--from", from, "--to", to];
        if force {
            args.push("--force");
        }
        args.extend(["-c", cfg.to_str().unwrap()]);
        duet(&args)
    };
    let (code, out) = run("2026-11-25T10:10:00Z", "2026-11-25T10:15:00Z", false);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("refusing to seal buckets up to 2026-11-25T10:15:00.000Z")
            && out.contains("the lake has no events of this source yet")
            && out.contains("--force"),
        "{out}"
    );
    // forced: sealed, and a second range after a gap
    let (code, out) = run("2026-11-25T10:10:00Z", "2026-11-25T10:15:00Z", true);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("gmv_per_minute: sealed [2026-11-25T10:10:00.000Z, 2026-11-25T10:15:00.000Z) with 0 rows as version 1"), "{out}");
    let (code, out) = run("2026-11-25T10:00:00Z", "2026-11-25T10:05:00Z", true);
    assert_eq!(code, 0, "{out}");
    let (code, out) = duet(&["jobs", "status", "-c", cfg.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    // sealed until the end of the first contiguous range, with one gap
    assert!(
        out.contains("gmv_per_minute\t2026-11-25T10:05:00.000Z\t1\t0\t0\t2\t"),
        "{out}"
    );
    // verify on a lake without events: nothing can be compared yet
    let (code, out) = duet(&["verify", "gmv_per_minute", "-c", cfg.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("gmv_per_minute: nothing to verify"), "{out}");
    let (code, out) = duet(&["jobs", "run", "nope", "-c", reference()]);
    assert_eq!(code, 1);
    assert!(out.contains("unknown view `nope`"), "{out}");
    let (code, out) = duet(&[
        "jobs",
        "run",
        "gmv_per_minute",
        "--from",
        "0",
        "-c",
        reference(),
    ]);
    assert_eq!(code, 1);
    assert!(out.contains("give both --from and --to"), "{out}");
}

/// A view whose definition changed is refused at start with what changed, until
/// `duet views reset` drops its state and rebuilds it from the lake.
#[test]
fn a_changed_view_is_refused_until_it_is_reset() {
    let dir = tempfile::tempdir().unwrap();
    let reference = std::fs::read_to_string(reference())
        .unwrap()
        .replace(
            "url = \"duet-data/lake\"",
            &format!("url = {:?}", dir.path().join("lake").to_str().unwrap()),
        )
        .replace(
            "path = \"duet-data/store.redb\"",
            &format!(
                "path = {:?}",
                dir.path().join("store.redb").to_str().unwrap()
            ),
        )
        .replace("bind = \"127.0.0.1:8080\"", "bind = \"127.0.0.1:0\"");
    let file = dir.path().join("duet.toml");
    std::fs::write(&file, &reference).unwrap();
    let cfg = file.to_str().unwrap();
    // state under the first definition: a batch table and speed states
    let (code, out) = duet(&[
        "jobs",
        "run",
        "gmv_per_minute",
        "--from",
        "2026-11-25T10:00:00Z",
        "--to",
        "2026-11-25T10:05:00Z",
        "--force",
        "-c",
        cfg,
    ]);
    assert_eq!(code, 0, "{out}");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let first = duet_config::Config::load(&file).unwrap();
    rt.block_on(async {
        let store = duet_speed::EmbeddedStore::open(first.store.path.as_ref()).unwrap();
        duet_speed::store::check_definitions(&store, &first.views)
            .await
            .unwrap();
    });
    // the measures of gmv_per_minute swapped
    let changed = reference.replace(
        "  { name = \"gmv\", kind = \"sum\", field = \"totalAmount\" },\n  { name = \"paid_orders\", kind = \"count\" },",
        "  { name = \"paid_orders\", kind = \"count\" },\n  { name = \"gmv\", kind = \"sum\", field = \"totalAmount\" },",
    );
    assert_ne!(changed, reference);
    std::fs::write(&file, &changed).unwrap();
    let (code, out) = duet(&["run", "-c", cfg]);
    assert_eq!(code, 1, "{out}");
    for needle in [
        "refusing to start",
        "speed store: view `gmv_per_minute` changed since its state was written (measures[0]: was gmv = sum(totalAmount: decimal(2)), now paid_orders = count()",
        "views/gmv_per_minute: view `gmv_per_minute` changed",
        "`duet views reset gmv_per_minute`",
    ] {
        assert!(out.contains(needle), "missing {needle:?} in\n{out}");
    }
    assert!(!out.contains("orders_per_minute"), "{out}");
    let (code, out) = duet(&["views", "reset", "gmv_per_minute", "-c", cfg]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("gmv_per_minute: state dropped"), "{out}");
    let second = duet_config::Config::load(&file).unwrap();
    rt.block_on(async {
        let store = duet_speed::EmbeddedStore::open(second.store.path.as_ref()).unwrap();
        let lake = duet_lake::Lake::open(&second.lake.url).unwrap();
        duet_jobs::app::check_views(&second, &lake, &store)
            .await
            .unwrap();
    });
}

/// `GET` over a plain TCP connection; returns the body.
fn http_get(addr: &str, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.split_once("\r\n\r\n").map(|(_, body)| body.to_string())
}

/// A running `duet demo`, killed (like a crash) when dropped.
struct Demo {
    child: std::process::Child,
    addr: String,
    /// The PostgreSQL port, when served.
    pg: Option<u16>,
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_demo(data: &std::path::Path, log: &std::path::Path) -> Demo {
    let data = data.to_str().unwrap();
    start_duet(
        &[
            "demo",
            "--rate",
            "300",
            "--http",
            "127.0.0.1:0",
            "--pg",
            "127.0.0.1:0",
            "--data",
            data,
        ],
        &[("DUET_LAKE__FLUSH_INTERVAL", "300ms")],
        log,
    )
}

/// Starts `duet ARGS` with `envs`, its log in `log`, and waits for the banner with its HTTP
/// address.
fn start_duet(args: &[&str], envs: &[(&str, &str)], log: &std::path::Path) -> Demo {
    use std::io::{BufRead, BufReader};
    let mut child = Command::new(env!("CARGO_BIN_EXE_duet"))
        .args(args)
        .envs(envs.iter().copied())
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut addr = None;
    let mut bootstrap = None;
    let mut pg = None;
    let mut lines = BufReader::new(stdout).lines();
    for line in lines.by_ref().take(10) {
        let line = line.unwrap();
        if let Some(rest) = line.trim().strip_prefix("PostgreSQL:") {
            // psql -h 127.0.0.1 -p PORT -d duet
            pg = rest
                .split_whitespace()
                .skip_while(|w| *w != "-p")
                .nth(1)
                .and_then(|p| p.parse().ok());
        }
        if let Some(rest) = line.trim().strip_prefix("HTTP API:") {
            let rest = rest.trim();
            addr = rest
                .strip_prefix("http://")
                .or_else(|| rest.strip_prefix("https://"))
                .and_then(|a| a.split('/').next())
                .map(str::to_string);
        }
        if let Some(rest) = line.trim().strip_prefix("Kafka bootstrap:") {
            bootstrap = Some(rest.trim().to_string());
            break;
        }
    }
    let demo = Demo {
        child,
        addr: addr.unwrap_or_else(|| {
            panic!(
                "duet {args:?} printed no HTTP address; log:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            )
        }),
        pg,
    };
    assert!(
        bootstrap
            .expect("duet prints the Kafka bootstrap")
            .contains("127.0.0.1:")
    );
    demo
}

/// Total orders over the last hour, from the HTTP API.
fn orders(addr: &str) -> i64 {
    let Some(body) = http_get(addr, "/v1/views/orders_per_minute") else {
        return 0;
    };
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    v["rows"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["values"]["orders"].as_i64())
        .sum()
}

/// Orders in the raw table of the lake at `lake`.
fn raw_orders(lake: &std::path::Path) -> u64 {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let lake = duet_lake::Lake::open(lake.to_str().unwrap()).unwrap();
        duet_lake::raw::raw_count(&lake, "orders")
            .await
            .unwrap_or(0)
    })
}

fn wait(what: &str, mut done: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !done() {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(90),
            "timed out: {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
}

#[test]
fn the_demo_serves_live_views_and_survives_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("first.log");
    let first = start_demo(dir.path(), &log);
    wait("orders in the first run", || orders(&first.addr) > 0);
    let health = http_get(&first.addr, "/health").unwrap();
    assert!(health.contains("\"ok\""), "{health}");
    wait("raw orders in the lake", || {
        raw_orders(&dir.path().join("lake")) > 0
    });
    wait("the generator's malformed events in the quarantine", || {
        http_get(&first.addr, "/v1/quarantine").is_some_and(|b| b.contains("\"reason\""))
    });
    // the console gets a status line every few seconds, not a line per quarantined event
    wait("a status line", || {
        std::fs::read_to_string(&log).is_ok_and(|l| l.contains(" events/s · lag "))
    });
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("quarantined "), "{text}");
    assert!(!text.contains("Quarantined event"), "{text}");
    // every metric the shipped alert rules read is exposed
    let metrics = http_get(&first.addr, "/metrics").unwrap();
    for name in alert_metrics() {
        assert!(
            metrics.contains(&format!("# TYPE {name} ")),
            "docs/ops/alerts.yml reads {name}, which /metrics does not expose"
        );
    }
    assert!(
        metrics.contains("duet_view_value{view=\"orders_per_minute\",measure=\"orders\"} "),
        "{metrics}"
    );
    // the same views as tables over the PostgreSQL port, read with Debian's psql
    let port = first.pg.expect("the demo prints its PostgreSQL port");
    let out = psql(
        port,
        "SELECT sum(orders) FROM orders_per_minute WHERE bucket > now() - interval '1 hour'",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let total: i64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    assert!(total > 0, "orders over SQL: {total}");
    // every SQL panel of the shipped Grafana dashboard runs, its macros expanded as Grafana
    // expands them, over the last hour
    for (title, sql) in dashboard_sql() {
        let out = psql(port, &sql);
        assert!(
            out.status.success() && !out.stdout.is_empty(),
            "panel {title:?}: {sql}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    drop(first); // SIGKILL
    let before_lake = raw_orders(&dir.path().join("lake"));
    let second = start_demo(dir.path(), &logs.path().join("second.log"));
    let carried = orders(&second.addr);
    assert!(carried > 0, "the views' state carries over a restart");
    // events of the new run (a new embedded cluster, offsets from 0 again) reach both layers
    wait("new orders in the views", || orders(&second.addr) > carried);
    wait("new raw orders in the lake", || {
        raw_orders(&dir.path().join("lake")) > before_lake + 20
    });
}

/// What headless Chromium (Debian's) renders of `url` after its script has run: the DOM.
fn chromium_dom(url: &str) -> String {
    let out = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--virtual-time-budget=5000",
            "--dump-dom",
        ])
        .arg(url)
        .output()
        .expect("chromium runs (./scripts/setup.sh installs it)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The text and `data-bucket` of the element with `data-testid="id"` in `dom`.
fn tile(dom: &str, id: &str) -> (String, Option<i64>) {
    let at = dom
        .find(&format!("data-testid=\"{id}\""))
        .unwrap_or_else(|| panic!("no {id} in {dom}"));
    let open_end = at + dom[at..].find('>').unwrap();
    let tag = &dom[..open_end];
    let tag = &tag[tag.rfind('<').unwrap()..];
    let bucket = tag
        .split_once("data-bucket=\"")
        .and_then(|(_, r)| r.split('"').next())
        .and_then(|b| b.parse().ok());
    let text = dom[open_end + 1..]
        .split('<')
        .next()
        .unwrap()
        .trim()
        .to_string();
    (text, bucket)
}

/// The live page at `/` shows, for a complete minute, what the API answers for it.
#[test]
fn the_big_screen_shows_what_the_api_says() {
    let dir = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let demo = start_demo(dir.path(), &logs.path().join("demo.log"));
    let page = http_get(&demo.addr, "/").unwrap();
    assert!(
        page.contains("data-testid=\"orders\"") && !page.contains("http://cdn"),
        "{page}"
    );
    // a minute the demo ran through, complete for a few seconds
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64
    };
    let started = now();
    wait("a complete minute", || {
        let t = now();
        t - t % 60_000 >= started + 5_000 && (10_000..45_000).contains(&(t % 60_000))
    });
    let mut last = String::new();
    for _ in 0..3 {
        let dom = chromium_dom(&format!("http://{}/", demo.addr));
        let (orders_shown, bucket) = tile(&dom, "orders");
        let (gmv_shown, _) = tile(&dom, "gmv");
        let (error, _) = tile(&dom, "error");
        assert_eq!(error, "", "{dom}");
        let bucket = bucket.unwrap_or_else(|| panic!("the page rendered no minute: {dom}"));
        let body = http_get(
            &demo.addr,
            &format!(
                "/v1/views/orders_per_minute?from={bucket}&to={}",
                bucket + 60_000
            ),
        )
        .unwrap();
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        let orders_api = v["rows"][0]["values"]["orders"].as_i64().unwrap_or(0);
        let body = http_get(
            &demo.addr,
            &format!(
                "/v1/views/gmv_per_minute?from={bucket}&to={}",
                bucket + 60_000
            ),
        )
        .unwrap();
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        let gmv_api = v["rows"][0]["values"]["gmv"]
            .as_str()
            .unwrap_or("0.00")
            .to_string();
        if orders_shown == orders_api.to_string() && gmv_shown == gmv_api {
            assert!(orders_api > 0, "a complete minute with orders");
            return;
        }
        // a late event may land between the page and the API: ask again
        last = format!("page {orders_shown}/{gmv_shown}, API {orders_api}/{gmv_api}");
        std::thread::sleep(std::time::Duration::from_secs(2));
    }
    panic!("the page and the API disagree: {last}");
}

/// Runs `sql` with Debian's psql against the PostgreSQL port `port` (unaligned, tuples only,
/// stopping at the first error, at most 60 s).
fn psql(port: u16, sql: &str) -> std::process::Output {
    // bounded: a query that hangs fails the test instead of holding up the suite
    Command::new("timeout")
        .args(["60", "psql"])
        .args([
            "-X",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            "127.0.0.1",
            "-d",
            "duet",
            "-U",
            "duet",
            "-p",
        ])
        .arg(port.to_string())
        .arg("-c")
        .arg(sql)
        .output()
        .expect("psql runs (./scripts/setup.sh installs it)")
}

/// The shipped Grafana dashboard's SQL panels (title, SQL), with Grafana's macros expanded
/// for the last hour: `$__timeFilter(c)`, `$__time(c)`, `$__timeGroupAlias(c, 5m)`.
fn dashboard_sql() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/ops/grafana-dashboard.json"),
    )
    .unwrap();
    let dash: serde_json::Value = serde_json::from_str(&text).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let (from, to) = (
        duet_config::time::iso(now - 3_600_000),
        duet_config::time::iso(now),
    );
    let mut out = Vec::new();
    for p in dash["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().unwrap() {
            let Some(sql) = t["rawSql"].as_str() else {
                continue;
            };
            let sql = sql
                .replace(
                    "$__timeFilter(bucket)",
                    &format!("bucket BETWEEN '{from}' AND '{to}'"),
                )
                .replace("$__time(bucket)", "bucket AS \"time\"")
                .replace(
                    "$__timeGroupAlias(bucket, 5m)",
                    "floor(extract(epoch from bucket)/300)*300 AS \"time\"",
                );
            assert!(!sql.contains("$__"), "an unexpanded macro: {sql}");
            out.push((p["title"].as_str().unwrap().to_string(), sql));
        }
    }
    assert!(out.len() >= 6, "{out:?}");
    out
}

/// The `duet_*` metrics `docs/ops/alerts.yml` and the Grafana dashboard read (histogram series
/// by their family name).
fn alert_metrics() -> std::collections::BTreeSet<String> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/ops");
    let rules = std::fs::read_to_string(dir.join("alerts.yml")).unwrap()
        + &std::fs::read_to_string(dir.join("grafana-dashboard.json")).unwrap();
    let mut names = std::collections::BTreeSet::new();
    for (i, _) in rules.match_indices("duet_") {
        let name: String = rules[i..]
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || *c == '_')
            .collect();
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(&name)
            .to_string();
        names.insert(family);
    }
    assert!(names.len() >= 6, "{names:?}");
    names
}

/// The shipped operations assets are valid: `promtool check rules` and the rules' unit tests
/// (`promtool test rules`, Debian's prometheus), `amtool check-config` (Debian's
/// prometheus-alertmanager), and the Grafana dashboard is JSON whose panels query views.
#[test]
fn ops_assets_pass_promtool_and_amtool() {
    let ops = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/ops");
    for (tool, args) in [
        ("promtool", vec!["check", "rules", "alerts.yml"]),
        ("promtool", vec!["test", "rules", "alerts.test.yml"]),
        ("amtool", vec!["check-config", "alertmanager.yml"]),
    ] {
        let out = Command::new(tool)
            .args(&args)
            .current_dir(&ops)
            .output()
            .unwrap_or_else(|e| panic!("{tool} runs (./scripts/setup.sh installs it): {e}"));
        assert!(
            out.status.success(),
            "{tool} {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Runs `duet <args> --out <dir>/<file>`, expects success, and returns the report.
fn bench_report(file: &str, args: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join(file);
    let mut all = args.to_vec();
    all.extend(["--out", out.to_str().unwrap()]);
    let (code, text) = duet(&all);
    assert_eq!(code, 0, "{text}");
    std::fs::read_to_string(&out).unwrap()
}

#[test]
fn bench_writes_a_report_with_baselines() {
    let report = bench_report(
        "report.md",
        &[
            "bench",
            "--events",
            "1000",
            "--queries",
            "10",
            "--seals",
            "20",
            "--store-events",
            "6000",
            "--store-days",
            "2",
        ],
    );
    for needle in [
        "- Machine: ",
        "| baseline: consume and discard (same broker, same process) |",
        "| speed layer end to end",
        "| lake sink",
        "| gmv_per_minute |",
        "| /health (baseline) |",
        "## Steady state: a fresh lake, then after 20 minutely seals",
        "| query p50, ms |",
        "| seal of one minute, ms (median of 9) |",
        "## Dedup state over 2 simulated days",
    ] {
        assert!(report.contains(needle), "missing {needle:?} in\n{report}");
    }
    // every throughput row has a positive rate and a ratio
    let rows: Vec<&str> = report
        .lines()
        .filter(|l| l.starts_with("| ") && l.ends_with(" |") && !l.contains("---"))
        .collect();
    assert!(rows.len() >= 14, "{report}");
}

/// `duet run --only PART` splits a deployment over processes that share a Kafka and a Redis:
/// two speed workers share the partitions (each applies a part), a lake sink and a serving
/// process with the generator; the serving process answers from what the workers wrote. With
/// the embedded Kafka or store the split is refused, saying what to set.
#[test]
fn parts_run_in_processes_of_their_own() {
    let (code, out) = duet(&["run", "--only", "speed", "-c", reference()]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("set `[kafka] bootstrap_servers`"), "{out}");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_duet"));
    let out = cmd
        .args(["run", "--only", "serving", "-c", reference()])
        .env("DUET_KAFKA__BOOTSTRAP_SERVERS", "127.0.0.1:1")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("set `[store] url` (Redis)"), "{text}");

    let dir = tempfile::tempdir().unwrap();
    let redis = duet_speed::store::LocalRedis::start(&dir.path().join("redis")).unwrap();
    let topics = ["orders".to_string(), "user-behavior".to_string()];
    let kafka = duet_jobs::embedded::EmbeddedKafka::start(&topics, 4).unwrap();
    let bootstrap = kafka.bootstrap();
    let lake = dir.path().join("lake");
    let envs = [
        ("DUET_KAFKA__BOOTSTRAP_SERVERS", bootstrap.as_str()),
        ("DUET_STORE__URL", &redis.url()),
        ("DUET_LAKE__URL", lake.to_str().unwrap()),
        ("DUET_LAKE__FLUSH_INTERVAL", "300ms"),
    ];
    let part = |only: &str, name: &str, extra: &[&str]| {
        let mut args = vec![
            "run",
            "--only",
            only,
            "--http",
            "127.0.0.1:0",
            "-c",
            reference(),
        ];
        args.extend(extra);
        start_duet(&args, &envs, &dir.path().join(format!("{name}.log")))
    };
    let speed_a = part("speed", "speed-a", &[]);
    let speed_b = part("speed", "speed-b", &[]);
    let _lake = part("lake", "lake", &[]);
    let serving = part("serving", "serving", &["--generate", "300"]);
    wait("orders served from what the speed workers wrote", || {
        orders(&serving.addr) > 100
    });
    let applied = |addr: &str| -> u64 {
        http_get(addr, "/metrics")
            .and_then(|m| {
                m.lines()
                    .find_map(|l| l.strip_prefix("duet_speed_events_applied_total "))
                    .and_then(|v| v.trim().parse().ok())
            })
            .unwrap_or(0)
    };
    wait("both speed workers applying their share", || {
        applied(&speed_a.addr) > 0 && applied(&speed_b.addr) > 0
    });
    wait("raw orders in the lake", || raw_orders(&lake) > 0);
}

/// Quarantined events are listed and shown from the lake, and replayed to their topic only
/// once they decode: a still-malformed one is refused with its reason, a corrected one sent.
#[test]
fn quarantined_events_are_listed_shown_and_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let lake_dir = dir.path().join("lake");
    let cfg_path = dir.path().join("duet.toml");
    std::fs::write(
        &cfg_path,
        std::fs::read_to_string(reference()).unwrap().replace(
            "url = \"duet-data/lake\"",
            &format!("url = {:?}", lake_dir.to_str().unwrap()),
        ),
    )
    .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let kafka = duet_jobs::embedded::EmbeddedKafka::start(&["orders".to_string()], 2).unwrap();
    rt.block_on(async {
        let lake = duet_lake::Lake::open(lake_dir.to_str().unwrap()).unwrap();
        let mut w = duet_lake::QuarantineWriter::open(&lake, "duet-lake")
            .await
            .unwrap();
        w.append(&[duet_config::Quarantined {
            source: "orders".into(),
            topic: "orders".into(),
            partition: 1,
            offset: 7,
            reason: "not valid JSON: EOF while parsing".into(),
            payload: b"{\"orderId\": \"o-1\"".to_vec(),
            at_ms: 1_795_000_000_000,
        }])
        .await
        .unwrap();
    });
    let c = cfg_path.to_str().unwrap();
    let (code, out) = duet(&["quarantine", "list", "-c", c]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("orders/1@7\t2026-11-18T") && out.contains("\torders\tnot valid JSON"),
        "{out}"
    );
    let (code, out) = duet(&["quarantine", "show", "orders/1@7", "-c", c]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("payload:     {\"orderId\": \"o-1\""), "{out}");
    let (code, out) = duet(&["quarantine", "show", "orders/9@9", "-c", c]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("no quarantined event `orders/9@9`"), "{out}");
    // as it is, it still does not decode: not sent
    let bootstrap = kafka.bootstrap();
    let (code, out) = duet(&[
        "quarantine",
        "replay",
        "orders/1@7",
        "--bootstrap",
        &bootstrap,
        "-c",
        c,
    ]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("orders/1@7\tnot sent: still refused: not valid JSON"),
        "{out}"
    );
    // corrected, it is sent to its topic, keyed by its id
    let mut g = duet_jobs::generator::Generator::new(3, 10);
    let order = std::iter::repeat_with(|| g.next(1_795_000_000_000))
        .find(|e| e.source == "orders")
        .unwrap();
    let fixed = dir.path().join("fixed.json");
    std::fs::write(&fixed, order.payload()).unwrap();
    let (code, out) = duet(&[
        "quarantine",
        "replay",
        "orders/1@7",
        "--payload",
        fixed.to_str().unwrap(),
        "--bootstrap",
        &bootstrap,
        "-c",
        c,
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("orders/1@7\tsent"), "{out}");
    let got = rt.block_on(async {
        let consumer = duet_speed::kafka::AssignedConsumer::new(
            &duet_config::KafkaConfig::default(),
            &bootstrap,
            "replay-check",
            &["orders".to_string()],
            |_, _| None,
            std::time::Duration::from_secs(10),
        )
        .await
        .unwrap();
        consumer
            .next_batch(10, std::time::Duration::from_secs(5))
            .await
            .unwrap()
    });
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].payload, order.payload());
}

#[test]
fn bench_speed_writes_a_report_beside_the_ceiling() {
    let report = bench_report(
        "bench/speed.md",
        &[
            "bench",
            "speed",
            "--events",
            "3000",
            "--rate",
            "500",
            "--seconds",
            "1",
        ],
    );
    for needle in [
        "- Machine: ",
        "| consume and discard (same broker, same process; the best of 3 reads, each just before one of the embedded store's runs): the ceiling |",
        "| speed layer, embedded store (Kafka → decode → dedup → fold → commit), the best of 3 runs |",
        "Each round's ratio, the embedded store's run against the ceiling read just before it: ",
        "| speed layer, Redis store",
        "The best of 3 runs, each into a new store.",
        "## Freshness: produce → visible in the store, 500 events/s for 1 s",
        "| embedded | 500 |",
        "| Redis | 500 |",
    ] {
        assert!(report.contains(needle), "missing {needle:?} in\n{report}");
    }
}

/// A deployment with clients and TLS: `duet token new --pg` makes a client whose entry, given
/// through the environment, admits it over HTTPS (bearer token) and over the PostgreSQL port
/// (password, TLS verified) to its views only; nobody else gets in.
#[test]
fn clients_and_tls_guard_both_ports_of_a_running_deployment() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let made = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .args(["-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl runs (./scripts/setup.sh installs it)");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    // the client, as `duet token new` prints it
    let (code, out) = duet(&["token", "new", "bi", "--views", "gmv_per_minute", "--pg"]);
    assert_eq!(code, 0, "{out}");
    let after = |label: &str| -> String {
        let mut lines = out.lines().skip_while(|l| !l.starts_with(label));
        lines.nth(1).expect(label).trim().to_string()
    };
    let (token, password) = (after("HTTP bearer token:"), after("PostgreSQL user \"bi\""));
    let value = |k: &str| -> String {
        out.lines()
            .find_map(|l| l.strip_prefix(&format!("{k} = ")))
            .expect(k)
            .to_string()
    };
    let tokens = format!(
        "[{{name = \"bi\", sha256 = {}, pg_password = {}, views = [\"gmv_per_minute\"]}}]",
        value("sha256"),
        value("pg_password")
    );
    let tls = format!(
        "{{cert = {:?}, key = {:?}}}",
        cert.to_str().unwrap(),
        key.to_str().unwrap()
    );
    let lake = dir.path().join("lake");
    let store = dir.path().join("store.redb");
    let envs = [
        ("DUET_SERVING__TOKENS", tokens.as_str()),
        ("DUET_SERVING__TLS", tls.as_str()),
        ("DUET_LAKE__URL", lake.to_str().unwrap()),
        ("DUET_STORE__PATH", store.to_str().unwrap()),
    ];
    let args = [
        "run",
        "--generate",
        "100",
        "--http",
        "127.0.0.1:0",
        "--pg",
        "127.0.0.1:0",
        "-c",
        reference(),
    ];
    let running = start_duet(&args, &envs, &dir.path().join("duet.log"));
    let port = running.addr.rsplit(':').next().unwrap().to_string();
    let curl = |path: &str, token: Option<&str>| -> String {
        let mut c = Command::new("curl");
        c.args(["-sS", "--max-time", "20", "-w", " %{http_code}", "--cacert"])
            .arg(&cert);
        if let Some(t) = token {
            c.args(["-H", &format!("Authorization: Bearer {t}")]);
        }
        let out = c
            .arg(format!("https://localhost:{port}{path}"))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    };
    let answer = curl("/v1/views/gmv_per_minute", Some(&token));
    assert!(
        answer.ends_with(" 200") && answer.contains("\"provenance\""),
        "{answer}"
    );
    assert!(curl("/v1/views/gmv_per_minute", None).ends_with(" 401"));
    assert!(curl("/v1/views/orders_per_minute", Some(&token)).ends_with(" 403"));
    let pg = running.pg.expect("the PostgreSQL port is served");
    let psql = |user: &str, password: &str, sql: &str| -> std::process::Output {
        Command::new("psql")
            .args(["-X", "-w", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .arg(format!(
                "host=localhost port={pg} dbname=duet user={user} sslmode=verify-full sslrootcert={}",
                cert.display()
            ))
            .env("PGPASSWORD", password)
            .env("PGCONNECT_TIMEOUT", "10")
            .output()
            .unwrap()
    };
    let read = psql(
        "bi",
        &password,
        "SELECT count(*) >= 0 FROM gmv_per_minute WHERE bucket > now() - interval '1 hour'",
    );
    assert_eq!(
        String::from_utf8_lossy(&read.stdout),
        "t\n",
        "{}",
        String::from_utf8_lossy(&read.stderr)
    );
    let other = psql("bi", &password, "SELECT count(*) FROM orders_per_minute");
    assert!(
        String::from_utf8_lossy(&other.stderr).contains("may not read view `orders_per_minute`")
    );
    let wrong = psql("bi", "guess", "SELECT 1");
    assert!(
        String::from_utf8_lossy(&wrong.stderr)
            .to_lowercase()
            .contains("password authentication failed"),
        "{}",
        String::from_utf8_lossy(&wrong.stderr)
    );
}
