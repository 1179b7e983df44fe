//! Serving's own metrics: requests per protocol, route and status, their latency, and the
//! rows served per source. Rendered on `/metrics` beside the speed layer's.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use duet_speed::counters::LatencyHistogram;

/// Upper bounds of the request-latency histogram, seconds.
pub const REQUEST_BOUNDS: [f64; 14] = [
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0,
];

/// A request's protocol and route: `http` with the route's template (`/v1/views/{view}`),
/// or `sql` with the statement's kind (`query`, `refused`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct RouteKey {
    /// `http` or `sql`.
    pub protocol: &'static str,
    /// The route template or statement kind.
    pub route: String,
}

/// Serving's counters, shared by the HTTP middleware, the handlers and the SQL port.
#[derive(Debug, Default)]
pub struct ServingMetrics {
    requests: Mutex<BTreeMap<(RouteKey, String), u64>>,
    latency: Mutex<BTreeMap<RouteKey, Arc<LatencyHistogram>>>,
    /// Rows served from sealed buckets, open buckets, and rolled up from both.
    rows: [AtomicU64; 3],
}

impl ServingMetrics {
    /// Counts a request of `key` that ended with `status` (an HTTP status, or `ok`/an
    /// SQLSTATE for SQL).
    pub fn count(&self, key: &RouteKey, status: &str) {
        if let Ok(mut r) = self.requests.lock() {
            *r.entry((key.clone(), status.to_string())).or_default() += 1;
        }
    }

    /// Counts a request of `key` that ended with `status` after `took`.
    pub fn observe(&self, key: RouteKey, status: &str, took: Duration) {
        self.count(&key, status);
        let h = self.latency.lock().ok().map(|mut l| {
            l.entry(key)
                .or_insert_with(|| Arc::new(LatencyHistogram::with_bounds(&REQUEST_BOUNDS)))
                .clone()
        });
        if let Some(h) = h {
            h.observe(took);
        }
    }

    /// Counts rows served by source: `batch`, `speed` or `mixed`.
    pub fn rows(&self, source: &str, n: u64) {
        let i = match source {
            "batch" => 0,
            "speed" => 1,
            _ => 2,
        };
        self.rows[i].fetch_add(n, Relaxed);
    }

    /// The Prometheus text of these metrics.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP duet_serving_requests_total Requests answered, per protocol, route (or SQL statement kind) and status.\n# TYPE duet_serving_requests_total counter"
        );
        if let Ok(r) = self.requests.lock() {
            for ((k, status), n) in r.iter() {
                let _ = writeln!(
                    out,
                    "duet_serving_requests_total{{protocol=\"{}\",route=\"{}\",status=\"{status}\"}} {n}",
                    k.protocol,
                    escape(&k.route)
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP duet_serving_request_seconds Time to answer a request, per protocol and route.\n# TYPE duet_serving_request_seconds histogram"
        );
        let hists: Vec<(RouteKey, Arc<LatencyHistogram>)> = self
            .latency
            .lock()
            .map(|l| l.iter().map(|(k, h)| (k.clone(), h.clone())).collect())
            .unwrap_or_default();
        for (k, h) in hists {
            let s = h.snapshot();
            let labels = format!("protocol=\"{}\",route=\"{}\"", k.protocol, escape(&k.route));
            for (bound, n) in s.bounds.iter().zip(&s.cumulative) {
                let _ = writeln!(
                    out,
                    "duet_serving_request_seconds_bucket{{{labels},le=\"{bound}\"}} {n}"
                );
            }
            let total = s.cumulative.last().copied().unwrap_or(0);
            let _ = writeln!(
                out,
                "duet_serving_request_seconds_bucket{{{labels},le=\"+Inf\"}} {total}\nduet_serving_request_seconds_sum{{{labels}}} {:.6}\nduet_serving_request_seconds_count{{{labels}}} {total}",
                s.sum_s
            );
        }
        let _ = writeln!(
            out,
            "# HELP duet_serving_rows_total Rows served over HTTP, by the layer they came from (mixed: rolled up from both).\n# TYPE duet_serving_rows_total counter"
        );
        for (i, source) in ["batch", "speed", "mixed"].iter().enumerate() {
            let _ = writeln!(
                out,
                "duet_serving_rows_total{{source=\"{source}\"}} {}",
                self.rows[i].load(Relaxed)
            );
        }
        out
    }
}

/// A label value with `\` and `"` escaped.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"")
}

/// Axum middleware: counts every HTTP request by its route template and status.
pub async fn track(
    State(m): State<Arc<ServingMetrics>>,
    path: Option<MatchedPath>,
    req: Request,
    next: Next,
) -> Response {
    let route = path.map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let t = std::time::Instant::now();
    let res = next.run(req).await;
    m.observe(
        RouteKey {
            protocol: "http",
            route,
        },
        res.status().as_str(),
        t.elapsed(),
    );
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_rows_render_as_prometheus_text() {
        let m = ServingMetrics::default();
        let key = RouteKey {
            protocol: "http",
            route: "/v1/views/{view}".into(),
        };
        m.observe(key.clone(), "200", Duration::from_micros(700));
        m.observe(key, "500", Duration::from_millis(30));
        m.rows("speed", 3);
        let text = m.render();
        assert!(text.contains("duet_serving_requests_total{protocol=\"http\",route=\"/v1/views/{view}\",status=\"200\"} 1\n"), "{text}");
        assert!(text.contains("duet_serving_request_seconds_bucket{protocol=\"http\",route=\"/v1/views/{view}\",le=\"0.001\"} 1\n"), "{text}");
        assert!(text.contains("duet_serving_request_seconds_count{protocol=\"http\",route=\"/v1/views/{view}\"} 2\n"), "{text}");
        assert!(
            text.contains("duet_serving_rows_total{source=\"speed\"} 3\n"),
            "{text}"
        );
    }
}
