//! Exact multi-index hashing (Norouzi, Punjani & Fleet, "Fast Exact Search in Hamming Space with
//! Multi-Index Hashing", 2014) for codes of 32 bits and more, and the planner's cost model.
//!
//! A code is cut into `m` disjoint substrings (about `bits / log2(n)` bits each, at most 24), and
//! each substring gets a table from substring value to the positions holding it (CSR arrays,
//! built once on first use). By pigeonhole, an item at distance `d` from the query is within
//! `floor(d / m)` of it on some substring. The search probes substring radius `r = 0, 1, ...`
//! table by table; after radius `r` in tables `0..=j` (and `r - 1` in the rest), an unseen item
//! differs by at least `r + 1` on `j + 1` substrings and `r` on the others, so every item within
//! `m·r + j` has been seen. The search stops once the k-th best distance found is within that
//! bound (or the bound reaches the radius): unseen items are then strictly worse, so the result,
//! ties included, is the linear scan's.
//!
//! An item is seen once per table; it is kept only at its first sighting in probe order (its
//! smallest substring distance `r`, and the first table at that distance), which needs no
//! per-query visited set.

use crate::code::CodeMatrix;
use crate::hamming::distance;
use crate::reader::CodeIndex;
use crate::search::{Hit, LinearCost, SearchMethod, SearchOptions, TopK, max_distance};

/// Longest substring: its table has `2^24 + 1` offsets (64 MiB).
const MAX_SUBSTRING_BITS: u32 = 24;
/// Shortest code multi-index hashing is used for.
pub const MIN_MIH_BITS: u32 = 32;
/// Under `Auto`, smaller indexes are always scanned (the scan takes microseconds).
const MIN_AUTO_ITEMS: usize = 50_000;
/// Under `Auto`, multi-index hashing may spend this fraction of the scan's estimated cost (counting
/// the buckets and candidates it really visits) before the search gives up and scans; so `Auto`
/// is at most about this much slower than the scan alone.
const AUTO_BUDGET_FRACTION: f64 = 0.05;
/// Cost model, nanoseconds: scanning 8 bytes of codes (single query, one core, until the index
/// has timed its own scans; and per query in a cache-blocked batch), probing one bucket, and
/// checking one candidate (a random access to its code). Measured on the 2-vCPU AVX2 machine
/// of BENCHMARKS.md with 1M codes: the scans at 0.35-0.45 ns per 8 bytes; 20 forced multi-index
/// searches of uniform 64-bit codes (1.09M probes, 0.35M candidates, 92.9 ms) and 50 of 32-bit
/// codes (11k probes, 168k candidates, 13.1 ms) solve to about 61 ns a probe and 74 ns a
/// candidate: cache misses, not arithmetic.
const SCAN_NS_PER_WORD: f64 = 0.4;
const BATCH_SCAN_NS_PER_WORD: f64 = 0.35;
const PROBE_NS: f64 = 60.0;
const CANDIDATE_NS: f64 = 75.0;

/// One substring table: positions sorted by substring value, `offsets[v]..offsets[v + 1]` the
/// positions whose substring is `v`.
#[derive(Debug)]
struct Table {
    start: u32,
    bits: u32,
    offsets: Vec<u32>,
    positions: Vec<u32>,
}

/// The substring tables of an index.
#[derive(Debug)]
pub(crate) struct MultiIndex {
    tables: Vec<Table>,
    n: usize,
}

/// Occupancy of one substring table's buckets.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct BucketOccupancy {
    /// First bit of the substring and its length.
    pub start_bit: u32,
    pub bits: u32,
    /// Buckets holding at least one item, out of `2^bits`.
    pub nonempty: usize,
    /// Items in the fullest bucket.
    pub max: usize,
    /// Mean items per non-empty bucket.
    pub mean_nonempty: f64,
}

/// Substring value of bits `start..start + len` (MSB-first, as in `HashCode`).
#[inline]
fn substring(code: &[u64], start: u32, len: u32) -> u32 {
    let (w, o) = ((start / 64) as usize, start % 64);
    let mut v = code[w] << o;
    if o + len > 64 {
        v |= code[w + 1] >> (64 - o);
    }
    (v >> (64 - len)) as u32
}

/// Number of substrings for `bits`-bit codes and `n` items.
fn substring_count(bits: u32, n: usize) -> u32 {
    let log2n = (n.max(2) as f64).log2().max(8.0);
    ((f64::from(bits) / log2n).round() as u32).max(bits.div_ceil(MAX_SUBSTRING_BITS)).clamp(1, bits)
}

fn binomial(n: u32, r: u32) -> f64 {
    (0..r).fold(1.0, |acc, i| acc * f64::from(n - i) / f64::from(i + 1))
}

impl MultiIndex {
    /// Builds the tables, or `None` for codes shorter than 32 bits or more than `u32::MAX` items.
    pub(crate) fn build(codes: CodeMatrix<'_>) -> Option<MultiIndex> {
        let n = codes.len();
        let bits = codes.bits();
        if bits < MIN_MIH_BITS || u32::try_from(n).is_err() {
            return None;
        }
        let m = substring_count(bits, n);
        let (base, extra) = (bits / m, bits % m);
        let mut layout = Vec::new();
        let mut start = 0;
        for j in 0..m {
            let len = base + u32::from(j < extra);
            layout.push((start, len));
            start += len;
        }
        use rayon::prelude::*;
        let tables = layout.into_par_iter().map(|(start, len)| Table::build(codes, start, len)).collect();
        Some(MultiIndex { tables, n })
    }

    pub(crate) fn occupancy(&self) -> Vec<BucketOccupancy> {
        self.tables
            .iter()
            .map(|t| {
                let sizes = t.offsets.windows(2).map(|w| (w[1] - w[0]) as usize);
                let (nonempty, max) = sizes.fold((0, 0), |(ne, mx), s| (ne + usize::from(s > 0), mx.max(s)));
                BucketOccupancy {
                    start_bit: t.start,
                    bits: t.bits,
                    nonempty,
                    max,
                    mean_nonempty: if nonempty == 0 { 0.0 } else { self.n as f64 / nonempty as f64 },
                }
            })
            .collect()
    }

    /// Exact search; `None` once the work done, or the predicted cost of the next probe level,
    /// exceeds `budget_ns` (the caller then scans).
    pub(crate) fn search(
        &self,
        codes: CodeMatrix<'_>,
        query: &[u64],
        k: usize,
        max_d: u32,
        budget_ns: f64,
    ) -> Option<Vec<Hit>> {
        if k == 0 {
            return Some(Vec::new());
        }
        let m = self.tables.len() as u32;
        let qsub: Vec<u32> = self.tables.iter().map(|t| substring(query, t.start, t.bits)).collect();
        let max_len = self.tables.iter().map(|t| t.bits).max().unwrap_or(0);
        let mut top = TopK::new(k, max_d);
        let mut spent = 0.0;
        'radius: for r in 0..=max_len {
            for (j, table) in self.tables.iter().enumerate() {
                if r <= table.bits {
                    // Skip a level predicted (at uniform occupancy) to overrun the budget, and charge
                    // the real bucket sizes as they come, since clustered codes crowd some buckets.
                    let mean = self.n as f64 / (1u64 << table.bits) as f64;
                    if spent + binomial(table.bits, r) * (PROBE_NS + mean * CANDIDATE_NS) > budget_ns {
                        return None;
                    }
                    let finished = for_each_at_distance(table.bits, r, |flip| {
                        let v = (qsub[j] ^ flip) as usize;
                        let (Some(&a), Some(&b)) = (table.offsets.get(v), table.offsets.get(v + 1)) else {
                            return true;
                        };
                        let bucket = table.positions.get(a as usize..b as usize).unwrap_or(&[]);
                        spent += PROBE_NS + bucket.len() as f64 * CANDIDATE_NS;
                        if spent > budget_ns {
                            return false;
                        }
                        for &p in bucket {
                            let code = codes.code(p as usize);
                            let d = distance(query, code);
                            if d <= top.threshold() && self.first_sighting(code, &qsub, j, r) {
                                top.push(d, p as usize);
                            }
                        }
                        true
                    });
                    if !finished {
                        return None;
                    }
                }
                let proven = m * r + j as u32;
                if proven >= max_d || top.kth_distance().is_some_and(|kth| kth <= proven) {
                    break 'radius;
                }
            }
        }
        Some(top.into_hits())
    }

    /// Whether probing table `j` at radius `r` is the first time this code is seen: no earlier
    /// table is within `r` and no later one within `r - 1` of the query.
    fn first_sighting(&self, code: &[u64], qsub: &[u32], j: usize, r: u32) -> bool {
        self.tables.iter().zip(qsub).enumerate().all(|(t, (table, &q))| {
            let d = (substring(code, table.start, table.bits) ^ q).count_ones();
            if t < j { d > r } else { t == j || d >= r }
        })
    }
}

impl Table {
    fn build(codes: CodeMatrix<'_>, start: u32, bits: u32) -> Table {
        let values: Vec<u32> = (0..codes.len()).map(|i| substring(codes.code(i), start, bits)).collect();
        let mut offsets = vec![0u32; (1usize << bits) + 1];
        for &v in &values {
            offsets[v as usize + 1] += 1;
        }
        for i in 1..offsets.len() {
            offsets[i] += offsets[i - 1];
        }
        let mut next = offsets.clone();
        let mut positions = vec![0u32; values.len()];
        for (p, &v) in values.iter().enumerate() {
            positions[next[v as usize] as usize] = p as u32;
            next[v as usize] += 1;
        }
        Table { start, bits, offsets, positions }
    }
}

/// Calls `f` with every `bits`-bit mask of exactly `r` ones (Gosper's hack) until it returns
/// false; returns whether every mask was visited.
fn for_each_at_distance(bits: u32, r: u32, mut f: impl FnMut(u32) -> bool) -> bool {
    if r > bits {
        return true;
    }
    let limit = 1u64 << bits;
    let mut mask: u64 = (1u64 << r) - 1;
    while mask < limit {
        if !f(mask as u32) {
            return false;
        }
        if mask == 0 {
            return true;
        }
        let low = mask & mask.wrapping_neg();
        let ripple = mask + low;
        mask = (((ripple ^ mask) >> 2) / low) | ripple;
    }
    true
}

impl CodeIndex {
    /// Multi-index hashing when the options and the planner allow it; `None` means scan.
    pub(crate) fn try_multi_index(&self, query: &[u64], opts: &SearchOptions, scan: LinearCost) -> Option<Vec<Hit>> {
        let budget = match opts.method {
            SearchMethod::Linear => return None,
            SearchMethod::MultiIndex => f64::INFINITY,
            SearchMethod::Auto => {
                if self.bits() < MIN_MIH_BITS || self.len() < MIN_AUTO_ITEMS || opts.k == 0 {
                    return None;
                }
                let words = self.scan_words();
                // The single scan's cost as measured on this machine once a scan has run; the
                // other scans in proportion to it.
                let per_word = self.scan_ns_per_word().unwrap_or(SCAN_NS_PER_WORD);
                let scan_ns = match scan {
                    LinearCost::Single => words * per_word,
                    LinearCost::Split => words * per_word / rayon::current_num_threads() as f64,
                    LinearCost::Batch => words * per_word * BATCH_SCAN_NS_PER_WORD / SCAN_NS_PER_WORD,
                };
                AUTO_BUDGET_FRACTION * scan_ns
            }
        };
        let tables = self.multi_index.get_or_init(|| MultiIndex::build(self.codes())).as_ref()?;
        tables.search(self.codes(), query, opts.k, max_distance(self.bits(), opts), budget)
    }

    /// Builds the multi-index hashing tables now rather than at the first search that wants them
    /// (a server calls this at start-up). Returns whether the index supports them (codes of 32
    /// bits or more, fewer than 2^32 items).
    pub fn prepare_multi_index(&self) -> bool {
        self.multi_index.get_or_init(|| MultiIndex::build(self.codes())).is_some()
    }

    /// Bucket occupancy of each multi-index hashing table (building the tables if needed); empty
    /// when the index does not support them.
    pub fn bucket_occupancy(&self) -> Vec<BucketOccupancy> {
        self.multi_index
            .get_or_init(|| MultiIndex::build(self.codes()))
            .as_ref()
            .map_or_else(Vec::new, |t| t.occupancy())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_at_distance_are_all_distinct_and_complete() {
        for bits in [1u32, 5, 12] {
            for r in 0..=bits {
                let mut seen = Vec::new();
                assert!(for_each_at_distance(bits, r, |m| {
                    seen.push(m);
                    true
                }));
                assert!(seen.iter().all(|m| m.count_ones() == r && u64::from(*m) < 1u64 << bits));
                seen.sort_unstable();
                seen.dedup();
                assert_eq!(seen.len() as f64, binomial(bits, r), "bits {bits} r {r}");
            }
        }
    }

    #[test]
    fn substrings_read_msb_first_across_words() {
        let code = [0x8000_0000_0000_0001u64, 0xC000_0000_0000_0000];
        assert_eq!(substring(&code, 0, 1), 1);
        assert_eq!(substring(&code, 1, 8), 0);
        assert_eq!(substring(&code, 60, 8), 0b0001_1100);
        assert_eq!(substring(&code, 64, 3), 0b110);
    }
}
