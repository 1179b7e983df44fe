//! The lake's quarantine: every malformed event, with its reason, origin and bytes, in the
//! Delta table `quarantine` (partitioned by the day it was quarantined). The speed layer's
//! store keeps only the newest (bounded by a retention and a cap); this table keeps them all,
//! so nothing is lost. Written by the lake sink before the raw events of the same flush, with
//! `txn` actions per partition (`<group>/quarantine/<topic>/<partition>`) so that re-delivery
//! writes nothing twice.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use deltalake::DeltaTable;
use deltalake::arrow::array::{
    Array, BinaryArray, Int32Array, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use deltalake::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use deltalake::kernel::Transaction;
use url::Url;

use crate::arrow_util::{active_files, read_files, timestamp_type};
use crate::commit::{self, TableLayout, TxnExpectation, txn_version, write_files, writer_schema};
use duet_config::Quarantined;

use crate::error::{Error, Result};
use crate::{Lake, load_or_create, try_load};

const LAYOUT: TableLayout = TableLayout {
    checkpoint_every: 100,
    log_retention: "interval 1 hour",
};

/// The table's partition column.
pub const PARTITIONS: [&str; 1] = ["quarantined_date"];

/// The arrow schema of the `quarantine` table.
pub fn quarantine_schema() -> Schema {
    Schema::new(vec![
        Field::new("source", DataType::Utf8, false),
        Field::new("topic", DataType::Utf8, false),
        Field::new("partition", DataType::Int32, false),
        Field::new("offset", DataType::Int64, false),
        Field::new("reason", DataType::Utf8, false),
        Field::new("payload", DataType::Binary, false),
        Field::new("quarantined_at", timestamp_type(), false),
        Field::new(PARTITIONS[0], DataType::Utf8, false),
    ])
}

/// The table's URL in `lake`.
pub fn quarantine_url(lake: &Lake) -> Url {
    lake.table_url("quarantine")
}

fn app(group: &str, topic: &str, partition: i32) -> String {
    format!("{group}/quarantine/{topic}/{partition}")
}

/// Appends quarantined events to the lake's `quarantine` table for one consumer group.
pub struct QuarantineWriter {
    group: String,
    table: DeltaTable,
    schema: SchemaRef,
    committed: HashMap<(String, i32), Option<i64>>,
}

impl QuarantineWriter {
    /// Opens (creating if needed) the table, for consumer group `group`.
    pub async fn open(lake: &Lake, group: &str) -> Result<QuarantineWriter> {
        let url = quarantine_url(lake);
        let table = load_or_create(&url, &quarantine_schema(), &PARTITIONS, LAYOUT, &[]).await?;
        let schema = writer_schema(&table)?;
        Ok(QuarantineWriter {
            group: group.to_string(),
            table,
            schema,
            committed: HashMap::new(),
        })
    }

    async fn committed(&mut self, topic: &str, partition: i32) -> Result<Option<i64>> {
        let key = (topic.to_string(), partition);
        if let Some(o) = self.committed.get(&key) {
            return Ok(*o);
        }
        let v = txn_version(&self.table, &app(&self.group, topic, partition)).await?;
        self.committed.insert(key, v);
        Ok(v)
    }

    /// Appends `records` in one commit, skipping those at or below their partition's
    /// committed offset (re-delivery). Returns the new version, if anything was written.
    pub async fn append(&mut self, records: &[Quarantined]) -> Result<Option<i64>> {
        let mut fresh = Vec::new();
        let mut last: HashMap<(String, i32), i64> = HashMap::new();
        for r in records {
            let key = (r.topic.clone(), r.partition);
            let done = self.committed(&r.topic, r.partition).await?;
            // two sources of one topic may both refuse a message: equal offsets in one batch are kept
            if done.is_some_and(|d| r.offset <= d) || last.get(&key).is_some_and(|l| r.offset < *l)
            {
                continue;
            }
            last.insert(key, r.offset);
            fresh.push(r);
        }
        if fresh.is_empty() {
            return Ok(None);
        }
        let day = |ms: i64| {
            DateTime::<Utc>::from_timestamp_millis(ms)
                .unwrap_or_default()
                .format("%Y-%m-%d")
                .to_string()
        };
        let url = self.table.table_url().to_string();
        let batch = RecordBatch::try_new(
            self.schema.clone(),
            vec![
                Arc::new(StringArray::from_iter_values(
                    fresh.iter().map(|r| &r.source),
                )),
                Arc::new(StringArray::from_iter_values(
                    fresh.iter().map(|r| &r.topic),
                )),
                Arc::new(Int32Array::from_iter_values(
                    fresh.iter().map(|r| r.partition),
                )),
                Arc::new(Int64Array::from_iter_values(fresh.iter().map(|r| r.offset))),
                Arc::new(StringArray::from_iter_values(
                    fresh.iter().map(|r| &r.reason),
                )),
                Arc::new(BinaryArray::from_iter_values(
                    fresh.iter().map(|r| r.payload.as_slice()),
                )),
                Arc::new(
                    TimestampMicrosecondArray::from_iter_values(
                        fresh.iter().map(|r| r.at_ms.saturating_mul(1000)),
                    )
                    .with_timezone("UTC"),
                ),
                Arc::new(StringArray::from_iter_values(
                    fresh.iter().map(|r| day(r.at_ms)),
                )),
            ],
        )
        .map_err(|source| Error::Arrow { table: url, source })?;
        let adds = write_files(&self.table, vec![batch]).await?;
        let txns = last
            .iter()
            .map(|((t, p), o)| Transaction::new(app(&self.group, t, *p), *o))
            .collect();
        let expect: Vec<TxnExpectation> = last
            .keys()
            .map(|(t, p)| TxnExpectation {
                app: app(&self.group, t, *p),
                version: self.committed.get(&(t.clone(), *p)).copied().flatten(),
            })
            .collect();
        let version = commit::append(&mut self.table, adds, txns, &expect).await?;
        self.committed
            .extend(last.into_iter().map(|(k, o)| (k, Some(o))));
        Ok(Some(version))
    }
}

/// Every record of the lake's quarantine, newest first (empty if there is no table yet).
pub async fn read_quarantine(lake: &Lake) -> Result<Vec<Quarantined>> {
    let url = quarantine_url(lake);
    let Some(table) = try_load(&url).await? else {
        return Ok(Vec::new());
    };
    let files: Vec<_> = active_files(&table)?.into_iter().map(|f| f.path).collect();
    let mut out = Vec::new();
    let bad = |what: &str| Error::Corrupt {
        what: format!("quarantine table {url}: column {what}"),
    };
    for b in read_files(&table, &files).await? {
        let col = |name: &str| b.column_by_name(name).ok_or_else(|| bad(name));
        let strings = |name: &str| -> Result<StringArray> {
            col(name)?
                .as_any()
                .downcast_ref::<StringArray>()
                .cloned()
                .ok_or_else(|| bad(name))
        };
        let (source, topic, reason) = (strings("source")?, strings("topic")?, strings("reason")?);
        let partition = col("partition")?
            .as_any()
            .downcast_ref::<Int32Array>()
            .cloned()
            .ok_or_else(|| bad("partition"))?;
        let offset = col("offset")?
            .as_any()
            .downcast_ref::<Int64Array>()
            .cloned()
            .ok_or_else(|| bad("offset"))?;
        let payload = col("payload")?
            .as_any()
            .downcast_ref::<BinaryArray>()
            .cloned()
            .ok_or_else(|| bad("payload"))?;
        let at = col("quarantined_at")?
            .as_any()
            .downcast_ref::<TimestampMicrosecondArray>()
            .cloned()
            .ok_or_else(|| bad("quarantined_at"))?;
        for i in 0..b.num_rows() {
            out.push(Quarantined {
                source: source.value(i).to_string(),
                topic: topic.value(i).to_string(),
                partition: partition.value(i),
                offset: offset.value(i),
                reason: reason.value(i).to_string(),
                payload: payload.value(i).to_vec(),
                at_ms: at.value(i) / 1000,
            });
        }
    }
    out.sort_by(|a, b| {
        (b.at_ms, &b.topic, b.partition, b.offset).cmp(&(a.at_ms, &a.topic, a.partition, a.offset))
    });
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(partition: i32, offset: i64, at_ms: i64) -> Quarantined {
        Quarantined {
            source: "orders".into(),
            topic: "orders".into(),
            partition,
            offset,
            reason: "not valid JSON".into(),
            payload: vec![0xff, b'{'],
            at_ms,
        }
    }

    #[tokio::test]
    async fn records_are_kept_once_with_their_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let lake = Lake::open(dir.path().to_str().unwrap()).unwrap();
        assert!(read_quarantine(&lake).await.unwrap().is_empty());
        let mut w = QuarantineWriter::open(&lake, "g").await.unwrap();
        assert!(
            w.append(&[rec(0, 3, 1_000), rec(1, 9, 2_000)])
                .await
                .unwrap()
                .is_some()
        );
        // a re-delivery after a restart writes nothing again
        let mut w = QuarantineWriter::open(&lake, "g").await.unwrap();
        assert!(w.append(&[rec(0, 3, 5_000)]).await.unwrap().is_none());
        assert!(
            w.append(&[rec(0, 3, 5_000), rec(0, 4, 6_000)])
                .await
                .unwrap()
                .is_some()
        );
        let all = read_quarantine(&lake).await.unwrap();
        assert_eq!(
            all.iter().map(Quarantined::id).collect::<Vec<_>>(),
            vec!["orders/0@4", "orders/1@9", "orders/0@3"]
        );
        assert_eq!(all[2], rec(0, 3, 1_000));
    }
}
