//! Re-aggregating a view's merged rows for a query: a grain equal to or coarser than the
//! view's bucket, a subset of its dimensions, filters on dimensions, and a limit. States are
//! merged with the measure algebra, so the distinct count or the top-k of a day is merged from
//! its buckets' states, never summed from their answers.
//!
//! Every protocol answers through this one engine: it works on [`MergedRow`]s, whichever
//! layer each came from, and counts per output row how many came from each.

use std::collections::BTreeMap;

use duet_config::measure::MeasureKind;
use duet_config::{DimKey, Num, State, ViewSpec};

use crate::error::{Error, Result};
use crate::query::{MergedRow, Provenance};

/// How a dimension filter compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DimOp {
    /// Equal to the one value.
    Eq,
    /// Different from the one value (rows with no value for the dimension never match, as
    /// in SQL).
    Ne,
    /// Equal to one of the values.
    In,
}

/// One filter on a dimension's value (the value's canonical text, as in the row's key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DimFilter {
    /// The dimension, as the view names it.
    pub dimension: String,
    /// The comparison.
    pub op: DimOp,
    /// The value(s) compared with: one for `Eq` and `Ne`, any number for `In`.
    pub values: Vec<String>,
}

/// What the rows of an answer are ordered by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrderKey {
    /// The output bucket.
    Bucket,
    /// A measure's value (a top-k has no order and is refused).
    Measure(String),
    /// A grouped dimension's value.
    Dimension(String),
}

/// An order: a key and a direction. Ties are broken by bucket, then dimensions, ascending, so
/// every order is total. A null value sorts after every other in ascending order and before
/// them in descending order, as in PostgreSQL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderBy {
    /// What is compared.
    pub key: OrderKey,
    /// Largest first.
    pub descending: bool,
}

impl Default for OrderBy {
    fn default() -> Self {
        OrderBy {
            key: OrderKey::Bucket,
            descending: false,
        }
    }
}

/// The value a row is ordered by, besides its bucket and dimensions.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SortValue {
    /// Ordered by bucket: nothing more.
    Bucket,
    /// A dimension's value.
    Dimension(Option<String>),
    /// A measure's value (`None`: null, such as the minimum of no rows or an overflowed sum).
    Measure(Option<Num>),
}

/// Where a row stands in an order: a page of an answer continues after the cursor of the
/// previous page's last row, so rows are neither repeated nor skipped when buckets before it
/// change (keyset pagination).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Cursor {
    /// The ordered value.
    pub value: SortValue,
    /// Output bucket start, epoch ms.
    pub bucket: i64,
    /// Grouped dimension values.
    pub dims: DimKey,
}

/// A query's rows: at most the limit, and where the next page starts if more follow.
#[derive(Debug, Clone, PartialEq)]
pub struct Rolled {
    /// The rows, in order.
    pub rows: Vec<RolledRow>,
    /// The position of the last row, when rows after it were cut by the limit.
    pub next: Option<Cursor>,
}

/// What a query asks of a view's rows.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RollupSpec {
    /// Output bucket width in ms; `None`: the view's own bucket.
    pub grain_ms: Option<i64>,
    /// Dimensions to group by (the others are merged away); `None`: all of them.
    pub group_by: Option<Vec<String>>,
    /// Filters, all of which a row must pass.
    pub filters: Vec<DimFilter>,
    /// The order of the output rows; `None`: by bucket, then dimensions.
    pub order: Option<OrderBy>,
    /// Only rows after this position in the order (the previous page's last row).
    pub after: Option<Cursor>,
    /// At most this many output rows (the first in the order).
    pub limit: Option<usize>,
}

/// A [`RollupSpec`] checked against a view: dimensions resolved to their positions.
#[derive(Debug, Clone, PartialEq)]
pub struct Rollup {
    grain_ms: i64,
    group_by: Vec<usize>,
    filters: Vec<(usize, DimOp, Vec<String>)>,
    order: Order,
    descending: bool,
    after: Option<Cursor>,
    limit: Option<usize>,
}

/// A resolved order key: a measure by index, a grouped dimension by its output position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Order {
    Bucket,
    Measure(usize),
    Dimension(usize),
}

/// One output row.
#[derive(Debug, Clone, PartialEq)]
pub struct RolledRow {
    /// Output bucket start, epoch ms (a multiple of the grain, UTC).
    pub bucket: i64,
    /// Values of the grouped dimensions, in the order asked.
    pub dims: DimKey,
    /// One merged state per measure.
    pub states: Vec<State>,
    /// How many of the view's rows came from sealed buckets (the batch layer).
    pub batch_rows: usize,
    /// How many came from open buckets (the speed layer).
    pub speed_rows: usize,
}

impl RolledRow {
    /// Where the row came from: `batch`, `speed`, or `mixed` when both layers contributed.
    pub fn source(&self) -> &'static str {
        match (self.batch_rows > 0, self.speed_rows > 0) {
            (true, true) => "mixed",
            (false, true) => "speed",
            _ => "batch",
        }
    }
}

impl Rollup {
    /// Checks `spec` against `view`: the grain is a whole multiple of the view's bucket, every
    /// dimension named exists, `Eq`/`Ne` have one value and `In` at least one.
    pub fn plan(view: &ViewSpec, spec: &RollupSpec) -> Result<Rollup> {
        let bucket = view.bucket_ms;
        let grain_ms = spec.grain_ms.unwrap_or(bucket);
        if grain_ms < bucket || grain_ms % bucket != 0 {
            return Err(Error::BadParam {
                name: "grain",
                message: format!(
                    "{} is not a whole multiple of the view's bucket ({}) of `{}`",
                    duet_config::duration::format_millis(grain_ms),
                    duet_config::duration::format_millis(bucket),
                    view.name
                ),
            });
        }
        let position = |name: &'static str, d: &str| -> Result<usize> {
            view.dimensions
                .iter()
                .position(|x| x == d)
                .ok_or_else(|| Error::BadParam {
                    name,
                    message: format!(
                        "`{d}` is not a dimension of `{}` (it has: {})",
                        view.name,
                        if view.dimensions.is_empty() {
                            "none".to_string()
                        } else {
                            view.dimensions.join(", ")
                        }
                    ),
                })
        };
        let group_by = match &spec.group_by {
            None => (0..view.dimensions.len()).collect(),
            Some(names) => {
                let mut out: Vec<usize> = Vec::with_capacity(names.len());
                for n in names {
                    let i = position("group_by", n)?;
                    if !out.contains(&i) {
                        out.push(i);
                    }
                }
                out
            }
        };
        let mut filters = Vec::with_capacity(spec.filters.len());
        for f in &spec.filters {
            let i = position("where", &f.dimension)?;
            let arity_ok = match f.op {
                DimOp::Eq | DimOp::Ne => f.values.len() == 1,
                DimOp::In => !f.values.is_empty(),
            };
            if !arity_ok {
                return Err(Error::BadParam {
                    name: "where",
                    message: format!(
                        "`{}`: {} takes {}",
                        f.dimension,
                        match f.op {
                            DimOp::Eq => "=",
                            DimOp::Ne => "<>",
                            DimOp::In => "IN",
                        },
                        if f.op == DimOp::In {
                            "at least one value"
                        } else {
                            "exactly one value"
                        }
                    ),
                });
            }
            filters.push((i, f.op, f.values.clone()));
        }
        let order_by = spec.order.clone().unwrap_or_default();
        let order = match &order_by.key {
            OrderKey::Bucket => Order::Bucket,
            OrderKey::Measure(name) => {
                let i = view
                    .measures
                    .iter()
                    .position(|m| &m.name == name)
                    .ok_or_else(|| Error::BadParam {
                        name: "order",
                        message: format!(
                            "`{name}` is neither `bucket` nor a measure or grouped dimension of `{}` (measures: {})",
                            view.name,
                            view.measures
                                .iter()
                                .map(|m| m.name.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    })?;
                if matches!(view.measures[i].kind, MeasureKind::TopK { .. }) {
                    return Err(Error::BadParam {
                        name: "order",
                        message: format!("`{name}` is a top-k list, which has no order"),
                    });
                }
                Order::Measure(i)
            }
            OrderKey::Dimension(name) => {
                let i = position("order", name)?;
                let at = group_by
                    .iter()
                    .position(|g| *g == i)
                    .ok_or_else(|| Error::BadParam {
                        name: "order",
                        message: format!("`{name}` is not grouped by, so rows have no value of it"),
                    })?;
                Order::Dimension(at)
            }
        };
        if let Some(after) = &spec.after {
            let fits = match (order, &after.value) {
                (Order::Bucket, SortValue::Bucket)
                | (Order::Dimension(_), SortValue::Dimension(_))
                | (Order::Measure(_), SortValue::Measure(_)) => after.dims.len() == group_by.len(),
                _ => false,
            };
            if !fits {
                return Err(Error::BadParam {
                    name: "cursor",
                    message: "the cursor belongs to a query with another order or group_by"
                        .to_string(),
                });
            }
        }
        Ok(Rollup {
            grain_ms,
            group_by,
            filters,
            order,
            descending: order_by.descending,
            after: spec.after.clone(),
            limit: spec.limit,
        })
    }

    /// Where `row` stands in the order.
    fn cursor(&self, row: &RolledRow) -> Cursor {
        let value = match self.order {
            Order::Bucket => SortValue::Bucket,
            Order::Dimension(at) => SortValue::Dimension(row.dims.get(at).cloned().flatten()),
            Order::Measure(i) => SortValue::Measure(row.states.get(i).and_then(order_value)),
        };
        Cursor {
            value,
            bucket: row.bucket,
            dims: row.dims.clone(),
        }
    }

    /// The order of two positions.
    fn compare(&self, a: &Cursor, b: &Cursor) -> std::cmp::Ordering {
        use std::cmp::Ordering;
        // null after every value (ascending)
        fn nulls_last<T>(a: &Option<T>, b: &Option<T>, f: impl Fn(&T, &T) -> Ordering) -> Ordering {
            match (a, b) {
                (Some(a), Some(b)) => f(a, b),
                (None, None) => Ordering::Equal,
                (None, Some(_)) => Ordering::Greater,
                (Some(_), None) => Ordering::Less,
            }
        }
        let first = match (&a.value, &b.value) {
            (SortValue::Bucket, SortValue::Bucket) => a.bucket.cmp(&b.bucket),
            (SortValue::Dimension(x), SortValue::Dimension(y)) => nulls_last(x, y, |x, y| x.cmp(y)),
            (SortValue::Measure(x), SortValue::Measure(y)) => nulls_last(x, y, Num::cmp_total),
            _ => Ordering::Equal,
        };
        let first = if self.descending {
            first.reverse()
        } else {
            first
        };
        first
            .then_with(|| a.bucket.cmp(&b.bucket))
            .then_with(|| a.dims.cmp(&b.dims))
    }

    /// The names of the grouped dimensions, in the order of each row's `dims`.
    pub fn dimensions<'v>(&self, view: &'v ViewSpec) -> Vec<&'v str> {
        self.group_by
            .iter()
            .filter_map(|i| view.dimensions.get(*i).map(String::as_str))
            .collect()
    }

    /// The output bucket width, ms.
    pub fn grain_ms(&self) -> i64 {
        self.grain_ms
    }

    fn passes(&self, dims: &DimKey) -> bool {
        self.filters.iter().all(|(i, op, values)| {
            let v = dims.get(*i).and_then(Option::as_deref);
            match op {
                DimOp::Eq | DimOp::In => v.is_some_and(|v| values.iter().any(|x| x == v)),
                DimOp::Ne => v.is_some_and(|v| values.iter().all(|x| x != v)),
            }
        })
    }

    /// Filters, re-buckets, groups and merges `rows` (any order); orders the output, keeps
    /// the rows after the cursor and cuts them at the limit.
    pub fn apply(&self, view: &ViewSpec, rows: Vec<MergedRow>) -> Result<Rolled> {
        let grouped = if self.is_identity(view, &rows) {
            // each row is its own group: no map, no merge
            rows.into_iter()
                .filter(|r| self.passes(&r.row.dims))
                .map(|r| {
                    let (batch_rows, speed_rows) = match r.source {
                        Provenance::Batch => (1, 0),
                        Provenance::Speed => (0, 1),
                    };
                    RolledRow {
                        bucket: r.row.bucket,
                        dims: r.row.dims,
                        states: r.row.states,
                        batch_rows,
                        speed_rows,
                    }
                })
                .collect()
        } else {
            self.group(view, rows)?
        };
        self.page(grouped)
    }

    /// Whether rolling `rows` up changes nothing: the view's own grain, every dimension in
    /// its order, rows aligned to their buckets and in strictly increasing (bucket,
    /// dimensions) order, so no two share a group (as [`crate::query::merged`] returns them).
    fn is_identity(&self, view: &ViewSpec, rows: &[MergedRow]) -> bool {
        let n = view.dimensions.len();
        self.grain_ms == view.bucket_ms
            && self.group_by.iter().copied().eq(0..n)
            && rows
                .iter()
                .all(|r| r.row.dims.len() == n && r.row.bucket.rem_euclid(self.grain_ms) == 0)
            && rows
                .windows(2)
                .all(|w| (w[0].row.bucket, &w[0].row.dims) < (w[1].row.bucket, &w[1].row.dims))
    }

    /// Filters, re-buckets, groups and merges `rows`: the groups in (bucket, dimensions) order.
    fn group(&self, view: &ViewSpec, rows: Vec<MergedRow>) -> Result<Vec<RolledRow>> {
        let mut out: BTreeMap<(i64, DimKey), RolledRow> = BTreeMap::new();
        for r in rows {
            if !self.passes(&r.row.dims) {
                continue;
            }
            let bucket = r.row.bucket - r.row.bucket.rem_euclid(self.grain_ms);
            let dims: DimKey = self
                .group_by
                .iter()
                .map(|i| r.row.dims.get(*i).cloned().flatten())
                .collect();
            let (batch, speed) = match r.source {
                Provenance::Batch => (1, 0),
                Provenance::Speed => (0, 1),
            };
            match out.entry((bucket, dims)) {
                std::collections::btree_map::Entry::Occupied(mut e) => {
                    let acc = e.get_mut();
                    duet_config::measure::merge_row(&mut acc.states, r.row.states).map_err(
                        |source| Error::Merge {
                            view: view.name.clone(),
                            source,
                        },
                    )?;
                    acc.batch_rows += batch;
                    acc.speed_rows += speed;
                }
                std::collections::btree_map::Entry::Vacant(e) => {
                    let (bucket, dims) = e.key().clone();
                    e.insert(RolledRow {
                        bucket,
                        dims,
                        states: r.row.states,
                        batch_rows: batch,
                        speed_rows: speed,
                    });
                }
            }
        }
        Ok(out.into_values().collect())
    }

    /// Orders the groups (given in bucket and dimension order), keeps those after the cursor
    /// and cuts them at the limit.
    fn page(&self, mut grouped: Vec<RolledRow>) -> Result<Rolled> {
        // by bucket ascending, the order the groups come in already (`apply` hands them in
        // strictly increasing bucket and dimensions: the identity path checks it, `group`
        // builds them in that order): no cursor per row and no sort
        debug_assert!(
            grouped
                .windows(2)
                .all(|w| (w[0].bucket, &w[0].dims) < (w[1].bucket, &w[1].dims))
        );
        if matches!(self.order, Order::Bucket) && !self.descending {
            if let Some(after) = &self.after {
                let seen =
                    grouped.partition_point(|r| self.compare(&self.cursor(r), after).is_le());
                grouped.drain(..seen);
            }
            let next = match self.limit {
                Some(n) if grouped.len() > n => {
                    grouped.truncate(n);
                    grouped.last().map(|r| self.cursor(r))
                }
                _ => None,
            };
            return Ok(Rolled {
                rows: grouped,
                next,
            });
        }
        let mut keyed: Vec<(Cursor, RolledRow)> = grouped
            .into_iter()
            .map(|r| (self.cursor(&r), r))
            .filter(|(c, _)| {
                self.after
                    .as_ref()
                    .is_none_or(|after| self.compare(c, after).is_gt())
            })
            .collect();
        keyed.sort_by(|a, b| self.compare(&a.0, &b.0));
        let next = match self.limit {
            Some(n) if keyed.len() > n => {
                keyed.truncate(n);
                keyed.last().map(|(c, _)| c.clone())
            }
            _ => None,
        };
        Ok(Rolled {
            rows: keyed.into_iter().map(|(_, r)| r).collect(),
            next,
        })
    }
}

/// The value a state is ordered by: counts and distinct counts as integers, sums, minima and
/// maxima as their number, means as floats; `None` for no value.
fn order_value(state: &State) -> Option<Num> {
    let n = match state {
        State::Count(c) => Num::Int(*c),
        State::Sum(n) => *n,
        State::Min(n) | State::Max(n) => (*n)?,
        State::Avg { sum, count } => {
            if *count == 0 {
                return None;
            }
            // a decimal's units: the same scale for every row of a measure, so the order holds
            let sum = match sum {
                Num::Int(i) => *i as f64,
                Num::Float(f) => *f,
                Num::Dec(d) => *d as f64,
                Num::Overflow => return None,
            };
            Num::Float(sum / *count as f64)
        }
        State::Distinct(d) => Num::Int(i64::try_from(d.estimate()).unwrap_or(i64::MAX)),
        State::TopK(_) => return None,
    };
    (!n.out_of_range()).then_some(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use duet_config::{Config, Event, Row};
    use proptest::prelude::*;

    fn config() -> Config {
        Config::from_toml_str(
            r#"
            [[sources]]
            name = "s"
            topic = "t"
            event_id = "id"
            event_time = "ts"
            fields = { id = "string", ts = "int", a = "string", b = "string", u = "string", n = "int" }

            [[views]]
            name = "v"
            source = "s"
            bucket = "1m"
            dimensions = ["a", "b"]
            measures = [
              { name = "c", kind = "count" },
              { name = "users", kind = "distinct_count", field = "u" },
              { name = "total", kind = "sum", field = "n" },
              { name = "top", kind = "top_k", field = "u", by = "n", k = 3 },
              { name = "mean", kind = "avg", field = "n" },
              { name = "most", kind = "max", field = "n" },
            ]
            "#,
            "t.toml".as_ref(),
        )
        .unwrap()
    }

    /// An event: (minute offset within two days, a, b, user, n).
    fn event(cfg: &Config, i: usize, e: &(i64, u8, u8, u8, i64)) -> Event {
        let (minute, a, b, u, n) = *e;
        let text = format!(
            r#"{{"id":"e{i}","ts":{},"a":"a{a}","b":{},"u":"u{u}","n":{n}}}"#,
            1_800_000_000_000 + minute * 60_000 + 7,
            if b == 0 {
                "null".to_string()
            } else {
                format!("\"b{b}\"")
            }
        );
        cfg.sources[0].decode(text.as_bytes()).unwrap()
    }

    /// The view's rows for `events`, each said to come from the layer `batch` picks.
    fn rows(view: &ViewSpec, events: &[Event], batch: &[bool]) -> Vec<MergedRow> {
        let mut acc: BTreeMap<(i64, DimKey), Vec<State>> = BTreeMap::new();
        for e in events {
            for c in view.contributions(e) {
                match acc.get_mut(&(c.bucket, c.dims.clone())) {
                    Some(s) => duet_config::measure::merge_row(s, c.states).unwrap(),
                    None => {
                        acc.insert((c.bucket, c.dims), c.states);
                    }
                }
            }
        }
        acc.into_iter()
            .enumerate()
            .map(|(i, ((bucket, dims), states))| MergedRow {
                row: Row {
                    bucket,
                    dims,
                    states,
                },
                source: if batch.get(i).copied().unwrap_or(false) {
                    Provenance::Batch
                } else {
                    Provenance::Speed
                },
                late_pending: None,
            })
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        /// Rolling minute rows up to any grain, any subset of the dimensions and any filter
        /// equals computing the view at that grain and with those dimensions from the events.
        #[test]
        fn a_rollup_equals_a_recompute_at_its_grain(
            events in proptest::collection::vec((0i64..2_880, 0u8..3, 0u8..3, 0u8..20, -50i64..50), 0..120),
            batch in proptest::collection::vec(any::<bool>(), 0..200),
            grain in prop_oneof![Just(60_000i64), Just(300_000), Just(3_600_000), Just(86_400_000)],
            // every subset in both orders; the view's own grain with all of them, in order,
            // changes nothing (the path without grouping)
            group_by in prop_oneof![Just(vec![]), Just(vec!["a"]), Just(vec!["b"]), Just(vec!["a", "b"]), Just(vec!["b", "a"])],
            filter in prop_oneof![
                Just(None),
                (0u8..3).prop_map(|a| Some(DimFilter { dimension: "a".into(), op: DimOp::Eq, values: vec![format!("a{a}")] })),
                (0u8..3).prop_map(|b| Some(DimFilter { dimension: "b".into(), op: DimOp::Ne, values: vec![format!("b{b}")] })),
                Just(Some(DimFilter { dimension: "a".into(), op: DimOp::In, values: vec!["a0".into(), "a2".into()] })),
            ],
        ) {
            let cfg = config();
            let view = &cfg.views[0];
            let events: Vec<Event> = events.iter().enumerate().map(|(i, e)| event(&cfg, i, e)).collect();
            let spec = RollupSpec {
                grain_ms: Some(grain),
                group_by: Some(group_by.iter().map(|d| d.to_string()).collect()),
                filters: filter.clone().into_iter().collect(),
                ..RollupSpec::default()
            };
            let rollup = Rollup::plan(view, &spec).unwrap();
            let got = rollup.apply(view, rows(view, &events, &batch)).unwrap().rows;

            // the truth: the view at this grain with these dimensions, over the events whose
            // own dimension values pass the filter
            let mut truth_view = view.clone();
            truth_view.bucket_ms = grain;
            truth_view.dimensions = group_by.iter().map(|d| d.to_string()).collect();
            // (SQL's rule: a null value matches neither `=` nor `<>`)
            let kept: Vec<Event> = events
                .into_iter()
                .filter(|e| match &filter {
                    None => true,
                    Some(f) => match (e.get(&f.dimension), f.op) {
                        (duet_config::Value::Str(v), DimOp::Ne) => !f.values.iter().any(|x| x == v),
                        (duet_config::Value::Str(v), _) => f.values.iter().any(|x| x == v),
                        _ => false,
                    },
                })
                .collect();
            let truth = rows(&truth_view, &kept, &[]);
            prop_assert_eq!(got.len(), truth.len());
            for (g, t) in got.iter().zip(&truth) {
                prop_assert_eq!(g.bucket, t.row.bucket);
                prop_assert_eq!(&g.dims, &t.row.dims);
                prop_assert_eq!(&g.states, &t.row.states);
                prop_assert!(g.batch_rows + g.speed_rows > 0);
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(100))]

        /// In any order, the answer is sorted by the rendered value (nulls last when
        /// ascending), and its pages, each continuing after the previous page's cursor, join
        /// into the whole answer with no row repeated or skipped.
        #[test]
        fn pages_join_into_the_whole_answer_in_any_order(
            events in proptest::collection::vec((0i64..300, 0u8..3, 0u8..3, 0u8..20, -50i64..50), 0..80),
            key in prop_oneof![
                Just(OrderKey::Bucket),
                Just(OrderKey::Measure("c".into())),
                Just(OrderKey::Measure("users".into())),
                Just(OrderKey::Measure("total".into())),
                Just(OrderKey::Measure("mean".into())),
                Just(OrderKey::Measure("most".into())),
                Just(OrderKey::Dimension("b".into())),
            ],
            descending in any::<bool>(),
            page in 1usize..6,
        ) {
            let cfg = config();
            let view = &cfg.views[0];
            let events: Vec<Event> = events.iter().enumerate().map(|(i, e)| event(&cfg, i, e)).collect();
            let spec = RollupSpec {
                grain_ms: Some(600_000),
                group_by: Some(vec!["b".into()]),
                order: Some(OrderBy { key: key.clone(), descending }),
                ..RollupSpec::default()
            };
            let all = Rollup::plan(view, &spec).unwrap().apply(view, rows(view, &events, &[])).unwrap();
            prop_assert!(all.next.is_none());
            // sorted by the value as rendered (independent of the engine's own comparison)
            let shown = |r: &RolledRow| -> Option<f64> {
                match &key {
                    OrderKey::Measure(m) => {
                        let i = view.measures.iter().position(|x| &x.name == m).unwrap();
                        match view.measures[i].kind.render(&r.states[i]) {
                            serde_json::Value::Number(n) => n.as_f64(),
                            _ => None,
                        }
                    }
                    _ => Some(0.0),
                }
            };
            for w in all.rows.windows(2) {
                let (a, b) = (&w[0], &w[1]);
                let ordered = match &key {
                    OrderKey::Bucket => if descending { a.bucket >= b.bucket } else { a.bucket <= b.bucket },
                    OrderKey::Dimension(_) => match (&a.dims[0], &b.dims[0]) {
                        (Some(x), Some(y)) => if descending { x >= y } else { x <= y },
                        (None, Some(_)) => descending,
                        (Some(_), None) => !descending,
                        (None, None) => true,
                    },
                    OrderKey::Measure(_) => match (shown(a), shown(b)) {
                        (Some(x), Some(y)) => if descending { x >= y } else { x <= y },
                        (None, Some(_)) => descending,
                        (Some(_), None) => !descending,
                        (None, None) => true,
                    },
                };
                prop_assert!(ordered, "{:?} then {:?}", a, b);
            }
            let mut joined = Vec::new();
            let mut after = None;
            for _ in 0..=all.rows.len() {
                let got = Rollup::plan(view, &RollupSpec { after: after.clone(), limit: Some(page), ..spec.clone() })
                    .unwrap()
                    .apply(view, rows(view, &events, &[]))
                    .unwrap();
                prop_assert!(got.rows.len() <= page);
                joined.extend(got.rows);
                after = got.next;
                if after.is_none() {
                    break;
                }
            }
            prop_assert!(after.is_none());
            prop_assert_eq!(joined, all.rows);
        }
    }

    #[test]
    fn rows_say_which_layers_they_came_from_and_the_limit_keeps_the_first() {
        let cfg = config();
        let view = &cfg.views[0];
        let events: Vec<Event> = [(0, 0, 1, 1, 5), (1, 0, 1, 2, 5), (70, 1, 1, 1, 5)]
            .iter()
            .enumerate()
            .map(|(i, e)| event(&cfg, i, e))
            .collect();
        let spec = RollupSpec {
            grain_ms: Some(3_600_000),
            group_by: Some(vec![]),
            ..RollupSpec::default()
        };
        let rollup = Rollup::plan(view, &spec).unwrap();
        let got = rollup
            .apply(view, rows(view, &events, &[true, false, true]))
            .unwrap()
            .rows;
        assert_eq!(got.len(), 2);
        assert_eq!((got[0].batch_rows, got[0].speed_rows), (1, 1));
        assert_eq!(got[0].source(), "mixed");
        assert_eq!(got[0].states[0], State::Count(2));
        assert_eq!(got[1].source(), "batch");
        let first = Rollup::plan(
            view,
            &RollupSpec {
                limit: Some(1),
                ..spec
            },
        )
        .unwrap()
        .apply(view, rows(view, &events, &[]))
        .unwrap()
        .rows;
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].bucket, got[0].bucket);
    }

    #[test]
    fn impossible_rollups_are_refused_with_a_reason() {
        let cfg = config();
        let view = &cfg.views[0];
        let reason = |spec: RollupSpec| Rollup::plan(view, &spec).unwrap_err().to_string();
        assert_eq!(
            reason(RollupSpec {
                grain_ms: Some(90_000),
                ..RollupSpec::default()
            }),
            "query parameter `grain`: 90s is not a whole multiple of the view's bucket (1m) of `v`"
        );
        assert!(
            reason(RollupSpec {
                grain_ms: Some(30_000),
                ..RollupSpec::default()
            })
            .contains("not a whole multiple")
        );
        assert_eq!(
            reason(RollupSpec {
                group_by: Some(vec!["city".into()]),
                ..RollupSpec::default()
            }),
            "query parameter `group_by`: `city` is not a dimension of `v` (it has: a, b)"
        );
        assert_eq!(
            reason(RollupSpec {
                filters: vec![DimFilter {
                    dimension: "a".into(),
                    op: DimOp::In,
                    values: vec![],
                }],
                ..RollupSpec::default()
            }),
            "query parameter `where`: `a`: IN takes at least one value"
        );
        let order = |key: OrderKey| RollupSpec {
            order: Some(OrderBy {
                key,
                descending: false,
            }),
            group_by: Some(vec!["a".into()]),
            ..RollupSpec::default()
        };
        assert_eq!(
            reason(order(OrderKey::Measure("top".into()))),
            "query parameter `order`: `top` is a top-k list, which has no order"
        );
        assert_eq!(
            reason(order(OrderKey::Dimension("b".into()))),
            "query parameter `order`: `b` is not grouped by, so rows have no value of it"
        );
        assert_eq!(
            reason(RollupSpec {
                after: Some(Cursor {
                    value: SortValue::Bucket,
                    bucket: 0,
                    dims: vec![None, None],
                }),
                ..order(OrderKey::Bucket)
            }),
            "query parameter `cursor`: the cursor belongs to a query with another order or group_by"
        );
    }
}
