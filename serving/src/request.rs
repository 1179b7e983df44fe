//! Reading a view query from HTTP parameters: the range, the layer, the roll-up (`grain`,
//! `group_by`, `where`, `order`, `limit`), the page (`cursor`) and the answer's format.
//!
//! `where` is a SQL condition, parsed by `sqlparser` (the parser DataFusion and Polars use):
//! comparisons of a dimension with a quoted value joined by `AND`, as in
//! `city = 'Hangzhou' AND channel IN ('app', 'web') AND status <> 'test'`.

use std::collections::HashMap;

use chrono::DateTime;
use duet_config::ViewSpec;
use duet_config::duration::parse_millis;
use duet_config::time::{MAX_TIME_MS, iso};
use sqlparser::ast::{BinaryOperator, Expr, Value};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;
use sqlparser::tokenizer::Token;

use crate::error::{Error, Result};
use crate::rollup::{Cursor, DimFilter, DimOp, OrderBy, OrderKey, RollupSpec};

/// Most buckets (of the view's own width) one query may span.
pub const MAX_BUCKETS: i64 = 100_000;

/// Rows of one answer when the query sets no `limit`.
pub const DEFAULT_LIMIT: usize = 10_000;

/// Most rows one answer may hold (`limit`); longer answers come in pages.
pub const MAX_LIMIT: usize = 100_000;

/// The parameters `/v1/views/{view}` takes.
pub const PARAMS: &str = "from, to, layer, grain, group_by, where, order, limit, cursor, format";

/// The parameters `/v1/views/{view}/live` takes.
pub const LIVE_PARAMS: &str = "grain, group_by, where, buckets, every";

/// Longest `where` accepted, in bytes.
const MAX_WHERE: usize = 16 * 1024;

/// How an answer is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// A JSON document with rows and provenance.
    Json,
    /// CSV with a header row (RFC 4180), provenance in headers.
    Csv,
    /// An Arrow IPC stream, provenance in headers and the schema's metadata.
    Arrow,
}

impl Format {
    /// The media type of the answer.
    pub fn media_type(self) -> &'static str {
        match self {
            Format::Json => "application/json",
            Format::Csv => "text/csv; charset=utf-8",
            Format::Arrow => "application/vnd.apache.arrow.stream",
        }
    }
}

/// A view query, read and checked.
#[derive(Debug, Clone, PartialEq)]
pub struct ViewQuery {
    /// First bucket, epoch ms (aligned to the view's bucket).
    pub from: i64,
    /// End, exclusive, epoch ms (aligned to the view's bucket).
    pub to: i64,
    /// Whether `from` or `to` was left to its default.
    pub defaulted: bool,
    /// Only the speed layer's rows, sealed or not (for verification).
    pub speed_only: bool,
    /// What is asked of the rows.
    pub rollup: RollupSpec,
    /// The answer's encoding.
    pub format: Format,
    /// Identifies the query's parameters, so that a cursor is used only with its own query.
    pub fingerprint: u64,
}

/// What a cursor parameter carries: the query it belongs to, its range, and the position.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct CursorToken {
    /// The query's fingerprint.
    q: u64,
    /// The range of the first page (a defaulted range would move between pages).
    from: i64,
    to: i64,
    /// The last row of the previous page.
    after: Cursor,
}

/// The cursor that continues `query` after `after`, as the opaque text clients pass back.
pub fn cursor_text(query: &ViewQuery, after: &Cursor) -> String {
    let token = CursorToken {
        q: query.fingerprint,
        from: query.from,
        to: query.to,
        after: after.clone(),
    };
    let json = serde_json::to_vec(&token).unwrap_or_default();
    json.iter().map(|b| format!("{b:02x}")).collect()
}

fn read_cursor(text: &str) -> Result<CursorToken> {
    let bad = || Error::BadParam {
        name: "cursor",
        message: "not a cursor of this API (pass back the `next_cursor` of an answer as it is)"
            .to_string(),
    };
    if !text.len().is_multiple_of(2) || text.len() > 1 << 20 {
        return Err(bad());
    }
    let bytes: Vec<u8> = (0..text.len())
        .step_by(2)
        .map(|i| {
            text.get(i..i + 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        })
        .collect::<Option<_>>()
        .ok_or_else(bad)?;
    serde_json::from_slice(&bytes).map_err(|_| bad())
}

/// FNV-1a over the text: stable across builds, so a cursor outlives a restart.
fn fingerprint(parts: &[(&str, Option<&String>)]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (name, value) in parts {
        for b in name
            .bytes()
            .chain([0])
            .chain(value.map_or(&[1u8][..], |v| v.as_bytes()).iter().copied())
            .chain([0])
        {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// A live query: the newest output buckets of a view, asked again and again.
#[derive(Debug, Clone, PartialEq)]
pub struct LiveQuery {
    /// What is asked of the rows (no order, cursor or limit).
    pub rollup: RollupSpec,
    /// How many output buckets, up to the current one.
    pub buckets: i64,
    /// How often the answer is checked for changes, ms.
    pub every_ms: i64,
}

impl LiveQuery {
    /// The query of the newest buckets at `now`.
    pub fn at(&self, view: &ViewSpec, now: i64) -> ViewQuery {
        let grain = self.rollup.grain_ms.unwrap_or(view.bucket_ms).max(1);
        let to = (now - now.rem_euclid(grain)).saturating_add(grain);
        ViewQuery {
            from: to.saturating_sub(self.buckets.saturating_mul(grain)).max(0),
            to,
            defaulted: false,
            speed_only: false,
            rollup: self.rollup.clone(),
            format: Format::Json,
            fingerprint: 0,
        }
    }
}

fn read_count(
    q: &HashMap<String, String>,
    name: &'static str,
    default: i64,
    range: std::ops::RangeInclusive<i64>,
) -> Result<i64> {
    match q.get(name) {
        None => Ok(default),
        Some(v) => v
            .parse::<i64>()
            .ok()
            .filter(|n| range.contains(n))
            .ok_or_else(|| Error::BadParam {
                name,
                message: format!(
                    "expected an integer from {} to {}, found {v:?}",
                    range.start(),
                    range.end()
                ),
            }),
    }
}

/// Reads a live query of `view`: `grain`, `group_by`, `where` as for a view query, `buckets`
/// (1 to 1440, default 5) and `every` (a duration from 100ms to 1h, default 1s).
pub fn live_query(view: &ViewSpec, q: &HashMap<String, String>) -> Result<LiveQuery> {
    only(q, LIVE_PARAMS)?;
    let rollup = roll_up_params(q)?;
    let buckets = read_count(q, "buckets", 5, 1..=1440)?;
    let every_ms = match q.get("every") {
        None => 1000,
        Some(e) => parse_millis(e)
            .ok()
            .filter(|ms| (100..=3_600_000).contains(ms))
            .ok_or_else(|| Error::BadParam {
                name: "every",
                message: format!("expected a duration from 100ms to 1h, found {e:?}"),
            })?,
    };
    let grain = rollup.grain_ms.unwrap_or(view.bucket_ms);
    if grain.saturating_mul(buckets) / view.bucket_ms.max(1) > MAX_BUCKETS {
        return Err(Error::BadParam {
            name: "buckets",
            message: format!("the range spans more than {MAX_BUCKETS} of the view's buckets"),
        });
    }
    Ok(LiveQuery {
        rollup,
        buckets,
        every_ms,
    })
}

/// Refuses any parameter not in `expected` (a comma-separated list).
fn only(q: &HashMap<String, String>, expected: &'static str) -> Result<()> {
    match q
        .keys()
        .find(|k| !expected.split(", ").any(|p| p == k.as_str()))
    {
        Some(k) => Err(Error::UnknownParam {
            name: k.clone(),
            expected,
        }),
        None => Ok(()),
    }
}

/// The roll-up parameters both queries share: `grain`, `group_by`, `where`.
fn roll_up_params(q: &HashMap<String, String>) -> Result<RollupSpec> {
    let grain_ms = q
        .get("grain")
        .map(|g| {
            parse_millis(g).map_err(|_| Error::BadParam {
                name: "grain",
                message: format!("expected a duration such as 1m, 1h or 1d, found {g:?}"),
            })
        })
        .transpose()?;
    let group_by = q.get("group_by").map(|g| {
        g.split(',')
            .map(str::trim)
            .filter(|d| !d.is_empty())
            .map(str::to_string)
            .collect::<Vec<_>>()
    });
    let filters = match q.get("where") {
        Some(w) => parse_where(w)?,
        None => Vec::new(),
    };
    Ok(RollupSpec {
        grain_ms,
        group_by,
        filters,
        ..RollupSpec::default()
    })
}

/// Parses a time parameter: epoch milliseconds or RFC 3339, from 1970 to 9999.
pub fn parse_time(name: &'static str, v: &str) -> Result<i64> {
    let ms = match v.parse::<i64>() {
        Ok(ms) => Some(ms),
        Err(_) => DateTime::parse_from_rfc3339(v)
            .ok()
            .map(|t| t.timestamp_millis()),
    };
    ms.filter(|t| (0..=MAX_TIME_MS).contains(t)).ok_or_else(|| Error::BadParam {
        name,
        message: format!(
            "expected epoch milliseconds or an RFC 3339 time such as 2026-11-25T10:00:00Z (1970 to 9999), found {v:?}"
        ),
    })
}

/// Reads the query of `view` from its parameters; `accept` is the request's `Accept` header,
/// consulted when there is no `format`; `now` places the default range.
pub fn view_query(
    view: &ViewSpec,
    q: &HashMap<String, String>,
    accept: Option<&str>,
    now: i64,
) -> Result<ViewQuery> {
    only(q, PARAMS)?;
    let speed_only = match q.get("layer").map(String::as_str) {
        None | Some("merged") => false,
        Some("speed") => true,
        Some(other) => {
            return Err(Error::BadParam {
                name: "layer",
                message: format!("expected merged (the default) or speed, found {other:?}"),
            });
        }
    };
    let format = match q.get("format").map(String::as_str) {
        Some("json") => Format::Json,
        Some("csv") => Format::Csv,
        Some("arrow") => Format::Arrow,
        Some(other) => {
            return Err(Error::BadParam {
                name: "format",
                message: format!("expected json, csv or arrow, found {other:?}"),
            });
        }
        None => format_accepted(accept),
    };
    let rolled = roll_up_params(q)?;
    let order = q.get("order").map(|o| parse_order(view, o)).transpose()?;
    let limit = read_count(q, "limit", DEFAULT_LIMIT as i64, 1..=MAX_LIMIT as i64)? as usize;
    let fingerprint = fingerprint(&[
        ("view", Some(&view.name)),
        ("from", q.get("from")),
        ("to", q.get("to")),
        ("layer", q.get("layer")),
        ("grain", q.get("grain")),
        ("group_by", q.get("group_by")),
        ("where", q.get("where")),
        ("order", q.get("order")),
    ]);
    let token = q.get("cursor").map(|c| read_cursor(c)).transpose()?;
    if token.as_ref().is_some_and(|t| t.q != fingerprint) {
        return Err(Error::BadParam {
            name: "cursor",
            message: "the cursor belongs to another query (keep every parameter but `limit`, `format` and `cursor` as on the first page)".to_string(),
        });
    }
    let (from, to, defaulted) = match &token {
        Some(t) => (
            t.from,
            t.to,
            !q.contains_key("from") || !q.contains_key("to"),
        ),
        None => range(view, q, now)?,
    };
    Ok(ViewQuery {
        from,
        to,
        defaulted,
        speed_only,
        rollup: RollupSpec {
            order,
            after: token.map(|t| t.after),
            limit: Some(limit),
            ..rolled
        },
        format,
        fingerprint,
    })
}

/// The range asked, aligned to the view's buckets.
fn range(view: &ViewSpec, q: &HashMap<String, String>, now: i64) -> Result<(i64, i64, bool)> {
    let to = q
        .get("to")
        .map(|v| parse_time("to", v))
        .transpose()?
        .unwrap_or(view.bucket_of(now) + view.bucket_ms);
    let from = q
        .get("from")
        .map(|v| parse_time("from", v))
        .transpose()?
        .unwrap_or((to - 60 * view.bucket_ms).max(0));
    if from >= to {
        return Err(Error::BadParam {
            name: "from",
            message: format!("`from` ({}) must be before `to` ({})", iso(from), iso(to)),
        });
    }
    let (from, to) = (
        view.bucket_of(from),
        view.bucket_of(to - 1) + view.bucket_ms,
    );
    if (to - from) / view.bucket_ms > MAX_BUCKETS {
        return Err(Error::BadParam {
            name: "to",
            message: format!("the range spans more than {MAX_BUCKETS} buckets"),
        });
    }
    let defaulted = !q.contains_key("from") || !q.contains_key("to");
    Ok((from, to, defaulted))
}

/// The format an `Accept` header prefers among the three (JSON when it names none of them).
fn format_accepted(accept: Option<&str>) -> Format {
    let Some(accept) = accept else {
        return Format::Json;
    };
    for part in accept.split(',') {
        let media = part.split(';').next().unwrap_or("").trim();
        match media.to_ascii_lowercase().as_str() {
            "text/csv" => return Format::Csv,
            "application/vnd.apache.arrow.stream" => return Format::Arrow,
            "application/json" => return Format::Json,
            _ => {}
        }
    }
    Format::Json
}

/// `order`: `bucket`, a measure or a grouped dimension, optionally followed by `asc` or `desc`
/// (or prefixed with `-` for descending).
fn parse_order(view: &ViewSpec, text: &str) -> Result<OrderBy> {
    let t = text.trim();
    let (name, descending) = if let Some(rest) = t.strip_prefix('-') {
        (rest.trim(), true)
    } else {
        let mut words = t.split_whitespace();
        let name = words.next().unwrap_or("");
        let descending = match words.next().map(str::to_ascii_lowercase).as_deref() {
            None | Some("asc") => false,
            Some("desc") => true,
            Some(other) => {
                return Err(Error::BadParam {
                    name: "order",
                    message: format!("expected asc or desc after `{name}`, found {other:?}"),
                });
            }
        };
        if words.next().is_some() {
            return Err(Error::BadParam {
                name: "order",
                message: format!("expected one name and asc or desc, found {text:?}"),
            });
        }
        (name, descending)
    };
    let key = if name == "bucket" {
        OrderKey::Bucket
    } else if view.dimensions.iter().any(|d| d == name) {
        OrderKey::Dimension(name.to_string())
    } else {
        // a measure, or an unknown name the roll-up refuses with the view's names
        OrderKey::Measure(name.to_string())
    };
    Ok(OrderBy { key, descending })
}

fn bad_where(message: impl Into<String>) -> Error {
    Error::BadParam {
        name: "where",
        message: message.into(),
    }
}

/// Parses a `where` condition into dimension filters, all of which must hold.
pub fn parse_where(text: &str) -> Result<Vec<DimFilter>> {
    if text.len() > MAX_WHERE {
        return Err(bad_where(format!("longer than {MAX_WHERE} bytes")));
    }
    if text.trim().is_empty() {
        return Ok(Vec::new());
    }
    let dialect = PostgreSqlDialect {};
    let mut parser = Parser::new(&dialect)
        .try_with_sql(text)
        .map_err(|e| bad_where(e.to_string()))?;
    let expr = parser.parse_expr().map_err(|e| bad_where(e.to_string()))?;
    let rest = parser.peek_token();
    if rest.token != Token::EOF {
        return Err(bad_where(format!(
            "unexpected `{}` after the condition",
            rest.token
        )));
    }
    let mut out = Vec::new();
    conjuncts(&expr, &mut out)?;
    Ok(out)
}

fn conjuncts(e: &Expr, out: &mut Vec<DimFilter>) -> Result<()> {
    match e {
        Expr::Nested(inner) => conjuncts(inner, out),
        Expr::BinaryOp {
            left,
            op: BinaryOperator::And,
            right,
        } => {
            conjuncts(left, out)?;
            conjuncts(right, out)
        }
        Expr::BinaryOp { left, op, right } => {
            let op = match op {
                BinaryOperator::Eq => DimOp::Eq,
                BinaryOperator::NotEq => DimOp::Ne,
                other => {
                    return Err(bad_where(format!(
                        "`{other}` is not supported: dimensions are compared with =, <>, IN, joined by AND"
                    )));
                }
            };
            out.push(DimFilter {
                dimension: dimension(left)?,
                op,
                values: vec![literal(right)?],
            });
            Ok(())
        }
        Expr::InList {
            expr,
            list,
            negated: false,
        } => {
            out.push(DimFilter {
                dimension: dimension(expr)?,
                op: DimOp::In,
                values: list.iter().map(literal).collect::<Result<_>>()?,
            });
            Ok(())
        }
        other => Err(bad_where(format!(
            "`{other}` is not supported: dimensions are compared with =, <>, IN, joined by AND"
        ))),
    }
}

fn dimension(e: &Expr) -> Result<String> {
    match e {
        Expr::Identifier(id) => Ok(id.value.clone()),
        Expr::Nested(inner) => dimension(inner),
        other => Err(bad_where(format!(
            "expected a dimension's name on the left, found `{other}`"
        ))),
    }
}

fn literal(e: &Expr) -> Result<String> {
    match e {
        Expr::Value(v) => match &v.value {
            Value::SingleQuotedString(s) => Ok(s.clone()),
            Value::Number(n, _) => Ok(n.to_string()),
            Value::Boolean(b) => Ok(b.to_string()),
            other => Err(bad_where(format!(
                "expected a quoted value such as 'Hangzhou', found `{other}`"
            ))),
        },
        Expr::Nested(inner) => literal(inner),
        other => Err(bad_where(format!(
            "expected a quoted value such as 'Hangzhou', found `{other}`"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(dimension: &str, op: DimOp, values: &[&str]) -> DimFilter {
        DimFilter {
            dimension: dimension.into(),
            op,
            values: values.iter().map(|v| v.to_string()).collect(),
        }
    }

    #[test]
    fn where_reads_sql_conditions_on_dimensions() {
        assert_eq!(
            parse_where("city = 'Hangzhou' AND (channel IN ('app', 'web')) and status <> 'it''s'")
                .unwrap(),
            vec![
                f("city", DimOp::Eq, &["Hangzhou"]),
                f("channel", DimOp::In, &["app", "web"]),
                f("status", DimOp::Ne, &["it's"]),
            ]
        );
        assert_eq!(
            parse_where("\"Shop Id\" = 42").unwrap(),
            vec![f("Shop Id", DimOp::Eq, &["42"])]
        );
        assert_eq!(parse_where("  ").unwrap(), vec![]);
        for (text, says) in [
            ("city = 'a' OR city = 'b'", "`OR` is not supported"),
            ("city > 'a'", "`>` is not supported"),
            ("city NOT IN ('a')", "is not supported"),
            ("city = other", "expected a quoted value"),
            ("'a' = city", "expected a dimension's name"),
            ("city = 'a' garbage", "unexpected `garbage`"),
            ("city = ", "where"),
        ] {
            let e = parse_where(text).unwrap_err().to_string();
            assert!(e.contains(says), "{text}: {e}");
        }
        // deep nesting is refused by the parser's own limit, not by a stack overflow
        let deep = format!("{}city = 'a'{}", "(".repeat(5000), ")".repeat(5000));
        assert!(parse_where(&deep).is_err());
    }

    #[test]
    fn formats_follow_the_parameter_then_the_accept_header() {
        assert_eq!(format_accepted(None), Format::Json);
        assert_eq!(format_accepted(Some("text/csv")), Format::Csv);
        assert_eq!(
            format_accepted(Some("text/html, application/vnd.apache.arrow.stream;q=0.9")),
            Format::Arrow
        );
        assert_eq!(format_accepted(Some("*/*")), Format::Json);
    }

    #[test]
    fn cursors_survive_their_text_and_refuse_garbage() {
        let token = CursorToken {
            q: 7,
            from: 1,
            to: 2,
            after: Cursor {
                value: crate::rollup::SortValue::Bucket,
                bucket: 60_000,
                dims: vec![Some("Hangzhou".into()), None],
            },
        };
        let text: String = serde_json::to_vec(&token)
            .unwrap()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(read_cursor(&text).unwrap(), token);
        for bad in ["", "zz", "abc", "7b7d", "é1"] {
            assert!(read_cursor(bad).is_err(), "{bad}");
        }
    }
}
