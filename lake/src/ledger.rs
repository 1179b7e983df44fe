//! `ledger/seals`: which bucket ranges of which view the batch layer has sealed, and with
//! which version of the view's table. Appended after the view's own commit, so a crash in
//! between leaves the range open (served from speed) and the next run seals it again.

use deltalake::arrow::array::{Array, AsArray};
use deltalake::arrow::datatypes::{DataType, Field, Int64Type, Schema, TimestampMicrosecondType};
use serde_json::json;
use url::Url;

use crate::arrow_util::{active_files, json_rows_to_batch, read_files, timestamp_type};
use crate::commit::{self, TableLayout, write_files, writer_schema};
use crate::error::{Error, Result};
use crate::{Lake, load_or_create, try_load};

/// One sealed range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seal {
    /// View name.
    pub view: String,
    /// First bucket start (inclusive), epoch ms.
    pub from: i64,
    /// End (exclusive), epoch ms.
    pub to: i64,
    /// Version of `views/<view>` holding the recompute.
    pub version: i64,
    /// When it was sealed, epoch ms.
    pub sealed_at: i64,
}

/// The ledger: a commit per seal, a checkpoint every 20; old log entries go after two days.
const LEDGER_LAYOUT: TableLayout = TableLayout {
    checkpoint_every: 20,
    log_retention: "interval 2 days",
};

/// The seal ledger of a lake.
#[derive(Debug, Clone)]
pub struct SealLedger {
    url: Url,
}

fn schema() -> Schema {
    Schema::new(vec![
        Field::new("view", DataType::Utf8, false),
        Field::new("from", timestamp_type(), false),
        Field::new("to", timestamp_type(), false),
        Field::new("version", DataType::Int64, false),
        Field::new("sealed_at", timestamp_type(), false),
    ])
}

impl SealLedger {
    /// The ledger of `lake`.
    pub fn new(lake: &Lake) -> SealLedger {
        SealLedger {
            url: lake.table_url("ledger/seals"),
        }
    }

    /// Appends a seal (one Delta commit, a blind append). When the ledger has grown to
    /// [`COMPACT_AT`] files, they are rewritten as one in a second commit (without a data
    /// change), so that readers (every query) read a bounded number of files.
    pub async fn record(&self, seal: &Seal) -> Result<()> {
        let name = self.url.to_string();
        let mut table = load_or_create(&self.url, &schema(), &[], LEDGER_LAYOUT).await?;
        let batch = json_rows_to_batch(&name, writer_schema(&table)?, &[row(seal)])?;
        let adds = write_files(&table, vec![batch]).await?;
        commit::append(&mut table, adds, Vec::new(), &[]).await?;
        if active_files(&table)?.len() >= COMPACT_AT {
            match self.compact(&mut table).await {
                // another process compacted first; the next seal tries again
                Err(Error::Conflict { .. }) => {}
                other => other?,
            }
        }
        Ok(())
    }

    /// Rewrites every active file of the ledger as one file, in one commit.
    async fn compact(&self, table: &mut deltalake::DeltaTable) -> Result<()> {
        let files = active_files(table)?;
        let paths: Vec<_> = files.iter().map(|f| f.path.clone()).collect();
        let seals = decode(read_files(table, &paths).await?, None)?;
        let rows: Vec<_> = seals.iter().map(row).collect();
        let batch = json_rows_to_batch(self.url.as_ref(), writer_schema(table)?, &rows)?;
        commit::rewrite(table, files, vec![batch], None).await?;
        Ok(())
    }

    /// Every seal, optionally of one view, oldest first.
    pub async fn seals(&self, view: Option<&str>) -> Result<Vec<Seal>> {
        let Some(table) = try_load(&self.url).await? else {
            return Ok(Vec::new());
        };
        let paths: Vec<_> = active_files(&table)?.into_iter().map(|f| f.path).collect();
        decode(read_files(&table, &paths).await?, view)
    }
}

/// Files at which the ledger is compacted into one.
pub const COMPACT_AT: usize = 32;

fn row(seal: &Seal) -> serde_json::Value {
    json!({
        "view": seal.view, "from": seal.from * 1000, "to": seal.to * 1000,
        "version": seal.version, "sealed_at": seal.sealed_at * 1000,
    })
}

/// The seals in `batches` (of one view, if given), oldest first.
fn decode(
    batches: Vec<deltalake::arrow::record_batch::RecordBatch>,
    view: Option<&str>,
) -> Result<Vec<Seal>> {
    let bad = |m: &str| Error::State {
        view: "ledger".into(),
        message: m.into(),
    };
    let mut out = Vec::new();
    for b in batches {
        let ts = |n: &str| {
            b.column_by_name(n)
                .and_then(|c| c.as_primitive_opt::<TimestampMicrosecondType>().cloned())
                .ok_or_else(|| bad(n))
        };
        let views = b
            .column_by_name("view")
            .and_then(|c| c.as_string_opt::<i32>().cloned())
            .ok_or_else(|| bad("view"))?;
        let versions = b
            .column_by_name("version")
            .and_then(|c| c.as_primitive_opt::<Int64Type>().cloned())
            .ok_or_else(|| bad("version"))?;
        let (from, to, at) = (ts("from")?, ts("to")?, ts("sealed_at")?);
        for i in 0..b.num_rows() {
            if views.is_null(i) || view.is_some_and(|v| v != views.value(i)) {
                continue;
            }
            out.push(Seal {
                view: views.value(i).to_string(),
                from: from.value(i) / 1000,
                to: to.value(i) / 1000,
                version: versions.value(i),
                sealed_at: at.value(i) / 1000,
            });
        }
    }
    out.sort_by_key(|s| (s.sealed_at, s.version));
    Ok(out)
}

/// The latest seal covering the whole of `[from, to)`, if any.
pub fn covering(seals: &[Seal], from: i64, to: i64) -> Option<&Seal> {
    seals.iter().rev().find(|s| s.from <= from && to <= s.to)
}

/// The end of the contiguous sealed prefix starting at the earliest seal: where a scheduled
/// job resumes.
pub fn sealed_until(seals: &[Seal]) -> Option<i64> {
    seals.iter().map(|s| s.to).max()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_ledger_stays_small_and_complete() {
        let dir = tempfile::tempdir().unwrap();
        let lake = Lake::open(dir.path().to_str().unwrap()).unwrap();
        let ledger = SealLedger::new(&lake);
        assert!(ledger.seals(None).await.unwrap().is_empty());
        let n = COMPACT_AT as i64 + 5;
        for i in 0..n {
            let view = if i % 2 == 0 { "a" } else { "b" };
            ledger
                .record(&Seal {
                    view: view.into(),
                    from: i * 60_000,
                    to: (i + 1) * 60_000,
                    version: i,
                    sealed_at: i,
                })
                .await
                .unwrap();
        }
        let all = ledger.seals(None).await.unwrap();
        assert_eq!(all.len(), n as usize);
        assert_eq!(
            all.iter().map(|s| s.version).collect::<Vec<_>>(),
            (0..n).collect::<Vec<_>>()
        );
        assert_eq!(
            ledger.seals(Some("b")).await.unwrap().len(),
            (n / 2) as usize
        );
        let table = try_load(&ledger.url).await.unwrap().unwrap();
        let files = active_files(&table).unwrap().len();
        assert!(files < COMPACT_AT, "{files} files after compaction");
        assert_eq!(covering(&all, 60_000, 120_000).map(|s| s.version), Some(1));
        assert_eq!(sealed_until(&all), Some(n * 60_000));
    }
}
