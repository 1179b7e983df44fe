//! PostgreSQL functions BI tools' catalog queries call that neither DataFusion nor
//! `datafusion-postgres` provide: `format`, `col_description`, `to_regclass`, and the cast of a
//! computed name to `regclass`; and the rewrites of what DataFusion cannot plan (see
//! [`rewrite`]).
//!
//! Metabase's field sync describes each column with
//! `col_description(CAST(CAST(format('%I.%I', table_schema, table_name) AS regclass) AS oid),
//! ordinal_position)`. `datafusion-postgres` resolves a cast to `regclass` only when its operand
//! is a literal (`'pg_class'::regclass`); a computed name reached DataFusion as a cast of text to
//! an integer and failed. [`rewrite_regclass_casts`] turns such a cast into a call of
//! [`REGCLASS_CAST`], which looks the name up in `pg_class` the way PostgreSQL does (one part:
//! `pg_catalog`, then `public`; two parts: schema and relation), from a table of oids that
//! [`RelationOids::refresh`] reads from the emulated `pg_class` before the statement runs.

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::sync::{Arc, RwLock};

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, Int32Array, ListArray, StringArray, StructArray,
};
use datafusion::arrow::buffer::OffsetBuffer;
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, Fields, Int32Type};
use datafusion::common::{DataFusionError, Result, ScalarValue};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use datafusion::physical_plan::collect;
use datafusion::prelude::SessionContext;
use datafusion::sql::sqlparser::ast::{
    AccessExpr, BinaryOperator, Expr, FunctionArg, FunctionArgExpr, FunctionArguments, GroupByExpr,
    ObjectNamePart, OrderByKind, Query, SelectItem, SetExpr, Statement, Value, Visit, VisitMut,
    Visitor, VisitorMut,
};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::parser::Parser;

/// The function a cast of a computed name to `regclass` becomes: like the cast in PostgreSQL,
/// an error for a relation that does not exist.
pub const REGCLASS_CAST: &str = "duet_regclass_cast";

/// The function `information_schema._pg_expandarray(a)` becomes the `unnest` of: the list of
/// `(x, n)` pairs of `a`'s elements and their positions from 1.
pub const EXPAND_ARRAY: &str = "duet_expand_array";

/// Every function this module registers.
pub fn functions(oids: &Arc<RelationOids>) -> Vec<ScalarUDF> {
    vec![
        ScalarUDF::new_from_impl(Format::new()),
        ScalarUDF::new_from_impl(Regclass::new("to_regclass", false, oids.clone())),
        ScalarUDF::new_from_impl(Regclass::new(REGCLASS_CAST, true, oids.clone())),
        ScalarUDF::new_from_impl(ExpandArray::new()),
        ScalarUDF::new_from_impl(SizePretty::new()),
        // comments: Duet's catalog holds none (a view's description is in `GET /v1/views`),
        // so they are NULL, as PostgreSQL's are for an object nobody commented on
        ScalarUDF::new_from_impl(Constant::null("col_description", &[2], DataType::Utf8)),
        ScalarUDF::new_from_impl(Constant::null("obj_description", &[1, 2], DataType::Utf8)),
        ScalarUDF::new_from_impl(Constant::null("shobj_description", &[2], DataType::Utf8)),
        // sizes: a view is computed from the speed store and the lake, not kept in a relation
        // of its own, so its size is unknown
        ScalarUDF::new_from_impl(Constant::null("pg_table_size", &[1], DataType::Int64)),
        ScalarUDF::new_from_impl(Constant::null("pg_relation_size", &[1, 2], DataType::Int64)),
        ScalarUDF::new_from_impl(Constant::null(
            "pg_total_relation_size",
            &[1],
            DataType::Int64,
        )),
        ScalarUDF::new_from_impl(Constant::null("pg_indexes_size", &[1], DataType::Int64)),
        // every type is on the search path: the emulated catalog has one schema besides
        // `pg_catalog` and `information_schema` (psql's `\dT` asks)
        ScalarUDF::new_from_impl(Constant::new(
            "pg_type_is_visible",
            &[1],
            ScalarValue::Boolean(Some(true)),
        )),
        ScalarUDF::new_from_impl(Constant::new(
            "pg_function_is_visible",
            &[1],
            ScalarValue::Boolean(Some(true)),
        )),
        ScalarUDF::new_from_impl(Constant::new(
            "pg_operator_is_visible",
            &[1],
            ScalarValue::Boolean(Some(true)),
        )),
        ScalarUDF::new_from_impl(Constant::new(
            "pg_conversion_is_visible",
            &[1],
            ScalarValue::Boolean(Some(true)),
        )),
        // a database's size is unknown as a view's is (psql's `\l+`); the emulated
        // tablespaces are PostgreSQL's two built-in ones, whose location is empty (`\db`)
        ScalarUDF::new_from_impl(Constant::null("pg_database_size", &[1], DataType::Int64)),
        ScalarUDF::new_from_impl(Constant::new(
            "pg_tablespace_location",
            &[1],
            ScalarValue::Utf8(Some(String::new())),
        )),
        // a function's signature as text (psql's `\df`): the emulated `pg_proc` keeps none
        ScalarUDF::new_from_impl(Constant::null(
            "pg_get_function_result",
            &[1],
            DataType::Utf8,
        )),
        ScalarUDF::new_from_impl(Constant::null(
            "pg_get_function_arguments",
            &[1],
            DataType::Utf8,
        )),
    ]
}

fn exec(message: String) -> DataFusionError {
    DataFusionError::Execution(message)
}

/// Arguments as arrays of one length, text ones cast to `Utf8`.
fn arrays(args: &ScalarFunctionArgs) -> Result<Vec<ArrayRef>> {
    ColumnarValue::values_to_arrays(&args.args)
}

fn as_text(a: &ArrayRef) -> Result<ArrayRef> {
    cast(a, &DataType::Utf8).map_err(DataFusionError::from)
}

// ---------------------------------------------------------------------------------------------
// format

/// `format(formatstr, args…)`: PostgreSQL's, with `%s` (text; NULL is empty), `%I` (an
/// identifier, quoted where needed), `%L` (a literal, quoted; NULL unquoted), `%%`, an argument
/// position (`%2$s`) and a width (`%-10s`).
#[derive(Debug, PartialEq, Eq, Hash)]
struct Format {
    signature: Signature,
}

impl Format {
    fn new() -> Format {
        Format {
            signature: Signature::variadic_any(Volatility::Immutable),
        }
    }
}

impl ScalarUDFImpl for Format {
    fn name(&self) -> &str {
        "format"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let arrays = arrays(&args)?;
        let texts = arrays.iter().map(as_text).collect::<Result<Vec<_>>>()?;
        let texts: Vec<&StringArray> = texts.iter().map(|a| a.as_string::<i32>()).collect();
        let Some((fmt, rest)) = texts.split_first() else {
            return Err(exec("format() needs a format string".to_string()));
        };
        let mut out = Vec::with_capacity(args.number_rows);
        let mut row_args = Vec::with_capacity(rest.len());
        for row in 0..args.number_rows {
            if fmt.is_null(row) {
                out.push(None);
                continue;
            }
            row_args.clear();
            row_args.extend(rest.iter().map(|a| (!a.is_null(row)).then(|| a.value(row))));
            out.push(Some(
                render_format(fmt.value(row), &row_args).map_err(exec)?,
            ));
        }
        Ok(ColumnarValue::Array(Arc::new(StringArray::from(out))))
    }
}

/// `format`'s output for one row: `args[i]` is argument `i + 1`, `None` for NULL.
pub fn render_format(fmt: &str, args: &[Option<&str>]) -> std::result::Result<String, String> {
    let mut out = String::with_capacity(fmt.len());
    let mut chars = fmt.chars().peekable();
    let mut next_arg = 0usize;
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let unterminated = || "unterminated format() type specifier".to_string();
        if chars.peek() == Some(&'%') {
            chars.next();
            out.push('%');
            continue;
        }
        // an argument position (`2$`) or a width: digits, then `$` or the rest
        let mut digits = String::new();
        let mut left = false;
        if chars.peek() == Some(&'-') {
            left = true;
            chars.next();
        }
        while let Some(d) = chars.peek().copied().filter(char::is_ascii_digit) {
            digits.push(d);
            chars.next();
        }
        let mut width = None;
        if !left && !digits.is_empty() && chars.peek() == Some(&'$') {
            chars.next();
            let position: usize = digits
                .parse()
                .map_err(|_| "argument number is out of range".to_string())?;
            if position == 0 {
                return Err(
                    "format specifies argument 0, but arguments are numbered from 1".into(),
                );
            }
            next_arg = position - 1;
            digits.clear();
            if chars.peek() == Some(&'-') {
                left = true;
                chars.next();
            }
            while let Some(d) = chars.peek().copied().filter(char::is_ascii_digit) {
                digits.push(d);
                chars.next();
            }
        }
        if chars.peek() == Some(&'*') {
            return Err("format() widths taken from an argument (`*`) are not supported".into());
        }
        if !digits.is_empty() {
            width = Some(
                digits
                    .parse::<usize>()
                    .map_err(|_| "number is out of range".to_string())?,
            );
        }
        let kind = chars.next().ok_or_else(unterminated)?;
        if !matches!(kind, 's' | 'I' | 'L') {
            return Err(format!("unrecognized format() type specifier \"{kind}\""));
        }
        let arg = *args
            .get(next_arg)
            .ok_or_else(|| "too few arguments for format()".to_string())?;
        next_arg += 1;
        let text = match (kind, arg) {
            ('s', v) => v.unwrap_or_default().to_string(),
            ('I', Some(v)) => quote_ident(v),
            ('I', None) => {
                return Err("null values cannot be formatted as an SQL identifier".into());
            }
            (_, Some(v)) => quote_literal(v),
            (_, None) => "NULL".to_string(),
        };
        let pad = width
            .unwrap_or(0)
            .saturating_sub(text.chars().count())
            .min(1 << 20);
        if left {
            out.push_str(&text);
            out.extend(std::iter::repeat_n(' ', pad));
        } else {
            out.extend(std::iter::repeat_n(' ', pad));
            out.push_str(&text);
        }
    }
    Ok(out)
}

/// Keywords PostgreSQL's `quote_ident` quotes: every keyword that is not unreserved
/// (reserved, type and function names, column names).
const QUOTED_KEYWORDS: &[&str] = &[
    "all",
    "analyse",
    "analyze",
    "and",
    "any",
    "array",
    "as",
    "asc",
    "asymmetric",
    "authorization",
    "between",
    "bigint",
    "binary",
    "bit",
    "boolean",
    "both",
    "case",
    "cast",
    "char",
    "character",
    "check",
    "coalesce",
    "collate",
    "collation",
    "column",
    "concurrently",
    "constraint",
    "create",
    "cross",
    "current_catalog",
    "current_date",
    "current_role",
    "current_schema",
    "current_time",
    "current_timestamp",
    "current_user",
    "dec",
    "decimal",
    "default",
    "deferrable",
    "desc",
    "distinct",
    "do",
    "else",
    "end",
    "except",
    "exists",
    "extract",
    "false",
    "fetch",
    "float",
    "for",
    "foreign",
    "freeze",
    "from",
    "full",
    "grant",
    "greatest",
    "group",
    "grouping",
    "having",
    "ilike",
    "in",
    "initially",
    "inner",
    "inout",
    "int",
    "integer",
    "intersect",
    "interval",
    "into",
    "is",
    "isnull",
    "join",
    "json",
    "lateral",
    "leading",
    "least",
    "left",
    "like",
    "limit",
    "localtime",
    "localtimestamp",
    "national",
    "natural",
    "nchar",
    "none",
    "normalize",
    "not",
    "notnull",
    "null",
    "nullif",
    "numeric",
    "offset",
    "on",
    "only",
    "or",
    "order",
    "out",
    "outer",
    "overlaps",
    "overlay",
    "placing",
    "position",
    "precision",
    "primary",
    "real",
    "references",
    "returning",
    "right",
    "row",
    "select",
    "session_user",
    "setof",
    "similar",
    "smallint",
    "some",
    "substring",
    "symmetric",
    "system_user",
    "table",
    "tablesample",
    "then",
    "time",
    "timestamp",
    "to",
    "trailing",
    "treat",
    "trim",
    "true",
    "union",
    "unique",
    "user",
    "using",
    "values",
    "varchar",
    "variadic",
    "verbose",
    "when",
    "where",
    "window",
    "with",
];

/// PostgreSQL's `quote_ident`: the name as is when it is a lower-case identifier that is not a
/// keyword, else in double quotes with inner double quotes doubled.
pub fn quote_ident(name: &str) -> String {
    let mut chars = name.chars();
    let plain = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && !QUOTED_KEYWORDS.contains(&name);
    if plain {
        name.to_string()
    } else {
        format!("\"{}\"", name.replace('"', "\"\""))
    }
}

/// PostgreSQL's `quote_literal`: in single quotes with inner ones doubled; as an `E'…'` string
/// with backslashes doubled when it has any.
pub fn quote_literal(text: &str) -> String {
    let quoted = text.replace('\'', "''");
    if text.contains('\\') {
        format!("E'{}'", quoted.replace('\\', "\\\\"))
    } else {
        format!("'{quoted}'")
    }
}

// ---------------------------------------------------------------------------------------------
// functions that answer a constant

/// A function of Duet's catalog that answers `value` for any arguments (of the counts in
/// `arities`): NULL for an object's comment, as PostgreSQL answers for an object nobody
/// commented on, for the size of a relation that has none of its own and for a function's
/// signature text, which the emulated catalog does not keep; true for whether a type or a
/// function is visible.
#[derive(Debug, PartialEq, Eq, Hash)]
struct Constant {
    name: &'static str,
    value: ScalarValue,
    signature: Signature,
}

impl Constant {
    fn new(name: &'static str, arities: &[usize], value: ScalarValue) -> Constant {
        let signature = Signature::one_of(
            arities
                .iter()
                .map(|n| datafusion::logical_expr::TypeSignature::Any(*n))
                .collect(),
            Volatility::Stable,
        );
        Constant {
            name,
            value,
            signature,
        }
    }

    /// The function that answers NULL of type `returns`.
    fn null(name: &'static str, arities: &[usize], returns: DataType) -> Constant {
        let value = ScalarValue::try_from(&returns).unwrap_or(ScalarValue::Null);
        Constant::new(name, arities, value)
    }
}

impl ScalarUDFImpl for Constant {
    fn name(&self) -> &str {
        self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> Result<DataType> {
        Ok(self.value.data_type())
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        Ok(ColumnarValue::Array(
            self.value.to_array_of_size(args.number_rows)?,
        ))
    }
}

// ---------------------------------------------------------------------------------------------
// pg_size_pretty

/// `pg_size_pretty(bytes)`: a size as PostgreSQL 15 writes it: bytes below 10 kB, then the
/// largest of kB, MB, GB, TB and PB that keeps the number below 20 480, rounded half away
/// from zero.
#[derive(Debug, PartialEq, Eq, Hash)]
struct SizePretty {
    signature: Signature,
}

impl SizePretty {
    fn new() -> SizePretty {
        SizePretty {
            signature: Signature::exact(vec![DataType::Int64], Volatility::Immutable),
        }
    }
}

/// PostgreSQL's `pg_size_pretty(bigint)` (`dbsize.c`, its table of units and its shifts).
fn size_pretty(bytes: i64) -> String {
    // name, limit below which it is used, half-rounded, bits of its divisor
    const UNITS: [(&str, i64, bool, u32); 6] = [
        ("bytes", 10 * 1024, false, 0),
        ("kB", 20 * 1024 - 1, true, 10),
        ("MB", 20 * 1024 - 1, true, 20),
        ("GB", 20 * 1024 - 1, true, 30),
        ("TB", 20 * 1024 - 1, true, 40),
        ("PB", 20 * 1024 - 1, true, 50),
    ];
    let half_rounded = |x: i64| (x + if x < 0 { -1 } else { 1 }) / 2;
    let mut size = bytes;
    let mut i = 0;
    loop {
        let (name, limit, round, bits) = UNITS[i];
        match UNITS.get(i + 1) {
            // a larger unit, and this one's limit reached
            Some(&(_, _, next_round, next_bits)) if size.unsigned_abs() >= limit.unsigned_abs() => {
                size /= 1i64 << (next_bits - bits - u32::from(next_round) + u32::from(round));
                i += 1;
            }
            _ => {
                let size = if round { half_rounded(size) } else { size };
                return format!("{size} {name}");
            }
        }
    }
}

impl ScalarUDFImpl for SizePretty {
    fn name(&self) -> &str {
        "pg_size_pretty"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let [bytes] = arrays(&args)?
            .try_into()
            .map_err(|_| exec("pg_size_pretty() takes one argument".to_string()))?;
        let bytes = cast(&bytes, &DataType::Int64)?;
        let out: StringArray = bytes
            .as_primitive::<datafusion::arrow::datatypes::Int64Type>()
            .iter()
            .map(|b| b.map(size_pretty))
            .collect();
        Ok(ColumnarValue::Array(Arc::new(out)))
    }
}

// ---------------------------------------------------------------------------------------------
// _pg_expandarray

/// [`EXPAND_ARRAY`]: an array (or an `int2vector` kept as text, `"1 2"`) as the list of
/// `(x, n)` structs of its elements and their positions from 1.
#[derive(Debug, PartialEq, Eq, Hash)]
struct ExpandArray {
    signature: Signature,
}

impl ExpandArray {
    fn new() -> ExpandArray {
        ExpandArray {
            signature: Signature::any(1, Volatility::Immutable),
        }
    }
}

/// The element type of an array argument; text holds integers.
fn element_type(t: &DataType) -> DataType {
    match t {
        DataType::List(f) | DataType::LargeList(f) | DataType::FixedSizeList(f, _) => {
            f.data_type().clone()
        }
        _ => DataType::Int32,
    }
}

fn pair_fields(element: &DataType) -> Fields {
    Fields::from(vec![
        Field::new("x", element.clone(), true),
        Field::new("n", DataType::Int32, false),
    ])
}

impl ScalarUDFImpl for ExpandArray {
    fn name(&self) -> &str {
        EXPAND_ARRAY
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, args: &[DataType]) -> Result<DataType> {
        let element = element_type(args.first().unwrap_or(&DataType::Null));
        Ok(DataType::List(Arc::new(Field::new(
            "item",
            DataType::Struct(pair_fields(&element)),
            true,
        ))))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let arrays = arrays(&args)?;
        let Some(arg) = arrays.first() else {
            return Err(exec("_pg_expandarray() needs an array".to_string()));
        };
        let list: ArrayRef = match arg.data_type() {
            DataType::List(_) => arg.clone(),
            DataType::LargeList(_) | DataType::FixedSizeList(_, _) => {
                let element = element_type(arg.data_type());
                cast(
                    arg,
                    &DataType::List(Arc::new(Field::new("item", element, true))),
                )
                .map_err(DataFusionError::from)?
            }
            _ => {
                let text = as_text(arg)?;
                super::typed_arrays::parse_lists(text.as_string::<i32>(), &DataType::Int32)
            }
        };
        let list = list.as_list::<i32>();
        let offsets = list.value_offsets();
        let (first, last) = (offsets[0], offsets[offsets.len() - 1]);
        let values = list.values().slice(first as usize, (last - first) as usize);
        let positions: Int32Array = offsets
            .windows(2)
            .flat_map(|w| 1..=(w[1] - w[0]))
            .map(Some)
            .collect();
        let fields = pair_fields(values.data_type());
        let pairs = StructArray::try_new(
            fields.clone(),
            vec![values, Arc::new(positions) as ArrayRef],
            None,
        )
        .map_err(DataFusionError::from)?;
        let rebased = OffsetBuffer::new(offsets.iter().map(|o| o - first).collect());
        let out = ListArray::try_new(
            Arc::new(Field::new("item", DataType::Struct(fields), true)),
            rebased,
            Arc::new(pairs),
            list.nulls().cloned(),
        )
        .map_err(DataFusionError::from)?;
        Ok(ColumnarValue::Array(Arc::new(out)))
    }
}

// ---------------------------------------------------------------------------------------------
// regclass

/// The oid `pg_class` gives each relation, by schema and name.
#[derive(Debug, Default)]
pub struct RelationOids {
    by_name: RwLock<HashMap<(String, String), i32>>,
}

impl RelationOids {
    /// Reads every relation's oid from `ctx`'s `pg_catalog.pg_class` and `pg_namespace`
    /// (the emulation gives a relation the same oid for the life of the session).
    pub async fn refresh(&self, ctx: &SessionContext) -> Result<()> {
        let mut schema_of = HashMap::new();
        for columns in read_pg_catalog(ctx, "pg_namespace", &["oid", "nspname"]).await? {
            let (oids, names) = (int32s(&columns[0])?, as_text(&columns[1])?);
            let (oids, names) = (oids.as_primitive::<Int32Type>(), names.as_string::<i32>());
            for (oid, name) in oids.iter().zip(names.iter()) {
                if let (Some(oid), Some(name)) = (oid, name) {
                    schema_of.insert(oid, name.to_string());
                }
            }
        }
        let mut by_name = HashMap::new();
        let classes = ["oid", "relname", "relnamespace"];
        for columns in read_pg_catalog(ctx, "pg_class", &classes).await? {
            let (oids, names, namespaces) = (
                int32s(&columns[0])?,
                as_text(&columns[1])?,
                int32s(&columns[2])?,
            );
            let rows = oids
                .as_primitive::<Int32Type>()
                .iter()
                .zip(names.as_string::<i32>().iter())
                .zip(namespaces.as_primitive::<Int32Type>().iter());
            for ((oid, name), namespace) in rows {
                let schema = namespace.and_then(|n| schema_of.get(&n));
                if let (Some(oid), Some(name), Some(schema)) = (oid, name, schema) {
                    by_name.insert((schema.clone(), name.to_string()), oid);
                }
            }
        }
        if let Ok(mut guard) = self.by_name.write() {
            *guard = by_name;
        }
        Ok(())
    }

    fn get(&self, schema: &str, name: &str) -> Option<i32> {
        let guard = self.by_name.read().ok()?;
        guard.get(&(schema.to_string(), name.to_string())).copied()
    }

    /// The oid of a relation named as PostgreSQL's `regclass` input reads it: `name` is looked
    /// up in `pg_catalog`, then in `public`; `schema.name` in `schema`;
    /// `catalog.schema.name` in `schema`. `Err` for a malformed name.
    pub fn resolve(&self, text: &str) -> std::result::Result<Option<i32>, String> {
        let parts = parse_name(text).ok_or_else(|| format!("invalid name syntax: \"{text}\""))?;
        Ok(match parts.as_slice() {
            [name] => self
                .get("pg_catalog", name)
                .or_else(|| self.get("public", name)),
            [schema, name] | [_, schema, name] => self.get(schema, name),
            _ => {
                return Err(format!(
                    "improper relation name (too many dotted names): {text}"
                ));
            }
        })
    }
}

/// The rows of `columns` of table `table` in `ctx`'s `pg_catalog`, scanned directly (not
/// planned as a statement, which the limits would count as one).
async fn read_pg_catalog(
    ctx: &SessionContext,
    table: &str,
    columns: &[&str],
) -> Result<Vec<Vec<ArrayRef>>> {
    let state = ctx.state();
    let catalog_name = state.config_options().catalog.default_catalog.clone();
    let provider = ctx
        .catalog(&catalog_name)
        .and_then(|c| c.schema("pg_catalog"));
    let Some(schema) = provider else {
        return Ok(Vec::new());
    };
    let Some(table) = schema.table(table).await? else {
        return Ok(Vec::new());
    };
    let fields = table.schema();
    let projection = columns
        .iter()
        .map(|c| fields.index_of(c))
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(DataFusionError::from)?;
    let plan = table.scan(&state, Some(&projection), &[], None).await?;
    Ok(collect(plan, ctx.task_ctx())
        .await?
        .into_iter()
        .map(|b| b.columns().to_vec())
        .collect())
}

fn int32s(a: &ArrayRef) -> Result<ArrayRef> {
    cast(a, &DataType::Int32).map_err(DataFusionError::from)
}

/// A dotted name split as PostgreSQL's `parse_ident` splits it: unquoted parts lower-cased,
/// quoted ones as written with `""` read as `"`. `None` when malformed.
pub fn parse_name(text: &str) -> Option<Vec<String>> {
    let mut parts = Vec::new();
    let mut chars = text.trim().chars().peekable();
    loop {
        let mut part = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next()? {
                    '"' if chars.peek() == Some(&'"') => {
                        chars.next();
                        part.push('"');
                    }
                    '"' => break,
                    c => part.push(c),
                }
            }
            if part.is_empty() {
                return None;
            }
        } else {
            while let Some(c) = chars.peek().copied().filter(|c| *c != '.') {
                if c == '"' || c.is_whitespace() {
                    return None;
                }
                part.extend(c.to_lowercase());
                chars.next();
            }
            if part.is_empty() {
                return None;
            }
        }
        parts.push(part);
        match chars.next() {
            None => return Some(parts),
            Some('.') => {}
            Some(_) => return None,
        }
    }
}

/// `to_regclass(name)` (NULL for a relation that does not exist) and [`REGCLASS_CAST`] (an
/// error then, like PostgreSQL's cast). An integer argument is already an oid and is returned
/// as it is.
#[derive(Debug)]
struct Regclass {
    name: &'static str,
    strict: bool,
    signature: Signature,
    oids: Arc<RelationOids>,
}

impl PartialEq for Regclass {
    fn eq(&self, other: &Regclass) -> bool {
        self.name == other.name && Arc::ptr_eq(&self.oids, &other.oids)
    }
}

impl Eq for Regclass {}

impl std::hash::Hash for Regclass {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.name.hash(state);
    }
}

impl Regclass {
    fn new(name: &'static str, strict: bool, oids: Arc<RelationOids>) -> Regclass {
        Regclass {
            name,
            strict,
            signature: Signature::any(1, Volatility::Stable),
            oids,
        }
    }
}

impl ScalarUDFImpl for Regclass {
    fn name(&self) -> &str {
        self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> Result<DataType> {
        Ok(DataType::Int32)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let arrays = arrays(&args)?;
        let Some(arg) = arrays.first() else {
            return Err(exec(format!("{}() needs a relation name", self.name)));
        };
        if arg.data_type().is_integer() {
            let oids = cast(arg, &DataType::Int32).map_err(DataFusionError::from)?;
            return Ok(ColumnarValue::Array(oids));
        }
        let names = as_text(arg)?;
        let names = names.as_string::<i32>();
        let mut out = Vec::with_capacity(names.len());
        for name in names.iter() {
            let Some(name) = name else {
                out.push(None);
                continue;
            };
            let oid = self.oids.resolve(name).map_err(exec)?;
            if oid.is_none() && self.strict {
                return Err(exec(format!("relation \"{name}\" does not exist")));
            }
            out.push(oid);
        }
        Ok(ColumnarValue::Array(Arc::new(Int32Array::from(out))))
    }
}

/// Whether `data_type` is `regclass` (`REGCLASS`, `pg_catalog.regclass`).
fn is_regclass(data_type: &impl ToString) -> bool {
    let name = data_type.to_string().to_lowercase();
    name.strip_prefix("pg_catalog.").unwrap_or(&name) == "regclass"
}

/// `name(args…)` as a parsed expression.
fn call(name: &str, args: Vec<Expr>) -> Option<Expr> {
    let nulls = vec!["NULL"; args.len()].join(", ");
    let mut expr = Parser::new(&PostgreSqlDialect {})
        .try_with_sql(&format!("{name}({nulls})"))
        .and_then(|mut p| p.parse_expr())
        .ok()?;
    if let Expr::Function(f) = &mut expr
        && let FunctionArguments::List(list) = &mut f.args
        && list.args.len() == args.len()
    {
        for (slot, arg) in list.args.iter_mut().zip(args) {
            *slot = FunctionArg::Unnamed(FunctionArgExpr::Expr(arg));
        }
        return Some(expr);
    }
    None
}

/// The first argument of a call, if it is a plain one.
fn first_arg(f: &datafusion::sql::sqlparser::ast::Function) -> Option<&Expr> {
    match &f.args {
        FunctionArguments::List(list) => match list.args.first()? {
            FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => Some(e),
            _ => None,
        },
        _ => None,
    }
}

/// Whether `expr` is the column `column` (any case, qualified or not).
fn is_column(expr: &Expr, column: &str) -> bool {
    let last = match expr {
        Expr::Identifier(ident) => Some(ident),
        Expr::CompoundIdentifier(parts) => parts.last(),
        _ => None,
    };
    last.is_some_and(|ident| ident.value.eq_ignore_ascii_case(column))
}

/// The one argument of a call, if it has exactly one plain argument.
fn only_arg(f: &datafusion::sql::sqlparser::ast::Function) -> Option<&Expr> {
    match &f.args {
        FunctionArguments::List(list) if list.args.len() == 1 => first_arg(f),
        _ => None,
    }
}

struct Rewrites {
    rewritten: usize,
}

impl Rewrites {
    fn rewrite(&self, expr: &Expr) -> Option<Expr> {
        match expr {
            // a computed name cast to regclass
            Expr::Cast {
                expr: operand,
                data_type,
                ..
            } if is_regclass(data_type)
                // a literal is resolved by datafusion-postgres; a column is an oid already
                && !matches!(
                    operand.as_ref(),
                    Expr::Value(_) | Expr::Identifier(_) | Expr::CompoundIdentifier(_)
                ) =>
            {
                call(REGCLASS_CAST, vec![operand.as_ref().clone()])
            }
            // information_schema._pg_expandarray(a): one row per element, as (x, n)
            Expr::Function(f) if named(f, "_pg_expandarray") => {
                let expanded = call(EXPAND_ARRAY, vec![only_arg(f)?.clone()])?;
                call("unnest", vec![expanded])
            }
            // psql's `\d+`: `array_to_string(c.reloptions || array(select 'toast.' || x from
            // unnest(tc.reloptions) x), ', ')`, the relation's storage options as text. The
            // emulated `pg_class` has no `reloptions` (no view has storage options), and
            // DataFusion plans no `ARRAY(subquery)`: the text is empty, as PostgreSQL's is for a
            // relation without options.
            Expr::Function(f)
                if named(f, "array_to_string") && names_column(expr, "reloptions") =>
            {
                Some(Expr::Value(Value::SingleQuotedString(String::new()).into()))
            }
            // psql's `\dT+`: `array_to_string(ARRAY(SELECT e.enumlabel FROM pg_enum e WHERE …
            // ORDER BY …), E'\n')`, a type's enum labels. DataFusion plans no `ARRAY(subquery)`:
            // the labels are joined by the subquery's own `string_agg`, in its order
            //
            // psql's `\dn+` and `\dT+`: `array_to_string(n.nspacl, E'\n')`, a schema's (or
            // type's, `typacl`) access privileges. The emulated `pg_namespace` and `pg_type` keep
            // them as text (NULL: Duet keeps no grants), which `array_to_string` does not take:
            // the column is its own text.
            Expr::Function(f) if named(f, "array_to_string") => {
                joined_by_subquery(f).or_else(|| {
                    let acl = first_arg(f)?;
                    (is_column(acl, "nspacl") || is_column(acl, "typacl")).then(|| acl.clone())
                })
            }
            // psql's `\du`: `ARRAY(SELECT b.rolname FROM pg_auth_members m JOIN pg_roles b …
            // WHERE m.member = r.oid) AS memberof`, a role's groups. DataFusion plans no
            // `ARRAY(subquery)` (one inside `array_to_string` is rewritten above, first): the
            // elements are gathered by the subquery's own `array_agg`, in its order
            Expr::Function(f) if named(f, "array") => gathered_by_subquery(f),
            // (composite).field
            Expr::CompoundFieldAccess { root, access_chain } => {
                let mut out = root.as_ref().clone();
                for access in access_chain {
                    let AccessExpr::Dot(Expr::Identifier(field)) = access else {
                        return None;
                    };
                    let name =
                        Expr::Value(Value::SingleQuotedString(field.value.to_lowercase()).into());
                    out = call("get_field", vec![out, name])?;
                }
                Some(out)
            }
            _ => None,
        }
    }
}

impl VisitorMut for Rewrites {
    type Break = ();

    fn pre_visit_query(&mut self, query: &mut Query) -> ControlFlow<()> {
        if let SetExpr::Select(select) = query.body.as_mut()
            && let Some(condition) = &mut select.selection
        {
            self.rewritten += exists_in_condition(condition);
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_expr(&mut self, expr: &mut Expr) -> ControlFlow<()> {
        if let Some(new) = self.rewrite(expr) {
            *expr = new;
            self.rewritten += 1;
        }
        ControlFlow::Continue(())
    }
}

/// The terms of a WHERE clause's ANDs and ORs (through parentheses): where NULL and false
/// reject a row alike.
fn where_terms<'e>(condition: &'e Expr, out: &mut Vec<&'e Expr>) {
    match condition {
        Expr::BinaryOp {
            left,
            op: BinaryOperator::And | BinaryOperator::Or,
            right,
        } => {
            where_terms(left, out);
            where_terms(right, out);
        }
        Expr::Nested(inner) => where_terms(inner, out),
        term => out.push(term),
    }
}

/// Rewrites each scalar subquery among a WHERE clause's terms ([`where_terms`]) that
/// [`as_exists`] takes; returns how many.
fn exists_in_condition(condition: &mut Expr) -> usize {
    match condition {
        Expr::BinaryOp {
            left,
            op: BinaryOperator::And | BinaryOperator::Or,
            right,
        } => exists_in_condition(left) + exists_in_condition(right),
        Expr::Nested(inner) => exists_in_condition(inner),
        Expr::Subquery(query) => match as_exists(query) {
            Some(exists) => {
                *condition = exists;
                1
            }
            None => 0,
        },
        _ => 0,
    }
}

/// The select of `query` and the one expression it selects, if it is a plain select of one
/// column: no WITH, LIMIT or FETCH, no grouping, HAVING, DISTINCT or QUALIFY (an ORDER BY
/// is left to the caller).
fn one_column(query: &Query) -> Option<(&datafusion::sql::sqlparser::ast::Select, &Expr)> {
    if query.with.is_some() || query.limit_clause.is_some() || query.fetch.is_some() {
        return None;
    }
    let SetExpr::Select(select) = query.body.as_ref() else {
        return None;
    };
    let [SelectItem::UnnamedExpr(item) | SelectItem::ExprWithAlias { expr: item, .. }] =
        select.projection.as_slice()
    else {
        return None;
    };
    let grouped = !matches!(&select.group_by, GroupByExpr::Expressions(by, with) if by.is_empty() && with.is_empty());
    if grouped || select.having.is_some() || select.distinct.is_some() || select.qualify.is_some() {
        return None;
    }
    Some((select, item))
}

/// The subquery and the separator of `array_to_string(ARRAY(subquery), separator)`, if `f` is
/// that call.
fn array_of_subquery(f: &datafusion::sql::sqlparser::ast::Function) -> Option<(&Query, &Expr)> {
    let FunctionArguments::List(list) = &f.args else {
        return None;
    };
    let [
        FunctionArg::Unnamed(FunctionArgExpr::Expr(Expr::Function(array))),
        FunctionArg::Unnamed(FunctionArgExpr::Expr(separator)),
    ] = list.args.as_slice()
    else {
        return None;
    };
    match &array.args {
        FunctionArguments::Subquery(query) if named(array, "array") => Some((query, separator)),
        _ => None,
    }
}

/// `array_to_string(ARRAY(SELECT x FROM … WHERE … ORDER BY o), sep)` as `COALESCE((SELECT
/// string_agg(CAST(x AS TEXT), sep ORDER BY o) FROM … WHERE …), '')`: the same text (both
/// skip NULLs; an empty array joins to `''`, which the COALESCE gives for no rows). `None`
/// for a subquery of another shape (more than one column, grouped, distinct or limited).
fn joined_by_subquery(f: &datafusion::sql::sqlparser::ast::Function) -> Option<Expr> {
    let (query, separator) = array_of_subquery(f)?;
    let joined = aggregated(query, |item, order| {
        format!("string_agg(CAST({item} AS TEXT), {separator}{order})")
    })?;
    call(
        "coalesce",
        vec![
            joined,
            Expr::Value(Value::SingleQuotedString(String::new()).into()),
        ],
    )
}

/// A one-column subquery (see [`one_column`]) with its item aggregated instead, as
/// `aggregate(item, order)` writes the call (`order`: the subquery's ORDER BY, as
/// [`order_inside`] gives it), as a scalar subquery.
fn aggregated(query: &Query, aggregate: impl FnOnce(&Expr, &str) -> String) -> Option<Expr> {
    let (select, item) = one_column(query)?;
    let order = order_inside(query, select, item)?;
    let agg = Parser::new(&PostgreSqlDialect {})
        .try_with_sql(&aggregate(item, &order))
        .and_then(|mut p| p.parse_expr())
        .ok()?;
    let mut one = select.clone();
    one.projection = vec![SelectItem::UnnamedExpr(agg)];
    let mut subquery = query.clone();
    subquery.order_by = None;
    subquery.body = Box::new(SetExpr::Select(Box::new(one)));
    Some(Expr::Subquery(Box::new(subquery)))
}

/// The ORDER BY of a one-column subquery (` ORDER BY …`, or nothing) as the ORDER BY of an
/// aggregate of its `item`: there, the position `1` and the item's alias are not known, so
/// they become the item itself. `None` for another position or `ORDER BY ALL`.
fn order_inside(
    query: &Query,
    select: &datafusion::sql::sqlparser::ast::Select,
    item: &Expr,
) -> Option<String> {
    let Some(order) = &query.order_by else {
        return Some(String::new());
    };
    let alias = match select.projection.as_slice() {
        [SelectItem::ExprWithAlias { alias, .. }] => Some(alias),
        _ => None,
    };
    let mut order = order.clone();
    let OrderByKind::Expressions(list) = &mut order.kind else {
        return None;
    };
    for o in list {
        match &o.expr {
            Expr::Value(v) => match &v.value {
                Value::Number(n, _) if n == "1" => o.expr = item.clone(),
                Value::Number(..) => return None,
                _ => {}
            },
            Expr::Identifier(id) if alias.is_some_and(|a| a.value == id.value) => {
                o.expr = item.clone();
            }
            _ => {}
        }
    }
    Some(format!(" {order}"))
}

/// `ARRAY(SELECT x FROM … WHERE … ORDER BY o)` as `COALESCE((SELECT array_agg(x ORDER BY o)
/// FROM … WHERE …), make_array())`: the same elements in the same order, and an empty array
/// for no rows (where `array_agg` alone gives NULL). `None` for a subquery of another shape
/// (more than one column, grouped, distinct or limited).
fn gathered_by_subquery(f: &datafusion::sql::sqlparser::ast::Function) -> Option<Expr> {
    let FunctionArguments::Subquery(query) = &f.args else {
        return None;
    };
    let gathered = aggregated(query, |item, order| format!("array_agg({item}{order})"))?;
    call("coalesce", vec![gathered, call("make_array", Vec::new())?])
}

/// A scalar subquery that selects one comparison, `(SELECT c.relkind = 'c' FROM pg_class c
/// WHERE c.oid = t.typrelid)` (psql's `\dT`, pgcli's type list), as the correlated `EXISTS
/// (SELECT 1 FROM pg_class c WHERE (c.oid = t.typrelid) AND (c.relkind = 'c'))`, which
/// DataFusion plans. As a term of a WHERE clause the two are the same: the subquery is true
/// where a row's comparison is true, and otherwise false or NULL, which reject a row alike
/// (PostgreSQL would refuse a subquery that finds two rows; this takes it). `None` for a
/// subquery of any other shape: grouped, aggregated, ordered or limited, or calling a
/// function.
fn as_exists(query: &Query) -> Option<Expr> {
    let (select, comparison) = one_column(query)?;
    let compares = matches!(
        comparison,
        Expr::BinaryOp {
            op: BinaryOperator::Eq
                | BinaryOperator::NotEq
                | BinaryOperator::Lt
                | BinaryOperator::LtEq
                | BinaryOperator::Gt
                | BinaryOperator::GtEq,
            ..
        }
    );
    if !compares
        || query.order_by.is_some()
        || any_expr(comparison, |e| {
            matches!(e, Expr::Function(_) | Expr::Subquery(_))
        })
    {
        return None;
    }
    let mut exists = select.clone();
    exists.projection = vec![SelectItem::UnnamedExpr(Expr::Value(
        Value::Number("1".into(), false).into(),
    ))];
    let comparison = Expr::Nested(Box::new(comparison.clone()));
    exists.selection = Some(match exists.selection.take() {
        Some(filter) => Expr::BinaryOp {
            left: Box::new(Expr::Nested(Box::new(filter))),
            op: BinaryOperator::And,
            right: Box::new(comparison),
        },
        None => comparison,
    });
    let mut subquery = query.clone();
    subquery.body = Box::new(SetExpr::Select(Box::new(exists)));
    Some(Expr::Exists {
        subquery: Box::new(subquery),
        negated: false,
    })
}

/// Whether a query's WHERE clause has a term that [`as_exists`] takes.
fn has_exists_to_write(query: &Query) -> bool {
    let SetExpr::Select(select) = query.body.as_ref() else {
        return false;
    };
    let mut terms = Vec::new();
    if let Some(condition) = &select.selection {
        where_terms(condition, &mut terms);
    }
    terms
        .into_iter()
        .any(|t| matches!(t, Expr::Subquery(q) if as_exists(q).is_some()))
}

/// Rewrites in `statement` what DataFusion cannot plan into calls it can, and returns how many
/// it rewrote:
/// - a cast of a computed name to `regclass` (`CAST(format('%I.%I', s, t) AS regclass)`)
///   becomes a call of [`REGCLASS_CAST`] (casts of a literal or a column are left alone);
/// - `information_schema._pg_expandarray(a)` (a set of `(x, n)` rows, one per element, which
///   pgjdbc's key queries select) becomes `unnest(`[`EXPAND_ARRAY`]`(a))`;
/// - a field of a composite, `(expr).field`, becomes `get_field(expr, 'field')`;
/// - the text of a relation's storage options that psql's `\d+` selects
///   (`array_to_string(c.reloptions || array(select …), ', ')`) becomes `''`: the emulated
///   `pg_class` has no `reloptions`, and no view has storage options.
/// - `array_to_string(nspacl, …)` (psql's `\dn+`) and `array_to_string(typacl, …)`
///   (`\dT+`) become the column, which the emulated `pg_namespace` and `pg_type` keep as
///   text;
/// - `array_to_string(ARRAY(subquery), sep)` (`\dT+`'s enum labels) becomes the subquery's
///   own `string_agg` ([`joined_by_subquery`]);
/// - a scalar subquery that selects one comparison, as a term of a WHERE clause's ANDs and
///   ORs, becomes a correlated `EXISTS` ([`as_exists`]; psql's `\dT`).
pub fn rewrite(statement: &mut Statement) -> usize {
    let mut visitor = Rewrites { rewritten: 0 };
    let _ = statement.visit(&mut visitor);
    visitor.rewritten
}

/// Whether [`rewrite`] would change `statement`.
pub fn needs_rewrite(statement: &Statement) -> bool {
    struct Queries;
    impl Visitor for Queries {
        type Break = ();
        fn pre_visit_query(&mut self, query: &Query) -> ControlFlow<()> {
            if has_exists_to_write(query) {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        }
    }
    let rewrites = Rewrites { rewritten: 0 };
    statement.visit(&mut Queries).is_break()
        || any_expr(statement, |expr| rewrites.rewrite(expr).is_some())
}

/// Whether `found` holds for an expression in `node`, itself or one inside it. A walk of its
/// expressions that stops at the first found: nothing is printed.
fn any_expr(node: &impl Visit, found: impl FnMut(&Expr) -> bool) -> bool {
    struct Finds<F>(F);
    impl<F: FnMut(&Expr) -> bool> Visitor for Finds<F> {
        type Break = ();
        fn pre_visit_expr(&mut self, expr: &Expr) -> ControlFlow<()> {
            if (self.0)(expr) {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        }
    }
    node.visit(&mut Finds(found)).is_break()
}

/// Whether `expr` reads a column named `column` (any case, qualified or not).
fn names_column(expr: &Expr, column: &str) -> bool {
    any_expr(expr, |e| is_column(e, column))
}

/// Whether the last part of a call's name is `name` (any case).
fn named(f: &datafusion::sql::sqlparser::ast::Function, name: &str) -> bool {
    matches!(
        f.name.0.last(),
        Some(ObjectNamePart::Identifier(ident)) if ident.value.eq_ignore_ascii_case(name)
    )
}

/// Whether `statement` names `regclass` anywhere (a cast to it or a call of `to_regclass`), so
/// that the oids must be read before it runs. A walk of its expressions: nothing is printed.
pub fn mentions_regclass(statement: &Statement) -> bool {
    any_expr(statement, |expr| match expr {
        Expr::Cast { data_type, .. } => is_regclass(data_type),
        Expr::Function(f) => named(f, "to_regclass"),
        _ => false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The one statement of `sql`.
    fn parse(sql: &str) -> Statement {
        Parser::parse_sql(&PostgreSqlDialect {}, sql)
            .unwrap()
            .remove(0)
    }

    /// `sql` as its rewrites leave it, checking that they are `n`.
    fn rewritten(sql: &str, n: usize) -> String {
        let mut s = parse(sql);
        assert_eq!(rewrite(&mut s), n, "{sql}");
        s.to_string()
    }

    #[test]
    fn format_renders_as_postgres_does() {
        let f = |fmt: &str, args: &[Option<&str>]| render_format(fmt, args);
        assert_eq!(
            f("%I.%I", &[Some("public"), Some("gmv")]).unwrap(),
            "public.gmv"
        );
        assert_eq!(
            f("%I.%I", &[Some("Mixed"), Some("my table")]).unwrap(),
            "\"Mixed\".\"my table\""
        );
        assert_eq!(f("%I", &[Some("user")]).unwrap(), "\"user\"");
        assert_eq!(f("%I", &[Some("a\"b")]).unwrap(), "\"a\"\"b\"");
        assert_eq!(f("%s", &[Some("int8")]).unwrap(), "int8");
        assert_eq!(
            f("\"%s\".\"%s\"", &[Some("s"), Some("t")]).unwrap(),
            "\"s\".\"t\""
        );
        assert_eq!(f("%s|%L", &[None, None]).unwrap(), "|NULL");
        assert_eq!(f("%L", &[Some("O'Reilly")]).unwrap(), "'O''Reilly'");
        assert_eq!(f("%L", &[Some("a\\b")]).unwrap(), "E'a\\\\b'");
        assert_eq!(f("100%%", &[]).unwrap(), "100%");
        assert_eq!(
            f("%2$s %1$s %s", &[Some("a"), Some("b"), Some("c")]).unwrap(),
            "b a b"
        );
        assert_eq!(
            f("[%5s][%-5s]", &[Some("ab"), Some("cd")]).unwrap(),
            "[   ab][cd   ]"
        );
        assert_eq!(
            f("%s %s", &[Some("a")]).unwrap_err(),
            "too few arguments for format()"
        );
        assert!(f("%I", &[None]).unwrap_err().contains("identifier"));
        assert!(f("%x", &[Some("a")]).unwrap_err().contains("\"x\""));
        assert!(f("abc%", &[]).unwrap_err().contains("unterminated"));
        assert!(f("%0$s", &[Some("a")]).unwrap_err().contains("argument 0"));
    }

    #[test]
    fn names_parse_as_parse_ident_reads_them() {
        assert_eq!(
            parse_name("public.gmv"),
            Some(vec!["public".into(), "gmv".into()])
        );
        assert_eq!(parse_name("GMV"), Some(vec!["gmv".into()]));
        assert_eq!(
            parse_name("\"My \"\"x\"\"\".t"),
            Some(vec!["My \"x\"".into(), "t".into()])
        );
        assert_eq!(parse_name(""), None);
        assert_eq!(parse_name("a..b"), None);
        assert_eq!(parse_name("\"open"), None);
        assert_eq!(parse_name("a b"), None);
    }

    #[test]
    fn only_casts_of_computed_names_are_rewritten() {
        let mut s = parse(
            "SELECT col_description(CAST(CAST(format('%I.%I', CAST(s AS TEXT), t) AS REGCLASS) AS OID), 1), c.oid::regclass, 'x'::regclass FROM c",
        );
        assert_eq!(rewrite(&mut s), 1);
        let text = s.to_string();
        assert!(
            text.contains(&format!(
                "CAST({REGCLASS_CAST}(format('%I.%I', CAST(s AS TEXT), t)) AS OID)"
            )),
            "{text}"
        );
        assert!(text.contains("c.oid::REGCLASS"), "{text}");
        assert!(text.contains("'x'::REGCLASS"), "{text}");
        assert!(mentions_regclass(&parse("SELECT TO_REGCLASS('x')")));
        assert!(mentions_regclass(&parse(
            "SELECT 1 WHERE c.oid = 'x'::pg_catalog.regclass"
        )));
        assert!(!mentions_regclass(&parse("SELECT regclass_col FROM t")));
    }

    #[test]
    fn sizes_are_written_as_postgres_writes_them() {
        // PostgreSQL 15's answers
        for (bytes, text) in [
            (0, "0 bytes"),
            (10_239, "10239 bytes"),
            (10_240, "10 kB"),
            (1_048_576, "1024 kB"),
            (123_456_789, "118 MB"),
            (-123_456_789, "-118 MB"),
            (10_737_418_240, "10 GB"),
            (1_099_511_627_776, "1024 GB"),
            (i64::MAX, "8192 PB"),
            (i64::MIN, "-8192 PB"),
        ] {
            assert_eq!(size_pretty(bytes), text, "{bytes}");
        }
    }

    #[test]
    fn only_the_storage_options_and_schema_privileges_are_rewritten() {
        let sql = "SELECT pg_catalog.array_to_string(c.reloptions || array(select 'toast.' || x from pg_catalog.unnest(tc.reloptions) x), ', '), array_to_string(c.names, ',') FROM c";
        assert!(needs_rewrite(&parse(sql)));
        assert_eq!(
            rewritten(sql, 1),
            "SELECT '', array_to_string(c.names, ',') FROM c"
        );
        assert_eq!(
            rewritten(
                "SELECT pg_catalog.array_to_string(n.nspacl, E'\\n') FROM n",
                1
            ),
            "SELECT n.nspacl FROM n"
        );
    }

    #[test]
    fn an_array_of_a_subquery_joined_becomes_its_string_agg() {
        // psql's `\dT+`, cut short
        let sql = "SELECT pg_catalog.array_to_string(ARRAY(SELECT e.enumlabel FROM pg_catalog.pg_enum e WHERE e.enumtypid = t.oid ORDER BY e.enumsortorder), E'\\n'), pg_catalog.array_to_string(t.typacl, E'\\n') FROM pg_type t";
        assert!(needs_rewrite(&parse(sql)));
        assert_eq!(
            rewritten(sql, 2),
            "SELECT coalesce((SELECT string_agg(CAST(e.enumlabel AS TEXT), E'\\n' ORDER BY e.enumsortorder) FROM pg_catalog.pg_enum e WHERE e.enumtypid = t.oid), ''), t.typacl FROM pg_type t"
        );
        // ordered by position: by the item inside the aggregate (`ORDER BY 1` there would
        // order by the constant)
        assert_eq!(
            rewritten(
                "SELECT array_to_string(ARRAY(SELECT a FROM x ORDER BY 1 DESC), ',')",
                1
            ),
            "SELECT coalesce((SELECT string_agg(CAST(a AS TEXT), ',' ORDER BY a DESC) FROM x), '')"
        );
        // two columns, or a limit, are left as they are
        for sql in [
            "SELECT array_to_string(ARRAY(SELECT a, b FROM x), ',')",
            "SELECT array_to_string(ARRAY(SELECT a FROM x LIMIT 2), ',')",
        ] {
            let mut s = parse(sql);
            assert_eq!(rewrite(&mut s), 0, "{sql}");
        }
    }

    #[test]
    fn an_array_of_a_subquery_becomes_its_array_agg() {
        // psql's `\du`, cut short
        let sql = "SELECT r.rolname, ARRAY(SELECT b.rolname FROM pg_catalog.pg_auth_members m JOIN pg_catalog.pg_roles b ON (m.roleid = b.oid) WHERE m.member = r.oid ORDER BY 1) AS memberof FROM pg_catalog.pg_roles r";
        assert!(needs_rewrite(&parse(sql)));
        assert_eq!(
            rewritten(sql, 1),
            "SELECT r.rolname, coalesce((SELECT array_agg(b.rolname ORDER BY b.rolname) FROM pg_catalog.pg_auth_members m JOIN pg_catalog.pg_roles b ON (m.roleid = b.oid) WHERE m.member = r.oid), make_array()) AS memberof FROM pg_catalog.pg_roles r"
        );
        // an order by the item's alias is by the item; one by a second column cannot be
        assert_eq!(
            rewritten("SELECT ARRAY(SELECT a + 1 AS b FROM x ORDER BY b DESC)", 1),
            "SELECT coalesce((SELECT array_agg(a + 1 ORDER BY a + 1 DESC) FROM x), make_array())"
        );
        let mut s = parse("SELECT ARRAY(SELECT a FROM x ORDER BY 2)");
        assert_eq!(rewrite(&mut s), 0);
        // inside array_to_string it is joined instead (rewritten once, from the outside)
        assert_eq!(
            rewritten("SELECT array_to_string(ARRAY(SELECT a FROM x), ',')", 1),
            "SELECT coalesce((SELECT string_agg(CAST(a AS TEXT), ',') FROM x), '')"
        );
        // two columns, a limit, or a grouping are left as they are
        for sql in [
            "SELECT ARRAY(SELECT a, b FROM x)",
            "SELECT ARRAY(SELECT a FROM x LIMIT 2)",
            "SELECT ARRAY(SELECT a FROM x GROUP BY a)",
        ] {
            let mut s = parse(sql);
            assert!(!needs_rewrite(&s), "{sql}");
            assert_eq!(rewrite(&mut s), 0, "{sql}");
        }
    }

    #[test]
    fn a_comparing_subquery_in_a_where_clause_becomes_exists() {
        // psql's `\dT`, cut short
        let sql = "SELECT t.oid FROM pg_type t WHERE (t.typrelid = 0 OR (SELECT c.relkind = 'c' FROM pg_class c WHERE c.oid = t.typrelid)) AND NOT EXISTS (SELECT 1 FROM pg_type el WHERE el.oid = t.typelem)";
        assert!(needs_rewrite(&parse(sql)));
        assert_eq!(
            rewritten(sql, 1),
            "SELECT t.oid FROM pg_type t WHERE (t.typrelid = 0 OR EXISTS (SELECT 1 FROM pg_class c WHERE (c.oid = t.typrelid) AND (c.relkind = 'c'))) AND NOT EXISTS (SELECT 1 FROM pg_type el WHERE el.oid = t.typelem)"
        );
        // elsewhere, or of another shape, a scalar subquery is left as it is: in the select
        // list its NULL is not false, under NOT neither, and an aggregate always finds a row
        for sql in [
            "SELECT (SELECT c.relkind = 'c' FROM pg_class c WHERE c.oid = t.typrelid) FROM pg_type t",
            "SELECT 1 FROM pg_type t WHERE NOT (SELECT c.relkind = 'c' FROM pg_class c WHERE c.oid = t.typrelid)",
            "SELECT 1 FROM pg_type t WHERE (SELECT count(*) > 0 FROM pg_class c WHERE c.oid = t.typrelid)",
            "SELECT 1 FROM pg_type t WHERE (SELECT c.relname FROM pg_class c WHERE c.oid = t.typrelid) = 'x'",
            "SELECT 1 FROM pg_type t WHERE (SELECT c.relkind = 'c' FROM pg_class c ORDER BY 1 LIMIT 1)",
        ] {
            let mut s = parse(sql);
            assert!(!needs_rewrite(&s), "{sql}");
            assert_eq!(rewrite(&mut s), 0, "{sql}");
        }
    }

    proptest! {
        /// A name `format('%I.%I')` writes reads back as the same two parts, whatever they hold.
        #[test]
        fn quoted_names_parse_back(schema in "[a-zA-Z_ .\"$0-9]{1,12}", name in "[a-zA-Z_ .\"$0-9]{1,12}") {
            let text = render_format("%I.%I", &[Some(&schema), Some(&name)]).unwrap();
            let parts = parse_name(&text).unwrap();
            prop_assert_eq!(parts, vec![schema, name]);
        }

        /// format() never panics, whatever the format string and arguments.
        #[test]
        fn format_takes_any_input(fmt in ".{0,40}", args in proptest::collection::vec(proptest::option::of(".{0,10}"), 0..4)) {
            let args: Vec<Option<&str>> = args.iter().map(|a| a.as_deref()).collect();
            let _ = render_format(&fmt, &args);
        }
    }
}
