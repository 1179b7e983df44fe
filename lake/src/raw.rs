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
use deltalake::kernel::transaction::CommitProperties;
use deltalake::writer::{DeltaWriter, RecordBatchWriter};
use duet_config::{Event, Source};
use serde_json::{Map, Value as J};
use url::Url;

use crate::arrow_util::{self, active_files, arrow_type, timestamp_type};
use crate::error::{Error, Result};
use crate::rewrite::{replace_files, writer_schema};
use crate::{Lake, load_or_create, local_path, try_load};

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
fn txn_app(group: &str, source: &str, partition: i32) -> String {
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
        let table = load_or_create(&url, &raw_schema(source), &PARTITIONS).await?;
        let schema = RecordBatchWriter::for_table(&table)
            .map_err(|e| Error::Delta {
                table: url.to_string(),
                source: Box::new(e),
            })?
            .arrow_schema();
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

    /// Appends records in one Delta commit; records at or below a partition's committed
    /// offset are skipped (re-delivery). Returns the new table version, if anything was written.
    pub async fn append(&mut self, records: &[RawRecord]) -> Result<Option<i64>> {
        let mut rows = Vec::with_capacity(records.len());
        let mut last: HashMap<i32, i64> = HashMap::new();
        let mut max_time = self.watermark.unwrap_or(i64::MIN);
        for r in records {
            let done = self.committed_offset(r.partition).await?;
            if done.is_some_and(|d| r.offset <= d)
                || last.get(&r.partition).is_some_and(|l| r.offset <= *l)
            {
                continue;
            }
            last.insert(r.partition, r.offset);
            max_time = max_time.max(r.event.time_ms);
            rows.push(self.row(r));
        }
        if rows.is_empty() {
            return Ok(None);
        }
        let table_name = self.url.to_string();
        let batch = arrow_util::json_rows_to_batch(&table_name, self.schema.clone(), &rows)?;
        let delta = |source| Error::Delta {
            table: table_name.clone(),
            source: Box::new(source),
        };
        let mut txns: Vec<Transaction> = last
            .iter()
            .map(|(p, o)| Transaction::new(txn_app(&self.group, &self.source.name, *p), *o))
            .collect();
        txns.push(Transaction::new(watermark_app(&self.source.name), max_time));
        let mut writer = RecordBatchWriter::for_table(&self.table)
            .map_err(delta)?
            .with_commit_properties(
                CommitProperties::default().with_application_transactions(txns),
            );
        writer.write(batch).await.map_err(delta)?;
        let version = writer
            .flush_and_commit(&mut self.table)
            .await
            .map_err(delta)?;
        self.committed
            .extend(last.into_iter().map(|(p, o)| (p, Some(o))));
        self.watermark = Some(max_time);
        Ok(Some(version as i64))
    }

    fn row(&self, r: &RawRecord) -> J {
        let mut m = Map::new();
        let (date, hour) = partition_values(r.event.time_ms);
        m.insert("_event_id".into(), J::from(r.event.id.clone()));
        m.insert("_event_time".into(), J::from(r.event.time_ms * 1000));
        m.insert("_partition".into(), J::from(r.partition));
        m.insert("_offset".into(), J::from(r.offset));
        m.insert("_payload".into(), J::from(r.payload.clone()));
        for (name, v) in &r.event.fields {
            m.insert(name.clone(), v.to_json());
        }
        m.insert("event_date".into(), J::from(date));
        m.insert("event_hour".into(), J::from(hour));
        J::Object(m)
    }

    /// The highest event time written so far (epoch ms).
    pub fn watermark(&self) -> Option<i64> {
        self.watermark
    }
}

async fn txn_version(table: &DeltaTable, app: &str) -> Result<Option<i64>> {
    let snapshot = table.snapshot().map_err(|source| Error::Delta {
        table: table.table_url().to_string(),
        source: Box::new(source),
    })?;
    snapshot
        .transaction_version(table.log_store().as_ref(), app)
        .await
        .map_err(|source| Error::Delta {
            table: table.table_url().to_string(),
            source: Box::new(source),
        })
}

/// What the batch layer reads of a raw table.
#[derive(Debug, Clone, Default)]
pub struct RawSnapshot {
    /// Table version read (`None`: no table yet).
    pub version: Option<i64>,
    /// Local paths of the Parquet files to scan.
    pub files: Vec<String>,
    /// Highest event time written (epoch ms).
    pub watermark: Option<i64>,
    /// Midnight (UTC, epoch ms) of the earliest event date in the table.
    pub first_date_ms: Option<i64>,
}

/// The files of `raw/<source>` whose event date lies in `[from_ms, to_ms)` widened by a day
/// on each side (all files when `range` is `None`).
pub async fn raw_snapshot(
    lake: &Lake,
    source: &str,
    range: Option<(i64, i64)>,
) -> Result<RawSnapshot> {
    let url = lake.raw_table_url(source);
    let Some(table) = try_load(&url).await? else {
        return Ok(RawSnapshot::default());
    };
    let day = 86_400_000;
    let dates = range.map(|(f, t)| (partition_values(f - day).0, partition_values(t + day).0));
    let mut files = Vec::new();
    let mut first: Option<String> = None;
    for (path, parts, _) in active_files(&table)? {
        if let Some(Some(d)) = parts.get("event_date")
            && first.as_ref().is_none_or(|f| d < f)
        {
            first = Some(d.clone());
        }
        if let (Some((lo, hi)), Some(Some(d))) = (&dates, parts.get("event_date"))
            && (d < lo || d > hi)
        {
            continue;
        }
        let uri = table.log_store().to_uri(&path);
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
    let snapshot = table.snapshot().map_err(|source| Error::Delta {
        table: url.to_string(),
        source: Box::new(source),
    })?;
    Ok(snapshot
        .log_data()
        .iter()
        .map(|f| f.num_records().unwrap_or(0) as u64)
        .sum())
}

/// Rewrites each closed `(event_date, event_hour)` partition of `raw/<source>` that has more
/// than one file as a single file, one Delta commit per partition (remove the old files, add
/// the new one; the rows and the `txn` offsets are unchanged). A partition is closed when its
/// hour ended at or before `before_ms`. Returns how many partitions were compacted.
///
/// The lake sink writes a file per partition and flush; without this, a day of minutely seals
/// would scan thousands of small files.
pub async fn compact_raw(lake: &Lake, source: &str, before_ms: i64) -> Result<usize> {
    let url = lake.raw_table_url(source);
    let Some(mut table) = try_load(&url).await? else {
        return Ok(0);
    };
    let name = url.to_string();
    let mut groups: std::collections::BTreeMap<(String, String), Vec<arrow_util::ActiveFile>> =
        std::collections::BTreeMap::new();
    for f in active_files(&table)? {
        let part = |k: &str| f.1.get(k).cloned().flatten().unwrap_or_default();
        groups
            .entry((part("event_date"), part("event_hour")))
            .or_default()
            .push(f);
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
        let paths: Vec<_> = files.iter().map(|(p, _, _)| p.clone()).collect();
        let schema = writer_schema(&table)?;
        let mut batches = Vec::new();
        for b in arrow_util::read_files(&table, &paths).await? {
            // Parquet files do not hold the partition columns; the writer wants them.
            let n = b.num_rows();
            let mut columns = Vec::with_capacity(schema.fields().len());
            for field in schema.fields() {
                let col: ArrayRef = match field.name().as_str() {
                    "event_date" => Arc::new(StringArray::from(vec![date.as_str(); n])),
                    "event_hour" => Arc::new(StringArray::from(vec![hour.as_str(); n])),
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
                    table: name.clone(),
                    source,
                })?,
            );
        }
        let predicate = format!("event_date = '{date}' AND event_hour = '{hour}'");
        replace_files(&mut table, &PARTITIONS, files, batches, Some(predicate)).await?;
        done += 1;
    }
    Ok(done)
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
        assert!(w.append(&first).await.unwrap().is_some());
        // the same records again (a re-delivery), then overlapping ones after a reopen
        assert_eq!(w.append(&first).await.unwrap(), None);
        let mut w = RawWriter::open(&lake, source, "g").await.unwrap();
        assert_eq!(w.committed_offset(0).await.unwrap(), Some(4));
        let overlap: Vec<RawRecord> = (3..8).map(rec).collect();
        w.append(&overlap).await.unwrap();
        assert_eq!(raw_count(&lake, "clicks").await.unwrap(), 8);
        assert_eq!(w.watermark(), Some(1_700_000_000_007));
        let snap = raw_snapshot(&lake, "clicks", None).await.unwrap();
        assert_eq!(snap.watermark, Some(1_700_000_000_007));
        assert_eq!(snap.first_date_ms, Some(1_699_920_000_000));

        // three commits in one hour partition: compaction leaves one file, the same rows and
        // the same resume offsets
        let more: Vec<RawRecord> = (8..12).map(rec).collect();
        w.append(&more).await.unwrap();
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
        assert_eq!(w.append(&more).await.unwrap(), None);
    }
}
