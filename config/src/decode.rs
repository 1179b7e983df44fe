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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Config;

    fn orders() -> Source {
        let cfg = Config::from_toml_str(
            r#"
            [[sources]]
            name = "orders"
            topic = "orders"
            event_id = ["orderId", "orderStatus"]
            event_time = "createTime"
            required = ["userId"]
            check = "totalAmount > 0"
            fields = { orderId = "string", orderStatus = "string", userId = "string", createTime = "int",
                       totalAmount = "decimal(2)", items = "array<struct<productId: string, quantity: int>>" }
            "#,
            "t.toml".as_ref(),
        )
        .unwrap();
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
            &Value::Array(vec![Value::Struct(BTreeMap::from([
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
            "event time `createTime` must be a positive epoch-millisecond integer, found -1"
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
    }
}
