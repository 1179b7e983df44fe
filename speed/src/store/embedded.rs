//! The embedded store: one redb file (ACID, fsync on commit). Deltas, offsets, dedup ids,
//! quarantine and watermarks of a batch go in one write transaction.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use duet_config::{DimKey, Row, State};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::{Quarantined, SpeedBatch, ViewStore};
use crate::error::{Error, Result};

/// (view, bucket, dims as JSON) → states as JSON.
const VIEWS: TableDefinition<(&str, i64, &str), &[u8]> = TableDefinition::new("views");
/// (group, topic, partition) → next offset.
const OFFSETS: TableDefinition<(&str, &str, i32), i64> = TableDefinition::new("offsets");
/// (source, event id) → event time.
const SEEN: TableDefinition<(&str, &str), i64> = TableDefinition::new("seen");
/// (source, event time, event id) → (): the seen ids by time, for the dedup retention.
const SEEN_BY_TIME: TableDefinition<(&str, i64, &str), ()> = TableDefinition::new("seen_by_time");
/// (at_ms, topic, partition, offset) → record as JSON.
const QUARANTINE: TableDefinition<(i64, &str, i32, i64), &[u8]> =
    TableDefinition::new("quarantine");
/// source → highest event time.
const WATERMARKS: TableDefinition<&str, i64> = TableDefinition::new("watermarks");

/// The embedded, durable view store.
#[derive(Clone)]
pub struct EmbeddedStore {
    db: Arc<Database>,
    path: PathBuf,
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore")
            .field("path", &self.path)
            .finish()
    }
}

impl EmbeddedStore {
    /// Opens (or creates) the store file.
    pub fn open(path: &Path) -> Result<EmbeddedStore> {
        let err = |m: String| Error::Store {
            path: path.display().to_string(),
            message: m,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
        }
        let db = Database::create(path).map_err(|e| err(e.to_string()))?;
        let store = EmbeddedStore {
            db: Arc::new(db),
            path: path.to_path_buf(),
        };
        // create the tables so that readers never meet a missing one
        store.write(|_| Ok(()))?;
        Ok(store)
    }

    fn err(&self, e: impl std::fmt::Display) -> Error {
        Error::Store {
            path: self.path.display().to_string(),
            message: e.to_string(),
        }
    }

    fn write(&self, f: impl FnOnce(&redb::WriteTransaction) -> Result<()>) -> Result<()> {
        let tx = self.db.begin_write().map_err(|e| self.err(e))?;
        {
            tx.open_table(VIEWS).map_err(|e| self.err(e))?;
            tx.open_table(OFFSETS).map_err(|e| self.err(e))?;
            tx.open_table(SEEN).map_err(|e| self.err(e))?;
            tx.open_table(SEEN_BY_TIME).map_err(|e| self.err(e))?;
            tx.open_table(QUARANTINE).map_err(|e| self.err(e))?;
            tx.open_table(WATERMARKS).map_err(|e| self.err(e))?;
        }
        f(&tx)?;
        tx.commit().map_err(|e| self.err(e))
    }

    fn apply(&self, batch: SpeedBatch) -> Result<()> {
        self.write(|tx| {
            let mut views = tx.open_table(VIEWS).map_err(|e| self.err(e))?;
            for ((view, bucket, dims), delta) in batch.deltas {
                let dims_json = dims_key(&dims);
                let key = (view.as_str(), bucket, dims_json.as_str());
                let mut states = match views.get(key).map_err(|e| self.err(e))? {
                    Some(v) => decode_states(v.value())?,
                    None => Vec::new(),
                };
                if states.is_empty() {
                    states = delta;
                } else {
                    duet_config::measure::merge_row(&mut states, delta).map_err(|source| {
                        Error::Merge {
                            view: view.clone(),
                            source,
                        }
                    })?;
                }
                let bytes = serde_json::to_vec(&states).map_err(|e| self.err(e))?;
                views
                    .insert(key, bytes.as_slice())
                    .map_err(|e| self.err(e))?;
            }
            let mut offsets = tx.open_table(OFFSETS).map_err(|e| self.err(e))?;
            for ((g, t, p), o) in &batch.offsets {
                offsets
                    .insert((g.as_str(), t.as_str(), *p), *o)
                    .map_err(|e| self.err(e))?;
            }
            let mut seen = tx.open_table(SEEN).map_err(|e| self.err(e))?;
            let mut by_time = tx.open_table(SEEN_BY_TIME).map_err(|e| self.err(e))?;
            for (source, cutoff) in &batch.forget_seen_before {
                let old: Vec<(i64, String)> = by_time
                    .range((source.as_str(), i64::MIN, "")..(source.as_str(), *cutoff, ""))
                    .map_err(|e| self.err(e))?
                    .map(|item| item.map(|(k, _)| (k.value().1, k.value().2.to_string())))
                    .collect::<std::result::Result<_, _>>()
                    .map_err(|e| self.err(e))?;
                for (t, id) in old {
                    by_time
                        .remove((source.as_str(), t, id.as_str()))
                        .map_err(|e| self.err(e))?;
                    seen.remove((source.as_str(), id.as_str()))
                        .map_err(|e| self.err(e))?;
                }
            }
            for (s, id, t) in &batch.seen {
                by_time
                    .insert((s.as_str(), *t, id.as_str()), ())
                    .map_err(|e| self.err(e))?;
                seen.insert((s.as_str(), id.as_str()), *t)
                    .map_err(|e| self.err(e))?;
            }
            let mut q = tx.open_table(QUARANTINE).map_err(|e| self.err(e))?;
            for r in &batch.quarantine {
                let bytes = serde_json::to_vec(r).map_err(|e| self.err(e))?;
                q.insert(
                    (r.at_ms, r.topic.as_str(), r.partition, r.offset),
                    bytes.as_slice(),
                )
                .map_err(|e| self.err(e))?;
            }
            let mut w = tx.open_table(WATERMARKS).map_err(|e| self.err(e))?;
            for (s, t) in &batch.watermarks {
                let old = w
                    .get(s.as_str())
                    .map_err(|e| self.err(e))?
                    .map(|v| v.value());
                if old.is_none_or(|o| o < *t) {
                    w.insert(s.as_str(), *t).map_err(|e| self.err(e))?;
                }
            }
            Ok(())
        })
    }

    fn read_tx(&self) -> Result<redb::ReadTransaction> {
        self.db.begin_read().map_err(|e| self.err(e))
    }
}

fn dims_key(dims: &DimKey) -> String {
    serde_json::to_string(dims).unwrap_or_default()
}

fn decode_states(bytes: &[u8]) -> Result<Vec<State>> {
    serde_json::from_slice(bytes).map_err(|e| Error::Corrupt {
        what: "view state",
        message: e.to_string(),
    })
}

#[async_trait::async_trait]
impl ViewStore for EmbeddedStore {
    async fn commit(&self, batch: SpeedBatch) -> Result<()> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.apply(batch))
            .await
            .map_err(|e| self.err(e))?
    }

    async fn offsets(&self, group: &str, topic: &str) -> Result<HashMap<i32, i64>> {
        let tx = self.read_tx()?;
        let t = tx.open_table(OFFSETS).map_err(|e| self.err(e))?;
        let mut out = HashMap::new();
        for item in t
            .range((group, topic, i32::MIN)..=(group, topic, i32::MAX))
            .map_err(|e| self.err(e))?
        {
            let (k, v) = item.map_err(|e| self.err(e))?;
            out.insert(k.value().2, v.value());
        }
        Ok(out)
    }

    async fn seen(&self, source: &str, ids: &[&str]) -> Result<Vec<bool>> {
        let tx = self.read_tx()?;
        let t = tx.open_table(SEEN).map_err(|e| self.err(e))?;
        ids.iter()
            .map(|id| Ok(t.get((source, *id)).map_err(|e| self.err(e))?.is_some()))
            .collect()
    }

    async fn read(&self, view: &str, from: i64, to: i64) -> Result<Vec<Row>> {
        let tx = self.read_tx()?;
        let t = tx.open_table(VIEWS).map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for item in t
            .range((view, from, "")..(view, to, ""))
            .map_err(|e| self.err(e))?
        {
            let (k, v) = item.map_err(|e| self.err(e))?;
            let (_, bucket, dims) = k.value();
            let dims: DimKey = serde_json::from_str(dims).map_err(|e| Error::Corrupt {
                what: "dimension key",
                message: e.to_string(),
            })?;
            out.push(Row {
                bucket,
                dims,
                states: decode_states(v.value())?,
            });
        }
        Ok(out)
    }

    async fn quarantine(&self, limit: usize) -> Result<Vec<Quarantined>> {
        let tx = self.read_tx()?;
        let t = tx.open_table(QUARANTINE).map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for item in t.iter().map_err(|e| self.err(e))?.rev().take(limit) {
            let (_, v) = item.map_err(|e| self.err(e))?;
            out.push(
                serde_json::from_slice(v.value()).map_err(|e| Error::Corrupt {
                    what: "quarantine record",
                    message: e.to_string(),
                })?,
            );
        }
        Ok(out)
    }

    async fn watermark(&self, source: &str) -> Result<Option<i64>> {
        let tx = self.read_tx()?;
        let t = tx.open_table(WATERMARKS).map_err(|e| self.err(e))?;
        Ok(t.get(source).map_err(|e| self.err(e))?.map(|v| v.value()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use duet_config::Num;

    #[tokio::test]
    async fn batches_merge_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let key = ("v".to_string(), 60_000, vec![Some("a".to_string())]);
        {
            let store = EmbeddedStore::open(&path).unwrap();
            for n in [2, 3] {
                let mut b = SpeedBatch::default();
                b.deltas.insert(
                    key.clone(),
                    vec![State::Count(n), State::Sum(Num::Int(n * 10))],
                );
                b.offsets.insert(("g".into(), "t".into(), 0), n);
                b.seen.push(("s".into(), format!("id{n}"), 1));
                store.commit(b).await.unwrap();
            }
        }
        let store = EmbeddedStore::open(&path).unwrap();
        let rows = store.read("v", 0, 120_000).await.unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(
            rows[0].states,
            vec![State::Count(5), State::Sum(Num::Int(50))]
        );
        assert!(store.read("v", 120_000, 180_000).await.unwrap().is_empty());
        assert_eq!(
            store.offsets("g", "t").await.unwrap(),
            HashMap::from([(0, 3)])
        );
        assert_eq!(
            store.seen("s", &["id2", "id9"]).await.unwrap(),
            vec![true, false]
        );
    }

    #[tokio::test]
    async fn seen_ids_are_forgotten_after_the_retention() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(&dir.path().join("s.redb")).unwrap();
        let mut b = SpeedBatch::default();
        for t in 1..=10 {
            b.seen.push(("s".into(), format!("id{t}"), t * 1000));
        }
        b.seen.push(("other".into(), "id1".into(), 1000));
        store.commit(b).await.unwrap();
        let mut b = SpeedBatch::default();
        b.forget_seen_before.insert("s".into(), 5000);
        store.commit(b).await.unwrap();
        let ids: Vec<String> = (1..=10).map(|t| format!("id{t}")).collect();
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        let seen = store.seen("s", &ids).await.unwrap();
        assert_eq!(seen, (1..=10).map(|t| t >= 5).collect::<Vec<_>>());
        assert_eq!(store.seen("other", &["id1"]).await.unwrap(), vec![true]);
    }
}
