//! Resolved sources and views: what both layers compile from.

use std::collections::BTreeMap;

use compact_str::CompactString;

use crate::filter::Filter;
use crate::measure::{MeasureKind, State};
use crate::sketch::Distinct;
use crate::types::{FieldMap, FieldType, Num, Value};

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
    /// The event id (dedup key; up to 24 bytes kept inline, without an allocation).
    pub id: CompactString,
    /// Event time, epoch milliseconds.
    pub time_ms: i64,
    /// Declared fields (absent ones are `Null`).
    pub fields: FieldMap,
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

/// A malformed event, kept with its reason, origin and bytes (in the speed store's quarantine
/// and in the lake's `quarantine` table alike).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Quarantined {
    /// Source whose schema refused it.
    pub source: String,
    /// Kafka topic.
    pub topic: String,
    /// Kafka partition.
    pub partition: i32,
    /// Kafka offset.
    pub offset: i64,
    /// Why it was refused.
    pub reason: String,
    /// The message bytes.
    pub payload: Vec<u8>,
    /// When it was quarantined, epoch ms.
    pub at_ms: i64,
}

impl Quarantined {
    /// `topic/partition@offset`: how the CLI names a record.
    pub fn id(&self) -> String {
        format!("{}/{}@{}", self.topic, self.partition, self.offset)
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
    /// How long the Redis store keeps a bucket's state after the bucket ends, ms.
    pub retention_ms: i64,
}

/// Version of the state format: stored states carry it inside their view's fingerprint, so
/// states written by a Duet that encoded them differently are never merged with new ones.
pub const STATE_FORMAT: u32 = 3;

/// What defines a view's stored states: the source, filter, time field, bucket, explode,
/// dimensions and measures (with their input types), and the state format. States written
/// under one definition cannot be merged with states of another (a measure reordered, added
/// or of another kind would be merged by position into the wrong one), so both layers store
/// the definition's fingerprint with their states and refuse to mix them.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ViewDefinition {
    /// State format version ([`STATE_FORMAT`]).
    pub format: u32,
    /// Source name.
    pub source: String,
    /// The filter, canonical text.
    pub filter: Option<String>,
    /// The time field.
    pub time: String,
    /// Bucket width.
    pub bucket: String,
    /// The exploded array field.
    pub explode: Option<String>,
    /// Dimension paths.
    pub dimensions: Vec<String>,
    /// Each measure as `name = kind(field: type, by: type)`.
    pub measures: Vec<String>,
}

impl ViewDefinition {
    /// A short stable fingerprint of the definition (16 hex digits).
    pub fn fingerprint(&self) -> String {
        format!("{:016x}", self.fingerprint_u64())
    }

    /// The fingerprint as a number, as state bytes carry it (see [`crate::codec`]).
    pub fn fingerprint_u64(&self) -> u64 {
        let text = serde_json::to_string(self).unwrap_or_default();
        crate::sketch::hash_key(&text)
    }

    /// What changed from `self` (stored) to `now` (configured), one line per difference.
    pub fn changes(&self, now: &ViewDefinition) -> Vec<String> {
        let mut out = Vec::new();
        let mut field = |name: &str, was: String, is: String| {
            if was != is {
                out.push(format!("{name}: was {was}, now {is}"));
            }
        };
        let opt = |o: &Option<String>| o.clone().unwrap_or_else(|| "none".into());
        field(
            "state format",
            self.format.to_string(),
            now.format.to_string(),
        );
        field("source", self.source.clone(), now.source.clone());
        field("filter", opt(&self.filter), opt(&now.filter));
        field("time", self.time.clone(), now.time.clone());
        field("bucket", self.bucket.clone(), now.bucket.clone());
        field("explode", opt(&self.explode), opt(&now.explode));
        field(
            "dimensions",
            format!("{:?}", self.dimensions),
            format!("{:?}", now.dimensions),
        );
        for i in 0..self.measures.len().max(now.measures.len()) {
            let m = |v: &[String]| v.get(i).cloned().unwrap_or_else(|| "absent".into());
            field(
                &format!("measures[{i}]"),
                m(&self.measures),
                m(&now.measures),
            );
        }
        out
    }
}

/// A view whose stored states were written under another definition than the configured one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ViewMismatch {
    /// View name.
    pub view: String,
    /// What changed, one line each (see [`ViewDefinition::changes`]).
    pub changes: Vec<String>,
}

impl std::fmt::Display for ViewMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "view `{}` changed since its state was written ({}); `duet views reset {}` drops its state and rebuilds it from the lake",
            self.view,
            self.changes.join("; "),
            self.view
        )
    }
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
    /// What defines this view's stored states (see [`ViewDefinition`]).
    pub fn definition(&self) -> ViewDefinition {
        ViewDefinition {
            format: STATE_FORMAT,
            source: self.source.clone(),
            filter: self.filter.as_ref().map(ToString::to_string),
            time: self.time_field.clone(),
            bucket: crate::duration::format_millis(self.bucket_ms),
            explode: self.explode.clone(),
            dimensions: self.dimensions.clone(),
            measures: self
                .measures
                .iter()
                .map(|m| {
                    use crate::measure::MeasureKind as K;
                    let t = |t: &crate::types::NumType| match t {
                        crate::types::NumType::Int => "int".to_string(),
                        crate::types::NumType::Float => "float".to_string(),
                        crate::types::NumType::Decimal(s) => format!("decimal({s})"),
                    };
                    let field = m.field.clone().unwrap_or_default();
                    let input = match &m.kind {
                        K::Count => String::new(),
                        K::Sum(n) | K::Min(n) | K::Max(n) | K::Avg(n) => {
                            format!("{field}: {}", t(n))
                        }
                        K::DistinctCount => field,
                        K::TopK { weight, .. } => match &m.by {
                            Some(by) => format!("{field}, by {by}: {}", t(weight)),
                            None => field,
                        },
                    };
                    format!("{} = {}({input})", m.name, m.kind.name())
                })
                .collect(),
        }
    }

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

    /// The field paths whose values the view reads (filter, time, dimensions, measure inputs;
    /// of the exploded array only what these name).
    pub fn paths(&self) -> Vec<&str> {
        let mut out: Vec<&str> = vec![self.time_field.as_str()];
        if let Some(f) = &self.filter {
            out.extend(f.paths().into_iter().map(|(p, _)| p));
        }
        out.extend(self.dimensions.iter().map(String::as_str));
        for m in &self.measures {
            out.extend(m.field.as_deref());
            out.extend(m.by.as_deref());
        }
        out
    }

    /// The rows an event contributes: explode, filter, bucket, one state per measure.
    /// Dedup happens before, per source.
    pub fn contributions(&self, event: &Event) -> Vec<Contribution> {
        let mut out = Vec::new();
        self.each_contribution(event, |c| out.push(c));
        out
    }

    /// [`ViewSpec::contributions`], handed to `f` one by one (nothing collected).
    pub fn each_contribution(&self, event: &Event, mut f: impl FnMut(Contribution)) {
        self.each_row(event, |row| {
            f(Contribution {
                bucket: row.bucket,
                dims: row.dims(),
                states: row.states(),
            });
        });
    }

    /// The rows `event` contributes, handed to `f` unbuilt: each says its bucket and reads
    /// its dimensions and measure inputs from the event on demand, so a caller that folds
    /// rows into accumulated states allocates nothing per row (see [`RowRef::add_to`]).
    pub fn each_row<'a>(&'a self, event: &'a Event, mut f: impl FnMut(RowRef<'a>)) {
        match &self.explode {
            None => self.row(event, None, &mut f),
            Some(x) => {
                if let Value::Array(items) = event.get(x) {
                    for el in items.iter().filter(|v| !matches!(v, Value::Null)) {
                        self.row(event, Some(el), &mut f);
                    }
                }
            }
        }
    }

    /// The row of `event` (or of its exploded element `el`), if it passes the filter and has
    /// a time in range.
    fn row<'a>(&'a self, event: &'a Event, el: Option<&'a Value>, f: &mut impl FnMut(RowRef<'a>)) {
        let mut row = RowRef {
            view: self,
            event,
            el,
            bucket: 0,
        };
        if let Some(flt) = &self.filter
            && flt.eval(&|p: &str| row.resolve(p)) != Some(true)
        {
            return;
        }
        // rows without a time, before the epoch or after 9999 belong to no bucket (in both
        // layers)
        let Value::Int(t) = row.resolve(&self.time_field) else {
            return;
        };
        if *t < 0 || *t > crate::time::MAX_TIME_MS {
            return;
        }
        row.bucket = self.bucket_of(*t);
        f(row);
    }
}

/// One row an event contributes to a view, not built: its bucket, and its dimension values
/// and measure inputs read from the event (or its exploded element) on demand.
#[derive(Debug, Clone, Copy)]
pub struct RowRef<'a> {
    view: &'a ViewSpec,
    event: &'a Event,
    el: Option<&'a Value>,
    /// Bucket start, epoch ms.
    pub bucket: i64,
}

impl<'a> RowRef<'a> {
    /// The value at `path` for this row: under the exploded array, the element's.
    fn resolve(&self, path: &str) -> &'a Value {
        if let (Some(x), Some(el)) = (&self.view.explode, self.el) {
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
        self.event.get(path)
    }

    /// The value of dimension `i` (in the view's order); its key is [`Value::key_text`].
    pub fn dim(&self, i: usize) -> &'a Value {
        self.view
            .dimensions
            .get(i)
            .map_or(&Value::Null, |d| self.resolve(d))
    }

    /// The row's dimension key.
    pub fn dims(&self) -> DimKey {
        (0..self.view.dimensions.len())
            .map(|i| self.dim(i).key_text())
            .collect()
    }

    /// The row's states, one per measure.
    pub fn states(&self) -> Vec<State> {
        self.view
            .measures
            .iter()
            .map(|m| {
                let v = m.field.as_deref().map_or(&Value::Null, |p| self.resolve(p));
                measure_input(&m.kind, v, m.by.as_deref().map(|p| self.resolve(p)))
            })
            .collect()
    }

    /// Merges the row's states into `acc` (one per measure, as [`crate::measure::merge_row`]
    /// of [`RowRef::states`] would) without building them: a distinct key is hashed into its
    /// sketch and a top-k key added to its map in place.
    pub fn add_to(&self, acc: &mut [State]) -> crate::Result<()> {
        for (m, a) in self.view.measures.iter().zip(acc.iter_mut()) {
            let v = m.field.as_deref().map_or(&Value::Null, |p| self.resolve(p));
            match (&m.kind, a) {
                (MeasureKind::DistinctCount, State::Distinct(d)) => {
                    if let Some(k) = v.key_str() {
                        d.insert(&k);
                    }
                }
                (MeasureKind::TopK { weight, .. }, State::TopK(map)) => {
                    if let Some(k) = v.key_str() {
                        let w = top_k_weight(m.by.as_deref().map(|b| self.resolve(b)), *weight);
                        match map.get_mut(k.as_ref()) {
                            Some(x) => *x = *x + w,
                            None => {
                                map.insert(k.into_owned(), w);
                            }
                        }
                    }
                }
                (kind, a) => {
                    a.merge(measure_input(
                        kind,
                        v,
                        m.by.as_deref().map(|p| self.resolve(p)),
                    ))?;
                }
            }
        }
        Ok(())
    }
}

/// A top-k key's weight in one row: 1 without `by`, else the `by` value (0 when null).
fn top_k_weight(by: Option<&Value>, weight: crate::types::NumType) -> Num {
    match by {
        None => Num::Int(1),
        Some(b) => b.num().unwrap_or(Num::zero(weight)),
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
            Some(k) => State::TopK(BTreeMap::from([(k, top_k_weight(by, *weight))])),
            None => kind.identity(),
        },
    }
}

#[cfg(test)]
mod tests {
    use crate::{Config, State, types::Num};

    #[test]
    fn definitions_name_what_changed() {
        let load = |measures: &str, filter: &str| {
            Config::from_toml_str(
                &format!(
                    r#"
                    [[sources]]
                    name = "o"
                    topic = "o"
                    event_id = "id"
                    event_time = "t"
                    fields = {{ id = "string", t = "int", amount = "decimal(2)", s = "string" }}

                    [[views]]
                    name = "v"
                    source = "o"
                    bucket = "1m"
                    filter = "{filter}"
                    measures = [{measures}]
                    "#
                ),
                "t.toml".as_ref(),
            )
            .unwrap()
            .views[0]
                .definition()
        };
        let a = load(
            r#"{ name = "n", kind = "count" }, { name = "gmv", kind = "sum", field = "amount" }"#,
            "s == 'paid'",
        );
        // the same view written differently: the same fingerprint
        let same = load(
            r#"{ name = "n", kind = "count" }, { name = "gmv", kind = "sum", field = "amount" }"#,
            "s  =  'paid'",
        );
        assert_eq!(a.fingerprint(), same.fingerprint());
        // two measures swapped
        let b = load(
            r#"{ name = "gmv", kind = "sum", field = "amount" }, { name = "n", kind = "count" }"#,
            "s == 'paid'",
        );
        assert_ne!(a.fingerprint(), b.fingerprint());
        assert_eq!(
            a.changes(&b),
            vec![
                "measures[0]: was n = count(), now gmv = sum(amount: decimal(2))",
                "measures[1]: was gmv = sum(amount: decimal(2)), now n = count()",
            ]
        );
        let c = load(
            r#"{ name = "n", kind = "count" }, { name = "gmv", kind = "avg", field = "amount" }, { name = "x", kind = "count" }"#,
            "s == 'new'",
        );
        assert_eq!(
            a.changes(&c),
            vec![
                "filter: was s == 'paid', now s == 'new'",
                "measures[1]: was gmv = sum(amount: decimal(2)), now gmv = avg(amount: decimal(2))",
                "measures[2]: was absent, now x = count()",
            ]
        );
    }

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

    /// A row merged into accumulated states in place gives the states that merging its
    /// built states would, for every measure kind, with explode, filter and dimensions.
    mod rows_fold_in_place {
        use crate::Config;
        use proptest::prelude::*;

        fn config() -> Config {
            Config::from_toml_str(
                r#"
                [[sources]]
                name = "o"
                topic = "o"
                event_id = "id"
                event_time = "t"
                fields = { id = "string", t = "int", s = "string", n = "int", amount = "decimal(2)",
                           items = "array<struct<p: string, q: int>>" }

                [[views]]
                name = "all"
                source = "o"
                bucket = "1m"
                dimensions = ["s"]
                measures = [
                  { name = "c", kind = "count" },
                  { name = "sum", kind = "sum", field = "amount" },
                  { name = "min", kind = "min", field = "n" },
                  { name = "max", kind = "max", field = "amount" },
                  { name = "avg", kind = "avg", field = "n" },
                  { name = "d", kind = "distinct_count", field = "s" },
                  { name = "dn", kind = "distinct_count", field = "n" },
                ]

                [[views]]
                name = "items"
                source = "o"
                bucket = "1m"
                explode = "items"
                filter = "items.q > 0"
                dimensions = ["items.p", "n"]
                measures = [
                  { name = "top", kind = "top_k", field = "items.p", by = "items.q", k = 3 },
                  { name = "topn", kind = "top_k", field = "n", k = 2 },
                  { name = "units", kind = "sum", field = "items.q" },
                ]
                "#,
                "t.toml".as_ref(),
            )
            .unwrap()
        }

        fn event_json() -> impl Strategy<Value = String> {
            let opt = |s: &'static str| prop_oneof![Just("null".to_string()), s.prop_map(|v| v)];
            let int = |lo: i64, hi: i64| {
                prop_oneof![
                    Just("null".to_string()),
                    (lo..hi).prop_map(|n| n.to_string())
                ]
            };
            (
                1i64..300_000, // event times are > 0: the decoder refuses 0
                opt("\"[a-c]\""),
                int(-999, 999),
                opt("\"[1-9][0-9]{0,2}\\.[0-9]{2}\""),
                proptest::collection::vec((opt("\"[a-d]\""), int(-9, 9)), 0..4),
            )
                .prop_map(|(t, s, n, amount, items)| {
                    let items: Vec<String> = items
                        .iter()
                        .map(|(p, q)| format!(r#"{{"p":{p},"q":{q}}}"#))
                        .collect();
                    format!(
                        r#"{{"id":"x","t":{t},"s":{s},"n":{n},"amount":{amount},"items":[{}]}}"#,
                        items.join(",")
                    )
                })
        }

        proptest! {
            #[test]
            fn add_to_equals_merging_built_states(events in proptest::collection::vec(event_json(), 1..12)) {
                let cfg = config();
                let src = &cfg.sources[0];
                let decoded: Vec<_> = events.iter().map(|e| src.decode(e.as_bytes()).unwrap()).collect();
                for view in &cfg.views {
                    // per bucket and dimensions: built states merged, and rows added in place
                    let mut built: std::collections::BTreeMap<(i64, crate::DimKey), Vec<crate::State>> = Default::default();
                    let mut folded = built.clone();
                    for e in &decoded {
                        view.each_row(e, |row| {
                            let key = (row.bucket, row.dims());
                            match built.get_mut(&key) {
                                Some(acc) => crate::measure::merge_row(acc, row.states()).unwrap(),
                                None => { built.insert(key.clone(), row.states()); }
                            }
                            match folded.get_mut(&key) {
                                Some(acc) => row.add_to(acc).unwrap(),
                                None => { folded.insert(key, row.states()); }
                            }
                        });
                    }
                    prop_assert_eq!(&built, &folded);
                }
            }
        }
    }
}
