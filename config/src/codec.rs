//! The binary encoding of a row of measure states, the same bytes in the speed store and in
//! the batch tables' `_state` column.
//!
//! ```text
//! "DS" · version (1 byte) · view fingerprint (8 bytes, little-endian) · states (varint count, then each)
//! state   = tag (1 byte) · payload
//!   count       0  zigzag varint
//!   sum         1  num
//!   min         2  0 | 1 num            (absent or present)
//!   max         3  0 | 1 num
//!   avg         4  num · zigzag varint count
//!   exact set   5  varint n · n hashes, sorted, each as the varint gap from the previous
//!   hll         6  varint n · n register bytes
//!   top-k       7  varint n · n × (varint len · key bytes · num), keys sorted
//! num     = 0 zigzag varint (int) | 1 8 bytes (float bits) | 2 16 bytes (decimal units) | 3 (overflow)
//! ```
//!
//! Equal states encode to equal bytes (sets and maps are ordered), so two layers that agree
//! on the states agree on the bytes. The fingerprint of the view's definition travels with the
//! states: bytes written under another definition are refused when read.

use std::collections::{BTreeMap, BTreeSet};

use crate::measure::State;
use crate::sketch::Distinct;
use crate::types::Num;

/// The version of the encoding.
pub const VERSION: u8 = 1;
const MAGIC: &[u8; 2] = b"DS";

/// Why bytes could not be decoded as states.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// Not Duet state bytes, or of an unknown version.
    #[error("not Duet state bytes of version {VERSION} (found {found})")]
    Header {
        /// What the header held.
        found: String,
    },
    /// Written under another view definition.
    #[error("states written under view definition {found:016x}, expected {expected:016x}")]
    Fingerprint {
        /// The fingerprint of the configured view.
        expected: u64,
        /// The fingerprint in the bytes.
        found: u64,
    },
    /// The bytes end early or hold an unknown tag.
    #[error("malformed state bytes at byte {at}: {what}")]
    Malformed {
        /// Offset of the problem.
        at: usize,
        /// What was wrong.
        what: &'static str,
    },
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

fn num(out: &mut Vec<u8>, n: &Num) {
    match n {
        Num::Int(i) => {
            out.push(0);
            varint(out, zigzag(*i));
        }
        Num::Float(f) => {
            out.push(1);
            out.extend_from_slice(&f.to_bits().to_le_bytes());
        }
        Num::Dec(d) => {
            out.push(2);
            out.extend_from_slice(&d.to_le_bytes());
        }
        Num::Overflow => out.push(3),
    }
}

/// Encodes a row of states written under the view definition with `fingerprint`.
pub fn encode(fingerprint: u64, states: &[State]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + states.len() * 10);
    out.extend_from_slice(MAGIC);
    out.push(VERSION);
    out.extend_from_slice(&fingerprint.to_le_bytes());
    varint(&mut out, states.len() as u64);
    for s in states {
        match s {
            State::Count(c) => {
                out.push(0);
                varint(&mut out, zigzag(*c));
            }
            State::Sum(n) => {
                out.push(1);
                num(&mut out, n);
            }
            State::Min(n) | State::Max(n) => {
                out.push(if matches!(s, State::Min(_)) { 2 } else { 3 });
                match n {
                    None => out.push(0),
                    Some(n) => {
                        out.push(1);
                        num(&mut out, n);
                    }
                }
            }
            State::Avg { sum, count } => {
                out.push(4);
                num(&mut out, sum);
                varint(&mut out, zigzag(*count));
            }
            State::Distinct(Distinct::Exact(set)) => {
                out.push(5);
                varint(&mut out, set.len() as u64);
                let mut prev = 0u64;
                for h in set {
                    varint(&mut out, h - prev);
                    prev = *h;
                }
            }
            State::Distinct(Distinct::Hll(regs)) => {
                out.push(6);
                varint(&mut out, regs.len() as u64);
                out.extend_from_slice(regs);
            }
            State::TopK(m) => {
                out.push(7);
                varint(&mut out, m.len() as u64);
                for (k, w) in m {
                    varint(&mut out, k.len() as u64);
                    out.extend_from_slice(k.as_bytes());
                    num(&mut out, w);
                }
            }
        }
    }
    out
}

struct Reader<'a> {
    b: &'a [u8],
    i: usize,
}

impl Reader<'_> {
    fn bad(&self, what: &'static str) -> CodecError {
        CodecError::Malformed { at: self.i, what }
    }
    fn byte(&mut self) -> Result<u8, CodecError> {
        let v = *self
            .b
            .get(self.i)
            .ok_or_else(|| self.bad("unexpected end"))?;
        self.i += 1;
        Ok(v)
    }
    fn take(&mut self, n: usize) -> Result<&[u8], CodecError> {
        let end = self
            .i
            .checked_add(n)
            .filter(|e| *e <= self.b.len())
            .ok_or_else(|| self.bad("unexpected end"))?;
        let s = &self.b[self.i..end];
        self.i = end;
        Ok(s)
    }
    fn varint(&mut self) -> Result<u64, CodecError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(self.bad("varint too long"))
    }
    fn len(&mut self) -> Result<usize, CodecError> {
        let n = self.varint()?;
        // every element takes at least one byte: a length beyond the bytes left is malformed
        usize::try_from(n)
            .ok()
            .filter(|n| *n <= self.b.len() - self.i)
            .ok_or_else(|| self.bad("length beyond the end"))
    }
    fn num(&mut self) -> Result<Num, CodecError> {
        Ok(match self.byte()? {
            0 => Num::Int(unzigzag(self.varint()?)),
            1 => Num::Float(f64::from_bits(u64::from_le_bytes(
                self.take(8)?.try_into().unwrap_or_default(),
            ))),
            2 => Num::Dec(i128::from_le_bytes(
                self.take(16)?.try_into().unwrap_or_default(),
            )),
            3 => Num::Overflow,
            _ => return Err(self.bad("unknown number tag")),
        })
    }
}

/// Decodes a row of states, refusing bytes written under another view definition than
/// `fingerprint`.
pub fn decode(fingerprint: u64, bytes: &[u8]) -> Result<Vec<State>, CodecError> {
    if bytes.len() < 11 || &bytes[..2] != MAGIC || bytes[2] != VERSION {
        return Err(CodecError::Header {
            found: format!("{:02x?}", &bytes[..bytes.len().min(3)]),
        });
    }
    let found = u64::from_le_bytes(bytes[3..11].try_into().unwrap_or_default());
    if found != fingerprint {
        return Err(CodecError::Fingerprint {
            expected: fingerprint,
            found,
        });
    }
    let mut r = Reader { b: bytes, i: 11 };
    let n = r.len()?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let state = match r.byte()? {
            0 => State::Count(unzigzag(r.varint()?)),
            1 => State::Sum(r.num()?),
            t @ (2 | 3) => {
                let v = match r.byte()? {
                    0 => None,
                    1 => Some(r.num()?),
                    _ => return Err(r.bad("unknown option tag")),
                };
                if t == 2 { State::Min(v) } else { State::Max(v) }
            }
            4 => {
                let sum = r.num()?;
                State::Avg {
                    sum,
                    count: unzigzag(r.varint()?),
                }
            }
            5 => {
                let n = r.len()?;
                let mut set = BTreeSet::new();
                let mut prev = 0u64;
                for _ in 0..n {
                    prev = prev
                        .checked_add(r.varint()?)
                        .ok_or_else(|| r.bad("hash beyond 64 bits"))?;
                    set.insert(prev);
                }
                State::Distinct(Distinct::Exact(set))
            }
            6 => {
                let n = r.len()?;
                State::Distinct(Distinct::Hll(r.take(n)?.to_vec()))
            }
            7 => {
                let n = r.len()?;
                let mut m = BTreeMap::new();
                for _ in 0..n {
                    let len = r.len()?;
                    let at = r.i;
                    let key = std::str::from_utf8(r.take(len)?)
                        .map_err(|_| CodecError::Malformed {
                            at,
                            what: "a key is not UTF-8",
                        })?
                        .to_string();
                    let w = r.num()?;
                    m.insert(key, w);
                }
                State::TopK(m)
            }
            _ => return Err(r.bad("unknown state tag")),
        };
        out.push(state);
    }
    if r.i != bytes.len() {
        return Err(r.bad("bytes after the last state"));
    }
    Ok(out)
}

/// The fingerprint written in state bytes, without decoding them.
pub fn fingerprint_of(bytes: &[u8]) -> Option<u64> {
    (bytes.len() >= 11 && &bytes[..2] == MAGIC && bytes[2] == VERSION)
        .then(|| u64::from_le_bytes(bytes[3..11].try_into().unwrap_or_default()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> Vec<State> {
        let mut big = Distinct::default();
        for i in 0..5_000 {
            big.insert(&format!("u{i}"));
        }
        vec![
            State::Count(-3),
            State::Sum(Num::Dec(-123_456_789_012_345_678_901_234)),
            State::Min(None),
            State::Max(Some(Num::Float(-0.5))),
            State::Avg {
                sum: Num::Overflow,
                count: 7,
            },
            State::Distinct(Distinct::of("a")),
            State::Distinct(big),
            State::TopK(BTreeMap::from([
                ("é".to_string(), Num::Int(i64::MIN)),
                ("b".to_string(), Num::Int(2)),
            ])),
        ]
    }

    #[test]
    fn round_trips_and_checks_the_fingerprint() {
        let s = sample();
        let bytes = encode(42, &s);
        assert_eq!(decode(42, &bytes).unwrap(), s);
        assert_eq!(fingerprint_of(&bytes), Some(42));
        assert_eq!(
            decode(43, &bytes).unwrap_err(),
            CodecError::Fingerprint {
                expected: 43,
                found: 42
            }
        );
        assert!(matches!(
            decode(42, b"{\"count\":1}"),
            Err(CodecError::Header { .. })
        ));
        // a state of 4 096 exact hashes is a few KB, not 80 KB of JSON
        let mut d = Distinct::default();
        for i in 0..4_096 {
            d.insert(&format!("user_{i}"));
        }
        let n = encode(1, &[State::Distinct(d)]).len();
        assert!(n < 4_096 * 10, "{n} bytes");
    }

    proptest! {
        /// Truncated or corrupted bytes are refused, never a panic.
        #[test]
        fn any_bytes_decode_or_are_refused(cut in 0usize..200, flip in 11usize..200, bit in 0u8..8) {
            let mut bytes = encode(7, &sample());
            bytes.truncate(cut.max(11).min(bytes.len()));
            if flip < bytes.len() {
                bytes[flip] ^= 1 << bit;
            }
            let _ = decode(7, &bytes);
        }

        /// Equal states, merged in any order, encode to equal bytes.
        #[test]
        fn merge_order_does_not_change_the_bytes(keys in proptest::collection::vec("[a-z]{1,4}", 0..60)) {
            let mut a = State::Distinct(Distinct::default());
            let mut b = State::Distinct(Distinct::default());
            let mut ta = State::TopK(BTreeMap::new());
            let mut tb = State::TopK(BTreeMap::new());
            for k in &keys {
                a.merge(State::Distinct(Distinct::of(k))).unwrap();
                ta.merge(State::TopK(BTreeMap::from([(k.clone(), Num::Int(1))]))).unwrap();
            }
            for k in keys.iter().rev() {
                b.merge(State::Distinct(Distinct::of(k))).unwrap();
                tb.merge(State::TopK(BTreeMap::from([(k.clone(), Num::Int(1))]))).unwrap();
            }
            prop_assert_eq!(encode(1, &[a, ta]), encode(1, &[b, tb]));
        }
    }
}
