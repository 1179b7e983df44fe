//! A query's rows as one table: an Arrow record batch with the bucket, the grouped
//! dimensions, the measures, `_source` and `_batch_version`. The CSV and Arrow IPC answers are
//! written from it with Arrow's own writers.
//!
//! Column types: `bucket` is a UTC timestamp in ms; dimensions are text; a count or distinct
//! count is a 64-bit integer; a sum, minimum or maximum has its field's type (integer, float,
//! or a decimal of 38 digits at the field's scale); a mean is a float; a top-k is its JSON
//! text (`[{"key":…,"value":…}]`). A value that cannot be shown (an overflowed sum) is null.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BinaryBuilder, Decimal128Builder, Float64Builder, Int64Builder, RecordBatch,
    StringBuilder, TimestampMillisecondBuilder,
};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use duet_config::measure::MeasureKind;
use duet_config::{Num, NumType, State, ViewSpec};

use crate::error::{Error, Result};
use crate::rollup::RolledRow;

/// The name of the column that says where a row came from (`batch`, `speed` or `mixed`).
pub const SOURCE_COLUMN: &str = "_source";
/// The name of the column with the batch table version a row's sealed buckets were read at.
pub const BATCH_VERSION_COLUMN: &str = "_batch_version";

/// The Arrow type of a measure's column.
pub fn measure_type(kind: &MeasureKind) -> DataType {
    match kind {
        MeasureKind::Count | MeasureKind::DistinctCount => DataType::Int64,
        MeasureKind::Sum(t) | MeasureKind::Min(t) | MeasureKind::Max(t) => num_type(*t),
        MeasureKind::Avg(_) => DataType::Float64,
        MeasureKind::TopK { .. } => DataType::Utf8,
    }
}

fn num_type(t: NumType) -> DataType {
    match t {
        NumType::Int => DataType::Int64,
        NumType::Float => DataType::Float64,
        NumType::Decimal(s) => DataType::Decimal128(38, i8::try_from(s).unwrap_or(i8::MAX)),
    }
}

/// The fingerprint a state column's bytes carry: the view's, mixed with the measure's
/// position (FNV-1a), so that a state names its measure.
pub fn measure_fingerprint(view_fingerprint: u64, measure: usize) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in view_fingerprint
        .to_le_bytes()
        .into_iter()
        .chain((measure as u64).to_le_bytes())
    {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The name of the column holding a measure's binary state (SQL tables only).
pub fn state_column(measure: &str) -> String {
    format!("{measure}_state")
}

/// The table's schema for `view` with the grouped dimensions `dims`; with `states`, each
/// measure's binary state follows as `<measure>_state`; `metadata` is attached (provenance,
/// in the Arrow answer).
pub fn schema(
    view: &ViewSpec,
    dims: &[&str],
    states: bool,
    metadata: HashMap<String, String>,
) -> Schema {
    let mut fields = vec![Field::new(
        "bucket",
        DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
        false,
    )];
    fields.extend(dims.iter().map(|d| Field::new(*d, DataType::Utf8, true)));
    fields.extend(
        view.measures
            .iter()
            .map(|m| Field::new(&m.name, measure_type(&m.kind), true)),
    );
    fields.push(Field::new(SOURCE_COLUMN, DataType::Utf8, false));
    fields.push(Field::new(BATCH_VERSION_COLUMN, DataType::Int64, true));
    if states {
        fields.extend(
            view.measures
                .iter()
                .map(|m| Field::new(state_column(&m.name), DataType::Binary, false)),
        );
    }
    Schema::new_with_metadata(fields, metadata)
}

fn encode_error(format: &'static str) -> impl FnOnce(arrow::error::ArrowError) -> Error {
    move |source| Error::Encode { format, source }
}

/// One measure's column over `rows`.
fn measure_column(kind: &MeasureKind, i: usize, rows: &[RolledRow]) -> Result<ArrayRef> {
    let state = |r: &RolledRow| r.states.get(i).cloned();
    let num = |n: Num| (!n.out_of_range()).then_some(n);
    Ok(match measure_type(kind) {
        DataType::Int64 => {
            let mut b = Int64Builder::with_capacity(rows.len());
            for r in rows {
                b.append_option(match state(r) {
                    Some(State::Count(c)) => Some(c),
                    Some(State::Distinct(d)) => i64::try_from(d.estimate()).ok(),
                    Some(State::Sum(n)) | Some(State::Min(Some(n))) | Some(State::Max(Some(n))) => {
                        match num(n) {
                            Some(Num::Int(v)) => Some(v),
                            _ => None,
                        }
                    }
                    _ => None,
                });
            }
            Arc::new(b.finish())
        }
        DataType::Float64 => {
            let mut b = Float64Builder::with_capacity(rows.len());
            for r in rows {
                let v = match (kind, state(r)) {
                    (MeasureKind::Avg(_), Some(st)) => kind.render(&st).as_f64(),
                    (_, Some(State::Sum(n)))
                    | (_, Some(State::Min(Some(n))))
                    | (_, Some(State::Max(Some(n)))) => match num(n) {
                        Some(Num::Float(f)) => Some(f),
                        _ => None,
                    },
                    _ => None,
                };
                b.append_option(v);
            }
            Arc::new(b.finish())
        }
        DataType::Decimal128(p, s) => {
            let mut b = Decimal128Builder::with_capacity(rows.len())
                .with_precision_and_scale(p, s)
                .map_err(encode_error("arrow"))?;
            for r in rows {
                b.append_option(match state(r) {
                    Some(State::Sum(n)) | Some(State::Min(Some(n))) | Some(State::Max(Some(n))) => {
                        match num(n) {
                            Some(Num::Dec(d)) => Some(d),
                            _ => None,
                        }
                    }
                    _ => None,
                });
            }
            Arc::new(b.finish())
        }
        _ => {
            let mut b = StringBuilder::with_capacity(rows.len(), rows.len() * 32);
            for r in rows {
                let text = state(r).and_then(|st| {
                    kind.problem(&st)
                        .is_none()
                        .then(|| kind.render(&st).to_string())
                });
                b.append_option(text);
            }
            Arc::new(b.finish())
        }
    })
}

/// `rows` as one record batch of [`schema`]; `batch_version` is set on rows with sealed
/// buckets. With `states`, each measure's state is encoded with the one binary state encoding
/// (`duet_config::codec`: a row of one state, under [`measure_fingerprint`] in place of the
/// view's fingerprint, so that the SQL functions that merge states know the measure's type).
pub fn record_batch(
    view: &ViewSpec,
    dims: &[&str],
    rows: &[RolledRow],
    batch_version: Option<i64>,
    states: bool,
    metadata: HashMap<String, String>,
) -> Result<RecordBatch> {
    let schema = Arc::new(schema(view, dims, states, metadata));
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
    let mut bucket = TimestampMillisecondBuilder::with_capacity(rows.len()).with_timezone("UTC");
    for r in rows {
        bucket.append_value(r.bucket);
    }
    columns.push(Arc::new(bucket.finish()));
    for d in 0..dims.len() {
        let mut b = StringBuilder::with_capacity(rows.len(), rows.len() * 8);
        for r in rows {
            b.append_option(r.dims.get(d).cloned().flatten());
        }
        columns.push(Arc::new(b.finish()));
    }
    for (i, m) in view.measures.iter().enumerate() {
        columns.push(measure_column(&m.kind, i, rows)?);
    }
    let mut source = StringBuilder::with_capacity(rows.len(), rows.len() * 5);
    let mut version = Int64Builder::with_capacity(rows.len());
    for r in rows {
        source.append_value(r.source());
        version.append_option(batch_version.filter(|_| r.batch_rows > 0));
    }
    columns.push(Arc::new(source.finish()));
    columns.push(Arc::new(version.finish()));
    if states {
        let fingerprint = view.definition().fingerprint_u64();
        for i in 0..view.measures.len() {
            let fingerprint = measure_fingerprint(fingerprint, i);
            let mut b = BinaryBuilder::with_capacity(rows.len(), rows.len() * 16);
            for r in rows {
                let state = r.states.get(i).cloned().into_iter().collect::<Vec<_>>();
                b.append_value(duet_config::codec::encode(fingerprint, &state));
            }
            columns.push(Arc::new(b.finish()));
        }
    }
    RecordBatch::try_new(schema, columns).map_err(encode_error("arrow"))
}

/// The batch as CSV with a header row.
pub fn csv(batch: &RecordBatch) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    {
        let mut w = arrow::csv::WriterBuilder::new()
            .with_header(true)
            .build(&mut out);
        w.write(batch).map_err(encode_error("csv"))?;
    }
    Ok(out)
}

/// The batch as an Arrow IPC stream (schema, with its metadata, then the batch).
pub fn arrow_stream(batch: &RecordBatch) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    {
        let mut w = arrow::ipc::writer::StreamWriter::try_new(&mut out, &batch.schema())
            .map_err(encode_error("arrow"))?;
        w.write(batch).map_err(encode_error("arrow"))?;
        w.finish().map_err(encode_error("arrow"))?;
    }
    Ok(out)
}
