//! Verification: a view's answers compared with a recompute from the lake.
//!
//! `duet verify` recomputes a range in memory and diffs it per bucket against what serving
//! answers and, for open buckets, against the speed store; the scheduler compares each seal's
//! recompute with what the speed layer held for the same buckets and exports the mismatches
//! and the largest relative drift as metrics.

use std::collections::BTreeMap;

use duet_config::{DimKey, Row, ViewSpec};
use serde_json::Value;

/// One measure whose value differs.
#[derive(Debug, Clone, PartialEq)]
pub struct MeasureDiff {
    /// Measure name.
    pub measure: String,
    /// The value recomputed from the lake (`null`: no row).
    pub expected: Value,
    /// The value found (`null`: no row).
    pub found: Value,
}

/// One bucket (and dimension values) whose answer differs from the recompute.
#[derive(Debug, Clone, PartialEq)]
pub struct BucketDiff {
    /// Bucket start, epoch ms.
    pub bucket: i64,
    /// Dimension values.
    pub dims: DimKey,
    /// The measures that differ.
    pub measures: Vec<MeasureDiff>,
}

impl BucketDiff {
    /// The largest relative drift of its measures (see [`relative_drift`]).
    pub fn drift(&self) -> f64 {
        self.measures
            .iter()
            .map(|m| relative_drift(&m.expected, &m.found))
            .fold(0.0, f64::max)
    }
}

/// Rendered values of rows, by bucket and dimensions.
pub type Rendered = BTreeMap<(i64, DimKey), serde_json::Map<String, Value>>;

/// Renders rows of partial states with the view's algebra.
pub fn render(view: &ViewSpec, rows: &[Row]) -> Rendered {
    rows.iter()
        .map(|r| ((r.bucket, r.dims.clone()), view.render(&r.states)))
        .collect()
}

/// The buckets where `found` differs from `expected`: a value differs, or a row is on one
/// side only.
pub fn compare(view: &ViewSpec, expected: &Rendered, found: &Rendered) -> Vec<BucketDiff> {
    let keys: std::collections::BTreeSet<&(i64, DimKey)> =
        expected.keys().chain(found.keys()).collect();
    let mut out = Vec::new();
    for key in keys {
        let (e, f) = (expected.get(key), found.get(key));
        let measures: Vec<MeasureDiff> = view
            .measures
            .iter()
            .filter_map(|m| {
                let ev = e
                    .and_then(|v| v.get(&m.name))
                    .cloned()
                    .unwrap_or(Value::Null);
                let fv = f
                    .and_then(|v| v.get(&m.name))
                    .cloned()
                    .unwrap_or(Value::Null);
                (ev != fv || e.is_none() != f.is_none()).then(|| MeasureDiff {
                    measure: m.name.clone(),
                    expected: ev,
                    found: fv,
                })
            })
            .collect();
        if !measures.is_empty() {
            out.push(BucketDiff {
                bucket: key.0,
                dims: key.1.clone(),
                measures,
            });
        }
    }
    out
}

fn number(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

/// How far `found` is from `expected`, from 0 (equal) to 1: `|e − f| / max(|e|, |f|)` for
/// numbers (decimals included), 1 for any other difference (a missing row, a top-k list).
pub fn relative_drift(expected: &Value, found: &Value) -> f64 {
    if expected == found {
        return 0.0;
    }
    match (number(expected), number(found)) {
        (Some(e), Some(f)) => {
            let scale = e.abs().max(f.abs());
            if scale == 0.0 {
                0.0
            } else {
                ((e - f).abs() / scale).min(1.0)
            }
        }
        _ => 1.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn drift_is_relative_and_bounded() {
        assert_eq!(relative_drift(&json!(100), &json!(90)), 0.1);
        assert_eq!(relative_drift(&json!("10.00"), &json!("10.00")), 0.0);
        assert_eq!(relative_drift(&json!("10.00"), &json!("5.00")), 0.5);
        assert_eq!(relative_drift(&json!(3), &Value::Null), 1.0);
        assert_eq!(relative_drift(&json!([1]), &json!([2])), 1.0);
        assert_eq!(relative_drift(&json!(0), &json!(-0.0)), 0.0);
    }
}

/// A bucket of an answer: its values and where they came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Served {
    /// `batch`, or `speed`.
    pub source: String,
    /// Late events pending for the bucket (dirty), if any.
    pub late_pending: Option<i64>,
}

/// What `duet verify` found.
#[derive(Debug, Clone, PartialEq)]
pub struct Verification {
    /// The range compared (whole buckets), `None` when every bucket asked for is too recent.
    pub range: Option<duet_lake::Interval>,
    /// Buckets of the range asked for that may still receive events (not compared).
    pub too_recent: i64,
    /// Bucket rows compared.
    pub compared: usize,
    /// Version of the raw table recomputed from.
    pub raw_version: Option<i64>,
    /// Where serving's answer differs from the recompute, with where the answer came from.
    pub served: Vec<(BucketDiff, Option<Served>)>,
    /// Where the speed store differs from the recompute, for buckets that are not sealed.
    pub speed: Vec<BucketDiff>,
    /// How serving's answer was read: in this process, or over HTTP from a running deployment.
    pub via: String,
}

impl Verification {
    /// Whether everything agreed.
    pub fn agrees(&self) -> bool {
        self.served.is_empty() && self.speed.is_empty()
    }
}

/// Where each row of an answer came from, by bucket and dimensions.
pub type Sources = BTreeMap<(i64, DimKey), Served>;

/// Rows of an HTTP answer of `/v1/views/{view}` rendered by key, with their sources.
fn parse_answer(view: &ViewSpec, body: &Value) -> anyhow::Result<(Rendered, Sources)> {
    let rows = body["rows"]
        .as_array()
        .ok_or_else(|| anyhow::anyhow!("unexpected answer: {body}"))?;
    let mut values = Rendered::new();
    let mut sources = BTreeMap::new();
    for r in rows {
        let bucket = r["bucket_ms"]
            .as_i64()
            .ok_or_else(|| anyhow::anyhow!("a row without bucket_ms: {r}"))?;
        let dims: DimKey = view
            .dimensions
            .iter()
            .map(|d| r["dims"][d].as_str().map(str::to_string))
            .collect();
        let key = (bucket, dims);
        values.insert(
            key.clone(),
            r["values"].as_object().cloned().unwrap_or_default(),
        );
        sources.insert(
            key,
            Served {
                source: r["source"].as_str().unwrap_or("?").to_string(),
                late_pending: r["late_pending"].as_i64(),
            },
        );
    }
    Ok((values, sources))
}

/// Every page of the answer to `path`, following `next_cursor`.
async fn get_all(view: &ViewSpec, addr: &str, path: &str) -> anyhow::Result<(Rendered, Sources)> {
    let (mut values, mut sources) = (Rendered::new(), Sources::new());
    let mut page = format!("{path}&limit=100000");
    loop {
        let body = get_json(addr, &page).await?;
        let (v, s) = parse_answer(view, &body)?;
        values.extend(v);
        sources.extend(s);
        match body["next_cursor"].as_str() {
            Some(c) => page = format!("{path}&limit=100000&cursor={c}"),
            None => return Ok((values, sources)),
        }
    }
}

/// `GET` of a JSON document over plain HTTP/1.1.
async fn get_json(addr: &str, path: &str) -> anyhow::Result<Value> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: duet\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await?;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow::anyhow!("malformed HTTP answer from {addr}"))?;
    if !head.starts_with("HTTP/1.1 200") {
        anyhow::bail!(
            "GET {path} on {addr}: {}: {body}",
            head.lines().next().unwrap_or("")
        );
    }
    Ok(serde_json::from_str(body)?)
}

/// Recomputes `[from, to)` of `view` from the lake in memory and compares it per bucket with
/// what serving answers and, for buckets not sealed, with the speed store. Buckets that may
/// still receive events (ending after what the scheduler may seal now) are not compared.
/// Serving's answer is read in this process when the store can be opened, else over HTTP from
/// the running deployment at `[serving] bind`.
pub async fn verify(
    cfg: &duet_config::Config,
    view: &ViewSpec,
    from: i64,
    to: i64,
    now_ms: i64,
) -> anyhow::Result<Verification> {
    let lake = duet_lake::Lake::open(&cfg.lake.url)?;
    let (from, to) = (
        view.bucket_of(from),
        view.bucket_of(to - 1) + view.bucket_ms,
    );
    let watermark = duet_lake::raw::raw_snapshot(&lake, &view.source, None)
        .await?
        .watermark;
    let limit = duet_batch::sealable_until(cfg, view, now_ms, watermark).unwrap_or(from);
    let end = to.min(limit.max(from));
    let too_recent = (to - end) / view.bucket_ms;
    let mut out = Verification {
        range: None,
        too_recent,
        compared: 0,
        raw_version: None,
        served: Vec::new(),
        speed: Vec::new(),
        via: String::new(),
    };
    if end <= from {
        return Ok(out);
    }
    let range = duet_lake::Interval::new(from, end);
    out.range = Some(range);
    let computed = duet_batch::compute(&lake, cfg, view, &[range]).await?;
    out.raw_version = computed.raw.version;
    let expected = render(view, &computed.rows);
    let seals = duet_lake::SealLedger::new(&lake)
        .snapshot()
        .await?
        .view(&view.name);
    let open = |k: &(i64, DimKey)| !seals.covers(k.0, k.0 + view.bucket_ms);
    let (served, sources, speed) = match crate::app::open_store(cfg).await {
        Ok(store) => {
            out.via = format!(
                "read in this process from {}",
                cfg.store.url.as_deref().unwrap_or(&cfg.store.path)
            );
            let readers = duet_serving::query::LakeReaders::new(&lake, cfg);
            let m = duet_serving::query::merged(&readers, store.as_ref(), view, from, end).await?;
            let mut values = Rendered::new();
            let mut sources = BTreeMap::new();
            for r in &m.rows {
                let key = (r.row.bucket, r.row.dims.clone());
                values.insert(key.clone(), view.render(&r.row.states));
                sources.insert(
                    key,
                    Served {
                        source: match r.source {
                            duet_serving::query::Provenance::Batch => "batch",
                            duet_serving::query::Provenance::Speed => "speed",
                        }
                        .into(),
                        late_pending: r.late_pending,
                    },
                );
            }
            let speed = render(view, &store.read(&view.name, from, end).await?);
            (values, sources, speed)
        }
        Err(_) => {
            let addr = &cfg.serving.bind;
            out.via = format!("asked over HTTP of the deployment serving on {addr}");
            let path = format!("/v1/views/{}?from={from}&to={end}", view.name);
            let (values, sources) = get_all(view, addr, &path).await?;
            let (speed, _) = get_all(view, addr, &format!("{path}&layer=speed")).await?;
            (values, sources, speed)
        }
    };
    out.compared = expected
        .keys()
        .chain(served.keys())
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    out.served = compare(view, &expected, &served)
        .into_iter()
        .map(|d| {
            let s = sources.get(&(d.bucket, d.dims.clone())).cloned();
            (d, s)
        })
        .collect();
    let open_expected: Rendered = expected
        .iter()
        .filter(|(k, _)| open(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let open_speed: Rendered = speed.into_iter().filter(|(k, _)| open(k)).collect();
    out.speed = compare(view, &open_expected, &open_speed);
    Ok(out)
}
