//! Following a Delta table's versions cheaply: a reader keeps the table loaded and, before each
//! read, asks the store whether the next version's commit file exists (one metadata request,
//! whatever the length of the log). Only when it does is the new version loaded.

use deltalake::DeltaTable;
use object_store::ObjectStoreExt as _;
use url::Url;

use crate::error::{Error, Result};
use crate::try_load;

/// A table followed version by version.
#[derive(Debug)]
pub(crate) struct TableWatch {
    url: Url,
    table: Option<DeltaTable>,
}

impl TableWatch {
    /// Follows the table at `url` (which may not exist yet).
    pub fn new(url: Url) -> TableWatch {
        TableWatch { url, table: None }
    }

    /// Loads what was committed since the last call; returns whether the version moved.
    pub async fn refresh(&mut self) -> Result<bool> {
        let Some(table) = &mut self.table else {
            self.table = try_load(&self.url).await?;
            return Ok(self.table.is_some());
        };
        let next = table.version().map_or(0, |v| v + 1);
        let commit = object_store::path::Path::from(format!("_delta_log/{next:020}.json"));
        match table.object_store().head(&commit).await {
            Ok(_) => {
                if let Err(e) = table.update_incremental(None).await {
                    // the log entries after our version may have been cleaned up behind a
                    // newer checkpoint: load the table afresh
                    tracing::debug!(table = %self.url, error = %e, "Reloading a table from its last checkpoint.");
                    self.table = try_load(&self.url).await?;
                }
                Ok(true)
            }
            // the next commit's entry may be gone because a newer checkpoint replaced it (log
            // entries behind a checkpoint are removed): then the checkpoint is newer than us
            Err(object_store::Error::NotFound { .. }) => {
                let last = object_store::path::Path::from("_delta_log/_last_checkpoint");
                let newer = match table.object_store().get(&last).await {
                    Ok(r) => r
                        .bytes()
                        .await
                        .ok()
                        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                        .and_then(|v| v["version"].as_i64())
                        .is_some_and(|cp| table.version().is_none_or(|v| cp > v as i64)),
                    Err(_) => false,
                };
                if newer {
                    self.table = try_load(&self.url).await?;
                }
                Ok(newer)
            }
            Err(source) => Err(Error::ObjectStore {
                path: format!("{}{commit}", self.url),
                source,
            }),
        }
    }

    /// The table at the version of the last refresh (`None`: it does not exist yet).
    pub fn table(&self) -> Option<&DeltaTable> {
        self.table.as_ref()
    }
}
