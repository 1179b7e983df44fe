//! Decoding raw JSON bytes into typed [`Event`]s against a source's declared schema.
//!
//! Pure: both the speed consumer and the lake sink decode with this, so they agree on what
//! is valid and on every value. One pass over the JSON text: declared fields are decoded as
//! they come, undeclared ones are skipped without being built. Scalars are read from their
//! raw text: decimals and integers are parsed exactly from their digits, never through a
//! float, so `12345678901234567890.12` stays exact; floats must be finite. When several
//! declared fields are wrong, the first by name is reported.
//!
//! A [`Keep`] from [`Source::keep`] or [`Source::keep_all`] carries the source's fields
//! compiled for a fast path (`decode_plan`), which takes valid events as they come and hands
//! anything else to the full decoder here, so both decide every event alike.

use std::collections::BTreeMap;

use compact_str::CompactString;
use serde_json::value::RawValue;

use crate::decode_plan::ObjectPlan;
use crate::types::{FieldMap, FieldType, Value, parse_decimal, same_name};
use crate::view::{Event, Source};

/// Why an event was refused. Shown in quarantine records.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The bytes are not JSON.
    #[error("not valid JSON: {0}")]
    Json(String),
    /// The JSON is not an object.
    #[error("expected a JSON object, found {0}")]
    NotObject(&'static str),
    /// A field has the wrong type.
    #[error("field `{path}`: expected {expected}, found {found}")]
    Type {
        /// Field path.
        path: String,
        /// Declared type.
        expected: String,
        /// What the JSON held.
        found: String,
    },
    /// A required field (id, time or `required`) is missing or null.
    #[error("required field `{0}` is missing or null")]
    Missing(String),
    /// The event time is not a positive epoch-millisecond integer before the year 10000.
    #[error(
        "event time `{field}` must be a positive epoch-millisecond integer before the year 10000, found {found}"
    )]
    Time {
        /// The time field.
        field: String,
        /// What it held.
        found: String,
    },
    /// The event time is further in the future than the source allows.
    #[error(
        "event time `{field}` is {ahead_ms} ms ahead of the time the message was produced, more than max_future ({limit_ms} ms)"
    )]
    Future {
        /// The time field.
        field: String,
        /// How far ahead of the reference time it is.
        ahead_ms: i64,
        /// The source's `max_future`.
        limit_ms: i64,
    },
    /// The source's `check` filter did not hold.
    #[error("check `{0}` does not hold")]
    Check(String),
}

fn json_kind(raw: &str) -> &'static str {
    match raw.as_bytes().first() {
        Some(b'n') => "null",
        Some(b't' | b'f') => "a boolean",
        Some(b'"') => "a string",
        Some(b'[') => "an array",
        Some(b'{') => "an object",
        _ => "a number",
    }
}

/// What a mismatched value held, for messages: short strings and numbers verbatim.
fn found(raw: &str) -> String {
    match raw.as_bytes().first() {
        Some(b'"') => match serde_json::from_str::<String>(raw) {
            Ok(s) if s.chars().count() <= 40 => format!("the string {s:?}"),
            _ => "a string".to_string(),
        },
        Some(b'-' | b'0'..=b'9') if raw.len() <= 40 => format!("the number {raw}"),
        _ => json_kind(raw).to_string(),
    }
}

fn is_number(raw: &str) -> bool {
    matches!(raw.as_bytes().first(), Some(b'-' | b'0'..=b'9'))
}

/// Where a value sits in the event (`items[2].productId`), built as text only when a problem
/// is reported: decoding a valid event formats no paths.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Path<'a> {
    /// A declared top-level field.
    Field(&'a str),
    /// A member of a struct.
    Member(&'a Path<'a>, &'a str),
    /// An element of an array.
    Index(&'a Path<'a>, usize),
}

impl std::fmt::Display for Path<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Path::Field(name) => f.write_str(name),
            Path::Member(parent, name) => write!(f, "{parent}.{name}"),
            Path::Index(parent, i) => write!(f, "{parent}[{i}]"),
        }
    }
}

/// A scalar's JSON text (a number's digits, a string's quoted text), decoded as type `t`.
pub(crate) fn decode_scalar(
    path: &Path<'_>,
    t: &FieldType,
    text: &str,
) -> Result<Value, DecodeError> {
    let mismatch = || DecodeError::Type {
        path: path.to_string(),
        expected: t.to_string(),
        found: found(text),
    };
    if text == "null" {
        return Ok(Value::Null);
    }
    Ok(match t {
        FieldType::String => {
            if !text.starts_with('"') {
                return Err(mismatch());
            }
            Value::Str(json_string(text).ok_or_else(mismatch)?)
        }
        FieldType::Bool => match text {
            "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            _ => return Err(mismatch()),
        },
        // an integer, or a number with only zeros after the point (`3.0`, `3e2`)
        FieldType::Int => {
            if !is_number(text) {
                return Err(mismatch());
            }
            let units = match text.parse::<i64>() {
                Ok(i) => i128::from(i),
                Err(_) => parse_decimal(text, 0).ok_or_else(mismatch)?,
            };
            Value::Int(i64::try_from(units).map_err(|_| mismatch())?)
        }
        FieldType::Float => {
            if !is_number(text) {
                return Err(mismatch());
            }
            Value::Float(
                text.parse::<f64>()
                    .ok()
                    .filter(|f| f.is_finite())
                    .ok_or_else(mismatch)?,
            )
        }
        // from the number's digits, or from a string such as "6999.00"
        FieldType::Decimal(scale) => {
            let units = if is_number(text) {
                parse_decimal(text, *scale)
            } else if text.starts_with('"') {
                serde_json::from_str::<Text<'_>>(text)
                    .ok()
                    .and_then(|Text(digits)| parse_decimal(&digits, *scale))
            } else {
                None
            };
            Value::Decimal {
                units: units.ok_or_else(mismatch)?,
                scale: *scale,
            }
        }
        FieldType::Array(_) | FieldType::Struct(_) => return Err(mismatch()),
    })
}

/// Which declared values an event keeps. Every declared value is checked against its type
/// either way, so an event is valid or refused alike whatever it keeps; values not kept are
/// not built (they read as `Null`). The speed layer keeps what its views read, the lake sink
/// keeps everything.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Keep {
    /// Keep the whole value.
    all: bool,
    /// Members of a struct (or of an array's struct elements) to keep.
    members: BTreeMap<String, Keep>,
    /// The source's fields compiled with this, for the fast path (set by [`Source::keep`]
    /// on the top level only).
    plan: Option<std::sync::Arc<ObjectPlan>>,
}

impl Keep {
    /// Keeps every value.
    pub fn all() -> Keep {
        Keep {
            all: true,
            members: BTreeMap::new(),
            plan: None,
        }
    }

    /// Also keeps the value at dotted `path` (`deviceInfo.platform`, `items.productId`: the
    /// members of an array's struct elements are named as if the array were a struct).
    fn path(&mut self, path: &str) {
        if let Some(k) = self.container(path) {
            k.all = true;
            k.members.clear();
        }
    }

    /// Keeps the value at `path` itself, with only the members [`Keep::path`] names; `None`
    /// when a value above it is kept whole already.
    fn container(&mut self, path: &str) -> Option<&mut Keep> {
        let mut k = self;
        for seg in path.split('.') {
            if k.all {
                return None;
            }
            k = k.members.entry(seg.to_string()).or_default();
        }
        Some(k)
    }

    /// The same, without the compiled plan: decoded by the full decoder only.
    #[cfg(test)]
    fn without_plan(&self) -> Keep {
        Keep {
            plan: None,
            ..self.clone()
        }
    }

    /// Whether the whole value is kept.
    pub(crate) fn is_all(&self) -> bool {
        self.all
    }

    /// How many values of an object of `declared` fields are kept at most.
    pub(crate) fn capacity(&self, declared: usize) -> usize {
        if self.all {
            declared
        } else {
            self.members.len()
        }
    }

    /// What is kept of member `name` (`None`: nothing, it is only checked).
    pub(crate) fn member(&self, name: &str) -> Option<&Keep> {
        if self.all {
            Some(self)
        } else {
            // a handful of members: a scan with cheap checks first beats the tree's
            // string comparisons
            self.members
                .iter()
                .find(|(n, _)| same_name(n, name))
                .map(|(_, k)| k)
        }
    }
}

/// A string's JSON text (quoted, valid JSON) as the string it stands for.
fn json_string(text: &str) -> Option<CompactString> {
    let body = text.get(1..text.len().saturating_sub(1))?;
    if body.contains('\\') {
        serde_json::from_str::<String>(text)
            .ok()
            .map(CompactString::from)
    } else {
        Some(CompactString::new(body))
    }
}

/// The declared field named `key`, by a scan that compares lengths and end bytes first (a
/// handful of fields: cheaper than a tree's string comparisons).
fn lookup<'f>(
    fields: impl IntoIterator<Item = (&'f String, &'f FieldType)>,
    key: &str,
) -> Option<(&'f String, &'f FieldType)> {
    lookup_at(fields, key).map(|(_, n, t)| (n, t))
}

/// [`lookup`], with the field's position among `fields`.
fn lookup_at<'f>(
    fields: impl IntoIterator<Item = (&'f String, &'f FieldType)>,
    key: &str,
) -> Option<(usize, &'f String, &'f FieldType)> {
    fields
        .into_iter()
        .enumerate()
        .find(|(_, (n, _))| same_name(n, key))
        .map(|(i, (n, t))| (i, n, t))
}

/// Parses a JSON object with `visitor`, and checks that nothing follows it.
fn parse_object<'de, R: serde_json::de::Read<'de>>(
    de: &mut serde_json::Deserializer<R>,
    visitor: Fields<'_>,
) -> serde_json::Result<FieldMap> {
    let v = serde::Deserializer::deserialize_map(&mut *de, visitor)?;
    de.end()?;
    Ok(v)
}

/// Decoding in one pass over the JSON text: the declared fields are decoded as they come
/// (scalars from their raw text, so numbers stay exact), everything else is skipped without
/// being built. The first problem, by field name, is kept in `problem`; the parse then stops.
struct Fields<'s> {
    fields: &'s BTreeMap<String, FieldType>,
    keep: &'s Keep,
    problem: &'s std::cell::RefCell<Option<(String, DecodeError)>>,
}

/// One declared value at `path` of type `t`; `keep` is `None` when it is only checked.
#[derive(Clone, Copy)]
struct Typed<'s> {
    path: Path<'s>,
    t: &'s FieldType,
    keep: Option<&'s Keep>,
    field: &'s str,
    problem: &'s std::cell::RefCell<Option<(String, DecodeError)>>,
}

impl Typed<'_> {
    fn fail<E: serde::de::Error>(&self, e: DecodeError) -> E {
        let mut p = self.problem.borrow_mut();
        if p.as_ref().is_none_or(|(f, _)| self.field < f.as_str()) {
            *p = Some((self.field.to_string(), e));
        }
        E::custom("refused")
    }

    fn mismatch<E: serde::de::Error>(&self, text: &str) -> E {
        self.refuse(found(text))
    }

    /// Refuses the value, which held `found` (as [`found`] describes it).
    fn refuse<E: serde::de::Error>(&self, found: String) -> E {
        self.fail(DecodeError::Type {
            path: self.path.to_string(),
            expected: self.t.to_string(),
            found,
        })
    }

    /// Decodes a scalar's JSON text `text` (a whole, valid JSON value).
    fn decode_text<E: serde::de::Error>(self, text: &str) -> Result<Value, E> {
        match self.t {
            FieldType::Array(_) | FieldType::Struct(_) => {
                if text == "null" {
                    Ok(Value::Null)
                } else {
                    Err(self.mismatch(text))
                }
            }
            FieldType::String => {
                if text == "null" {
                    return Ok(Value::Null);
                }
                if !text.starts_with('"') {
                    return Err(self.mismatch(text));
                }
                // a string not kept is still checked for escapes that are not Unicode (a
                // lone surrogate such as `\ud800`), or the layers would disagree about it
                if self.keep.is_none() && !text.contains('\\') {
                    return Ok(Value::Null);
                }
                match json_string(text) {
                    Some(s) if self.keep.is_some() => Ok(Value::Str(s)),
                    Some(_) => Ok(Value::Null),
                    None => Err(self.refuse(
                        "a string with an escape that is not Unicode (a lone surrogate)"
                            .to_string(),
                    )),
                }
            }
            scalar => {
                let v = decode_scalar(&self.path, scalar, text).map_err(|e| self.fail(e))?;
                Ok(if self.keep.is_some() { v } else { Value::Null })
            }
        }
    }
}

/// A declared value read where it stands in the JSON text, in the same pass: a scalar from
/// its raw text (numbers stay exact), an array or a struct member by member (not captured
/// and parsed again).
impl<'de> serde::de::DeserializeSeed<'de> for Typed<'_> {
    type Value = Value;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        match self.t {
            FieldType::Array(_) | FieldType::Struct(_) => d.deserialize_any(Container(self)),
            _ => {
                let raw: &'de RawValue = serde::Deserialize::deserialize(d)?;
                self.decode_text(raw.get())
            }
        }
    }
}

/// A value declared an array or a struct, as the parser meets it: null, the declared kind,
/// or a mismatch (described as [`found`] would; a number by its parsed value).
struct Container<'s>(Typed<'s>);

impl<'de> serde::de::Visitor<'de> for Container<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0.t)
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E: serde::de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<Value, E> {
        Err(self.0.refuse("a boolean".to_string()))
    }

    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Value, E> {
        Err(self.0.mismatch(&v.to_string()))
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Value, E> {
        Err(self.0.mismatch(&v.to_string()))
    }

    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Value, E> {
        Err(self.0.mismatch(&v.to_string()))
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Value, E> {
        Err(self.0.refuse(match v.chars().count() {
            n if n <= 40 => format!("the string {v:?}"),
            _ => "a string".to_string(),
        }))
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let typed = self.0;
        let FieldType::Array(inner) = typed.t else {
            return Err(typed.refuse("an array".to_string()));
        };
        let parent = typed.path;
        let mut out = Vec::with_capacity(if typed.keep.is_some() { 4 } else { 0 });
        let mut i = 0;
        loop {
            let item = Typed {
                path: Path::Index(&parent, i),
                t: inner,
                ..typed
            };
            let Some(v) = seq.next_element_seed(item)? else {
                break;
            };
            if typed.keep.is_some() {
                out.push(v);
            }
            i += 1;
        }
        Ok(if typed.keep.is_some() {
            Value::Array(out)
        } else {
            Value::Null
        })
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Value, A::Error> {
        let of = self.0;
        let FieldType::Struct(fields) = of.t else {
            return Err(of.refuse("an object".to_string()));
        };
        let parent = of.path;
        let kept = of.keep.map_or(0, |k| k.capacity(fields.len()));
        let mut out = read_object(
            map,
            kept,
            |key| lookup_at(fields.iter().map(|(n, t)| (n, t)), key),
            |name, t, map| {
                let keep = of.keep.and_then(|k| k.member(name));
                let v = map.next_value_seed(Typed {
                    path: Path::Member(&parent, name.as_str()),
                    t,
                    keep,
                    ..of
                })?;
                Ok(keep.map(|_| v))
            },
        )?;
        let Some(keep) = of.keep else {
            return Ok(Value::Null);
        };
        if keep.all {
            out.fill_absent(fields.iter().map(|(name, _)| name));
        }
        Ok(Value::Struct(out))
    }
}

impl<'de> serde::de::Visitor<'de> for Fields<'_> {
    type Value = FieldMap;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        read_object(
            map,
            self.keep.capacity(self.fields.len()),
            |key| lookup_at(self.fields, key),
            |name, t, map| {
                let keep = self.keep.member(name);
                let v = map.next_value_seed(Typed {
                    path: Path::Field(name.as_str()),
                    t,
                    keep,
                    field: name.as_str(),
                    problem: self.problem,
                })?;
                Ok(keep.map(|_| v))
            },
        )
    }
}

/// The declared fields of an object kept so far, by position (the first 64): a field met for
/// the first time is added without a scan of those before it; one met again (or past the 64th)
/// replaces its value after a scan.
#[derive(Default)]
pub(crate) struct KeptSoFar(u64);

impl KeptSoFar {
    /// Whether the field at position `i` is met for the first time (known only for the first
    /// 64); marks it met.
    pub(crate) fn first_time(&mut self, i: usize) -> bool {
        match u32::try_from(i).ok().and_then(|i| 1u64.checked_shl(i)) {
            Some(bit) if self.0 & bit == 0 => {
                self.0 |= bit;
                true
            }
            _ => false,
        }
    }
}

/// Reads an object's members: the declared ones (`find` gives their name and type) decoded
/// by `decode` from the map's next value, which returns the value to keep, if any; the
/// others skipped. Room for `kept` values is made at once.
fn read_object<'de, 'f, A: serde::de::MapAccess<'de>>(
    mut map: A,
    kept: usize,
    find: impl Fn(&str) -> Option<(usize, &'f String, &'f FieldType)>,
    mut decode: impl FnMut(&'f String, &'f FieldType, &mut A) -> Result<Option<Value>, A::Error>,
) -> Result<FieldMap, A::Error> {
    let mut out = FieldMap::with_capacity(kept);
    let mut kept = KeptSoFar::default();
    while let Some(Text(key)) = map.next_key::<Text<'de>>()? {
        match find(key.as_ref()) {
            Some((i, name, t)) => {
                if let Some(v) = decode(name, t, &mut map)? {
                    if kept.first_time(i) {
                        out.push_new(name, v);
                    } else {
                        out.insert(name, v);
                    }
                }
            }
            None => {
                map.next_value::<serde::de::IgnoredAny>()?;
            }
        }
    }
    Ok(out)
}

/// A JSON string: borrowed from the text unless it holds escapes. (Serde's own `Cow<str>`
/// always copies: a member name cost an allocation.)
pub(crate) struct Text<'de>(pub(crate) std::borrow::Cow<'de, str>);

impl<'de> serde::Deserialize<'de> for Text<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Text<'de>;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string")
            }

            fn visit_borrowed_str<E: serde::de::Error>(self, v: &'de str) -> Result<Text<'de>, E> {
                Ok(Text(std::borrow::Cow::Borrowed(v)))
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Text<'de>, E> {
                Ok(Text(std::borrow::Cow::Owned(v.to_string())))
            }

            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Text<'de>, E> {
                Ok(Text(std::borrow::Cow::Owned(v)))
            }
        }
        d.deserialize_str(Visit)
    }
}

/// A JSON object's members in the order of the text, values unparsed (duplicates kept).
struct RawMembers<'de>(Vec<(std::borrow::Cow<'de, str>, &'de RawValue)>);

impl<'de> serde::Deserialize<'de> for RawMembers<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = RawMembers<'de>;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<RawMembers<'de>, A::Error> {
                let mut out = Vec::new();
                while let Some((Text(name), value)) = map.next_entry()? {
                    out.push((name, value));
                }
                Ok(RawMembers(out))
            }
        }
        d.deserialize_map(Visit)
    }
}

impl Source {
    /// Decodes one message value produced at `produced_ms` (the Kafka message timestamp, or
    /// the time it was received when the message has none) into an event, or says why it is
    /// refused: [`Source::decode`], and an event time more than the source's `max_future`
    /// ahead of `produced_ms` is refused too. Both layers decide by the message's own
    /// timestamp, so they refuse the same events.
    pub fn decode_at(&self, bytes: &[u8], produced_ms: i64) -> Result<Event, DecodeError> {
        self.decode_keeping(bytes, produced_ms, &Keep::all())
    }

    /// [`Source::decode_at`], building only the values `keep` (from [`Source::keep`]) names:
    /// other declared values are checked but read as `Null`. An event is refused, and for the
    /// same reason, whatever it keeps.
    pub fn decode_keeping(
        &self,
        bytes: &[u8],
        produced_ms: i64,
        keep: &Keep,
    ) -> Result<Event, DecodeError> {
        let e = self.decode_with(bytes, keep)?;
        let ahead = e.time_ms.saturating_sub(produced_ms);
        if ahead > self.max_future_ms {
            return Err(DecodeError::Future {
                field: self.event_time.clone(),
                ahead_ms: ahead,
                limit_ms: self.max_future_ms,
            });
        }
        Ok(e)
    }

    /// [`Keep::all`] compiled for this source: [`Source::decode_keeping`] with it decodes as
    /// [`Source::decode_at`] does, on the fast path (for a caller that decodes many events).
    pub fn keep_all(&self) -> Keep {
        self.compiled(Keep::all())
    }

    /// `keep` with this source's fields compiled for the fast path.
    fn compiled(&self, mut keep: Keep) -> Keep {
        keep.plan = Some(std::sync::Arc::new(ObjectPlan::source(&self.fields, &keep)));
        keep
    }

    /// Decodes one message value into an event, or says why it is refused.
    pub fn decode(&self, bytes: &[u8]) -> Result<Event, DecodeError> {
        self.decode_with(bytes, &Keep::all())
    }

    /// What to keep for `views` (of this source), compiled for the fast path: the values they
    /// read, and what decoding itself reads (id, time, required fields, check). An exploded
    /// array is kept with only the members of its elements that are read.
    pub fn keep<'v>(&self, views: impl IntoIterator<Item = &'v crate::view::ViewSpec>) -> Keep {
        let mut k = Keep::default();
        for v in views {
            for p in v.paths() {
                k.path(p);
            }
            if let Some(x) = &v.explode {
                k.container(x);
            }
        }
        for f in self.event_id.iter().chain(&self.required) {
            k.path(f);
        }
        k.path(&self.event_time);
        if let Some((check, _)) = &self.check {
            for (p, _) in check.paths() {
                k.path(p);
            }
        }
        self.compiled(k)
    }

    /// For an event found wrong: the problem of the declared field first by name (the
    /// first in the text among fields of the same name), each top-level value checked on
    /// its own. `None` when the bytes are not an object of JSON values.
    fn first_problem_by_name(&self, bytes: &[u8], keep: &Keep) -> Option<DecodeError> {
        let members: RawMembers<'_> = serde_json::from_slice(bytes).ok()?;
        let mut first: Option<(&String, DecodeError)> = None;
        for (key, raw) in &members.0 {
            let Some((name, t)) = lookup(&self.fields, key) else {
                continue;
            };
            if first.as_ref().is_some_and(|(f, _)| *f <= name) {
                continue;
            }
            let problem = std::cell::RefCell::new(None);
            let typed = Typed {
                path: Path::Field(name.as_str()),
                t,
                keep: keep.member(name),
                field: name.as_str(),
                problem: &problem,
            };
            let mut de = serde_json::Deserializer::from_str(raw.get());
            if serde::de::DeserializeSeed::deserialize(typed, &mut de).is_err()
                && let Some((_, e)) = problem.into_inner()
            {
                first = Some((name, e));
            }
        }
        first.map(|(_, e)| e)
    }

    fn decode_with(&self, bytes: &[u8], keep: &Keep) -> Result<Event, DecodeError> {
        // the fast path, when it takes the event as it comes
        if let Some(fields) = keep
            .plan
            .as_deref()
            .and_then(|plan| plan.decode(std::str::from_utf8(bytes).ok()?))
        {
            return self.finish(fields);
        }
        let first = bytes
            .iter()
            .find(|b| !b.is_ascii_whitespace())
            .copied()
            .unwrap_or(b' ');
        let problem = std::cell::RefCell::new(None);
        let visitor = Fields {
            fields: &self.fields,
            keep,
            problem: &problem,
        };
        // text checked as UTF-8 once, not string by string (bytes that are not UTF-8 are
        // parsed as bytes, for the parser's own message)
        let parsed = match std::str::from_utf8(bytes) {
            Ok(text) => parse_object(&mut serde_json::Deserializer::from_str(text), visitor),
            Err(_) => parse_object(&mut serde_json::Deserializer::from_slice(bytes), visitor),
        };
        let mut fields: FieldMap = match parsed {
            Ok(f) => f,
            Err(e) => {
                if let Some((_, reason)) = problem.into_inner() {
                    // the parse stopped at the first wrong field in the text: look at them all
                    return Err(self.first_problem_by_name(bytes, keep).unwrap_or(reason));
                }
                // valid JSON of another kind than an object, or not JSON at all
                if first != b'{'
                    && let Ok(top) = serde_json::from_slice::<&RawValue>(bytes)
                {
                    return Err(DecodeError::NotObject(json_kind(top.get())));
                }
                return Err(DecodeError::Json(e.to_string()));
            }
        };
        // a whole event has every declared field (absent ones null); a partial one need not
        // (what is absent reads as null all the same)
        if keep.all {
            fields.fill_absent(self.fields.keys());
        }
        self.finish(fields)
    }

    /// The event of decoded `fields`, or why it is refused: its required fields, time, id and
    /// check.
    fn finish(&self, fields: FieldMap) -> Result<Event, DecodeError> {
        let event = Event {
            id: CompactString::default(),
            time_ms: 0,
            fields,
        };
        for f in self.event_id.iter().chain(&self.required) {
            if matches!(event.get(f), Value::Null) {
                return Err(DecodeError::Missing(f.clone()));
            }
        }
        let time_ms = match event.get(&self.event_time) {
            Value::Int(t) if *t > 0 && *t <= crate::time::MAX_TIME_MS => *t,
            Value::Null => return Err(DecodeError::Missing(self.event_time.clone())),
            other => {
                return Err(DecodeError::Time {
                    field: self.event_time.clone(),
                    found: other.to_json().to_string(),
                });
            }
        };
        // the id fields' keys joined by `|` (one field: its key, copied once)
        let mut keys = self
            .event_id
            .iter()
            .map(|f| event.get(f).key_str().unwrap_or_default());
        let mut id = keys
            .next()
            .map_or_else(CompactString::default, |k| CompactString::new(&k));
        for k in keys {
            id.push('|');
            id.push_str(&k);
        }
        if let Some((check, text)) = &self.check
            && check.eval(&|p: &str| event.get(p)) != Some(true)
        {
            return Err(DecodeError::Check(text.clone()));
        }
        Ok(Event {
            id,
            time_ms,
            ..event
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Config;

    /// The test source, as TOML.
    const ORDERS: &str = r#"
            [[sources]]
            name = "orders"
            topic = "orders"
            event_id = ["orderId", "orderStatus"]
            event_time = "createTime"
            required = ["userId"]
            check = "totalAmount > 0"
            fields = { orderId = "string", orderStatus = "string", userId = "string", createTime = "int",
                       totalAmount = "decimal(2)", items = "array<struct<productId: string, quantity: int>>" }
"#;

    fn orders() -> Source {
        let cfg = Config::from_toml_str(ORDERS, "t.toml".as_ref()).unwrap();
        cfg.sources[0].clone()
    }

    #[test]
    fn decodes_typed_values_exactly() {
        let e = orders()
            .decode(br#"{"orderId":"o1","orderStatus":"paid","userId":"u","createTime":1695123456789,
                         "totalAmount":129.9,"items":[{"productId":"p","quantity":2}],"extra":true}"#)
            .unwrap();
        assert_eq!(e.id, "o1|paid");
        assert_eq!(e.time_ms, 1_695_123_456_789);
        assert_eq!(
            e.get("totalAmount"),
            &Value::Decimal {
                units: 12990,
                scale: 2
            }
        );
        assert_eq!(
            e.get("items"),
            &Value::Array(vec![Value::Struct(FieldMap::from_iter([
                ("productId".into(), Value::Str("p".into())),
                ("quantity".into(), Value::Int(2)),
            ]))])
        );
        // money as a string is accepted too
        let e = orders()
            .decode(br#"{"orderId":"o1","orderStatus":"paid","userId":"u","createTime":5,"totalAmount":"6999.00"}"#)
            .unwrap();
        assert_eq!(
            e.get("totalAmount"),
            &Value::Decimal {
                units: 699_900,
                scale: 2
            }
        );
    }

    #[test]
    fn a_name_given_twice_keeps_its_last_value_once() {
        let e = orders()
            .decode(
                br#"{"orderId":"o1","userId":"u1","orderStatus":"created","userId":"u2",
                         "createTime":5,"totalAmount":1,"orderStatus":"paid",
                         "items":[{"productId":"p","quantity":1,"productId":"q"}]}"#,
            )
            .unwrap();
        assert_eq!(e.id, "o1|paid");
        assert_eq!(e.get("userId"), &Value::Str("u2".into()));
        assert_eq!(
            e.fields.iter().filter(|(n, _)| *n == "userId").count(),
            1,
            "{:?}",
            e.fields
        );
        assert_eq!(e.fields.len(), 6);
        assert_eq!(
            e.get("items"),
            &Value::Array(vec![Value::Struct(FieldMap::from_iter([
                ("productId".into(), Value::Str("q".into())),
                ("quantity".into(), Value::Int(1)),
            ]))])
        );
    }

    #[test]
    fn names_and_values_with_escapes_or_past_24_bytes_read_as_their_text() {
        // member names are borrowed from the text unless they hold escapes; strings of up to
        // 24 bytes are kept inline, longer ones on the heap
        let long = "a string value longer than twenty-four bytes";
        let text = format!(
            r#"{{"order\u0049d":"o\u00e9 {long}","orderStatus":"paid","user\u0049d":"{long}",
                "createTime":5,"totalAmount":"\u0036999.00",
                "items":[{{"product\u0049d":"p\u00e9","quantity":2}},{{"productId":"{long}"}}]}}"#
        );
        let e = orders().decode(text.as_bytes()).unwrap();
        assert_eq!(e.id, format!("o\u{e9} {long}|paid"));
        assert_eq!(e.get("userId"), &Value::Str(long.into()));
        assert_eq!(
            e.get("totalAmount"),
            &Value::Decimal {
                units: 699_900,
                scale: 2
            }
        );
        assert_eq!(
            e.get("items"),
            &Value::Array(vec![
                Value::Struct(FieldMap::from_iter([
                    ("productId".into(), Value::Str("p\u{e9}".into())),
                    ("quantity".into(), Value::Int(2)),
                ])),
                Value::Struct(FieldMap::from_iter([
                    ("productId".into(), Value::Str(long.into())),
                    ("quantity".into(), Value::Null),
                ])),
            ])
        );
    }

    #[test]
    fn decodes_big_and_exotic_numbers_exactly() {
        let s = orders();
        let e = s
            .decode(
                br#"{"orderId":"o","orderStatus":"paid","userId":"u","createTime":5e2,
                         "totalAmount":12345678901234567890.12}"#,
            )
            .unwrap();
        assert_eq!(e.time_ms, 500);
        assert_eq!(
            e.get("totalAmount"),
            &Value::Decimal {
                units: 1_234_567_890_123_456_789_012,
                scale: 2
            }
        );
        let e = s
            .decode(br#"{"orderId":"o","orderStatus":"paid","userId":"u","createTime":7,"totalAmount":1.2e2}"#)
            .unwrap();
        assert_eq!(
            e.get("totalAmount"),
            &Value::Decimal {
                units: 12_000,
                scale: 2
            }
        );
        // escaped keys and strings
        let e = s
            .decode(br#"{"order\u0049d":"o\n1","orderStatus":"paid","userId":"u","createTime":7,"totalAmount":1}"#)
            .unwrap();
        assert_eq!(e.id, "o\n1|paid");
        // an event time too far ahead of the message's production time
        let ok = br#"{"orderId":"o","orderStatus":"paid","userId":"u","createTime":7200000,"totalAmount":1}"#;
        assert!(s.decode_at(ok, 3_600_000).is_ok());
        assert_eq!(
            s.decode_at(ok, 3_599_999).unwrap_err().to_string(),
            "event time `createTime` is 3600001 ms ahead of the time the message was produced, more than max_future (3600000 ms)"
        );
    }

    /// JSON-ish text built from pieces that matter to the decoder: the source's field names,
    /// numbers of every shape and size, strings with escapes, nesting, and broken syntax.
    fn jsonish() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        let scalar = prop_oneof![
            Just("null".to_string()),
            Just("true".to_string()),
            Just("-0".to_string()),
            Just("1e400".to_string()),
            Just("-1e-400".to_string()),
            Just("99999999999999999999999999999999999999999".to_string()),
            Just("\"6999.00\"".to_string()),
            Just("\"\\u00e9\\n\"".to_string()),
            Just("\"\\ud800x\"".to_string()),
            Just("\"\\ud83d\\ude00\"".to_string()),
            any::<i64>().prop_map(|i| i.to_string()),
            any::<f64>().prop_map(|f| format!("{f:e}")),
            "[0-9]{1,30}(\\.[0-9]{0,30})?([eE][-+]?[0-9]{1,4})?",
            "\"\\PC{0,8}\"",
        ];
        scalar.prop_recursive(4, 64, 6, |inner| {
            let key = prop_oneof![
                Just("orderId"),
                Just("orderStatus"),
                Just("userId"),
                Just("createTime"),
                Just("totalAmount"),
                Just("items"),
                Just("productId"),
                Just("quantity"),
                Just("x"),
            ];
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6)
                    .prop_map(|v| format!("[{}]", v.join(","))),
                proptest::collection::vec((key, inner), 0..8).prop_map(|kv| {
                    let body: Vec<String> = kv
                        .into_iter()
                        .map(|(k, v)| format!("\"{k}\":{v}"))
                        .collect();
                    format!("{{{}}}", body.join(","))
                }),
            ]
        })
    }

    /// The orders source of [`orders`] with one view that explodes its items.
    fn orders_and_view() -> (Source, crate::view::ViewSpec) {
        let cfg = Config::from_toml_str(
            &[
                ORDERS,
                r#"
            [[views]]
            name = "units"
            source = "orders"
            filter = "orderStatus == 'paid'"
            explode = "items"
            bucket = "1m"
            measures = [{ name = "units", kind = "sum", field = "items.quantity" }]
            "#,
            ]
            .concat(),
            "t.toml".as_ref(),
        )
        .unwrap();
        (cfg.sources[0].clone(), cfg.views[0].clone())
    }

    #[test]
    fn a_view_keeps_only_what_it_reads() {
        let (s, v) = orders_and_view();
        let keep = s.keep([&v]);
        let text =
            br#"{"orderId":"o","orderStatus":"paid","userId":"u","createTime":7,"totalAmount":3,
                        "items":[{"productId":"p","quantity":2},null]}"#;
        let e = s.decode_keeping(text, 7, &keep).unwrap();
        assert_eq!(e.id, "o|paid");
        assert_eq!(
            e.get("items"),
            &Value::Array(vec![
                Value::Struct(FieldMap::from_iter([("quantity".into(), Value::Int(2))])),
                Value::Null
            ])
        );
        assert_eq!(e.get("userId"), &Value::Str("u".into()));
        assert_eq!(
            v.contributions(&e),
            v.contributions(&s.decode(text).unwrap())
        );
        // what is not kept is still checked, escapes in strings too
        let lone =
            br#"{"orderId":"o","orderStatus":"paid","userId":"u","createTime":7,"totalAmount":3,
                       "items":[{"productId":"\udc00","quantity":2}]}"#;
        assert_eq!(
            s.decode_keeping(lone, 7, &keep).unwrap_err(),
            s.decode(lone).unwrap_err()
        );
        let bad =
            br#"{"orderId":"o","orderStatus":"paid","userId":"u","createTime":7,"totalAmount":3,
                       "items":[{"productId":5}]}"#;
        assert_eq!(
            s.decode_keeping(bad, 7, &keep).unwrap_err(),
            s.decode(bad).unwrap_err()
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(1_000))]

        /// Keeping only what a view reads refuses the same events for the same reasons, and
        /// gives the view the same contributions.
        #[test]
        fn keeping_less_decides_alike(text in jsonish(), produced in proptest::prelude::any::<i64>()) {
            let (s, v) = orders_and_view();
            let keep = s.keep([&v]);
            match (s.decode_at(text.as_bytes(), produced), s.decode_keeping(text.as_bytes(), produced, &keep)) {
                (Ok(all), Ok(some)) => {
                    proptest::prop_assert_eq!(&all.id, &some.id);
                    proptest::prop_assert_eq!(all.time_ms, some.time_ms);
                    proptest::prop_assert_eq!(v.contributions(&all), v.contributions(&some));
                }
                (Err(a), Err(b)) => proptest::prop_assert_eq!(a, b),
                (a, b) => proptest::prop_assert!(false, "{:?} vs {:?}", a, b),
            }
        }

        /// Any bytes decode to an event or a reason; nothing panics.
        #[test]
        fn any_bytes_decode_or_are_refused(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256)) {
            let _ = orders().decode(&bytes);
        }

        /// Any JSON-ish text decodes or is refused with a reason, and what decodes has the
        /// view contributions of a valid event (no panic either).
        #[test]
        fn jsonish_events_decode_or_are_refused(text in jsonish(), produced in proptest::prelude::any::<i64>()) {
            let s = orders();
            if let Ok(e) = s.decode_at(text.as_bytes(), produced) {
                proptest::prop_assert!(e.time_ms > 0);
                proptest::prop_assert!(!e.id.is_empty());
            }
        }
    }

    /// A source with a field of every type and a view that reads part of them: the fast
    /// path's test.
    const EVERY_TYPE: &str = r#"
            [[sources]]
            name = "s"
            topic = "s"
            event_id = ["id", "u"]
            event_time = "t"
            required = ["u"]
            check = "amount > 0"
            fields = { id = "string", t = "int", u = "string", flag = "bool", ratio = "float",
                       amount = "decimal(2)", address = "struct<city: string, zip: int>",
                       items = "array<struct<productId: string, quantity: int>>",
                       tags = "array<string>" }

            [[views]]
            name = "v"
            source = "s"
            explode = "items"
            bucket = "1m"
            dimensions = ["address.city"]
            measures = [{ name = "units", kind = "sum", field = "items.quantity" }]
"#;

    /// Objects close to valid events of [`EVERY_TYPE`]: each field absent, of its type, or
    /// any of [`jsonish`]'s values; names sometimes escaped or given twice; undeclared
    /// members; members in any order.
    fn near_events() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        let string = || {
            prop_oneof![
                4 => "\"[a-z_]{0,30}\"",
                1 => Just("\"\\u00e9\\n\"".to_string()),
                1 => Just("null".to_string())
            ]
        };
        let int = || {
            prop_oneof![
                4 => (1i64..4_000_000_000_000).prop_map(|i| i.to_string()),
                1 => Just("3.0".to_string()),
                1 => Just("-0".to_string()),
                1 => Just("null".to_string())
            ]
        };
        let struct_of = |members: Vec<(&'static str, BoxedStrategy<String>)>| {
            let parts: Vec<_> = members
                .into_iter()
                .map(|(k, v)| {
                    proptest::option::of(v).prop_map(move |v| v.map(|v| format!("\"{k}\":{v}")))
                })
                .collect();
            parts.prop_map(|p| {
                format!(
                    "{{{}}}",
                    p.into_iter().flatten().collect::<Vec<_>>().join(",")
                )
            })
        };
        let item = struct_of(vec![
            ("productId", string().boxed()),
            ("quantity", int().boxed()),
            ("x", jsonish().boxed()),
        ]);
        let fields: Vec<(&'static str, BoxedStrategy<String>)> = vec![
            ("id", string().boxed()),
            ("t", int().boxed()),
            ("u", string().boxed()),
            (
                "flag",
                prop_oneof![Just("true".to_string()), Just("false".to_string())].boxed(),
            ),
            ("ratio", any::<f64>().prop_map(|f| format!("{f:e}")).boxed()),
            (
                "amount",
                prop_oneof!["[0-9]{1,6}(\\.[0-9]{0,3})?", Just("\"12.50\"".to_string())].boxed(),
            ),
            (
                "address",
                struct_of(vec![("city", string().boxed()), ("zip", int().boxed())]).boxed(),
            ),
            (
                "items",
                proptest::collection::vec(item, 0..3)
                    .prop_map(|v| format!("[{}]", v.join(",")))
                    .boxed(),
            ),
            (
                "tags",
                proptest::collection::vec(string(), 0..3)
                    .prop_map(|v| format!("[{}]", v.join(",")))
                    .boxed(),
            ),
        ];
        let members: Vec<_> = fields
            .into_iter()
            .map(|(k, v)| {
                // absent, of its type (most often), or anything
                let value = prop_oneof![1 => Just(None), 6 => v.prop_map(Some), 1 => jsonish().prop_map(Some)];
                let name = prop_oneof![4 => Just(k.to_string()), 1 => Just(format!("\\u{:04x}{}", u32::from(k.as_bytes()[0]), &k[1..]))];
                (name, value).prop_map(|(n, v)| v.map(|v| format!("\"{n}\":{v}")))
            })
            .collect();
        (
            members,
            proptest::option::of(jsonish()),
            any::<proptest::sample::Index>(),
            any::<bool>(),
        )
            .prop_map(|(m, extra, at, twice)| {
                let mut m: Vec<String> = m.into_iter().flatten().collect();
                if let Some(x) = extra {
                    m.insert(at.index(m.len() + 1), format!("\"zz\":{x}"));
                }
                if twice && !m.is_empty() {
                    let again = m[at.index(m.len())].clone();
                    m.push(again);
                }
                let turn = at.index(m.len().max(1)).min(m.len());
                m.rotate_left(turn);
                format!("{{{}}}", m.join(","))
            })
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2_000))]

        /// The fast path decides every event as the full decoder does: the same event, its
        /// fields in the same order, or the same reason; for what a view keeps and for
        /// everything.
        #[test]
        fn the_fast_path_decodes_as_the_full_decoder(text in near_events(), produced in 0i64..8_000_000_000_000) {
            let cfg = Config::from_toml_str(EVERY_TYPE, "t.toml".as_ref()).unwrap();
            let s = &cfg.sources[0];
            for keep in [s.keep([&cfg.views[0]]), s.keep_all()] {
                let fast = s.decode_keeping(text.as_bytes(), produced, &keep);
                let full = s.decode_keeping(text.as_bytes(), produced, &keep.without_plan());
                proptest::prop_assert_eq!(&fast, &full);
                if let (Ok(a), Ok(b)) = (&fast, &full) {
                    let order = |e: &Event| format!("{:?}", e.fields.iter().collect::<Vec<_>>());
                    proptest::prop_assert_eq!(order(a), order(b));
                }
            }
        }
    }

    #[test]
    fn valid_events_take_the_fast_path() {
        let cfg = Config::from_toml_str(EVERY_TYPE, "t.toml".as_ref()).unwrap();
        let s = &cfg.sources[0];
        let text = r#"{"id":"e\u0031","t":60000,"u":"u","flag":true,"ratio":0.5,"amount":"12.50",
            "address":{"city":"Hangzhou","zip":310000},"items":[{"productId":"p","quantity":2},null],
            "tags":["a"],"zz":[1,{"a":null}]}"#;
        for keep in [s.keep([&cfg.views[0]]), s.keep_all()] {
            let plan = keep.plan.as_deref().unwrap();
            let fields = plan
                .decode(text)
                .expect("the fast path takes a valid event");
            let e = s.decode_keeping(text.as_bytes(), 60_000, &keep).unwrap();
            assert_eq!(e.fields, fields);
            assert_eq!(e.id, "e1|u");
            assert_eq!(e.get("address.city"), &Value::Str("Hangzhou".into()));
        }
        // an integer written as a float is the full decoder's to read
        let float_int = text.replace("60000", "6e4");
        assert!(s.keep_all().plan.unwrap().decode(&float_int).is_none());
        assert_eq!(s.decode(float_int.as_bytes()).unwrap().time_ms, 60_000);
    }

    #[test]
    fn several_wrong_fields_report_the_first_by_name() {
        let s = orders();
        let reason = |b: &[u8]| s.decode(b).unwrap_err().to_string();
        let rest = r#""orderStatus":"paid","createTime":5,"totalAmount":1"#;
        for text in [
            format!(r#"{{"userId":5,"orderId":6,{rest}}}"#),
            format!(r#"{{"orderId":6,"userId":5,{rest}}}"#),
            format!(r#"{{"userId":[1,2],"x":{{}},"orderId":6,{rest}}}"#),
        ] {
            assert_eq!(
                reason(text.as_bytes()),
                "field `orderId`: expected string, found the number 6",
                "{text}"
            );
        }
        assert_eq!(
            reason(
                format!(r#"{{"orderId":6,"userId":"u","items":[{{"quantity":"q"}}],{rest}}}"#)
                    .as_bytes()
            ),
            "field `items[0].quantity`: expected int, found the string \"q\""
        );
        // within one field, the first wrong value in the text
        assert_eq!(
            reason(format!(r#"{{"orderId":"o","userId":"u","items":[{{"quantity":"b","productId":1}},{{"quantity":"a"}}],{rest}}}"#).as_bytes()),
            "field `items[0].quantity`: expected int, found the string \"b\""
        );
    }

    #[test]
    fn deep_nesting_and_broken_text_are_refused_without_a_crash() {
        let s = orders();
        let deep = |open: &str, close: &str| {
            let n = 200_000;
            format!("{}{}", open.repeat(n), close.repeat(n))
        };
        for text in [
            deep("[", "]"),
            deep(r#"{"a":"#, "}"),
            format!(r#"{{"orderId":"o","items":{}}}"#, deep("[", "]")),
            format!(r#"{{"x":{},"orderId":"o"}}"#, deep("[", "]")),
        ] {
            assert!(s.decode(text.as_bytes()).is_err());
        }
        let reason = |b: &[u8]| s.decode(b).unwrap_err().to_string();
        assert!(reason(b"{\"orderId\":\"\xff\"}").starts_with("not valid JSON"));
        assert!(reason(br#"{"orderId":"o"} x"#).starts_with("not valid JSON: trailing characters"));
        assert_eq!(
            reason(br#"{"orderId":"\ud800","userId":"u"}"#),
            "field `orderId`: expected string, found a string with an escape that is not Unicode (a lone surrogate)"
        );
        assert_eq!(reason(b" 7 "), "expected a JSON object, found a number");
    }

    #[test]
    fn refuses_bad_events_with_a_reason() {
        let s = orders();
        let reason = |b: &[u8]| s.decode(b).unwrap_err().to_string();
        assert!(reason(b"{not json").starts_with("not valid JSON"));
        assert_eq!(reason(b"[1]"), "expected a JSON object, found an array");
        let base = r#""orderStatus":"paid","userId":"u","createTime":5,"totalAmount":1"#;
        assert_eq!(
            reason(format!("{{{base}}}").as_bytes()),
            "required field `orderId` is missing or null"
        );
        assert_eq!(
            reason(format!(r#"{{"orderId":7,{base}}}"#).as_bytes()),
            "field `orderId`: expected string, found the number 7"
        );
        assert_eq!(
            reason(br#"{"orderId":"o","orderStatus":"paid","userId":"u","createTime":-1,"totalAmount":1}"#),
            "event time `createTime` must be a positive epoch-millisecond integer before the year 10000, found -1"
        );
        assert_eq!(
            reason(br#"{"orderId":"o","orderStatus":"paid","userId":"u","createTime":5,"totalAmount":1.234}"#),
            "field `totalAmount`: expected decimal(2), found the number 1.234"
        );
        assert_eq!(
            reason(br#"{"orderId":"o","orderStatus":"paid","userId":"u","createTime":5,"totalAmount":0}"#),
            "check `totalAmount > 0` does not hold"
        );
        assert_eq!(
            reason(br#"{"orderId":"o","orderStatus":"paid","createTime":5,"totalAmount":3}"#),
            "required field `userId` is missing or null"
        );
        assert_eq!(
            reason(br#"{"orderId":"o","orderStatus":"paid","userId":"u","createTime":5,"totalAmount":3,"items":[{"quantity":"x"}]}"#),
            "field `items[0].quantity`: expected int, found the string \"x\""
        );
        // a value declared an array or a struct is read in the same pass as the rest: each
        // other kind it can hold is refused as a scalar's would be
        let items = |v: &str| reason(format!(r#"{{"orderId":"o",{base},"items":{v}}}"#).as_bytes());
        let expected = "expected array<struct<productId: string, quantity: int>>";
        assert_eq!(
            items("{}"),
            format!("field `items`: {expected}, found an object")
        );
        assert_eq!(
            items("\"x\""),
            format!("field `items`: {expected}, found the string \"x\"")
        );
        assert_eq!(
            items("-7"),
            format!("field `items`: {expected}, found the number -7")
        );
        assert_eq!(
            items("2.5"),
            format!("field `items`: {expected}, found the number 2.5")
        );
        assert_eq!(
            items("true"),
            format!("field `items`: {expected}, found a boolean")
        );
        assert_eq!(
            items("[{},5]"),
            "field `items[1]`: expected struct<productId: string, quantity: int>, found the number 5"
        );
        assert_eq!(
            items(r#"[null,{"quantity":[1]}]"#),
            "field `items[1].quantity`: expected int, found an array"
        );
        assert!(
            s.decode(format!(r#"{{"orderId":"o",{base},"items":null}}"#).as_bytes())
                .is_ok()
        );
        assert_eq!(
            reason(br#"{"orderId":"o","orderStatus":"paid","userId":"u","createTime":5.5,"totalAmount":3}"#),
            "field `createTime`: expected int, found the number 5.5"
        );
        assert_eq!(
            reason(br#"{"orderId":"o","orderStatus":"paid","userId":"u","createTime":99999999999999999999,"totalAmount":3}"#),
            "field `createTime`: expected int, found the number 99999999999999999999"
        );
    }
}
