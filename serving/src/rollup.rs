//! Re-aggregating a view's merged rows for a query: a grain equal to or coarser than the
//! view's bucket, a subset of its dimensions, filters on dimensions, and a limit. States are
//! merged with the measure algebra, so the distinct count or the top-k of a day is merged from
//! its buckets' states, never summed from their answers.
//!
//! Every protocol answers through this one engine: it works on [`MergedRow`]s, whichever
//! layer each came from, and counts per output row how many came from each.

use std::collections::BTreeMap;

use duet_config::{DimKey, State, ViewSpec};

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

/// What a query asks of a view's rows.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RollupSpec {
    /// Output bucket width in ms; `None`: the view's own bucket.
    pub grain_ms: Option<i64>,
    /// Dimensions to group by (the others are merged away); `None`: all of them.
    pub group_by: Option<Vec<String>>,
    /// Filters, all of which a row must pass.
    pub filters: Vec<DimFilter>,
    /// At most this many output rows (the first by bucket, then dimensions).
    pub limit: Option<usize>,
}

/// A [`RollupSpec`] checked against a view: dimensions resolved to their positions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rollup {
    grain_ms: i64,
    group_by: Vec<usize>,
    filters: Vec<(usize, DimOp, Vec<String>)>,
    limit: Option<usize>,
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
        Ok(Rollup {
            grain_ms,
            group_by,
            filters,
            limit: spec.limit,
        })
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

    /// Filters, re-buckets, groups and merges `rows` (any order), ordered by bucket then
    /// dimensions, cut at the limit.
    pub fn apply(&self, view: &ViewSpec, rows: Vec<MergedRow>) -> Result<Vec<RolledRow>> {
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
        let rows = out.into_values();
        Ok(match self.limit {
            Some(n) => rows.take(n).collect(),
            None => rows.collect(),
        })
    }
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
            group_by in proptest::sample::subsequence(vec!["b", "a"], 0..=2),
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
                limit: None,
            };
            let rollup = Rollup::plan(view, &spec).unwrap();
            let got = rollup.apply(view, rows(view, &events, &batch)).unwrap();

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
                        (duet_config::Value::Str(v), DimOp::Ne) => !f.values.contains(v),
                        (duet_config::Value::Str(v), _) => f.values.contains(v),
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
            .unwrap();
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
        .unwrap();
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
    }
}
