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
            Err(object_store::Error::NotFound { .. }) => Ok(false),
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
