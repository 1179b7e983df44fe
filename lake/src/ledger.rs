//! `ledger/entries`: which bucket ranges of which view the batch layer has sealed, and which
//! sealed buckets late events have made dirty since.
//!
//! The ledger is an append-only Delta table of entries:
//! - **seal**: the buckets `[from, to)` of a view were recomputed from the raw table and written
//!   to `views/<view>` as `version`. Appended after the view's own commit, so a crash in between
//!   leaves the range open (served from speed) and the next run seals it again.
//! - **late**: the lake sink received events for a bucket that is (or may already be) sealed.
//!   A late mark names the bucket, how many events, and the Kafka offsets they have in the
//!   raw table (`txn` app id → offset). It is written *before* the events are appended, so a
//!   crash in between leaves a mark whose events are not in the lake yet: harmless.
//! - **resolved**: a recompute of the mark's bucket read a raw table that holds the mark's
//!   events (every app id of the mark had reached its offset); the bucket is clean again.
//!
//! Seals are intervals: a view may have gaps, which the scheduler fills. The scheduler
//! compacts the ledger (seals coalesced per view, resolved marks dropped) into one file once
//! it has [`COMPACT_AT`] files, so every reader reads a handful of files.

use std::collections::{BTreeMap, BTreeSet};

use std::sync::Arc;

use deltalake::arrow::array::AsArray;
use deltalake::arrow::datatypes::{DataType, Field, Int64Type, Schema, TimestampMicrosecondType};
use serde_json::json;
use url::Url;

use crate::arrow_util::{active_files, json_rows_to_batch, read_files, timestamp_type};
use crate::commit::{self, TableLayout, write_files, writer_schema};
use crate::error::{Error, Result};
use crate::watch::TableWatch;
use crate::{Lake, load_or_create, try_load};

/// The ledger: a commit per seal or flush with late events, a checkpoint every 20; log entries
/// older than the last checkpoint go at once (bounded loads, no time travel).
const LEDGER_LAYOUT: TableLayout = TableLayout {
    checkpoint_every: 20,
    log_retention: "interval 0 minutes",
};

/// Files at which the scheduler compacts the ledger into one.
pub const COMPACT_AT: usize = 8;

/// A half-open range of time `[from, to)`, epoch ms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Interval {
    /// First instant (inclusive).
    pub from: i64,
    /// End (exclusive).
    pub to: i64,
}

impl Interval {
    /// `[from, to)`.
    pub fn new(from: i64, to: i64) -> Interval {
        Interval { from, to }
    }
}

/// One sealed range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seal {
    /// View name.
    pub view: String,
    /// The buckets sealed.
    pub range: Interval,
    /// Version of `views/<view>` holding the recompute.
    pub version: i64,
    /// When it was sealed, epoch ms.
    pub sealed_at: i64,
}

/// The Kafka position a late mark's events have in the raw table: the lake sink's `txn` app id
/// of their partition and the highest offset among them.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct AppOffset {
    /// `txn` app id (`<group>/<source>/<partition>`).
    pub app: String,
    /// Highest offset of the mark's events in that partition.
    pub offset: i64,
}

/// Late events for one bucket of one view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LateMark {
    /// Unique id (the same events marked twice, after a crash, have the same id).
    pub id: String,
    /// View name.
    pub view: String,
    /// The bucket.
    pub bucket: Interval,
    /// How many late events (re-deliveries included).
    pub events: i64,
    /// Where they are in the raw table.
    pub offsets: Vec<AppOffset>,
    /// When the mark was written, epoch ms.
    pub at: i64,
}

/// What the ledger says of one view.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ViewSeals {
    /// Sealed ranges, sorted, disjoint and coalesced.
    pub sealed: Vec<Interval>,
    /// Number of seal entries (after compaction: of coalesced ranges).
    pub seals: usize,
    /// The latest seal.
    pub last: Option<Seal>,
    /// Late marks not resolved yet, by bucket.
    pub pending: Vec<LateMark>,
}

impl ViewSeals {
    /// Whether the whole of `[from, to)` is sealed.
    pub fn covers(&self, from: i64, to: i64) -> bool {
        let i = self.sealed.partition_point(|s| s.to < to);
        self.sealed
            .get(i)
            .is_some_and(|s| s.from <= from && to <= s.to)
    }

    /// The end of the contiguous sealed range that starts at the first sealed bucket.
    pub fn sealed_until(&self) -> Option<i64> {
        self.sealed.first().map(|s| s.to)
    }

    /// The sealed ranges that intersect `[from, to)`, clipped to it.
    pub fn sealed_within(&self, from: i64, to: i64) -> Vec<Interval> {
        self.sealed
            .iter()
            .filter(|s| s.from < to && from < s.to)
            .map(|s| Interval::new(s.from.max(from), s.to.min(to)))
            .collect()
    }

    /// The parts of `[from, to)` that are not sealed.
    pub fn gaps(&self, from: i64, to: i64) -> Vec<Interval> {
        let mut out = Vec::new();
        let mut at = from;
        for s in self.sealed_within(from, to) {
            if s.from > at {
                out.push(Interval::new(at, s.from));
            }
            at = at.max(s.to);
        }
        if at < to {
            out.push(Interval::new(at, to));
        }
        out
    }

    /// Late events pending per sealed bucket start (dirty buckets), counting each mark once.
    pub fn dirty(&self) -> BTreeMap<i64, i64> {
        let mut out = BTreeMap::new();
        for m in &self.pending {
            if self.covers(m.bucket.from, m.bucket.to) {
                *out.entry(m.bucket.from).or_insert(0) += m.events;
            }
        }
        out
    }

    /// The dirty buckets, merged into ranges of adjacent buckets.
    pub fn dirty_ranges(&self) -> Vec<Interval> {
        let mut buckets: Vec<Interval> = self
            .pending
            .iter()
            .filter(|m| self.covers(m.bucket.from, m.bucket.to))
            .map(|m| m.bucket)
            .collect();
        buckets.sort();
        buckets.dedup();
        let mut out: Vec<Interval> = Vec::new();
        for b in buckets {
            match out.last_mut() {
                Some(last) if b.from <= last.to => last.to = last.to.max(b.to),
                _ => out.push(b),
            }
        }
        out
    }
}

/// The ledger read at one version.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LedgerSnapshot {
    /// Version of the ledger table (`None`: no ledger yet).
    pub version: Option<i64>,
    /// Per view.
    pub views: BTreeMap<String, ViewSeals>,
}

impl LedgerSnapshot {
    /// What the ledger says of `view` (empty if nothing).
    pub fn view(&self, view: &str) -> ViewSeals {
        self.views.get(view).cloned().unwrap_or_default()
    }

    fn from_entries(version: Option<i64>, entries: Vec<Entry>) -> LedgerSnapshot {
        let mut seals: BTreeMap<String, Vec<Seal>> = BTreeMap::new();
        let mut marks: BTreeMap<String, BTreeMap<String, LateMark>> = BTreeMap::new();
        let mut resolved: BTreeSet<(String, String)> = BTreeSet::new();
        for e in entries {
            match e {
                Entry::Seal(s) => seals.entry(s.view.clone()).or_default().push(s),
                Entry::Late(m) => {
                    marks
                        .entry(m.view.clone())
                        .or_default()
                        .insert(m.id.clone(), m);
                }
                Entry::Resolved { view, mark } => {
                    resolved.insert((view, mark));
                }
            }
        }
        let names: BTreeSet<String> = seals.keys().chain(marks.keys()).cloned().collect();
        let views = names
            .into_iter()
            .map(|name| {
                let mut mine = seals.remove(&name).unwrap_or_default();
                mine.sort_by_key(|s| (s.sealed_at, s.version));
                let pending = marks
                    .remove(&name)
                    .unwrap_or_default()
                    .into_values()
                    .filter(|m| !resolved.contains(&(name.clone(), m.id.clone())))
                    .collect();
                let v = ViewSeals {
                    sealed: coalesce(mine.iter().map(|s| s.range).collect()),
                    seals: mine.len(),
                    last: mine.last().cloned(),
                    pending,
                };
                (name, v)
            })
            .collect();
        LedgerSnapshot { version, views }
    }
}

/// Coalesces intervals into sorted, disjoint ones (adjacent ones merged).
pub fn coalesce(mut v: Vec<Interval>) -> Vec<Interval> {
    v.sort_unstable();
    let mut out: Vec<Interval> = Vec::new();
    for i in v {
        match out.last_mut() {
            Some(last) if i.from <= last.to => last.to = last.to.max(i.to),
            _ => out.push(i),
        }
    }
    out
}

/// One entry of the ledger table.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Entry {
    Seal(Seal),
    Late(LateMark),
    Resolved { view: String, mark: String },
}

fn schema() -> Schema {
    Schema::new(vec![
        Field::new("kind", DataType::Utf8, false),
        Field::new("view", DataType::Utf8, false),
        Field::new("from", timestamp_type(), true),
        Field::new("to", timestamp_type(), true),
        Field::new("version", DataType::Int64, true),
        Field::new("at", timestamp_type(), false),
        Field::new("events", DataType::Int64, true),
        Field::new("mark", DataType::Utf8, true),
        Field::new("offsets", DataType::Utf8, true),
    ])
}

fn row(e: &Entry) -> serde_json::Value {
    match e {
        Entry::Seal(s) => json!({
            "kind": "seal", "view": s.view, "from": s.range.from * 1000, "to": s.range.to * 1000,
            "version": s.version, "at": s.sealed_at * 1000,
        }),
        Entry::Late(m) => json!({
            "kind": "late", "view": m.view, "from": m.bucket.from * 1000, "to": m.bucket.to * 1000,
            "at": m.at * 1000, "events": m.events, "mark": m.id,
            "offsets": serde_json::to_string(&m.offsets).unwrap_or_default(),
        }),
        Entry::Resolved { view, mark } => json!({
            "kind": "resolved", "view": view, "at": 0, "mark": mark,
        }),
    }
}

fn decode(batches: Vec<deltalake::arrow::record_batch::RecordBatch>) -> Result<Vec<Entry>> {
    let bad = |m: &str| Error::State {
        view: "ledger".into(),
        message: format!("column `{m}` is missing or of the wrong type"),
    };
    let mut out = Vec::new();
    for b in batches {
        let ts = |n: &str| {
            b.column_by_name(n)
                .and_then(|c| c.as_primitive_opt::<TimestampMicrosecondType>().cloned())
                .ok_or_else(|| bad(n))
        };
        let text = |n: &str| {
            b.column_by_name(n)
                .and_then(|c| c.as_string_opt::<i32>().cloned())
                .ok_or_else(|| bad(n))
        };
        let int = |n: &str| {
            b.column_by_name(n)
                .and_then(|c| c.as_primitive_opt::<Int64Type>().cloned())
                .ok_or_else(|| bad(n))
        };
        let (kind, view, mark, offsets) = (
            text("kind")?,
            text("view")?,
            text("mark")?,
            text("offsets")?,
        );
        let (from, to, at) = (ts("from")?, ts("to")?, ts("at")?);
        let (version, events) = (int("version")?, int("events")?);
        for i in 0..b.num_rows() {
            let range = Interval::new(from.value(i) / 1000, to.value(i) / 1000);
            let view = view.value(i).to_string();
            let entry = match kind.value(i) {
                "seal" => Entry::Seal(Seal {
                    view,
                    range,
                    version: version.value(i),
                    sealed_at: at.value(i) / 1000,
                }),
                "late" => Entry::Late(LateMark {
                    id: mark.value(i).to_string(),
                    view,
                    bucket: range,
                    events: events.value(i),
                    offsets: serde_json::from_str(offsets.value(i)).map_err(|e| Error::State {
                        view: "ledger".into(),
                        message: format!("late mark offsets: {e}"),
                    })?,
                    at: at.value(i) / 1000,
                }),
                "resolved" => Entry::Resolved {
                    view,
                    mark: mark.value(i).to_string(),
                },
                other => {
                    return Err(Error::State {
                        view: "ledger".into(),
                        message: format!("unknown entry kind `{other}`"),
                    });
                }
            };
            out.push(entry);
        }
    }
    Ok(out)
}

/// The seal ledger of a lake.
#[derive(Debug, Clone)]
pub struct SealLedger {
    url: Url,
}

impl SealLedger {
    /// The ledger of `lake`.
    pub fn new(lake: &Lake) -> SealLedger {
        SealLedger {
            url: lake.table_url("ledger/entries"),
        }
    }

    /// The table URL.
    pub fn url(&self) -> &Url {
        &self.url
    }

    async fn append(&self, entries: &[Entry]) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut table = load_or_create(&self.url, &schema(), &[], LEDGER_LAYOUT, &[]).await?;
        let rows: Vec<_> = entries.iter().map(row).collect();
        let batch = json_rows_to_batch(self.url.as_str(), writer_schema(&table)?, &rows)?;
        let adds = write_files(&table, vec![batch]).await?;
        commit::append(&mut table, adds, Vec::new(), &[]).await?;
        Ok(())
    }

    /// Records seals of one view and, in the same commit, the late marks they resolved.
    pub async fn record(&self, seals: &[Seal], resolved: &[String]) -> Result<()> {
        let mut entries: Vec<Entry> = seals.iter().cloned().map(Entry::Seal).collect();
        if let Some(view) = seals.first().map(|s| s.view.clone()) {
            entries.extend(resolved.iter().map(|m| Entry::Resolved {
                view: view.clone(),
                mark: m.clone(),
            }));
        }
        self.append(&entries).await
    }

    /// Records late marks (one commit).
    pub async fn mark_late(&self, marks: &[LateMark]) -> Result<()> {
        let entries: Vec<Entry> = marks.iter().cloned().map(Entry::Late).collect();
        self.append(&entries).await
    }

    /// Removes every entry of `view` (seals, late marks) in one commit: its state is being
    /// rebuilt from scratch. Run with the deployment stopped.
    pub async fn forget_view(&self, view: &str) -> Result<()> {
        let Some(mut table) = try_load(&self.url).await? else {
            return Ok(());
        };
        let files = active_files(&table)?;
        let paths: Vec<_> = files.iter().map(|f| f.path.clone()).collect();
        let kept: Vec<_> = decode(read_files(&table, &paths).await?)?
            .into_iter()
            .filter(|e| match e {
                Entry::Seal(s) => s.view != view,
                Entry::Late(m) => m.view != view,
                Entry::Resolved { view: v, .. } => v != view,
            })
            .map(|e| row(&e))
            .collect();
        let batches = if kept.is_empty() {
            Vec::new()
        } else {
            vec![json_rows_to_batch(
                self.url.as_str(),
                writer_schema(&table)?,
                &kept,
            )?]
        };
        commit::replace(&mut table, files, batches, None).await?;
        Ok(())
    }

    /// The ledger at its latest version.
    pub async fn snapshot(&self) -> Result<LedgerSnapshot> {
        let Some(table) = try_load(&self.url).await? else {
            return Ok(LedgerSnapshot::default());
        };
        read_snapshot(&table).await
    }

    /// Rewrites the ledger as one file when it has [`COMPACT_AT`] files or more: each view's
    /// seals coalesced into disjoint ranges, resolved marks and their resolutions dropped.
    /// One commit without a data change (the ledger means the same); only the scheduler
    /// compacts. Returns whether it did.
    pub async fn compact(&self) -> Result<bool> {
        let Some(mut table) = try_load(&self.url).await? else {
            return Ok(false);
        };
        let files = active_files(&table)?;
        if files.len() < COMPACT_AT {
            return Ok(false);
        }
        let paths: Vec<_> = files.iter().map(|f| f.path.clone()).collect();
        let snapshot =
            LedgerSnapshot::from_entries(None, decode(read_files(&table, &paths).await?)?);
        let mut entries = Vec::new();
        for (view, v) in &snapshot.views {
            let (version, at) = v.last.as_ref().map_or((0, 0), |s| (s.version, s.sealed_at));
            entries.extend(v.sealed.iter().map(|range| {
                Entry::Seal(Seal {
                    view: view.clone(),
                    range: *range,
                    version,
                    sealed_at: at,
                })
            }));
            entries.extend(v.pending.iter().cloned().map(Entry::Late));
        }
        let rows: Vec<_> = entries.iter().map(row).collect();
        let batches = if rows.is_empty() {
            Vec::new()
        } else {
            vec![json_rows_to_batch(
                self.url.as_str(),
                writer_schema(&table)?,
                &rows,
            )?]
        };
        match commit::rewrite(&mut table, files, batches, None).await {
            Ok(_) => Ok(true),
            Err(Error::Conflict { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// A reader of the ledger that re-reads it only when its version moved (serving, the lake
/// sink): one metadata request per call otherwise.
#[derive(Debug)]
pub struct LedgerReader {
    watch: TableWatch,
    snapshot: Arc<LedgerSnapshot>,
    counts: crate::views::CacheCounts,
}

impl LedgerReader {
    /// A reader of the ledger of `lake`.
    pub fn new(lake: &Lake) -> LedgerReader {
        LedgerReader {
            watch: TableWatch::new(SealLedger::new(lake).url),
            snapshot: Arc::default(),
            counts: Default::default(),
        }
    }

    /// Snapshots answered from memory (the ledger had not moved) and re-read so far.
    pub fn counts(&self) -> crate::views::CacheCounts {
        self.counts
    }

    /// The ledger at its latest version.
    pub async fn snapshot(&mut self) -> Result<Arc<LedgerSnapshot>> {
        if self.watch.refresh().await?
            && let Some(t) = self.watch.table()
        {
            self.counts.misses += 1;
            self.snapshot = Arc::new(read_snapshot(t).await?);
        } else {
            self.counts.hits += 1;
        }
        Ok(self.snapshot.clone())
    }
}

/// Reads every entry of the ledger at the table's loaded version.
pub(crate) async fn read_snapshot(table: &deltalake::DeltaTable) -> Result<LedgerSnapshot> {
    let paths: Vec<_> = active_files(table)?.into_iter().map(|f| f.path).collect();
    let entries = decode(read_files(table, &paths).await?)?;
    Ok(LedgerSnapshot::from_entries(
        table.version().map(|v| v as i64),
        entries,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seal(view: &str, from: i64, to: i64, version: i64) -> Seal {
        Seal {
            view: view.into(),
            range: Interval::new(from, to),
            version,
            sealed_at: version,
        }
    }

    fn mark(id: &str, view: &str, bucket: i64, events: i64) -> LateMark {
        LateMark {
            id: id.into(),
            view: view.into(),
            bucket: Interval::new(bucket, bucket + 60),
            events,
            offsets: vec![AppOffset {
                app: "g/s/0".into(),
                offset: 7,
            }],
            at: 1,
        }
    }

    /// A reader that lagged behind a checkpoint (whose older log entries were removed) still
    /// sees every new version.
    #[tokio::test]
    async fn a_reader_follows_the_ledger_past_checkpoints() {
        let dir = tempfile::tempdir().unwrap();
        let lake = Lake::open(dir.path().to_str().unwrap()).unwrap();
        let ledger = SealLedger::new(&lake);
        ledger.record(&[seal("a", 0, 60, 1)], &[]).await.unwrap();
        let mut reader = LedgerReader::new(&lake);
        assert_eq!(reader.snapshot().await.unwrap().view("a").seals, 1);
        for i in 1..45 {
            ledger
                .record(&[seal("a", i * 60, (i + 1) * 60, i)], &[])
                .await
                .unwrap();
        }
        // the log entries right after the reader's version are gone
        assert!(
            !dir.path()
                .join("ledger/entries/_delta_log/00000000000000000001.json")
                .exists()
        );
        let snap = reader.snapshot().await.unwrap();
        assert_eq!(snap.view("a").seals, 45);
        assert_eq!(snap.view("a").sealed_until(), Some(45 * 60));
    }

    #[test]
    fn seals_are_intervals_with_gaps() {
        let v = ViewSeals {
            sealed: coalesce(vec![
                Interval::new(120, 180),
                Interval::new(0, 60),
                Interval::new(60, 120),
                Interval::new(300, 360),
            ]),
            ..ViewSeals::default()
        };
        assert_eq!(
            v.sealed,
            vec![Interval::new(0, 180), Interval::new(300, 360)]
        );
        assert!(v.covers(0, 60) && v.covers(120, 180) && v.covers(300, 360));
        assert!(!v.covers(180, 240) && !v.covers(150, 210));
        // the contiguous prefix, not the highest end
        assert_eq!(v.sealed_until(), Some(180));
        assert_eq!(
            v.gaps(0, 420),
            vec![Interval::new(180, 300), Interval::new(360, 420)]
        );
        assert_eq!(v.gaps(60, 120), vec![]);
        assert!(!ViewSeals::default().covers(0, 60));
    }

    #[tokio::test]
    async fn the_ledger_keeps_seals_and_late_marks_and_stays_small() {
        let dir = tempfile::tempdir().unwrap();
        let lake = Lake::open(dir.path().to_str().unwrap()).unwrap();
        let ledger = SealLedger::new(&lake);
        assert_eq!(ledger.snapshot().await.unwrap(), LedgerSnapshot::default());
        let n = COMPACT_AT as i64 + 5;
        for i in 0..n {
            let view = if i % 2 == 0 { "a" } else { "b" };
            // every view gets every other minute: a, then b, then a...
            ledger
                .record(&[seal(view, i * 60, (i + 1) * 60, i)], &[])
                .await
                .unwrap();
        }
        ledger
            .mark_late(&[
                mark("m1", "a", 0, 2),
                mark("m2", "a", 120, 1),
                mark("m3", "a", 9_000, 4),
            ])
            .await
            .unwrap();
        ledger
            .record(&[seal("a", 120, 180, 99)], &["m2".into()])
            .await
            .unwrap();
        let snap = ledger.snapshot().await.unwrap();
        let a = snap.view("a");
        assert_eq!(a.seals, (n as usize).div_ceil(2) + 1);
        assert_eq!(a.sealed_until(), Some(60));
        assert_eq!(a.last.as_ref().map(|s| s.version), Some(99));
        // m3's bucket is not sealed: pending, but not dirty
        assert_eq!(a.dirty(), BTreeMap::from([(0, 2)]));
        assert_eq!(a.dirty_ranges(), vec![Interval::new(0, 60)]);
        assert_eq!(a.pending.len(), 2);

        assert!(ledger.compact().await.unwrap());
        let table = try_load(ledger.url()).await.unwrap().unwrap();
        assert_eq!(active_files(&table).unwrap().len(), 1);
        let after = ledger.snapshot().await.unwrap();
        for name in ["a", "b"] {
            let (x, y) = (snap.view(name), after.view(name));
            assert_eq!(x.sealed, y.sealed, "{name}");
            assert_eq!(x.pending, y.pending, "{name}");
            assert_eq!(x.dirty(), y.dirty(), "{name}");
        }
        assert!(!ledger.compact().await.unwrap(), "one file: nothing to do");
        // the compacted files are deleted by a vacuum; the ledger reads the same
        let on_disk = || {
            std::fs::read_dir(dir.path().join("ledger/entries"))
                .unwrap()
                .filter(|e| {
                    e.as_ref()
                        .unwrap()
                        .path()
                        .extension()
                        .is_some_and(|x| x == "parquet")
                })
                .count()
        };
        let before = on_disk();
        let deleted = crate::vacuum(ledger.url(), std::time::Duration::ZERO)
            .await
            .unwrap();
        assert_eq!(deleted, before - 1);
        assert_eq!(on_disk(), 1);
        assert_eq!(ledger.snapshot().await.unwrap().views, after.views);
    }
}
