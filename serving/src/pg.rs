//! SQL over the PostgreSQL wire protocol, for BI tools (psql, Grafana, Metabase, Superset).
//!
//! The SQL engine is DataFusion, served by `datafusion-postgres` (pgwire underneath, with its
//! `pg_catalog` and `information_schema` emulation for the schema browsers of BI tools). Each
//! view is a table: `bucket` (UTC timestamp), its dimensions, its measures, `_source`,
//! `_batch_version`, and each measure's binary state as `<measure>_state`. A scan reads the
//! view merged from both layers, exactly as the HTTP API does ([`crate::query::merged`]), for
//! the time range its `WHERE` gives on `bucket`.
//!
//! Sums, counts, minima and maxima roll up with SQL's own `sum`, `min` and `max`. Distinct
//! counts, means and top-k lists do not: they are merged from their states with the
//! aggregate functions [`STATE_FUNCTIONS`] registers, so `distinct_count_merge(users_state)`
//! over a day of minute buckets is the day's distinct count, not a sum of minutes.
//!
//! Read-only: statements other than queries, `SET`/`SHOW`, transactions and cursors are
//! refused with SQLSTATE `25006` (read-only SQL transaction).

use std::collections::HashMap;
use std::fmt;
use std::ops::ControlFlow;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{Array, ArrayRef, BinaryArray, Int64Array};
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::catalog::{MemTable, Session, TableProvider};
use datafusion::common::{DataFusionError, ParamValues, ScalarValue};
use datafusion::datasource::TableType;
use datafusion::execution::SessionStateBuilder;
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, Between, BinaryExpr, Expr, LogicalPlan, Operator,
    TableProviderFilterPushDown, Volatility, create_udaf,
};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion::sql::parser::Statement as DfStatement;
use datafusion::sql::sqlparser::ast::{SetExpr, Statement, visit_relations};
use datafusion_postgres::DfSessionService;
use datafusion_postgres::QueryHook;
use datafusion_postgres::arrow_pg::datatypes::df::encode_dataframe;
use datafusion_postgres::auth::AuthManager;
use datafusion_postgres::datafusion_pg_catalog::pg_catalog::setup_pg_catalog;
use datafusion_postgres::hooks::HookClient;
use datafusion_postgres::pgwire::api::METADATA_USER;
use datafusion_postgres::pgwire::api::auth::noop::NoopStartupHandler;
use datafusion_postgres::pgwire::api::auth::sasl::SASLAuthStartupHandler;
use datafusion_postgres::pgwire::api::auth::sasl::scram::{ScramAuth, random_nonce};
use datafusion_postgres::pgwire::api::auth::{
    AuthSource, DefaultServerParameterProvider, LoginInfo, Password, StartupHandler,
};
use datafusion_postgres::pgwire::api::cancel::{CancelHandler, DefaultCancelHandler};
use datafusion_postgres::pgwire::api::portal::Format;
use datafusion_postgres::pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use datafusion_postgres::pgwire::api::results::Response;
use datafusion_postgres::pgwire::api::{ClientInfo, ConnectionManager, PgWireServerHandlers};
use datafusion_postgres::pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use datafusion_postgres::pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};
use datafusion_postgres::pgwire::tokio::TlsAcceptor;
use datafusion_postgres::pgwire::types::format::FormatOptions;
use duet_config::measure::MeasureKind;
use duet_config::time::MAX_TIME_MS;
use duet_config::{State, ViewSpec};
use duet_speed::ViewStore;
use futures::Sink;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::auth::{Grant, Tokens};
use crate::error::{Error, Result};
use crate::metrics::{RouteKey, ServingMetrics};
use crate::query::{LakeReaders, merged};
use crate::rollup::{Rollup, RollupSpec};
use crate::sql_limits::SqlGuard;
#[cfg(test)]
use crate::sql_limits::SqlLimits;
use crate::table;

pub mod functions;
pub mod information_schema;
pub mod subqueries;
pub mod typed_arrays;

use functions::RelationOids;
use information_schema::InformationSchema;

/// The catalog (database) name the views are served under.
pub const CATALOG: &str = "duet";

/// The aggregate functions that merge state columns: name and what they return.
pub const STATE_FUNCTIONS: &[(&str, &str)] = &[
    (
        "distinct_count_merge(state)",
        "bigint: the distinct count of the merged states",
    ),
    ("avg_merge(state)", "double precision: the merged mean"),
    (
        "top_k_merge(state, k)",
        "text: the k heaviest keys of the merged states, as JSON [{\"key\", \"value\"}] (k: the view's when NULL)",
    ),
    (
        "state_merge(state)",
        "text: any measure's merged value, as the HTTP API renders it (a decimal as its digits, a top-k as JSON)",
    ),
];

/// A view as a DataFusion table: every scan reads both layers, merged.
pub struct ViewTable {
    view: ViewSpec,
    lake: Arc<LakeReaders>,
    store: Arc<dyn ViewStore>,
    schema: SchemaRef,
    /// Most rows one scan may read (the HTTP API's limit, [`crate::http::MAX_ROWS_READ`]).
    max_rows: usize,
}

impl fmt::Debug for ViewTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ViewTable")
            .field("view", &self.view.name)
            .finish()
    }
}

impl ViewTable {
    /// The table of `view`.
    pub fn new(view: ViewSpec, lake: Arc<LakeReaders>, store: Arc<dyn ViewStore>) -> ViewTable {
        let dims: Vec<&str> = view.dimensions.iter().map(String::as_str).collect();
        let schema = Arc::new(table::schema(&view, &dims, true, Default::default()));
        ViewTable {
            view,
            lake,
            store,
            schema,
            max_rows: crate::http::MAX_ROWS_READ,
        }
    }

    /// The same table with another limit on the rows one scan may read.
    pub fn with_max_rows(self, max_rows: usize) -> ViewTable {
        ViewTable { max_rows, ..self }
    }
}

fn external(e: impl std::error::Error + Send + Sync + 'static) -> DataFusionError {
    DataFusionError::External(Box::new(e))
}

/// A time literal as epoch ms: timestamps of any unit, dates, RFC 3339 text.
fn literal_ms(v: &ScalarValue) -> Option<i64> {
    match v {
        ScalarValue::TimestampSecond(Some(s), _) => s.checked_mul(1000),
        ScalarValue::TimestampMillisecond(Some(ms), _) => Some(*ms),
        ScalarValue::TimestampMicrosecond(Some(us), _) => Some(us.div_euclid(1000)),
        ScalarValue::TimestampNanosecond(Some(ns), _) => Some(ns.div_euclid(1_000_000)),
        ScalarValue::Date32(Some(d)) => i64::from(*d).checked_mul(86_400_000),
        ScalarValue::Date64(Some(ms)) => Some(*ms),
        ScalarValue::Utf8(Some(t))
        | ScalarValue::LargeUtf8(Some(t))
        | ScalarValue::Utf8View(Some(t)) => chrono::DateTime::parse_from_rfc3339(t)
            .ok()
            .map(|t| t.timestamp_millis()),
        _ => None,
    }
}

/// Whether `e` is the `bucket` column (perhaps cast).
fn is_bucket(e: &Expr) -> bool {
    match e {
        Expr::Column(c) => c.name == "bucket",
        Expr::Cast(c) => is_bucket(&c.expr),
        Expr::TryCast(c) => is_bucket(&c.expr),
        _ => false,
    }
}

fn literal_of(e: &Expr) -> Option<i64> {
    match e {
        Expr::Literal(v, _) => literal_ms(v),
        Expr::Cast(c) => literal_of(&c.expr),
        _ => None,
    }
}

/// How far ahead of now a scan reads: no bucket can lie further (events more than their
/// source's `max_future` ahead are quarantined, and no config sets it near a year).
pub const SCAN_HORIZON_MS: i64 = 366 * 86_400_000;

/// The range a scan reads at `now`: `[0, now + SCAN_HORIZON_MS)` narrowed by the filters.
/// Without the horizon an unbounded query would ask the lake for every day up to year 9999.
fn scan_range(filters: &[Expr], now: i64) -> (i64, i64) {
    let (mut from, mut to) = (0, MAX_TIME_MS.min(now.saturating_add(SCAN_HORIZON_MS)));
    for f in filters {
        narrow(f, &mut from, &mut to);
    }
    (from, to)
}

/// Narrows `[from, to)` by the bounds a filter puts on `bucket` (conjunctions only).
fn narrow(e: &Expr, from: &mut i64, to: &mut i64) {
    match e {
        Expr::BinaryExpr(BinaryExpr {
            left,
            op: Operator::And,
            right,
        }) => {
            narrow(left, from, to);
            narrow(right, from, to);
        }
        Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
            let (op, t) = if is_bucket(left) {
                (*op, literal_of(right))
            } else if is_bucket(right) {
                let flipped = match op {
                    Operator::Lt => Operator::Gt,
                    Operator::LtEq => Operator::GtEq,
                    Operator::Gt => Operator::Lt,
                    Operator::GtEq => Operator::LtEq,
                    other => *other,
                };
                (flipped, literal_of(left))
            } else {
                return;
            };
            let Some(t) = t else { return };
            match op {
                Operator::Gt | Operator::GtEq => *from = (*from).max(t),
                Operator::Lt => *to = (*to).min(t),
                Operator::LtEq => *to = (*to).min(t.saturating_add(1)),
                Operator::Eq => {
                    *from = (*from).max(t);
                    *to = (*to).min(t.saturating_add(1));
                }
                _ => {}
            }
        }
        Expr::Between(Between {
            expr,
            negated: false,
            low,
            high,
        }) if is_bucket(expr) => {
            if let Some(t) = literal_of(low) {
                *from = (*from).max(t);
            }
            if let Some(t) = literal_of(high) {
                *to = (*to).min(t.saturating_add(1));
            }
        }
        _ => {}
    }
}

#[async_trait]
impl TableProvider for ViewTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> datafusion::common::Result<Vec<TableProviderFilterPushDown>> {
        // the range is read from the filters; DataFusion still applies every one of them
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> datafusion::common::Result<Arc<dyn ExecutionPlan>> {
        let view = &self.view;
        let (from, to) = scan_range(filters, duet_speed::now_ms());
        let dims: Vec<&str> = view.dimensions.iter().map(String::as_str).collect();
        let (rows, batch_version) = if from >= to {
            (Vec::new(), None)
        } else {
            let (from, to) = (
                view.bucket_of(from),
                view.bucket_of(to - 1).saturating_add(view.bucket_ms),
            );
            // the read is bounded in time and in rows, as over HTTP
            let limit = std::time::Duration::from_secs(crate::http::TIME_LIMIT_S);
            let m = tokio::time::timeout(
                limit,
                merged(&self.lake, self.store.as_ref(), view, from, to),
            )
            .await
            .map_err(|_| external(Error::Timeout(crate::http::TIME_LIMIT_S)))?
            .map_err(external)?;
            if m.rows.len() > self.max_rows {
                return Err(external(Error::TooCostly(format!(
                    "the query reads {} rows of `{}` (buckets × dimension values), more than the {} one query may: bound it with WHERE bucket >= … AND bucket < …",
                    m.rows.len(),
                    view.name,
                    self.max_rows
                ))));
            }
            let rollup = Rollup::plan(view, &RollupSpec::default()).map_err(external)?;
            (
                rollup.apply(view, m.rows).map_err(external)?.rows,
                m.batch_version,
            )
        };
        let batch =
            table::record_batch(view, &dims, &rows, batch_version, true, Default::default())
                .map_err(external)?;
        MemTable::try_new(self.schema.clone(), vec![vec![batch]])?
            .scan(state, projection, filters, limit)
            .await
    }
}

/// Which state-merging function an accumulator computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Merge {
    Distinct,
    Avg,
    TopK,
    Any,
}

impl Merge {
    fn name(self) -> &'static str {
        match self {
            Merge::Distinct => "distinct_count_merge",
            Merge::Avg => "avg_merge",
            Merge::TopK => "top_k_merge",
            Merge::Any => "state_merge",
        }
    }
}

/// The measure behind each state column's fingerprint ([`table::measure_fingerprint`]).
pub type StateKinds = HashMap<u64, MeasureKind>;

/// Merges binary states (one state per value) with the measure algebra.
#[derive(Debug)]
struct StateAccumulator {
    merge: Merge,
    kinds: Arc<StateKinds>,
    /// The merged state and the fingerprint of the first state merged.
    acc: Option<(u64, State)>,
    k: Option<usize>,
}

impl StateAccumulator {
    fn add(&mut self, bytes: &[u8]) -> datafusion::common::Result<()> {
        let not_state = || {
            DataFusionError::Execution(format!(
                "{}: not a state of this deployment's views (pass a `<measure>_state` column)",
                self.merge.name()
            ))
        };
        let fingerprint = duet_config::codec::fingerprint_of(bytes).ok_or_else(not_state)?;
        let kind = self.kinds.get(&fingerprint).ok_or_else(not_state)?;
        let states = duet_config::codec::decode(fingerprint, bytes).map_err(external)?;
        for s in states {
            match &mut self.acc {
                None => self.acc = Some((fingerprint, s)),
                Some((first, acc)) => {
                    if self.kinds.get(first) != Some(kind) {
                        return Err(DataFusionError::Execution(format!(
                            "{}: states of different measures cannot be merged ({} and {})",
                            self.merge.name(),
                            self.kinds.get(first).map_or("?", MeasureKind::name),
                            kind.name()
                        )));
                    }
                    acc.merge(s).map_err(external)?;
                }
            }
        }
        Ok(())
    }

    fn add_all(&mut self, values: &ArrayRef) -> datafusion::common::Result<()> {
        let arr = values
            .as_any()
            .downcast_ref::<BinaryArray>()
            .ok_or_else(|| DataFusionError::Execution("a state column is binary".into()))?;
        for i in 0..arr.len() {
            if arr.is_valid(i) {
                self.add(arr.value(i))?;
            }
        }
        Ok(())
    }

    fn take_k(&mut self, k: Option<&ArrayRef>) {
        if self.k.is_none()
            && let Some(k) = k.and_then(|k| k.as_any().downcast_ref::<Int64Array>())
        {
            self.k = (0..k.len())
                .find(|i| k.is_valid(*i))
                .and_then(|i| usize::try_from(k.value(i)).ok());
        }
    }
}

impl Accumulator for StateAccumulator {
    fn update_batch(&mut self, values: &[ArrayRef]) -> datafusion::common::Result<()> {
        if let Some(values) = values.first() {
            self.add_all(values)?;
        }
        self.take_k(values.get(1));
        Ok(())
    }

    fn evaluate(&mut self) -> datafusion::common::Result<ScalarValue> {
        let Some((fingerprint, state)) = &self.acc else {
            return Ok(match self.merge {
                Merge::Distinct => ScalarValue::Int64(Some(0)),
                Merge::Avg => ScalarValue::Float64(None),
                Merge::TopK | Merge::Any => ScalarValue::Utf8(None),
            });
        };
        let Some(kind) = self.kinds.get(fingerprint) else {
            return Ok(ScalarValue::Null);
        };
        let wrong = || {
            DataFusionError::Execution(format!(
                "{} does not merge {} states{}",
                self.merge.name(),
                kind.name(),
                if self.merge == Merge::Any {
                    ""
                } else {
                    " (state_merge merges any measure)"
                }
            ))
        };
        Ok(match (self.merge, kind) {
            (Merge::Distinct, MeasureKind::DistinctCount) => match state {
                State::Distinct(d) => ScalarValue::Int64(i64::try_from(d.estimate()).ok()),
                _ => return Err(wrong()),
            },
            (Merge::Avg, MeasureKind::Avg(_)) => ScalarValue::Float64(kind.render(state).as_f64()),
            (Merge::TopK, MeasureKind::TopK { k, weight }) => {
                let kind = MeasureKind::TopK {
                    k: self.k.unwrap_or(*k),
                    weight: *weight,
                };
                ScalarValue::Utf8(Some(kind.render(state).to_string()))
            }
            (Merge::Any, _) => ScalarValue::Utf8(Some(match kind.render(state) {
                serde_json::Value::String(s) => s,
                serde_json::Value::Null => return Ok(ScalarValue::Utf8(None)),
                other => other.to_string(),
            })),
            _ => return Err(wrong()),
        })
    }

    fn size(&self) -> usize {
        std::mem::size_of_val(self) + 64
    }

    fn state(&mut self) -> datafusion::common::Result<Vec<ScalarValue>> {
        let bytes = self
            .acc
            .as_ref()
            .map(|(fp, s)| duet_config::codec::encode(*fp, std::slice::from_ref(s)));
        Ok(vec![
            ScalarValue::Binary(bytes),
            ScalarValue::Int64(self.k.and_then(|k| i64::try_from(k).ok())),
        ])
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> datafusion::common::Result<()> {
        if let Some(values) = states.first() {
            self.add_all(values)?;
        }
        self.take_k(states.get(1));
        Ok(())
    }
}

fn state_udaf(
    merge: Merge,
    kinds: &Arc<StateKinds>,
    inputs: Vec<DataType>,
    returns: DataType,
) -> AggregateUDF {
    let kinds = kinds.clone();
    create_udaf(
        merge.name(),
        inputs,
        Arc::new(returns),
        Volatility::Immutable,
        Arc::new(move |_| {
            Ok(Box::new(StateAccumulator {
                merge,
                kinds: kinds.clone(),
                acc: None,
                k: None,
            }))
        }),
        Arc::new(vec![DataType::Binary, DataType::Int64]),
    )
}

/// The state-merging aggregate functions over the state columns of `views` (see
/// [`STATE_FUNCTIONS`]).
pub fn state_functions(views: &[ViewSpec]) -> Vec<AggregateUDF> {
    let kinds: StateKinds = views
        .iter()
        .flat_map(|v| {
            let fp = v.definition().fingerprint_u64();
            v.measures
                .iter()
                .enumerate()
                .map(move |(i, m)| (table::measure_fingerprint(fp, i), m.kind.clone()))
        })
        .collect();
    let kinds = Arc::new(kinds);
    vec![
        state_udaf(
            Merge::Distinct,
            &kinds,
            vec![DataType::Binary],
            DataType::Int64,
        ),
        state_udaf(
            Merge::Avg,
            &kinds,
            vec![DataType::Binary],
            DataType::Float64,
        ),
        state_udaf(
            Merge::TopK,
            &kinds,
            vec![DataType::Binary, DataType::Int64],
            DataType::Utf8,
        ),
        state_udaf(Merge::Any, &kinds, vec![DataType::Binary], DataType::Utf8),
    ]
}

/// The SQL session: every view of `views` as a table of the `duet` catalog's `public`
/// schema, the state-merging functions, and the `pg_catalog` emulation.
pub fn session(
    views: &[ViewSpec],
    lake: Arc<LakeReaders>,
    store: Arc<dyn ViewStore>,
) -> Result<SessionContext> {
    session_with(views, lake, store, SqlGuard::default())
}

/// [`session`] with other limits on what one statement may take, counting statements in
/// `guard.metrics`.
pub fn session_with(
    views: &[ViewSpec],
    lake: Arc<LakeReaders>,
    store: Arc<dyn ViewStore>,
    guard: SqlGuard,
) -> Result<SessionContext> {
    // DataFusion's own information schema is off: ours (PostgreSQL's names and columns) is
    // registered below in its place
    let config = SessionConfig::new()
        .with_information_schema(false)
        .with_default_catalog_and_schema(CATALOG, "public")
        .with_extension(Arc::new(RelationOids::default()));
    let state = SessionStateBuilder::new()
        .with_config(config)
        .with_default_features()
        .with_physical_optimizer_rule(Arc::new(guard))
        .build();
    let ctx = SessionContext::new_with_state(state);
    for v in views {
        ctx.register_table(
            v.name.as_str(),
            Arc::new(ViewTable::new(v.clone(), lake.clone(), store.clone())),
        )
        .map_err(|e| Error::Sql(Box::new(e)))?;
    }
    for f in state_functions(views) {
        ctx.register_udaf(f);
    }
    // the manager itself, not in an `Arc`: datafusion-pg-catalog 0.19's provider impl for
    // `Arc<T>` calls itself, so reading `pg_roles` through one recursed until the stack
    // overflowed and took the process down
    setup_pg_catalog(&ctx, CATALOG, AuthManager::default()).map_err(Error::Sql)?;
    let catalog = ctx.catalog(CATALOG).ok_or_else(|| {
        Error::Sql(Box::new(DataFusionError::Configuration(format!(
            "catalog `{CATALOG}` is missing"
        ))))
    })?;
    if let Some(pg_catalog) = catalog.schema("pg_catalog") {
        catalog
            .register_schema(
                "pg_catalog",
                Arc::new(typed_arrays::TypedArrays::new(pg_catalog)),
            )
            .map_err(|e| Error::Sql(Box::new(e)))?;
    }
    catalog
        .register_schema(
            information_schema::NAME,
            Arc::new(InformationSchema::new(ctx.state().catalog_list().clone())),
        )
        .map_err(|e| Error::Sql(Box::new(e)))?;
    let oids = ctx
        .state()
        .config()
        .get_extension::<RelationOids>()
        .unwrap_or_default();
    for f in functions::functions(&oids) {
        ctx.register_udf(f);
    }
    Ok(ctx)
}

/// Refuses every statement that is not a query, `SET`/`SHOW`, a transaction or a cursor
/// statement, with SQLSTATE 25006; with clients configured, refuses a statement naming a view
/// its user may not read (42501) or over the user's rate (53400), as the HTTP API does.
/// Counts the statements it sees (simple queries and executions of prepared ones) in
/// `duet_serving_requests_total{protocol="sql"}`.
struct Guard {
    metrics: Arc<ServingMetrics>,
    tokens: Arc<Tokens>,
    views: Vec<String>,
}

fn pg_error(code: &str, message: String) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(
        "ERROR".to_string(),
        code.to_string(),
        message,
    )))
}

/// The user a client logged in as.
fn user_of(client: &(impl ClientInfo + ?Sized)) -> String {
    client
        .metadata()
        .get(METADATA_USER)
        .cloned()
        .unwrap_or_default()
}

/// The table a relation names: its last part, unquoted (views are found by it, whatever
/// schema qualifies it).
fn relation_name(name: &datafusion::sql::sqlparser::ast::ObjectName) -> String {
    name.0
        .last()
        .map(|p| p.to_string().trim_matches('"').to_string())
        .unwrap_or_default()
}

impl Guard {
    /// Refuses a statement that names a view `grant` does not cover.
    fn scope(&self, statement: &Statement, grant: &Grant) -> Option<PgWireError> {
        grant.views.as_ref()?;
        let mut denied = None;
        let _ = visit_relations(statement, |name| {
            let table = relation_name(name);
            if let Some(view) = self
                .views
                .iter()
                .find(|v| v.eq_ignore_ascii_case(&table) && !grant.allows(v))
            {
                denied = Some(view.clone());
                return ControlFlow::Break(());
            }
            ControlFlow::Continue(())
        });
        denied.map(|view| {
            pg_error(
                "42501",
                format!("user `{}` may not read view `{view}`", grant.name),
            )
        })
    }

    /// Checks a statement about to run for `user`: read-only, in scope, within rate.
    fn check(&self, statement: &Statement, user: &str) -> Option<PgWireError> {
        let refused = refusal(statement).or_else(|| match self.tokens.admit(user) {
            Ok(grant) => self.scope(statement, &grant),
            Err(Error::TooManyRequests {
                name,
                retry_after_s,
            }) => Some(pg_error(
                "53400",
                format!("`{name}` is over its request rate: retry after {retry_after_s} s"),
            )),
            Err(e) => Some(pg_error("28000", e.to_string())),
        });
        let kind = match statement {
            _ if refused.is_some() => "refused",
            // counted with its latency when it is done (crate::sql_limits)
            Statement::Query(_) => return None,
            _ => "other",
        };
        self.metrics.count(
            &RouteKey {
                protocol: "sql",
                route: kind.to_string(),
            },
            match &refused {
                Some(PgWireError::UserError(e)) => e.code.as_str(),
                Some(_) => "error",
                None => "received",
            },
        );
        refused
    }
}

fn refusal(statement: &Statement) -> Option<PgWireError> {
    let allowed = match statement {
        Statement::Query(q) => !matches!(q.body.as_ref(), SetExpr::Select(s) if s.into.is_some()),
        Statement::Explain { .. }
        | Statement::ExplainTable { .. }
        | Statement::Set(_)
        | Statement::ShowVariable { .. }
        | Statement::ShowVariables { .. }
        | Statement::ShowTables { .. }
        | Statement::ShowColumns { .. }
        | Statement::StartTransaction { .. }
        | Statement::Commit { .. }
        | Statement::Rollback { .. }
        | Statement::Declare { .. }
        | Statement::Fetch { .. }
        | Statement::Close { .. }
        | Statement::Discard { .. }
        | Statement::Deallocate { .. } => true,
        _ => false,
    };
    (!allowed).then(|| {
        let first: String = statement
            .to_string()
            .split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join(" ");
        PgWireError::UserError(Box::new(ErrorInfo::new(
            "ERROR".to_string(),
            "25006".to_string(),
            format!("Duet serves views read-only: `{first} …` is refused; use SELECT"),
        )))
    })
}

#[async_trait]
impl QueryHook for Guard {
    async fn handle_simple_query(
        &self,
        statement: &Statement,
        ctx: &SessionContext,
        client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        if let Some(refused) = self.check(statement, &user_of(client)) {
            return Some(Err(refused));
        }
        match prepared(statement, ctx).await {
            Err(e) => Some(Err(e)),
            Ok(None) => None,
            Ok(Some(rewritten)) => Some(run_simple(&rewritten, ctx, client).await),
        }
    }

    async fn handle_extended_parse_query(
        &self,
        statement: &Statement,
        ctx: &SessionContext,
        client: &(dyn ClientInfo + Send + Sync),
    ) -> Option<PgWireResult<LogicalPlan>> {
        let scoped = || {
            let grant = self.tokens.grant_of(&user_of(client))?;
            self.scope(statement, &grant)
        };
        if let Some(refused) = refusal(statement).or_else(scoped) {
            return Some(Err(refused));
        }
        match prepared(statement, ctx).await {
            Err(e) => Some(Err(e)),
            Ok(None) => None,
            Ok(Some(rewritten)) => Some(
                ctx.state()
                    .statement_to_plan(DfStatement::Statement(Box::new(rewritten)))
                    .await
                    .map_err(|e| PgWireError::ApiError(Box::new(e))),
            ),
        }
    }

    async fn handle_extended_query(
        &self,
        statement: &Statement,
        _plan: &LogicalPlan,
        _params: &ParamValues,
        _ctx: &SessionContext,
        client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        self.check(statement, &user_of(client)).map(Err)
    }
}

/// Makes `statement` ready to run: when it names `regclass`, reads the relations' oids (for
/// `to_regclass` and casts to `regclass`); returns the statement rewritten where DataFusion
/// could not plan it ([`functions::rewrite`]), or `None` when it runs as it is.
async fn prepared(statement: &Statement, ctx: &SessionContext) -> PgWireResult<Option<Statement>> {
    if functions::mentions_regclass(statement)
        && let Some(oids) = ctx.state().config().get_extension::<RelationOids>()
    {
        oids.refresh(ctx)
            .await
            .map_err(|e| PgWireError::ApiError(Box::new(e)))?;
    }
    if !functions::needs_rewrite(statement) {
        return Ok(None);
    }
    let mut rewritten = statement.clone();
    functions::rewrite(&mut rewritten);
    Ok(Some(rewritten))
}

/// Runs a rewritten statement of the simple protocol and encodes its rows as
/// `datafusion-postgres` does for the statements it runs itself.
async fn run_simple(
    statement: &Statement,
    ctx: &SessionContext,
    client: &mut dyn HookClient,
) -> PgWireResult<Response> {
    let df = ctx
        .sql(&statement.to_string())
        .await
        .map_err(|e| PgWireError::ApiError(Box::new(e)))?;
    let options = Arc::new(FormatOptions::from_client_metadata(client.metadata()));
    encode_dataframe(df, &Format::UnifiedText, Some(options))
        .await
        .map(Response::Query)
}

/// The stored passwords, for SCRAM-SHA-256. An unknown user gets a made-up salt and secret,
/// so that the exchange fails at its end, as a wrong password does, and does not tell which
/// users exist.
#[derive(Debug)]
struct Passwords {
    tokens: Arc<Tokens>,
}

#[async_trait]
impl AuthSource for Passwords {
    async fn get_password(&self, login: &LoginInfo) -> PgWireResult<Password> {
        match login.user().and_then(|u| self.tokens.pg_secret(u)) {
            Some(s) => Ok(Password::new(Some(s.salt.clone()), s.salted.clone())),
            None => {
                let made_up = random_nonce().into_bytes();
                Ok(Password::new(
                    Some(made_up[..16].to_vec()),
                    made_up[..].repeat(2)[..32].to_vec(),
                ))
            }
        }
    }
}

/// How a connection logs in: without a password when no clients are configured, else by
/// SCRAM-SHA-256 against [`Passwords`].
enum Login {
    Open(Startup),
    Scram(Box<SASLAuthStartupHandler<DefaultServerParameterProvider>>),
}

#[async_trait]
impl StartupHandler for Login {
    async fn on_startup<C>(
        &self,
        client: &mut C,
        message: PgWireFrontendMessage,
    ) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: fmt::Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        match self {
            Login::Open(h) => h.on_startup(client, message).await,
            Login::Scram(h) => h.on_startup(client, message).await,
        }
    }
}

struct Startup {
    connections: Arc<ConnectionManager>,
}

#[async_trait]
impl NoopStartupHandler for Startup {
    fn connection_manager(&self) -> Option<Arc<ConnectionManager>> {
        Some(self.connections.clone())
    }
}

/// The pgwire handlers of one connection: DataFusion's session service behind the guard, its
/// subqueries over views protected from the catalog emulation's parser rule
/// ([`subqueries::Protected`]).
struct Handlers {
    service: Arc<subqueries::Protected>,
    startup: Arc<Login>,
    cancel: Arc<DefaultCancelHandler>,
}

impl PgWireServerHandlers for Handlers {
    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        self.service.clone()
    }

    fn extended_query_handler(&self) -> Arc<impl ExtendedQueryHandler> {
        self.service.clone()
    }

    fn startup_handler(&self) -> Arc<impl StartupHandler> {
        self.startup.clone()
    }

    fn cancel_handler(&self) -> Arc<impl CancelHandler> {
        self.cancel.clone()
    }
}

/// What the PostgreSQL port serves with besides its session: counters, clients, TLS.
#[derive(Clone, Default)]
pub struct PgOptions {
    /// Where statements are counted.
    pub metrics: Arc<ServingMetrics>,
    /// The clients that may log in (none: anyone, without a password).
    pub tokens: Arc<Tokens>,
    /// TLS, offered to clients that ask for it (`sslmode=require`); none: plain TCP only.
    pub tls: Option<TlsAcceptor>,
}

impl fmt::Debug for PgOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgOptions")
            .field("tokens", &self.tokens)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

/// Serves SQL over the PostgreSQL protocol on `listener` until `shutdown` turns true. With
/// clients configured in `options.tokens` every login needs its password (SCRAM-SHA-256) and
/// every statement is held to the client's views and rate.
pub async fn serve(
    listener: TcpListener,
    ctx: SessionContext,
    options: PgOptions,
    mut shutdown: watch::Receiver<bool>,
) -> Result<()> {
    use datafusion_postgres::hooks::{
        cursor::CursorStatementHook, set_show::SetShowHook, transactions::TransactionStatementHook,
    };
    let views: Vec<String> = ctx
        .catalog(CATALOG)
        .and_then(|c| c.schema("public"))
        .map(|s| s.table_names())
        .unwrap_or_default();
    let hooks: Vec<Arc<dyn QueryHook>> = vec![
        Arc::new(Guard {
            metrics: options.metrics.clone(),
            tokens: options.tokens.clone(),
            views: views.clone(),
        }),
        Arc::new(CursorStatementHook),
        Arc::new(SetShowHook),
        Arc::new(TransactionStatementHook),
    ];
    let connections = Arc::new(ConnectionManager::new());
    let service = Arc::new(subqueries::Protected::new(
        Arc::new(DfSessionService::new_with_hooks(Arc::new(ctx), hooks)),
        views,
    ));
    let cancel = Arc::new(DefaultCancelHandler::new(connections.clone()));
    let passwords: Arc<dyn AuthSource> = Arc::new(Passwords {
        tokens: options.tokens.clone(),
    });
    // the SASL handler keeps its exchange's state: one per connection
    let handlers = move || {
        let startup = if options.tokens.enabled() {
            Login::Scram(Box::new(
                SASLAuthStartupHandler::new(Arc::new(DefaultServerParameterProvider::default()))
                    .with_scram(ScramAuth::new(passwords.clone()))
                    .with_connection_manager(connections.clone()),
            ))
        } else {
            Login::Open(Startup {
                connections: connections.clone(),
            })
        };
        Handlers {
            service: service.clone(),
            startup: Arc::new(startup),
            cancel: cancel.clone(),
        }
    };
    let addr = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let stop = async move {
        let _ = shutdown.wait_for(|s| *s).await;
    };
    tokio::pin!(stop);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((socket, peer)) => {
                    let (handlers, tls) = (handlers(), options.tls.clone());
                    tokio::spawn(async move {
                        if let Err(e) = datafusion_postgres::pgwire::tokio::process_socket(socket, tls, handlers).await {
                            tracing::debug!(%peer, error = %e, "PostgreSQL connection ended with an error.");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(addr = %addr, error = %e, "Accepting a PostgreSQL connection failed.");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
            () = &mut stop => return Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::fixture;
    use proptest::strategy::Strategy as _;

    /// A PostgreSQL port over the test deployment; its port and its stop switch.
    async fn server(dir: &std::path::Path) -> (u16, watch::Sender<bool>) {
        server_with(dir, PgOptions::default()).await
    }

    async fn server_with(dir: &std::path::Path, options: PgOptions) -> (u16, watch::Sender<bool>) {
        let (state, _) = fixture(dir).await;
        let ctx = session(&state.cfg.views, state.lake.clone(), state.store.clone()).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (tx, rx) = watch::channel(false);
        tokio::spawn(serve(listener, ctx, options, rx));
        (port, tx)
    }

    /// What Debian's `psql` prints for `sql` (unaligned, tuples only): Ok(stdout) or
    /// Err(stderr).
    async fn psql(port: u16, sql: &str) -> std::result::Result<String, String> {
        psql_as(port, "duet", &[], &["-c", sql]).await
    }

    /// `psql` as `user` with libpq's environment `env` (`PGPASSWORD`, `PGSSLMODE`, …) and
    /// `args` (`-c` statements).
    async fn psql_as(
        port: u16,
        user: &str,
        env: &[(&str, &str)],
        args: &[&str],
    ) -> std::result::Result<String, String> {
        let user = user.to_string();
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let out = tokio::task::spawn_blocking(move || {
            std::process::Command::new("psql")
                .args([
                    "-X",
                    "-w",
                    "-A",
                    "-t",
                    "-v",
                    "ON_ERROR_STOP=1",
                    "-v",
                    "VERBOSITY=verbose",
                    "-h",
                    "127.0.0.1",
                    "-d",
                    "duet",
                ])
                .arg("-U")
                .arg(&user)
                .arg("-p")
                .arg(port.to_string())
                .args(&args)
                .env("PGCONNECT_TIMEOUT", "10")
                .env("PGSSLMODE", "disable")
                .env_remove("PGPASSWORD")
                .envs(env)
                .output()
                .expect("psql runs (Debian's postgresql-client: ./scripts/setup.sh installs it)")
        })
        .await
        .unwrap();
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    const HOUR2: &str = "bucket >= '1970-01-01T01:00:00Z' AND bucket < '1970-01-01T02:00:00Z'";

    /// psql's verbose `\d+ VIEW`, `\dt+` and `\dn+`, every query they send: the one of the
    /// storage options builds an array from a subquery, which DataFusion does not plan (it
    /// failed with "Invalid function 'array'"); the list's sizes and descriptions call
    /// `pg_size_pretty`, `pg_table_size` and `obj_description` ("Invalid function
    /// 'pg_size_pretty'"); a schema's privileges are `array_to_string` of a column the
    /// emulation keeps as text (`nspacl`).
    #[tokio::test]
    async fn psql_describes_views_verbosely() {
        let dir = tempfile::tempdir().unwrap();
        let (port, _stop) = server(dir.path()).await;
        // schema, name, type, owner, persistence; access method, size and description empty
        assert_eq!(
            psql(port, "\\dt+").await.unwrap(),
            "public|buyers|table|postgres|permanent|||\npublic|gmv|table|postgres|permanent|||\n"
        );
        // name, owner; no grants, no description
        assert_eq!(psql(port, "\\dn+").await.unwrap(), "public|postgres||\n");
        // no types of Duet's own: the list is empty, not an error
        assert_eq!(psql(port, "\\dT").await.unwrap(), "");
        assert_eq!(psql(port, "\\dT+").await.unwrap(), "");
        // nor operators or conversions; the built-in tablespaces, with no location
        assert_eq!(psql(port, "\\do").await.unwrap(), "");
        assert_eq!(psql(port, "\\dc").await.unwrap(), "");
        assert_eq!(
            psql(port, "\\db").await.unwrap(),
            "pg_default|postgres|\npg_global|postgres|\n"
        );
        // databases, with no size of their own
        let dbs = psql(port, "\\l+").await.unwrap();
        assert!(
            dbs.contains("duet|postgres|UTF-8|") && dbs.contains("|pg_default|"),
            "{dbs}"
        );
        assert_eq!(psql(port, "\\df").await.unwrap(), "");
        assert_eq!(
            psql(port, "SELECT pg_size_pretty(123456789::bigint), pg_size_pretty(pg_table_size('gmv'::regclass)) IS NULL, obj_description(1, 'pg_class') IS NULL").await.unwrap(),
            "118 MB|t|t\n"
        );
        let out = psql(port, "\\d+ gmv").await.unwrap();
        for c in [
            "bucket|timestamp with time zone||not null||plain|",
            "city|text||||extended|",
            "gmv|numeric||||main|",
            "_batch_version|bigint||||plain|",
            "gmv_state|bytea||not null||extended|",
        ] {
            assert!(out.contains(c), "{c} missing from {out}");
        }
    }

    /// `pg_roles` lists the emulation's one role, the owner of every relation. Reading it
    /// overflowed the stack and aborted the whole process (datafusion-pg-catalog's provider
    /// for an `Arc` calls itself), so any client's `SELECT * FROM pg_roles` took Duet down.
    #[tokio::test]
    async fn psql_lists_roles() {
        let dir = tempfile::tempdir().unwrap();
        let (port, _stop) = server(dir.path()).await;
        assert_eq!(
            psql(
                port,
                "SELECT rolname, rolsuper, rolcanlogin FROM pg_catalog.pg_roles"
            )
            .await
            .unwrap(),
            "postgres|t|t\n"
        );
        // the port still answers afterwards
        assert_eq!(psql(port, "SELECT 1").await.unwrap(), "1\n");
        // psql's role list: name, attributes, groups (none)
        for command in ["\\du", "\\dg"] {
            assert_eq!(
                psql(port, command).await.unwrap(),
                "postgres|Superuser, Create role, Create DB, Replication|{}\n",
                "{command}"
            );
        }
        assert_eq!(
            psql(port, "SELECT ARRAY(SELECT rolname FROM pg_roles WHERE rolsuper) AS su, ARRAY(SELECT rolname FROM pg_roles WHERE NOT rolsuper) AS other").await.unwrap(),
            "{postgres}|{}\n"
        );
    }

    /// A correlated scalar subquery standing alone as a select item is replaced by NULL in
    /// datafusion-pg-catalog's parser (a rule for psql's `\\d`); inside parentheses or any
    /// expression it is planned by DataFusion, and exact. `docs/sql.md` says so.
    #[tokio::test]
    async fn a_correlated_subquery_in_parentheses_is_exact() {
        let dir = tempfile::tempdir().unwrap();
        let (port, _stop) = server(dir.path()).await;
        let count = "SELECT count(*) FROM (VALUES (1), (2)) t(y) WHERE t.y = s.x";
        assert_eq!(
            psql(port, &format!("SELECT x, (({count})) AS n, 0 + ({count}) AS m FROM (VALUES (1), (2), (3)) s(x) ORDER BY 1")).await.unwrap(),
            "1|1|1\n2|1|1\n3|0|0\n"
        );
    }

    /// A correlated scalar subquery over a view, standing alone as a select item, is planned
    /// as written, in the simple and the extended protocol: not answered NULL, as
    /// `datafusion-pg-catalog`'s parser makes it for catalog queries.
    #[tokio::test]
    async fn a_correlated_subquery_over_a_view_is_exact() {
        let dir = tempfile::tempdir().unwrap();
        let (port, _stop) = server(dir.path()).await;
        let sum = format!("SELECT sum(g.n) FROM gmv g WHERE g.city = s.x AND {HOUR2}");
        let cities = "(VALUES ('Beijing'), ('Nowhere')) s(x)";
        // what the view holds for Beijing, read without a subquery
        let beijing = psql(
            port,
            &format!("SELECT sum(n) FROM gmv WHERE city = 'Beijing' AND {HOUR2}"),
        )
        .await
        .unwrap();
        assert_eq!(beijing, "15\n");
        for sql in [
            format!("SELECT x, ({sum}) FROM {cities} ORDER BY 1"),
            format!("SELECT x, ({sum}) AS n FROM {cities} ORDER BY 1"),
        ] {
            assert_eq!(
                psql(port, &sql).await.unwrap(),
                "Beijing|15\nNowhere|\n",
                "{sql}"
            );
        }
        // an uncorrelated one of many rows is an error, as in PostgreSQL, not its first row
        let many = psql(
            port,
            "SELECT (SELECT city FROM gmv WHERE bucket >= '1970-01-01T01:00:00Z') AS c",
        )
        .await
        .unwrap_err();
        assert!(many.contains("more than one row"), "{many}");
        // the extended protocol, a parameter bound
        let script = format!(
            "import psycopg, sys\n\
            c = psycopg.connect(host='127.0.0.1', port=int(sys.argv[1]), user='duet', dbname='duet', sslmode='disable', autocommit=True)\n\
            print(c.execute(\"SELECT x, ({sum}) FROM {cities} WHERE %s = 1 ORDER BY 1\", (1,)).fetchall())\n"
        );
        let out = python_run(script, port).await;
        assert!(
            out.starts_with("[('Beijing', 15), ('Nowhere', None)]")
                || out.starts_with("[('Beijing', Decimal('15')), ('Nowhere', None)]"),
            "{out}"
        );
    }

    #[tokio::test]
    async fn psql_reads_views_as_tables() {
        let dir = tempfile::tempdir().unwrap();
        let (port, _stop) = server(dir.path()).await;
        // rows as served, with their source
        assert_eq!(
            psql(port, &format!("SELECT bucket, city, gmv, n, _source FROM gmv WHERE {HOUR2} AND city = 'Beijing' ORDER BY bucket LIMIT 2")).await.unwrap(),
            "1970-01-01 01:00:00.000000+00|Beijing|1.00|1|speed\n1970-01-01 01:01:00.000000+00|Beijing|2.00|2|speed\n"
        );
        // an hour rolled up with SQL's own sum: the same as the HTTP API's grain=1h
        assert_eq!(
            psql(port, &format!("SELECT date_trunc('hour', bucket) AS h, sum(gmv), sum(n) FROM gmv WHERE {HOUR2} GROUP BY 1 ORDER BY 1")).await.unwrap(),
            "1970-01-01 01:00:00.000000+00|45.15|60\n"
        );
        // distinct counts merge from their states: u1, u2 over Beijing's hour, not 2+1+1
        assert_eq!(
            psql(port, &format!("SELECT city, distinct_count_merge(users_state), sum(users), avg_merge(avg_order_state), top_k_merge(top_users_state, 1) FROM buyers WHERE {HOUR2} GROUP BY city ORDER BY city")).await.unwrap(),
            "Beijing|2|4|15.25|[{\"key\":\"u1\",\"value\":\"40.00\"}]\nShanghai|2|2|3.75|[{\"key\":\"u3\",\"value\":\"5.50\"}]\n"
        );
        assert_eq!(
            psql(
                port,
                &format!("SELECT state_merge(users_state) FROM buyers WHERE {HOUR2}")
            )
            .await
            .unwrap(),
            "3\n"
        );
        // the catalog psql's \dt and \d read
        let tables = psql(port, "\\dt").await.unwrap();
        assert!(
            tables.contains("public|gmv|table|") && tables.contains("public|buyers|table|"),
            "{tables}"
        );
        let columns = psql(port, "\\d gmv").await.unwrap();
        for c in [
            "bucket|timestamp with time zone",
            "city|",
            "gmv|numeric",
            "n|bigint",
            "_source|",
            "_batch_version|bigint",
            "gmv_state|bytea",
        ] {
            assert!(columns.contains(c), "{c} missing from {columns}");
        }
        // information_schema speaks PostgreSQL's type names, the same ones pg_catalog gives
        assert_eq!(
            psql(port, "SELECT column_name, data_type, udt_name, is_nullable, numeric_scale FROM information_schema.columns WHERE table_name = 'gmv' AND ordinal_position <= 3 ORDER BY ordinal_position").await.unwrap(),
            "bucket|timestamp with time zone|timestamptz|NO|\ncity|text|text|YES|\ngmv|numeric|numeric|YES|2\n"
        );
        assert_eq!(
            psql(port, "SELECT count(*), count(*) FILTER (WHERE c.udt_name <> t.typname) FROM information_schema.columns c JOIN pg_catalog.pg_class k ON k.relname = c.table_name JOIN pg_catalog.pg_attribute a ON a.attrelid = k.oid AND a.attname = c.column_name JOIN pg_catalog.pg_type t ON t.oid = a.atttypid WHERE c.table_schema = 'public'").await.unwrap(),
            "18|0\n",
            "every column of both views, each with pg_catalog's type name"
        );
        assert_eq!(
            psql(port, "SELECT table_name, table_type, is_insertable_into FROM information_schema.tables WHERE table_schema = 'public' ORDER BY 1").await.unwrap(),
            "buyers|BASE TABLE|NO\ngmv|BASE TABLE|NO\n"
        );
        assert_eq!(
            psql(
                port,
                "SELECT count(*) FROM information_schema.table_constraints"
            )
            .await
            .unwrap(),
            "0\n"
        );
        assert_eq!(
            psql(
                port,
                "SELECT catalog_name, schema_name FROM information_schema.schemata"
            )
            .await
            .unwrap(),
            "duet|information_schema\nduet|pg_catalog\nduet|public\n"
        );
        assert_eq!(
            psql(
                port,
                "SELECT table_schema, count(*) FROM information_schema.views GROUP BY 1 ORDER BY 1"
            )
            .await
            .unwrap(),
            "information_schema|6\npg_catalog|8\n",
            "Duet's views are tables: none is listed among the views"
        );
        // DataFusion's SHOW TABLES and SHOW COLUMNS read it too
        let shown = psql(port, "SHOW TABLES").await.unwrap();
        assert!(shown.contains("duet|public|gmv|BASE TABLE|"), "{shown}");
        let shown = psql(port, "SHOW COLUMNS FROM gmv").await.unwrap();
        assert!(
            shown.contains("duet|public|gmv|bucket|timestamp with time zone|NO"),
            "{shown}"
        );
        // a computed name cast to regclass is the relation's pg_class oid; format() quotes
        assert_eq!(
            psql(port, "SELECT c.relname, format('%I.%I|%s|%L', 'public', 'Gmv', NULL, 'it''s') FROM pg_catalog.pg_class c WHERE c.oid = CAST(format('%I.%I', 'public', 'gmv') AS regclass)").await.unwrap(),
            "gmv|public.\"Gmv\"||'it''s'\n"
        );
        assert_eq!(
            psql(port, "SELECT to_regclass('nope') IS NULL, to_regclass('public.gmv') = CAST(concat('g', 'mv') AS regclass), col_description(CAST(CAST(format('%I.%I', 'public', 'gmv') AS regclass) AS oid), 1) IS NULL").await.unwrap(),
            "t|t|t\n"
        );
        // pgjdbc's key queries: _pg_expandarray is a row per element; (composite).field reads it
        assert_eq!(
            psql(port, "SELECT (information_schema._pg_expandarray(ARRAY[10, 20, 30])).n, (information_schema._pg_expandarray(ARRAY[10, 20, 30])).x").await.unwrap(),
            "1|10\n2|20\n3|30\n"
        );
        assert_eq!(
            psql(port, "SELECT (k).x FROM (SELECT information_schema._pg_expandarray('3 1') AS k) s ORDER BY (k).n DESC").await.unwrap(),
            "1\n3\n"
        );
        // pg_constraint's key columns are arrays: ANY over them plans and answers
        assert_eq!(
            psql(port, "SELECT count(*) > 0, max(cardinality(conkey)) > 1 FROM pg_catalog.pg_constraint WHERE 1 = ANY(conkey)").await.unwrap(),
            "t|t\n"
        );
        let err = psql(port, "SELECT CAST(format('%s', 'nope') AS regclass)")
            .await
            .unwrap_err();
        assert!(err.contains("relation \"nope\" does not exist"), "{err}");
        // a range outside every bucket reads nothing, and says so with no rows
        assert_eq!(
            psql(
                port,
                "SELECT count(*) FROM gmv WHERE bucket < '1970-01-01T00:00:30Z'"
            )
            .await
            .unwrap(),
            "0\n"
        );
    }

    #[tokio::test]
    async fn anything_but_reading_is_refused_with_sqlstate_25006() {
        let dir = tempfile::tempdir().unwrap();
        let (port, _stop) = server(dir.path()).await;
        for sql in [
            "INSERT INTO gmv (city) VALUES ('x')",
            "CREATE TABLE t (a int)",
            "DROP TABLE gmv",
            "DELETE FROM gmv",
            "UPDATE gmv SET n = 1",
            "COPY gmv TO '/tmp/out.csv'",
            "SELECT * INTO copy_of_gmv FROM gmv",
        ] {
            let err = psql(port, sql).await.unwrap_err();
            assert!(
                err.contains("25006") && err.contains("read-only"),
                "{sql}: {err}"
            );
        }
        // a bad query is an error with its reason, and the server goes on
        let err = psql(port, "SELECT nope FROM gmv").await.unwrap_err();
        assert!(err.contains("nope"), "{err}");
        assert_eq!(psql(port, "SELECT 1").await.unwrap(), "1\n");
    }

    /// `scripts/pg_clients.py` (psycopg 3, extended protocol) against the port: Metabase's session and Grafana's
    /// schema, time-series and table queries, a parameterized query, a refusal.
    #[tokio::test]
    async fn psycopg_grafana_and_metabase_statements_get_exact_answers() {
        let dir = tempfile::tempdir().unwrap();
        let (port, _stop) = server(dir.path()).await;
        let python = python();
        let script =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/pg_clients.py");
        let out = tokio::task::spawn_blocking(move || {
            std::process::Command::new(&python)
                .arg(script)
                .arg(port.to_string())
                .output()
                .unwrap()
        })
        .await
        .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        // (schema-qualified: the emulated search_path does not name `public`)
        assert_eq!(
            got["grafana_tables"],
            serde_json::json!([["public.buyers"], ["public.gmv"]]),
            "{got}"
        );
        let columns: Vec<&str> = got["grafana_columns"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|r| r[0].as_str())
            .collect();
        assert_eq!(
            columns,
            [
                "bucket",
                "city",
                "gmv",
                "n",
                "_source",
                "_batch_version",
                "gmv_state",
                "n_state"
            ]
        );
        assert_eq!(
            got["grafana_time_series"],
            serde_json::json!([["3600.0", "45.15", "60"]]),
            "{got}"
        );
        assert_eq!(got["grafana_table"].as_array().unwrap().len(), 6, "{got}");
        assert_eq!(
            got["grafana_table"][0],
            serde_json::json!(["1970-01-01 01:00:00+00:00", "Beijing", "1"])
        );
        assert_eq!(
            got["parameterized"],
            serde_json::json!([["Beijing", "4", "2"]]),
            "{got}"
        );
        assert_eq!(got["refused"], "25006");
        assert_eq!(got["after_refusal"], serde_json::json!([["17"]]));
        // Metabase's session: its schema list has `public`; its table sync finds every view
        // as a table of `public`
        let metabase = got["metabase"].as_array().unwrap();
        assert_eq!(metabase.len(), 10, "{got}");
        assert!(
            metabase[4]
                .as_array()
                .unwrap()
                .contains(&serde_json::json!(["public", "duet"])),
            "{got}"
        );
        let tables: Vec<(&str, &str, &str)> = metabase[6]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r[0].as_str().unwrap_or_default(),
                    r[1].as_str().unwrap_or_default(),
                    r[2].as_str().unwrap_or_default(),
                )
            })
            .collect();
        assert_eq!(
            tables,
            [("public", "buyers", "TABLE"), ("public", "gmv", "TABLE")],
            "{got}"
        );
        // Metabase 0.62's sync: every statement answers
        let sync = got["metabase_sync"].as_array().unwrap();
        assert_eq!(sync.len(), 12, "{got}");
        assert_eq!(sync[0], serde_json::json!([["1"]]));
        assert_eq!(sync[1], serde_json::json!([["duet"]]));
        let tables: Vec<&str> = sync[2]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r[1].as_str().unwrap())
            .collect();
        assert_eq!(tables, ["buyers", "gmv"], "{got}");
        // no enums, no primary keys, no foreign keys: the views declare none
        for (i, what) in [(3, "enums"), (6, "primary keys"), (7, "foreign keys")] {
            assert_eq!(sync[i], serde_json::json!([]), "{what}: {got}");
        }
        // pgjdbc's columns, the fingerprint samples, the columns by oid and number, the count
        assert_eq!(sync[5].as_array().unwrap().len(), 8, "{got}");
        assert_eq!(sync[8].as_array().unwrap().len(), 17, "{got}");
        assert_eq!(sync[9].as_array().unwrap().len(), 17, "{got}");
        let by_number: Vec<&str> = sync[10]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r[2].as_str().unwrap())
            .collect();
        assert_eq!(by_number, ["city", "gmv", "n"], "{got}");
        assert_eq!(sync[11], serde_json::json!([["17"]]), "{got}");
        // its field sync: every column of both views, with PostgreSQL's type names
        let fields = sync[4].as_array().unwrap();
        assert_eq!(fields.len(), 18, "{got}");
        assert_eq!(
            fields[0],
            serde_json::json!([
                "bucket",
                "timestamptz",
                "0",
                "public",
                "buyers",
                "False",
                null,
                "True",
                null,
                "False",
                "False",
                "False"
            ])
        );
        let gmv: Vec<(&str, &str)> = fields
            .iter()
            .filter(|r| r[4] == "gmv")
            .map(|r| (r[0].as_str().unwrap(), r[1].as_str().unwrap()))
            .collect();
        assert_eq!(
            gmv,
            [
                ("bucket", "timestamptz"),
                ("city", "text"),
                ("gmv", "numeric"),
                ("n", "int8"),
                ("_source", "text"),
                ("_batch_version", "int8"),
                ("gmv_state", "bytea"),
                ("n_state", "bytea")
            ]
        );
    }

    #[tokio::test]
    async fn a_scan_that_reads_too_much_is_refused_with_its_reason() {
        let dir = tempfile::tempdir().unwrap();
        let (state, _) = fixture(dir.path()).await;
        let view = state.cfg.view("gmv").unwrap().clone();
        let ctx = SessionContext::new();
        ctx.register_table(
            "gmv",
            Arc::new(
                ViewTable::new(view, state.lake.clone(), state.store.clone()).with_max_rows(10),
            ),
        )
        .unwrap();
        // 17 rows in all: refused; a bounded range of 3 rows: answered
        let err = ctx
            .sql("SELECT count(*) FROM gmv")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("the query reads 17 rows of `gmv` (buckets × dimension values), more than the 10 one query may"),
            "{err}"
        );
        let batches = ctx
            .sql("SELECT count(*) FROM gmv WHERE bucket >= '1970-01-01T01:00:00Z' AND bucket < '1970-01-01T01:01:00Z'")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let n = batches[0]
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap()
            .value(0);
        assert_eq!(n, 3);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(200))]

        /// Any SQL text, well-formed or not, read-only or not, gets an answer or an error from
        /// the session the PostgreSQL port serves: never a panic.
        #[test]
        fn any_sql_text_gets_an_answer_or_an_error(
            words in proptest::collection::vec(
                proptest::prop_oneof![
                    proptest::sample::select(vec![
                        "SELECT", "*", "FROM", "gmv", "buyers", "WHERE", "bucket", ">=", "<", "=",
                        "'1970-01-01T01:00:00Z'", "(", ")", ",", "sum(n)", "count(*)", "city",
                        "distinct_count_merge(users_state)", "top_k_merge(top_users_state, 2)",
                        "top_k_merge(top_users_state, -1)", "avg_merge(n_state)",
                        "state_merge(gmv_state)", "distinct_count_merge(gmv_state)",
                        "GROUP BY", "ORDER BY", "LIMIT", "1", "-1", "NULL", "'", "\"", ";",
                        "INSERT INTO gmv VALUES (1)", "DROP TABLE gmv", "date_trunc('hour', bucket)",
                        "date_bin(INTERVAL '5 minutes', bucket)", "AND", "OR", "NOT", "IN",
                        "x'00ff'", "CAST(gmv_state AS TEXT)", "users_state", "9999999999999999999999",
                    ]).prop_map(str::to_string),
                    "\\PC{0,12}",
                ],
                0..16,
            ),
        ) {
            let sql = words.join(" ");
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let dir = tempfile::tempdir().unwrap();
            rt.block_on(async {
                let (state, _) = fixture(dir.path()).await;
                let ctx = session(&state.cfg.views, state.lake.clone(), state.store.clone()).unwrap();
                // what the port does: refuse writes, else plan and run
                let parsed = datafusion::sql::parser::DFParser::parse_sql(&sql);
                if let Ok(statements) = &parsed {
                    for st in statements {
                        if let datafusion::sql::parser::Statement::Statement(st) = st
                            && refusal(st).is_some()
                        {
                            return;
                        }
                    }
                }
                if let Ok(df) = ctx.sql(&sql).await {
                    let _ = df.collect().await;
                }
            });
        }
    }

    /// The bug this guards: `SELECT … WHERE bucket > now() - interval '1 hour'` once a view
    /// had a sealed bucket asked the lake for every day up to year 9999, and never answered.
    #[test]
    fn an_unbounded_scan_stops_at_the_horizon() {
        use datafusion::prelude::{col, lit};
        let now = 1_800_000_000_000;
        assert_eq!(scan_range(&[], now), (0, now + SCAN_HORIZON_MS));
        let ts = lit(ScalarValue::TimestampMillisecond(
            Some(now - 3_600_000),
            Some("UTC".into()),
        ));
        assert_eq!(
            scan_range(&[col("bucket").gt(ts)], now),
            (now - 3_600_000, now + SCAN_HORIZON_MS)
        );
    }

    #[test]
    fn filters_on_bucket_narrow_the_range_read() {
        use datafusion::prelude::{col, lit};
        let ts = |ms: i64| {
            lit(ScalarValue::TimestampMillisecond(
                Some(ms),
                Some("UTC".into()),
            ))
        };
        let range = |e: Expr| {
            let (mut from, mut to) = (0, MAX_TIME_MS);
            narrow(&e, &mut from, &mut to);
            (from, to)
        };
        assert_eq!(
            range(
                col("bucket")
                    .gt_eq(ts(60_000))
                    .and(col("bucket").lt(ts(120_000)))
            ),
            (60_000, 120_000)
        );
        assert_eq!(
            range(ts(60_000).lt_eq(col("bucket"))),
            (60_000, MAX_TIME_MS)
        );
        assert_eq!(
            range(col("bucket").between(ts(60_000), ts(119_999))),
            (60_000, 120_000)
        );
        assert_eq!(
            range(col("bucket").eq(lit("1970-01-01T00:01:00Z"))),
            (60_000, 60_001)
        );
        // an OR or another column does not narrow
        assert_eq!(
            range(col("bucket").gt(ts(60_000)).or(col("city").eq(lit("x")))),
            (0, MAX_TIME_MS)
        );
        assert_eq!(range(col("n").gt(lit(5))), (0, MAX_TIME_MS));
    }

    /// What the Python of [`python`] prints, standard output then standard error, for
    /// `script` run with the port as its argument.
    async fn python_run(script: String, port: u16) -> String {
        let python = python();
        let out = tokio::task::spawn_blocking(move || {
            std::process::Command::new(python)
                .args(["-c", &script, &port.to_string()])
                .output()
                .unwrap()
        })
        .await
        .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    }

    /// The Python with psycopg that `scripts/setup.sh` installs (or `DUET_PYTHON`).
    fn python() -> String {
        let python = std::env::var("DUET_PYTHON").unwrap_or_else(|_| {
            format!(
                "{}/.cache/duet-venv/bin/python",
                std::env::var("HOME").unwrap_or_default()
            )
        });
        assert!(
            std::path::Path::new(&python).exists(),
            "no Python with psycopg at {python}: run ./scripts/setup.sh (or set DUET_PYTHON)"
        );
        python
    }

    fn client(
        name: &str,
        password: Option<&str>,
        views: &[&str],
        rate: u32,
    ) -> duet_config::TokenConfig {
        duet_config::TokenConfig {
            name: name.into(),
            sha256: Some(crate::auth::hash_hex(&format!("{name}-http"))),
            pg_password: password.map(|p| crate::auth::pg_password_hash(p, [7; 16])),
            views: views.iter().map(|v| v.to_string()).collect(),
            rate,
        }
    }

    #[tokio::test]
    async fn logins_need_their_password_and_stay_in_their_views_and_rate() {
        let dir = tempfile::tempdir().unwrap();
        let tokens = Arc::new(Tokens::new(&[
            client("bi", Some("bi-pass"), &["gmv"], 100),
            client("slow", Some("slow-pass"), &["*"], 1),
            client("web", None, &["*"], 100),
        ]));
        let metrics = Arc::new(ServingMetrics::default());
        let (port, _stop) = server_with(
            dir.path(),
            PgOptions {
                metrics: metrics.clone(),
                tokens,
                tls: None,
            },
        )
        .await;
        let q = |sql: &'static str| ["-c", sql];
        let gmv = "SELECT sum(n) FROM gmv";
        // the right password reads the views of the client's scope
        assert_eq!(
            psql_as(port, "bi", &[("PGPASSWORD", "bi-pass")], &q(gmv)).await,
            Ok("63\n".into())
        );
        // a view outside it is refused with SQLSTATE 42501, in the simple query protocol…
        let e = psql_as(
            port,
            "bi",
            &[("PGPASSWORD", "bi-pass")],
            &q("SELECT count(*) FROM public.buyers b JOIN gmv g ON true"),
        )
        .await
        .unwrap_err();
        assert!(
            e.contains("42501") && e.contains("user `bi` may not read view `buyers`"),
            "{e}"
        );
        // …and in the extended one (psycopg binds parameters server-side)
        let script = "import psycopg, sys\n\
            c = psycopg.connect(host='127.0.0.1', port=int(sys.argv[1]), user='bi', password='bi-pass', dbname='duet', sslmode='disable', autocommit=True)\n\
            for sql in ['SELECT sum(n) FROM gmv WHERE %s = 1', 'SELECT count(*) FROM \"buyers\" WHERE %s = 1']:\n\
            \x20   try:\n\
            \x20       print(c.execute(sql, (1,)).fetchall())\n\
            \x20   except psycopg.Error as e:\n\
            \x20       print(e.sqlstate, e)\n";
        let out = python_run(script.to_string(), port).await;
        assert!(
            out.starts_with("[(Decimal('63'),)]\n42501 user `bi` may not read view `buyers`")
                || out.starts_with("[(63,)]\n42501 user `bi` may not read view `buyers`"),
            "{out}"
        );
        // a wrong password, an unknown user and a client without a password fail alike
        for (user, password) in [("bi", "nope"), ("mallory", "bi-pass"), ("web", "web-http")] {
            let e = psql_as(port, user, &[("PGPASSWORD", password)], &q("SELECT 1"))
                .await
                .unwrap_err();
            assert!(
                e.contains("password authentication failed") || e.contains("authentication failed"),
                "{user}: {e}"
            );
        }
        // a client over its rate is refused with 53400 and the wait
        let e = psql_as(
            port,
            "slow",
            &[("PGPASSWORD", "slow-pass")],
            &["-c", "SELECT 1", "-c", "SELECT 2"],
        )
        .await
        .unwrap_err();
        assert!(
            e.contains("53400") && e.contains("`slow` is over its request rate"),
            "{e}"
        );
        let text = metrics.render();
        assert!(text.contains("status=\"42501\""), "{text}");
    }

    #[tokio::test]
    async fn the_sql_port_speaks_tls_with_the_configured_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = crate::testkit::certificate(dir.path());
        let options = PgOptions {
            tls: Some(crate::tls::acceptor(&cert, &key).unwrap()),
            ..PgOptions::default()
        };
        let (port, _stop) = server_with(dir.path(), options).await;
        let cert = cert.to_string_lossy().into_owned();
        let verified = [
            ("PGSSLMODE", "verify-full"),
            ("PGSSLROOTCERT", cert.as_str()),
        ];
        assert_eq!(
            psql_as(port, "duet", &verified, &["-c", "SELECT sum(n) FROM gmv"]).await,
            Ok("63\n".into())
        );
        // the client checked the server's certificate: another root fails the handshake
        let elsewhere = dir.path().join("other");
        std::fs::create_dir(&elsewhere).unwrap();
        let (other, _) = crate::testkit::certificate(&elsewhere);
        let other = other.to_string_lossy().into_owned();
        let e = psql_as(
            port,
            "duet",
            &[
                ("PGSSLMODE", "verify-full"),
                ("PGSSLROOTCERT", other.as_str()),
            ],
            &["-c", "SELECT 1"],
        )
        .await
        .unwrap_err();
        assert!(e.contains("certificate verify failed"), "{e}");
        // and a client that does not ask for TLS is still served
        assert!(
            psql_as(port, "duet", &[], &["-c", "SELECT 1"])
                .await
                .is_ok()
        );
    }

    #[tokio::test]
    async fn a_statement_ends_at_its_time_or_row_limit_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let (state, _) = fixture(dir.path()).await;
        let metrics = Arc::new(ServingMetrics::default());
        let ctx = |limits: SqlLimits| {
            let guard = SqlGuard {
                limits,
                metrics: metrics.clone(),
            };
            session_with(
                &state.cfg.views,
                state.lake.clone(),
                state.store.clone(),
                guard,
            )
            .unwrap()
        };
        let run = async |ctx: SessionContext, sql: &str| {
            let started = std::time::Instant::now();
            let out = ctx.sql(sql).await.unwrap().collect().await;
            (
                out.map(|b| b.iter().map(|b| b.num_rows()).sum::<usize>()),
                started.elapsed(),
            )
        };
        // 17 rows joined with themselves seven times: 4.1e8 rows, far more than 300 ms of work
        let join = "SELECT sum(a.n + b.n + c.n + d.n + e.n + f.n + g.n) FROM gmv a, gmv b, gmv c, gmv d, gmv e, gmv f, gmv g";
        let short = SqlLimits {
            time: std::time::Duration::from_millis(300),
            ..SqlLimits::default()
        };
        let (out, took) = run(ctx(short), join).await;
        let e = out.unwrap_err().to_string();
        assert!(
            e.contains("the statement ran longer than the 0.3 s one may"),
            "{e}"
        );
        // DataFusion yields between batches, so the end comes a little after the limit (about
        // 3 s here; the whole join takes longer than 30 s)
        assert!(took < std::time::Duration::from_secs(20), "{took:?}");
        // an answer of more rows than allowed ends with the reason; one within them is whole
        let few = SqlLimits {
            rows: 100,
            ..SqlLimits::default()
        };
        let e = run(ctx(few), "SELECT a.n FROM gmv a, gmv b")
            .await
            .0
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("the statement answers more than the 100 rows one may"),
            "{e}"
        );
        assert_eq!(run(ctx(few), "SELECT n FROM gmv").await.0.unwrap(), 17);
        // each statement is counted when done, with its latency
        let text = metrics.render();
        for line in [
            "duet_serving_requests_total{protocol=\"sql\",route=\"select\",status=\"error\"} 2",
            "duet_serving_requests_total{protocol=\"sql\",route=\"select\",status=\"ok\"} 1",
            "duet_serving_request_seconds_count{protocol=\"sql\",route=\"select\"} 3",
        ] {
            assert!(text.contains(line), "{line} not in {text}");
        }
    }
}
