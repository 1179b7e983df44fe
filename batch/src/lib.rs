//! The batch layer: each view compiles to a Polars lazy plan over the lake's raw table,
//! recomputes a bucket range exactly, replaces those buckets in `views/<view>` in one Delta
//! commit, and records the range as sealed in the ledger.

pub mod error;
pub mod plan;

use duet_config::{Config, FieldType, Source, ViewSpec};
use duet_lake::raw::{TimeRange, raw_snapshot};
use duet_lake::{Lake, Seal, SealLedger, ViewTable};

pub use error::{Error, Result};

/// What one recompute did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recompute {
    /// View name.
    pub view: String,
    /// First bucket recomputed (epoch ms).
    pub from: i64,
    /// End of the range (exclusive).
    pub to: i64,
    /// Rows written.
    pub rows: usize,
    /// Version of `views/<view>` written.
    pub version: i64,
    /// Version of `raw/<source>` read (`None`: no raw data yet).
    pub raw_version: Option<i64>,
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
/// table, replaces them in the view's table and seals them.
pub async fn recompute(
    lake: &Lake,
    cfg: &Config,
    view: &ViewSpec,
    from: i64,
    to: i64,
    now_ms: i64,
) -> Result<Recompute> {
    let from = view.bucket_of(from);
    let to = {
        let b = view.bucket_of(to);
        if b < to { b + view.bucket_ms } else { b }
    };
    if from >= to {
        return Err(Error::EmptyRange {
            view: view.name.clone(),
            from,
            to,
        });
    }
    let source = cfg
        .source(&view.source)
        .ok_or_else(|| Error::UnknownSource {
            view: view.name.clone(),
            source_name: view.source.clone(),
        })?;
    // only the files whose statistics for the view's time field overlap the range: they hold
    // every row of the range, and every copy of those rows (a re-delivery has the same time)
    let range = TimeRange {
        field: &view.time_field,
        from,
        to,
    };
    let snapshot = raw_snapshot(lake, &source.name, Some(range)).await?;
    let rows = if snapshot.files.is_empty() {
        Vec::new()
    } else {
        let (spec, src, files) = (view.clone(), source.clone(), snapshot.files.clone());
        tokio::task::spawn_blocking(move || -> Result<_> {
            let scale_of = |p: &str| decimal_scale(&src, spec.explode.as_deref(), p);
            let base =
                plan::base(&spec, &files, &scale_of, from, to).map_err(|source| Error::Polars {
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
    let version = ViewTable::new(lake, view)
        .replace_range(from, to, &rows)
        .await?;
    SealLedger::new(lake)
        .record(&Seal {
            view: view.name.clone(),
            from,
            to,
            version,
            sealed_at: now_ms,
        })
        .await?;
    tracing::info!(view = %view.name, from, to, rows = rows.len(), version, "Sealed buckets.");
    Ok(Recompute {
        view: view.name.clone(),
        from,
        to,
        rows: rows.len(),
        version,
        raw_version: snapshot.version,
    })
}

/// The range a scheduled run should seal now: from the end of the last seal (or the start of
/// the raw data's first day) to the last bucket that ended `lateness` before both the clock
/// and the lake's event-time watermark. `None` when nothing is due.
pub async fn due_range(
    lake: &Lake,
    cfg: &Config,
    view: &ViewSpec,
    now_ms: i64,
) -> Result<Option<(i64, i64)>> {
    let seals = SealLedger::new(lake).seals(Some(&view.name)).await?;
    let snapshot = raw_snapshot(lake, &view.source, None).await?;
    let Some(watermark) = snapshot.watermark else {
        return Ok(None);
    };
    let start = match duet_lake::ledger::sealed_until(&seals) {
        Some(t) => t,
        None => match snapshot.first_date_ms {
            Some(t) => view.bucket_of(t),
            None => return Ok(None),
        },
    };
    let end = view.bucket_of(now_ms.min(watermark) - cfg.lateness_ms);
    Ok((end > start).then_some((start, end)))
}
