//! The latency histogram: log-linear, 32 sub-buckets per power of two, so a
//! quantile is within about 3 % of the true value; values are µs.
//!
//! It owns bucketing, quantiles and the sparse form in which a worker ships
//! its histogram to the coordinator (`(bucket, count)` pairs). It does not
//! measure anything itself. The decision to know: buckets are fixed (1,920
//! of them, up to 2^64 µs), so histograms of different workers and steps
//! add up bucket by bucket without loss, and adding a sample allocates
//! nothing.

/// Values below this get a bucket each.
const LINEAR: u64 = 64;
/// log2 of the sub-buckets per power of two.
const SUB_BITS: usize = 5;
const SUB: usize = 1 << SUB_BITS;
/// 64 linear buckets, then 32 per power of two from 2^6 to 2^63.
const BUCKETS: usize = LINEAR as usize + (64 - 6) * SUB;

#[derive(Clone)]
pub struct Hist {
    counts: Vec<u64>,
    total: u64,
}

impl Default for Hist {
    fn default() -> Self {
        Hist::new()
    }
}

impl Hist {
    pub fn new() -> Hist {
        Hist {
            counts: vec![0; BUCKETS],
            total: 0,
        }
    }

    fn index(v: u64) -> usize {
        if v < LINEAR {
            v as usize
        } else {
            let e = 63 - v.leading_zeros() as usize;
            LINEAR as usize + (e - 6) * SUB + ((v >> (e - SUB_BITS)) as usize & (SUB - 1))
        }
    }

    /// The middle of bucket `i`.
    fn value(i: usize) -> u64 {
        if i < LINEAR as usize {
            return i as u64;
        }
        let e = (i - LINEAR as usize) / SUB + 6;
        let sub = ((i - LINEAR as usize) % SUB) as u64;
        let width = 1u64 << (e - SUB_BITS);
        ((SUB as u64 + sub) << (e - SUB_BITS)).saturating_add(width / 2)
    }

    pub fn add(&mut self, v: u64) {
        self.counts[Self::index(v)] += 1;
        self.total += 1;
    }

    pub fn quantile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((self.total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Self::value(i);
            }
        }
        self.max()
    }

    pub fn max(&self) -> u64 {
        self.counts
            .iter()
            .rposition(|&c| c > 0)
            .map_or(0, Self::value)
    }

    /// The non-empty buckets, to send to the coordinator.
    pub fn sparse(&self) -> Vec<(u32, u64)> {
        self.counts
            .iter()
            .enumerate()
            .filter(|(_, &c)| c > 0)
            .map(|(i, &c)| (i as u32, c))
            .collect()
    }

    /// Adds what [`Hist::sparse`] gave; buckets out of range are ignored.
    pub fn add_sparse(&mut self, sparse: &[(u32, u64)]) {
        for &(i, c) in sparse {
            if let Some(slot) = self.counts.get_mut(i as usize) {
                *slot += c;
                self.total += c;
            }
        }
    }

    /// Quantile `q`, in ms.
    pub fn ms(&self, q: f64) -> f64 {
        self.quantile(q) as f64 / 1000.0
    }

    /// The largest value, in ms.
    pub fn max_ms(&self) -> f64 {
        self.max() as f64 / 1000.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_value_falls_in_a_bucket_within_three_percent() {
        assert_eq!(BUCKETS, 1920);
        for v in (0..10_000u64).chain([u64::MAX / 3, u64::MAX]) {
            let i = Hist::index(v);
            assert!(i < BUCKETS, "{v}");
            let mid = Hist::value(i);
            let err = mid.abs_diff(v) as f64 / v.max(1) as f64;
            assert!(err <= 0.03 || v < LINEAR, "{v} → {mid}");
        }
    }

    #[test]
    fn sparse_histograms_add_up() {
        let mut a = Hist::new();
        (1..=100).for_each(|v| a.add(v * 1000));
        let mut b = Hist::new();
        b.add_sparse(&a.sparse());
        assert_eq!(b.quantile(0.5), a.quantile(0.5));
        assert_eq!(b.max(), a.max());
        assert!((a.ms(0.99) - 99.0).abs() < 3.0);
    }
}
