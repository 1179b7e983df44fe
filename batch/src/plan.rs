//! A view spec compiled to Polars lazy plans over the raw table's Parquet files.
//!
//! The plan mirrors the speed layer step by step: dedup by event id (first by partition and
//! offset), explode, filter (Kleene logic, like `Filter::eval`), bucket, group by bucket and
//! dimensions. Aggregates come out as text and are turned into the same partial states the
//! speed layer builds, with the same algebra, so both layers agree exactly.

use std::collections::BTreeMap;

use duet_config::sketch::Distinct;
use duet_config::types::parse_decimal;
use duet_config::{
    CmpOp, DimKey, Filter, Literal, MeasureKind, Num, NumType, Row, State, ViewSpec,
};
use duet_lake::Interval;
use polars::prelude::*;

use crate::error::{Error, Result};

/// The expression reading a dotted path: a column, then struct fields.
pub fn path_expr(path: &str) -> Expr {
    let mut segs = path.split('.');
    let mut e = col(segs.next().unwrap_or_default());
    for s in segs {
        e = e.struct_().field_by_name(s);
    }
    e
}

fn literal(lit: &Literal, scale: Option<u8>) -> Expr {
    match lit {
        Literal::Str(s) => polars::prelude::lit(s.clone()),
        Literal::Bool(b) => polars::prelude::lit(*b),
        Literal::Number(n) => match scale {
            Some(s) => {
                let units = parse_decimal(n, s).unwrap_or_default();
                polars::prelude::lit(Scalar::new(
                    DataType::Decimal(38, s as usize),
                    AnyValue::Decimal(units, 38, s as usize),
                ))
            }
            None => match n.parse::<i64>() {
                Ok(i) => polars::prelude::lit(i),
                Err(_) => polars::prelude::lit(n.parse::<f64>().unwrap_or(f64::NAN)),
            },
        },
    }
}

/// Compiles a filter; `scale_of` gives the decimal scale of a path, if it is a decimal.
pub fn filter_expr(f: &Filter, scale_of: &dyn Fn(&str) -> Option<u8>) -> Expr {
    match f {
        Filter::And(a, b) => filter_expr(a, scale_of).and(filter_expr(b, scale_of)),
        Filter::Or(a, b) => filter_expr(a, scale_of).or(filter_expr(b, scale_of)),
        Filter::Not(a) => filter_expr(a, scale_of).not(),
        Filter::Cmp { path, op, lit } => {
            let l = path_expr(path);
            let r = literal(lit, scale_of(path));
            match op {
                CmpOp::Eq => l.eq(r),
                CmpOp::Ne => l.neq(r),
                CmpOp::Lt => l.lt(r),
                CmpOp::Le => l.lt_eq(r),
                CmpOp::Gt => l.gt(r),
                CmpOp::Ge => l.gt_eq(r),
            }
        }
    }
}

/// The deduplicated, exploded, filtered rows of the buckets in `ranges` with `bucket` and `_d<i>`
/// (dimension text) columns.
pub fn base(
    spec: &ViewSpec,
    files: &[String],
    scale_of: &dyn Fn(&str) -> Option<u8>,
    ranges: &[Interval],
) -> PolarsResult<LazyFrame> {
    let paths = files.iter().map(|f| PlRefPath::from(f.as_str())).collect();
    // Partition columns are not needed (the event time is a column); Delta partition paths
    // must not be parsed as hive partitions.
    let args = ScanArgsParquet {
        hive_options: HiveOptions {
            enabled: Some(false),
            ..HiveOptions::default()
        },
        ..ScanArgsParquet::default()
    };
    let mut lf = LazyFrame::scan_parquet_files(paths, args)?
        .sort(["_partition", "_offset"], SortMultipleOptions::default())
        .unique_stable(Some(cols(["_event_id"])), UniqueKeepStrategy::First);
    if let Some(x) = &spec.explode {
        lf = lf
            .explode(
                cols([x.as_str()]),
                ExplodeOptions {
                    empty_as_null: false,
                    keep_nulls: false,
                },
            )
            .filter(col(x.as_str()).is_not_null());
    }
    if let Some(f) = &spec.filter {
        lf = lf.filter(filter_expr(f, scale_of));
    }
    let t = path_expr(&spec.time_field);
    lf = lf
        .filter(
            t.clone().gt_eq(polars::prelude::lit(0i64)).and(
                t.clone()
                    .lt_eq(polars::prelude::lit(duet_config::time::MAX_TIME_MS)),
            ),
        )
        .with_column((t.clone() - t % polars::prelude::lit(spec.bucket_ms)).alias("bucket"))
        .filter(
            ranges
                .iter()
                .map(|r| {
                    col("bucket")
                        .gt_eq(polars::prelude::lit(r.from))
                        .and(col("bucket").lt(polars::prelude::lit(r.to)))
                })
                .reduce(Expr::or)
                .unwrap_or_else(|| polars::prelude::lit(false)),
        );
    let dims: Vec<Expr> = spec
        .dimensions
        .iter()
        .enumerate()
        .map(|(i, d)| path_expr(d).cast(DataType::String).alias(format!("_d{i}")))
        .collect();
    if !dims.is_empty() {
        lf = lf.with_columns(dims);
    }
    Ok(lf)
}

fn keys(spec: &ViewSpec) -> Vec<Expr> {
    std::iter::once(col("bucket"))
        .chain((0..spec.dimensions.len()).map(|i| col(format!("_d{i}"))))
        .collect()
}

/// The split used for exact decimal sums: each value's units are `hi · SPLIT + lo` with
/// `0 <= lo < SPLIT`, so that the sums of `hi` and of `lo` cannot overflow 128 bits for any
/// realistic number of rows, and the exact total is assembled with checked arithmetic.
const SPLIT: i128 = 1_000_000_000_000_000_000;

fn i128_lit(v: i128) -> Expr {
    polars::prelude::lit(Scalar::new(DataType::Int128, AnyValue::Int128(v)))
}

/// Aggregates giving an exact, overflow-checked sum of `x` (of type `t`) as columns named
/// after `name`: ints summed in 128 bits, decimals as two 128-bit sums of their units split
/// in two (see [`SPLIT`]), floats as they are. [`read_sum`] turns them into a [`Num`].
fn sum_aggs(x: Expr, t: NumType, name: &str) -> Vec<Expr> {
    match t {
        NumType::Int => vec![x.cast(DataType::Int128).sum().alias(name)],
        NumType::Float => vec![x.sum().alias(name)],
        NumType::Decimal(_) => {
            let units = x.to_physical();
            let hi = units.clone().floor_div(i128_lit(SPLIT));
            let lo = units - hi.clone() * i128_lit(SPLIT);
            vec![
                hi.sum().alias(format!("{name}_hi")),
                lo.sum().alias(format!("{name}_lo")),
            ]
        }
    }
}

/// The text columns holding the sum that [`sum_aggs`] computed.
struct SumCols {
    t: NumType,
    main: StringChunked,
    lo: Option<StringChunked>,
}

impl SumCols {
    fn new(df: &DataFrame, t: NumType, name: &str) -> PolarsResult<SumCols> {
        Ok(match t {
            NumType::Decimal(_) => SumCols {
                t,
                main: text_col(df, &format!("{name}_hi"))?,
                lo: Some(text_col(df, &format!("{name}_lo"))?),
            },
            _ => SumCols {
                t,
                main: text_col(df, name)?,
                lo: None,
            },
        })
    }

    /// The sum at row `r` (zero for a group without values), an overflow when it leaves the
    /// type's range; `None` when the plan produced text that is not a number.
    fn get(&self, r: usize) -> Option<Num> {
        let int =
            |c: &StringChunked| -> Option<i128> { c.get(r).map_or(Some(0), |v| v.parse().ok()) };
        Some(match self.t {
            NumType::Int => {
                let v = int(&self.main)?;
                i64::try_from(v).map_or(Num::Overflow, Num::Int)
            }
            NumType::Float => match self.main.get(r) {
                None => Num::Float(0.0),
                Some(v) => {
                    let f: f64 = v.parse().ok()?;
                    if f.is_finite() {
                        Num::Float(f)
                    } else {
                        Num::Overflow
                    }
                }
            },
            NumType::Decimal(_) => {
                let (hi, lo) = (int(&self.main)?, int(self.lo.as_ref()?)?);
                hi.checked_mul(SPLIT)
                    .and_then(|h| h.checked_add(lo))
                    .map_or(Num::Overflow, Num::Dec)
            }
        })
    }
}

/// The main aggregation (every measure but top-k) and one frame per top-k measure.
pub fn aggregate(spec: &ViewSpec, base: LazyFrame) -> (LazyFrame, Vec<(usize, LazyFrame)>) {
    let mut aggs = vec![len().alias("_rows")];
    let mut topk = Vec::new();
    for (i, m) in spec.measures.iter().enumerate() {
        let x = m.field.as_deref().map(path_expr);
        let name = format!("_m{i}");
        match (&m.kind, x) {
            (MeasureKind::Count, _) => aggs.push(len().alias(name)),
            (MeasureKind::Sum(t), Some(x)) => aggs.extend(sum_aggs(x, *t, &name)),
            (MeasureKind::Min(_), Some(x)) => aggs.push(x.min().alias(name)),
            (MeasureKind::Max(_), Some(x)) => aggs.push(x.max().alias(name)),
            (MeasureKind::Avg(t), Some(x)) => {
                aggs.extend(sum_aggs(x.clone(), *t, &format!("{name}_s")));
                aggs.push(x.count().alias(format!("{name}_c")));
            }
            (MeasureKind::DistinctCount, Some(x)) => {
                aggs.push(x.cast(DataType::String).drop_nulls().unique().alias(name));
            }
            (MeasureKind::TopK { weight, .. }, Some(x)) => {
                let w = match m.by.as_deref() {
                    Some(b) => sum_aggs(path_expr(b), *weight, "_w"),
                    None => vec![len().cast(DataType::Int128).alias("_w")],
                };
                let mut by = keys(spec);
                by.push(x.clone().cast(DataType::String).alias("_k"));
                topk.push((i, base.clone().filter(x.is_not_null()).group_by(by).agg(w)));
            }
            _ => {}
        }
    }
    (base.group_by(keys(spec)).agg(aggs), topk)
}

fn text_col(df: &DataFrame, name: &str) -> PolarsResult<StringChunked> {
    Ok(df
        .column(name)?
        .as_materialized_series()
        .cast(&DataType::String)?
        .str()?
        .clone())
}

/// Runs the plans and builds one [`Row`] of partial states per bucket and dimensions.
pub fn collect_rows(
    spec: &ViewSpec,
    main: LazyFrame,
    topk: Vec<(usize, LazyFrame)>,
) -> Result<Vec<Row>> {
    let polars_err = |source| Error::Polars {
        view: spec.name.clone(),
        source,
    };
    let df = main.collect().map_err(polars_err)?;
    let mut rows: BTreeMap<(i64, DimKey), Vec<State>> = BTreeMap::new();
    let key_cols = |df: &DataFrame| -> PolarsResult<(Int64Chunked, Vec<StringChunked>)> {
        let b = df
            .column("bucket")?
            .as_materialized_series()
            .cast(&DataType::Int64)?
            .i64()?
            .clone();
        let d = (0..spec.dimensions.len())
            .map(|i| text_col(df, &format!("_d{i}")))
            .collect::<PolarsResult<_>>()?;
        Ok((b, d))
    };
    let key_at = |b: &Int64Chunked, d: &[StringChunked], r: usize| -> (i64, DimKey) {
        (
            b.get(r).unwrap_or_default(),
            d.iter().map(|c| c.get(r).map(str::to_string)).collect(),
        )
    };
    let (b, d) = key_cols(&df).map_err(polars_err)?;
    let bad = |m: &str, v: &str| Error::Value {
        view: spec.name.clone(),
        measure: m.to_string(),
        value: v.to_string(),
    };
    let num = |t: NumType, m: &str, v: &str| -> Result<Num> {
        match t {
            NumType::Int => v.parse().map(Num::Int).map_err(|_| bad(m, v)),
            NumType::Float => v.parse().map(Num::Float).map_err(|_| bad(m, v)),
            NumType::Decimal(s) => parse_decimal(v, s).map(Num::Dec).ok_or_else(|| bad(m, v)),
        }
    };
    let count = |c: &StringChunked, m: &str, r: usize| -> Result<i64> {
        c.get(r).map_or(Ok(0), |v| v.parse().map_err(|_| bad(m, v)))
    };
    // per measure: its text column, its exact sum, or its list of distinct values
    let mut cols: Vec<Option<StringChunked>> = Vec::new();
    let mut sums: Vec<Option<SumCols>> = Vec::new();
    let mut lists: Vec<Option<ListChunked>> = Vec::new();
    for (i, m) in spec.measures.iter().enumerate() {
        let name = format!("_m{i}");
        let (c, sum, l) = match m.kind {
            MeasureKind::TopK { .. } => (None, None, None),
            MeasureKind::Sum(t) => (
                None,
                Some(SumCols::new(&df, t, &name).map_err(polars_err)?),
                None,
            ),
            MeasureKind::Avg(t) => (
                Some(text_col(&df, &format!("{name}_c")).map_err(polars_err)?),
                Some(SumCols::new(&df, t, &format!("{name}_s")).map_err(polars_err)?),
                None,
            ),
            MeasureKind::DistinctCount => (
                None,
                None,
                Some(
                    df.column(&name)
                        .map_err(polars_err)?
                        .as_materialized_series()
                        .list()
                        .map_err(polars_err)?
                        .clone(),
                ),
            ),
            _ => (Some(text_col(&df, &name).map_err(polars_err)?), None, None),
        };
        cols.push(c);
        sums.push(sum);
        lists.push(l);
    }
    for r in 0..df.height() {
        let mut states = Vec::with_capacity(spec.measures.len());
        for (i, m) in spec.measures.iter().enumerate() {
            let text = cols[i].as_ref().and_then(|c| c.get(r));
            let sum = || {
                sums[i]
                    .as_ref()
                    .and_then(|s| s.get(r))
                    .ok_or_else(|| bad(&m.name, "a sum"))
            };
            let state = match &m.kind {
                MeasureKind::Count => State::Count(match &cols[i] {
                    Some(c) => count(c, &m.name, r)?,
                    None => 0,
                }),
                MeasureKind::Sum(_) => State::Sum(sum()?),
                MeasureKind::Min(t) => State::Min(text.map(|v| num(*t, &m.name, v)).transpose()?),
                MeasureKind::Max(t) => State::Max(text.map(|v| num(*t, &m.name, v)).transpose()?),
                MeasureKind::Avg(t) => {
                    let n = match &cols[i] {
                        Some(c) => count(c, &m.name, r)?,
                        None => 0,
                    };
                    State::Avg {
                        sum: if n > 0 { sum()? } else { Num::zero(*t) },
                        count: n,
                    }
                }
                MeasureKind::DistinctCount => {
                    let mut d = Distinct::default();
                    if let Some(Some(values)) = lists[i].as_ref().map(|l| l.get_as_series(r)) {
                        let values = values.cast(&DataType::String).map_err(polars_err)?;
                        for v in values.str().map_err(polars_err)?.iter().flatten() {
                            d.insert(v);
                        }
                    }
                    State::Distinct(d)
                }
                MeasureKind::TopK { .. } => m.kind.identity(),
            };
            states.push(state);
        }
        rows.insert(key_at(&b, &d, r), states);
    }
    for (i, lf) in topk {
        let m = &spec.measures[i];
        let MeasureKind::TopK { weight, .. } = m.kind else {
            continue;
        };
        let df = lf.collect().map_err(polars_err)?;
        let (b, d) = key_cols(&df).map_err(polars_err)?;
        let k = text_col(&df, "_k").map_err(polars_err)?;
        let t = if m.by.is_some() { weight } else { NumType::Int };
        let w = SumCols::new(&df, t, "_w").map_err(polars_err)?;
        for r in 0..df.height() {
            let Some(key) = k.get(r) else {
                continue;
            };
            let wt = w.get(r).ok_or_else(|| bad(&m.name, "a weight"))?;
            let states = rows
                .entry(key_at(&b, &d, r))
                .or_insert_with(|| spec.identity());
            if let State::TopK(map) = &mut states[i] {
                map.insert(key.to_string(), wt);
            }
        }
    }
    Ok(rows
        .into_iter()
        .map(|((bucket, dims), states)| Row {
            bucket,
            dims,
            states,
        })
        .collect())
}
