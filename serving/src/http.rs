//! The HTTP API (axum): `/health`, `/v1/views`, `/v1/views/{view}`, `/v1/quarantine`.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::Uri;
use axum::routing::get;
use chrono::DateTime;
use duet_config::time::{MAX_TIME_MS, iso};
use duet_config::{Config, duration::format_millis};
use duet_speed::{SpeedCounters, ViewStore};
use serde_json::{Value, json};

use crate::error::{Error, Result};
use crate::health::{PartState, Parts, SealChecks};
use crate::query::{LakeReaders, Provenance, merged};

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
}

/// Most buckets one query may span.
pub const MAX_BUCKETS: i64 = 100_000;

/// The API's router.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/health", get(health))
        .route(
            "/v1/openapi.json",
            get(|| async { Json(crate::openapi::document()) }),
        )
        .route("/v1/views", get(list_views))
        .route("/v1/views/{view}", get(query_view))
        .route("/v1/quarantine", get(quarantine))
        .route("/metrics", get(metrics))
        .fallback(|uri: Uri| async move { Error::NotFound(uri.to_string()) })
        .with_state(state)
}

/// Parses a time parameter: epoch milliseconds or RFC 3339, from 1970 to 9999.
fn parse_time(name: &'static str, v: &str) -> Result<i64> {
    let ms = match v.parse::<i64>() {
        Ok(ms) => Some(ms),
        Err(_) => DateTime::parse_from_rfc3339(v)
            .ok()
            .map(|t| t.timestamp_millis()),
    };
    ms.filter(|t| (0..=MAX_TIME_MS).contains(t)).ok_or_else(|| Error::BadParam {
        name,
        message: format!(
            "expected epoch milliseconds or an RFC 3339 time such as 2026-11-25T10:00:00Z (1970 to 9999), found {v:?}"
        ),
    })
}

fn bad_query(e: QueryRejection) -> Error {
    Error::BadQuery(e.body_text())
}

/// Prometheus text exposition of the speed layer's totals and each source's watermark.
async fn metrics(
    State(s): State<AppState>,
) -> Result<([(axum::http::HeaderName, &'static str); 1], String)> {
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
    let checks = s.checks.snapshot();
    if !checks.is_empty() {
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
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        out,
    ))
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

async fn list_views(State(s): State<AppState>) -> Json<Value> {
    let views: Vec<Value> = s
        .cfg
        .views
        .iter()
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

async fn query_view(
    State(s): State<AppState>,
    Path(view): Path<String>,
    q: std::result::Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Json<Value>> {
    let Query(q) = q.map_err(bad_query)?;
    let spec = s
        .cfg
        .view(&view)
        .ok_or_else(|| Error::UnknownView(view.clone()))?;
    if let Some(k) = q
        .keys()
        .find(|k| !matches!(k.as_str(), "from" | "to" | "layer"))
    {
        return Err(Error::UnknownParam {
            name: k.clone(),
            expected: "from, to, layer",
        });
    }
    let speed_only = match q.get("layer").map(String::as_str) {
        None | Some("merged") => false,
        Some("speed") => true,
        Some(other) => {
            return Err(Error::BadParam {
                name: "layer",
                message: format!("expected merged (the default) or speed, found {other:?}"),
            });
        }
    };
    let now = duet_speed::now_ms();
    let to = q
        .get("to")
        .map(|v| parse_time("to", v))
        .transpose()?
        .unwrap_or(spec.bucket_of(now) + spec.bucket_ms);
    let from = q
        .get("from")
        .map(|v| parse_time("from", v))
        .transpose()?
        .unwrap_or((to - 60 * spec.bucket_ms).max(0));
    if from >= to {
        return Err(Error::BadParam {
            name: "from",
            message: format!("`from` ({}) must be before `to` ({})", iso(from), iso(to)),
        });
    }
    let (from, to) = (
        spec.bucket_of(from),
        spec.bucket_of(to - 1) + spec.bucket_ms,
    );
    if (to - from) / spec.bucket_ms > MAX_BUCKETS {
        return Err(Error::BadParam {
            name: "to",
            message: format!("the range spans more than {MAX_BUCKETS} buckets"),
        });
    }
    let mut m = merged(&s.lake, s.store.as_ref(), spec, from, to).await?;
    if speed_only {
        // every bucket as the speed layer holds it, sealed or not (for verification)
        m.rows = s
            .store
            .read(&spec.name, from, to)
            .await?
            .into_iter()
            .map(|row| crate::query::MergedRow {
                row,
                source: Provenance::Speed,
                late_pending: None,
            })
            .collect();
    }
    let rows_empty = m.rows.is_empty();
    let rows: Vec<Value> = m
        .rows
        .iter()
        .map(|r| {
            let dims: serde_json::Map<String, Value> = spec
                .dimensions
                .iter()
                .zip(&r.row.dims)
                .map(|(d, v)| (d.clone(), v.clone().map_or(Value::Null, Value::String)))
                .collect();
            let mut o = json!({
                "bucket": iso(r.row.bucket),
                "bucket_ms": r.row.bucket,
                "dims": dims,
                "values": spec.render(&r.row.states),
                "source": r.source,
            });
            if r.source == Provenance::Batch {
                o["batch_version"] = json!(m.batch_version);
            }
            if let Some(n) = r.late_pending {
                o["late_pending"] = json!(n);
            }
            let errors: serde_json::Map<String, Value> = spec
                .measures
                .iter()
                .zip(&r.row.states)
                .filter_map(|(m, st)| m.kind.problem(st).map(|p| (m.name.clone(), json!(p))))
                .collect();
            if !errors.is_empty() {
                o["errors"] = Value::Object(errors);
            }
            o
        })
        .collect();
    let last_applied = s.store.stats().await?.last_commit_ms;
    let mut body = json!({
        "view": spec.name,
        "from": iso(from),
        "to": iso(to),
        "bucket": format_millis(spec.bucket_ms),
        "rows": rows,
        "provenance": {
            "batch_version": m.batch_version,
            "sealed": m.sealed.iter().map(|i| json!({"from": iso(i.from), "to": iso(i.to)})).collect::<Vec<_>>(),
            "late_pending": m.late_pending.iter().map(|(b, n)| json!({"bucket": iso(*b), "events": n})).collect::<Vec<_>>(),
            "speed_watermark": m.speed_watermark.map(iso),
            "event_time_lag_ms": m.speed_watermark.map(|w| (now - w).max(0)),
            "last_applied": last_applied.map(iso),
            "freshness_ms": last_applied.map(|t| (now - t).max(0)),
        },
    });
    let defaulted = !q.contains_key("from") || !q.contains_key("to");
    if defaulted {
        body["default_range"] = json!(format!(
            "{} buckets up to the end of the current one; pass from and to (RFC 3339 or epoch ms) for another range",
            (to - from) / spec.bucket_ms
        ));
    }
    if rows_empty && defaulted {
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
    Ok(Json(body))
}

async fn quarantine(
    State(s): State<AppState>,
    q: std::result::Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Json<Value>> {
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
    use duet_lake::Lake;
    use duet_speed::store::StateKey;
    use duet_speed::{EmbeddedStore, SpeedBatch};
    use tower::ServiceExt;

    const CFG: &str = r#"
        [[sources]]
        name = "orders"
        topic = "orders"
        event_id = "orderId"
        event_time = "createTime"
        fields = { orderId = "string", createTime = "int", totalAmount = "decimal(2)", city = "string" }

        [[views]]
        name = "gmv"
        source = "orders"
        bucket = "1m"
        dimensions = ["city"]
        measures = [{ name = "gmv", kind = "sum", field = "totalAmount" }, { name = "n", kind = "count" }]
    "#;

    async fn app(dir: &std::path::Path) -> Router {
        let cfg = Config::from_toml_str(CFG, "t.toml".as_ref()).unwrap();
        let store = EmbeddedStore::open(&dir.join("s.redb")).unwrap();
        let mut b = SpeedBatch::default();
        b.unpartitioned().deltas.insert(
            StateKey {
                view: "gmv".into(),
                bucket: 60_000,
                dims: vec![Some("Hangzhou".into())],
            },
            vec![State::Sum(Num::Dec(12_990)), State::Count(1)],
        );
        // a bucket whose sum overflowed 38 digits
        b.unpartitioned().deltas.insert(
            StateKey {
                view: "gmv".into(),
                bucket: 120_000,
                dims: vec![Some("Hangzhou".into())],
            },
            vec![State::Sum(Num::Overflow), State::Count(2)],
        );
        b.watermarks.insert("orders".into(), 120_000);
        store.commit(b).await.unwrap();
        let lake = Lake::open(dir.join("lake").to_str().unwrap()).unwrap();
        router(AppState {
            lake: Arc::new(LakeReaders::new(&lake, &cfg)),
            cfg: Arc::new(cfg),
            store: Arc::new(store),
            counters: Arc::default(),
            parts: Arc::default(),
            checks: Arc::default(),
        })
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
            "/health",
            "/metrics",
            "/v1/openapi.json",
            "/v1/views",
            "/v1/views/{view}",
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
        assert_eq!(paths.len(), 6);
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
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(300))]

        /// Any query string on the query endpoints gets a 200 or a 4xx with a JSON message;
        /// never a 5xx, never a panic.
        #[test]
        fn any_query_string_gets_an_answer(
            q in proptest::collection::vec(
                (
                    proptest::sample::select(vec!["from", "to", "limit", "x", "", "from[]"]),
                    proptest::prop_oneof![
                        "[-0-9]{0,22}",
                        "[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:.]{0,12}(Z|[+-][0-9]{2}:[0-9]{2})?",
                        "%[0-9A-Fa-f]{2}|%|%zz|\\PC{0,6}",
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
            let body: Value = serde_json::from_slice(&body).unwrap();
            if !status.is_success() {
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
                "unknown query parameter `form` (expected from, to, layer)",
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
    }
}
