//! `raw/<source>`: the master dataset, one row per delivered event, partitioned by event
//! date and hour (UTC). Appends are idempotent: each commit carries Delta `txn` actions with
//! the last Kafka offset written per partition, and records at or below it are skipped.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use deltalake::DeltaTable;
use deltalake::arrow::array::{ArrayRef, StringArray};
use deltalake::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use deltalake::arrow::record_batch::RecordBatch;
use deltalake::kernel::Transaction;
use duet_config::{Event, Source};
use serde_json::{Map, Value as J};
use url::Url;

use crate::arrow_util::{self, ActiveFile, active_files, arrow_type, timestamp_type};
use crate::commit::{self, TableLayout, TxnExpectation, txn_version, write_files, writer_schema};
use crate::error::{Error, Result};
use crate::ledger::Interval;
use crate::{Lake, load_or_create, local_path, try_load};

/// Raw tables: a commit per flush of the lake sink (seconds apart), a checkpoint every 100;
/// log entries older than an hour and older than the last checkpoint go, so a load lists about
/// an hour of commits however old the table (time travel reaches an hour back).
const RAW_LAYOUT: TableLayout = TableLayout {
    checkpoint_every: 100,
    log_retention: "interval 1 hour",
};

/// Partition columns of raw tables.
pub const PARTITIONS: [&str; 2] = ["event_date", "event_hour"];

/// One event as delivered, with where it came from.
#[derive(Debug, Clone)]
pub struct RawRecord {
    /// The decoded event.
    pub event: Event,
    /// Kafka partition.
    pub partition: i32,
    /// Kafka offset.
    pub offset: i64,
    /// The message bytes as text (lossless backup of undeclared fields).
    pub payload: String,
}

/// The arrow schema of `raw/<source>`: metadata columns, declared fields, partitions.
pub fn raw_schema(source: &Source) -> Schema {
    let mut fields = vec![
        Field::new("_event_id", DataType::Utf8, false),
        Field::new("_event_time", timestamp_type(), false),
        Field::new("_partition", DataType::Int32, false),
        Field::new("_offset", DataType::Int64, false),
        Field::new("_payload", DataType::Utf8, true),
    ];
    for (name, t) in &source.fields {
        fields.push(Field::new(name, arrow_type(t), true));
    }
    for p in PARTITIONS {
        fields.push(Field::new(p, DataType::Utf8, false));
    }
    Schema::new(fields)
}

fn partition_values(time_ms: i64) -> (String, String) {
    let t = DateTime::<Utc>::from_timestamp_millis(time_ms).unwrap_or_default();
    (t.format("%Y-%m-%d").to_string(), t.format("%H").to_string())
}

/// The `txn` app id recording the last offset of one Kafka partition written by one consumer
/// group: offsets only mean something for one group on one cluster.
pub fn txn_app(group: &str, source: &str, partition: i32) -> String {
    format!("{group}/{source}/{partition}")
}

fn watermark_app(source: &str) -> String {
    format!("duet-lake/{source}/watermark")
}

/// Appends events to `raw/<source>`.
pub struct RawWriter {
    source: Source,
    group: String,
    url: Url,
    table: DeltaTable,
    schema: SchemaRef,
    /// Last committed offset per partition, as read from the table (`None`: nothing yet).
    committed: HashMap<i32, Option<i64>>,
    watermark: Option<i64>,
}

impl RawWriter {
    /// Opens (creating if needed) the raw table of `source`, for the consumer group `group`
    /// whose offsets the table's `txn` actions record.
    pub async fn open(lake: &Lake, source: &Source, group: &str) -> Result<RawWriter> {
        let url = lake.raw_table_url(&source.name);
        let table = load_or_create(&url, &raw_schema(source), &PARTITIONS, RAW_LAYOUT, &[]).await?;
        let schema = writer_schema(&table)?;
        let watermark = txn_version(&table, &watermark_app(&source.name)).await?;
        Ok(RawWriter {
            source: source.clone(),
            group: group.to_string(),
            url,
            table,
            schema,
            committed: HashMap::new(),
            watermark,
        })
    }

    /// The last offset committed to the table for a Kafka partition (resume after it).
    pub async fn committed_offset(&mut self, partition: i32) -> Result<Option<i64>> {
        if let Some(o) = self.committed.get(&partition) {
            return Ok(*o);
        }
        let v = txn_version(
            &self.table,
            &txn_app(&self.group, &self.source.name, partition),
        )
        .await?;
        self.committed.insert(partition, v);
        Ok(v)
    }

    /// The records not written yet: those above their partition's committed offset, each
    /// offset once.
    pub async fn unwritten<'a>(&mut self, records: &'a [RawRecord]) -> Result<Vec<&'a RawRecord>> {
        let mut out = Vec::new();
        let mut last: HashMap<i32, i64> = HashMap::new();
        for r in records {
            let done = self.committed_offset(r.partition).await?;
            if done.is_some_and(|d| r.offset <= d)
                || last.get(&r.partition).is_some_and(|l| r.offset <= *l)
            {
                continue;
            }
            last.insert(r.partition, r.offset);
            out.push(r);
        }
        Ok(out)
    }

    /// The `txn` app id recording this writer's offsets of a Kafka partition.
    pub fn app(&self, partition: i32) -> String {
        txn_app(&self.group, &self.source.name, partition)
    }

    /// Appends records in one Delta commit; records at or below a partition's committed
    /// offset are skipped (re-delivery). `watermark` is the source's event-time watermark after
    /// these records (see [`crate::watermark`]); it is recorded in the same commit when it is
    /// higher than the recorded one (the recorded watermark never moves back), in a commit of
    /// its own if there are no records. Returns the new table version, if anything was written.
    pub async fn append(
        &mut self,
        records: &[RawRecord],
        watermark: Option<i64>,
    ) -> Result<Option<i64>> {
        let mut rows = Vec::with_capacity(records.len());
        let mut last: HashMap<i32, i64> = HashMap::new();
        for r in self.unwritten(records).await? {
            last.insert(r.partition, r.offset);
            rows.push(self.row(r));
        }
        let advanced = watermark.filter(|w| self.watermark.is_none_or(|old| *w > old));
        if rows.is_empty() && advanced.is_none() {
            return Ok(None);
        }
        let mut txns: Vec<Transaction> = last
            .iter()
            .map(|(p, o)| Transaction::new(txn_app(&self.group, &self.source.name, *p), *o))
            .collect();
        if let Some(w) = advanced {
            txns.push(Transaction::new(watermark_app(&self.source.name), w));
        }
        let adds = if rows.is_empty() {
            Vec::new()
        } else {
            let batch =
                arrow_util::json_rows_to_batch(self.url.as_str(), self.schema.clone(), &rows)?;
            write_files(&self.table, vec![batch]).await?
        };
        // Valid on a newer version of the table only if no other writer recorded offsets of
        // these partitions meanwhile (two sinks of one group would write every event twice).
        let expect: Vec<TxnExpectation> = last
            .keys()
            .map(|p| TxnExpectation {
                app: txn_app(&self.group, &self.source.name, *p),
                version: self.committed.get(p).copied().flatten(),
            })
            .collect();
        let version = commit::append(&mut self.table, adds, txns, &expect).await?;
        self.committed
            .extend(last.into_iter().map(|(p, o)| (p, Some(o))));
        if advanced.is_some() {
            self.watermark = advanced;
        }
        Ok(Some(version))
    }

    fn row(&self, r: &RawRecord) -> J {
        let mut m = Map::new();
        let (date, hour) = partition_values(r.event.time_ms);
        m.insert("_event_id".into(), J::from(r.event.id.as_str()));
        m.insert("_event_time".into(), J::from(r.event.time_ms * 1000));
        m.insert("_partition".into(), J::from(r.partition));
        m.insert("_offset".into(), J::from(r.offset));
        m.insert("_payload".into(), J::from(r.payload.clone()));
        for (name, v) in &r.event.fields {
            m.insert(name.to_string(), v.to_json());
        }
        m.insert("event_date".into(), J::from(date));
        m.insert("event_hour".into(), J::from(hour));
        J::Object(m)
    }

    /// The recorded event-time watermark of the source (epoch ms).
    pub fn watermark(&self) -> Option<i64> {
        self.watermark
    }
}

/// What the batch layer reads of a raw table.
#[derive(Debug, Clone, Default)]
pub struct RawSnapshot {
    table: Option<DeltaTable>,
    /// Table version read (`None`: no table yet).
    pub version: Option<i64>,
    /// Local paths of the Parquet files to scan.
    pub files: Vec<String>,
    /// The source's event-time watermark recorded by the lake sink (epoch ms): every partition
    /// has delivered events up to it (see [`crate::watermark`]).
    pub watermark: Option<i64>,
    /// Midnight (UTC, epoch ms) of the earliest event date in the table.
    pub first_date_ms: Option<i64>,
}

impl RawSnapshot {
    /// The last Kafka offset the snapshot holds for a lake sink's `txn` app id (see
    /// [`txn_app`]); `None` if it holds none.
    pub async fn committed(&self, app: &str) -> Result<Option<i64>> {
        match &self.table {
            Some(t) => txn_version(t, app).await,
            None => Ok(None),
        }
    }
}

/// Which rows the batch layer will read: those whose int field `field` (a dotted path) lies
/// in one of `ranges`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeRange<'a> {
    /// The view's time field.
    pub field: &'a str,
    /// The ranges of time.
    pub ranges: &'a [Interval],
}

/// Whether a file whose statistics are `stats` can hold a row with `range.field` in the range:
/// false only when its min/max statistics for the field say so (missing statistics: true).
fn may_hold(stats: Option<&str>, range: &TimeRange<'_>) -> bool {
    let Some(stats) = stats.and_then(|s| serde_json::from_str::<J>(s).ok()) else {
        return true;
    };
    let at = |key: &str| -> Option<i64> {
        range
            .field
            .split('.')
            .try_fold(&stats[key], |v, seg| v.get(seg))
            .and_then(J::as_i64)
    };
    match (at("minValues"), at("maxValues")) {
        (Some(min), Some(max)) => range.ranges.iter().any(|r| min < r.to && max >= r.from),
        _ => {
            // no min/max: either not collected (keep) or every value is null (no bucket)
            let rows = stats["numRecords"].as_i64();
            let nulls = range
                .field
                .split('.')
                .try_fold(&stats["nullCount"], |v, seg| v.get(seg))
                .and_then(J::as_i64);
            !(rows.is_some() && rows == nulls)
        }
    }
}

/// The files of `raw/<source>` that can hold rows of `range` by their min/max statistics
/// (all files when `range` is `None`).
pub async fn raw_snapshot(
    lake: &Lake,
    source: &str,
    range: Option<TimeRange<'_>>,
) -> Result<RawSnapshot> {
    let url = lake.raw_table_url(source);
    let Some(table) = try_load(&url).await? else {
        return Ok(RawSnapshot::default());
    };
    let mut files = Vec::new();
    let mut first: Option<String> = None;
    for f in active_files(&table)? {
        if let Some(d) = f.partition("event_date")
            && first.as_deref().is_none_or(|f| d < f)
        {
            first = Some(d.to_string());
        }
        if let Some(r) = &range
            && !may_hold(f.stats.as_deref(), r)
        {
            continue;
        }
        let uri = table.log_store().to_uri(&f.path);
        let local = local_path(&uri).ok_or_else(|| Error::Location {
            url: uri.clone(),
            message: "the batch layer reads local lakes only in this version".into(),
        })?;
        files.push(local);
    }
    Ok(RawSnapshot {
        version: table.version().map(|v| v as i64),
        files,
        watermark: txn_version(&table, &watermark_app(source)).await?,
        table: Some(table),
        first_date_ms: first.and_then(|d| {
            chrono::NaiveDate::parse_from_str(&d, "%Y-%m-%d")
                .ok()?
                .and_hms_opt(0, 0, 0)
                .map(|t| t.and_utc().timestamp_millis())
        }),
    })
}

/// Row count of `raw/<source>` (from Delta file statistics), for monitoring and tests.
pub async fn raw_count(lake: &Lake, source: &str) -> Result<u64> {
    let url = lake.raw_table_url(source);
    let Some(table) = try_load(&url).await? else {
        return Ok(0);
    };
    Ok(active_files(&table)?
        .iter()
        .map(|f| f.records.unwrap_or(0) as u64)
        .sum())
}

/// Rewrites each closed `(event_date, event_hour)` partition of `raw/<source>` that has more
/// than one file as a single file, one Delta commit per partition. The commit has no data
/// change (the rows and the `txn` offsets stay the same), so the lake sink's appends, late
/// events for the same hour included, never conflict with it. A partition is closed when its
/// hour ended at or before `before_ms`. Returns how many partitions were compacted.
///
/// The lake sink writes a file per partition and flush; without this, a day of minutely seals
/// would scan thousands of small files. Only the scheduler compacts (two compactions of one
/// partition at once would both commit and duplicate its rows).
pub async fn compact_raw(lake: &Lake, source: &str, before_ms: i64) -> Result<usize> {
    let url = lake.raw_table_url(source);
    let Some(mut table) = try_load(&url).await? else {
        return Ok(0);
    };
    let mut groups: std::collections::BTreeMap<(String, String), Vec<ActiveFile>> =
        std::collections::BTreeMap::new();
    for f in active_files(&table)? {
        let key = (
            f.partition("event_date").unwrap_or_default().to_string(),
            f.partition("event_hour").unwrap_or_default().to_string(),
        );
        groups.entry(key).or_default().push(f);
    }
    let mut done = 0;
    for ((date, hour), files) in groups {
        let hour_end = chrono::NaiveDateTime::parse_from_str(
            &format!("{date} {hour}:00:00"),
            "%Y-%m-%d %H:%M:%S",
        )
        .map(|t| t.and_utc().timestamp_millis() + 3_600_000)
        .unwrap_or(i64::MAX);
        if files.len() < 2 || hour_end > before_ms {
            continue;
        }
        let batches = with_partition_columns(&table, source, &date, &hour, &files).await?;
        let predicate = format!("event_date = '{date}' AND event_hour = '{hour}'");
        commit::rewrite(&mut table, files, batches, Some(predicate)).await?;
        done += 1;
    }
    Ok(done)
}

/// The rows of `files` (all of one partition) with the partition columns put back: Parquet
/// files do not hold them, the writer wants them.
async fn with_partition_columns(
    table: &DeltaTable,
    source: &str,
    date: &str,
    hour: &str,
    files: &[ActiveFile],
) -> Result<Vec<RecordBatch>> {
    let schema = writer_schema(table)?;
    let paths: Vec<_> = files.iter().map(|f| f.path.clone()).collect();
    let mut batches = Vec::new();
    for b in arrow_util::read_files(table, &paths).await? {
        let n = b.num_rows();
        let mut columns = Vec::with_capacity(schema.fields().len());
        for field in schema.fields() {
            let col: ArrayRef = match field.name().as_str() {
                "event_date" => Arc::new(StringArray::from(vec![date; n])),
                "event_hour" => Arc::new(StringArray::from(vec![hour; n])),
                other => b
                    .column_by_name(other)
                    .cloned()
                    .ok_or_else(|| Error::State {
                        view: format!("raw/{source}"),
                        message: format!("column `{other}` is missing from a data file"),
                    })?,
            };
            columns.push(col);
        }
        batches.push(
            RecordBatch::try_new(schema.clone(), columns).map_err(|source| Error::Arrow {
                table: table.table_url().to_string(),
                source,
            })?,
        );
    }
    Ok(batches)
}

#[cfg(test)]
mod tests {
    use super::*;
    use duet_config::Config;

    #[tokio::test]
    async fn re_delivered_records_are_written_once() {
        let cfg = Config::from_toml_str(
            r#"
            [[sources]]
            name = "clicks"
            topic = "clicks"
            event_id = "id"
            event_time = "ts"
            fields = { id = "string", ts = "int", amount = "decimal(2)" }
            "#,
            "t.toml".as_ref(),
        )
        .unwrap();
        let source = &cfg.sources[0];
        let dir = tempfile::tempdir().unwrap();
        let lake = Lake::open(dir.path().to_str().unwrap()).unwrap();
        let rec = |i: i64| RawRecord {
            event: source
                .decode(
                    format!(
                        r#"{{"id":"e{i}","ts":{},"amount":"1.5"}}"#,
                        1_700_000_000_000 + i
                    )
                    .as_bytes(),
                )
                .unwrap(),
            partition: 0,
            offset: i,
            payload: String::new(),
        };
        let first: Vec<RawRecord> = (0..5).map(rec).collect();
        let mut w = RawWriter::open(&lake, source, "g").await.unwrap();
        assert!(
            w.append(&first, Some(1_700_000_000_004))
                .await
                .unwrap()
                .is_some()
        );
        // the same records again (a re-delivery), then overlapping ones after a reopen
        assert_eq!(w.append(&first, None).await.unwrap(), None);
        let mut w = RawWriter::open(&lake, source, "g").await.unwrap();
        assert_eq!(w.committed_offset(0).await.unwrap(), Some(4));
        let overlap: Vec<RawRecord> = (3..8).map(rec).collect();
        w.append(&overlap, Some(1_700_000_000_007)).await.unwrap();
        assert_eq!(raw_count(&lake, "clicks").await.unwrap(), 8);
        assert_eq!(w.watermark(), Some(1_700_000_000_007));
        let snap = raw_snapshot(&lake, "clicks", None).await.unwrap();
        assert_eq!(snap.watermark, Some(1_700_000_000_007));
        // the recorded watermark never moves back; an advance alone is a commit of its own
        assert_eq!(w.append(&[], Some(1_700_000_000_006)).await.unwrap(), None);
        assert!(
            w.append(&[], Some(1_700_000_000_009))
                .await
                .unwrap()
                .is_some()
        );
        assert_eq!(w.watermark(), Some(1_700_000_000_009));
        assert_eq!(raw_count(&lake, "clicks").await.unwrap(), 8);
        // the files' statistics prune by any int field
        let files = async |from, to| {
            let ranges = [Interval::new(from, to)];
            let r = TimeRange {
                field: "ts",
                ranges: &ranges,
            };
            raw_snapshot(&lake, "clicks", Some(r))
                .await
                .unwrap()
                .files
                .len()
        };
        assert_eq!(files(1_700_000_000_000, 1_700_000_000_001).await, 1);
        assert_eq!(files(1_700_000_000_004, 1_700_000_000_006).await, 2);
        assert_eq!(files(1_700_000_000_008, i64::MAX).await, 0);
        assert_eq!(files(0, 1_700_000_000_000).await, 0);
        assert_eq!(snap.first_date_ms, Some(1_699_920_000_000));

        // three commits in one hour partition: compaction leaves one file, the same rows and
        // the same resume offsets
        let more: Vec<RawRecord> = (8..12).map(rec).collect();
        w.append(&more, None).await.unwrap();
        let before = raw_snapshot(&lake, "clicks", None)
            .await
            .unwrap()
            .files
            .len();
        assert_eq!(before, 3);
        assert_eq!(
            compact_raw(&lake, "clicks", 1_700_000_000_000)
                .await
                .unwrap(),
            0,
            "hour still open"
        );
        assert_eq!(compact_raw(&lake, "clicks", i64::MAX).await.unwrap(), 1);
        assert_eq!(
            raw_snapshot(&lake, "clicks", None)
                .await
                .unwrap()
                .files
                .len(),
            1
        );
        assert_eq!(raw_count(&lake, "clicks").await.unwrap(), 12);
        let mut w = RawWriter::open(&lake, source, "g").await.unwrap();
        assert_eq!(w.committed_offset(0).await.unwrap(), Some(11));
        assert_eq!(w.append(&more, None).await.unwrap(), None);
    }

    /// A late event appended to an hour partition that the scheduler compacted after the
    /// writer loaded the table: the append is blind, so it commits (it used to fail with
    /// "a concurrent transaction deleted data this operation read").
    #[tokio::test]
    async fn appends_commit_while_their_partition_is_compacted() {
        let cfg = Config::from_toml_str(
            r#"
            [[sources]]
            name = "clicks"
            topic = "clicks"
            event_id = "id"
            event_time = "ts"
            fields = { id = "string", ts = "int" }
            "#,
            "t.toml".as_ref(),
        )
        .unwrap();
        let source = &cfg.sources[0];
        let dir = tempfile::tempdir().unwrap();
        let lake = Lake::open(dir.path().to_str().unwrap()).unwrap();
        let rec = |i: i64| RawRecord {
            event: source
                .decode(format!(r#"{{"id":"e{i}","ts":{}}}"#, 1_700_000_000_000 + i).as_bytes())
                .unwrap(),
            partition: 0,
            offset: i,
            payload: String::new(),
        };
        let mut w = RawWriter::open(&lake, source, "g").await.unwrap();
        w.append(&[rec(0), rec(1)], None).await.unwrap();
        w.append(&[rec(2)], None).await.unwrap();
        // the scheduler compacts the hour while the sink holds its snapshot
        assert_eq!(compact_raw(&lake, "clicks", i64::MAX).await.unwrap(), 1);
        w.append(&[rec(3)], None).await.unwrap();
        assert_eq!(raw_count(&lake, "clicks").await.unwrap(), 4);
        // and compaction again, with the new file in the same hour
        assert_eq!(compact_raw(&lake, "clicks", i64::MAX).await.unwrap(), 1);
        w.append(&[rec(4)], None).await.unwrap();
        assert_eq!(raw_count(&lake, "clicks").await.unwrap(), 5);
        let mut w = RawWriter::open(&lake, source, "g").await.unwrap();
        assert_eq!(w.committed_offset(0).await.unwrap(), Some(4));
    }
}
