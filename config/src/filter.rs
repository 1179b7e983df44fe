//! View filters: `orderStatus == 'paid' and totalAmount > 0`.
//!
//! Grammar: `or` of `and` of comparisons `path OP literal`, with `not` and parentheses.
//! Comparisons with a missing (null) field are unknown, and unknown rows are dropped, as in
//! SQL and Polars (Kleene logic), so the speed and batch layers agree.

use std::cmp::Ordering;

use crate::error::{Error, Result};
use crate::types::{Value, parse_decimal};

/// A parsed filter expression.
#[derive(Debug, Clone, PartialEq)]
pub enum Filter {
    /// Both sides hold.
    And(Box<Filter>, Box<Filter>),
    /// Either side holds.
    Or(Box<Filter>, Box<Filter>),
    /// The inner expression does not hold.
    Not(Box<Filter>),
    /// `path op literal`.
    Cmp {
        /// Dotted field path.
        path: String,
        /// Comparison.
        op: CmpOp,
        /// Right-hand side.
        lit: Literal,
    },
}

/// Comparison operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    /// `==`
    Eq,
    /// `!=`
    Ne,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
}

impl CmpOp {
    fn holds(self, o: Ordering) -> bool {
        match self {
            CmpOp::Eq => o == Ordering::Equal,
            CmpOp::Ne => o != Ordering::Equal,
            CmpOp::Lt => o == Ordering::Less,
            CmpOp::Le => o != Ordering::Greater,
            CmpOp::Gt => o == Ordering::Greater,
            CmpOp::Ge => o != Ordering::Less,
        }
    }
}

/// A literal in a filter.
#[derive(Debug, Clone, PartialEq)]
pub enum Literal {
    /// Quoted text.
    Str(String),
    /// A number, kept as written so it can be read exactly as int, float or decimal.
    Number(String),
    /// true / false.
    Bool(bool),
}

impl Filter {
    /// Parses a filter expression.
    pub fn parse(expr: &str) -> Result<Filter> {
        let mut p = Parser {
            s: expr,
            i: 0,
            depth: 0,
            terms: 0,
        };
        let f = p.or()?;
        p.ws();
        if p.i < p.s.len() {
            return Err(p.err("unexpected text"));
        }
        Ok(f)
    }

    /// Every field path the filter reads, in order.
    pub fn paths(&self) -> Vec<(&str, &Literal)> {
        let mut out = Vec::new();
        self.collect(&mut out);
        out
    }

    fn collect<'a>(&'a self, out: &mut Vec<(&'a str, &'a Literal)>) {
        match self {
            Filter::And(a, b) | Filter::Or(a, b) => {
                a.collect(out);
                b.collect(out);
            }
            Filter::Not(a) => a.collect(out),
            Filter::Cmp { path, lit, .. } => out.push((path, lit)),
        }
    }

    /// Evaluates with Kleene logic; `resolve` gives the value at a path. `None` = unknown.
    pub fn eval<'v>(&self, resolve: &impl Fn(&str) -> &'v Value) -> Option<bool> {
        match self {
            Filter::And(a, b) => match (a.eval(resolve), b.eval(resolve)) {
                (Some(false), _) | (_, Some(false)) => Some(false),
                (Some(true), Some(true)) => Some(true),
                _ => None,
            },
            Filter::Or(a, b) => match (a.eval(resolve), b.eval(resolve)) {
                (Some(true), _) | (_, Some(true)) => Some(true),
                (Some(false), Some(false)) => Some(false),
                _ => None,
            },
            Filter::Not(a) => a.eval(resolve).map(|v| !v),
            Filter::Cmp { path, op, lit } => compare(resolve(path), lit).map(|o| op.holds(o)),
        }
    }
}

impl Filter {
    /// How tightly the expression binds: `or` 0, `and` 1, `not` and comparisons 2.
    fn precedence(&self) -> u8 {
        match self {
            Filter::Or(..) => 0,
            Filter::And(..) => 1,
            Filter::Not(_) | Filter::Cmp { .. } => 2,
        }
    }

    /// Writes the expression, in parentheses if it binds less tightly than `min`.
    fn write(&self, f: &mut std::fmt::Formatter<'_>, min: u8) -> std::fmt::Result {
        let paren = self.precedence() < min;
        if paren {
            f.write_str("(")?;
        }
        match self {
            // left-associative: the left operand at the same level, the right one above it
            Filter::Or(a, b) => {
                a.write(f, 0)?;
                f.write_str(" or ")?;
                b.write(f, 1)?;
            }
            Filter::And(a, b) => {
                a.write(f, 1)?;
                f.write_str(" and ")?;
                b.write(f, 2)?;
            }
            Filter::Not(a) => {
                f.write_str("not ")?;
                a.write(f, 2)?;
            }
            Filter::Cmp { path, op, lit } => {
                let op = match op {
                    CmpOp::Eq => "==",
                    CmpOp::Ne => "!=",
                    CmpOp::Lt => "<",
                    CmpOp::Le => "<=",
                    CmpOp::Gt => ">",
                    CmpOp::Ge => ">=",
                };
                match lit {
                    Literal::Str(s) if s.contains('\'') => write!(f, "{path} {op} \"{s}\"")?,
                    Literal::Str(s) => write!(f, "{path} {op} '{s}'")?,
                    Literal::Number(n) => write!(f, "{path} {op} {n}")?,
                    Literal::Bool(b) => write!(f, "{path} {op} {b}")?,
                }
            }
        }
        if paren {
            f.write_str(")")?;
        }
        Ok(())
    }
}

impl std::fmt::Display for Filter {
    /// The canonical text of the filter: parentheses only where needed, single spaces, `==`
    /// for equality. Two filters that parse alike print alike, and the text parses back to
    /// the same filter.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.write(f, 0)
    }
}

/// Compares a value with a literal; `None` if the value is null or of another type.
fn compare(v: &Value, lit: &Literal) -> Option<Ordering> {
    match (v, lit) {
        (Value::Str(s), Literal::Str(l)) => Some(s.as_str().cmp(l.as_str())),
        (Value::Bool(b), Literal::Bool(l)) => Some(b.cmp(l)),
        (Value::Int(i), Literal::Number(n)) => Some(i.cmp(&n.parse::<i64>().ok()?)),
        (Value::Float(f), Literal::Number(n)) => f.partial_cmp(&n.parse::<f64>().ok()?),
        (Value::Decimal { units, scale }, Literal::Number(n)) => {
            Some(units.cmp(&parse_decimal(n, *scale)?))
        }
        _ => None,
    }
}

struct Parser<'a> {
    s: &'a str,
    /// Byte offset, always on a character boundary.
    i: usize,
    /// Current nesting of `not` and parentheses.
    depth: usize,
    /// Comparisons read so far.
    terms: usize,
}

impl Parser<'_> {
    fn err(&self, message: &str) -> Error {
        Error::Filter {
            expr: self.s.into(),
            message: message.into(),
            at: self.s[..self.i].chars().count(),
        }
    }
    fn rest(&self) -> &str {
        &self.s[self.i..]
    }
    /// Advances over the characters of the rest that satisfy `f`; returns what it passed.
    fn take_while(&mut self, f: impl Fn(char) -> bool) -> &str {
        let start = self.i;
        let len: usize = self
            .rest()
            .chars()
            .take_while(|c| f(*c))
            .map(char::len_utf8)
            .sum();
        self.i += len;
        &self.s[start..self.i]
    }
    fn ws(&mut self) {
        self.take_while(char::is_whitespace);
    }
    fn keyword(&mut self, kw: &str) -> bool {
        self.ws();
        let rest = self.rest();
        let matches = rest
            .get(..kw.len())
            .is_some_and(|head| head.eq_ignore_ascii_case(kw))
            && !rest[kw.len()..].starts_with(|c: char| c.is_alphanumeric() || c == '_');
        if matches {
            self.i += kw.len();
        }
        matches
    }
    fn or(&mut self) -> Result<Filter> {
        let mut left = self.and()?;
        while self.keyword("or") {
            let right = self.and()?;
            left = Filter::Or(Box::new(left), Box::new(right));
        }
        Ok(left)
    }
    fn and(&mut self) -> Result<Filter> {
        let mut left = self.unary()?;
        while self.keyword("and") {
            let right = self.unary()?;
            left = Filter::And(Box::new(left), Box::new(right));
        }
        Ok(left)
    }
    fn unary(&mut self) -> Result<Filter> {
        if self.depth >= MAX_DEPTH {
            return Err(self.err("nested too deeply"));
        }
        self.depth += 1;
        let f = self.unary_inner();
        self.depth -= 1;
        f
    }
    fn unary_inner(&mut self) -> Result<Filter> {
        if self.keyword("not") {
            return Ok(Filter::Not(Box::new(self.unary()?)));
        }
        self.ws();
        if self.rest().starts_with('(') {
            self.i += 1;
            let f = self.or()?;
            self.ws();
            if !self.rest().starts_with(')') {
                return Err(self.err("expected `)`"));
            }
            self.i += 1;
            return Ok(f);
        }
        self.terms += 1;
        if self.terms > MAX_TERMS {
            return Err(self.err(&format!("more than {MAX_TERMS} comparisons")));
        }
        let path = self.path()?;
        let op = self.op()?;
        let lit = self.literal()?;
        Ok(Filter::Cmp { path, op, lit })
    }
    fn path(&mut self) -> Result<String> {
        self.ws();
        let p = self.take_while(|c| c.is_alphanumeric() || c == '_' || c == '.');
        if p.is_empty() {
            return Err(self.err("expected a field name"));
        }
        Ok(p.to_string())
    }
    fn op(&mut self) -> Result<CmpOp> {
        self.ws();
        for (text, op) in [
            ("==", CmpOp::Eq),
            ("!=", CmpOp::Ne),
            ("<=", CmpOp::Le),
            (">=", CmpOp::Ge),
            ("<", CmpOp::Lt),
            (">", CmpOp::Gt),
            ("=", CmpOp::Eq),
        ] {
            if self.rest().starts_with(text) {
                self.i += text.len();
                return Ok(op);
            }
        }
        Err(self.err("expected one of == != < <= > >="))
    }
    fn literal(&mut self) -> Result<Literal> {
        self.ws();
        if let Some(q) = self
            .rest()
            .chars()
            .next()
            .filter(|c| *c == '\'' || *c == '"')
        {
            let body = &self.rest()[1..];
            let end = body
                .find(q)
                .ok_or_else(|| self.err("unterminated string"))?;
            let text = body[..end].to_string();
            self.i += end + 2;
            return Ok(Literal::Str(text));
        }
        if self.keyword("true") {
            return Ok(Literal::Bool(true));
        }
        if self.keyword("false") {
            return Ok(Literal::Bool(false));
        }
        let start = self.i;
        let text = self
            .take_while(|c| c.is_ascii_digit() || c == '.' || c == '-')
            .to_string();
        if text.is_empty() || text.parse::<f64>().is_err() {
            self.i = start;
            return Err(self.err("expected a quoted string, a number, true or false"));
        }
        Ok(Literal::Number(text))
    }
}

/// How deeply `not` and parentheses may nest (a bound against stack exhaustion).
const MAX_DEPTH: usize = 64;
/// How many comparisons a filter may have (every walk of a filter recurses through its
/// `and`/`or` chains).
const MAX_TERMS: usize = 1_000;

#[cfg(test)]
mod tests {
    use super::*;

    fn eval(expr: &str, status: Value, amount: Value) -> Option<bool> {
        let f = Filter::parse(expr).unwrap();
        f.eval(&|p: &str| match p {
            "status" => &status,
            "amount" => &amount,
            _ => &Value::Null,
        })
    }

    #[test]
    fn evaluates_with_kleene_logic() {
        let paid = || Value::Str("paid".into());
        let dec = |u| Value::Decimal { units: u, scale: 2 };
        assert_eq!(eval("status == 'paid'", paid(), Value::Null), Some(true));
        assert_eq!(eval("status != \"paid\"", paid(), Value::Null), Some(false));
        assert_eq!(eval("amount > 0", paid(), dec(1)), Some(true));
        assert_eq!(eval("amount >= 0.02", paid(), dec(1)), Some(false));
        assert_eq!(eval("amount > 0", paid(), Value::Null), None);
        assert_eq!(
            eval("status == 'paid' or amount > 0", paid(), Value::Null),
            Some(true)
        );
        assert_eq!(
            eval("status == 'x' and amount > 0", paid(), Value::Null),
            Some(false)
        );
        assert_eq!(eval("not (amount > 0)", paid(), Value::Null), None);
        assert_eq!(eval("NOT status = 'x'", paid(), Value::Null), Some(true));
        assert_eq!(eval("missing == 1", paid(), Value::Null), None);
    }

    #[test]
    fn prints_canonically() {
        let f = Filter::parse("NOT  a = 'x' and (b>1 OR c == \"it's\")").unwrap();
        assert_eq!(f.to_string(), "not a == 'x' and (b > 1 or c == \"it's\")");
        assert_eq!(Filter::parse(&f.to_string()).unwrap(), f);
        for text in [
            "a == 1 or b == 2 or c == 3",
            "a == 1 or (b == 2 or c == 3)",
            "a == 1 and (b == 2 and c == 3)",
            "not (a == 1 or b == 2) and c == 3",
            "not not a == 1",
        ] {
            let f = Filter::parse(text).unwrap();
            assert_eq!(f.to_string(), text);
            assert_eq!(Filter::parse(&f.to_string()).unwrap(), f);
        }
        // a long chain prints flat and parses back (cargo-fuzz found it printed nested)
        let long = vec!["n == 1"; 200].join(" or ");
        let f = Filter::parse(&long).unwrap();
        assert_eq!(f.to_string(), long);
    }

    #[test]
    fn reports_position_of_errors() {
        match Filter::parse("status == ").unwrap_err() {
            Error::Filter { at, .. } => assert_eq!(at, 10),
            e => panic!("{e}"),
        }
        assert!(Filter::parse("status 'paid'").is_err());
        assert!(Filter::parse("(status == 'a'").is_err());
        assert!(Filter::parse("status == 'a' trailing").is_err());
        // non-ASCII text anywhere: an error or a filter, never a panic
        assert!(Filter::parse("status\u{a0}== 'paid'").is_ok());
        assert!(Filter::parse("статус == 'é'").is_ok());
        assert!(Filter::parse("é").is_err());
        match Filter::parse("é == ").unwrap_err() {
            Error::Filter { at, .. } => assert_eq!(at, 5, "characters, not bytes"),
            e => panic!("{e}"),
        }
        assert!(Filter::parse(&"(".repeat(10_000)).is_err());
        assert!(Filter::parse(&"not ".repeat(10_000)).is_err());
        assert!(Filter::parse(&vec!["a == 1"; 1_001].join(" or ")).is_err());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2_000))]

        /// Any text parses or is refused with a position inside it; nothing panics.
        #[test]
        fn any_text_parses_or_is_refused(text in ".{0,60}") {
            match Filter::parse(&text) {
                Ok(f) => { let _ = f.paths(); }
                Err(Error::Filter { at, .. }) => proptest::prop_assert!(at <= text.chars().count()),
                Err(e) => proptest::prop_assert!(false, "unexpected error {e}"),
            }
        }

        /// Text made of the grammar's own pieces, in any order.
        #[test]
        fn grammar_soup_parses_or_is_refused(
            parts in proptest::collection::vec(
                proptest::sample::select(vec![
                    "a", "b.c", "==", "!=", "<", ">=", "=", "'x'", "\"y", "1", "-2.5", "true",
                    "and", "or", "not", "(", ")", " ", "\u{a0}", "é", "\t", "'", "\"",
                ]),
                0..24,
            )
        ) {
            let text: String = parts.concat();
            if let Ok(f) = Filter::parse(&text) {
                // the canonical text parses back to the same filter
                proptest::prop_assert_eq!(Filter::parse(&f.to_string()).unwrap(), f);
            }
        }
    }
}
