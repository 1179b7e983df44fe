//! The embedded store: one redb file (ACID, fsync on commit). Deltas, offsets, dedup ids,
//! quarantine and watermarks of a batch go in one write transaction. Every call runs on the
//! blocking thread pool, never on the async runtime's threads.
//!
//! Dedup ids are kept while a bucket they count in can still change: each id is indexed by
//! the end of the latest bucket it contributed to in each view, and forgotten once every view
//! is sealed past those buckets (the speed layer's state of a sealed bucket is not served).
//! On disk they are kept in blocks, one per batch, view and bucket end; the lookups go to an
//! index in memory ([`IdIndex`]), built from the blocks when the store opens and changed
//! only by commits that succeeded.
//! A stored state that cannot be read is set aside in a table of its own, with the reason,
//! and the bucket starts again from the new delta: the layer goes on, nothing is lost.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use duet_config::codec;
use duet_config::{DimKey, Row, State, ViewDefinition};
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

use super::{
    Marked, PartitionKey, Quarantined, Release, SpeedBatch, StateKey, StoreStats, ViewStore,
};
use crate::error::{Error, Result};

/// (view, bucket, dims as JSON) → states in the binary encoding ([`duet_config::codec`]).
const VIEWS: TableDefinition<(&str, i64, &str), &[u8]> = TableDefinition::new("views");
/// (group, topic, partition) → next offset.
const OFFSETS: TableDefinition<(&str, &str, i32), i64> = TableDefinition::new("offsets");
/// (source, event id) → number of index entries still holding it (written by earlier
/// versions; moved into blocks when the store opens).
const SEEN: TableDefinition<(&str, &str), u32> = TableDefinition::new("seen_ids");
/// (view, bucket end, source, event id) → (): which ids a view's unsealed buckets hold, one
/// entry per id (written by earlier versions; moved into blocks when the store opens).
const SEEN_INDEX: TableDefinition<(&str, i64, &str, &str), ()> =
    TableDefinition::new("seen_by_bucket");
/// (view, bucket end, batch sequence) → the (source, id) pairs of one batch whose latest
/// bucket of the view ends there, as text (written by earlier versions; converted into
/// `SEEN_KEYS` when the store opens).
const SEEN_BLOCKS: TableDefinition<(&str, i64, u64), &[u8]> = TableDefinition::new("seen_blocks");
/// (view, bucket end, batch sequence) → the ids of one batch whose latest bucket of the view
/// ends there, each as its 16-byte keyed hash ([`pack_keys`]): one entry per batch and bucket
/// instead of one per id.
const SEEN_KEYS: TableDefinition<(&str, i64, u64), &[u8]> = TableDefinition::new("seen_keys");
/// view → the sealed frontier its index entries were pruned to.
const FRONTIERS: TableDefinition<&str, i64> = TableDefinition::new("frontiers");
/// (at_ms, topic, partition, offset) → record as JSON.
const QUARANTINE: TableDefinition<(i64, &str, i32, i64), &[u8]> =
    TableDefinition::new("quarantine");
/// source → highest event time.
const WATERMARKS: TableDefinition<&str, i64> = TableDefinition::new("watermarks");
/// view → the definition its states were written under, as JSON.
const DEFINITIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("definitions");
/// (at_ms, view, bucket, dims) → an unreadable state and why, as JSON.
const CORRUPT: TableDefinition<(i64, &str, i64, &str), &[u8]> = TableDefinition::new("corrupt");
/// Counters: `seen_ids`, `corrupt`, `last_commit_ms`.
const META: TableDefinition<&str, i64> = TableDefinition::new("meta");

/// A stored row's states as bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedRow {
    /// Bucket start, epoch ms.
    pub bucket: i64,
    /// Dimension values.
    pub dims: DimKey,
    /// The states, encoded.
    pub bytes: Vec<u8>,
}

/// How long a speed batch's commit may stay in memory only: batch commits in between are
/// atomic but not synced, and a crash takes the store back to the last synced one, offsets
/// with states, so the batches after it are read from Kafka again.
const SYNC_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// The embedded, durable view store.
#[derive(Clone)]
pub struct EmbeddedStore {
    db: Arc<Database>,
    path: PathBuf,
    /// When a batch commit was last synced to disk.
    synced: Arc<std::sync::Mutex<std::time::Instant>>,
    /// The dedup ids the blocks hold, in memory.
    ids: Arc<IdIndex>,
}

/// Hashes a dedup id (its source and text) to its [`IdKey`]: SipHash-1-3 with a 128-bit
/// output, under two keys drawn when the store file is created and kept in it.
#[derive(Clone, Copy)]
struct IdHasher {
    keys: [u64; 2],
}

impl IdHasher {
    fn key(&self, source: &str, id: &str) -> IdKey {
        use siphasher::sip128::Hasher128;
        use std::hash::Hasher;
        let mut h = siphasher::sip128::SipHasher13::new_with_keys(self.keys[0], self.keys[1]);
        h.write_usize(source.len());
        h.write(source.as_bytes());
        h.write(id.as_bytes());
        let k = h.finish128();
        [k.h1, k.h2]
    }
}

/// The dedup ids of the store's blocks, in memory: for each id, how many blocks hold it. An
/// id is kept as its 128-bit keyed hash ([`IdHasher`]), a 24-byte table entry: a collision,
/// which would drop an event as a duplicate, has a probability of about n²/2¹²⁹ for n ids,
/// and the keys are secret, so ids cannot be chosen to collide.
struct IdIndex {
    hasher: IdHasher,
    held: std::sync::RwLock<hashbrown::HashMap<IdKey, u32>>,
    /// Held by a write that changes blocks, from its start until its changes are in `held`.
    writer: std::sync::Mutex<()>,
}

impl IdIndex {
    fn new(hasher: IdHasher) -> IdIndex {
        IdIndex {
            hasher,
            held: std::sync::RwLock::new(hashbrown::HashMap::new()),
            writer: std::sync::Mutex::new(()),
        }
    }

    fn key(&self, source: &str, id: &str) -> IdKey {
        self.hasher.key(source, id)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, hashbrown::HashMap<IdKey, u32>> {
        self.held
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn lock_writer(&self) -> std::sync::MutexGuard<'_, ()> {
        self.writer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Applies a committed write's changes (per id, blocks added minus released). The
    /// caller has held [`IdIndex::lock_writer`] since the change's counts were read.
    fn apply(&self, change: IdChange) {
        let mut held = self
            .held
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for (k, c) in change.by_key {
            if c.delta == 0 {
                continue;
            }
            let now = c.after();
            if now > 0 {
                held.insert(k, u32::try_from(now).unwrap_or(u32::MAX));
            } else {
                held.remove(&k);
            }
        }
    }
}

/// An id in the [`IdIndex`]: two 64-bit keyed hashes (not a `u128`, whose 16-byte alignment
/// would pad each table entry from 24 to 32 bytes).
type IdKey = [u64; 2];

/// What one write changes in the [`IdIndex`]: per id, how many blocks held it before the
/// write and how many the write adds minus releases. The index is read once per id, when the
/// write first meets it (the one index lookup of a new id until the change is applied).
#[derive(Default)]
struct IdChange {
    by_key: hashbrown::HashMap<IdKey, IdCount>,
}

/// How many blocks hold one id: before a write, and the write's change.
#[derive(Debug, Clone, Copy)]
struct IdCount {
    before: u32,
    delta: i64,
}

impl IdCount {
    /// How many blocks hold the id once the write is applied.
    fn after(self) -> i64 {
        i64::from(self.before) + self.delta
    }
}

impl IdChange {
    /// The count of `k`, its `before` read from `held` when the change first meets it.
    fn count(&mut self, held: &hashbrown::HashMap<IdKey, u32>, k: IdKey) -> &mut IdCount {
        self.by_key.entry(k).or_insert_with(|| IdCount {
            before: held.get(&k).copied().unwrap_or(0),
            delta: 0,
        })
    }

    /// Records `n` more blocks holding `k`.
    fn add(&mut self, held: &hashbrown::HashMap<IdKey, u32>, k: IdKey, n: i64) {
        self.count(held, k).delta += n;
    }

    /// The ids this change forgets (held before, held by no block after it) minus those it
    /// remembers anew.
    fn forgotten(&self) -> i64 {
        let mut n = 0;
        for c in self.by_key.values() {
            let (before, after) = (c.before > 0, c.after() > 0);
            n += i64::from(before && !after) - i64::from(!before && after);
        }
        n
    }
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore")
            .field("path", &self.path)
            .finish()
    }
}

/// What the store was doing, for errors.
struct Op<'a> {
    path: &'a Path,
    operation: &'static str,
}

/// Turns any redb error into the crate's, with the store's path and the operation.
trait Ctx<T> {
    fn ctx(self, op: &Op<'_>) -> Result<T>;
}

impl<T, E: Into<redb::Error>> Ctx<T> for std::result::Result<T, E> {
    fn ctx(self, op: &Op<'_>) -> Result<T> {
        self.map_err(|e| Error::Store {
            path: op.path.display().to_string(),
            operation: op.operation,
            source: Box::new(e.into()),
        })
    }
}

fn dims_key(dims: &DimKey) -> String {
    serde_json::to_string(dims).unwrap_or_default()
}

/// The fingerprint each view's states are written under: its recorded definition's (0 for a
/// view without one, as in tests that write states directly).
fn fingerprints(
    tx_defs: &impl ReadableTable<&'static str, &'static [u8]>,
    e: &Op<'_>,
) -> Result<HashMap<String, u64>> {
    let mut out = HashMap::new();
    for item in tx_defs.iter().ctx(e)? {
        let (k, v) = item.ctx(e)?;
        let def: ViewDefinition =
            serde_json::from_slice(v.value()).map_err(|source| Error::Corrupt {
                what: "view definition",
                source,
            })?;
        out.insert(k.value().to_string(), def.fingerprint_u64());
    }
    Ok(out)
}

/// The fingerprint `view`'s states are written under (see [`fingerprints`]), reading only its
/// definition.
fn fingerprint(
    tx_defs: &impl ReadableTable<&'static str, &'static [u8]>,
    view: &str,
    e: &Op<'_>,
) -> Result<u64> {
    let Some(v) = tx_defs.get(view).ctx(e)? else {
        return Ok(0);
    };
    let def: ViewDefinition =
        serde_json::from_slice(v.value()).map_err(|source| Error::Corrupt {
            what: "view definition",
            source,
        })?;
    Ok(def.fingerprint_u64())
}

/// Rows of `view` in `[from, to)` in the read transaction `tx`; an unreadable state is
/// skipped with a warning (set aside at the next write to its bucket).
fn read_rows(
    s: &EmbeddedStore,
    tx: &redb::ReadTransaction,
    view: &str,
    from: i64,
    to: i64,
) -> Result<Vec<Row>> {
    let e = s.err("read view rows");
    let print = fingerprint(&tx.open_table(DEFINITIONS).ctx(&e)?, view, &e)?;
    let t = tx.open_table(VIEWS).ctx(&e)?;
    let mut out = Vec::new();
    if from >= to {
        return Ok(out);
    }
    for item in t.range((view, from, "")..(view, to, "")).ctx(&e)? {
        let (k, v) = item.ctx(&e)?;
        let (_, bucket, dims) = k.value();
        // (a view without dimensions has the key `[]`: no parser needed)
        let dims: DimKey = if dims == "[]" {
            Vec::new()
        } else {
            serde_json::from_str(dims).map_err(|source| Error::Corrupt {
                what: "dimension key",
                source,
            })?
        };
        match codec::decode(print, v.value()) {
            Ok(states) => out.push(Row {
                bucket,
                dims,
                states,
            }),
            // set aside at the next write to the bucket; not served meanwhile
            Err(err) => {
                tracing::warn!(view = %view, bucket = %duet_config::time::iso(bucket), error = %err, "Unreadable stored state skipped.")
            }
        }
    }
    Ok(out)
}

/// Id keys as bytes: 16 each (two u64, little-endian).
fn pack_keys(keys: &[IdKey]) -> Vec<u8> {
    let mut out = Vec::with_capacity(keys.len() * 16);
    for k in keys {
        out.extend_from_slice(&k[0].to_le_bytes());
        out.extend_from_slice(&k[1].to_le_bytes());
    }
    out
}

/// Calls `f` with each id key of a block ([`pack_keys`]); an error if the bytes are not such
/// a list.
fn for_each_key(bytes: &[u8], mut f: impl FnMut(IdKey)) -> Result<()> {
    if !bytes.len().is_multiple_of(16) {
        return Err(Error::Unreadable {
            what: "dedup block",
        });
    }
    for k in bytes.chunks_exact(16) {
        let (hi, lo) = k.split_at(8);
        let word = |b: &[u8]| u64::from_le_bytes(b.try_into().unwrap_or_default());
        f([word(hi), word(lo)]);
    }
    Ok(())
}

/// (source, id) pairs as bytes, as earlier versions wrote blocks: for each string, its length
/// (u32, little-endian) and bytes.
#[cfg(test)]
fn pack_ids(ids: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(ids.iter().map(|(s, i)| s.len() + i.len() + 8).sum());
    for (source, id) in ids {
        for part in [source, id] {
            out.extend_from_slice(&(part.len() as u32).to_le_bytes());
            out.extend_from_slice(part.as_bytes());
        }
    }
    out
}

/// Removes the dedup blocks of `view` whose bucket end is at or before `until`, and records
/// in `change` (over the index `held`) the release of every id they held.
fn release_blocks(
    blocks: &mut redb::Table<(&str, i64, u64), &[u8]>,
    held: &hashbrown::HashMap<IdKey, u32>,
    change: &mut IdChange,
    view: &str,
    until: i64,
    e: &Op<'_>,
) -> Result<()> {
    let found: Vec<((i64, u64), Vec<u8>)> = blocks
        .range((view, i64::MIN, 0)..=(view, until, u64::MAX))
        .ctx(e)?
        .map(|item| item.map(|(k, v)| ((k.value().1, k.value().2), v.value().to_vec())))
        .collect::<std::result::Result<_, _>>()
        .ctx(e)?;
    for ((end, seq), bytes) in found {
        blocks.remove((view, end, seq)).ctx(e)?;
        for_each_key(&bytes, |k| change.add(held, k, -1))?;
    }
    Ok(())
}

/// One length-prefixed string's bytes from the front of `rest`, which moves past it.
fn take_bytes<'b>(rest: &mut &'b [u8]) -> Option<&'b [u8]> {
    let len = u32::from_le_bytes(rest.get(..4)?.try_into().ok()?) as usize;
    let s = rest.get(4..4usize.checked_add(len)?)?;
    *rest = &rest[4 + len..];
    Some(s)
}

/// Calls `f` with each (source, id) pair of a block of an earlier version (see
/// `SEEN_BLOCKS`); an error if the bytes are not such a list.
fn for_each_id(bytes: &[u8], mut f: impl FnMut(&str, &str)) -> Result<()> {
    let mut rest = bytes;
    while !rest.is_empty() {
        let pair = take_bytes(&mut rest).zip(take_bytes(&mut rest));
        match pair.map(|(s, i)| (std::str::from_utf8(s), std::str::from_utf8(i))) {
            Some((Ok(s), Ok(i))) => f(s, i),
            _ => {
                return Err(Error::Unreadable {
                    what: "dedup block",
                });
            }
        }
    }
    Ok(())
}

/// The store's id hasher: its keys as the file keeps them, drawn (from the standard library's
/// randomly seeded hasher) and kept when it has none.
fn id_hasher(tx: &redb::WriteTransaction, e: &Op<'_>) -> Result<IdHasher> {
    use std::hash::BuildHasher;
    let mut meta = tx.open_table(META).ctx(e)?;
    let mut keys = [0u64; 2];
    for (i, name) in ["id_key_0", "id_key_1"].into_iter().enumerate() {
        let kept = meta.get(name).ctx(e)?.map(|v| v.value());
        keys[i] = match kept {
            // kept as the i64 of the same bits
            Some(k) => k as u64,
            None => {
                let k = std::hash::RandomState::new().hash_one(i);
                meta.insert(name, k as i64).ctx(e)?;
                k
            }
        };
    }
    Ok(IdHasher { keys })
}

/// Converts the text blocks of earlier versions (`SEEN_BLOCKS`) into key blocks, and empties
/// their table.
fn convert_id_blocks(tx: &redb::WriteTransaction, hasher: IdHasher, e: &Op<'_>) -> Result<()> {
    let mut old = tx.open_table(SEEN_BLOCKS).ctx(e)?;
    if old.is_empty().ctx(e)? {
        return Ok(());
    }
    let mut blocks = tx.open_table(SEEN_KEYS).ctx(e)?;
    for item in old.iter().ctx(e)? {
        let (k, v) = item.ctx(e)?;
        let (view, end, _) = k.value();
        let mut keys = Vec::new();
        for_each_id(v.value(), |source, id| keys.push(hasher.key(source, id)))?;
        append_block(&mut blocks, view, end, &keys, e)?;
    }
    old.retain(|_, _| false).ctx(e)?;
    Ok(())
}

/// Moves the dedup ids an earlier version indexed one entry each (`SEEN_INDEX`, counted in
/// `SEEN`) into blocks, and empties both tables: the blocks then hold every id.
fn migrate_id_tables(tx: &redb::WriteTransaction, hasher: IdHasher, e: &Op<'_>) -> Result<()> {
    let mut index = tx.open_table(SEEN_INDEX).ctx(e)?;
    let mut seen = tx.open_table(SEEN).ctx(e)?;
    if index.is_empty().ctx(e)? && seen.is_empty().ctx(e)? {
        return Ok(());
    }
    let entries: Vec<(String, i64, String, String)> = index
        .iter()
        .ctx(e)?
        .map(|item| {
            item.map(|(k, _)| {
                let (view, end, source, id) = k.value();
                (view.to_string(), end, source.to_string(), id.to_string())
            })
        })
        .collect::<std::result::Result<_, _>>()
        .ctx(e)?;
    let mut groups: BTreeMap<(&str, i64), Vec<IdKey>> = BTreeMap::new();
    for (view, end, source, id) in &entries {
        groups
            .entry((view.as_str(), *end))
            .or_default()
            .push(hasher.key(source, id));
    }
    let mut blocks = tx.open_table(SEEN_KEYS).ctx(e)?;
    for ((view, end), ids) in &groups {
        append_block(&mut blocks, view, *end, ids, e)?;
    }
    index.retain(|_, _| false).ctx(e)?;
    seen.retain(|_, _| false).ctx(e)?;
    Ok(())
}

/// Writes the id keys `ids` as a new block of `view` and bucket end `end`, after its last one.
fn append_block(
    blocks: &mut redb::Table<(&str, i64, u64), &[u8]>,
    view: &str,
    end: i64,
    ids: &[IdKey],
    e: &Op<'_>,
) -> Result<()> {
    let seq = blocks
        .range((view, end, 0)..=(view, end, u64::MAX))
        .ctx(e)?
        .next_back()
        .transpose()
        .ctx(e)?
        .map_or(0, |(k, _)| k.value().2 + 1);
    blocks
        .insert((view, end, seq), pack_keys(ids).as_slice())
        .ctx(e)?;
    Ok(())
}

impl EmbeddedStore {
    /// Opens (or creates) the store file. Fails if another process has it open.
    pub fn open(path: &Path) -> Result<EmbeddedStore> {
        let op = Op {
            path,
            operation: "open",
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(redb::Error::Io)
                .ctx(&op)?;
        }
        let db = Database::create(path).ctx(&op)?;
        let mut store = EmbeddedStore {
            db: Arc::new(db),
            path: path.to_path_buf(),
            synced: Arc::new(std::sync::Mutex::new(std::time::Instant::now())),
            // replaced below by the index under the file's keys
            ids: Arc::new(IdIndex::new(IdHasher { keys: [0, 0] })),
        };
        // create the tables so that readers never meet a missing one; the id hasher's keys;
        // ids of earlier versions' index and text blocks into key blocks
        let mut hasher = None;
        store.write("create tables", |tx| {
            let e = store.err("create tables");
            let h = id_hasher(tx, &e)?;
            migrate_id_tables(tx, h, &e)?;
            convert_id_blocks(tx, h, &e)?;
            hasher = Some(h);
            Ok(())
        })?;
        let hasher = hasher.ok_or(Error::Unreadable {
            what: "dedup id hash keys",
        })?;
        store.ids = Arc::new(IdIndex::new(hasher));
        store.load_ids()?;
        Ok(store)
    }

    /// Builds the in-memory id index from the blocks.
    fn load_ids(&self) -> Result<()> {
        let e = self.err("read dedup ids");
        let tx = self.read_tx("read dedup ids")?;
        let _writer = self.ids.lock_writer();
        let mut change = IdChange::default();
        {
            let held = self.ids.read();
            for item in tx.open_table(SEEN_KEYS).ctx(&e)?.iter().ctx(&e)? {
                let (_, v) = item.ctx(&e)?;
                for_each_key(v.value(), |k| change.add(&held, k, 1))?;
            }
        }
        self.ids.apply(change);
        Ok(())
    }

    fn err(&self, operation: &'static str) -> Op<'_> {
        Op {
            path: &self.path,
            operation,
        }
    }

    /// Runs `f` on the blocking pool.
    async fn blocking<T: Send + 'static>(
        &self,
        operation: &'static str,
        f: impl FnOnce(&EmbeddedStore) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || f(&this))
            .await
            .map_err(|source| Error::Task {
                path: self.path.display().to_string(),
                operation,
                source,
            })?
    }

    fn write(
        &self,
        operation: &'static str,
        f: impl FnOnce(&redb::WriteTransaction) -> Result<()>,
    ) -> Result<()> {
        self.write_with(operation, redb::Durability::Immediate, f)
    }

    fn write_with(
        &self,
        operation: &'static str,
        durability: redb::Durability,
        f: impl FnOnce(&redb::WriteTransaction) -> Result<()>,
    ) -> Result<()> {
        let e = self.err(operation);
        let mut tx = self.db.begin_write().ctx(&e)?;
        // refused only when the database is shared between processes; the transaction then
        // keeps its default, a synced commit
        let _ = tx.set_durability(durability);
        {
            tx.open_table(VIEWS).ctx(&e)?;
            tx.open_table(OFFSETS).ctx(&e)?;
            tx.open_table(SEEN_KEYS).ctx(&e)?;
            tx.open_table(FRONTIERS).ctx(&e)?;
            tx.open_table(QUARANTINE).ctx(&e)?;
            tx.open_table(WATERMARKS).ctx(&e)?;
            tx.open_table(DEFINITIONS).ctx(&e)?;
            tx.open_table(CORRUPT).ctx(&e)?;
            tx.open_table(META).ctx(&e)?;
        }
        f(&tx)?;
        tx.commit().ctx(&e)
    }

    fn read_tx(&self, operation: &'static str) -> Result<redb::ReadTransaction> {
        self.db.begin_read().ctx(&self.err(operation))
    }

    fn apply(&self, mut batch: SpeedBatch) -> Result<()> {
        // synced at most every SYNC_EVERY (see there); every commit is atomic and visible
        let durability = {
            let mut synced = self
                .synced
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if synced.elapsed() >= SYNC_EVERY {
                *synced = std::time::Instant::now();
                redb::Durability::Immediate
            } else {
                redb::Durability::None
            }
        };
        // the id index changes with the commit, after it, before any other write
        let _writer = self.ids.lock_writer();
        let mut change = IdChange::default();
        self.write_with("commit a batch", durability, |tx| {
            let e = self.err("commit a batch");
            let mut meta = tx.open_table(META).ctx(&e)?;
            let mut counter = |name: &str, delta: i64| -> Result<()> {
                let old = meta.get(name).ctx(&e)?.map_or(0, |v| v.value());
                meta.insert(name, old + delta).ctx(&e)?;
                Ok(())
            };
            // states: merged into what is stored; an unreadable stored state is set aside
            let prints = fingerprints(&tx.open_table(DEFINITIONS).ctx(&e)?, &e)?;
            let mut views = tx.open_table(VIEWS).ctx(&e)?;
            let mut corrupt = tx.open_table(CORRUPT).ctx(&e)?;
            let mut set_aside = 0;
            // one state per key here (not per partition): the partitions' deltas merged first
            // (taken out of the batch, not copied)
            let mut deltas: HashMap<StateKey, Vec<State>> = HashMap::new();
            for part in batch.parts.values_mut() {
                for (key, delta) in std::mem::take(&mut part.deltas) {
                    match deltas.get_mut(&key) {
                        Some(acc) => duet_config::measure::merge_row(acc, delta).map_err(
                            |source| Error::Merge {
                                view: key.view.clone(),
                                source,
                            },
                        )?,
                        None => {
                            deltas.insert(key, delta);
                        }
                    }
                }
            }
            for (key, delta) in deltas {
                let print = prints.get(&key.view).copied().unwrap_or(0);
                let dims = dims_key(&key.dims);
                let k = (key.view.as_str(), key.bucket, dims.as_str());
                let stored = views.get(k).ctx(&e)?.map(|v| v.value().to_vec());
                let states = match stored {
                    None => delta,
                    Some(bytes) => {
                        // states of other kinds than the delta's cannot be merged: checked
                        // first, so that the delta is not copied for the rare refusal
                        let merged = codec::decode(print, &bytes).map_err(|e| e.to_string()).and_then(
                            |mut s| {
                                let fits = s.iter().zip(&delta).all(|(a, b)| {
                                    std::mem::discriminant(a) == std::mem::discriminant(b)
                                });
                                if fits {
                                    return Ok(s);
                                }
                                let refused = duet_config::measure::merge_row(&mut s, delta.clone())
                                    .err()
                                    .map_or_else(|| "states of other kinds".to_string(), |e| e.to_string());
                                Err(refused)
                            },
                        );
                        match merged {
                            Ok(mut s) => {
                                duet_config::measure::merge_row(&mut s, delta).map_err(
                                    |source| Error::Merge {
                                        view: key.view.clone(),
                                        source,
                                    },
                                )?;
                                s
                            }
                            Err(reason) => {
                                tracing::error!(view = %key.view, bucket = %duet_config::time::iso(key.bucket),
                                    error = %reason, "Unreadable stored state set aside; the bucket starts again.");
                                let record = serde_json::json!({
                                    "reason": reason, "state": bytes,
                                });
                                corrupt
                                    .insert(
                                        (batch.at_ms, key.view.as_str(), key.bucket, dims.as_str()),
                                        record.to_string().as_bytes(),
                                    )
                                    .ctx(&e)?;
                                set_aside += 1;
                                delta
                            }
                        }
                    }
                };
                let bytes = codec::encode(print, &states);
                views.insert(k, bytes.as_slice()).ctx(&e)?;
            }
            if set_aside > 0 {
                counter("corrupt", set_aside)?;
            }
            // states of buckets sealed longer ago than the retention are served by batch only
            for (view, before) in &batch.drop_states_before {
                let old: Vec<(i64, String)> = views
                    .range((view.as_str(), i64::MIN, "")..(view.as_str(), *before, ""))
                    .ctx(&e)?
                    .map(|item| item.map(|(k, _)| (k.value().1, k.value().2.to_string())))
                    .collect::<std::result::Result<_, _>>()
                    .ctx(&e)?;
                for (bucket, dims) in old {
                    views
                        .remove((view.as_str(), bucket, dims.as_str()))
                        .ctx(&e)?;
                }
            }
            let mut offsets = tx.open_table(OFFSETS).ctx(&e)?;
            for (k, o) in batch.offsets() {
                offsets
                    .insert((k.group.as_str(), k.topic.as_str(), k.partition), o)
                    .ctx(&e)?;
            }
            // dedup ids: forget what sealed buckets no longer need, then remember the new
            let held = self.ids.read();
            let mut blocks = tx.open_table(SEEN_KEYS).ctx(&e)?;
            let mut frontiers = tx.open_table(FRONTIERS).ctx(&e)?;
            for (view, until) in &batch.sealed_until {
                let old = frontiers
                    .get(view.as_str())
                    .ctx(&e)?
                    .map_or(i64::MIN, |v| v.value());
                if *until <= old {
                    continue;
                }
                release_blocks(&mut blocks, &held, &mut change, view, *until, &e)?;
                frontiers.insert(view.as_str(), *until).ctx(&e)?;
            }
            // a handful of views: found by a scan
            let mut frontier_of: Vec<(String, i64)> = Vec::new();
            for item in frontiers.iter().ctx(&e)? {
                let (k, v) = item.ctx(&e)?;
                frontier_of.push((k.value().to_string(), v.value()));
            }
            let live = |r: &&Release| {
                r.bucket_end
                    > frontier_of
                        .iter()
                        .find(|(v, _)| v.as_str() == r.view.as_str())
                        .map_or(i64::MIN, |(_, f)| *f)
            };
            let mut groups: BTreeMap<(&str, i64), Vec<IdKey>> = BTreeMap::new();
            for s in batch.parts.values().flat_map(|p| p.seen.iter()) {
                let n = s.releases.iter().filter(live).count();
                if n == 0 {
                    continue;
                }
                let k = self.ids.key(&s.source, &s.id);
                let count = change.count(&held, k);
                // an id already remembered keeps its blocks
                if count.after() > 0 {
                    continue;
                }
                count.delta += n as i64;
                for r in s.releases.iter().filter(live) {
                    groups
                        .entry((r.view.as_str(), r.bucket_end))
                        .or_default()
                        .push(k);
                }
            }
            for ((view, end), ids) in &groups {
                append_block(&mut blocks, view, *end, ids, &e)?;
            }
            let forgotten = change.forgotten();
            drop(held);
            if forgotten != 0 {
                counter("seen_ids", -forgotten)?;
            }
            let mut q = tx.open_table(QUARANTINE).ctx(&e)?;
            for r in &batch.quarantine {
                let bytes = serde_json::to_vec(r).map_err(|source| Error::Corrupt {
                    what: "quarantine record",
                    source,
                })?;
                q.insert(
                    (r.at_ms, r.topic.as_str(), r.partition, r.offset),
                    bytes.as_slice(),
                )
                .ctx(&e)?;
            }
            // the quarantine is bounded: a retention and a cap (the lake keeps every event)
            // (keys are ordered by time: drop the oldest, those before the retention and those
            // beyond the cap)
            let keep = batch.quarantine_keep;
            let expired = q
                .range(..(keep.since_ms, "", i32::MIN, i64::MIN))
                .ctx(&e)?
                .count();
            let kept = (q.len().ctx(&e)? as usize).saturating_sub(expired);
            let drop = expired + kept.saturating_sub(keep.cap);
            let oldest: Vec<(i64, String, i32, i64)> = q
                .iter()
                .ctx(&e)?
                .take(drop)
                .map(|item| {
                    item.map(|(k, _)| {
                        let (at, t, p, o) = k.value();
                        (at, t.to_string(), p, o)
                    })
                })
                .collect::<std::result::Result<_, _>>()
                .ctx(&e)?;
            for (at, t, p, o) in &oldest {
                q.remove((*at, t.as_str(), *p, *o)).ctx(&e)?;
            }
            let mut w = tx.open_table(WATERMARKS).ctx(&e)?;
            for (s, t) in &batch.watermarks {
                let old = w.get(s.as_str()).ctx(&e)?.map(|v| v.value());
                if old.is_none_or(|o| o < *t) {
                    w.insert(s.as_str(), *t).ctx(&e)?;
                }
            }
            meta.insert("last_commit_ms", batch.at_ms).ctx(&e)?;
            Ok(())
        })?;
        self.ids.apply(change);
        Ok(())
    }

    /// The stored bytes of `view`'s states with a bucket in `[from, to)`, by bucket and
    /// dimensions (the encoding of [`duet_config::codec`], as the batch tables' `_state`).
    pub fn read_encoded(&self, view: &str, from: i64, to: i64) -> Result<Vec<EncodedRow>> {
        let e = self.err("read view rows");
        let tx = self.read_tx("read view rows")?;
        let t = tx.open_table(VIEWS).ctx(&e)?;
        let mut out = Vec::new();
        for item in t.range((view, from, "")..(view, to, "")).ctx(&e)? {
            let (k, v) = item.ctx(&e)?;
            let (_, bucket, dims) = k.value();
            out.push(EncodedRow {
                bucket,
                dims: serde_json::from_str(dims).map_err(|source| Error::Corrupt {
                    what: "dimension key",
                    source,
                })?,
                bytes: v.value().to_vec(),
            });
        }
        Ok(out)
    }

    fn drop_view_now(&self, view: &str) -> Result<()> {
        let _writer = self.ids.lock_writer();
        let mut change = IdChange::default();
        self.write("drop a view", |tx| {
            let e = self.err("drop a view");
            let mut views = tx.open_table(VIEWS).ctx(&e)?;
            let keys: Vec<(i64, String)> = views
                .range((view, i64::MIN, "")..=(view, i64::MAX, "\u{10ffff}"))
                .ctx(&e)?
                .map(|item| item.map(|(k, _)| (k.value().1, k.value().2.to_string())))
                .collect::<std::result::Result<_, _>>()
                .ctx(&e)?;
            for (bucket, dims) in keys {
                views.remove((view, bucket, dims.as_str())).ctx(&e)?;
            }
            let mut blocks = tx.open_table(SEEN_KEYS).ctx(&e)?;
            release_blocks(
                &mut blocks,
                &self.ids.read(),
                &mut change,
                view,
                i64::MAX,
                &e,
            )?;
            let forgotten = change.forgotten();
            let mut meta = tx.open_table(META).ctx(&e)?;
            let old = meta.get("seen_ids").ctx(&e)?.map_or(0, |v| v.value());
            meta.insert("seen_ids", old - forgotten).ctx(&e)?;
            tx.open_table(FRONTIERS).ctx(&e)?.remove(view).ctx(&e)?;
            tx.open_table(DEFINITIONS).ctx(&e)?.remove(view).ctx(&e)?;
            Ok(())
        })?;
        self.ids.apply(change);
        Ok(())
    }
}

#[async_trait::async_trait]
impl ViewStore for EmbeddedStore {
    fn states_per_partition(&self) -> bool {
        false
    }

    async fn commit(&self, batch: SpeedBatch) -> Result<()> {
        self.blocking("commit a batch", move |s| s.apply(batch))
            .await
    }

    async fn offsets(&self, group: &str, topic: &str) -> Result<HashMap<i32, i64>> {
        let (group, topic) = (group.to_string(), topic.to_string());
        self.blocking("read offsets", move |s| {
            let e = s.err("read offsets");
            let tx = s.read_tx("read offsets")?;
            let t = tx.open_table(OFFSETS).ctx(&e)?;
            let mut out = HashMap::new();
            for item in t
                .range(
                    (group.as_str(), topic.as_str(), i32::MIN)
                        ..=(group.as_str(), topic.as_str(), i32::MAX),
                )
                .ctx(&e)?
            {
                let (k, v) = item.ctx(&e)?;
                out.insert(k.value().2, v.value());
            }
            Ok(out)
        })
        .await
    }

    async fn seen(&self, _part: &PartitionKey, source: &str, ids: &[&str]) -> Result<Vec<bool>> {
        let held = self.ids.read();
        Ok(ids
            .iter()
            .map(|id| held.contains_key(&self.ids.key(source, id)))
            .collect())
    }

    async fn read(&self, view: &str, from: i64, to: i64) -> Result<Vec<Row>> {
        let view = view.to_string();
        self.blocking("read view rows", move |s| {
            let tx = s.read_tx("read view rows")?;
            read_rows(s, &tx, &view, from, to)
        })
        .await
    }

    async fn read_marked(&self, view: &str, source: &str, from: i64, to: i64) -> Result<Marked> {
        let (view, source) = (view.to_string(), source.to_string());
        self.blocking("read view rows", move |s| {
            let e = s.err("read view rows");
            let tx = s.read_tx("read view rows")?;
            let rows = read_rows(s, &tx, &view, from, to)?;
            let watermark = tx
                .open_table(WATERMARKS)
                .ctx(&e)?
                .get(source.as_str())
                .ctx(&e)?
                .map(|v| v.value());
            let last_commit_ms = tx
                .open_table(META)
                .ctx(&e)?
                .get("last_commit_ms")
                .ctx(&e)?
                .map(|v| v.value());
            Ok(Marked {
                rows,
                watermark,
                last_commit_ms,
            })
        })
        .await
    }

    async fn quarantine(&self, limit: usize) -> Result<Vec<Quarantined>> {
        self.blocking("read the quarantine", move |s| {
            let e = s.err("read the quarantine");
            let tx = s.read_tx("read the quarantine")?;
            let t = tx.open_table(QUARANTINE).ctx(&e)?;
            let mut out = Vec::new();
            for item in t.iter().ctx(&e)?.rev().take(limit) {
                let (_, v) = item.ctx(&e)?;
                out.push(
                    serde_json::from_slice(v.value()).map_err(|source| Error::Corrupt {
                        what: "quarantine record",
                        source,
                    })?,
                );
            }
            Ok(out)
        })
        .await
    }

    async fn watermark(&self, source: &str) -> Result<Option<i64>> {
        let source = source.to_string();
        self.blocking("read a watermark", move |s| {
            let e = s.err("read a watermark");
            let tx = s.read_tx("read a watermark")?;
            let t = tx.open_table(WATERMARKS).ctx(&e)?;
            Ok(t.get(source.as_str()).ctx(&e)?.map(|v| v.value()))
        })
        .await
    }

    async fn stats(&self) -> Result<StoreStats> {
        self.blocking("read its statistics", move |s| {
            let e = s.err("read its statistics");
            let tx = s.read_tx("read its statistics")?;
            let meta = tx.open_table(META).ctx(&e)?;
            let get =
                |k: &str| -> Result<Option<i64>> { Ok(meta.get(k).ctx(&e)?.map(|v| v.value())) };
            let bytes = std::fs::metadata(&s.path).map_or(0, |m| m.len());
            Ok(StoreStats {
                seen_ids: get("seen_ids")?.unwrap_or(0).max(0) as u64,
                bytes,
                corrupt: tx.open_table(CORRUPT).ctx(&e)?.len().ctx(&e)?,
                last_commit_ms: get("last_commit_ms")?,
            })
        })
        .await
    }

    async fn definitions(&self) -> Result<BTreeMap<String, ViewDefinition>> {
        self.blocking("read view definitions", move |s| {
            let e = s.err("read view definitions");
            let tx = s.read_tx("read view definitions")?;
            let t = tx.open_table(DEFINITIONS).ctx(&e)?;
            let mut out = BTreeMap::new();
            for item in t.iter().ctx(&e)? {
                let (k, v) = item.ctx(&e)?;
                let def = serde_json::from_slice(v.value()).map_err(|source| Error::Corrupt {
                    what: "view definition",
                    source,
                })?;
                out.insert(k.value().to_string(), def);
            }
            Ok(out)
        })
        .await
    }

    async fn record_definitions(&self, defs: BTreeMap<String, ViewDefinition>) -> Result<()> {
        self.blocking("record view definitions", move |s| {
            s.write("record view definitions", |tx| {
                let e = s.err("record view definitions");
                let mut t = tx.open_table(DEFINITIONS).ctx(&e)?;
                for (view, def) in &defs {
                    let bytes = serde_json::to_vec(def).map_err(|source| Error::Corrupt {
                        what: "view definition",
                        source,
                    })?;
                    t.insert(view.as_str(), bytes.as_slice()).ctx(&e)?;
                }
                Ok(())
            })
        })
        .await
    }

    async fn drop_view(&self, view: &str) -> Result<()> {
        let view = view.to_string();
        self.blocking("drop a view", move |s| s.drop_view_now(&view))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{PartitionKey, Release, SeenId, StateKey};
    use duet_config::{Num, State};

    /// Commits a batch that only says `view` is sealed until `until`.
    async fn seal(store: &EmbeddedStore, view: &str, until: i64) {
        let mut b = SpeedBatch::default();
        b.sealed_until.insert(view.into(), until);
        store.commit(b).await.unwrap();
    }

    fn anywhere() -> PartitionKey {
        PartitionKey {
            group: String::new(),
            topic: String::new(),
            partition: 0,
        }
    }

    fn key(view: &str, bucket: i64) -> StateKey {
        StateKey {
            view: view.into(),
            bucket,
            dims: vec![Some("a".to_string())],
        }
    }

    fn seen(id: &str, releases: &[(&str, i64)]) -> SeenId {
        SeenId {
            source: "s".into(),
            id: id.into(),
            releases: releases
                .iter()
                .map(|(view, end)| Release {
                    view: (*view).into(),
                    bucket_end: *end,
                })
                .collect(),
        }
    }

    #[tokio::test]
    async fn batches_merge_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        {
            let store = EmbeddedStore::open(&path).unwrap();
            for n in [2, 3] {
                let mut b = SpeedBatch::default();
                let part = b.part(PartitionKey {
                    group: "g".into(),
                    topic: "t".into(),
                    partition: 0,
                });
                part.deltas.insert(
                    key("v", 60_000),
                    vec![State::Count(n), State::Sum(Num::Int(n * 10))],
                );
                part.next_offset = Some(n);
                part.seen.push(seen(&format!("id{n}"), &[("v", 120_000)]));
                b.watermarks.insert("s".into(), 1_000 + n);
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
            store.seen(&anywhere(), "s", &["id2", "id9"]).await.unwrap(),
            vec![true, false]
        );
        assert_eq!(store.stats().await.unwrap().seen_ids, 2);
        // serving's read of rows, watermark and last commit together: the same as apart
        let marked = store.read_marked("v", "s", 0, 120_000).await.unwrap();
        assert_eq!(marked.rows, rows);
        assert_eq!(marked.watermark, store.watermark("s").await.unwrap());
        assert_eq!(
            marked.last_commit_ms,
            store.stats().await.unwrap().last_commit_ms
        );
        assert!(marked.last_commit_ms.is_some());
        assert_eq!(marked.watermark, Some(1_003));
    }

    /// The deltas of one key from several partitions of a batch all count, in one state.
    #[tokio::test]
    async fn partitions_of_one_batch_add_up_in_one_state() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(&dir.path().join("s.redb")).unwrap();
        for round in 0..2 {
            let mut b = SpeedBatch::default();
            for p in 0..3 {
                let part = b.part(PartitionKey {
                    group: "g".into(),
                    topic: "t".into(),
                    partition: p,
                });
                part.deltas.insert(
                    key("v", 60_000),
                    vec![State::Count(1), State::Sum(Num::Int(i64::from(p)))],
                );
                part.next_offset = Some(round + 1);
            }
            store.commit(b).await.unwrap();
        }
        let rows = store.read("v", 0, 120_000).await.unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(
            rows[0].states,
            vec![State::Count(6), State::Sum(Num::Int(6))]
        );
        let offsets = store.offsets("g", "t").await.unwrap();
        assert_eq!(offsets, HashMap::from([(0, 2), (1, 2), (2, 2)]));
    }

    /// Ids are forgotten once every view they count in is sealed past their buckets; an
    /// event far in the future does not erase anything.
    #[tokio::test]
    async fn seen_ids_are_forgotten_as_their_buckets_seal() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(&dir.path().join("s.redb")).unwrap();
        let mut b = SpeedBatch::default();
        for t in 1..=10 {
            // each event counts in view a (minute buckets) and view b (one long bucket)
            b.unpartitioned().seen.push(seen(
                &format!("id{t}"),
                &[("a", t * 60_000), ("b", 3_600_000)],
            ));
        }
        b.unpartitioned()
            .seen
            .push(seen("only-a", &[("a", 60_000)]));
        b.unpartitioned()
            .seen
            .push(seen("future", &[("a", 9_000_000_000_000)]));
        store.commit(b).await.unwrap();
        assert_eq!(store.stats().await.unwrap().seen_ids, 12);
        let ids: Vec<String> = (1..=10).map(|t| format!("id{t}")).collect();
        let check = async |store: &EmbeddedStore| {
            store
                .seen(
                    &anywhere(),
                    "s",
                    &ids.iter().map(String::as_str).collect::<Vec<_>>(),
                )
                .await
                .unwrap()
        };

        // view a sealed to minute 5: ids still needed by view b stay
        seal(&store, "a", 300_000).await;
        assert!(check(&store).await.iter().all(|s| *s));
        assert_eq!(
            store
                .seen(&anywhere(), "s", &["only-a", "future"])
                .await
                .unwrap(),
            vec![false, true]
        );
        // view b sealed too: the ids of a's sealed minutes go
        let mut b = SpeedBatch::default();
        b.sealed_until.insert("b".into(), 3_600_000);
        b.unpartitioned()
            .deltas
            .insert(key("b", 0), vec![State::Count(1)]);
        b.unpartitioned()
            .deltas
            .insert(key("b", 3_600_000), vec![State::Count(2)]);
        store.commit(b).await.unwrap();
        // and states of buckets sealed long enough ago are dropped
        let mut b = SpeedBatch::default();
        b.drop_states_before.insert("b".into(), 3_600_000);
        store.commit(b).await.unwrap();
        let kept: Vec<i64> = store
            .read("b", i64::MIN, i64::MAX)
            .await
            .unwrap()
            .iter()
            .map(|r| r.bucket)
            .collect();
        assert_eq!(kept, vec![3_600_000]);
        assert_eq!(
            check(&store).await,
            (1..=10).map(|t| t > 5).collect::<Vec<_>>()
        );
        assert_eq!(store.stats().await.unwrap().seen_ids, 6);
        // a late duplicate of a forgotten id for sealed buckets is not remembered again
        let mut b = SpeedBatch::default();
        b.unpartitioned()
            .seen
            .push(seen("id1", &[("a", 60_000), ("b", 3_600_000)]));
        store.commit(b).await.unwrap();
        assert_eq!(store.stats().await.unwrap().seen_ids, 6);
        // dropping a view releases its share
        store.drop_view("a").await.unwrap();
        assert_eq!(store.stats().await.unwrap().seen_ids, 0);
    }

    #[test]
    fn id_blocks_round_trip() {
        let ids = [("orders", "o-1|paid"), ("", ""), ("behavior", "e-\u{e9}")];
        let unpack = |bytes: &[u8]| {
            let mut out = Vec::new();
            for_each_id(bytes, |s, i| out.push((s.to_string(), i.to_string()))).map(|()| out)
        };
        assert_eq!(
            unpack(&pack_ids(&ids)).unwrap(),
            ids.iter()
                .map(|(s, i)| (s.to_string(), i.to_string()))
                .collect::<Vec<_>>()
        );
        assert_eq!(unpack(&[]).unwrap(), Vec::new());
        assert!(unpack(&[9, 0, 0, 0, b'x']).is_err());
        assert!(unpack(&[1, 0, 0, 0, b'x']).is_err());
        let keys = [[1, u64::MAX], [0, 0], [7, 1 << 63]];
        let unpack = |bytes: &[u8]| {
            let mut out = Vec::new();
            for_each_key(bytes, |k| out.push(k)).map(|()| out)
        };
        assert_eq!(unpack(&pack_keys(&keys)).unwrap(), keys.to_vec());
        assert_eq!(unpack(&[]).unwrap(), Vec::<IdKey>::new());
        assert!(unpack(&[0; 17]).is_err());
    }

    /// The keys an id is hashed under are the file's: ids kept before a reopen are still
    /// found after it.
    #[tokio::test]
    async fn ids_are_found_after_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        {
            let store = EmbeddedStore::open(&path).unwrap();
            let mut b = SpeedBatch::default();
            b.parts
                .entry(anywhere())
                .or_default()
                .seen
                .push(seen("e1", &[("v", 60_000)]));
            store.commit(b).await.unwrap();
        }
        let store = EmbeddedStore::open(&path).unwrap();
        assert_eq!(
            store.seen(&anywhere(), "s", &["e1", "e2"]).await.unwrap(),
            vec![true, false]
        );
    }

    /// The store at `path` opened again after `old` wrote into its file what an earlier
    /// version would have.
    fn reopened_after(
        path: &Path,
        old: impl FnOnce(&redb::WriteTransaction) -> Result<()>,
    ) -> EmbeddedStore {
        EmbeddedStore::open(path)
            .unwrap()
            .write("test", old)
            .unwrap();
        EmbeddedStore::open(path).unwrap()
    }

    /// Text blocks of the previous version become key blocks when the store opens: their
    /// ids are found, counted, and released as views seal.
    #[tokio::test]
    async fn text_blocks_of_the_previous_version_are_converted() {
        let dir = tempfile::tempdir().unwrap();
        let store = reopened_after(&dir.path().join("s.redb"), |tx| {
            let mut blocks = tx.open_table(SEEN_BLOCKS).unwrap();
            let both = pack_ids(&[("s", "old"), ("s", "both")]);
            blocks.insert(("a", 60_000, 0), both.as_slice()).unwrap();
            let b = pack_ids(&[("s", "both")]);
            blocks.insert(("b", 60_000, 0), b.as_slice()).unwrap();
            tx.open_table(META).unwrap().insert("seen_ids", 2).unwrap();
            Ok(())
        });
        let tx = store.read_tx("test").unwrap();
        assert!(tx.open_table(SEEN_BLOCKS).unwrap().is_empty().unwrap());
        assert_eq!(tx.open_table(SEEN_KEYS).unwrap().len().unwrap(), 2);
        drop(tx);
        assert_eq!(
            store
                .seen(&anywhere(), "s", &["old", "both", "new"])
                .await
                .unwrap(),
            vec![true, true, false]
        );
        seal(&store, "a", 60_000).await;
        assert_eq!(
            store
                .seen(&anywhere(), "s", &["old", "both"])
                .await
                .unwrap(),
            vec![false, true]
        );
        assert_eq!(store.stats().await.unwrap().seen_ids, 1);
    }

    /// Ids indexed one entry each by an earlier version are moved into blocks when the store
    /// opens, found, and released as views seal.
    #[tokio::test]
    async fn ids_of_the_earlier_index_are_still_released() {
        let dir = tempfile::tempdir().unwrap();
        let store = reopened_after(&dir.path().join("s.redb"), |tx| {
            let mut index = tx.open_table(SEEN_INDEX).unwrap();
            index.insert(("a", 60_000, "s", "old"), ()).unwrap();
            index.insert(("b", 60_000, "s", "old"), ()).unwrap();
            tx.open_table(SEEN)
                .unwrap()
                .insert(("s", "old"), 2)
                .unwrap();
            tx.open_table(META).unwrap().insert("seen_ids", 1).unwrap();
            Ok(())
        });
        let tx = store.read_tx("test").unwrap();
        assert!(tx.open_table(SEEN_INDEX).unwrap().is_empty().unwrap());
        assert!(tx.open_table(SEEN).unwrap().is_empty().unwrap());
        drop(tx);
        // held by the block of view b still
        seal(&store, "a", 60_000).await;
        assert_eq!(
            store.seen(&anywhere(), "s", &["old"]).await.unwrap(),
            vec![true]
        );
        assert_eq!(store.stats().await.unwrap().seen_ids, 1);
        assert_eq!(
            store.seen(&anywhere(), "s", &["old"]).await.unwrap(),
            vec![true]
        );
        seal(&store, "b", 60_000).await;
        assert_eq!(
            store.seen(&anywhere(), "s", &["old"]).await.unwrap(),
            vec![false]
        );
        assert_eq!(store.stats().await.unwrap().seen_ids, 0);
    }

    /// The store keeps the newest quarantined events: none older than the retention, at
    /// most the cap.
    #[tokio::test]
    async fn the_quarantine_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(&dir.path().join("s.redb")).unwrap();
        let q = |offset: i64, at_ms: i64| Quarantined {
            source: "s".into(),
            topic: "t".into(),
            partition: 0,
            offset,
            reason: "bad".into(),
            payload: Vec::new(),
            at_ms,
        };
        let keep = |cap, since_ms| crate::store::QuarantineKeep { cap, since_ms };
        let b = SpeedBatch {
            quarantine: (0..10).map(|i| q(i, 1_000 + i)).collect(),
            quarantine_keep: keep(100, 0),
            ..SpeedBatch::default()
        };
        store.commit(b).await.unwrap();
        assert_eq!(store.quarantine(100).await.unwrap().len(), 10);
        // older than the retention: gone; beyond the cap: the oldest go
        let b = SpeedBatch {
            quarantine: vec![q(10, 2_000)],
            quarantine_keep: keep(4, 1_003),
            ..SpeedBatch::default()
        };
        store.commit(b).await.unwrap();
        let kept: Vec<i64> = store
            .quarantine(100)
            .await
            .unwrap()
            .iter()
            .map(|r| r.offset)
            .collect();
        assert_eq!(kept, vec![10, 9, 8, 7]);
    }

    #[tokio::test]
    async fn unreadable_or_overflowed_states_never_wedge_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(&dir.path().join("s.redb")).unwrap();
        // a float sum that overflows is stored and read back
        for _ in 0..2 {
            let mut b = SpeedBatch::default();
            b.unpartitioned()
                .deltas
                .insert(key("f", 0), vec![State::Sum(Num::Float(f64::MAX))]);
            store.commit(b).await.unwrap();
        }
        assert_eq!(
            store.read("f", 0, 60_000).await.unwrap()[0].states,
            vec![State::Sum(Num::Overflow)]
        );
        // garbage where a state should be: set aside, the bucket starts again
        store
            .write("test", |tx| {
                let mut t = tx.open_table(VIEWS).unwrap();
                t.insert(
                    ("g", 0, dims_key(&key("g", 0).dims).as_str()),
                    b"{not json".as_slice(),
                )
                .unwrap();
                Ok(())
            })
            .unwrap();
        assert!(store.read("g", 0, 60_000).await.unwrap().is_empty());
        let mut b = SpeedBatch::default();
        b.unpartitioned()
            .deltas
            .insert(key("g", 0), vec![State::Count(4)]);
        store.commit(b).await.unwrap();
        assert_eq!(
            store.read("g", 0, 60_000).await.unwrap()[0].states,
            vec![State::Count(4)]
        );
        assert_eq!(store.stats().await.unwrap().corrupt, 1);
    }
}
