//! Field types of source events and the values decoded from them.

use std::fmt;

use compact_str::CompactString;

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
    /// A string (up to 24 bytes kept inline, without an allocation).
    Str(CompactString),
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
    Struct(FieldMap),
}

impl Value {
    /// The canonical text of a key value (string, int, bool); `None` for null or other types.
    pub fn key_text(&self) -> Option<String> {
        self.key_str().map(std::borrow::Cow::into_owned)
    }

    /// [`Value::key_text`], borrowed from a string value (numbers and booleans are written).
    pub fn key_str(&self) -> Option<std::borrow::Cow<'_, str>> {
        match self {
            Value::Str(s) => Some(std::borrow::Cow::Borrowed(s.as_str())),
            Value::Int(i) => Some(std::borrow::Cow::Owned(i.to_string())),
            Value::Bool(b) => Some(std::borrow::Cow::Borrowed(if *b {
                "true"
            } else {
                "false"
            })),
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
            Value::Str(s) => J::String(s.to_string()),
            Value::Int(i) => J::from(*i),
            Value::Float(f) => serde_json::Number::from_f64(*f).map_or(J::Null, J::Number),
            Value::Bool(b) => J::Bool(*b),
            Value::Decimal { units, scale } => J::String(format_decimal(*units, *scale)),
            Value::Array(a) => J::Array(a.iter().map(Value::to_json).collect()),
            Value::Struct(m) => J::Object(
                m.iter()
                    .map(|(k, v)| (k.to_string(), v.to_json()))
                    .collect(),
            ),
        }
    }
}

/// The largest magnitude a decimal may have: 38 digits of units (Delta's `decimal(38, s)`).
pub const DECIMAL_LIMIT: i128 = 10i128.pow(38);

/// A number inside a measure state. Which variant is used follows the measure's [`NumType`].
///
/// Arithmetic is checked: a sum that leaves its type's range (i64 for ints, 38 digits for
/// decimals, finite values for floats) becomes [`Num::Overflow`], which absorbs everything
/// added to it, so the bucket's value is reported as an error instead of a wrapped number.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Num {
    /// Integer.
    Int(i64),
    /// Float (always finite).
    Float(f64),
    /// Decimal units (scale from the field type).
    Dec(i128),
    /// A sum left the range of its type.
    Overflow,
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
            Num::Overflow => f64::INFINITY,
        }
    }

    /// Total order (floats by `total_cmp`; an overflow above everything).
    pub fn cmp_total(&self, other: &Num) -> std::cmp::Ordering {
        match (self, other) {
            (Num::Int(a), Num::Int(b)) => a.cmp(b),
            (Num::Dec(a), Num::Dec(b)) => a.cmp(b),
            (Num::Overflow, Num::Overflow) => std::cmp::Ordering::Equal,
            (Num::Overflow, _) => std::cmp::Ordering::Greater,
            (_, Num::Overflow) => std::cmp::Ordering::Less,
            (a, b) => a.as_f64_raw().total_cmp(&b.as_f64_raw()),
        }
    }

    /// Whether the value cannot be shown as its type: an overflow, or a decimal of more than
    /// 38 digits.
    pub fn out_of_range(self) -> bool {
        match self {
            Num::Overflow => true,
            Num::Dec(d) => d.unsigned_abs() >= DECIMAL_LIMIT.unsigned_abs(),
            _ => false,
        }
    }

    /// The value as f64, decimals divided by 10^scale (`None` for an overflow).
    pub fn to_f64(self, t: NumType) -> Option<f64> {
        match (self, t) {
            (Num::Overflow, _) => None,
            // units and a power of ten both exact in a double: their quotient is correctly
            // rounded, so it is the double the decimal text parses to
            (Num::Dec(d), NumType::Decimal(s))
                if d.unsigned_abs() < 1 << 53 && usize::from(s) < EXACT_POWERS_OF_TEN.len() =>
            {
                Some(d as f64 / EXACT_POWERS_OF_TEN[usize::from(s)])
            }
            (Num::Dec(d), NumType::Decimal(s)) => format_decimal(d, s).parse().ok(),
            (n, _) => Some(n.as_f64_raw()),
        }
    }

    /// JSON rendering: ints as integers, floats as numbers, decimals as strings with exactly
    /// `scale` digits after the point (`"6999.00"`, exact at any size); `null` when out of range.
    pub fn to_json(self, t: NumType) -> serde_json::Value {
        use serde_json::Value as J;
        if self.out_of_range() {
            return J::Null;
        }
        match (self, t) {
            (Num::Int(i), _) => J::from(i),
            (Num::Dec(d), NumType::Decimal(s)) => J::String(format_decimal(d, s)),
            (n, _) => serde_json::Number::from_f64(n.as_f64_raw()).map_or(J::Null, J::Number),
        }
    }

    /// Appends the JSON of [`Num::to_json`] to `out`: the bytes serde_json writes for it.
    pub fn write_json(self, t: NumType, out: &mut Vec<u8>) {
        if self.out_of_range() {
            out.extend_from_slice(b"null");
            return;
        }
        match (self, t) {
            (Num::Int(i), _) => {
                let _ = serde_json::to_writer(&mut *out, &i);
            }
            (Num::Dec(d), NumType::Decimal(s)) => {
                // digits, a sign and a point: nothing to escape
                out.push(b'"');
                write_decimal(d, s, out);
                out.push(b'"');
            }
            _ => {
                let _ = serde_json::to_writer(&mut *out, &self.to_json(t));
            }
        }
    }

    /// The text of the value for a typed column (`6999.00` for decimals), `None` when out of
    /// range.
    pub fn to_text(self, t: NumType) -> Option<String> {
        if self.out_of_range() {
            return None;
        }
        Some(match (self, t) {
            (Num::Dec(d), NumType::Decimal(s)) => format_decimal(d, s),
            (Num::Int(i), _) => i.to_string(),
            (n, _) => n.as_f64_raw().to_string(),
        })
    }
}

impl std::ops::Add for Num {
    type Output = Num;
    /// Checked sum of two numbers of the same variant; anything else is an overflow.
    fn add(self, other: Num) -> Num {
        match (self, other) {
            (Num::Int(a), Num::Int(b)) => a.checked_add(b).map_or(Num::Overflow, Num::Int),
            (Num::Dec(a), Num::Dec(b)) => a.checked_add(b).map_or(Num::Overflow, Num::Dec),
            (Num::Float(a), Num::Float(b)) => Some(a + b)
                .filter(|f| f.is_finite())
                .map_or(Num::Overflow, Num::Float),
            _ => Num::Overflow,
        }
    }
}

impl std::ops::Sub for Num {
    type Output = Num;
    /// Checked difference (the inverse used by count and sum); an overflow stays one.
    fn sub(self, other: Num) -> Num {
        match (self, other) {
            (Num::Int(a), Num::Int(b)) => a.checked_sub(b).map_or(Num::Overflow, Num::Int),
            (Num::Dec(a), Num::Dec(b)) => a.checked_sub(b).map_or(Num::Overflow, Num::Dec),
            (Num::Float(a), Num::Float(b)) => Some(a - b)
                .filter(|f| f.is_finite())
                .map_or(Num::Overflow, Num::Float),
            _ => Num::Overflow,
        }
    }
}

/// 10^0 to 10^22: the powers of ten a double holds exactly.
const EXACT_POWERS_OF_TEN: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
    1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
];

/// Formats decimal units with `scale` digits after the point (`699900`, 2 → `6999.00`).
pub fn format_decimal(units: i128, scale: u8) -> String {
    let mut out = Vec::with_capacity(42 + usize::from(scale));
    write_decimal(units, scale, &mut out);
    out.iter().map(|&c| char::from(c)).collect()
}

/// Appends [`format_decimal`]'s text to `out`: the digits are written from the last into a
/// buffer on the stack (on the heap for scales above 56), then appended at once.
pub fn write_decimal(units: i128, scale: u8, out: &mut Vec<u8>) {
    // at most max(39 digits of an i128, scale + 1) digits, a point and a sign
    let s = usize::from(scale);
    if s <= 56 {
        let mut buf = [0u8; 64];
        let at = decimal_into(&mut buf, units, s);
        out.extend_from_slice(&buf[at..]);
    } else {
        let mut buf = vec![0u8; s + 48];
        let at = decimal_into(&mut buf, units, s);
        out.extend_from_slice(&buf[at..]);
    }
}

/// Writes the text of `units` at scale `s` at the end of `buf`; returns where it starts.
fn decimal_into(buf: &mut [u8], units: i128, s: usize) -> usize {
    let mut at = buf.len();
    let mut wide = units.unsigned_abs();
    let mut n = 0usize;
    let digit = |buf: &mut [u8], at: &mut usize, d: u8, n: &mut usize| {
        if *n == s && s > 0 {
            *at -= 1;
            buf[*at] = b'.';
        }
        *at -= 1;
        buf[*at] = b'0' + d;
        *n += 1;
    };
    // above u64, 128-bit divisions; below, the cheap 64-bit ones
    while wide > u128::from(u64::MAX) {
        digit(buf, &mut at, (wide % 10) as u8, &mut n);
        wide /= 10;
    }
    let mut narrow = wide as u64;
    while narrow != 0 || n <= s {
        digit(buf, &mut at, (narrow % 10) as u8, &mut n);
        narrow /= 10;
    }
    if units < 0 {
        at -= 1;
        buf[at] = b'-';
    }
    at
}

/// Parses decimal text exactly into units at `scale`: `6999.00`, `-1.5`, `12`, `1.2e3`,
/// `5E-2`. `None` if it is not a number, has more significant digits after the point than
/// `scale` allows (never rounded), or has 38 digits of units or more.
pub fn parse_decimal(text: &str, scale: u8) -> Option<i128> {
    let t = text.trim();
    let (neg, t) = match t.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, t.strip_prefix('+').unwrap_or(t)),
    };
    let (mantissa, exp) = match t.find(['e', 'E']) {
        Some(i) => {
            let e: i32 = t[i + 1..].parse().ok()?;
            (&t[..i], e)
        }
        None => (t, 0),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    if (int.is_empty() && frac.is_empty())
        || !int.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    // digits · 10^(exp − frac.len()) = units · 10^(−scale)
    let digits = format!("{int}{frac}");
    let digits = digits.trim_start_matches('0');
    let shift = i64::from(exp) - frac.len() as i64 + i64::from(scale);
    let units: i128 = if digits.is_empty() {
        0
    } else if shift >= 0 {
        if digits.len() as i64 + shift > 38 {
            return None;
        }
        let mut u: i128 = digits.parse().ok()?;
        for _ in 0..shift {
            u = u.checked_mul(10)?;
        }
        u
    } else {
        let cut = (-shift) as usize;
        let keep = digits.len().saturating_sub(cut);
        let (head, dropped) = digits.split_at(keep);
        if dropped.bytes().any(|b| b != b'0') {
            return None;
        }
        if head.len() > 38 {
            return None;
        }
        if head.is_empty() {
            0
        } else {
            head.parse().ok()?
        }
    };
    if units >= DECIMAL_LIMIT {
        return None;
    }
    Some(if neg { -units } else { units })
}

/// Values by field name, each name once: an event's declared fields, a struct value's
/// members. A handful each: kept in a list in the order they were decoded and found by a
/// scan that compares lengths and end bytes before the names themselves, which costs less
/// than a tree's inserts and string comparisons on the speed layer's hot path. Names of up to
/// 24 bytes are kept inline, without an allocation. Equal when they hold the same names with
/// the same values, whatever the order.
#[derive(Debug, Clone, Default)]
pub struct FieldMap(Vec<(CompactString, Value)>);

impl FieldMap {
    /// An empty map with room for `n` fields.
    pub fn with_capacity(n: usize) -> FieldMap {
        FieldMap(Vec::with_capacity(n))
    }

    /// The value of field `name`, if there is one.
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.0
            .iter()
            .find(|(n, _)| same_name(n, name))
            .map(|(_, v)| v)
    }

    /// Whether there is a field `name`.
    pub fn contains_key(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// Sets field `name` to `value`, replacing the value it had.
    pub fn insert(&mut self, name: &str, value: Value) {
        match self.0.iter_mut().find(|(n, _)| same_name(n, name)) {
            Some((_, v)) => *v = value,
            None => self.0.push((CompactString::new(name), value)),
        }
    }

    /// Adds field `name`, which the caller knows is not there yet (no scan).
    pub(crate) fn push_new(&mut self, name: &str, value: Value) {
        debug_assert!(!self.contains_key(name), "field {name} is there already");
        self.0.push((CompactString::new(name), value));
    }

    /// [`FieldMap::push_new`] with the name as a [`CompactString`] already (a copy of an
    /// inline name, not built again from its text).
    pub(crate) fn push_new_named(&mut self, name: &CompactString, value: Value) {
        debug_assert!(!self.contains_key(name), "field {name} is there already");
        self.0.push((name.clone(), value));
    }

    /// Adds each of `names` not there yet, as `Null` (one scan for each name).
    pub fn fill_absent(&mut self, names: impl IntoIterator<Item = impl AsRef<str>>) {
        for name in names {
            let name = name.as_ref();
            if !self.contains_key(name) {
                self.0.push((CompactString::new(name), Value::Null));
            }
        }
    }

    /// The fields and their values, in the order they were first set.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.0.iter().map(|(n, v)| (n.as_str(), v))
    }

    /// How many fields there are.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are no fields.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl PartialEq for FieldMap {
    fn eq(&self, other: &FieldMap) -> bool {
        self.len() == other.len() && self.iter().all(|(n, v)| other.get(n) == Some(v))
    }
}

impl<'a> IntoIterator for &'a FieldMap {
    type Item = (&'a str, &'a Value);
    type IntoIter = std::iter::Map<
        std::slice::Iter<'a, (CompactString, Value)>,
        fn(&'a (CompactString, Value)) -> (&'a str, &'a Value),
    >;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter().map(|(n, v)| (n.as_str(), v))
    }
}

impl FromIterator<(String, Value)> for FieldMap {
    fn from_iter<I: IntoIterator<Item = (String, Value)>>(iter: I) -> FieldMap {
        let mut out = FieldMap::default();
        for (n, v) in iter {
            out.insert(&n, v);
        }
        out
    }
}

/// Whether two names are equal, with their length and first and last bytes compared before
/// the bytes themselves: most declared names differ there already.
pub(crate) fn same_name(a: &str, b: &str) -> bool {
    let (x, y) = (a.as_bytes(), b.as_bytes());
    x.len() == y.len() && x.first() == y.first() && x.last() == y.last() && x == y
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_maps_hold_each_name_once_and_compare_by_content() {
        let mut m = FieldMap::default();
        m.insert("ab", Value::Int(1));
        m.insert("b", Value::Int(2));
        m.insert("ab", Value::Int(3));
        assert_eq!(
            (m.len(), m.get("ab"), m.get("a")),
            (2, Some(&Value::Int(3)), None)
        );
        assert!(m.contains_key("b") && !m.contains_key("bb"));
        let mut filled = m.clone();
        filled.fill_absent(&["b".to_string(), "c".to_string()]);
        assert_eq!(
            (filled.len(), filled.get("b"), filled.get("c")),
            (3, Some(&Value::Int(2)), Some(&Value::Null))
        );
        let names: Vec<&str> = m.iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["ab", "b"]);
        let other: FieldMap = [
            ("b".to_string(), Value::Int(2)),
            ("ab".to_string(), Value::Int(3)),
        ]
        .into_iter()
        .collect();
        assert_eq!(m, other);
        let fewer: FieldMap = [("ab".to_string(), Value::Int(3))].into_iter().collect();
        assert_ne!(m, fewer);
        assert_ne!(fewer, m);
        // nested: a struct's members compare the same way
        assert_eq!(Value::Struct(m.clone()).get_path("ab"), &Value::Int(3));
        assert_eq!(
            Value::Struct(m).to_json(),
            serde_json::json!({"b": 2, "ab": 3})
        );
    }

    /// The plain formatting the fast one replaced: the reference.
    fn format_decimal_by_text(units: i128, scale: u8) -> String {
        let neg = units < 0;
        let digits = units.unsigned_abs().to_string();
        if scale == 0 {
            return format!("{}{digits}", if neg { "-" } else { "" });
        }
        let s = scale as usize;
        let padded = if digits.len() <= s {
            format!("{}{digits}", "0".repeat(s + 1 - digits.len()))
        } else {
            digits
        };
        let (int, frac) = padded.split_at(padded.len() - s);
        format!("{}{int}.{frac}", if neg { "-" } else { "" })
    }

    proptest::proptest! {
        /// Decimals print as their text always did, and turn into the double their text
        /// parses to, at any size and scale.
        #[test]
        fn decimals_print_and_convert_as_their_text(
            units in proptest::prop_oneof![
                proptest::num::i128::ANY,
                -(1i128 << 60)..(1i128 << 60),
                -100_000i128..100_000,
            ],
            scale in 0u8..=38,
        ) {
            let text = format_decimal_by_text(units, scale);
            proptest::prop_assert_eq!(format_decimal(units, scale), text.clone());
            for n in [Num::Dec(units), Num::Int(units as i64), Num::Float(units as f64)] {
                let mut written = Vec::new();
                n.write_json(NumType::Decimal(scale), &mut written);
                proptest::prop_assert_eq!(written, serde_json::to_vec(&n.to_json(NumType::Decimal(scale))).unwrap());
            }
            let parsed: f64 = text.parse().unwrap();
            proptest::prop_assert_eq!(
                Num::Dec(units).to_f64(NumType::Decimal(scale)).map(f64::to_bits),
                Some(parsed.to_bits())
            );
        }

        /// Scales too large for the stack buffer print as their text too.
        #[test]
        fn decimals_at_any_scale_print_as_their_text(
            units in proptest::num::i128::ANY,
            scale in 39u8..=255,
        ) {
            proptest::prop_assert_eq!(format_decimal(units, scale), format_decimal_by_text(units, scale));
        }
    }

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
        assert_eq!(Num::Dec(699900).to_f64(NumType::Decimal(2)), Some(6999.0));
        // exact at any size, exponents included, never rounded
        assert_eq!(
            parse_decimal("12345678901234567890.12", 2),
            Some(1_234_567_890_123_456_789_012)
        );
        assert_eq!(parse_decimal("1.5e3", 2), Some(150_000));
        assert_eq!(parse_decimal("125E-2", 2), Some(125));
        assert_eq!(parse_decimal("1.250e-1", 3), Some(125));
        assert_eq!(parse_decimal("1e-3", 2), None);
        assert_eq!(parse_decimal("0.000", 0), Some(0));
        assert_eq!(parse_decimal("1e37", 0), Some(10i128.pow(37)));
        assert_eq!(parse_decimal("1e38", 0), None, "39 digits");
        assert_eq!(parse_decimal("1e36", 2), None, "39 digits of units");
        assert_eq!(parse_decimal("1e999999", 2), None);
        assert_eq!(parse_decimal("5e-999999", 2), None);
        assert_eq!(parse_decimal("0e-999999", 2), Some(0));
        assert_eq!(parse_decimal("-", 2), None);
        assert_eq!(parse_decimal(".5", 1), Some(5));
        assert_eq!(format_decimal(-5, 0), "-5");
        assert_eq!(format_decimal(i128::MIN, 3).len(), 41);
    }

    #[test]
    fn arithmetic_is_checked() {
        assert_eq!(Num::Int(i64::MAX) + Num::Int(1), Num::Overflow);
        assert_eq!(Num::Overflow + Num::Int(1), Num::Overflow);
        assert_eq!(Num::Int(5) - Num::Int(7), Num::Int(-2));
        assert_eq!(Num::Dec(i128::MAX) + Num::Dec(1), Num::Overflow);
        assert_eq!(Num::Float(f64::MAX) + Num::Float(f64::MAX), Num::Overflow);
        assert!(Num::Dec(DECIMAL_LIMIT).out_of_range());
        assert!(!Num::Dec(DECIMAL_LIMIT - 1).out_of_range());
        assert_eq!(
            Num::Dec(DECIMAL_LIMIT).to_json(NumType::Decimal(2)),
            serde_json::Value::Null
        );
        assert_eq!(
            Num::Dec(12_345_678_901_234_567_890).to_json(NumType::Decimal(2)),
            serde_json::json!("123456789012345678.90")
        );
    }
}
