//! The merged read: per bucket, sealed buckets from the batch table, open ones from the
//! speed store, never both. Sealed buckets that late events made dirty are flagged with the
//! number of late events pending until the scheduler recomputes them.
//!
//! The ledger and the view tables are read through readers that follow the tables' versions
//! and re-read only what changed (see [`duet_lake::LedgerReader`], [`duet_lake::ViewReader`]),
//! so a query costs the same on a fresh lake as after a day of seals. The ledger is read
//! before the view table: every seal it lists was committed to the view table before, so the
//! view rows read are at least as new as the seals.

use std::collections::{BTreeMap, HashMap};

use duet_config::{Config, Row, ViewSpec};
use duet_lake::{Interval, Lake, LedgerReader, ViewReader, ViewTable};
use duet_speed::ViewStore;
use tokio::sync::Mutex;

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
    /// Late events received for this sealed bucket and not yet recomputed into it.
    pub late_pending: Option<i64>,
}

/// The merged answer for a range.
#[derive(Debug, Clone, PartialEq)]
pub struct Merged {
    /// Rows by bucket, then dimensions.
    pub rows: Vec<MergedRow>,
    /// Version of `views/<view>` read (if any bucket was sealed).
    pub batch_version: Option<i64>,
    /// Sealed intervals intersecting the range, clipped and coalesced.
    pub sealed: Vec<Interval>,
    /// Sealed buckets of the range with late events pending: bucket start → events.
    pub late_pending: BTreeMap<i64, i64>,
    /// Highest event time the speed layer applied for the view's source.
    pub speed_watermark: Option<i64>,
    /// The end of the view's last sealed range, anywhere (not only in the query's range).
    pub sealed_until_all: Option<i64>,
    /// When the speed layer last committed, epoch ms.
    pub last_commit_ms: Option<i64>,
}

/// The caches of [`LakeReaders`]: its ledger snapshots, and the `bucket_date` partitions of its
/// view tables.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LakeCacheCounts {
    /// Ledger snapshots reused (the ledger had not moved) and re-read.
    pub ledger: duet_lake::CacheCounts,
    /// View partitions served from memory and read from their files.
    pub views: duet_lake::CacheCounts,
}

/// The lake as serving reads it: the ledger and every view's table, each followed by version.
#[derive(Debug)]
pub struct LakeReaders {
    ledger: Mutex<LedgerReader>,
    views: HashMap<String, Mutex<ViewReader>>,
}

impl LakeReaders {
    /// Readers for the ledger and the tables of every view of `cfg`.
    pub fn new(lake: &Lake, cfg: &Config) -> LakeReaders {
        LakeReaders {
            ledger: Mutex::new(LedgerReader::new(lake)),
            views: cfg
                .views
                .iter()
                .map(|v| (v.name.clone(), Mutex::new(ViewTable::new(lake, v).reader())))
                .collect(),
        }
    }
}

impl LakeReaders {
    /// How often the ledger reader and the view readers answered from memory and how often
    /// they read the lake: (ledger, view partitions).
    pub async fn cache_counts(&self) -> LakeCacheCounts {
        let mut views = duet_lake::CacheCounts::default();
        for r in self.views.values() {
            views += r.lock().await.counts();
        }
        LakeCacheCounts {
            ledger: self.ledger.lock().await.counts(),
            views,
        }
    }

    /// Whether the seal ledger can be read (for `/ready`).
    pub async fn check(&self) -> Result<()> {
        self.ledger.lock().await.snapshot().await?;
        Ok(())
    }
}

/// Reads `[from, to)` of `view` from both layers and merges them per bucket.
pub async fn merged(
    lake: &LakeReaders,
    store: &dyn ViewStore,
    view: &ViewSpec,
    from: i64,
    to: i64,
) -> Result<Merged> {
    let seals = lake.ledger.lock().await.snapshot().await?.view(&view.name);
    let sealed = seals.sealed_within(from, to);
    let late_pending: BTreeMap<i64, i64> = seals
        .dirty()
        .into_iter()
        .filter(|(b, _)| *b >= from && *b < to)
        .collect();
    let w = view.bucket_ms;
    let mut rows = Vec::new();
    let mut batch_version = None;
    if !sealed.is_empty()
        && let Some(reader) = lake.views.get(&view.name)
    {
        let (version, batch_rows) = reader.lock().await.read_range(from, to).await?;
        batch_version = version;
        rows.extend(
            batch_rows
                .into_iter()
                .filter(|r| seals.covers(r.bucket, r.bucket + w))
                .map(|row| MergedRow {
                    late_pending: late_pending.get(&row.bucket).copied(),
                    row,
                    source: Provenance::Batch,
                }),
        );
    }
    let marked = store
        .read_marked(&view.name, &view.source, from, to)
        .await?;
    rows.extend(
        marked
            .rows
            .into_iter()
            .filter(|r| !seals.covers(r.bucket, r.bucket + w))
            .map(|row| MergedRow {
                row,
                source: Provenance::Speed,
                late_pending: None,
            }),
    );
    rows.sort_by(|a, b| (a.row.bucket, &a.row.dims).cmp(&(b.row.bucket, &b.row.dims)));
    Ok(Merged {
        rows,
        batch_version,
        sealed,
        late_pending,
        speed_watermark: marked.watermark,
        sealed_until_all: seals.sealed.last().map(|i| i.to),
        last_commit_ms: marked.last_commit_ms,
    })
}
