//! Field types of source events and the values decoded from them.

use std::collections::BTreeMap;
use std::fmt;

use crate::error::{Error, Result};

/// The type of one field of a source event, written in config files as
/// `string`, `int`, `float`, `bool`, `decimal(2)`, `array<T>` or `struct<a: T, b: U>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FieldType {
    /// UTF-8 text.
    String,
    /// 64-bit signed integer (also used for epoch-millisecond timestamps).
    Int,
    /// 64-bit float. Sums of floats are not exact; prefer `decimal` for money.
    Float,
    /// true / false.
    Bool,
    /// Exact decimal with this many digits after the point (precision 38).
    Decimal(u8),
    /// A JSON array of one element type.
    Array(Box<FieldType>),
    /// A JSON object with named, typed fields.
    Struct(Vec<(String, FieldType)>),
}

impl FieldType {
    /// Parses the textual form used in config files.
    pub fn parse(text: &str) -> Result<FieldType> {
        let mut p = TypeParser {
            s: text.as_bytes(),
            i: 0,
            text,
        };
        let t = p.parse_type()?;
        p.skip_ws();
        if p.i != p.s.len() {
            return Err(p.err("unexpected text after the type"));
        }
        Ok(t)
    }

    /// True for int, float and decimal.
    pub fn is_numeric(&self) -> bool {
        matches!(
            self,
            FieldType::Int | FieldType::Float | FieldType::Decimal(_)
        )
    }

    /// True for types whose values have one canonical text form (string, int, bool),
    /// usable as dimensions, distinct-count inputs and top-k keys.
    pub fn is_key(&self) -> bool {
        matches!(self, FieldType::String | FieldType::Int | FieldType::Bool)
    }

    /// The numeric type of a numeric field.
    pub fn num_type(&self) -> Option<NumType> {
        match self {
            FieldType::Int => Some(NumType::Int),
            FieldType::Float => Some(NumType::Float),
            FieldType::Decimal(s) => Some(NumType::Decimal(*s)),
            _ => None,
        }
    }
}

impl fmt::Display for FieldType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FieldType::String => f.write_str("string"),
            FieldType::Int => f.write_str("int"),
            FieldType::Float => f.write_str("float"),
            FieldType::Bool => f.write_str("bool"),
            FieldType::Decimal(s) => write!(f, "decimal({s})"),
            FieldType::Array(t) => write!(f, "array<{t}>"),
            FieldType::Struct(fields) => {
                f.write_str("struct<")?;
                for (i, (n, t)) in fields.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{n}: {t}")?;
                }
                f.write_str(">")
            }
        }
    }
}

struct TypeParser<'a> {
    s: &'a [u8],
    i: usize,
    text: &'a str,
}

impl TypeParser<'_> {
    fn err(&self, message: &str) -> Error {
        Error::FieldType {
            text: self.text.into(),
            message: format!(
                "{message} at character {} (expected string, int, float, bool, decimal(N), array<T> or struct<name: T, ...>)",
                self.i
            ),
        }
    }
    fn skip_ws(&mut self) {
        while self.i < self.s.len() && self.s[self.i].is_ascii_whitespace() {
            self.i += 1;
        }
    }
    fn ident(&mut self) -> Result<String> {
        self.skip_ws();
        let start = self.i;
        while self.i < self.s.len()
            && (self.s[self.i].is_ascii_alphanumeric() || self.s[self.i] == b'_')
        {
            self.i += 1;
        }
        if start == self.i {
            return Err(self.err("expected a name"));
        }
        Ok(self.text[start..self.i].to_string())
    }
    fn expect(&mut self, c: u8) -> Result<()> {
        self.skip_ws();
        if self.s.get(self.i) == Some(&c) {
            self.i += 1;
            Ok(())
        } else {
            Err(self.err(&format!("expected `{}`", c as char)))
        }
    }
    fn parse_type(&mut self) -> Result<FieldType> {
        let name = self.ident()?;
        Ok(match name.as_str() {
            "string" => FieldType::String,
            "int" => FieldType::Int,
            "float" => FieldType::Float,
            "bool" => FieldType::Bool,
            "decimal" => {
                self.expect(b'(')?;
                let n = self.ident()?;
                let scale: u8 = n
                    .parse()
                    .ok()
                    .filter(|s| *s <= 18)
                    .ok_or_else(|| self.err("decimal scale must be 0..=18"))?;
                self.expect(b')')?;
                FieldType::Decimal(scale)
            }
            "array" => {
                self.expect(b'<')?;
                let t = self.parse_type()?;
                self.expect(b'>')?;
                FieldType::Array(Box::new(t))
            }
            "struct" => {
                self.expect(b'<')?;
                let mut fields = Vec::new();
                loop {
                    let n = self.ident()?;
                    self.expect(b':')?;
                    let t = self.parse_type()?;
                    fields.push((n, t));
                    self.skip_ws();
                    match self.s.get(self.i) {
                        Some(b',') => self.i += 1,
                        Some(b'>') => {
                            self.i += 1;
                            break;
                        }
                        _ => return Err(self.err("expected `,` or `>`")),
                    }
                }
                FieldType::Struct(fields)
            }
            _ => return Err(self.err(&format!("unknown type `{name}`"))),
        })
    }
}

/// The numeric type a measure computes in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum NumType {
    /// i64.
    Int,
    /// f64.
    Float,
    /// i128 units with this scale.
    Decimal(u8),
}

/// A value decoded from an event, typed by its field's [`FieldType`].
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// Absent or JSON null.
    Null,
    /// A string.
    Str(String),
    /// An integer.
    Int(i64),
    /// A float.
    Float(f64),
    /// A boolean.
    Bool(bool),
    /// A decimal as units of 10^-scale.
    Decimal {
        /// The unscaled value.
        units: i128,
        /// Digits after the point.
        scale: u8,
    },
    /// An array.
    Array(Vec<Value>),
    /// An object.
    Struct(BTreeMap<String, Value>),
}

impl Value {
    /// The canonical text of a key value (string, int, bool); `None` for null or other types.
    pub fn key_text(&self) -> Option<String> {
        match self {
            Value::Str(s) => Some(s.clone()),
            Value::Int(i) => Some(i.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            _ => None,
        }
    }

    /// The numeric value, if this is a number.
    pub fn num(&self) -> Option<Num> {
        match self {
            Value::Int(i) => Some(Num::Int(*i)),
            Value::Float(f) => Some(Num::Float(*f)),
            Value::Decimal { units, .. } => Some(Num::Dec(*units)),
            _ => None,
        }
    }

    /// Looks up a dotted path such as `platform` or `deviceInfo.platform` inside struct values.
    pub fn get_path<'a>(&'a self, path: &str) -> &'a Value {
        let mut v = self;
        for seg in path.split('.') {
            v = match v {
                Value::Struct(m) => m.get(seg).unwrap_or(&Value::Null),
                _ => &Value::Null,
            };
        }
        v
    }

    /// Renders the value as JSON (decimals as strings with their scale, to stay exact).
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match self {
            Value::Null => J::Null,
            Value::Str(s) => J::String(s.clone()),
            Value::Int(i) => J::from(*i),
            Value::Float(f) => serde_json::Number::from_f64(*f).map_or(J::Null, J::Number),
            Value::Bool(b) => J::Bool(*b),
            Value::Decimal { units, scale } => J::String(format_decimal(*units, *scale)),
            Value::Array(a) => J::Array(a.iter().map(Value::to_json).collect()),
            Value::Struct(m) => {
                J::Object(m.iter().map(|(k, v)| (k.clone(), v.to_json())).collect())
            }
        }
    }
}

/// A number inside a measure state. Which variant is used follows the measure's [`NumType`].
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Num {
    /// Integer.
    Int(i64),
    /// Float.
    Float(f64),
    /// Decimal units (scale from the field type).
    Dec(i128),
}

impl Num {
    /// Zero of a numeric type.
    pub fn zero(t: NumType) -> Num {
        match t {
            NumType::Int => Num::Int(0),
            NumType::Float => Num::Float(0.0),
            NumType::Decimal(_) => Num::Dec(0),
        }
    }

    fn as_f64_raw(self) -> f64 {
        match self {
            Num::Int(i) => i as f64,
            Num::Float(f) => f,
            Num::Dec(d) => d as f64,
        }
    }

    /// Total order (floats by `total_cmp`).
    pub fn cmp_total(&self, other: &Num) -> std::cmp::Ordering {
        match (self, other) {
            (Num::Int(a), Num::Int(b)) => a.cmp(b),
            (Num::Dec(a), Num::Dec(b)) => a.cmp(b),
            (a, b) => a.as_f64_raw().total_cmp(&b.as_f64_raw()),
        }
    }

    /// The value as f64, decimals divided by 10^scale.
    pub fn to_f64(self, t: NumType) -> f64 {
        match (self, t) {
            (Num::Dec(d), NumType::Decimal(s)) => format_decimal(d, s).parse().unwrap_or(f64::NAN),
            (n, _) => n.as_f64_raw(),
        }
    }

    /// JSON rendering: ints as integers, decimals and floats as numbers.
    pub fn to_json(self, t: NumType) -> serde_json::Value {
        match self {
            Num::Int(i) => serde_json::Value::from(i),
            n => serde_json::Number::from_f64(n.to_f64(t))
                .map_or(serde_json::Value::Null, serde_json::Value::Number),
        }
    }
}

impl std::ops::Add for Num {
    type Output = Num;
    /// Sum of two numbers of the same variant (mixed variants go through f64).
    fn add(self, other: Num) -> Num {
        match (self, other) {
            (Num::Int(a), Num::Int(b)) => Num::Int(a.wrapping_add(b)),
            (Num::Dec(a), Num::Dec(b)) => Num::Dec(a.wrapping_add(b)),
            (Num::Float(a), Num::Float(b)) => Num::Float(a + b),
            (a, b) => Num::Float(a.as_f64_raw() + b.as_f64_raw()),
        }
    }
}

impl std::ops::Sub for Num {
    type Output = Num;
    /// Difference (the inverse used by count and sum).
    fn sub(self, other: Num) -> Num {
        match (self, other) {
            (Num::Int(a), Num::Int(b)) => Num::Int(a.wrapping_sub(b)),
            (Num::Dec(a), Num::Dec(b)) => Num::Dec(a.wrapping_sub(b)),
            (a, b) => Num::Float(a.as_f64_raw() - b.as_f64_raw()),
        }
    }
}

/// Formats decimal units with `scale` digits after the point (`699900`, 2 → `6999.00`).
pub fn format_decimal(units: i128, scale: u8) -> String {
    if scale == 0 {
        return units.to_string();
    }
    let neg = units < 0;
    let digits = units.unsigned_abs().to_string();
    let s = scale as usize;
    let padded = if digits.len() <= s {
        format!("{}{digits}", "0".repeat(s + 1 - digits.len()))
    } else {
        digits
    };
    let (int, frac) = padded.split_at(padded.len() - s);
    format!("{}{int}.{frac}", if neg { "-" } else { "" })
}

/// Parses decimal text (`6999.00`, `-1.5`, `12`) into units at `scale`; `None` if it has
/// more digits after the point than `scale` allows or is not a number.
pub fn parse_decimal(text: &str, scale: u8) -> Option<i128> {
    let t = text.trim();
    let (neg, t) = match t.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, t),
    };
    let (int, frac) = t.split_once('.').unwrap_or((t, ""));
    if int.is_empty() && frac.is_empty() {
        return None;
    }
    if !int.bytes().all(|b| b.is_ascii_digit()) || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let frac = frac.trim_end_matches('0');
    if frac.len() > scale as usize {
        return None;
    }
    let mut units: i128 = if int.is_empty() { 0 } else { int.parse().ok()? };
    for _ in 0..scale {
        units = units.checked_mul(10)?;
    }
    let mut f: i128 = if frac.is_empty() {
        0
    } else {
        frac.parse().ok()?
    };
    for _ in frac.len()..scale as usize {
        f *= 10;
    }
    let v = units.checked_add(f)?;
    Some(if neg { -v } else { v })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_types() {
        let t =
            FieldType::parse("array<struct<productId: string, quantity:int, price: decimal(2)>>")
                .unwrap();
        assert_eq!(
            t.to_string(),
            "array<struct<productId: string, quantity: int, price: decimal(2)>>"
        );
        assert!(FieldType::parse("strin").is_err());
        assert!(FieldType::parse("array<int").is_err());
        assert!(FieldType::parse("decimal(40)").is_err());
    }

    #[test]
    fn decimals_round_trip() {
        assert_eq!(format_decimal(699900, 2), "6999.00");
        assert_eq!(format_decimal(-5, 2), "-0.05");
        assert_eq!(parse_decimal("6999.00", 2), Some(699900));
        assert_eq!(parse_decimal("0.5", 2), Some(50));
        assert_eq!(parse_decimal("-12", 2), Some(-1200));
        assert_eq!(parse_decimal("1.234", 2), None);
        assert_eq!(parse_decimal("abc", 2), None);
        assert_eq!(Num::Dec(699900).to_f64(NumType::Decimal(2)), 6999.0);
    }
}
