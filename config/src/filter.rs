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
        let mut p = Parser { s: expr, i: 0 };
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
    i: usize,
}

impl Parser<'_> {
    fn err(&self, message: &str) -> Error {
        Error::Filter {
            expr: self.s.into(),
            message: message.into(),
            at: self.i,
        }
    }
    fn ws(&mut self) {
        while self.s[self.i..].starts_with(|c: char| c.is_whitespace()) {
            self.i += 1;
        }
    }
    fn keyword(&mut self, kw: &str) -> bool {
        self.ws();
        let rest = &self.s[self.i..];
        if rest.len() >= kw.len()
            && rest[..kw.len()].eq_ignore_ascii_case(kw)
            && !rest[kw.len()..].starts_with(|c: char| c.is_alphanumeric() || c == '_')
        {
            self.i += kw.len();
            true
        } else {
            false
        }
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
        if self.keyword("not") {
            return Ok(Filter::Not(Box::new(self.unary()?)));
        }
        self.ws();
        if self.s[self.i..].starts_with('(') {
            self.i += 1;
            let f = self.or()?;
            self.ws();
            if !self.s[self.i..].starts_with(')') {
                return Err(self.err("expected `)`"));
            }
            self.i += 1;
            return Ok(f);
        }
        let path = self.path()?;
        let op = self.op()?;
        let lit = self.literal()?;
        Ok(Filter::Cmp { path, op, lit })
    }
    fn path(&mut self) -> Result<String> {
        self.ws();
        let start = self.i;
        while self.s[self.i..].starts_with(|c: char| c.is_alphanumeric() || c == '_' || c == '.') {
            self.i += 1;
        }
        if start == self.i {
            return Err(self.err("expected a field name"));
        }
        Ok(self.s[start..self.i].to_string())
    }
    fn op(&mut self) -> Result<CmpOp> {
        self.ws();
        let rest = &self.s[self.i..];
        for (text, op) in [
            ("==", CmpOp::Eq),
            ("!=", CmpOp::Ne),
            ("<=", CmpOp::Le),
            (">=", CmpOp::Ge),
            ("<", CmpOp::Lt),
            (">", CmpOp::Gt),
            ("=", CmpOp::Eq),
        ] {
            if rest.starts_with(text) {
                self.i += text.len();
                return Ok(op);
            }
        }
        Err(self.err("expected one of == != < <= > >="))
    }
    fn literal(&mut self) -> Result<Literal> {
        self.ws();
        let rest = &self.s[self.i..];
        if let Some(q) = rest.chars().next().filter(|c| *c == '\'' || *c == '"') {
            let body = &rest[1..];
            let end = body
                .find(q)
                .ok_or_else(|| self.err("unterminated string"))?;
            self.i += end + 2;
            return Ok(Literal::Str(body[..end].to_string()));
        }
        if self.keyword("true") {
            return Ok(Literal::Bool(true));
        }
        if self.keyword("false") {
            return Ok(Literal::Bool(false));
        }
        let start = self.i;
        while self.s[self.i..].starts_with(|c: char| c.is_ascii_digit() || c == '.' || c == '-') {
            self.i += 1;
        }
        let text = &self.s[start..self.i];
        if text.is_empty() || text.parse::<f64>().is_err() {
            self.i = start;
            return Err(self.err("expected a quoted string, a number, true or false"));
        }
        Ok(Literal::Number(text.to_string()))
    }
}

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
    fn reports_position_of_errors() {
        match Filter::parse("status == ").unwrap_err() {
            Error::Filter { at, .. } => assert_eq!(at, 10),
            e => panic!("{e}"),
        }
        assert!(Filter::parse("status 'paid'").is_err());
        assert!(Filter::parse("(status == 'a'").is_err());
        assert!(Filter::parse("status == 'a' trailing").is_err());
    }
}
