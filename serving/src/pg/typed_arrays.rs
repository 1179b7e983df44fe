//! `pg_catalog` with `pg_constraint`'s array columns typed as arrays.
//!
//! The `pg_catalog` emulation of `datafusion-postgres` keeps `pg_constraint.conkey` (the
//! constrained columns, `int2[]` in PostgreSQL) and its sibling array columns as text
//! (`"[1, 2]"`), so `attnum = ANY(c.conkey)` — which Metabase's foreign-key sync and pgjdbc's
//! key queries send — fails to plan. [`TypedArrays`] serves the same schema with those columns
//! as lists of integers; every other table passes through unchanged.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{
    ArrayRef, AsArray, ListBuilder, PrimitiveBuilder, RecordBatch, StringArray,
};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{
    ArrowPrimitiveType, DataType, Field, Int16Type, Int32Type, Schema,
};
use datafusion::catalog::{MemTable, SchemaProvider, TableProvider};
use datafusion::common::{DataFusionError, Result};
use datafusion::physical_plan::collect;
use datafusion::prelude::SessionContext;
use tokio::sync::OnceCell;

/// The array columns of `pg_constraint` and their element type.
const ARRAYS: &[(&str, DataType)] = &[
    ("conkey", DataType::Int16),
    ("confkey", DataType::Int16),
    ("confdelsetcols", DataType::Int16),
    ("conpfeqop", DataType::Int32),
    ("conppeqop", DataType::Int32),
    ("conffeqop", DataType::Int32),
    ("conexclop", DataType::Int32),
];

/// `pg_catalog` with `pg_constraint`'s array columns as lists (read once, on first use).
#[derive(Debug)]
pub struct TypedArrays {
    inner: Arc<dyn SchemaProvider>,
    constraints: OnceCell<Arc<dyn TableProvider>>,
}

impl TypedArrays {
    /// `inner`: the emulation's `pg_catalog`.
    pub fn new(inner: Arc<dyn SchemaProvider>) -> Self {
        TypedArrays {
            inner,
            constraints: OnceCell::new(),
        }
    }

    async fn typed_constraints(&self) -> Result<Option<Arc<dyn TableProvider>>> {
        let Some(table) = self.inner.table("pg_constraint").await? else {
            return Ok(None);
        };
        let typed =
            self.constraints
                .get_or_try_init(|| async {
                    // the emulation's pg_constraint is a table of fixed rows: any session reads it
                    let ctx = SessionContext::new();
                    let plan = table.scan(&ctx.state(), None, &[], None).await?;
                    let batches = collect(plan, ctx.task_ctx()).await?;
                    let schema = typed_schema(&table.schema());
                    let batches = batches
                        .iter()
                        .map(|b| typed_batch(b, &schema))
                        .collect::<Result<Vec<_>>>()?;
                    Ok::<_, DataFusionError>(Arc::new(MemTable::try_new(schema, vec![batches])?)
                        as Arc<dyn TableProvider>)
                })
                .await?;
        Ok(Some(typed.clone()))
    }
}

fn element_of(name: &str) -> Option<&'static DataType> {
    ARRAYS.iter().find(|(n, _)| *n == name).map(|(_, t)| t)
}

fn list_of(t: &DataType) -> DataType {
    DataType::List(Arc::new(Field::new("item", t.clone(), true)))
}

fn typed_schema(schema: &Schema) -> Arc<Schema> {
    Arc::new(Schema::new(
        schema
            .fields()
            .iter()
            .map(|f| match element_of(f.name()) {
                Some(t) => Field::new(f.name(), list_of(t), true),
                None => f.as_ref().clone(),
            })
            .collect::<Vec<_>>(),
    ))
}

fn typed_batch(batch: &RecordBatch, schema: &Arc<Schema>) -> Result<RecordBatch> {
    let arrow = DataFusionError::from;
    let mut columns = Vec::with_capacity(batch.num_columns());
    for (field, column) in batch.schema().fields().iter().zip(batch.columns()) {
        let Some(element) = element_of(field.name()) else {
            columns.push(column.clone());
            continue;
        };
        let text = cast(column, &DataType::Utf8).map_err(arrow)?;
        columns.push(parse_lists(text.as_string::<i32>(), element));
    }
    RecordBatch::try_new(schema.clone(), columns).map_err(arrow)
}

/// Integer arrays written as text (`[1, 2]`, `{1,2}`, `1 2`) as lists of `element` (`Int16`,
/// else `Int32`); an empty text or NULL is NULL, an element that is not such an integer is a
/// NULL element.
pub fn parse_lists(text: &StringArray, element: &DataType) -> ArrayRef {
    if element == &DataType::Int16 {
        lists::<Int16Type>(text)
    } else {
        lists::<Int32Type>(text)
    }
}

fn lists<T: ArrowPrimitiveType>(text: &StringArray) -> ArrayRef
where
    T::Native: TryFrom<i64>,
{
    let mut b = ListBuilder::new(PrimitiveBuilder::<T>::new());
    for s in text.iter() {
        match s.filter(|s| !s.trim().is_empty()) {
            Some(s) => {
                let items = s
                    .trim_matches(|c| matches!(c, '[' | ']' | '{' | '}'))
                    .split(|c: char| c == ',' || c.is_whitespace())
                    .filter(|p| !p.is_empty());
                for p in items {
                    let v = p.parse::<i64>().ok();
                    b.values()
                        .append_option(v.and_then(|v| T::Native::try_from(v).ok()));
                }
                b.append(true);
            }
            None => b.append_null(),
        }
    }
    Arc::new(b.finish())
}

#[async_trait]
impl SchemaProvider for TypedArrays {
    fn table_names(&self) -> Vec<String> {
        self.inner.table_names()
    }

    async fn table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        if name.eq_ignore_ascii_case("pg_constraint") {
            return self.typed_constraints().await;
        }
        self.inner.table(name).await
    }

    fn table_exist(&self, name: &str) -> bool {
        self.inner.table_exist(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::Array;

    #[test]
    fn text_arrays_become_lists() {
        let text = StringArray::from(vec![
            Some("[1, 20, 3]"),
            Some("{4,5}"),
            Some("6 7"),
            Some(""),
            None,
        ]);
        let lists = parse_lists(&text, &DataType::Int16);
        let lists = lists.as_list::<i32>();
        let row =
            |i: usize| -> Vec<i16> { lists.value(i).as_primitive::<Int16Type>().values().to_vec() };
        assert_eq!(row(0), [1, 20, 3]);
        assert_eq!(row(1), [4, 5]);
        assert_eq!(row(2), [6, 7]);
        assert!(lists.is_null(3) && lists.is_null(4));
    }
}
