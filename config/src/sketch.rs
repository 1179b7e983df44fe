//! Distinct-count sketch: exact set of 64-bit hashes up to a threshold, then HyperLogLog.
//!
//! The merge is a set union (or register max), so it is associative, commutative and has
//! the empty sketch as identity, whatever order partial states arrive in. Small
//! cardinalities (up to [`EXACT_LIMIT`]) are counted exactly.

use std::collections::BTreeSet;

/// Above this many distinct hashes the sketch switches to HyperLogLog registers.
pub const EXACT_LIMIT: usize = 4096;
/// HyperLogLog precision: 2^12 registers, about 1.6 % standard error.
pub const PRECISION: u32 = 12;

/// The state of a distinct count.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Distinct {
    /// Exact: the hashes seen.
    Exact(BTreeSet<u64>),
    /// Approximate: HyperLogLog registers.
    Hll(Vec<u8>),
}

impl Default for Distinct {
    fn default() -> Self {
        Distinct::Exact(BTreeSet::new())
    }
}

/// A stable 64-bit hash of a key's canonical text (FNV-1a, then a SplitMix64 finaliser).
/// Stable across processes, platforms and versions: sketches are persisted.
pub fn hash_key(text: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

fn hll_insert(regs: &mut [u8], h: u64) {
    let idx = (h >> (64 - PRECISION)) as usize;
    let rest = (h << PRECISION) | (1 << (PRECISION - 1));
    let rank = rest.leading_zeros() as u8 + 1;
    if regs[idx] < rank {
        regs[idx] = rank;
    }
}

impl Distinct {
    /// A sketch of one key.
    pub fn of(text: &str) -> Distinct {
        Distinct::Exact(BTreeSet::from([hash_key(text)]))
    }

    /// Adds a key.
    pub fn insert(&mut self, text: &str) {
        let h = hash_key(text);
        match self {
            Distinct::Exact(set) => {
                // as a merge with `Distinct::of(text)` would: past the limit, registers
                if set.insert(h) && set.len() > EXACT_LIMIT {
                    *self = Distinct::Hll(to_hll(set));
                }
            }
            Distinct::Hll(regs) => hll_insert(regs, h),
        }
    }

    /// Union with another sketch.
    pub fn merge(&mut self, other: Distinct) {
        let this = std::mem::take(self);
        *self = match (this, other) {
            (Distinct::Exact(mut a), Distinct::Exact(b)) => {
                a.extend(b);
                if a.len() > EXACT_LIMIT {
                    Distinct::Hll(to_hll(&a))
                } else {
                    Distinct::Exact(a)
                }
            }
            (Distinct::Hll(mut r), Distinct::Exact(s))
            | (Distinct::Exact(s), Distinct::Hll(mut r)) => {
                for h in s {
                    hll_insert(&mut r, h);
                }
                Distinct::Hll(r)
            }
            (Distinct::Hll(mut a), Distinct::Hll(b)) => {
                for (x, y) in a.iter_mut().zip(b) {
                    *x = (*x).max(y);
                }
                Distinct::Hll(a)
            }
        };
    }

    /// The estimated number of distinct keys (exact below [`EXACT_LIMIT`]).
    pub fn estimate(&self) -> u64 {
        match self {
            Distinct::Exact(s) => s.len() as u64,
            Distinct::Hll(regs) => {
                let m = regs.len() as f64;
                let sum: f64 = regs.iter().map(|r| 2f64.powi(-i32::from(*r))).sum();
                let alpha = 0.7213 / (1.0 + 1.079 / m);
                let raw = alpha * m * m / sum;
                let zeros = regs.iter().filter(|r| **r == 0).count();
                let est = if raw <= 2.5 * m && zeros > 0 {
                    m * (m / zeros as f64).ln()
                } else {
                    raw
                };
                est.round() as u64
            }
        }
    }
}

fn to_hll(set: &BTreeSet<u64>) -> Vec<u8> {
    let mut regs = vec![0u8; 1 << PRECISION];
    for h in set {
        hll_insert(&mut regs, *h);
    }
    regs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_when_small_and_close_when_large() {
        let mut d = Distinct::default();
        for i in 0..1000 {
            d.insert(&format!("user_{}", i % 500));
        }
        assert_eq!(d.estimate(), 500);
        let mut big = Distinct::default();
        for i in 0..50_000 {
            big.insert(&format!("user_{i}"));
        }
        assert!(matches!(big, Distinct::Hll(_)));
        let e = big.estimate() as f64;
        assert!((e - 50_000.0).abs() / 50_000.0 < 0.05, "estimate {e}");
    }

    #[test]
    fn hash_is_stable() {
        // Persisted sketches depend on this exact function.
        assert_eq!(hash_key("user_001"), hash_key("user_001"));
        assert_ne!(hash_key("user_001"), hash_key("user_002"));
        assert_eq!(hash_key("user_001"), 0x24d5_ba24_bc7c_d28e);
    }
}
