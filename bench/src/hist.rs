//! A log-linear latency histogram (64 sub-buckets per power of two: under 1.6 % error),
//! mergeable across worker processes. Values are microseconds.

use serde::{Deserialize, Serialize};

const SUB_BITS: u32 = 6;
const SUB: u64 = 1 << SUB_BITS;
const BUCKETS: usize = (SUB as usize) * 60;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Hist {
    /// Sparse on the wire: (bucket, count) pairs.
    #[serde(with = "sparse")]
    counts: Vec<u64>,
    pub count: u64,
    pub max: u64,
    pub sum: u64,
}

impl Default for Hist {
    fn default() -> Self {
        Self {
            counts: vec![0; BUCKETS],
            count: 0,
            max: 0,
            sum: 0,
        }
    }
}

fn bucket(v: u64) -> usize {
    if v < 2 * SUB {
        return v as usize;
    }
    let msb = 63 - v.leading_zeros();
    let shift = msb - SUB_BITS;
    ((shift as u64) * SUB + (v >> shift)) as usize
}

/// The middle of a bucket's range.
fn value(idx: usize) -> u64 {
    let idx = idx as u64;
    if idx < 2 * SUB {
        return idx;
    }
    let shift = idx / SUB - 1;
    let mant = idx - shift * SUB;
    (mant << shift) + ((1u64 << shift) >> 1)
}

impl Hist {
    pub fn record(&mut self, micros: u64) {
        let b = bucket(micros).min(BUCKETS - 1);
        self.counts[b] += 1;
        self.count += 1;
        self.max = self.max.max(micros);
        self.sum += micros;
    }

    pub fn merge(&mut self, other: &Hist) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.count += other.count;
        self.max = self.max.max(other.max);
        self.sum += other.sum;
    }

    /// The `q`-quantile (0..=1) in microseconds; 0 when empty.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.count == 0 {
            return 0;
        }
        let rank = ((q * self.count as f64).ceil() as u64).clamp(1, self.count);
        let mut seen = 0;
        for (idx, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return value(idx).min(self.max);
            }
        }
        self.max
    }

    pub fn quantile_ms(&self, q: f64) -> f64 {
        self.quantile(q) as f64 / 1000.0
    }

    pub fn max_ms(&self) -> f64 {
        self.max as f64 / 1000.0
    }
}

mod sparse {
    use serde::{Deserialize, Deserializer, Serializer, ser::SerializeSeq};

    pub fn serialize<S: Serializer>(counts: &[u64], s: S) -> Result<S::Ok, S::Error> {
        let nonzero: Vec<(usize, u64)> = counts
            .iter()
            .enumerate()
            .filter(|(_, c)| **c > 0)
            .map(|(i, c)| (i, *c))
            .collect();
        let mut seq = s.serialize_seq(Some(nonzero.len()))?;
        for pair in nonzero {
            seq.serialize_element(&pair)?;
        }
        seq.end()
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u64>, D::Error> {
        let pairs: Vec<(usize, u64)> = Vec::deserialize(d)?;
        let mut counts = vec![0; super::BUCKETS];
        for (i, c) in pairs {
            if let Some(slot) = counts.get_mut(i) {
                *slot += c;
            }
        }
        Ok(counts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_contiguous_and_precise() {
        let mut last = 0;
        for v in 0..1_000_000u64 {
            let b = bucket(v);
            assert!(b == last || b == last + 1, "{v}");
            last = b;
            let mid = value(b);
            assert!(
                mid.abs_diff(v) as f64 <= (v as f64 * 0.016).max(1.0),
                "{v} {mid}"
            );
        }
    }

    #[test]
    fn quantiles_and_merge() {
        let mut a = Hist::default();
        let mut b = Hist::default();
        for v in 1..=500 {
            a.record(v * 1000);
        }
        for v in 501..=1000 {
            b.record(v * 1000);
        }
        a.merge(&b);
        let json = serde_json::to_string(&a).unwrap();
        let a: Hist = serde_json::from_str(&json).unwrap();
        assert_eq!(a.count, 1000);
        assert!((a.quantile_ms(0.5) - 500.0).abs() < 10.0);
        assert!((a.quantile_ms(0.99) - 990.0).abs() < 20.0);
        assert_eq!(a.max_ms(), 1000.0);
    }
}
