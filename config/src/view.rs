//! Resolved sources and views: what both layers compile from.

use std::collections::BTreeMap;

use crate::filter::Filter;
use crate::measure::{MeasureKind, State};
use crate::sketch::Distinct;
use crate::types::{FieldType, Num, Value};

/// A source with parsed field types.
#[derive(Debug, Clone, PartialEq)]
pub struct Source {
    /// Name (`raw/<name>` in the lake).
    pub name: String,
    /// Kafka topic.
    pub topic: String,
    /// Fields whose values, joined by `|`, form the event id.
    pub event_id: Vec<String>,
    /// Int field with the event time (epoch ms).
    pub event_time: String,
    /// Declared fields, by name.
    pub fields: BTreeMap<String, FieldType>,
    /// Fields that must be non-null.
    pub required: Vec<String>,
    /// Validity check, parsed and as written.
    pub check: Option<(Filter, String)>,
    /// How far ahead of its message's production time an event may be (ms).
    pub max_future_ms: i64,
}

/// One decoded, valid event.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// The event id (dedup key).
    pub id: String,
    /// Event time, epoch milliseconds.
    pub time_ms: i64,
    /// Declared fields (absent ones are `Null`).
    pub fields: BTreeMap<String, Value>,
}

impl Event {
    /// The value at a dotted path (`deviceInfo.platform`).
    pub fn get(&self, path: &str) -> &Value {
        let (first, rest) = path
            .split_once('.')
            .map_or((path, None), |(f, r)| (f, Some(r)));
        let v = self.fields.get(first).unwrap_or(&Value::Null);
        rest.map_or(v, |r| v.get_path(r))
    }
}

/// One measure of a resolved view.
#[derive(Debug, Clone, PartialEq)]
pub struct MeasureSpec {
    /// Output name.
    pub name: String,
    /// Kind and types.
    pub kind: MeasureKind,
    /// Input field path.
    pub field: Option<String>,
    /// Weight field path (top_k).
    pub by: Option<String>,
}

/// A resolved view: the single truth both layers compile from.
#[derive(Debug, Clone, PartialEq)]
pub struct ViewSpec {
    /// View name.
    pub name: String,
    /// Description for people.
    pub description: Option<String>,
    /// Source name.
    pub source: String,
    /// Parsed filter.
    pub filter: Option<Filter>,
    /// The filter as written.
    pub filter_text: Option<String>,
    /// Int field path giving each row's time (epoch ms).
    pub time_field: String,
    /// Bucket width in milliseconds.
    pub bucket_ms: i64,
    /// Array field whose elements are the rows.
    pub explode: Option<String>,
    /// Dimension field paths.
    pub dimensions: Vec<String>,
    /// Measures.
    pub measures: Vec<MeasureSpec>,
}

/// Dimension values of one row: the canonical text of each, `None` for null.
pub type DimKey = Vec<Option<String>>;

/// One row of a view as stored by either layer: a bucket, its dimension values and one
/// partial state per measure.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// Bucket start, epoch ms.
    pub bucket: i64,
    /// Dimension values.
    pub dims: DimKey,
    /// One state per measure.
    pub states: Vec<State>,
}

/// What one row of an event adds to a view.
#[derive(Debug, Clone, PartialEq)]
pub struct Contribution {
    /// Bucket start, epoch ms.
    pub bucket: i64,
    /// Dimension values.
    pub dims: DimKey,
    /// One state per measure.
    pub states: Vec<State>,
}

impl ViewSpec {
    /// Start of the bucket holding time `t` (epoch ms).
    pub fn bucket_of(&self, t: i64) -> i64 {
        t - t.rem_euclid(self.bucket_ms)
    }

    /// Identity states, one per measure.
    pub fn identity(&self) -> Vec<State> {
        self.measures.iter().map(|m| m.kind.identity()).collect()
    }

    /// Final values of a row of states, keyed by measure name.
    pub fn render(&self, states: &[State]) -> serde_json::Map<String, serde_json::Value> {
        self.measures
            .iter()
            .zip(states)
            .map(|(m, s)| (m.name.clone(), m.kind.render(s)))
            .collect()
    }

    /// The rows an event contributes: explode, filter, bucket, one state per measure.
    /// Dedup happens before, per source.
    pub fn contributions(&self, event: &Event) -> Vec<Contribution> {
        let elements: Vec<Option<&Value>> = match &self.explode {
            None => vec![None],
            Some(x) => match event.get(x) {
                Value::Array(items) => items
                    .iter()
                    .filter(|v| !matches!(v, Value::Null))
                    .map(Some)
                    .collect(),
                _ => Vec::new(),
            },
        };
        let mut out = Vec::with_capacity(elements.len());
        for el in elements {
            let resolve = |path: &str| -> &Value {
                if let (Some(x), Some(el)) = (&self.explode, el) {
                    if path == x {
                        return el;
                    }
                    if let Some(rest) = path
                        .strip_prefix(x.as_str())
                        .and_then(|r| r.strip_prefix('.'))
                    {
                        return el.get_path(rest);
                    }
                }
                event.get(path)
            };
            if let Some(f) = &self.filter
                && f.eval(&resolve) != Some(true)
            {
                continue;
            }
            // rows without a time, or before the epoch, belong to no bucket (in both layers)
            let Value::Int(t) = resolve(&self.time_field) else {
                continue;
            };
            if *t < 0 {
                continue;
            }
            let dims = self
                .dimensions
                .iter()
                .map(|d| resolve(d).key_text())
                .collect();
            let states = self
                .measures
                .iter()
                .map(|m| {
                    let v = m.field.as_deref().map_or(&Value::Null, &resolve);
                    measure_input(&m.kind, v, m.by.as_deref().map(&resolve))
                })
                .collect();
            out.push(Contribution {
                bucket: self.bucket_of(*t),
                dims,
                states,
            });
        }
        out
    }
}

/// The state of one measure for one row.
fn measure_input(kind: &MeasureKind, v: &Value, by: Option<&Value>) -> State {
    match kind {
        MeasureKind::Count => State::Count(1),
        MeasureKind::Sum(_) => v.num().map_or_else(|| kind.identity(), State::Sum),
        MeasureKind::Min(_) => State::Min(v.num()),
        MeasureKind::Max(_) => State::Max(v.num()),
        MeasureKind::Avg(t) => match v.num() {
            Some(n) => State::Avg { sum: n, count: 1 },
            None => State::Avg {
                sum: Num::zero(*t),
                count: 0,
            },
        },
        MeasureKind::DistinctCount => match v.key_text() {
            Some(k) => State::Distinct(Distinct::of(&k)),
            None => kind.identity(),
        },
        MeasureKind::TopK { weight, .. } => match v.key_text() {
            Some(k) => {
                let w = match by {
                    None => Num::Int(1),
                    Some(b) => b.num().unwrap_or(Num::zero(*weight)),
                };
                State::TopK(BTreeMap::from([(k, w)]))
            }
            None => kind.identity(),
        },
    }
}

#[cfg(test)]
mod tests {
    use crate::{Config, State, types::Num};

    #[test]
    fn contributions_explode_filter_and_bucket() {
        let cfg = Config::from_toml_str(
            r#"
            [[sources]]
            name = "orders"
            topic = "orders"
            event_id = "orderId"
            event_time = "createTime"
            fields = { orderId = "string", status = "string", createTime = "int", payTime = "int",
                       items = "array<struct<productId: string, quantity: int>>" }

            [[views]]
            name = "hot"
            source = "orders"
            filter = "status == 'paid' and items.quantity > 1"
            time = "payTime"
            explode = "items"
            bucket = "1m"
            dimensions = ["items.productId"]
            measures = [{ name = "units", kind = "sum", field = "items.quantity" }, { name = "n", kind = "count" }]
            "#,
            "t.toml".as_ref(),
        )
        .unwrap();
        let src = &cfg.sources[0];
        let view = &cfg.views[0];
        let e = src
            .decode(br#"{"orderId":"o","status":"paid","createTime":1000,"payTime":125000,
                         "items":[{"productId":"a","quantity":2},{"productId":"b","quantity":1},null,{"productId":"c","quantity":3}]}"#)
            .unwrap();
        let c = view.contributions(&e);
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].bucket, 120_000);
        assert_eq!(c[0].dims, vec![Some("a".to_string())]);
        assert_eq!(c[0].states, vec![State::Sum(Num::Int(2)), State::Count(1)]);
        assert_eq!(c[1].dims, vec![Some("c".to_string())]);
        // not paid, no payTime, or no items: no rows
        for other in [
            br#"{"orderId":"o","status":"created","createTime":1,"payTime":2,"items":[{"productId":"a","quantity":5}]}"#.as_slice(),
            br#"{"orderId":"o","status":"paid","createTime":1,"items":[{"productId":"a","quantity":5}]}"#,
            br#"{"orderId":"o","status":"paid","createTime":1,"payTime":2,"items":[]}"#,
            br#"{"orderId":"o","status":"paid","createTime":1,"payTime":2}"#,
        ] {
            assert!(view.contributions(&src.decode(other).unwrap()).is_empty());
        }
    }
}
