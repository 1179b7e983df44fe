//! `views/<view>`: the batch layer's output, partitioned by bucket date (UTC). A recompute of
//! a bucket range replaces exactly those buckets in one Delta commit (remove the touched
//! partitions' files, add them rewritten), so readers see all of it or none of it.
//!
//! Columns: `bucket` (timestamp), `bucket_date` (partition), one string column per dimension,
//! one readable column per measure (for any Delta reader), and `_state`: the exact partial
//! states in the binary encoding of [`duet_config::codec`] (the same bytes as the speed
//! store's), which serving renders with the same algebra as the speed layer's states.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use deltalake::arrow::array::{Array, ArrayRef, AsArray};
use deltalake::arrow::datatypes::SchemaRef;
use deltalake::arrow::datatypes::{DataType, Field, Schema, TimestampMicrosecondType};
use deltalake::arrow::record_batch::RecordBatch;
use duet_config::{DimKey, MeasureKind, ViewDefinition, ViewMismatch, ViewSpec};
use serde_json::Value as J;
use url::Url;

use crate::arrow_util::{ActiveFile, active_files, read_files, timestamp_type};
use crate::commit::{self, TableLayout, writer_schema};
use crate::error::{Error, Result};
use crate::ledger::Interval;
use crate::watch::TableWatch;
use crate::{Lake, load_or_create, try_load};

/// View tables: a commit per recompute (up to one a minute per view), a checkpoint every 20;
/// log entries older than the last checkpoint go at once, so a load lists at most about 20
/// entries however old the table (no time travel on view tables).
const VIEW_LAYOUT: TableLayout = TableLayout {
    checkpoint_every: 20,
    log_retention: "interval 0 minutes",
};

/// Table property holding the definition the table was written under (JSON).
pub const DEFINITION_KEY: &str = "duet.view.definition";
/// Table property holding that definition's fingerprint.
pub const FINGERPRINT_KEY: &str = "duet.view.fingerprint";

/// The object store of a table URL and the table's path inside it.
fn object_store_for(
    url: &Url,
) -> Result<(
    deltalake::logstore::ObjectStoreRef,
    object_store::path::Path,
)> {
    let table = deltalake::DeltaTableBuilder::from_url(url.clone())
        .and_then(|b| b.build())
        .map_err(|source| Error::Delta {
            table: url.to_string(),
            source: Box::new(source),
        })?;
    Ok((table.object_store(), object_store::path::Path::from("")))
}

/// One row of a view (the type both layers share).
pub type ViewRow = duet_config::Row;

/// Column name of a dimension path (`deviceInfo.platform` → `deviceInfo_platform`).
pub fn dim_column(path: &str) -> String {
    path.replace('.', "_")
}

/// The readable column of a measure: ints as Int64, decimals as Decimal128(38, scale) (exact),
/// floats and averages as Float64, top-k as JSON text; `null` where the value overflowed.
fn measure_type(kind: &MeasureKind) -> DataType {
    use duet_config::NumType;
    match kind {
        MeasureKind::Count | MeasureKind::DistinctCount => DataType::Int64,
        MeasureKind::Sum(NumType::Int)
        | MeasureKind::Min(NumType::Int)
        | MeasureKind::Max(NumType::Int) => DataType::Int64,
        MeasureKind::Sum(NumType::Decimal(s))
        | MeasureKind::Min(NumType::Decimal(s))
        | MeasureKind::Max(NumType::Decimal(s)) => DataType::Decimal128(38, *s as i8),
        MeasureKind::TopK { .. } => DataType::Utf8,
        _ => DataType::Float64,
    }
}

/// The arrow schema of `views/<view>`.
pub fn view_schema(spec: &ViewSpec) -> Schema {
    let mut fields = vec![Field::new("bucket", timestamp_type(), false)];
    for d in &spec.dimensions {
        fields.push(Field::new(dim_column(d), DataType::Utf8, true));
    }
    for m in &spec.measures {
        fields.push(Field::new(&m.name, measure_type(&m.kind), true));
    }
    fields.push(Field::new("_state", DataType::Binary, false));
    fields.push(Field::new("bucket_date", DataType::Utf8, false));
    Schema::new(fields)
}

fn date_of(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .unwrap_or_default()
        .format("%Y-%m-%d")
        .to_string()
}

/// Every UTC date touched by `[from, to)`.
fn dates_in(from: i64, to: i64) -> BTreeSet<String> {
    let day = 86_400_000;
    let mut out = BTreeSet::new();
    let mut t = from - from.rem_euclid(day);
    while t < to {
        out.insert(date_of(t));
        t += day;
    }
    out
}

/// The active files of the `bucket_date` partitions in `dates`.
fn files_on_dates(
    table: &deltalake::DeltaTable,
    dates: &BTreeSet<String>,
) -> Result<Vec<ActiveFile>> {
    Ok(active_files(table)?
        .into_iter()
        .filter(|f| {
            f.partition("bucket_date")
                .is_some_and(|d| dates.contains(d))
        })
        .collect())
}

/// Cached rows of one `bucket_date` partition: valid while the partition has these files.
#[derive(Debug)]
struct CachedDate {
    files: Vec<object_store::path::Path>,
    rows: Arc<Vec<ViewRow>>,
    used: u64,
}

/// Most `bucket_date` partitions a [`ViewReader`] keeps in memory.
pub const CACHED_DATES: usize = 64;

/// A reader of a view table for serving: it follows the table's versions (one metadata request
/// per read while nothing moved), keeps the rows of the last [`CACHED_DATES`] partitions read,
/// and re-reads a partition only when its files changed. One read sees one version.
#[derive(Debug)]
pub struct ViewReader {
    table: ViewTable,
    watch: TableWatch,
    dates: HashMap<String, CachedDate>,
    counts: CacheCounts,
}

/// How often a cache answered from memory and how often it read the lake.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheCounts {
    /// Reads answered from memory.
    pub hits: u64,
    /// Reads that went to the lake's files.
    pub misses: u64,
}

impl std::ops::AddAssign for CacheCounts {
    fn add_assign(&mut self, other: CacheCounts) {
        self.hits += other.hits;
        self.misses += other.misses;
    }
}

impl ViewReader {
    /// Partitions read from memory and from the lake so far.
    pub fn counts(&self) -> CacheCounts {
        self.counts
    }

    /// The rows with a bucket in `[from, to)` at the table's latest version, and that version
    /// (`None` when the view has never been computed).
    pub async fn read_range(&mut self, from: i64, to: i64) -> Result<(Option<i64>, Vec<ViewRow>)> {
        self.watch.refresh().await?;
        let Some(table) = self.watch.table() else {
            return Ok((None, Vec::new()));
        };
        let dates = dates_in(from, to);
        let mut by_date: BTreeMap<String, Vec<object_store::path::Path>> =
            dates.iter().map(|d| (d.clone(), Vec::new())).collect();
        for f in files_on_dates(table, &dates)? {
            if let Some(files) = f.partition("bucket_date").and_then(|d| by_date.get_mut(d)) {
                files.push(f.path);
            }
        }
        let tick = self.dates.values().map(|c| c.used).max().unwrap_or(0) + 1;
        let mut rows = Vec::new();
        for (date, mut files) in by_date {
            files.sort();
            let cached = match self.dates.get_mut(&date) {
                Some(c) if c.files == files => {
                    c.used = tick;
                    self.counts.hits += 1;
                    c.rows.clone()
                }
                _ => {
                    self.counts.misses += 1;
                    let fresh = Arc::new(self.table.decode(read_files(table, &files).await?)?);
                    self.dates.insert(
                        date,
                        CachedDate {
                            files,
                            rows: fresh.clone(),
                            used: tick,
                        },
                    );
                    fresh
                }
            };
            rows.extend(
                cached
                    .iter()
                    .filter(|r| r.bucket >= from && r.bucket < to)
                    .cloned(),
            );
        }
        while self.dates.len() > CACHED_DATES {
            let Some(oldest) = self
                .dates
                .iter()
                .min_by_key(|(_, c)| c.used)
                .map(|(d, _)| d.clone())
            else {
                break;
            };
            self.dates.remove(&oldest);
        }
        rows.sort_by(|a, b| (a.bucket, &a.dims).cmp(&(b.bucket, &b.dims)));
        Ok((table.version().map(|v| v as i64), rows))
    }
}

/// The batch table of one view.
#[derive(Debug, Clone)]
pub struct ViewTable {
    spec: ViewSpec,
    url: Url,
}

impl ViewTable {
    /// The table of `spec` in `lake`.
    pub fn new(lake: &Lake, spec: &ViewSpec) -> ViewTable {
        ViewTable {
            spec: spec.clone(),
            url: lake.view_table_url(&spec.name),
        }
    }

    /// The table URL.
    pub fn url(&self) -> &Url {
        &self.url
    }

    /// The rows as one record batch of the table's writer schema: readable columns from the
    /// rendered values, `_state` as the binary encoding ([`duet_config::codec`]).
    fn to_batch(&self, schema: SchemaRef, rows: &[&ViewRow]) -> Result<RecordBatch> {
        use deltalake::arrow::array::{
            BinaryArray, Decimal128Array, Float64Array, Int64Array, StringArray,
            TimestampMicrosecondArray,
        };
        let print = self.spec.definition().fingerprint_u64();
        let rendered: Vec<serde_json::Map<String, J>> =
            rows.iter().map(|r| self.spec.render(&r.states)).collect();
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
        for field in schema.fields() {
            let name = field.name().as_str();
            let col: ArrayRef = match name {
                "bucket" => Arc::new(
                    TimestampMicrosecondArray::from(
                        rows.iter().map(|r| r.bucket * 1000).collect::<Vec<_>>(),
                    )
                    .with_timezone("UTC"),
                ),
                "bucket_date" => Arc::new(StringArray::from(
                    rows.iter().map(|r| date_of(r.bucket)).collect::<Vec<_>>(),
                )),
                "_state" => Arc::new(BinaryArray::from_iter_values(
                    rows.iter()
                        .map(|r| duet_config::codec::encode(print, &r.states)),
                )),
                _ => {
                    if let Some(i) = self
                        .spec
                        .dimensions
                        .iter()
                        .position(|d| dim_column(d) == name)
                    {
                        Arc::new(StringArray::from(
                            rows.iter().map(|r| r.dims[i].clone()).collect::<Vec<_>>(),
                        ))
                    } else {
                        let values = rendered.iter().map(|m| m.get(name).unwrap_or(&J::Null));
                        match field.data_type() {
                            DataType::Int64 => Arc::new(Int64Array::from(
                                values.map(J::as_i64).collect::<Vec<_>>(),
                            )),
                            DataType::Float64 => Arc::new(Float64Array::from(
                                values.map(J::as_f64).collect::<Vec<_>>(),
                            )),
                            DataType::Decimal128(p, sc) => Arc::new(
                                Decimal128Array::from(
                                    values
                                        .map(|v| {
                                            v.as_str().and_then(|t| {
                                                duet_config::types::parse_decimal(t, *sc as u8)
                                            })
                                        })
                                        .collect::<Vec<_>>(),
                                )
                                .with_precision_and_scale(*p, *sc)
                                .map_err(|source| {
                                    Error::Arrow {
                                        table: self.url.to_string(),
                                        source,
                                    }
                                })?,
                            ),
                            _ => Arc::new(StringArray::from(
                                values
                                    .map(|v| (!v.is_null()).then(|| v.to_string()))
                                    .collect::<Vec<_>>(),
                            )),
                        }
                    }
                }
            };
            columns.push(col);
        }
        RecordBatch::try_new(schema, columns).map_err(|source| Error::Arrow {
            table: self.url.to_string(),
            source,
        })
    }

    /// Replaces the buckets in `ranges` with `rows` (all of which must lie in them) in one
    /// Delta commit. Returns the new table version. When another recompute committed to the
    /// same dates first, the rows outside the ranges are read again from the new version and
    /// the commit is retried.
    pub async fn replace_ranges(&self, ranges: &[Interval], rows: &[ViewRow]) -> Result<i64> {
        let definition = self.spec.definition();
        let properties = [
            (
                DEFINITION_KEY,
                serde_json::to_string(&definition).unwrap_or_default(),
            ),
            (FINGERPRINT_KEY, definition.fingerprint()),
        ];
        let mut table = load_or_create(
            &self.url,
            &view_schema(&self.spec),
            &["bucket_date"],
            VIEW_LAYOUT,
            &properties,
        )
        .await?;
        if let Some(m) = self.mismatch(&table)? {
            return Err(Error::ViewChanged(m));
        }
        let mut attempt = 0;
        loop {
            match self.try_replace(&mut table, ranges, rows).await {
                Err(Error::Conflict { .. }) if attempt < 5 => {
                    attempt += 1;
                    table
                        .update_incremental(None)
                        .await
                        .map_err(commit::delta_err(&table))?;
                }
                other => return other,
            }
        }
    }

    async fn try_replace(
        &self,
        table: &mut deltalake::DeltaTable,
        ranges: &[Interval],
        rows: &[ViewRow],
    ) -> Result<i64> {
        let dates: BTreeSet<String> = ranges.iter().flat_map(|r| dates_in(r.from, r.to)).collect();
        let touched = files_on_dates(table, &dates)?;
        let paths: Vec<_> = touched.iter().map(|f| f.path.clone()).collect();
        let kept: Vec<ViewRow> = self
            .decode(read_files(table, &paths).await?)?
            .into_iter()
            .filter(|r| !ranges.iter().any(|i| r.bucket >= i.from && r.bucket < i.to))
            .collect();
        let all: Vec<&ViewRow> = kept.iter().chain(rows).collect();
        let batches = if all.is_empty() {
            Vec::new()
        } else {
            vec![self.to_batch(writer_schema(table)?, &all)?]
        };
        let predicate = ranges
            .iter()
            .map(|r| format!("(bucket >= {}ms AND bucket < {}ms)", r.from, r.to))
            .collect::<Vec<_>>()
            .join(" OR ");
        commit::replace(table, touched, batches, Some(predicate)).await
    }

    /// The rows with a bucket in `[from, to)` at the latest version, and that version
    /// (`None` when the view has never been computed).
    pub async fn read_range(&self, from: i64, to: i64) -> Result<(Option<i64>, Vec<ViewRow>)> {
        let Some(table) = try_load(&self.url).await? else {
            return Ok((None, Vec::new()));
        };
        let dates = dates_in(from, to);
        let paths: Vec<_> = files_on_dates(&table, &dates)?
            .into_iter()
            .map(|f| f.path)
            .collect();
        let mut rows: Vec<ViewRow> = self
            .decode(read_files(&table, &paths).await?)?
            .into_iter()
            .filter(|r| r.bucket >= from && r.bucket < to)
            .collect();
        rows.sort_by(|a, b| (a.bucket, &a.dims).cmp(&(b.bucket, &b.dims)));
        Ok((table.version().map(|v| v as i64), rows))
    }

    fn mismatch(&self, table: &deltalake::DeltaTable) -> Result<Option<ViewMismatch>> {
        let snapshot = table.snapshot().map_err(crate::commit::delta_err(table))?;
        let config = snapshot.metadata().configuration();
        let now = self.spec.definition();
        let changes = match config.get(DEFINITION_KEY) {
            None => vec![
                "its table was written by an earlier Duet that recorded no definition".to_string(),
            ],
            Some(text) => match serde_json::from_str::<ViewDefinition>(text) {
                Ok(was) => was.changes(&now),
                Err(e) => vec![format!("its recorded definition is unreadable ({e})")],
            },
        };
        Ok((!changes.is_empty()).then(|| ViewMismatch {
            view: self.spec.name.clone(),
            changes,
        }))
    }

    /// Whether the table (if it exists) was written under the view's current definition;
    /// `Some` names what changed.
    pub async fn check_definition(&self) -> Result<Option<ViewMismatch>> {
        match try_load(&self.url).await? {
            Some(table) => self.mismatch(&table),
            None => Ok(None),
        }
    }

    /// Deletes the table: every object under its folder.
    pub async fn delete(&self) -> Result<()> {
        use futures::TryStreamExt;
        use object_store::{ObjectStore as _, ObjectStoreExt as _};
        let (store, prefix) = object_store_for(&self.url)?;
        let paths: Vec<object_store::path::Path> = store
            .list(Some(&prefix))
            .map_ok(|m| m.location)
            .try_collect()
            .await
            .map_err(|source| Error::ObjectStore {
                path: self.url.to_string(),
                source,
            })?;
        for p in paths {
            store
                .delete(&p)
                .await
                .map_err(|source| Error::ObjectStore {
                    path: p.to_string(),
                    source,
                })?;
        }
        Ok(())
    }

    /// The `_state` bytes of the rows with a bucket in `[from, to)` at the latest version, by
    /// bucket and dimensions (the encoding of [`duet_config::codec`], as the speed store's).
    pub async fn read_encoded(&self, from: i64, to: i64) -> Result<Vec<(i64, DimKey, Vec<u8>)>> {
        let Some(table) = try_load(&self.url).await? else {
            return Ok(Vec::new());
        };
        let paths: Vec<_> = files_on_dates(&table, &dates_in(from, to))?
            .into_iter()
            .map(|f| f.path)
            .collect();
        let mut out: Vec<_> = self
            .encoded_rows(read_files(&table, &paths).await?)?
            .into_iter()
            .filter(|(t, _, _)| *t >= from && *t < to)
            .collect();
        out.sort();
        Ok(out)
    }

    /// A reader of this table that caches each `bucket_date` partition's rows by the files
    /// holding them (see [`ViewReader`]).
    pub fn reader(&self) -> ViewReader {
        ViewReader {
            table: self.clone(),
            watch: TableWatch::new(self.url.clone()),
            dates: HashMap::new(),
            counts: CacheCounts::default(),
        }
    }

    fn decode(
        &self,
        batches: Vec<deltalake::arrow::record_batch::RecordBatch>,
    ) -> Result<Vec<ViewRow>> {
        let print = self.spec.definition().fingerprint_u64();
        self.encoded_rows(batches)?
            .into_iter()
            .map(|(bucket, dims, bytes)| {
                let states =
                    duet_config::codec::decode(print, &bytes).map_err(|e| Error::State {
                        view: self.spec.name.clone(),
                        message: e.to_string(),
                    })?;
                Ok(ViewRow {
                    bucket,
                    dims,
                    states,
                })
            })
            .collect()
    }

    /// Each row of `batches` as its bucket, dimension values and `_state` bytes.
    fn encoded_rows(
        &self,
        batches: Vec<deltalake::arrow::record_batch::RecordBatch>,
    ) -> Result<Vec<(i64, DimKey, Vec<u8>)>> {
        let bad = |message: String| Error::State {
            view: self.spec.name.clone(),
            message,
        };
        let mut out = Vec::new();
        for b in batches {
            let col = |name: &str| {
                b.column_by_name(name)
                    .ok_or_else(|| bad(format!("column `{name}` is missing")))
            };
            let bucket = col("bucket")?
                .as_primitive_opt::<TimestampMicrosecondType>()
                .ok_or_else(|| bad("`bucket` is not a timestamp".into()))?
                .clone();
            let state = col("_state")?
                .as_binary_opt::<i32>()
                .ok_or_else(|| bad("`_state` is not binary".into()))?
                .clone();
            let mut dims = Vec::new();
            for d in &self.spec.dimensions {
                dims.push(
                    col(&dim_column(d))?
                        .as_string_opt::<i32>()
                        .ok_or_else(|| bad(format!("`{d}` is not text")))?
                        .clone(),
                );
            }
            for i in 0..b.num_rows() {
                let key: DimKey = dims
                    .iter()
                    .map(|c| (!c.is_null(i)).then(|| c.value(i).to_string()))
                    .collect();
                out.push((bucket.value(i) / 1000, key, state.value(i).to_vec()));
            }
        }
        Ok(out)
    }
}
