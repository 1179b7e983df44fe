//! Arrow plumbing shared by the tables: schemas from field types, JSON rows to record
//! batches (arrow-json, against the table's own schema), and reading a table's files.

use std::sync::Arc;

use deltalake::DeltaTable;
use deltalake::arrow::datatypes::{DataType, Field, Fields, SchemaRef, TimeUnit};
use deltalake::arrow::record_batch::RecordBatch;
use deltalake::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use duet_config::FieldType;
use object_store::ObjectStoreExt as _;

use crate::error::{Error, Result};

/// Arrow type of a declared field.
pub(crate) fn arrow_type(t: &FieldType) -> DataType {
    match t {
        FieldType::String => DataType::Utf8,
        FieldType::Int => DataType::Int64,
        FieldType::Float => DataType::Float64,
        FieldType::Bool => DataType::Boolean,
        FieldType::Decimal(s) => DataType::Decimal128(38, *s as i8),
        FieldType::Array(inner) => {
            DataType::List(Arc::new(Field::new("element", arrow_type(inner), true)))
        }
        FieldType::Struct(fields) => DataType::Struct(Fields::from(
            fields
                .iter()
                .map(|(n, t)| Field::new(n, arrow_type(t), true))
                .collect::<Vec<_>>(),
        )),
    }
}

/// UTC microsecond timestamps, Delta's `timestamp`.
pub(crate) fn timestamp_type() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

/// Decodes JSON rows into one record batch of `schema`.
pub(crate) fn json_rows_to_batch(
    table: &str,
    schema: SchemaRef,
    rows: &[serde_json::Value],
) -> Result<RecordBatch> {
    let arrow = |source| Error::Arrow {
        table: table.to_string(),
        source,
    };
    let mut decoder = arrow_json::ReaderBuilder::new(schema.clone())
        .with_batch_size(rows.len().max(1))
        .build_decoder()
        .map_err(arrow)?;
    decoder.serialize(rows).map_err(arrow)?;
    Ok(decoder
        .flush()
        .map_err(arrow)?
        .unwrap_or_else(|| RecordBatch::new_empty(schema)))
}

/// Reads whole Parquet files of a table (paths relative to the table root).
pub(crate) async fn read_files(
    table: &DeltaTable,
    files: &[object_store::path::Path],
) -> Result<Vec<RecordBatch>> {
    let store = table.object_store();
    let mut out = Vec::new();
    for f in files {
        let bytes = store
            .get(f)
            .await
            .map_err(|source| Error::ObjectStore {
                path: f.to_string(),
                source,
            })?
            .bytes()
            .await
            .map_err(|source| Error::ObjectStore {
                path: f.to_string(),
                source,
            })?;
        let parquet = |source| Error::Parquet {
            file: f.to_string(),
            source,
        };
        let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
            .map_err(parquet)?
            .build()
            .map_err(parquet)?;
        for batch in reader {
            out.push(batch.map_err(|source| Error::Arrow {
                table: table.table_url().to_string(),
                source,
            })?);
        }
    }
    Ok(out)
}

/// An active file of a table: its path, partition values, statistics and how to remove it.
#[derive(Debug, Clone)]
pub(crate) struct ActiveFile {
    /// Path relative to the table root.
    pub path: object_store::path::Path,
    /// Partition column → value.
    pub partitions: std::collections::HashMap<String, Option<String>>,
    /// The add action's statistics (JSON: `numRecords`, `minValues`, `maxValues`, `nullCount`).
    pub stats: Option<String>,
    /// Rows in the file, from the statistics.
    pub records: Option<usize>,
    remove: deltalake::kernel::Remove,
}

impl ActiveFile {
    /// The value of a partition column.
    pub fn partition(&self, column: &str) -> Option<&str> {
        self.partitions.get(column).and_then(|v| v.as_deref())
    }

    /// The action that removes this file.
    pub fn remove(&self, data_change: bool) -> deltalake::kernel::Remove {
        let mut r = self.remove.clone();
        r.data_change = data_change;
        r
    }
}

/// The table's active files with their partition values and statistics.
pub(crate) fn active_files(table: &DeltaTable) -> Result<Vec<ActiveFile>> {
    let snapshot = table.snapshot().map_err(|source| Error::Delta {
        table: table.table_url().to_string(),
        source: Box::new(source),
    })?;
    Ok(snapshot
        .log_data()
        .iter()
        .map(|f| ActiveFile {
            path: f.object_store_path(),
            partitions: f.partition_values_map(),
            stats: f.stats(),
            records: f.num_records(),
            remove: f.remove_action(true),
        })
        .collect())
}
