//! The HTTP API (axum): `/health`, `/metrics`, `/v1/openapi.json`, `/v1/views`,
//! `/v1/views/{view}` (JSON, CSV or Arrow; rolled up, filtered, ordered, paged),
//! `/v1/views/{view}/live` (Server-Sent Events) and `/v1/quarantine`.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::Extension;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::Uri;
use axum::http::header::{ACCEPT, CONTENT_TYPE};
use axum::http::{HeaderMap, HeaderValue};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use duet_config::time::iso;
use duet_config::{Config, ViewSpec, duration::format_millis};
use duet_speed::{SpeedCounters, ViewStore};
use serde_json::{Value, json};

use crate::auth::Grant;
use crate::error::{Error, Result};
use crate::health::{PartState, Parts, SealChecks};
use crate::query::{LakeReaders, Provenance, merged};
use crate::request::{Format, ViewQuery, cursor_text, live_query, view_query};
use crate::rollup::{Rolled, Rollup};
use crate::table::{self, record_batch};

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    /// The deployment.
    pub cfg: Arc<Config>,
    /// The lake (batch tables, seal ledger), read through version-following readers.
    pub lake: Arc<LakeReaders>,
    /// The speed store (read side).
    pub store: Arc<dyn ViewStore>,
    /// The speed layer's running totals, read for `/metrics`.
    pub counters: Arc<SpeedCounters>,
    /// The status of the deployment's parts, for `/health` and `/metrics`.
    pub parts: Arc<Parts>,
    /// How each view's seals compared with the speed layer, for `/metrics`.
    pub checks: Arc<SealChecks>,
    /// Serving's own request and row counters, for `/metrics`.
    pub metrics: Arc<crate::metrics::ServingMetrics>,
}

/// Longest a request may take to answer (its headers, for the live stream), seconds.
pub const TIME_LIMIT_S: u64 = 30;

/// Most rows of a view one query may read (buckets × dimension values) before it is rolled up.
pub const MAX_ROWS_READ: usize = 2_000_000;

/// Longest request target (path and query string) the API reads, bytes.
pub const MAX_URI_BYTES: usize = 8 * 1024;

/// Answers 414 to a request whose target is longer than [`MAX_URI_BYTES`], and 503 when a
/// request takes longer than [`TIME_LIMIT_S`].
async fn time_limit(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let len = req.uri().path_and_query().map_or(0, |p| p.as_str().len());
    if len > MAX_URI_BYTES {
        return Error::TooLarge(format!(
            "the request's path and query are {len} bytes, more than the {MAX_URI_BYTES} a request may have"
        ))
        .into_response();
    }
    match tokio::time::timeout(std::time::Duration::from_secs(TIME_LIMIT_S), next.run(req)).await {
        Ok(res) => res,
        Err(_) => Error::Timeout(TIME_LIMIT_S).into_response(),
    }
}

/// The API's router.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(big_screen))
        .route("/health", get(health))
        .route(
            "/v1/openapi.json",
            get(|| async { Json(crate::openapi::document()) }),
        )
        .route("/v1/views", get(list_views))
        .route("/v1/views/{view}", get(query_view))
        .route("/v1/views/{view}/live", get(live_view))
        .route("/v1/quarantine", get(quarantine))
        .route("/metrics", get(metrics))
        .route("/ready", get(ready))
        .fallback(|uri: Uri| async move { Error::NotFound(uri.to_string()) })
        .layer(axum::middleware::from_fn(time_limit))
        .layer(axum::middleware::from_fn_with_state(
            Arc::new(crate::auth::Tokens::new(&state.cfg.serving.tokens)),
            crate::auth::authorize,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.metrics.clone(),
            crate::metrics::track,
        ))
        .with_state(state)
}

fn bad_query(e: QueryRejection) -> Error {
    Error::BadQuery(e.body_text())
}

/// Prometheus text exposition of the speed layer's totals and each source's watermark.
async fn metrics(
    State(s): State<AppState>,
    grant: Option<Extension<Grant>>,
) -> Result<([(axum::http::HeaderName, &'static str); 1], String)> {
    if let Some(Extension(g)) = &grant {
        g.check_all("the metrics")?;
    }
    use std::fmt::Write as _;
    use std::sync::atomic::Ordering::Relaxed;
    let c = &s.counters;
    let mut out = String::new();
    for (name, help, v) in [
        (
            "duet_speed_events_consumed_total",
            "Messages consumed by the speed layer (applied, duplicate or quarantined).",
            c.consumed.load(Relaxed),
        ),
        (
            "duet_speed_events_applied_total",
            "Events applied to views by the speed layer.",
            c.applied.load(Relaxed),
        ),
        (
            "duet_speed_duplicates_total",
            "Events dropped as duplicates by the speed layer.",
            c.duplicates.load(Relaxed),
        ),
        (
            "duet_speed_quarantined_total",
            "Malformed events sent to the quarantine.",
            c.quarantined.load(Relaxed),
        ),
        (
            "duet_speed_late_total",
            "Applied events that counted in a bucket the batch layer had already sealed.",
            c.late.load(Relaxed),
        ),
        (
            "duet_speed_batches_total",
            "Store transactions committed by the speed layer.",
            c.batches.load(Relaxed),
        ),
        (
            "duet_speed_rebalances_total",
            "Times the speed consumer's partition assignment changed.",
            c.rebalances.load(Relaxed),
        ),
    ] {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
        );
    }
    for (name, help, h) in [
        (
            "duet_speed_commit_seconds",
            "Time to commit one batch to the view store.",
            c.commit_latency.snapshot(),
        ),
        (
            "duet_speed_freshness_seconds",
            "From an event's production (its message timestamp) to its commit in the view store.",
            c.freshness.snapshot(),
        ),
    ] {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (bound, n) in h.bounds.iter().zip(&h.cumulative) {
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {n}");
        }
        let total = h.cumulative.last().copied().unwrap_or(0);
        let _ = writeln!(
            out,
            "{name}_bucket{{le=\"+Inf\"}} {total}\n{name}_sum {:.6}\n{name}_count {total}",
            h.sum_s
        );
    }
    let lag = c.lag();
    let _ = writeln!(
        out,
        "# HELP duet_speed_consumer_lag Messages the broker holds beyond the speed consumer's position, per partition.\n# TYPE duet_speed_consumer_lag gauge"
    );
    for l in &lag {
        let _ = writeln!(
            out,
            "duet_speed_consumer_lag{{topic=\"{}\",partition=\"{}\"}} {}",
            l.topic, l.partition, l.lag
        );
    }
    let _ = writeln!(
        out,
        "# HELP duet_source_watermark_seconds Highest event time applied by the speed layer, per source.\n# TYPE duet_source_watermark_seconds gauge"
    );
    let parts = s.parts.snapshot();
    if !parts.is_empty() {
        let _ = writeln!(
            out,
            "# HELP duet_part_up Whether a part of the deployment runs (0 while it is being restarted).\n# TYPE duet_part_up gauge"
        );
        for (name, p) in &parts {
            let up = u8::from(p.state == PartState::Running);
            let _ = writeln!(out, "duet_part_up{{part=\"{name}\"}} {up}");
        }
        let _ = writeln!(
            out,
            "# HELP duet_part_restarts_total Times a part failed and was restarted.\n# TYPE duet_part_restarts_total counter"
        );
        for (name, p) in &parts {
            let _ = writeln!(
                out,
                "duet_part_restarts_total{{part=\"{name}\"}} {}",
                p.restarts
            );
        }
    }
    let st = s.store.stats().await?;
    for (name, kind, help, v) in [
        (
            "duet_speed_seen_ids",
            "gauge",
            "Event ids the speed layer remembers for dedup (until their buckets seal).",
            st.seen_ids,
        ),
        (
            "duet_speed_store_bytes",
            "gauge",
            "Size of the speed layer's view store.",
            st.bytes,
        ),
        (
            "duet_speed_corrupt_states",
            "gauge",
            "Stored states that could not be read and were set aside.",
            st.corrupt,
        ),
    ] {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
        );
    }
    // the families are declared even before the first seal, so that rules can name them
    let checks = s.checks.snapshot();
    {
        for (name, kind, help) in [
            (
                "duet_seal_mismatched_buckets",
                "gauge",
                "Buckets whose batch recompute differed from the speed layer's state at the view's last seal.",
            ),
            (
                "duet_seal_mismatched_buckets_total",
                "counter",
                "Buckets whose batch recompute differed from the speed layer's state, over all seals.",
            ),
            (
                "duet_seal_max_relative_drift",
                "gauge",
                "Largest relative difference between batch and speed of any measure at the view's last seal (0 to 1).",
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (view, c) in &checks {
                let v = match name {
                    "duet_seal_mismatched_buckets" => c.mismatched.to_string(),
                    "duet_seal_mismatched_buckets_total" => c.mismatched_total.to_string(),
                    _ => format!("{}", c.max_drift),
                };
                let _ = writeln!(out, "{name}{{view=\"{view}\"}} {v}");
            }
        }
    }
    for src in &s.cfg.sources {
        if let Some(w) = s.store.watermark(&src.name).await? {
            let _ = writeln!(
                out,
                "duet_source_watermark_seconds{{source=\"{}\"}} {:.3}",
                src.name,
                w as f64 / 1000.0
            );
        }
    }
    // the last complete bucket of each view without dimensions, for business alerts
    let _ = writeln!(
        out,
        "# HELP duet_view_value A measure's value in its view's last complete bucket (views without dimensions; top-k lists are left out).\n# TYPE duet_view_value gauge"
    );
    let now = duet_speed::now_ms();
    for v in s.cfg.views.iter().filter(|v| v.dimensions.is_empty()) {
        let end = v.bucket_of(now);
        let m = merged(&s.lake, s.store.as_ref(), v, end - v.bucket_ms, end).await?;
        let states = m
            .rows
            .first()
            .map_or_else(|| v.identity(), |r| r.row.states.clone());
        for (measure, st) in v.measures.iter().zip(&states) {
            let value = match measure.kind.render(st) {
                Value::Number(n) => n.as_f64(),
                Value::String(t) => t.parse::<f64>().ok(),
                _ => None,
            };
            if let Some(x) = value {
                let _ = writeln!(
                    out,
                    "duet_view_value{{view=\"{}\",measure=\"{}\"}} {x}",
                    v.name, measure.name
                );
            }
        }
    }
    out.push_str(&s.metrics.render());
    let cache = s.lake.cache_counts().await;
    let _ = writeln!(
        out,
        "# HELP duet_serving_cache_total Reads of serving's lake caches, by result: the seal ledger's snapshot (reused while the ledger has not moved) and view tables' bucket_date partitions (kept while their files stay the same).\n# TYPE duet_serving_cache_total counter"
    );
    for (name, c) in [("ledger", cache.ledger), ("view_partitions", cache.views)] {
        let _ = writeln!(
            out,
            "duet_serving_cache_total{{cache=\"{name}\",result=\"hit\"}} {}\nduet_serving_cache_total{{cache=\"{name}\",result=\"miss\"}} {}",
            c.hits, c.misses
        );
    }
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        out,
    ))
}

/// The reference deployment's live page ("big screen"): orders and GMV per minute, hot
/// products, active users, freshness and sealed-until, read from this API every 2 s. Its
/// HTML, CSS and script are compiled into the binary (no CDN).
async fn big_screen() -> axum::response::Html<&'static str> {
    axum::response::Html(include_str!("../assets/index.html"))
}

/// 200 when serving can read the speed store and the lake's seal ledger (it can answer
/// queries), else 503 with the reason.
async fn ready(State(s): State<AppState>) -> Response {
    let store = s.store.stats().await.map(|_| ()).map_err(|e| e.to_string());
    let lake = s.lake.check().await.map_err(|e| e.to_string());
    match (store, lake) {
        (Ok(()), Ok(())) => {
            (axum::http::StatusCode::OK, Json(json!({"ready": true}))).into_response()
        }
        (store, lake) => (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"ready": false, "store": store.err(), "lake": lake.err()})),
        )
            .into_response(),
    }
}

/// `ok` when every part runs, `degraded` while one is failing and being restarted; each
/// part with its state, restarts and last error. Always 200: serving itself answers.
async fn health(State(s): State<AppState>) -> Json<Value> {
    let parts = s.parts.snapshot();
    let degraded = parts.values().any(|p| p.state == PartState::Restarting);
    let parts: serde_json::Map<String, Value> = parts
        .into_iter()
        .map(|(name, p)| {
            (
                name,
                json!({"state": p.state, "restarts": p.restarts, "last_error": p.last_error, "since": iso(p.since_ms)}),
            )
        })
        .collect();
    Json(json!({"status": if degraded { "degraded" } else { "ok" }, "parts": parts}))
}

async fn list_views(State(s): State<AppState>, grant: Option<Extension<Grant>>) -> Json<Value> {
    let views: Vec<Value> = s
        .cfg
        .views
        .iter()
        .filter(|v| grant.as_ref().is_none_or(|Extension(g)| g.allows(&v.name)))
        .map(|v| {
            json!({
                "name": v.name,
                "description": v.description,
                "source": v.source,
                "filter": v.filter_text,
                "time": v.time_field,
                "bucket": format_millis(v.bucket_ms),
                "bucket_ms": v.bucket_ms,
                "explode": v.explode,
                "dimensions": v.dimensions,
                "measures": v.measures.iter().map(|m| json!({
                    "name": m.name, "kind": m.kind.name(), "field": m.field, "by": m.by,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    Json(json!({"views": views}))
}

/// A header value from text that is always visible ASCII (times, numbers, hex).
fn header(v: String) -> HeaderValue {
    HeaderValue::from_str(&v).unwrap_or(HeaderValue::from_static(""))
}

/// A view query's answer, before it is encoded.
struct Answer<'v> {
    view: &'v ViewSpec,
    query: ViewQuery,
    rollup: Rollup,
    rolled: Rolled,
    merged: crate::query::Merged,
    last_applied: Option<i64>,
    now: i64,
}

/// Reads and rolls up the rows `query` asks of `view`.
async fn answer<'v>(
    s: &AppState,
    view: &'v ViewSpec,
    query: ViewQuery,
    now: i64,
) -> Result<Answer<'v>> {
    let rollup = Rollup::plan(view, &query.rollup)?;
    let (from, to) = (query.from, query.to);
    let mut m = merged(&s.lake, s.store.as_ref(), view, from, to).await?;
    if query.speed_only {
        // every bucket as the speed layer holds it, sealed or not (for verification)
        m.rows = s
            .store
            .read(&view.name, from, to)
            .await?
            .into_iter()
            .map(|row| crate::query::MergedRow {
                row,
                source: Provenance::Speed,
                late_pending: None,
            })
            .collect();
    }
    if m.rows.len() > MAX_ROWS_READ {
        return Err(Error::TooCostly(format!(
            "the query reads {} rows of `{}` (buckets × dimension values), more than the {MAX_ROWS_READ} one query may: narrow from/to",
            m.rows.len(),
            view.name
        )));
    }
    let rolled = rollup.apply(view, std::mem::take(&mut m.rows))?;
    let last_applied = m.last_commit_ms;
    Ok(Answer {
        view,
        query,
        rollup,
        rolled,
        merged: m,
        last_applied,
        now,
    })
}

impl Answer<'_> {
    fn next_cursor(&self) -> Option<String> {
        self.rolled
            .next
            .as_ref()
            .map(|c| cursor_text(&self.query, c))
    }

    /// The provenance as header names (lowercase) and values.
    fn provenance_headers(&self) -> Vec<(&'static str, String)> {
        let m = &self.merged;
        let mut meta: Vec<(&'static str, String)> = Vec::new();
        if let Some(v) = m.batch_version {
            meta.push(("duet-batch-version", v.to_string()));
        }
        if let Some(t) = m.sealed_until_all {
            meta.push(("duet-sealed-until", iso(t)));
        }
        if let Some(t) = m.speed_watermark {
            meta.push(("duet-speed-watermark", iso(t)));
        }
        if let Some(t) = self.last_applied {
            meta.push(("duet-freshness-ms", (self.now - t).max(0).to_string()));
        }
        if let Some(c) = self.next_cursor() {
            meta.push(("duet-next-cursor", c));
        }
        meta
    }

    /// The JSON document: rows and provenance.
    fn json(&self) -> Value {
        let mut body = self.envelope();
        body["rows"] = self.rows_value();
        body
    }

    /// Late events pending in the sealed buckets the output bucket starting at `bucket`
    /// covers.
    fn late_pending(&self, bucket: i64) -> i64 {
        self.merged
            .late_pending
            .range(bucket..bucket.saturating_add(self.rollup.grain_ms()))
            .map(|(_, n)| n)
            .sum()
    }

    /// The JSON document as bytes, the same as `serde_json::to_vec(&self.json())` (keys in
    /// order), with the rows written straight into the buffer: building and dropping a value
    /// tree per row was most of the cost of a 24-hour minute answer.
    fn json_bytes(&self) -> Vec<u8> {
        let mut envelope = self.envelope();
        envelope["rows"] = Value::Null;
        let envelope = serde_json::to_vec(&envelope).unwrap_or_default();
        // an unescaped `"rows":null` can only be the key itself (quotes in strings are escaped)
        const PLACEHOLDER: &[u8] = b"\"rows\":null";
        let Some(at) = envelope
            .windows(PLACEHOLDER.len())
            .position(|w| w == PLACEHOLDER)
        else {
            return serde_json::to_vec(&self.json()).unwrap_or_default();
        };
        // the rows reserve their room after the first (`write_rows`)
        let mut out = Vec::with_capacity(envelope.len() + 256);
        out.extend_from_slice(&envelope[..at]);
        out.extend_from_slice(b"\"rows\":");
        self.write_rows(&mut out);
        out.extend_from_slice(&envelope[at + PLACEHOLDER.len()..]);
        out
    }

    /// Writes the rows as [`Answer::rows_value`] renders them, keys in order.
    fn write_rows(&self, out: &mut Vec<u8>) {
        fn put<T: serde::Serialize + ?Sized>(out: &mut Vec<u8>, v: &T) {
            let _ = serde_json::to_writer(&mut *out, v);
        }
        let (spec, m) = (self.view, &self.merged);
        let dims = self.rollup.dimensions(spec);
        // objects print their keys in order, as serde_json's maps do
        let mut dim_order: Vec<usize> = (0..dims.len()).collect();
        dim_order.sort_by_key(|&i| dims[i]);
        let mut measure_order: Vec<usize> = (0..spec.measures.len()).collect();
        measure_order.sort_by_key(|&i| spec.measures[i].name.as_str());
        // each name's JSON key (`"gmv":`), escaped once per answer, not once per row
        let key = |name: &str| {
            let mut k = serde_json::to_vec(name).unwrap_or_default();
            k.push(b':');
            k
        };
        let dim_keys: Vec<(usize, Vec<u8>)> =
            dim_order.iter().map(|&i| (i, key(dims[i]))).collect();
        let measure_keys: Vec<(usize, Vec<u8>)> = measure_order
            .iter()
            .map(|&i| (i, key(&spec.measures[i].name)))
            .collect();
        let mut times = duet_config::time::IsoWriter::default();
        out.push(b'[');
        for (n, r) in self.rolled.rows.iter().enumerate() {
            let row_start = out.len();
            if n > 0 {
                out.push(b',');
            }
            out.push(b'{');
            if r.batch_rows > 0 {
                out.extend_from_slice(b"\"batch_version\":");
                put(out, &m.batch_version);
                out.push(b',');
            }
            out.extend_from_slice(b"\"bucket\":");
            match times.bytes(r.bucket) {
                Some(b) => {
                    out.push(b'"');
                    out.extend_from_slice(&b);
                    out.push(b'"');
                }
                None => put(out, &iso(r.bucket)),
            }
            out.extend_from_slice(b",\"bucket_ms\":");
            put(out, &r.bucket);
            out.extend_from_slice(b",\"dims\":{");
            let mut first = true;
            for (i, k) in &dim_keys {
                let Some(v) = r.dims.get(*i) else {
                    continue;
                };
                if !std::mem::take(&mut first) {
                    out.push(b',');
                }
                out.extend_from_slice(k);
                put(out, v);
            }
            out.push(b'}');
            let mut first = true;
            for (i, k) in &measure_keys {
                let (Some(measure), Some(state)) = (spec.measures.get(*i), r.states.get(*i)) else {
                    continue;
                };
                if let Some(p) = measure.kind.problem(state) {
                    out.extend_from_slice(if std::mem::take(&mut first) {
                        b",\"errors\":{"
                    } else {
                        b","
                    });
                    out.extend_from_slice(k);
                    put(out, &p);
                }
            }
            if !first {
                out.push(b'}');
            }
            if r.batch_rows > 0 {
                let late = self.late_pending(r.bucket);
                if late > 0 {
                    out.extend_from_slice(b",\"late_pending\":");
                    put(out, &late);
                }
            }
            // the sources are fixed words: nothing to escape
            out.extend_from_slice(b",\"source\":\"");
            out.extend_from_slice(r.source().as_bytes());
            out.extend_from_slice(b"\",\"values\":{");
            let mut first = true;
            for (i, k) in &measure_keys {
                let (Some(measure), Some(state)) = (spec.measures.get(*i), r.states.get(*i)) else {
                    continue;
                };
                if !std::mem::take(&mut first) {
                    out.push(b',');
                }
                out.extend_from_slice(k);
                measure.kind.write_json(state, out);
            }
            out.extend_from_slice(b"}}");
            if n == 0 {
                // the rest at about the first row's size, with room to spare: one allocation
                let rest = self.rolled.rows.len() - 1;
                out.reserve((out.len() - row_start + 16) * rest);
            }
        }
        out.push(b']');
    }

    /// The rows as a JSON value.
    fn rows_value(&self) -> Value {
        let (spec, m) = (self.view, &self.merged);
        let dims = self.rollup.dimensions(spec);
        Value::Array(
            self.rolled
                .rows
                .iter()
                .map(|r| {
                    let dims: serde_json::Map<String, Value> = dims
                        .iter()
                        .zip(&r.dims)
                        .map(|(d, v)| (d.to_string(), v.clone().map_or(Value::Null, Value::String)))
                        .collect();
                    let mut o = json!({
                        "bucket": iso(r.bucket),
                        "bucket_ms": r.bucket,
                        "dims": dims,
                        "values": spec.render(&r.states),
                        "source": r.source(),
                    });
                    if r.batch_rows > 0 {
                        o["batch_version"] = json!(m.batch_version);
                        let late = self.late_pending(r.bucket);
                        if late > 0 {
                            o["late_pending"] = json!(late);
                        }
                    }
                    let errors: serde_json::Map<String, Value> = spec
                        .measures
                        .iter()
                        .zip(&r.states)
                        .filter_map(|(m, st)| {
                            m.kind.problem(st).map(|p| (m.name.clone(), json!(p)))
                        })
                        .collect();
                    if !errors.is_empty() {
                        o["errors"] = Value::Object(errors);
                    }
                    o
                })
                .collect(),
        )
    }

    /// The JSON document without its rows.
    fn envelope(&self) -> Value {
        let (spec, m, now) = (self.view, &self.merged, self.now);
        let (from, to) = (self.query.from, self.query.to);
        let grain = self.rollup.grain_ms();
        let dims = self.rollup.dimensions(spec);
        let mut body = json!({
            "view": spec.name,
            "from": iso(from),
            "to": iso(to),
            "bucket": format_millis(spec.bucket_ms),
            "grain": format_millis(grain),
            "dimensions": dims,
            "next_cursor": self.next_cursor(),
            "provenance": {
                "batch_version": m.batch_version,
                "sealed": m.sealed.iter().map(|i| json!({"from": iso(i.from), "to": iso(i.to)})).collect::<Vec<_>>(),
                "sealed_until": m.sealed_until_all.map(iso),
                "late_pending": m.late_pending.iter().map(|(b, n)| json!({"bucket": iso(*b), "events": n})).collect::<Vec<_>>(),
                "speed_watermark": m.speed_watermark.map(iso),
                "event_time_lag_ms": m.speed_watermark.map(|w| (now - w).max(0)),
                "last_applied": self.last_applied.map(iso),
                "freshness_ms": self.last_applied.map(|t| (now - t).max(0)),
            },
        });
        if self.query.defaulted {
            body["default_range"] = json!(format!(
                "{} buckets up to the end of the current one; pass from and to (RFC 3339 or epoch ms) for another range",
                (to - from) / spec.bucket_ms
            ));
        }
        if self.rolled.rows.is_empty() && self.query.defaulted && self.query.rollup.after.is_none()
        {
            // say where the data is, if there is any
            let newest = m
                .speed_watermark
                .into_iter()
                .chain(m.sealed_until_all)
                .max();
            if let Some(t) = newest.filter(|t| *t < from) {
                body["hint"] = json!(format!(
                    "no rows in the default range; this view's newest data is at {}: pass from and to to read it",
                    iso(t)
                ));
            }
        }
        body
    }
}

/// The view named `view`, if the request's grant (if any) covers it.
fn granted_view<'s>(
    s: &'s AppState,
    view: &str,
    grant: Option<&Extension<Grant>>,
) -> Result<&'s ViewSpec> {
    if let Some(Extension(g)) = grant {
        g.check(view)?;
    }
    s.cfg
        .view(view)
        .ok_or_else(|| Error::UnknownView(view.to_string()))
}

async fn query_view(
    State(s): State<AppState>,
    Path(view): Path<String>,
    grant: Option<Extension<Grant>>,
    headers: HeaderMap,
    q: std::result::Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Response> {
    let spec = granted_view(&s, &view, grant.as_ref())?;
    let Query(q) = q.map_err(bad_query)?;
    let now = duet_speed::now_ms();
    let accept = headers.get(ACCEPT).and_then(|v| v.to_str().ok());
    let vq = view_query(spec, &q, accept, now)?;
    let format = vq.format;
    let a = answer(&s, spec, vq, now).await?;
    for r in &a.rolled.rows {
        s.metrics.rows(r.source(), 1);
    }
    let meta = a.provenance_headers();
    let mut out_headers = HeaderMap::new();
    out_headers.insert(CONTENT_TYPE, HeaderValue::from_static(format.media_type()));
    for (name, value) in &meta {
        out_headers.insert(*name, header(value.clone()));
    }
    if format == Format::Json {
        return Ok((out_headers, a.json_bytes()).into_response());
    }
    let mut metadata: HashMap<String, String> = meta
        .into_iter()
        .map(|(k, v)| (k.replace('-', "."), v))
        .collect();
    metadata.insert("duet.view".into(), spec.name.clone());
    metadata.insert("duet.grain".into(), format_millis(a.rollup.grain_ms()));
    let dims = a.rollup.dimensions(spec);
    let batch = record_batch(
        spec,
        &dims,
        &a.rolled.rows,
        a.merged.batch_version,
        false,
        metadata,
    )?;
    let body = match format {
        Format::Csv => table::csv(&batch)?,
        _ => table::arrow_stream(&batch)?,
    };
    Ok((out_headers, body).into_response())
}

/// A live stream (Server-Sent Events) of a view's newest buckets: an event `rows` with the
/// JSON answer for the last `buckets` output buckets whenever it changes, checked every
/// `every`; a comment keeps idle connections open.
async fn live_view(
    State(s): State<AppState>,
    Path(view): Path<String>,
    grant: Option<Extension<Grant>>,
    q: std::result::Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Response> {
    let spec = granted_view(&s, &view, grant.as_ref())?.clone();
    let Query(q) = q.map_err(bad_query)?;
    let live = live_query(&spec, &q)?;
    // refuse a bad roll-up now, not in the stream
    Rollup::plan(&spec, &live.rollup)?;
    let stream = futures::stream::unfold(
        (s, spec, live, None::<String>, true),
        |(s, spec, live, mut last, mut first)| async move {
            loop {
                if !first {
                    tokio::time::sleep(std::time::Duration::from_millis(
                        u64::try_from(live.every_ms).unwrap_or(1000),
                    ))
                    .await;
                }
                first = false;
                let now = duet_speed::now_ms();
                let event = match answer(&s, &spec, live.at(&spec, now), now).await {
                    Ok(a) => {
                        let body = a.json();
                        // changed rows or seals: send (freshness alone does not count)
                        let key = json!([
                            body["rows"],
                            body["provenance"]["sealed"],
                            body["provenance"]["batch_version"]
                        ])
                        .to_string();
                        if last.as_ref() == Some(&key) {
                            continue;
                        }
                        last = Some(key);
                        Event::default().event("rows").data(body.to_string())
                    }
                    Err(e) => {
                        tracing::warn!(view = %spec.name, error = %e, "Live view query failed; retrying.");
                        last = None;
                        Event::default().event("error").data(
                            json!({"error": {"message": "the query failed; retrying"}}).to_string(),
                        )
                    }
                };
                return Some((
                    Ok::<Event, std::convert::Infallible>(event),
                    (s, spec, live, last, false),
                ));
            }
        },
    );
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}

async fn quarantine(
    State(s): State<AppState>,
    grant: Option<Extension<Grant>>,
    q: std::result::Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Json<Value>> {
    if let Some(Extension(g)) = &grant {
        g.check_all("the quarantine")?;
    }
    let Query(q) = q.map_err(bad_query)?;
    let limit = match q.get("limit") {
        None => 100,
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=10_000).contains(n))
            .ok_or_else(|| Error::BadParam {
                name: "limit",
                message: format!("expected an integer from 1 to 10000, found {v:?}"),
            })?,
    };
    let items: Vec<Value> = s
        .store
        .quarantine(limit)
        .await?
        .into_iter()
        .map(|r| {
            json!({
                "source": r.source, "topic": r.topic, "partition": r.partition, "offset": r.offset,
                "reason": r.reason, "payload": String::from_utf8_lossy(&r.payload), "at": iso(r.at_ms),
            })
        })
        .collect();
    Ok(Json(json!({"quarantine": items})))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use duet_config::{Num, State};
    use duet_speed::store::StateKey;
    use duet_speed::{EmbeddedStore, SpeedBatch};
    use tower::ServiceExt;

    /// The bytes the JSON answers are written as are the bytes of their value tree, for
    /// every shape of row: grouped or not, rolled up, with errors, from batch with late
    /// events pending, with null dimensions.
    #[tokio::test]
    async fn written_json_equals_the_value_tree() {
        let dir = tempfile::tempdir().unwrap();
        let (state, _) = crate::testkit::fixture(dir.path()).await;
        let now = 10_000_000;
        for (view, params) in [
            ("gmv", "from=0&to=7200000"),
            ("gmv", "from=0&to=7200000&grain=1h"),
            ("gmv", "from=0&to=7200000&group_by="),
            (
                "gmv",
                "from=0&to=7200000&where=city%3D%27Beijing%27&order=-gmv&limit=3",
            ),
            ("buyers", "from=0&to=7200000"),
            ("buyers", "from=0&to=7200000&grain=2h"),
        ] {
            let q: HashMap<String, String> = params
                .split('&')
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| {
                    let v = v.replace("%3D", "=").replace("%27", "'");
                    (k.to_string(), v)
                })
                .collect();
            let spec = state.cfg.view(view).unwrap();
            let vq = view_query(spec, &q, None, now).unwrap();
            let mut a = answer(&state, spec, vq, now).await.unwrap();
            assert!(!a.rolled.rows.is_empty(), "{view}?{params}");
            let written = a.json_bytes();
            assert_eq!(
                String::from_utf8(written).unwrap(),
                serde_json::to_string(&a.json()).unwrap(),
                "{view}?{params}"
            );
            // as if the first rows came from a batch table with late events pending
            a.merged.batch_version = Some(7);
            for r in a.rolled.rows.iter_mut().take(2) {
                r.batch_rows = 1;
                a.merged.late_pending.insert(r.bucket, 4);
            }
            if let Some(r) = a.rolled.rows.get_mut(2) {
                r.dims.iter_mut().for_each(|d| *d = None);
            }
            assert_eq!(
                String::from_utf8(a.json_bytes()).unwrap(),
                serde_json::to_string(&a.json()).unwrap(),
                "{view}?{params} (batch rows)"
            );
        }
    }

    async fn app(dir: &std::path::Path) -> Router {
        app_and_store(dir).await.0
    }

    async fn app_and_store(dir: &std::path::Path) -> (Router, Arc<EmbeddedStore>) {
        let (state, store) = crate::testkit::fixture(dir).await;
        (router(state), store)
    }

    async fn get(app: &Router, uri: &str) -> (StatusCode, Value) {
        let r = app
            .clone()
            .oneshot(Request::get(uri).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = r.status();
        let bytes = axum::body::to_bytes(r.into_body(), 1 << 20).await.unwrap();
        (status, serde_json::from_slice(&bytes).unwrap())
    }

    #[tokio::test]
    async fn serves_open_buckets_from_speed() {
        let dir = tempfile::tempdir().unwrap();
        let app = app(dir.path()).await;
        let (s, body) = get(&app, "/v1/views/gmv?from=0&to=180000").await;
        assert_eq!(s, StatusCode::OK, "{body}");
        assert_eq!(
            body["rows"],
            json!([{"bucket": "1970-01-01T00:01:00.000Z", "bucket_ms": 60000, "dims": {"city": "Hangzhou"},
                    "values": {"gmv": "129.90", "n": 1}, "source": "speed"},
                   {"bucket": "1970-01-01T00:02:00.000Z", "bucket_ms": 120000, "dims": {"city": "Hangzhou"},
                    "values": {"gmv": null, "n": 2}, "source": "speed",
                    "errors": {"gmv": "the sum overflowed 38 digits in this bucket"}}])
        );
        assert_eq!(body["provenance"]["sealed"], json!([]));
        assert_eq!(
            body["provenance"]["event_time_lag_ms"]
                .as_i64()
                .map(|l| l > 0),
            Some(true)
        );
        assert!(body["provenance"]["last_applied"].is_string(), "{body}");
        assert!(body.get("default_range").is_none());
        // the default range (the last 60 minutes) holds nothing: the answer says where the data is
        let (s, body) = get(&app, "/v1/views/gmv").await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(body["rows"], json!([]));
        assert!(
            body["default_range"]
                .as_str()
                .unwrap()
                .starts_with("60 buckets"),
            "{body}"
        );
        assert_eq!(
            body["hint"],
            "no rows in the default range; this view's newest data is at 1970-01-01T00:02:00.000Z: pass from and to to read it"
        );
        let (s, body) = get(&app, "/v1/views").await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(body["views"][0]["measures"][0]["kind"], "sum");
        let (s, body) = get(&app, "/health").await;
        assert_eq!(
            (s, body),
            (StatusCode::OK, json!({"status": "ok", "parts": {}}))
        );
        // the OpenAPI document describes every route the router serves
        let (s, doc) = get(&app, "/v1/openapi.json").await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(doc["openapi"], "3.1.0");
        let paths: Vec<&str> = doc["paths"]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        for route in [
            "/",
            "/health",
            "/ready",
            "/metrics",
            "/v1/openapi.json",
            "/v1/views",
            "/v1/views/{view}",
            "/v1/views/{view}/live",
            "/v1/quarantine",
        ] {
            assert!(paths.contains(&route), "{route} missing from {paths:?}");
            let probe = route.replace("{view}", "gmv");
            let r = app
                .clone()
                .oneshot(Request::get(&probe).body(Body::empty()).unwrap())
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::OK, "{probe}");
        }
        assert_eq!(paths.len(), 9);
        // and, on the routes that need a token, the refusals every such route may give
        let query = &doc["paths"]["/v1/views/{view}"]["get"];
        for code in ["400", "401", "403", "404", "414", "429", "503"] {
            assert!(query["responses"][code].is_object(), "{code}");
        }
        assert_eq!(query["security"], json!([{"bearer": []}]));
        assert!(doc["paths"]["/health"]["get"]["security"].is_null());
        assert_eq!(
            doc["components"]["securitySchemes"]["bearer"]["scheme"],
            "bearer"
        );
        // metrics: counters and the watermark of a source the store has seen
        let r = app
            .clone()
            .oneshot(Request::get("/metrics").body(Body::empty()).unwrap())
            .await
            .unwrap();
        let text = String::from_utf8(
            axum::body::to_bytes(r.into_body(), 1 << 20)
                .await
                .unwrap()
                .to_vec(),
        )
        .unwrap();
        assert!(text.contains("# TYPE duet_speed_events_applied_total counter\nduet_speed_events_applied_total 0\n"), "{text}");
        assert!(
            text.contains("duet_speed_commit_seconds_bucket{le=\"0.001\"} 0\n"),
            "{text}"
        );
        assert!(
            text.contains("duet_speed_commit_seconds_count 0\n"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE duet_speed_consumer_lag gauge\n"),
            "{text}"
        );
        assert!(
            text.contains("duet_source_watermark_seconds{source=\"orders\"} 120.000"),
            "{text}"
        );
        // serving's own: the requests above by route and status, and the rows they served
        assert!(
            text.contains("duet_serving_requests_total{protocol=\"http\",route=\"/v1/views/{view}\",status=\"200\"} "),
            "{text}"
        );
        assert!(
            text.contains(
                "duet_serving_requests_total{protocol=\"http\",route=\"/ready\",status=\"200\"} 1\n"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "duet_serving_request_seconds_count{protocol=\"http\",route=\"/health\"} "
            ),
            "{text}"
        );
        assert!(
            text.contains("duet_serving_rows_total{source=\"speed\"} "),
            "{text}"
        );
    }

    async fn get_raw(
        app: &Router,
        uri: &str,
        accept: Option<&str>,
    ) -> (StatusCode, HeaderMap, axum::body::Bytes) {
        let mut req = Request::get(uri);
        if let Some(a) = accept {
            req = req.header(ACCEPT, a);
        }
        let r = app
            .clone()
            .oneshot(req.body(Body::empty()).unwrap())
            .await
            .unwrap();
        let (status, headers) = (r.status(), r.headers().clone());
        let bytes = axum::body::to_bytes(r.into_body(), 1 << 24).await.unwrap();
        (status, headers, bytes)
    }

    const HOUR2: &str = "from=3600000&to=7200000";

    #[tokio::test]
    async fn queries_roll_up_filter_and_order() {
        let dir = tempfile::tempdir().unwrap();
        let app = app(dir.path()).await;
        // the hour, all cities: 5 minutes × (1.00+2.00+…) + cents, counts summed
        let (s, body) = get(&app, &format!("/v1/views/gmv?{HOUR2}&grain=1h&group_by=")).await;
        assert_eq!(s, StatusCode::OK, "{body}");
        assert_eq!(body["grain"], "1h");
        assert_eq!(body["dimensions"], json!([]));
        assert_eq!(
            body["rows"],
            json!([{"bucket": "1970-01-01T01:00:00.000Z", "bucket_ms": 3600000, "dims": {},
                    "values": {"gmv": "45.15", "n": 60}, "source": "speed"}])
        );
        assert_eq!(body["next_cursor"], Value::Null);
        // two cities per 5 minutes, most orders first
        let (s, body) = get(
            &app,
            &format!("/v1/views/gmv?{HOUR2}&grain=5m&where=city%20IN%20(%27Beijing%27,%27Shanghai%27)&order=n%20desc"),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{body}");
        let rows: Vec<(&str, &Value)> = body["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| (r["dims"]["city"].as_str().unwrap(), &r["values"]))
            .collect();
        assert_eq!(
            rows,
            vec![
                ("Shanghai", &json!({"gmv": "15.10", "n": 25})),
                ("Beijing", &json!({"gmv": "15.00", "n": 15})),
            ]
        );
        // <> keeps the other cities; a minute grain keeps the view's own rows
        let (_, body) = get(
            &app,
            &format!("/v1/views/gmv?{HOUR2}&where=city%3C%3E%27Hangzhou%27&order=-bucket&limit=2"),
        )
        .await;
        let rows: Vec<(i64, &str)> = body["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["bucket_ms"].as_i64().unwrap(),
                    r["dims"]["city"].as_str().unwrap(),
                )
            })
            .collect();
        assert_eq!(rows, vec![(3_840_000, "Beijing"), (3_840_000, "Shanghai")]);
        assert!(body["next_cursor"].is_string());
    }

    #[tokio::test]
    async fn pages_follow_cursors_to_the_whole_answer() {
        let dir = tempfile::tempdir().unwrap();
        let app = app(dir.path()).await;
        let base = format!("/v1/views/gmv?{HOUR2}&order=gmv%20desc");
        let (_, whole) = get(&app, &base).await;
        let whole = whole["rows"].as_array().unwrap().clone();
        assert_eq!(whole.len(), 15);
        let mut joined = Vec::new();
        let mut uri = format!("{base}&limit=4");
        let mut pages = 0;
        loop {
            let (s, headers, bytes) = get_raw(&app, &uri, None).await;
            assert_eq!(s, StatusCode::OK);
            let body: Value = serde_json::from_slice(&bytes).unwrap();
            joined.extend(body["rows"].as_array().unwrap().iter().cloned());
            pages += 1;
            match body["next_cursor"].as_str() {
                Some(c) => {
                    assert_eq!(headers["duet-next-cursor"], c);
                    uri = format!("{base}&limit=4&cursor={c}");
                }
                None => {
                    assert!(!headers.contains_key("duet-next-cursor"));
                    break;
                }
            }
        }
        assert_eq!(pages, 4);
        assert_eq!(joined, whole);
        // a cursor continues only its own query
        let (_, first) = get(&app, &format!("{base}&limit=4")).await;
        let c = first["next_cursor"].as_str().unwrap();
        let (s, body) = get(
            &app,
            &format!("/v1/views/gmv?{HOUR2}&order=n&limit=4&cursor={c}"),
        )
        .await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("the cursor belongs to another query"),
            "{body}"
        );
    }

    #[tokio::test]
    async fn answers_come_as_csv_and_arrow_with_provenance_in_headers() {
        let dir = tempfile::tempdir().unwrap();
        let app = app(dir.path()).await;
        let uri = format!("/v1/views/gmv?{HOUR2}&grain=1h&order=city");
        let (s, headers, bytes) = get_raw(&app, &format!("{uri}&format=csv"), None).await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(headers[CONTENT_TYPE], "text/csv; charset=utf-8");
        assert!(headers.contains_key("duet-freshness-ms"));
        assert!(headers.contains_key("duet-speed-watermark"));
        assert_eq!(
            String::from_utf8(bytes.to_vec()).unwrap(),
            "bucket,city,gmv,n,_source,_batch_version\n\
             1970-01-01T01:00:00Z,Beijing,15.00,15,speed,\n\
             1970-01-01T01:00:00Z,Hangzhou,15.05,20,speed,\n\
             1970-01-01T01:00:00Z,Shanghai,15.10,25,speed,\n"
        );
        // the same through the Accept header
        let (_, headers, csv_again) = get_raw(&app, &uri, Some("text/csv")).await;
        assert_eq!(headers[CONTENT_TYPE], "text/csv; charset=utf-8");
        assert_eq!(csv_again, bytes);

        let (s, headers, bytes) =
            get_raw(&app, &uri, Some("application/vnd.apache.arrow.stream")).await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(headers[CONTENT_TYPE], "application/vnd.apache.arrow.stream");
        let reader =
            arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes.to_vec()), None)
                .unwrap();
        let schema = reader.schema();
        assert_eq!(schema.metadata()["duet.view"], "gmv");
        assert_eq!(schema.metadata()["duet.grain"], "1h");
        let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(
            names,
            ["bucket", "city", "gmv", "n", "_source", "_batch_version"]
        );
        assert_eq!(
            schema.field(2).data_type(),
            &arrow::datatypes::DataType::Decimal128(38, 2)
        );
        let batches: Vec<_> = reader.map(|b| b.unwrap()).collect();
        assert_eq!(batches.len(), 1);
        let gmv = batches[0]
            .column(2)
            .as_any()
            .downcast_ref::<arrow::array::Decimal128Array>()
            .unwrap();
        assert_eq!(gmv.values().to_vec(), vec![1500, 1505, 1510]);
        let n = batches[0]
            .column(3)
            .as_any()
            .downcast_ref::<arrow::array::Int64Array>()
            .unwrap();
        assert_eq!(n.values().to_vec(), vec![15, 20, 25]);
        // an overflowed sum is null in the table, as in JSON
        let (_, _, bytes) =
            get_raw(&app, "/v1/views/gmv?from=120000&to=180000&format=csv", None).await;
        assert!(
            String::from_utf8(bytes.to_vec())
                .unwrap()
                .ends_with("1970-01-01T00:02:00Z,Hangzhou,,2,speed,\n")
        );
    }

    #[tokio::test]
    async fn tokens_guard_the_api_by_view_and_rate() {
        use crate::auth::hash_hex;
        let dir = tempfile::tempdir().unwrap();
        let (mut state, _) = crate::testkit::fixture(dir.path()).await;
        let mut cfg = (*state.cfg).clone();
        let token =
            |name: &str, secret: &str, views: &[&str], rate: u32| duet_config::TokenConfig {
                name: name.into(),
                sha256: Some(hash_hex(secret)),
                pg_password: None,
                views: views.iter().map(|v| v.to_string()).collect(),
                rate,
            };
        cfg.serving.tokens = vec![
            token("admin", "admin-secret", &["*"], 100),
            token("grafana", "grafana-secret", &["gmv"], 100),
            token("slow", "slow-secret", &["*"], 1),
        ];
        state.cfg = Arc::new(cfg);
        let app = router(state);
        let ask = |uri: &'static str, token: Option<&'static str>| {
            let app = app.clone();
            async move {
                let mut req = Request::get(uri);
                if let Some(t) = token {
                    req = req.header("authorization", format!("Bearer {t}"));
                }
                let r = app.oneshot(req.body(Body::empty()).unwrap()).await.unwrap();
                let (status, headers) = (r.status(), r.headers().clone());
                let bytes = axum::body::to_bytes(r.into_body(), 1 << 20).await.unwrap();
                (
                    status,
                    headers,
                    String::from_utf8_lossy(&bytes).into_owned(),
                )
            }
        };
        let (s, h, body) = ask("/v1/views/gmv?from=0&to=180000", None).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{body}");
        assert_eq!(h["www-authenticate"], "Bearer realm=\"duet\"");
        assert!(body.contains("Authorization: Bearer"), "{body}");
        let (s, _, body) = ask("/v1/views/gmv?from=0&to=180000", Some("guess")).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{body}");
        assert_eq!(ask("/health", None).await.0, StatusCode::OK);
        assert_eq!(ask("/ready", None).await.0, StatusCode::OK);
        // a token scoped to one view reads it, and nothing else
        let g = Some("grafana-secret");
        assert_eq!(
            ask("/v1/views/gmv?from=0&to=180000", g).await.0,
            StatusCode::OK
        );
        let (s, _, body) = ask("/v1/views/buyers", g).await;
        assert_eq!(s, StatusCode::FORBIDDEN);
        assert!(
            body.contains("token `grafana` may not read view `buyers`"),
            "{body}"
        );
        assert_eq!(
            ask("/v1/views/buyers/live", g).await.0,
            StatusCode::FORBIDDEN
        );
        let (_, _, list) = ask("/v1/views", g).await;
        let list: Value = serde_json::from_str(&list).unwrap();
        assert_eq!(list["views"].as_array().unwrap().len(), 1);
        assert_eq!(ask("/v1/quarantine", g).await.0, StatusCode::FORBIDDEN);
        assert_eq!(ask("/metrics", g).await.0, StatusCode::FORBIDDEN);
        // an all-views token reads the quarantine and metrics
        let a = Some("admin-secret");
        assert_eq!(ask("/v1/quarantine", a).await.0, StatusCode::OK);
        assert_eq!(ask("/metrics", a).await.0, StatusCode::OK);
        // over its rate: 429 with Retry-After
        let slow = Some("slow-secret");
        assert_eq!(ask("/v1/views", slow).await.0, StatusCode::OK);
        let (s, h, body) = ask("/v1/views", slow).await;
        assert_eq!(s, StatusCode::TOO_MANY_REQUESTS, "{body}");
        assert_eq!(h["retry-after"], "1");
    }

    #[tokio::test]
    async fn the_live_stream_sends_the_newest_buckets_when_they_change() {
        use futures::StreamExt;
        let dir = tempfile::tempdir().unwrap();
        let (app, store) = app_and_store(dir.path()).await;
        let (s, body) = get(&app, "/v1/views/gmv/live?buckets=0").await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("from 1 to 1440")
        );
        let (s, _) = get(&app, "/v1/views/gmv/live?grain=90s").await;
        assert_eq!(s, StatusCode::BAD_REQUEST);

        let r = app
            .clone()
            .oneshot(
                Request::get("/v1/views/gmv/live?every=100ms&group_by=&buckets=2")
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()[CONTENT_TYPE], "text/event-stream");
        let mut frames = r.into_body().into_data_stream();
        let mut text = String::new();
        // the next `rows` event's data
        let mut next_rows = async || -> Value {
            loop {
                if let Some(end) = text.find("\n\n") {
                    let event: String = text.drain(..end + 2).collect();
                    if let Some(data) = event.strip_prefix("event: rows\ndata: ") {
                        return serde_json::from_str(data.trim_end()).unwrap();
                    }
                    continue;
                }
                let chunk = tokio::time::timeout(std::time::Duration::from_secs(10), frames.next())
                    .await
                    .expect("an event within 10 s")
                    .unwrap()
                    .unwrap();
                text.push_str(std::str::from_utf8(&chunk).unwrap());
            }
        };
        let first = next_rows().await;
        assert_eq!(first["rows"], json!([]));
        assert_eq!(first["grain"], "1m");
        // a commit to the current minute is pushed
        let now = duet_speed::now_ms();
        let mut b = SpeedBatch::default();
        b.unpartitioned().deltas.insert(
            StateKey {
                view: "gmv".into(),
                bucket: now - now.rem_euclid(60_000),
                dims: vec![Some("Hangzhou".into())],
            },
            vec![State::Sum(Num::Dec(500)), State::Count(3)],
        );
        store.commit(b).await.unwrap();
        let second = next_rows().await;
        assert_eq!(
            second["rows"][0]["values"],
            json!({"gmv": "5.00", "n": 3}),
            "{second}"
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(300))]

        /// Any query string on the query endpoints gets a 200 or a 4xx with a JSON message;
        /// never a 5xx, never a panic.
        #[test]
        fn any_query_string_gets_an_answer(
            q in proptest::collection::vec(
                (
                    proptest::sample::select(vec![
                        "from", "to", "limit", "x", "", "from[]", "grain", "group_by", "where",
                        "order", "cursor", "format", "layer",
                    ]),
                    proptest::prop_oneof![
                        "[-0-9]{0,22}",
                        "[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:.]{0,12}(Z|[+-][0-9]{2}:[0-9]{2})?",
                        "%[0-9A-Fa-f]{2}|%|%zz|\\PC{0,6}",
                        "[0-9]{0,4}(ms|s|m|h|d)?",
                        "(city|n|gmv|bucket|-n|x)(,| |%20desc|%20asc)?(city)?",
                        "(city|\\(|%27|%20|=|<>|IN|AND|OR|NOT|,|[a-z]{1,3}|\\)){0,12}",
                        "(csv|arrow|json|[0-9a-f]{0,40})",
                    ],
                ),
                0..4,
            ),
            path in proptest::sample::select(vec!["/v1/views/gmv", "/v1/quarantine", "/v1/views/%E2%80%AE"]),
        ) {
            let query: Vec<String> = q.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let uri = format!("{path}?{}", query.join("&"));
            let Ok(request) = Request::get(&uri).body(Body::empty()) else {
                return Ok(()); // not a URI a client could send
            };
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let dir = tempfile::tempdir().unwrap();
            let (status, body) = rt.block_on(async {
                let app = app(dir.path()).await;
                let r = app.oneshot(request).await.unwrap();
                let status = r.status();
                (status, axum::body::to_bytes(r.into_body(), 1 << 20).await.unwrap())
            });
            proptest::prop_assert!(status.is_success() || status.is_client_error(), "{uri}: {status}");
            if !status.is_success() {
                let body: Value = serde_json::from_slice(&body).unwrap();
                proptest::prop_assert!(body["error"]["message"].is_string(), "{uri}: {body}");
            }
        }
    }

    #[tokio::test]
    async fn bad_requests_get_json_errors() {
        let dir = tempfile::tempdir().unwrap();
        let app = app(dir.path()).await;
        for (uri, status, code, needle) in [
            (
                "/v1/views/nope",
                StatusCode::NOT_FOUND,
                "unknown_view",
                "nope",
            ),
            (
                "/v1/nothing",
                StatusCode::NOT_FOUND,
                "not_found",
                "/v1/nothing",
            ),
            (
                "/v1/views/gmv?from=noon",
                StatusCode::BAD_REQUEST,
                "bad_request",
                "RFC 3339",
            ),
            (
                "/v1/views/gmv?from=5000&to=1000",
                StatusCode::BAD_REQUEST,
                "bad_request",
                "before",
            ),
            (
                "/v1/views/gmv?from=0&to=99999999999999",
                StatusCode::BAD_REQUEST,
                "bad_request",
                "buckets",
            ),
            (
                "/v1/views/gmv?form=1",
                StatusCode::BAD_REQUEST,
                "bad_request",
                "unknown query parameter `form` (expected from, to, layer, grain, group_by, where, order, limit, cursor, format)",
            ),
            (
                "/v1/views/gmv?grain=90s",
                StatusCode::BAD_REQUEST,
                "bad_request",
                "90s is not a whole multiple of the view's bucket (1m)",
            ),
            (
                "/v1/views/gmv?grain=soon",
                StatusCode::BAD_REQUEST,
                "bad_request",
                "expected a duration such as 1m, 1h or 1d",
            ),
            (
                "/v1/views/gmv?group_by=shop",
                StatusCode::BAD_REQUEST,
                "bad_request",
                "`shop` is not a dimension of `gmv` (it has: city)",
            ),
            (
                "/v1/views/gmv?where=city%20%3E%20%27A%27",
                StatusCode::BAD_REQUEST,
                "bad_request",
                "`>` is not supported",
            ),
            (
                "/v1/views/gmv?order=gmv%20sideways",
                StatusCode::BAD_REQUEST,
                "bad_request",
                "expected asc or desc",
            ),
            (
                "/v1/views/gmv?order=price",
                StatusCode::BAD_REQUEST,
                "bad_request",
                "`price` is neither `bucket` nor a measure or grouped dimension of `gmv` (measures: gmv, n)",
            ),
            (
                "/v1/views/gmv?limit=100001",
                StatusCode::BAD_REQUEST,
                "bad_request",
                "expected an integer from 1 to 100000",
            ),
            (
                "/v1/views/gmv?cursor=00",
                StatusCode::BAD_REQUEST,
                "bad_request",
                "not a cursor of this API",
            ),
            (
                "/v1/views/gmv?format=xml",
                StatusCode::BAD_REQUEST,
                "bad_request",
                "expected json, csv or arrow",
            ),
            (
                "/v1/quarantine?limit=0",
                StatusCode::BAD_REQUEST,
                "bad_request",
                "limit",
            ),
        ] {
            let (s, body) = get(&app, uri).await;
            assert_eq!(s, status, "{uri}: {body}");
            assert_eq!(body["error"]["code"], code, "{uri}");
            let msg = body["error"]["message"].as_str().unwrap();
            assert!(msg.contains(needle), "{uri}: {msg}");
        }
        // a request target longer than the API reads
        let long = format!("/v1/views/gmv?where=city%20IN%20({})", "'x',".repeat(3000));
        let (s, body) = get(&app, &long).await;
        assert_eq!(s, StatusCode::URI_TOO_LONG, "{body}");
        assert_eq!(body["error"]["code"], "too_large");
        let msg = body["error"]["message"].as_str().unwrap();
        assert!(
            msg.contains("more than the 8192 a request may have"),
            "{msg}"
        );
    }
}
