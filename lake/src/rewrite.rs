//! The one way Duet replaces files of a table: write the new rows, then one commit that removes
//! the old files and adds the new ones (view range replace, raw and ledger compaction).

use deltalake::DeltaTable;
use deltalake::arrow::datatypes::SchemaRef;
use deltalake::arrow::record_batch::RecordBatch;
use deltalake::kernel::Action;
use deltalake::kernel::transaction::CommitBuilder;
use deltalake::protocol::{DeltaOperation, SaveMode};
use deltalake::writer::{DeltaWriter, RecordBatchWriter};

use crate::arrow_util::ActiveFile;
use crate::error::{Error, Result};

fn delta_err(table: &DeltaTable) -> impl Fn(deltalake::DeltaTableError) -> Error + '_ {
    move |source| Error::Delta {
        table: table.table_url().to_string(),
        source: Box::new(source),
    }
}

/// The arrow schema the table's writer expects (partition columns included).
pub(crate) fn writer_schema(table: &DeltaTable) -> Result<SchemaRef> {
    Ok(RecordBatchWriter::for_table(table)
        .map_err(delta_err(table))?
        .arrow_schema())
}

/// Replaces `old` with files holding `batches` (of [`writer_schema`]) in one commit, whose
/// log entry records the table's `partitions` and `predicate`. Returns the new version;
/// `table` is loaded at it.
pub(crate) async fn replace_files(
    table: &mut DeltaTable,
    partitions: &[&str],
    old: Vec<ActiveFile>,
    batches: Vec<RecordBatch>,
    predicate: Option<String>,
) -> Result<i64> {
    let mut actions: Vec<Action> = old
        .into_iter()
        .map(|(_, _, rm)| Action::Remove(rm))
        .collect();
    if !batches.is_empty() {
        let mut writer = RecordBatchWriter::for_table(table).map_err(delta_err(table))?;
        for b in batches {
            writer.write(b).await.map_err(delta_err(table))?;
        }
        let adds = writer.flush().await.map_err(delta_err(table))?;
        actions.extend(adds.into_iter().map(Action::Add));
    }
    let snapshot = table.snapshot().map_err(delta_err(table))?;
    let operation = DeltaOperation::Write {
        mode: SaveMode::Overwrite,
        partition_by: (!partitions.is_empty())
            .then(|| partitions.iter().map(|p| p.to_string()).collect()),
        predicate,
    };
    let done = CommitBuilder::default()
        .with_actions(actions)
        .build(Some(snapshot), table.log_store(), operation)
        .await
        .map_err(delta_err(table))?;
    let version = done.version();
    table
        .load_version(version)
        .await
        .map_err(delta_err(table))?;
    Ok(version as i64)
}
