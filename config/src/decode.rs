//! Decoding raw JSON bytes into typed [`Event`]s against a source's declared schema.
//!
//! Pure: both the speed consumer and the lake sink decode with this, so they agree on what
//! is valid and on every value (decimals are parsed from the number's text, never via f64).

use std::collections::BTreeMap;

use serde_json::Value as J;

use crate::types::{FieldType, Value, parse_decimal};
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
    /// The event time is not a positive epoch-millisecond integer.
    #[error("event time `{field}` must be a positive epoch-millisecond integer, found {found}")]
    Time {
        /// The time field.
        field: String,
        /// What it held.
        found: String,
    },
    /// The source's `check` filter did not hold.
    #[error("check `{0}` does not hold")]
    Check(String),
}

fn json_kind(v: &J) -> &'static str {
    match v {
        J::Null => "null",
        J::Bool(_) => "a boolean",
        J::Number(_) => "a number",
        J::String(_) => "a string",
        J::Array(_) => "an array",
        J::Object(_) => "an object",
    }
}

fn decode_value(path: &str, t: &FieldType, v: &J) -> Result<Value, DecodeError> {
    let mismatch = || DecodeError::Type {
        path: path.to_string(),
        expected: t.to_string(),
        found: match v {
            J::Number(n) => format!("the number {n}"),
            J::String(s) if s.len() <= 40 => format!("the string {s:?}"),
            other => json_kind(other).to_string(),
        },
    };
    if v.is_null() {
        return Ok(Value::Null);
    }
    Ok(match t {
        FieldType::String => Value::Str(v.as_str().ok_or_else(mismatch)?.to_string()),
        FieldType::Bool => Value::Bool(v.as_bool().ok_or_else(mismatch)?),
        FieldType::Int => match v {
            J::Number(n) => Value::Int(
                n.as_i64()
                    .or_else(|| {
                        n.as_f64()
                            .filter(|f| f.fract() == 0.0 && f.abs() < 9e15)
                            .map(|f| f as i64)
                    })
                    .ok_or_else(mismatch)?,
            ),
            _ => return Err(mismatch()),
        },
        FieldType::Float => Value::Float(v.as_f64().ok_or_else(mismatch)?),
        FieldType::Decimal(scale) => {
            let text = match v {
                J::Number(n) => n.to_string(),
                J::String(s) => s.clone(),
                _ => return Err(mismatch()),
            };
            let units = parse_decimal(&text, *scale).ok_or_else(mismatch)?;
            Value::Decimal {
                units,
                scale: *scale,
            }
        }
        FieldType::Array(inner) => {
            let items = v.as_array().ok_or_else(mismatch)?;
            let mut out = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                out.push(decode_value(&format!("{path}[{i}]"), inner, item)?);
            }
            Value::Array(out)
        }
        FieldType::Struct(fields) => {
            let obj = v.as_object().ok_or_else(mismatch)?;
            let mut out = BTreeMap::new();
            for (name, ft) in fields {
                let val = obj.get(name).unwrap_or(&J::Null);
                out.insert(
                    name.clone(),
                    decode_value(&format!("{path}.{name}"), ft, val)?,
                );
            }
            Value::Struct(out)
        }
    })
}

impl Source {
    /// Decodes one message value into an event, or says why it is refused.
    pub fn decode(&self, bytes: &[u8]) -> Result<Event, DecodeError> {
        let json: J =
            serde_json::from_slice(bytes).map_err(|e| DecodeError::Json(e.to_string()))?;
        let obj = match &json {
            J::Object(o) => o,
            other => return Err(DecodeError::NotObject(json_kind(other))),
        };
        let mut fields = BTreeMap::new();
        for (name, t) in &self.fields {
            let v = obj.get(name).unwrap_or(&J::Null);
            fields.insert(name.clone(), decode_value(name, t, v)?);
        }
        let event = Event {
            id: String::new(),
            time_ms: 0,
            fields,
        };
        for f in self.event_id.iter().chain(&self.required) {
            if matches!(event.get(f), Value::Null) {
                return Err(DecodeError::Missing(f.clone()));
            }
        }
        let time_ms = match event.get(&self.event_time) {
            Value::Int(t) if *t > 0 => *t,
            Value::Null => return Err(DecodeError::Missing(self.event_time.clone())),
            other => {
                return Err(DecodeError::Time {
                    field: self.event_time.clone(),
                    found: other.to_json().to_string(),
                });
            }
        };
        let id = self
            .event_id
            .iter()
            .map(|f| event.get(f).key_text().unwrap_or_default())
            .collect::<Vec<_>>()
            .join("|");
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
