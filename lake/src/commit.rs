//! Every commit Duet makes to a Delta table, in three shapes:
//!
//! - **append** ([`append`]): add files (and `txn` actions), reading nothing; it never conflicts
//!   with a compaction, and a conflict with any other commit is retried on the new version;
//! - **rewrite** ([`rewrite`]): compaction, files replaced by files holding the same rows, committed
//!   with `dataChange = false` so that concurrent readers and appenders are not disturbed;
//! - **replace** ([`replace`]): files removed and new files added with a data change (a view's
//!   bucket range); a conflict is returned as [`Error::Conflict`] so that the caller recomputes
//!   from the new version.
//!
//! Every commit runs Delta's post-commit hook: a checkpoint every `delta.checkpointInterval`
//! commits and, where the table enables it, cleanup of expired log files, so that reading a
//! table costs the same after a day of commits as after ten.

use std::time::Duration;

use deltalake::DeltaTable;
use deltalake::arrow::datatypes::SchemaRef;
use deltalake::arrow::record_batch::RecordBatch;
use deltalake::kernel::transaction::{CommitBuilder, CommitProperties, TransactionError};
use deltalake::kernel::{Action, Add, Transaction};
use deltalake::protocol::{DeltaOperation, SaveMode};
use deltalake::writer::{DeltaWriter, RecordBatchWriter};
use deltalake::{DeltaTableError, TableProperty};

use crate::arrow_util::ActiveFile;
use crate::error::{Error, Result};

/// How often an append is retried after a conflict before the error is returned.
const APPEND_ATTEMPTS: u32 = 20;

pub(crate) fn delta_err(table: &DeltaTable) -> impl Fn(DeltaTableError) -> Error + '_ {
    move |source| Error::Delta {
        table: table.table_url().to_string(),
        source: Box::new(source),
    }
}

/// True for the errors another writer's commit causes (the commit may succeed on the new
/// version of the table).
pub(crate) fn is_conflict(e: &DeltaTableError) -> bool {
    matches!(
        e,
        DeltaTableError::Transaction {
            source: TransactionError::CommitConflict(_)
                | TransactionError::MaxCommitAttempts(_)
                | TransactionError::VersionAlreadyExists(_)
        } | DeltaTableError::VersionAlreadyExists(_)
    )
}

/// Table properties Duet sets on the tables it creates: a checkpoint every `checkpoint_every`
/// commits, and log files kept for `log_retention` (a Delta interval such as `interval 1 hour`)
/// before the post-commit hook removes them. Remove actions (tombstones) are not carried into
/// checkpoints (`delta.deletedFileRetentionDuration` of zero), so a checkpoint holds the live
/// files only and its size does not grow with the table's age; removed files stay on disk until
/// the scheduler's vacuum (full mode: unreferenced files older than an hour) deletes them.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TableLayout {
    /// Commits between checkpoints.
    pub checkpoint_every: u32,
    /// How long log entries are kept (time travel reaches that far back).
    pub log_retention: &'static str,
}

impl TableLayout {
    /// The properties, as the table's configuration.
    pub fn properties(&self) -> Vec<(String, Option<String>)> {
        vec![
            (
                TableProperty::CheckpointInterval.as_ref().to_string(),
                Some(self.checkpoint_every.to_string()),
            ),
            (
                TableProperty::LogRetentionDuration.as_ref().to_string(),
                Some(self.log_retention.to_string()),
            ),
            (
                TableProperty::EnableExpiredLogCleanup.as_ref().to_string(),
                Some("true".to_string()),
            ),
            (
                TableProperty::DeletedFileRetentionDuration
                    .as_ref()
                    .to_string(),
                Some("interval 0 minutes".to_string()),
            ),
        ]
    }
}

/// The arrow schema the table's writer expects (partition columns included).
pub(crate) fn writer_schema(table: &DeltaTable) -> Result<SchemaRef> {
    Ok(RecordBatchWriter::for_table(table)
        .map_err(delta_err(table))?
        .arrow_schema())
}

/// Writes `batches` (of [`writer_schema`]) as new Parquet files of the table, not yet committed.
pub(crate) async fn write_files(table: &DeltaTable, batches: Vec<RecordBatch>) -> Result<Vec<Add>> {
    if batches.is_empty() {
        return Ok(Vec::new());
    }
    let mut writer = RecordBatchWriter::for_table(table).map_err(delta_err(table))?;
    for b in batches {
        writer.write(b).await.map_err(delta_err(table))?;
    }
    writer.flush().await.map_err(delta_err(table))
}

fn partition_by(table: &DeltaTable) -> Result<Option<Vec<String>>> {
    let cols: Vec<String> = table
        .snapshot()
        .map_err(delta_err(table))?
        .metadata()
        .partition_columns()
        .to_vec();
    Ok((!cols.is_empty()).then_some(cols))
}

async fn commit(
    table: &mut DeltaTable,
    actions: Vec<Action>,
    txns: Vec<Transaction>,
    operation: DeltaOperation,
) -> std::result::Result<i64, DeltaTableError> {
    let snapshot = table.snapshot()?;
    let done = CommitBuilder::from(CommitProperties::default().with_application_transactions(txns))
        .with_actions(actions)
        .build(Some(snapshot), table.log_store(), operation)
        .await?;
    let version = done.version();
    table.update_incremental(Some(version)).await?;
    Ok(version as i64)
}

/// The version of a `txn` app id a commit expects the table to have (`None`: never set).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TxnExpectation {
    /// The app id.
    pub app: String,
    /// Its version before the commit.
    pub version: Option<i64>,
}

/// The version of a `txn` app id in the table (`None`: never set).
pub(crate) async fn txn_version(table: &DeltaTable, app: &str) -> Result<Option<i64>> {
    let snapshot = table.snapshot().map_err(delta_err(table))?;
    snapshot
        .transaction_version(table.log_store().as_ref(), app)
        .await
        .map_err(delta_err(table))
}

/// Commits `adds` and `txns` as a blind append. On a conflict the table is reloaded and the
/// commit tried again on the new version, provided every app id of `expect` still has the
/// version expected (no other writer recorded the same Kafka offsets meanwhile; otherwise
/// [`Error::ConcurrentWriter`]). Returns the version.
pub(crate) async fn append(
    table: &mut DeltaTable,
    adds: Vec<Add>,
    txns: Vec<Transaction>,
    expect: &[TxnExpectation],
) -> Result<i64> {
    let actions: Vec<Action> = adds.into_iter().map(Action::Add).collect();
    let mut attempt = 0;
    loop {
        let operation = DeltaOperation::Write {
            mode: SaveMode::Append,
            partition_by: partition_by(table)?,
            predicate: None,
        };
        match commit(table, actions.clone(), txns.clone(), operation).await {
            Ok(v) => return Ok(v),
            Err(e) if is_conflict(&e) && attempt + 1 < APPEND_ATTEMPTS => {
                attempt += 1;
                tracing::info!(table = %table.table_url(), attempt, error = %e, "Append conflicted; retrying on the new version.");
                table
                    .update_incremental(None)
                    .await
                    .map_err(delta_err(table))?;
                for e in expect {
                    if txn_version(table, &e.app).await? != e.version {
                        return Err(Error::ConcurrentWriter {
                            table: table.table_url().to_string(),
                            app: e.app.clone(),
                        });
                    }
                }
                tokio::time::sleep(Duration::from_millis(10 * u64::from(attempt))).await;
            }
            Err(e) => return Err(delta_err(table)(e)),
        }
    }
}

/// Replaces `old` with files holding the same rows (`batches`), without a data change
/// (compaction). A conflict (another rewrite of the same files) is [`Error::Conflict`].
pub(crate) async fn rewrite(
    table: &mut DeltaTable,
    old: Vec<ActiveFile>,
    batches: Vec<RecordBatch>,
    predicate: Option<String>,
) -> Result<i64> {
    let operation = DeltaOperation::Optimize {
        predicate,
        target_size: 0,
    };
    swap_files(table, old, batches, false, operation).await
}

/// Replaces `old` with files holding `batches`, as a data change recorded with `predicate`.
/// A conflict with a concurrent commit is [`Error::Conflict`]: recompute and try again.
pub(crate) async fn replace(
    table: &mut DeltaTable,
    old: Vec<ActiveFile>,
    batches: Vec<RecordBatch>,
    predicate: Option<String>,
) -> Result<i64> {
    let operation = DeltaOperation::Write {
        mode: SaveMode::Overwrite,
        partition_by: partition_by(table)?,
        predicate,
    };
    swap_files(table, old, batches, true, operation).await
}

/// One commit removing `old` and adding files holding `batches`, all marked with
/// `data_change`.
async fn swap_files(
    table: &mut DeltaTable,
    old: Vec<ActiveFile>,
    batches: Vec<RecordBatch>,
    data_change: bool,
    operation: DeltaOperation,
) -> Result<i64> {
    let mut actions: Vec<Action> = old
        .into_iter()
        .map(|f| Action::Remove(f.remove(data_change)))
        .collect();
    for mut add in write_files(table, batches).await? {
        add.data_change = data_change;
        actions.push(Action::Add(add));
    }
    commit(table, actions, Vec::new(), operation)
        .await
        .map_err(|e| conflict_or(table, e))
}

fn conflict_or(table: &DeltaTable, e: DeltaTableError) -> Error {
    if is_conflict(&e) {
        Error::Conflict {
            table: table.table_url().to_string(),
            source: Box::new(e),
        }
    } else {
        delta_err(table)(e)
    }
}
