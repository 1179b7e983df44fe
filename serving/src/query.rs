//! The merged read: per bucket, sealed buckets from the batch table, open ones from the
//! speed store, never both.

use duet_config::{Row, ViewSpec};
use duet_lake::{Lake, SealLedger, ViewTable};
use duet_speed::ViewStore;

use crate::error::Result;

/// Where a row came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Provenance {
    /// The batch table (sealed bucket).
    Batch,
    /// The speed store (open bucket).
    Speed,
}

/// One merged row.
#[derive(Debug, Clone, PartialEq)]
pub struct MergedRow {
    /// The row.
    pub row: Row,
    /// Where it came from.
    pub source: Provenance,
}

/// The merged answer for a range.
#[derive(Debug, Clone, PartialEq)]
pub struct Merged {
    /// Rows by bucket, then dimensions.
    pub rows: Vec<MergedRow>,
    /// Version of `views/<view>` read (if any bucket was sealed).
    pub batch_version: Option<i64>,
    /// Sealed intervals intersecting the range, coalesced.
    pub sealed: Vec<(i64, i64)>,
    /// Highest event time the speed layer applied for the view's source.
    pub speed_watermark: Option<i64>,
}

/// Coalesces seal intervals into sorted, disjoint ones.
fn coalesce(mut v: Vec<(i64, i64)>) -> Vec<(i64, i64)> {
    v.sort_unstable();
    let mut out: Vec<(i64, i64)> = Vec::new();
    for (f, t) in v {
        match out.last_mut() {
            Some(last) if f <= last.1 => last.1 = last.1.max(t),
            _ => out.push((f, t)),
        }
    }
    out
}

fn covered(sealed: &[(i64, i64)], from: i64, to: i64) -> bool {
    let i = sealed.partition_point(|(_, t)| *t < to);
    sealed.get(i).is_some_and(|(f, t)| *f <= from && to <= *t)
}

/// Reads `[from, to)` of `view` from both layers and merges them per bucket.
pub async fn merged(
    lake: &Lake,
    store: &dyn ViewStore,
    view: &ViewSpec,
    from: i64,
    to: i64,
) -> Result<Merged> {
    let seals = SealLedger::new(lake).seals(Some(&view.name)).await?;
    let sealed = coalesce(
        seals
            .iter()
            .filter(|s| s.from < to && from < s.to)
            .map(|s| (s.from, s.to))
            .collect(),
    );
    let w = view.bucket_ms;
    let mut rows = Vec::new();
    let mut batch_version = None;
    if !sealed.is_empty() {
        let (version, batch_rows) = ViewTable::new(lake, view).read_range(from, to).await?;
        batch_version = version;
        rows.extend(
            batch_rows
                .into_iter()
                .filter(|r| covered(&sealed, r.bucket, r.bucket + w))
                .map(|row| MergedRow {
                    row,
                    source: Provenance::Batch,
                }),
        );
    }
    rows.extend(
        store
            .read(&view.name, from, to)
            .await?
            .into_iter()
            .filter(|r| !covered(&sealed, r.bucket, r.bucket + w))
            .map(|row| MergedRow {
                row,
                source: Provenance::Speed,
            }),
    );
    rows.sort_by(|a, b| (a.row.bucket, &a.row.dims).cmp(&(b.row.bucket, &b.row.dims)));
    let speed_watermark = store.watermark(&view.source).await?;
    Ok(Merged {
        rows,
        batch_version,
        sealed,
        speed_watermark,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coverage_is_per_bucket() {
        let s = coalesce(vec![(120, 180), (0, 60), (60, 120), (300, 360)]);
        assert_eq!(s, vec![(0, 180), (300, 360)]);
        assert!(covered(&s, 0, 60));
        assert!(covered(&s, 120, 180));
        assert!(!covered(&s, 180, 240));
        assert!(!covered(&s, 150, 210));
        assert!(covered(&s, 300, 360));
        assert!(!covered(&[], 0, 60));
    }
}
