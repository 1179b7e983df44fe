//! Measures and their algebra: every measure has a partial state with an identity and an
//! associative, commutative merge. The speed layer folds events into states; the batch layer
//! builds the same states from Polars aggregates; serving renders them. One code path.

use std::collections::BTreeMap;

use crate::error::{Error, Result};
use crate::sketch::Distinct;
use crate::types::{Num, NumType};

/// What a measure computes, resolved against the source schema.
#[derive(Debug, Clone, PartialEq)]
pub enum MeasureKind {
    /// Number of rows.
    Count,
    /// Sum of a numeric field.
    Sum(NumType),
    /// Minimum of a numeric field.
    Min(NumType),
    /// Maximum of a numeric field.
    Max(NumType),
    /// Mean of a numeric field (state: sum and count).
    Avg(NumType),
    /// Number of distinct keys (exact up to 4096, then HyperLogLog).
    DistinctCount,
    /// The `k` keys with the largest total weight (ties broken by key).
    TopK {
        /// How many keys to report.
        k: usize,
        /// Numeric type of the weight (int when counting rows).
        weight: NumType,
    },
}

impl MeasureKind {
    /// The kind's name as written in config files (`count`, `top_k`, …).
    pub fn name(&self) -> &'static str {
        self.identity().kind_name()
    }

    /// The identity of the merge.
    pub fn identity(&self) -> State {
        match self {
            MeasureKind::Count => State::Count(0),
            MeasureKind::Sum(t) => State::Sum(Num::zero(*t)),
            MeasureKind::Min(_) => State::Min(None),
            MeasureKind::Max(_) => State::Max(None),
            MeasureKind::Avg(t) => State::Avg {
                sum: Num::zero(*t),
                count: 0,
            },
            MeasureKind::DistinctCount => State::Distinct(Distinct::default()),
            MeasureKind::TopK { .. } => State::TopK(BTreeMap::new()),
        }
    }

    /// The final value of a state, as JSON.
    pub fn render(&self, state: &State) -> serde_json::Value {
        use serde_json::{Value as J, json};
        match (self, state) {
            (MeasureKind::Count, State::Count(c)) => J::from(*c),
            (MeasureKind::Sum(t), State::Sum(n)) => n.to_json(*t),
            (MeasureKind::Min(t), State::Min(n)) | (MeasureKind::Max(t), State::Max(n)) => {
                n.map_or(J::Null, |n| n.to_json(*t))
            }
            (MeasureKind::Avg(t), State::Avg { sum, count }) => {
                if *count == 0 || sum.out_of_range() {
                    J::Null
                } else {
                    sum.to_f64(*t)
                        .and_then(|s| serde_json::Number::from_f64(s / *count as f64))
                        .map_or(J::Null, J::Number)
                }
            }
            (MeasureKind::DistinctCount, State::Distinct(d)) => J::from(d.estimate()),
            (MeasureKind::TopK { k, weight }, State::TopK(m)) => J::Array(
                top_k(m, *k)
                    .into_iter()
                    .map(|(key, w)| json!({"key": key, "value": w.to_json(*weight)}))
                    .collect(),
            ),
            _ => J::Null,
        }
    }
}

impl MeasureKind {
    /// Appends the JSON of [`MeasureKind::render`] of `state` to `out`: the bytes serde_json
    /// writes for the rendered value, without building it for counts, sums, averages, minima,
    /// maxima and distinct counts (the per-row values of most answers).
    pub fn write_json(&self, state: &State, out: &mut Vec<u8>) {
        match (self, state) {
            (MeasureKind::Count, State::Count(c)) => {
                let _ = serde_json::to_writer(&mut *out, c);
            }
            (MeasureKind::Sum(t), State::Sum(n)) => n.write_json(*t, out),
            // as render's `Number::from_f64`: a finite float, or null
            (MeasureKind::Avg(t), State::Avg { sum, count }) => {
                match sum.to_f64(*t).map(|s| s / *count as f64) {
                    Some(avg) if *count != 0 && !sum.out_of_range() && avg.is_finite() => {
                        let _ = serde_json::to_writer(&mut *out, &avg);
                    }
                    _ => out.extend_from_slice(b"null"),
                }
            }
            (MeasureKind::Min(t), State::Min(Some(n)))
            | (MeasureKind::Max(t), State::Max(Some(n))) => n.write_json(*t, out),
            (MeasureKind::DistinctCount, State::Distinct(d)) => {
                out.extend_from_slice(d.estimate().to_string().as_bytes());
            }
            _ => {
                let _ = serde_json::to_writer(&mut *out, &self.render(state));
            }
        }
    }

    /// Why the value of `state` cannot be shown, if it cannot: a sum or weight that left its
    /// type's range. The value is then `null`, and this message says why.
    pub fn problem(&self, state: &State) -> Option<String> {
        let overflowed = match state {
            State::Sum(n) => n.out_of_range(),
            State::Avg { sum, .. } => sum.out_of_range(),
            State::TopK(m) => m.values().any(|w| w.out_of_range()),
            _ => false,
        };
        overflowed.then(|| {
            let range = match self {
                MeasureKind::Sum(t) | MeasureKind::Avg(t) | MeasureKind::TopK { weight: t, .. } => {
                    match t {
                        NumType::Int => "the 64-bit integer range",
                        NumType::Float => "the finite float range",
                        NumType::Decimal(_) => "38 digits",
                    }
                }
                _ => "its range",
            };
            format!("the sum overflowed {range} in this bucket")
        })
    }
}

/// The `k` heaviest keys, by weight descending, then key ascending.
pub fn top_k(m: &BTreeMap<String, Num>, k: usize) -> Vec<(&str, Num)> {
    let mut v: Vec<(&str, Num)> = m.iter().map(|(k, w)| (k.as_str(), *w)).collect();
    v.sort_by(|a, b| b.1.cmp_total(&a.1).then_with(|| a.0.cmp(b.0)));
    v.truncate(k);
    v
}

/// A partial aggregate of one measure.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Row count.
    Count(i64),
    /// Running sum.
    Sum(Num),
    /// Smallest value seen.
    Min(Option<Num>),
    /// Largest value seen.
    Max(Option<Num>),
    /// Sum and count of non-null values.
    Avg {
        /// Sum.
        sum: Num,
        /// Count.
        count: i64,
    },
    /// Distinct-count sketch.
    Distinct(Distinct),
    /// Total weight per key (exact: every key is kept, so merges are exact).
    TopK(BTreeMap<String, Num>),
}

impl State {
    fn kind_name(&self) -> &'static str {
        match self {
            State::Count(_) => "count",
            State::Sum(_) => "sum",
            State::Min(_) => "min",
            State::Max(_) => "max",
            State::Avg { .. } => "avg",
            State::Distinct(_) => "distinct_count",
            State::TopK(_) => "top_k",
        }
    }

    /// Merges `other` into `self`. Associative and commutative, with the kind's identity.
    pub fn merge(&mut self, other: State) -> Result<()> {
        let left = self.kind_name();
        match (self, other) {
            (State::Count(a), State::Count(b)) => *a = a.saturating_add(b),
            (State::Sum(a), State::Sum(b)) => *a = *a + b,
            (State::Min(a), State::Min(b)) => {
                *a = pick(*a, b, |x, y| x.cmp_total(y).is_le());
            }
            (State::Max(a), State::Max(b)) => {
                *a = pick(*a, b, |x, y| x.cmp_total(y).is_ge());
            }
            (State::Avg { sum, count }, State::Avg { sum: s2, count: c2 }) => {
                *sum = *sum + s2;
                *count = count.saturating_add(c2);
            }
            (State::Distinct(a), State::Distinct(b)) => a.merge(b),
            (State::TopK(a), State::TopK(b)) => {
                for (k, w) in b {
                    a.entry(k).and_modify(|x| *x = *x + w).or_insert(w);
                }
            }
            (_, other) => {
                return Err(Error::StateMismatch {
                    left,
                    right: other.kind_name(),
                });
            }
        }
        Ok(())
    }

    /// Removes `other` from `self` where the measure has an inverse (count, sum, avg);
    /// returns false for measures without one.
    pub fn retract(&mut self, other: &State) -> bool {
        match (self, other) {
            (State::Count(a), State::Count(b)) => *a = a.saturating_sub(*b),
            (State::Sum(a), State::Sum(b)) => *a = *a - *b,
            (State::Avg { sum, count }, State::Avg { sum: s2, count: c2 }) => {
                *sum = *sum - *s2;
                *count = count.saturating_sub(*c2);
            }
            _ => return false,
        }
        true
    }
}

fn pick(a: Option<Num>, b: Option<Num>, keep_a: impl Fn(&Num, &Num) -> bool) -> Option<Num> {
    match (a, b) {
        (Some(x), Some(y)) => Some(if keep_a(&x, &y) { x } else { y }),
        (x, None) => x,
        (None, y) => y,
    }
}

/// Merges a whole row of states (one per measure) into `acc`.
pub fn merge_row(acc: &mut [State], row: Vec<State>) -> Result<()> {
    for (a, b) in acc.iter_mut().zip(row) {
        a.merge(b)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn kinds() -> Vec<MeasureKind> {
        vec![
            MeasureKind::Count,
            MeasureKind::Sum(NumType::Int),
            MeasureKind::Sum(NumType::Decimal(2)),
            MeasureKind::Min(NumType::Int),
            MeasureKind::Max(NumType::Decimal(2)),
            MeasureKind::Avg(NumType::Int),
            MeasureKind::Avg(NumType::Decimal(2)),
            MeasureKind::DistinctCount,
            MeasureKind::TopK {
                k: 3,
                weight: NumType::Int,
            },
        ]
    }

    /// An arbitrary single-input state for each kind, from a small integer.
    fn state_of(kind: &MeasureKind, v: i64) -> State {
        match kind {
            MeasureKind::Count => State::Count(v.rem_euclid(5)),
            MeasureKind::Sum(NumType::Decimal(_)) => State::Sum(Num::Dec(i128::from(v) * 7)),
            MeasureKind::Sum(_) => State::Sum(Num::Int(v)),
            MeasureKind::Min(_) => State::Min(Some(Num::Int(v))),
            MeasureKind::Max(_) => State::Max(Some(Num::Dec(i128::from(v)))),
            MeasureKind::Avg(NumType::Decimal(_)) => State::Avg {
                sum: Num::Dec(i128::from(v) * 13),
                count: 1,
            },
            MeasureKind::Avg(_) => State::Avg {
                sum: Num::Int(v),
                count: 1,
            },
            MeasureKind::DistinctCount => State::Distinct(Distinct::of(&format!("u{}", v % 50))),
            MeasureKind::TopK { .. } => State::TopK(BTreeMap::from([(
                format!("p{}", v.rem_euclid(7)),
                Num::Int(v.abs()),
            )])),
        }
    }

    fn fold(kind: &MeasureKind, vals: &[i64]) -> State {
        let mut s = kind.identity();
        for v in vals {
            s.merge(state_of(kind, *v)).unwrap();
        }
        s
    }

    proptest! {
        /// The written JSON of every kind's value is the bytes of its rendered value: folded
        /// states, identities (no value), and sums past their range.
        #[test]
        fn written_values_are_the_rendered_values(
            vals in prop::collection::vec(-1000i64..1000, 0..20),
        ) {
            for kind in kinds() {
                let overflowed = match &kind {
                    MeasureKind::Sum(_) => Some(State::Sum(Num::Overflow)),
                    MeasureKind::Avg(_) => Some(State::Avg { sum: Num::Overflow, count: 2 }),
                    _ => None,
                };
                for state in [fold(&kind, &vals), kind.identity()].into_iter().chain(overflowed) {
                    let mut written = Vec::new();
                    kind.write_json(&state, &mut written);
                    prop_assert_eq!(written, serde_json::to_vec(&kind.render(&state)).unwrap(), "{:?}", kind);
                }
            }
        }

        #[test]
        fn merge_is_associative_commutative_with_identity(
            a in prop::collection::vec(-1000i64..1000, 0..20),
            b in prop::collection::vec(-1000i64..1000, 0..20),
            c in prop::collection::vec(-1000i64..1000, 0..20),
        ) {
            for kind in kinds() {
                let (sa, sb, sc) = (fold(&kind, &a), fold(&kind, &b), fold(&kind, &c));
                // (a·b)·c == a·(b·c)
                let mut left = sa.clone();
                left.merge(sb.clone()).unwrap();
                left.merge(sc.clone()).unwrap();
                let mut bc = sb.clone();
                bc.merge(sc.clone()).unwrap();
                let mut right = sa.clone();
                right.merge(bc).unwrap();
                prop_assert_eq!(&left, &right, "associativity of {:?}", kind);
                // a·b == b·a
                let mut ab = sa.clone();
                ab.merge(sb.clone()).unwrap();
                let mut ba = sb.clone();
                ba.merge(sa.clone()).unwrap();
                prop_assert_eq!(&ab, &ba, "commutativity of {:?}", kind);
                // e·a == a
                let mut ea = kind.identity();
                ea.merge(sa.clone()).unwrap();
                prop_assert_eq!(&ea, &sa, "identity of {:?}", kind);
                // retract undoes merge where there is an inverse
                let mut r = ab.clone();
                if r.retract(&sb) {
                    prop_assert_eq!(&r, &sa, "inverse of {:?}", kind);
                }
            }
        }
    }

    #[test]
    fn mismatched_states_are_an_error() {
        let mut s = State::Count(1);
        assert!(s.merge(State::Sum(Num::Int(1))).is_err());
    }

    #[test]
    fn renders_final_values() {
        let sum = MeasureKind::Sum(NumType::Decimal(2));
        assert_eq!(
            sum.render(&State::Sum(Num::Dec(699_950))).to_string(),
            "\"6999.50\""
        );
        assert_eq!(sum.problem(&State::Sum(Num::Dec(699_950))), None);
        let over = State::Sum(Num::Dec(crate::types::DECIMAL_LIMIT));
        assert!(sum.render(&over).is_null());
        assert_eq!(
            sum.problem(&over).as_deref(),
            Some("the sum overflowed 38 digits in this bucket")
        );
        let mut s = State::Sum(Num::Float(f64::MAX));
        s.merge(State::Sum(Num::Float(f64::MAX))).unwrap();
        assert_eq!(s, State::Sum(Num::Overflow));
        // an overflowed state survives being stored
        let text = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<State>(&text).unwrap(), s);
        let avg = MeasureKind::Avg(NumType::Int);
        assert_eq!(
            avg.render(&State::Avg {
                sum: Num::Int(7),
                count: 2
            })
            .to_string(),
            "3.5"
        );
        assert!(avg.render(&avg.identity()).is_null());
        let top = MeasureKind::TopK {
            k: 2,
            weight: NumType::Int,
        };
        let m = BTreeMap::from([
            ("a".to_string(), Num::Int(3)),
            ("b".to_string(), Num::Int(5)),
            ("c".to_string(), Num::Int(3)),
        ]);
        assert_eq!(
            top.render(&State::TopK(m)).to_string(),
            r#"[{"key":"b","value":5},{"key":"a","value":3}]"#
        );
    }
}
