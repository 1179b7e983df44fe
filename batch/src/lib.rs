//! The batch layer: each view compiles to a Polars lazy plan over the lake's raw table,
//! recomputes a bucket range exactly, replaces those buckets in `views/<view>` in one Delta
//! commit, and records the range as sealed in the ledger.

pub mod error;
pub mod plan;

use duet_config::{Config, FieldType, Source, ViewSpec};
use duet_lake::raw::{TimeRange, raw_snapshot};
use duet_lake::{Interval, Lake, Seal, SealLedger, ViewTable};

pub use error::{Error, Result};

/// What one recompute did.
#[derive(Debug, Clone, PartialEq)]
pub struct Recompute {
    /// View name.
    pub view: String,
    /// The bucket ranges recomputed and sealed (whole buckets, sorted, disjoint).
    pub ranges: Vec<Interval>,
    /// Rows written.
    pub rows: usize,
    /// The rows written (partial states per bucket and dimensions).
    pub written: Vec<duet_config::Row>,
    /// Version of `views/<view>` written.
    pub version: i64,
    /// Version of `raw/<source>` read (`None`: no raw data yet).
    pub raw_version: Option<i64>,
    /// Late marks of the ranges this recompute resolved (their events were in the raw table).
    pub resolved: usize,
}

fn decimal_scale(source: &Source, explode: Option<&str>, path: &str) -> Option<u8> {
    let mut segs = path.split('.');
    let first = segs.next()?;
    let mut t = source.fields.get(first)?;
    if Some(first) == explode
        && let FieldType::Array(inner) = t
    {
        t = inner;
    }
    for s in segs {
        let FieldType::Struct(fs) = t else {
            return None;
        };
        t = &fs.iter().find(|(n, _)| n == s)?.1;
    }
    match t {
        FieldType::Decimal(s) => Some(*s),
        _ => None,
    }
}

/// Recomputes the buckets of `view` in `[from, to)` (widened to whole buckets) from the raw
/// table, replaces them in the view's table and seals them. See [`recompute_ranges`].
pub async fn recompute(
    lake: &Lake,
    cfg: &Config,
    view: &ViewSpec,
    from: i64,
    to: i64,
    now_ms: i64,
) -> Result<Recompute> {
    recompute_ranges(lake, cfg, view, &[Interval::new(from, to)], now_ms).await
}

/// What the raw table says the buckets of some ranges hold, computed in memory.
#[derive(Debug, Clone)]
pub struct Computed {
    /// The ranges, widened to whole buckets, sorted and disjoint.
    pub ranges: Vec<Interval>,
    /// One row per bucket and dimensions with events, with the partial states.
    pub rows: Vec<duet_config::Row>,
    /// The raw table read.
    pub raw: duet_lake::raw::RawSnapshot,
}

/// Computes the buckets of `view` in `ranges` (each widened to whole buckets) from the raw
/// table, in memory: one pass of the view's Polars plan over the raw files whose statistics
/// for the view's time field overlap the ranges. Nothing is written.
pub async fn compute(
    lake: &Lake,
    cfg: &Config,
    view: &ViewSpec,
    ranges: &[Interval],
) -> Result<Computed> {
    let ranges = duet_lake::ledger::coalesce(
        ranges
            .iter()
            .map(|r| {
                let to = view.bucket_of(r.to);
                let to = if to < r.to { to + view.bucket_ms } else { to };
                Interval::new(view.bucket_of(r.from), to)
            })
            .collect(),
    );
    if let Some(r) = ranges.iter().find(|r| r.from >= r.to) {
        return Err(Error::EmptyRange {
            view: view.name.clone(),
            from: r.from,
            to: r.to,
        });
    }
    if ranges.is_empty() {
        return Err(Error::EmptyRange {
            view: view.name.clone(),
            from: 0,
            to: 0,
        });
    }
    let source = cfg
        .source(&view.source)
        .ok_or_else(|| Error::UnknownSource {
            view: view.name.clone(),
            source_name: view.source.clone(),
        })?;
    // only the files whose statistics for the view's time field overlap the ranges: they hold
    // every row of the ranges, and every copy of those rows (a re-delivery has the same time)
    let range = TimeRange {
        field: &view.time_field,
        ranges: &ranges,
    };
    let snapshot = raw_snapshot(lake, &source.name, Some(range)).await?;
    let rows = if snapshot.files.is_empty() {
        Vec::new()
    } else {
        let (spec, src, files) = (view.clone(), source.clone(), snapshot.files.clone());
        let ranges = ranges.clone();
        tokio::task::spawn_blocking(move || -> Result<_> {
            let scale_of = |p: &str| decimal_scale(&src, spec.explode.as_deref(), p);
            let base =
                plan::base(&spec, &files, &scale_of, &ranges).map_err(|source| Error::Polars {
                    view: spec.name.clone(),
                    source,
                })?;
            let (main, topk) = plan::aggregate(&spec, base);
            plan::collect_rows(&spec, main, topk)
        })
        .await
        .map_err(|e| Error::Task {
            view: view.name.clone(),
            message: e.to_string(),
        })??
    };
    Ok(Computed {
        ranges,
        rows,
        raw: snapshot,
    })
}

/// Recomputes the buckets of `view` in `ranges` (each widened to whole buckets) in one pass
/// over the raw table, replaces them in the view's table in one Delta commit, and records them
/// as sealed in one ledger commit, with the late marks of those buckets whose events the raw
/// table read holds (resolved: the buckets are clean again).
pub async fn recompute_ranges(
    lake: &Lake,
    cfg: &Config,
    view: &ViewSpec,
    ranges: &[Interval],
    now_ms: i64,
) -> Result<Recompute> {
    let Computed {
        ranges,
        rows,
        raw: snapshot,
    } = compute(lake, cfg, view, ranges).await?;
    let version = ViewTable::new(lake, view)
        .replace_ranges(&ranges, &rows)
        .await?;
    // late marks of the ranges whose events the raw snapshot holds are resolved by this seal
    let ledger = SealLedger::new(lake);
    let mut resolved = Vec::new();
    for m in ledger.snapshot().await?.view(&view.name).pending {
        if !ranges
            .iter()
            .any(|r| r.from <= m.bucket.from && m.bucket.to <= r.to)
        {
            continue;
        }
        let mut all_in = true;
        for o in &m.offsets {
            all_in &= snapshot
                .committed(&o.app)
                .await?
                .is_some_and(|c| c >= o.offset);
        }
        if all_in {
            resolved.push(m.id);
        }
    }
    let seals: Vec<Seal> = ranges
        .iter()
        .map(|r| Seal {
            view: view.name.clone(),
            range: *r,
            version,
            sealed_at: now_ms,
        })
        .collect();
    ledger.record(&seals, &resolved).await?;
    tracing::info!(view = %view.name, from = %duet_config::time::iso(ranges[0].from),
        to = %duet_config::time::iso(ranges[ranges.len() - 1].to), ranges = ranges.len(),
        rows = rows.len(), version, resolved = resolved.len(), "Sealed buckets.");
    Ok(Recompute {
        view: view.name.clone(),
        ranges,
        rows: rows.len(),
        written: rows,
        version,
        raw_version: snapshot.version,
        resolved: resolved.len(),
    })
}

/// What a scheduled run of a view has to recompute.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Due {
    /// Sealed buckets with late events pending, as ranges of adjacent buckets.
    pub dirty: Vec<Interval>,
    /// Unsealed ranges from the first raw data to the last bucket that may be sealed now,
    /// split into pieces of at most a day.
    pub gaps: Vec<Interval>,
}

impl Due {
    /// Everything to recompute: dirty buckets first, then the gaps.
    pub fn ranges(&self) -> impl Iterator<Item = Interval> + '_ {
        self.dirty.iter().chain(&self.gaps).copied()
    }

    /// The ranges grouped into recomputes of at most `span` ms of buckets each (one pass
    /// over the raw table, one view commit and one ledger commit per group).
    pub fn passes(&self, span: i64) -> Vec<Vec<Interval>> {
        let mut all: Vec<Interval> = self.ranges().collect();
        all.sort();
        let mut out: Vec<Vec<Interval>> = Vec::new();
        let mut size = 0;
        for r in all {
            match out.last_mut() {
                Some(pass) if size + (r.to - r.from) <= span => {
                    size += r.to - r.from;
                    pass.push(r);
                }
                _ => {
                    size = r.to - r.from;
                    out.push(vec![r]);
                }
            }
        }
        out
    }
}

/// How much time of buckets one scheduled recompute covers at most: a day, or one bucket
/// if buckets are longer.
pub fn pass_span(view: &ViewSpec) -> i64 {
    (86_400_000 / view.bucket_ms).max(1) * view.bucket_ms
}

/// The end of the last bucket a scheduled run may seal at `now_ms`: one that ended `lateness`
/// before both the clock and the lake's watermark of the view's source (`None` without one).
pub fn sealable_until(
    cfg: &Config,
    view: &ViewSpec,
    now_ms: i64,
    watermark: Option<i64>,
) -> Option<i64> {
    watermark.map(|w| view.bucket_of(now_ms.min(w).saturating_sub(cfg.lateness_ms)))
}

/// What a scheduled run should recompute now: the dirty buckets (sealed, with late events
/// pending), and every unsealed gap from the first bucket of the raw data to the last bucket
/// that ended `lateness` before both the clock and the lake's event-time watermark.
pub async fn due(lake: &Lake, cfg: &Config, view: &ViewSpec, now_ms: i64) -> Result<Due> {
    let seals = SealLedger::new(lake).snapshot().await?.view(&view.name);
    let snapshot = raw_snapshot(lake, &view.source, None).await?;
    let mut due = Due {
        dirty: seals.dirty_ranges(),
        gaps: Vec::new(),
    };
    let (Some(end), Some(first)) = (
        sealable_until(cfg, view, now_ms, snapshot.watermark),
        snapshot.first_date_ms,
    ) else {
        return Ok(due);
    };
    let start = view.bucket_of(first);
    let piece = pass_span(view);
    for gap in seals.gaps(start, end) {
        let mut at = gap.from;
        while at < gap.to {
            let to = (at + piece).min(gap.to);
            due.gaps.push(Interval::new(at, to));
            at = to;
        }
    }
    Ok(due)
}
