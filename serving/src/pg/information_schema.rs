//! A PostgreSQL-shaped `information_schema`, in place of DataFusion's own.
//!
//! DataFusion's information schema names Arrow types (`Timestamp(ms, "UTC")`, `Utf8`) and has
//! neither the columns BI tools select from PostgreSQL's (`udt_name`, `is_identity`,
//! `is_generated`) nor the constraint tables. Metabase's field sync selects all of them, and
//! Grafana reads `data_type` to find a panel's time column. This schema answers with
//! PostgreSQL's type names and column sets, computed at each scan from what the catalog holds
//! then: every schema (`public` with the views, `pg_catalog`, this one) and its tables.
//!
//! Duet's views declare no keys (a view's rows are unique per bucket and dimensions, but a BI
//! tool that sees a composite key takes the bucket for an entity id), so `table_constraints` and
//! `key_column_usage` are empty. Every view is read-only: `is_insertable_into` and
//! `is_updatable` are `NO`.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{ArrayRef, Int32Builder, RecordBatch, StringBuilder};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::catalog::{CatalogProviderList, MemTable, SchemaProvider, Session, TableProvider};
use datafusion::common::{DataFusionError, Result};
use datafusion::datasource::TableType;
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::ExecutionPlan;

/// The schema's name.
pub const NAME: &str = "information_schema";

/// The tables of the schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Schemata,
    Tables,
    Views,
    Columns,
    TableConstraints,
    KeyColumnUsage,
}

const KINDS: [(&str, Kind); 6] = [
    ("schemata", Kind::Schemata),
    ("tables", Kind::Tables),
    ("views", Kind::Views),
    ("columns", Kind::Columns),
    ("table_constraints", Kind::TableConstraints),
    ("key_column_usage", Kind::KeyColumnUsage),
];

/// Column name and whether it is an integer (`cardinal_number`); every other column is text.
fn columns_of(kind: Kind) -> &'static [(&'static str, bool)] {
    match kind {
        Kind::Schemata => &[
            ("catalog_name", false),
            ("schema_name", false),
            ("schema_owner", false),
            ("default_character_set_catalog", false),
            ("default_character_set_schema", false),
            ("default_character_set_name", false),
            ("sql_path", false),
        ],
        Kind::Tables => &[
            ("table_catalog", false),
            ("table_schema", false),
            ("table_name", false),
            ("table_type", false),
            ("self_referencing_column_name", false),
            ("reference_generation", false),
            ("user_defined_type_catalog", false),
            ("user_defined_type_schema", false),
            ("user_defined_type_name", false),
            ("is_insertable_into", false),
            ("is_typed", false),
            ("commit_action", false),
        ],
        Kind::Views => &[
            ("table_catalog", false),
            ("table_schema", false),
            ("table_name", false),
            ("view_definition", false),
            ("check_option", false),
            ("is_updatable", false),
            ("is_insertable_into", false),
            ("is_trigger_updatable", false),
            ("is_trigger_deletable", false),
            ("is_trigger_insertable_into", false),
        ],
        Kind::Columns => &[
            ("table_catalog", false),
            ("table_schema", false),
            ("table_name", false),
            ("column_name", false),
            ("ordinal_position", true),
            ("column_default", false),
            ("is_nullable", false),
            ("data_type", false),
            ("character_maximum_length", true),
            ("character_octet_length", true),
            ("numeric_precision", true),
            ("numeric_precision_radix", true),
            ("numeric_scale", true),
            ("datetime_precision", true),
            ("interval_type", false),
            ("interval_precision", true),
            ("udt_catalog", false),
            ("udt_schema", false),
            ("udt_name", false),
            ("dtd_identifier", false),
            ("is_self_referencing", false),
            ("is_identity", false),
            ("identity_generation", false),
            ("is_generated", false),
            ("generation_expression", false),
            ("is_updatable", false),
        ],
        Kind::TableConstraints => &[
            ("constraint_catalog", false),
            ("constraint_schema", false),
            ("constraint_name", false),
            ("table_catalog", false),
            ("table_schema", false),
            ("table_name", false),
            ("constraint_type", false),
            ("is_deferrable", false),
            ("initially_deferred", false),
            ("enforced", false),
            ("nulls_distinct", false),
        ],
        Kind::KeyColumnUsage => &[
            ("constraint_catalog", false),
            ("constraint_schema", false),
            ("constraint_name", false),
            ("table_catalog", false),
            ("table_schema", false),
            ("table_name", false),
            ("column_name", false),
            ("ordinal_position", true),
            ("position_in_unique_constraint", true),
        ],
    }
}

fn schema_of(kind: Kind) -> SchemaRef {
    Arc::new(Schema::new(
        columns_of(kind)
            .iter()
            .map(|(name, int)| {
                let t = if *int {
                    DataType::Int32
                } else {
                    DataType::Utf8
                };
                Field::new(*name, t, true)
            })
            .collect::<Vec<_>>(),
    ))
}

/// How PostgreSQL describes a column's type in `information_schema.columns`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgType {
    /// `data_type`: the SQL name (`timestamp with time zone`, `ARRAY`).
    pub data_type: String,
    /// `udt_name`: the type's name in `pg_type` (`timestamptz`, `_text`).
    pub udt_name: String,
    /// `numeric_precision`.
    pub numeric_precision: Option<i32>,
    /// `numeric_precision_radix`.
    pub numeric_precision_radix: Option<i32>,
    /// `numeric_scale`.
    pub numeric_scale: Option<i32>,
    /// `datetime_precision`: digits of fractional seconds.
    pub datetime_precision: Option<i32>,
}

impl PgType {
    fn named(data_type: &str, udt_name: &str) -> PgType {
        PgType {
            data_type: data_type.to_string(),
            udt_name: udt_name.to_string(),
            numeric_precision: None,
            numeric_precision_radix: None,
            numeric_scale: None,
            datetime_precision: None,
        }
    }

    fn numeric(data_type: &str, udt_name: &str, bits: i32, radix: i32, scale: i32) -> PgType {
        PgType {
            numeric_precision: Some(bits),
            numeric_precision_radix: Some(radix),
            numeric_scale: Some(scale),
            ..PgType::named(data_type, udt_name)
        }
    }

    fn temporal(data_type: &str, udt_name: &str, digits: i32) -> PgType {
        PgType {
            datetime_precision: Some(digits),
            ..PgType::named(data_type, udt_name)
        }
    }
}

/// Digits of fractional seconds a time unit keeps (PostgreSQL keeps at most 6).
fn digits(unit: &TimeUnit) -> i32 {
    match unit {
        TimeUnit::Second => 0,
        TimeUnit::Millisecond => 3,
        TimeUnit::Microsecond | TimeUnit::Nanosecond => 6,
    }
}

/// The PostgreSQL type an Arrow type is sent as (the same mapping `pg_catalog.pg_attribute`
/// and the wire protocol use): `Timestamp(ms, "UTC")` is `timestamp with time zone`,
/// `Decimal128(38, 2)` is `numeric(38, 2)`, `Utf8` is `text`, `Binary` is `bytea`.
pub fn pg_type(t: &DataType) -> PgType {
    match t {
        DataType::Boolean => PgType::named("boolean", "bool"),
        DataType::Int8 | DataType::Int16 | DataType::UInt8 => {
            PgType::numeric("smallint", "int2", 16, 2, 0)
        }
        DataType::Int32 | DataType::UInt16 => PgType::numeric("integer", "int4", 32, 2, 0),
        DataType::Int64 | DataType::UInt32 => PgType::numeric("bigint", "int8", 64, 2, 0),
        DataType::Float16 | DataType::Float32 => PgType::numeric("real", "float4", 24, 2, 0),
        DataType::Float64 => PgType::numeric("double precision", "float8", 53, 2, 0),
        DataType::Decimal32(p, s)
        | DataType::Decimal64(p, s)
        | DataType::Decimal128(p, s)
        | DataType::Decimal256(p, s) => {
            PgType::numeric("numeric", "numeric", i32::from(*p), 10, i32::from(*s))
        }
        DataType::UInt64 => PgType::numeric("numeric", "numeric", 20, 10, 0),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => PgType::named("text", "text"),
        DataType::Binary
        | DataType::LargeBinary
        | DataType::BinaryView
        | DataType::FixedSizeBinary(_) => PgType::named("bytea", "bytea"),
        DataType::Timestamp(unit, Some(_)) => {
            PgType::temporal("timestamp with time zone", "timestamptz", digits(unit))
        }
        DataType::Timestamp(unit, None) => {
            PgType::temporal("timestamp without time zone", "timestamp", digits(unit))
        }
        DataType::Date32 | DataType::Date64 => PgType::temporal("date", "date", 0),
        DataType::Time32(unit) | DataType::Time64(unit) => {
            PgType::temporal("time without time zone", "time", digits(unit))
        }
        DataType::Interval(_) | DataType::Duration(_) => {
            PgType::temporal("interval", "interval", 6)
        }
        DataType::List(f)
        | DataType::LargeList(f)
        | DataType::ListView(f)
        | DataType::LargeListView(f)
        | DataType::FixedSizeList(f, _) => PgType::named(
            "ARRAY",
            &format!(
                "_{}",
                pg_type(f.data_type()).udt_name.trim_start_matches('_')
            ),
        ),
        DataType::Dictionary(_, value) => pg_type(value),
        DataType::Null => PgType::named("text", "text"),
        _ => PgType::named("json", "json"),
    }
}

/// The `information_schema` of the catalogs in `catalogs`, as a schema to register under
/// [`NAME`] in each of them.
#[derive(Debug)]
pub struct InformationSchema {
    catalogs: Arc<dyn CatalogProviderList>,
}

impl InformationSchema {
    /// The schema describing `catalogs` (read again at every scan).
    pub fn new(catalogs: Arc<dyn CatalogProviderList>) -> InformationSchema {
        InformationSchema { catalogs }
    }
}

#[async_trait]
impl SchemaProvider for InformationSchema {
    fn table_names(&self) -> Vec<String> {
        KINDS.iter().map(|(n, _)| n.to_string()).collect()
    }

    async fn table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        Ok(KINDS
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, kind)| {
                Arc::new(InfoTable {
                    kind: *kind,
                    schema: schema_of(*kind),
                    catalogs: self.catalogs.clone(),
                }) as Arc<dyn TableProvider>
            }))
    }

    fn table_exist(&self, name: &str) -> bool {
        KINDS.iter().any(|(n, _)| n.eq_ignore_ascii_case(name))
    }
}

/// One table of the schema, its rows built at each scan.
#[derive(Debug)]
struct InfoTable {
    kind: Kind,
    schema: SchemaRef,
    catalogs: Arc<dyn CatalogProviderList>,
}

/// A table as the catalog holds it when a scan runs.
struct Described {
    catalog: String,
    schema: String,
    name: String,
    table_type: TableType,
    fields: SchemaRef,
}

impl InfoTable {
    /// Every schema of every catalog, ordered by catalog and schema: (catalog, schema, its
    /// provider).
    fn schemas(&self) -> Vec<(String, String, Arc<dyn SchemaProvider>)> {
        let mut out = Vec::new();
        for catalog_name in self.catalogs.catalog_names() {
            let Some(catalog) = self.catalogs.catalog(&catalog_name) else {
                continue;
            };
            for schema_name in catalog.schema_names() {
                if let Some(schema) = catalog.schema(&schema_name) {
                    out.push((catalog_name.clone(), schema_name, schema));
                }
            }
        }
        out.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        out
    }

    /// Every table of every catalog, ordered by catalog, schema and name.
    async fn described(&self) -> Result<Vec<Described>> {
        let mut out = Vec::new();
        for (catalog_name, schema_name, schema) in self.schemas() {
            let mut names = schema.table_names();
            names.sort();
            for name in names {
                // this schema's own tables are described without a catalog round trip
                let (table_type, fields) = if schema_name == NAME {
                    let kind = KINDS.iter().find(|(n, _)| *n == name).map(|(_, k)| *k);
                    match kind {
                        Some(k) => (TableType::View, schema_of(k)),
                        None => continue,
                    }
                } else {
                    match schema.table(&name).await? {
                        Some(t) => (t.table_type(), t.schema()),
                        None => continue,
                    }
                };
                out.push(Described {
                    catalog: catalog_name.clone(),
                    schema: schema_name.clone(),
                    name,
                    table_type,
                    fields,
                });
            }
        }
        Ok(out)
    }

    async fn batch(&self) -> Result<RecordBatch> {
        let width = self.schema.fields().len();
        let mut rows = Rows::new(columns_of(self.kind));
        match self.kind {
            Kind::Schemata => {
                for (c, schema, _) in self.schemas() {
                    rows.text(Some(&c))
                        .text(Some(&schema))
                        .text(Some("duet"))
                        .text(None)
                        .text(None)
                        .text(Some("UTF8"))
                        .text(None);
                }
            }
            Kind::Tables => {
                for t in self.described().await? {
                    let table_type = match t.table_type {
                        TableType::Base => "BASE TABLE",
                        TableType::View => "VIEW",
                        TableType::Temporary => "LOCAL TEMPORARY",
                    };
                    rows.text(Some(&t.catalog))
                        .text(Some(&t.schema))
                        .text(Some(&t.name))
                        .text(Some(table_type))
                        .text(None)
                        .text(None)
                        .text(None)
                        .text(None)
                        .text(None)
                        .text(Some("NO"))
                        .text(Some("NO"))
                        .text(None);
                }
            }
            Kind::Views => {
                for t in self.described().await? {
                    if t.table_type != TableType::View {
                        continue;
                    }
                    rows.text(Some(&t.catalog))
                        .text(Some(&t.schema))
                        .text(Some(&t.name))
                        .text(None)
                        .text(Some("NONE"))
                        .text(Some("NO"))
                        .text(Some("NO"))
                        .text(Some("NO"))
                        .text(Some("NO"))
                        .text(Some("NO"));
                }
            }
            Kind::Columns => {
                for t in self.described().await? {
                    for (i, f) in t.fields.fields().iter().enumerate() {
                        let ty = pg_type(f.data_type());
                        let position = i32::try_from(i + 1).unwrap_or(i32::MAX);
                        rows.text(Some(&t.catalog))
                            .text(Some(&t.schema))
                            .text(Some(&t.name))
                            .text(Some(f.name()))
                            .int(Some(position))
                            .text(None)
                            .text(Some(if f.is_nullable() { "YES" } else { "NO" }))
                            .text(Some(&ty.data_type))
                            .int(None)
                            .int(if ty.udt_name == "text" {
                                Some(1_073_741_824)
                            } else {
                                None
                            })
                            .int(ty.numeric_precision)
                            .int(ty.numeric_precision_radix)
                            .int(ty.numeric_scale)
                            .int(ty.datetime_precision)
                            .text(None)
                            .int(None)
                            .text(Some(&t.catalog))
                            .text(Some("pg_catalog"))
                            .text(Some(&ty.udt_name))
                            .text(Some(&position.to_string()))
                            .text(Some("NO"))
                            .text(Some("NO"))
                            .text(None)
                            .text(Some("NEVER"))
                            .text(None)
                            .text(Some("NO"));
                    }
                }
            }
            Kind::TableConstraints | Kind::KeyColumnUsage => {}
        }
        let columns = rows.finish();
        debug_assert_eq!(columns.len(), width);
        RecordBatch::try_new(self.schema.clone(), columns).map_err(DataFusionError::from)
    }
}

#[async_trait]
impl TableProvider for InfoTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::View
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let batch = self.batch().await?;
        MemTable::try_new(self.schema.clone(), vec![vec![batch]])?
            .scan(state, projection, filters, limit)
            .await
    }
}

/// Column builders of one table, filled a row at a time, column by column.
struct Rows {
    columns: Vec<Column>,
    next: usize,
}

enum Column {
    Text(StringBuilder),
    Int(Int32Builder),
}

impl Rows {
    fn new(columns: &[(&str, bool)]) -> Rows {
        Rows {
            columns: columns
                .iter()
                .map(|(_, int)| {
                    if *int {
                        Column::Int(Int32Builder::new())
                    } else {
                        Column::Text(StringBuilder::new())
                    }
                })
                .collect(),
            next: 0,
        }
    }

    fn advance(&mut self) -> &mut Column {
        let i = self.next;
        self.next = (self.next + 1) % self.columns.len();
        &mut self.columns[i]
    }

    fn text(&mut self, v: Option<&str>) -> &mut Rows {
        match self.advance() {
            Column::Text(b) => b.append_option(v),
            Column::Int(_) => unreachable!("a text value for an integer column"),
        }
        self
    }

    fn int(&mut self, v: Option<i32>) -> &mut Rows {
        match self.advance() {
            Column::Int(b) => b.append_option(v),
            Column::Text(_) => unreachable!("an integer value for a text column"),
        }
        self
    }

    fn finish(self) -> Vec<ArrayRef> {
        self.columns
            .into_iter()
            .map(|c| match c {
                Column::Text(mut b) => Arc::new(b.finish()) as ArrayRef,
                Column::Int(mut b) => Arc::new(b.finish()) as ArrayRef,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrow_types_get_postgres_names() {
        let ts = pg_type(&DataType::Timestamp(
            TimeUnit::Millisecond,
            Some("UTC".into()),
        ));
        assert_eq!(
            (
                ts.data_type.as_str(),
                ts.udt_name.as_str(),
                ts.datetime_precision
            ),
            ("timestamp with time zone", "timestamptz", Some(3))
        );
        let money = pg_type(&DataType::Decimal128(38, 2));
        assert_eq!(
            (
                money.udt_name.as_str(),
                money.numeric_precision,
                money.numeric_scale
            ),
            ("numeric", Some(38), Some(2))
        );
        assert_eq!(pg_type(&DataType::Int64).udt_name, "int8");
        assert_eq!(pg_type(&DataType::Float64).data_type, "double precision");
        assert_eq!(pg_type(&DataType::Utf8View).udt_name, "text");
        assert_eq!(pg_type(&DataType::Binary).udt_name, "bytea");
        let list = pg_type(&DataType::List(Arc::new(Field::new(
            "item",
            DataType::Utf8,
            true,
        ))));
        assert_eq!(
            (list.data_type.as_str(), list.udt_name.as_str()),
            ("ARRAY", "_text")
        );
    }
}
