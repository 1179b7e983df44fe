//! The decoder's fast path: a source's declared fields compiled together with what to keep of
//! them ([`Keep`]), so that decoding a valid event finds each member's type and whether it is
//! kept in one scan of a list, and reads strings, integers and booleans as the parser meets
//! them instead of capturing their text first.
//!
//! The fast path only ever accepts: anything it does not take as it comes (a type mismatch,
//! an integer written as `3.0` or beyond 64 bits, text that is not UTF-8, JSON that is not
//! valid) makes it give up, and the event is decoded again by the full decoder, which either
//! accepts it or says exactly why not. So an event is accepted or refused, and for the same
//! reason, whichever path decodes it; an accepted event's fields are the same values in the
//! same order (a property test in `decode.rs` checks both against the full decoder).

use std::collections::BTreeMap;

use compact_str::CompactString;
use serde::de::{DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

use crate::decode::Keep;
use crate::types::{FieldMap, FieldType, Value, same_name};

/// An object's declared members, with what is kept of each, in declared order (a struct's) or
/// by name (a source's top-level fields): the order in which the full decoder numbers them.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ObjectPlan {
    members: Vec<Member>,
    /// Whether the whole object is kept: its absent members are then added as null.
    all: bool,
    /// How many members are kept at most.
    kept: usize,
}

/// One declared member: its name, how its value is read, and whether it is kept.
#[derive(Debug, Clone, PartialEq)]
struct Member {
    name: CompactString,
    value: ValuePlan,
}

/// How a declared value is read, and whether it is built (`keep`) or only checked.
#[derive(Debug, Clone, PartialEq)]
struct ValuePlan {
    kind: Kind,
    keep: bool,
}

#[derive(Debug, Clone, PartialEq)]
enum Kind {
    String,
    Int,
    Bool,
    /// A float or a decimal: read from its text, exactly as the full decoder reads it.
    Text(FieldType),
    Struct(Box<ObjectPlan>),
    Array(Box<ValuePlan>),
}

impl ObjectPlan {
    /// The plan for an event of `fields`, keeping what `keep` names.
    pub(crate) fn source(fields: &BTreeMap<String, FieldType>, keep: &Keep) -> ObjectPlan {
        ObjectPlan::of(fields.iter(), keep)
    }

    fn of<'f>(
        fields: impl ExactSizeIterator<Item = (&'f String, &'f FieldType)>,
        keep: &Keep,
    ) -> ObjectPlan {
        let declared = fields.len();
        ObjectPlan {
            members: fields
                .map(|(name, t)| Member {
                    name: CompactString::new(name),
                    value: ValuePlan::of(t, keep.member(name)),
                })
                .collect(),
            all: keep.is_all(),
            kept: keep.capacity(declared),
        }
    }

    /// The position of the member named `key`, if it is declared.
    fn find(&self, key: &str) -> Option<usize> {
        self.members.iter().position(|m| same_name(&m.name, key))
    }

    /// Decodes a JSON object's text, `None` where the full decoder must decide.
    pub(crate) fn decode(&self, text: &str) -> Option<FieldMap> {
        let mut de = serde_json::Deserializer::from_str(text);
        let fields = serde::Deserializer::deserialize_map(&mut de, Object(self)).ok()?;
        de.end().ok()?;
        Some(fields)
    }
}

impl ValuePlan {
    /// How to read a value of type `t`, kept as `keep` says (`None`: only checked).
    fn of(t: &FieldType, keep: Option<&Keep>) -> ValuePlan {
        let kind = match t {
            FieldType::String => Kind::String,
            FieldType::Int => Kind::Int,
            FieldType::Bool => Kind::Bool,
            FieldType::Float | FieldType::Decimal(_) => Kind::Text(t.clone()),
            FieldType::Struct(members) => Kind::Struct(Box::new(ObjectPlan::of(
                members.iter().map(|(n, t)| (n, t)),
                keep.unwrap_or(&Keep::default()),
            ))),
            // an array's elements are kept as the array is
            FieldType::Array(inner) => Kind::Array(Box::new(ValuePlan::of(inner, keep))),
        };
        ValuePlan {
            kind,
            keep: keep.is_some(),
        }
    }
}

/// Gives up on the fast path (the message is never shown).
fn give_up<E: serde::de::Error>() -> E {
    E::custom("not on the fast path")
}

/// An object read member by member, as [`ObjectPlan`] says.
struct Object<'p>(&'p ObjectPlan);

impl<'de> Visitor<'de> for Object<'_> {
    type Value = FieldMap;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<FieldMap, A::Error> {
        let plan = self.0;
        let mut out = FieldMap::with_capacity(plan.kept);
        // as the full decoder does: a member met for the first time is added, one met again
        // replaces its value
        let mut kept = crate::decode::KeptSoFar::default();
        while let Some(crate::decode::Text(key)) = map.next_key()? {
            let Some(i) = plan.find(&key) else {
                map.next_value::<serde::de::IgnoredAny>()?;
                continue;
            };
            let member = &plan.members[i];
            let v = map.next_value_seed(&member.value)?;
            if !member.value.keep {
                continue;
            }
            if kept.first_time(i) {
                out.push_new_named(&member.name, v);
            } else {
                out.insert(&member.name, v);
            }
        }
        if plan.all {
            out.fill_absent(plan.members.iter().map(|m| &m.name));
        }
        Ok(out)
    }
}

/// A declared value, read where it stands; `Null` when it is only checked.
impl<'de> DeserializeSeed<'de> for &ValuePlan {
    type Value = Value;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        match &self.kind {
            Kind::Text(t) => {
                let raw: &'de RawValue = serde::Deserialize::deserialize(d)?;
                let v = crate::decode::decode_scalar(&crate::decode::Path::Field(""), t, raw.get())
                    .map_err(|_| give_up::<D::Error>())?;
                Ok(if self.keep { v } else { Value::Null })
            }
            _ => d.deserialize_any(Read(self)),
        }
    }
}

/// A value of a declared string, integer, boolean, struct or array, as the parser meets it.
struct Read<'p>(&'p ValuePlan);

impl<'de> Visitor<'de> for Read<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a declared value")
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E: serde::de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Value, E> {
        match self.0.kind {
            Kind::Bool if self.0.keep => Ok(Value::Bool(v)),
            Kind::Bool => Ok(Value::Null),
            _ => Err(give_up()),
        }
    }

    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Value, E> {
        match self.0.kind {
            Kind::Int if self.0.keep => Ok(Value::Int(v)),
            Kind::Int => Ok(Value::Null),
            _ => Err(give_up()),
        }
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Value, E> {
        match i64::try_from(v) {
            Ok(i) => self.visit_i64(i),
            Err(_) => Err(give_up()),
        }
    }

    fn visit_borrowed_str<E: serde::de::Error>(self, v: &'de str) -> Result<Value, E> {
        self.visit_str(v)
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Value, E> {
        match self.0.kind {
            Kind::String if self.0.keep => Ok(Value::Str(CompactString::new(v))),
            Kind::String => Ok(Value::Null),
            _ => Err(give_up()),
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Value, A::Error> {
        let Kind::Struct(plan) = &self.0.kind else {
            return Err(give_up());
        };
        let fields = Object(plan).visit_map(map)?;
        Ok(if self.0.keep {
            Value::Struct(fields)
        } else {
            Value::Null
        })
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let Kind::Array(item) = &self.0.kind else {
            return Err(give_up());
        };
        let mut out = Vec::with_capacity(if self.0.keep { 4 } else { 0 });
        while let Some(v) = seq.next_element_seed(item.as_ref())? {
            if self.0.keep {
                out.push(v);
            }
        }
        Ok(if self.0.keep {
            Value::Array(out)
        } else {
            Value::Null
        })
    }
}
