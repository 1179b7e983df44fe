//! Scalar subqueries over Duet's views, kept as written.
//!
//! `datafusion-pg-catalog`'s parser answers a correlated scalar subquery that stands alone as
//! a select item with NULL, and gives an uncorrelated one `LIMIT 1`, so that the catalog
//! queries of psql's `\d` run. It does so to every statement, before Duet's hooks see it.
//! Applied to a subquery that reads a view, that gives a wrong answer: NULL instead of the
//! view's number, or the first of many rows instead of PostgreSQL's error.
//!
//! [`Protected`] stands in front of the library's parser, in the simple and the extended
//! protocol. It puts such a subquery in parentheses, `((SELECT …))`. The library's rule skips
//! a subquery in parentheses, and DataFusion plans it as written. Catalog queries, whose
//! subqueries read no view, reach the library's parser unchanged.

use std::ops::ControlFlow;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::sql::sqlparser::ast::{
    Expr, Query, SelectItem, SetExpr, Value, VisitMut, VisitorMut, visit_relations,
};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::parser::Parser;
use datafusion_postgres::DfSessionService;
use datafusion_postgres::pgwire::api::portal::{Format, Portal};
use datafusion_postgres::pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use datafusion_postgres::pgwire::api::results::{FieldInfo, Response};
use datafusion_postgres::pgwire::api::stmt::QueryParser;
use datafusion_postgres::pgwire::api::store::PortalStore;
use datafusion_postgres::pgwire::api::{ClientInfo, ClientPortalStore, Type};
use datafusion_postgres::pgwire::error::{PgWireError, PgWireResult};
use datafusion_postgres::pgwire::messages::PgWireBackendMessage;
use futures::Sink;

/// `sql` with every scalar subquery that stands alone as a select item (of any query, or any
/// branch of a `UNION`, `EXCEPT` or `INTERSECT`) and reads one of `views` put in
/// parentheses; `None` when there is none (or the text does not parse, which the library's
/// parser then reports).
pub fn protect(sql: &str, views: &[String]) -> Option<String> {
    let mut statements = Parser::parse_sql(&PostgreSqlDialect {}, sql).ok()?;
    let mut wrap = Wrap {
        views,
        changed: false,
    };
    for s in &mut statements {
        let _ = s.visit(&mut wrap);
    }
    wrap.changed.then(|| {
        statements
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ")
    })
}

/// Whether `query` reads one of `views` (by its last name part, as the catalog resolves it).
fn reads_view(query: &Query, views: &[String]) -> bool {
    visit_relations(query, |name| {
        let table = super::relation_name(name);
        if views.iter().any(|v| v.eq_ignore_ascii_case(&table)) {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    })
    .is_break()
}

/// The visitor of [`protect`].
struct Wrap<'v> {
    views: &'v [String],
    changed: bool,
}

impl Wrap<'_> {
    /// Wraps the bare subqueries over a view among the select items of `body`, in each
    /// branch of a set operation (`UNION`, …).
    fn wrap(&mut self, body: &mut SetExpr) {
        match body {
            SetExpr::Select(select) => {
                for item in &mut select.projection {
                    let expr = match item {
                        SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } => e,
                        _ => continue,
                    };
                    if let Expr::Subquery(q) = expr
                        && reads_view(q, self.views)
                    {
                        let inner = std::mem::replace(expr, Expr::value(Value::Null));
                        *expr = Expr::Nested(Box::new(inner));
                        self.changed = true;
                    }
                }
            }
            SetExpr::SetOperation { left, right, .. } => {
                self.wrap(left);
                self.wrap(right);
            }
            _ => {}
        }
    }
}

impl VisitorMut for Wrap<'_> {
    type Break = ();

    fn pre_visit_query(&mut self, query: &mut Query) -> ControlFlow<()> {
        self.wrap(&mut query.body);
        ControlFlow::Continue(())
    }
}

/// DataFusion's session service with [`protect`] in front of its parser, in both protocols.
pub struct Protected {
    inner: Arc<DfSessionService>,
    parser: Arc<ProtectedParser>,
    views: Arc<Vec<String>>,
}

impl Protected {
    /// `inner`, protecting subqueries that read `views`.
    pub fn new(inner: Arc<DfSessionService>, views: Vec<String>) -> Protected {
        let views = Arc::new(views);
        Protected {
            parser: Arc::new(ProtectedParser {
                inner: inner.query_parser(),
                views: views.clone(),
            }),
            inner,
            views,
        }
    }
}

#[async_trait]
impl SimpleQueryHandler for Protected {
    async fn do_query<C>(&self, client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: std::fmt::Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        match protect(query, &self.views) {
            Some(q) => SimpleQueryHandler::do_query(&*self.inner, client, &q).await,
            None => SimpleQueryHandler::do_query(&*self.inner, client, query).await,
        }
    }
}

/// The statement type of DataFusion's session service.
type Statement = <DfSessionService as ExtendedQueryHandler>::Statement;

/// The library's parser of the extended protocol, with [`protect`] in front.
pub struct ProtectedParser {
    inner: Arc<<DfSessionService as ExtendedQueryHandler>::QueryParser>,
    views: Arc<Vec<String>>,
}

#[async_trait]
impl QueryParser for ProtectedParser {
    type Statement = Statement;

    async fn parse_sql<C>(
        &self,
        client: &C,
        sql: &str,
        types: &[Option<Type>],
    ) -> PgWireResult<Option<Statement>>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        match protect(sql, &self.views) {
            Some(q) => self.inner.parse_sql(client, &q, types).await,
            None => self.inner.parse_sql(client, sql, types).await,
        }
    }

    fn get_parameter_types(&self, stmt: &Statement) -> PgWireResult<Vec<Type>> {
        self.inner.get_parameter_types(stmt)
    }

    fn get_result_schema(
        &self,
        stmt: &Statement,
        column_format: Option<&Format>,
    ) -> PgWireResult<Vec<FieldInfo>> {
        self.inner.get_result_schema(stmt, column_format)
    }
}

#[async_trait]
impl ExtendedQueryHandler for Protected {
    type Statement = Statement;
    type QueryParser = ProtectedParser;

    fn query_parser(&self) -> Arc<ProtectedParser> {
        self.parser.clone()
    }

    async fn do_query<C>(
        &self,
        client: &mut C,
        portal: &Portal<Statement>,
        max_rows: usize,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Statement>,
        C::Error: std::fmt::Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        ExtendedQueryHandler::do_query(&*self.inner, client, portal, max_rows).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::strategy::Strategy as _;

    fn views() -> Vec<String> {
        vec!["gmv".to_string()]
    }

    /// Whether `sql` parses as PostgreSQL.
    fn parses(sql: &str) -> bool {
        Parser::parse_sql(&PostgreSqlDialect {}, sql).is_ok()
    }

    #[test]
    fn a_subquery_reading_a_view_is_put_in_parentheses() {
        assert_eq!(
            protect(
                "SELECT x, (SELECT sum(n) FROM gmv g WHERE g.city = s.x) AS n, (SELECT 1) FROM s",
                &views()
            )
            .as_deref(),
            Some(
                "SELECT x, ((SELECT sum(n) FROM gmv g WHERE g.city = s.x)) AS n, (SELECT 1) FROM s"
            )
        );
        // inside a subquery of FROM too, and a view named in a join or schema-qualified
        assert_eq!(
            protect(
                "SELECT * FROM (SELECT (SELECT max(n) FROM t JOIN public.\"GMV\" ON true) FROM s) q",
                &views()
            )
            .as_deref(),
            Some("SELECT * FROM (SELECT ((SELECT max(n) FROM t JOIN public.\"GMV\" ON true)) FROM s) q")
        );
    }

    #[test]
    fn catalog_queries_and_other_shapes_are_left_alone() {
        for sql in [
            "SELECT c.relname, (SELECT count(*) FROM pg_catalog.pg_attribute a WHERE a.attrelid = c.oid) FROM pg_catalog.pg_class c",
            "SELECT 1 + (SELECT sum(n) FROM gmv)",
            "SELECT sum(n) FROM gmv",
            "not sql at all (",
        ] {
            assert_eq!(protect(sql, &views()), None, "{sql}");
        }
    }

    /// Select lists of items that are and are not bare subqueries over a view, over a
    /// table or a subquery that holds one, and some junk; with whether the list holds one.
    fn statements() -> impl proptest::strategy::Strategy<Value = (String, bool)> {
        use proptest::prelude::*;
        // (item, whether it is a bare subquery over a view)
        let item = proptest::sample::select(vec![
            ("x", false),
            ("(SELECT sum(n) FROM gmv g WHERE g.city = s.x)", true),
            ("(SELECT 1)", false),
            ("((SELECT max(n) FROM gmv))", false),
            ("1 + (SELECT count(*) FROM gmv)", false),
            ("(SELECT city FROM public.gmv LIMIT 1)", true),
            (
                "(SELECT relname FROM pg_catalog.pg_class c WHERE c.oid = s.x)",
                false,
            ),
        ]);
        let alias = proptest::option::of(proptest::sample::select(vec!["a", "\"B\""]));
        let from = proptest::sample::select(vec![
            ("s", false),
            ("gmv", false),
            ("(SELECT (SELECT sum(n) FROM gmv) AS y FROM s) q", true),
        ]);
        let junk = proptest::option::of(prop_oneof![
            proptest::sample::select(vec!["(", ")", "'", ";", "$1", "UNION SELECT 1"])
                .prop_map(str::to_string),
            "\\PC{0,8}",
        ]);
        (proptest::collection::vec((item, alias), 1..4), from, junk).prop_map(
            |(items, (from, inner_bare), junk)| {
                let bare = inner_bare || items.iter().any(|((_, b), _)| *b);
                let list: Vec<String> = items
                    .into_iter()
                    .map(|((i, _), a)| match a {
                        Some(a) => format!("{i} AS {a}"),
                        None => i.to_string(),
                    })
                    .collect();
                let sql = format!(
                    "SELECT {} FROM {from} {}",
                    list.join(", "),
                    junk.unwrap_or_default()
                );
                (sql, bare)
            },
        )
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(500))]

        /// A statement that parses is protected when, and only when, it holds a bare
        /// subquery over a view; the protected text parses, holds none, and keeps every
        /// subquery.
        #[test]
        fn statements_are_protected_when_they_need_it((sql, bare) in statements()) {
            let valid = parses(&sql);
            let out = protect(&sql, &views());
            proptest::prop_assert_eq!(out.is_some(), valid && bare, "{}", sql);
            if let Some(out) = out {
                proptest::prop_assert!(parses(&out), "{}", out);
                proptest::prop_assert_eq!(protect(&out, &views()), None, "{}", out);
                proptest::prop_assert_eq!(out.matches("SELECT").count(), sql.matches("SELECT").count());
            }
        }

        /// Any text: no panic, and a rewritten statement parses again, with no subquery left
        /// bare that reads a view.
        #[test]
        fn any_text_is_left_alone_or_protected_for_good(
            words in proptest::collection::vec(
                proptest::prop_oneof![
                    proptest::sample::select(vec![
                        "SELECT", "(SELECT", "FROM", "gmv", "s", "WHERE", "g.city", "=", "s.x",
                        "(", ")", ",", "sum(n)", "AS", "n", "UNION", "JOIN", "ON", "true", ";",
                        "'", "\"", "$1", "LIMIT", "1", "ORDER BY",
                    ]).prop_map(str::to_string),
                    "\\PC{0,8}",
                ],
                0..20,
            ),
        ) {
            let sql = words.join(" ");
            if let Some(out) = protect(&sql, &views()) {
                proptest::prop_assert!(parses(&out), "{out}");
                proptest::prop_assert_eq!(protect(&out, &views()), None, "{}", out);
            }
        }
    }
}
