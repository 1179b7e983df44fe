//! The lake: Delta tables over object_store holding the master dataset (`raw/<source>`),
//! the batch views (`views/<view>`) and the seal ledger (`ledger/seals`).
//!
//! Every write is one Delta transaction, so readers (Duet's serving layer, Polars, Spark,
//! delta-rs, DuckDB) never see half of one.

mod arrow_util;
mod commit;
pub mod error;
pub mod late;
pub mod ledger;
pub mod quarantine;
pub mod raw;
pub mod views;
mod watch;
pub mod watermark;

use deltalake::{DeltaTable, DeltaTableBuilder};
use url::Url;

pub use error::{Error, Result};
pub use ledger::{
    AppOffset, Interval, LateMark, LedgerReader, LedgerSnapshot, Seal, SealLedger, ViewSeals,
};
pub use quarantine::{QuarantineWriter, read_quarantine};
pub use raw::{RawRecord, RawWriter};
pub use views::{CacheCounts, ViewReader, ViewRow, ViewTable};

/// A lake: a root URL under which Duet keeps its tables.
#[derive(Debug, Clone)]
pub struct Lake {
    root: Url,
}

impl Lake {
    /// Opens the lake at `location`: a local folder (created if missing) or a `file:///…` URL.
    /// Object stores (`s3://…`) are not supported in this version.
    pub fn open(location: &str) -> Result<Lake> {
        let err = |message: String| Error::Location {
            url: location.to_string(),
            message,
        };
        let root = if location.contains("://") {
            let url = Url::parse(location).map_err(|e| err(e.to_string()))?;
            if url.scheme() != "file" {
                return Err(err(format!(
                    "only local lakes (a folder or a file:// URL) are supported, not {}://",
                    url.scheme()
                )));
            }
            url
        } else {
            std::fs::create_dir_all(location).map_err(|e| err(e.to_string()))?;
            let abs = std::fs::canonicalize(location).map_err(|e| err(e.to_string()))?;
            Url::from_directory_path(&abs).map_err(|()| err("not an absolute path".into()))?
        };
        let root = if root.path().ends_with('/') {
            root
        } else {
            Url::parse(&format!("{root}/")).map_err(|e| err(e.to_string()))?
        };
        Ok(Lake { root })
    }

    /// The root URL.
    pub fn root(&self) -> &Url {
        &self.root
    }

    /// URL of a table below the root (`raw/orders`).
    pub fn table_url(&self, rel: &str) -> Url {
        // joining a relative path onto a directory URL cannot fail
        self.root
            .join(&format!("{rel}/"))
            .unwrap_or_else(|_| self.root.clone())
    }

    /// The master-data table of a source.
    pub fn raw_table_url(&self, source: &str) -> Url {
        self.table_url(&format!("raw/{source}"))
    }

    /// The batch table of a view.
    pub fn view_table_url(&self, view: &str) -> Url {
        self.table_url(&format!("views/{view}"))
    }
}

/// Loads the table at `url`, or `None` if no table exists there yet (no `_delta_log`).
pub(crate) async fn try_load(url: &Url) -> Result<Option<DeltaTable>> {
    use futures::TryStreamExt;
    use object_store::ObjectStore as _;
    let mut table = DeltaTableBuilder::from_url(url.clone())
        .and_then(|b| b.build())
        .map_err(|source| Error::Delta {
            table: url.to_string(),
            source: Box::new(source),
        })?;
    let log = object_store::path::Path::from("_delta_log/");
    let first = table.object_store().list(Some(&log)).try_next().await;
    match first {
        Ok(Some(_)) => {}
        Ok(None) | Err(object_store::Error::NotFound { .. }) => return Ok(None),
        Err(source) => {
            return Err(Error::ObjectStore {
                path: format!("{url}_delta_log"),
                source,
            });
        }
    }
    // A load lists the log, then reads it: another process's checkpoint may remove the log
    // entries listed in between (they are removed behind each checkpoint). Listing again
    // finds the new checkpoint.
    let mut attempt = 0;
    loop {
        match table.load().await {
            Ok(()) => return Ok(Some(table)),
            Err(source) if attempt < 3 => {
                attempt += 1;
                tracing::debug!(table = %url, attempt, error = %source, "Loading a table again.");
                tokio::time::sleep(std::time::Duration::from_millis(20 * attempt)).await;
            }
            Err(source) => {
                return Err(Error::Delta {
                    table: url.to_string(),
                    source: Box::new(source),
                });
            }
        }
    }
}

/// Loads the table at `url`, creating it with `schema`, `partitions`, the properties of
/// `layout` and `properties` if missing.
pub(crate) async fn load_or_create(
    url: &Url,
    schema: &deltalake::arrow::datatypes::Schema,
    partitions: &[&str],
    layout: commit::TableLayout,
    properties: &[(&str, String)],
) -> Result<DeltaTable> {
    if let Some(t) = try_load(url).await? {
        return Ok(t);
    }
    use deltalake::kernel::engine::arrow_conversion::TryIntoKernel;
    let delta_err = |source| Error::Delta {
        table: url.to_string(),
        source: Box::new(source),
    };
    let kernel: deltalake::kernel::StructType =
        schema.try_into_kernel().map_err(|e| delta_err(e.into()))?;
    let table = DeltaTableBuilder::from_url(url.clone())
        .and_then(|b| b.build())
        .map_err(delta_err)?;
    table
        .create()
        .with_columns(kernel.fields().cloned())
        .with_partition_columns(partitions.iter().map(|p| p.to_string()))
        .with_configuration(layout.properties())
        // Duet's own properties (`duet.*`) are not Delta's
        .with_raise_if_key_not_exists(false)
        .with_configuration(
            properties
                .iter()
                .map(|(k, v)| (k.to_string(), Some(v.clone()))),
        )
        .with_save_mode(deltalake::protocol::SaveMode::Ignore)
        .await
        .map_err(delta_err)
}

/// Deletes the data files of the table at `url` that no version references any more and that
/// are older than `older_than` (files removed by rewritten views, compacted raw hours and
/// ledger files; Delta's vacuum in full mode, since checkpoints keep no remove actions).
/// Returns how many files were deleted.
pub async fn vacuum(url: &Url, older_than: std::time::Duration) -> Result<usize> {
    let Some(table) = try_load(url).await? else {
        return Ok(0);
    };
    let retention =
        chrono::Duration::from_std(older_than).unwrap_or_else(|_| chrono::Duration::hours(1));
    let (_, metrics) = table
        .vacuum()
        .with_retention_period(retention)
        .with_enforce_retention_duration(false)
        .with_mode(deltalake::operations::vacuum::VacuumMode::Full)
        .await
        .map_err(|source| Error::Delta {
            table: url.to_string(),
            source: Box::new(source),
        })?;
    Ok(metrics.files_deleted.len())
}

/// Local file path of a table file URI (`file:///…` or an absolute path), as Polars reads it.
pub fn local_path(uri: &str) -> Option<String> {
    if uri.starts_with('/') {
        return Some(uri.to_string());
    }
    let url = Url::parse(uri).ok()?;
    if url.scheme() != "file" {
        return None;
    }
    url.to_file_path()
        .ok()
        .map(|p| p.to_string_lossy().into_owned())
}
