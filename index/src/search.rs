//! Exact Hamming search over a `CodeIndex`: options and results, the top-k collector, the linear
//! scan (single query, a single query split over threads, cache-blocked batches) and the planner
//! that chooses between the scan and multi-index hashing (`mih.rs`).
//!
//! Results are exact and deterministic: hits are ordered by (distance, position) and the first
//! `k` are returned, so ties at the k-th distance go to the items stored first.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rayon::prelude::*;

use crate::code::CodeMatrix;
use crate::kernel::{Kernel, Lane};
use crate::reader::CodeIndex;

/// How to search.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SearchMethod {
    /// Multi-index hashing when its cost estimate beats the scan, else the linear scan. On an
    /// index of at least 50,000 codes of 32 bits or more, the first such search builds the
    /// multi-index tables (about `m × (2^s + n) × 4` bytes for `m` substrings of `s` bits; a
    /// server builds them at start-up with [`CodeIndex::prepare_multi_index`]).
    #[default]
    Auto,
    /// Scan every code.
    Linear,
    /// Multi-index hashing (codes of 32 bits or more; shorter codes fall back to the scan).
    MultiIndex,
}

/// What to search for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SearchOptions {
    /// Number of hits wanted; `usize::MAX` for all hits within `radius`.
    pub k: usize,
    /// Only items at Hamming distance `<= radius`.
    pub radius: Option<u32>,
    pub method: SearchMethod,
}

impl Default for SearchOptions {
    fn default() -> Self {
        Self { k: 10, radius: None, method: SearchMethod::Auto }
    }
}

impl SearchOptions {
    /// The `k` nearest items.
    pub fn top_k(k: usize) -> Self {
        Self { k, ..Self::default() }
    }

    /// Every item within distance `radius`.
    pub fn within(radius: u32) -> Self {
        Self { k: usize::MAX, radius: Some(radius), method: SearchMethod::Auto }
    }
}

/// One search hit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Hit {
    /// Item position in the index.
    pub position: usize,
    /// Hamming distance to the query.
    pub distance: u32,
}

/// Hits sorted by (distance, position) and the method that produced them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SearchResult {
    pub hits: Vec<Hit>,
    /// `Linear` or `MultiIndex`: the method actually used.
    pub method: SearchMethod,
}

/// Codes scanned per distance block: small enough for the stack, large enough that the
/// per-block threshold check is noise.
const BLOCK: usize = 256;
/// Codes scanned per distance block in narrow lanes (the same 2 to 4 KiB of codes).
const LANE_BLOCK: usize = 1024;
/// Bytes of codes a batch scans per query block, sized to stay in L2 across the block's queries.
const L2_BLOCK_BYTES: usize = 256 * 1024;
/// Most queries scanning one code block together.
const MAX_QUERY_BLOCK: usize = 64;
/// Positions must fit below the distance in a sort key.
const POSITION_BITS: u32 = 40;

/// Collects the best `k` (distance, position) pairs without a heap in the hot loop: candidates
/// below the current threshold are appended to a buffer, and when it fills, one selection keeps
/// the best `k`. A scan in position order also counts its hits per distance, which gives the
/// tightest threshold at once: once `k` hits lie at distance `<= t`, a later item at distance `t`
/// ranks behind all of them (ties go to the lower position), so only distances below `t` can
/// still enter.
#[derive(Debug)]
pub(crate) struct TopK {
    k: usize,
    /// Sort key of the current k-th best, or one past the largest admissible distance.
    kth_key: u64,
    buf: Vec<u64>,
    cap: usize,
    /// In-order hits per distance (`push_in_order` only).
    counts: Vec<usize>,
    /// In-order hits at distances below `cut`, and `cut` itself: no later item at `cut` or
    /// beyond can enter.
    below: usize,
    cut: u32,
}

fn key(distance: u32, position: usize) -> u64 {
    (u64::from(distance) << POSITION_BITS) | position as u64
}

impl TopK {
    /// Keeps the best `k` of items within `max_distance`.
    pub(crate) fn new(k: usize, max_distance: u32) -> Self {
        let cap = k.saturating_mul(2).saturating_add(1024);
        let cut = max_distance + 1;
        let counts = vec![0; cut as usize];
        TopK { k, kth_key: key(cut, 0), buf: Vec::new(), cap, counts, below: 0, cut }
    }

    /// A scan visiting positions in increasing order only needs distances below this.
    #[inline]
    pub(crate) fn threshold(&self) -> u32 {
        self.cut.min((self.kth_key >> POSITION_BITS) as u32)
    }

    /// Adds an item found in increasing position order whose distance is below `threshold()`.
    #[inline]
    pub(crate) fn push_in_order(&mut self, distance: u32, position: usize) {
        self.buf.push(key(distance, position));
        self.counts[distance as usize] += 1;
        self.below += 1;
        while self.below >= self.k && self.cut > 0 {
            self.cut -= 1;
            self.below -= self.counts[self.cut as usize];
        }
        if self.buf.len() >= self.cap {
            self.shrink();
        }
    }

    /// Adds an item found in any order.
    #[inline]
    pub(crate) fn push(&mut self, distance: u32, position: usize) {
        let key = key(distance, position);
        if key < self.kth_key {
            self.buf.push(key);
            if self.buf.len() >= self.cap {
                self.shrink();
            }
        }
    }

    /// The k-th best distance so far, if `k` items were found.
    pub(crate) fn kth_distance(&mut self) -> Option<u32> {
        self.shrink();
        (self.k > 0 && self.buf.len() >= self.k).then(|| self.threshold())
    }

    fn shrink(&mut self) {
        if self.k > 0 && self.buf.len() >= self.k {
            let (_, kth, _) = self.buf.select_nth_unstable(self.k - 1);
            self.kth_key = *kth;
            self.buf.truncate(self.k);
        }
    }

    fn merge(mut self, other: TopK) -> TopK {
        for key in other.buf {
            if key < self.kth_key {
                self.buf.push(key);
            }
        }
        self.shrink();
        self
    }

    pub(crate) fn into_hits(mut self) -> Vec<Hit> {
        // The buffer may hold up to `cap` candidates: select the best k first, sort only those.
        self.shrink();
        self.buf.sort_unstable();
        self.buf.truncate(self.k);
        let mask = (1u64 << POSITION_BITS) - 1;
        self.buf
            .into_iter()
            .map(|key| Hit { position: (key & mask) as usize, distance: (key >> POSITION_BITS) as u32 })
            .collect()
    }
}

/// The codes a linear scan reads: the index's padded words, or for codes of at most 32 bits a
/// copy with one code per `u16` or `u32` lane ([`NarrowCodes`]), which moves a quarter or half of
/// the bytes and fits 4 or 2 times as many codes in each vector instruction.
#[derive(Clone, Copy, Debug)]
pub(crate) enum ScanCodes<'a> {
    Words(CodeMatrix<'a>),
    U16(&'a [u16]),
    U32(&'a [u32]),
}

/// The narrow-lane copy of codes of at most 32 bits (built once per index, on first search).
#[derive(Debug)]
pub(crate) enum NarrowCodes {
    U16(Vec<u16>),
    U32(Vec<u32>),
}

impl NarrowCodes {
    /// The copy of `codes`, or `None` for codes longer than 32 bits. A code's bits sit at the top
    /// of its word (padding below is zero), so shifting them down keeps every distance.
    pub(crate) fn build(codes: CodeMatrix<'_>) -> Option<NarrowCodes> {
        match codes.bits() {
            ..=16 => Some(NarrowCodes::U16(codes.words().iter().map(|w| (w >> 48) as u16).collect())),
            17..=32 => Some(NarrowCodes::U32(codes.words().iter().map(|w| (w >> 32) as u32).collect())),
            _ => None,
        }
    }

    pub(crate) fn scan_codes(&self) -> ScanCodes<'_> {
        match self {
            NarrowCodes::U16(c) => ScanCodes::U16(c),
            NarrowCodes::U32(c) => ScanCodes::U32(c),
        }
    }
}

impl ScanCodes<'_> {
    pub(crate) fn len(&self) -> usize {
        match self {
            ScanCodes::Words(m) => m.len(),
            ScanCodes::U16(c) => c.len(),
            ScanCodes::U32(c) => c.len(),
        }
    }

    /// Bytes a scan reads per code.
    pub(crate) fn bytes_per_code(&self) -> usize {
        match self {
            ScanCodes::Words(m) => 8 * m.words_per_code(),
            ScanCodes::U16(_) => 2,
            ScanCodes::U32(_) => 4,
        }
    }

    /// Scans codes `range` for `query` (in the index's word layout) in position order, feeding
    /// `top`.
    fn scan(&self, kernel: Kernel, query: &[u64], range: std::ops::Range<usize>, top: &mut TopK) {
        match *self {
            ScanCodes::Words(codes) => scan_words(kernel, codes, query, range, top),
            ScanCodes::U16(codes) => {
                scan_lanes(kernel, &codes[range.clone()], (query[0] >> 48) as u16, range.start, top)
            }
            ScanCodes::U32(codes) => {
                scan_lanes(kernel, &codes[range.clone()], (query[0] >> 32) as u32, range.start, top)
            }
        }
    }
}

fn scan_words(kernel: Kernel, codes: CodeMatrix<'_>, query: &[u64], range: std::ops::Range<usize>, top: &mut TopK) {
    let wpc = codes.words_per_code();
    let words = &codes.words()[range.start * wpc..range.end * wpc];
    let mut out = CacheAligned([0u32; BLOCK]);
    for (b, block) in words.chunks(BLOCK * wpc).enumerate() {
        kernel.scan_words(query, block, &mut out.0[..block.len() / wpc], range.start + b * BLOCK, top);
    }
}

/// `codes` start at position `first`.
fn scan_lanes<L: Lane>(kernel: Kernel, codes: &[L], query: L, first: usize, top: &mut TopK) {
    let mut out = CacheAligned([L::MAX; LANE_BLOCK]);
    for (b, block) in codes.chunks(LANE_BLOCK).enumerate() {
        kernel.scan_lanes(query, block, &mut out.0[..block.len()], first + b * LANE_BLOCK, top);
    }
}

/// A block's distances on whole cache lines: a stack array of `u32` or `u16` is only 4- or
/// 2-byte aligned, and an unaligned buffer makes every 64-byte vector store of the scan (and
/// every load of `push_hits`) straddle two lines, which cost a fifth of the scan of 32-bit codes.
#[repr(align(64))]
struct CacheAligned<T>(T);

/// Largest distance a search with these options admits.
pub(crate) fn max_distance(bits: u32, opts: &SearchOptions) -> u32 {
    opts.radius.map_or(bits, |r| r.min(bits))
}

/// Exact linear-scan search of one query on the calling thread.
fn linear_search(codes: ScanCodes<'_>, query: &[u64], k: usize, max_d: u32) -> Vec<Hit> {
    let mut top = TopK::new(k, max_d);
    if k > 0 {
        codes.scan(Kernel::detect(), query, 0..codes.len(), &mut top);
    }
    top.into_hits()
}

/// Exact linear-scan search of one query, the codes split over the rayon pool's threads.
fn linear_search_split(codes: ScanCodes<'_>, query: &[u64], k: usize, max_d: u32) -> Vec<Hit> {
    let n = codes.len();
    let parts = rayon::current_num_threads().max(1);
    if k == 0 || parts == 1 || n < parts * 4 * LANE_BLOCK {
        return linear_search(codes, query, k, max_d);
    }
    let kernel = Kernel::detect();
    let step = n.div_ceil(parts).next_multiple_of(LANE_BLOCK);
    (0..n)
        .step_by(step)
        .collect::<Vec<_>>()
        .into_par_iter()
        .map(|start| {
            let mut top = TopK::new(k, max_d);
            codes.scan(kernel, query, start..(start + step).min(n), &mut top);
            // Each part selects its own best k, so the serial merge sees 2k candidates, not
            // every hit the parts buffered.
            top.shrink();
            top
        })
        .reduce_with(TopK::merge)
        .map_or_else(Vec::new, TopK::into_hits)
}

/// Exact linear-scan search of many queries: query blocks run in parallel, and each block scans
/// the codes in L2-sized pieces so each piece is read from memory once per block of queries.
fn linear_search_batch(codes: ScanCodes<'_>, queries: CodeMatrix<'_>, k: usize, max_d: u32) -> Vec<Vec<Hit>> {
    let nq = queries.len();
    if nq < rayon::current_num_threads() {
        return (0..nq).map(|q| linear_search_split(codes, queries.code(q), k, max_d)).collect();
    }
    let kernel = Kernel::detect();
    let code_block = (L2_BLOCK_BYTES / codes.bytes_per_code()).next_multiple_of(LANE_BLOCK);
    let query_block = nq.div_ceil(rayon::current_num_threads() * 2).clamp(1, MAX_QUERY_BLOCK);
    let idx: Vec<usize> = (0..nq).collect();
    idx.par_chunks(query_block)
        .flat_map_iter(|chunk| {
            let mut tops: Vec<TopK> = chunk.iter().map(|_| TopK::new(k, max_d)).collect();
            if k > 0 {
                for start in (0..codes.len()).step_by(code_block) {
                    let range = start..(start + code_block).min(codes.len());
                    for (&q, top) in chunk.iter().zip(&mut tops) {
                        codes.scan(kernel, queries.code(q), range.clone(), top);
                    }
                }
            }
            tops.into_iter().map(TopK::into_hits)
        })
        .collect()
}

fn check_query(codes: CodeMatrix<'_>, query: &[u64]) {
    assert_eq!(
        query.len(),
        codes.words_per_code(),
        "a query of {} words against {}-bit codes ({} words)",
        query.len(),
        codes.bits(),
        codes.words_per_code()
    );
}

impl CodeIndex {
    /// What a linear scan reads: the narrow copy for codes of at most 32 bits (built on the first
    /// call: `len()` x 2 or 4 bytes), else the mapped words.
    pub(crate) fn scan_codes(&self) -> ScanCodes<'_> {
        match self.narrow_codes.get_or_init(|| NarrowCodes::build(self.codes())) {
            Some(narrow) => narrow.scan_codes(),
            None => ScanCodes::Words(self.codes()),
        }
    }

    /// Bytes a linear scan reads per code: 2 or 4 for codes of at most 16 or 32 bits (scanned
    /// from a narrow copy), else the file's padded words.
    pub fn scan_bytes_per_code(&self) -> usize {
        self.scan_codes().bytes_per_code()
    }

    /// Exact search for one query (`words_for_bits(bits())` words). Runs on the calling thread;
    /// see [`search_split`](Self::search_split) to use the whole pool. Panics if the query
    /// length does not match the index.
    pub fn search(&self, query: &[u64], opts: &SearchOptions) -> SearchResult {
        check_query(self.codes(), query);
        if let Some(hits) = self.try_multi_index(query, opts, LinearCost::Single) {
            return SearchResult { hits, method: SearchMethod::MultiIndex };
        }
        let started = Instant::now();
        let hits = linear_search(self.scan_codes(), query, opts.k, max_distance(self.bits(), opts));
        self.record_scan(started.elapsed());
        SearchResult { hits, method: SearchMethod::Linear }
    }

    /// Folds the time of a single-query scan into the planner's measured scan cost. The cost
    /// model's constants come from one machine; the same scan ran 4 times faster on another,
    /// where the fixed constants let multi-index hashing overspend its share by as much.
    fn record_scan(&self, elapsed: Duration) {
        let words = self.scan_words();
        if words < 1.0 {
            return;
        }
        let sample = elapsed.as_nanos() as f64 / words;
        let smoothed = match self.scan_ns_per_word() {
            Some(old) => 0.75 * old + 0.25 * sample,
            None => sample,
        };
        self.scan_ns_per_word.store(smoothed.to_bits(), Ordering::Relaxed);
    }

    /// What a linear scan reads, in 64-bit words' worth of bytes (codes of at most 32 bits are
    /// scanned from narrow lanes).
    pub(crate) fn scan_words(&self) -> f64 {
        (self.len() * self.scan_codes().bytes_per_code()) as f64 / 8.0
    }

    /// The measured cost of a single-query scan, nanoseconds per 8 bytes of codes, once a scan
    /// has been timed (concurrent updates may overwrite each other: it is an estimate).
    pub(crate) fn scan_ns_per_word(&self) -> Option<f64> {
        let bits = self.scan_ns_per_word.load(Ordering::Relaxed);
        (bits != 0).then(|| f64::from_bits(bits))
    }

    /// Like [`search`](Self::search), but a linear scan is split over the rayon pool's threads
    /// (worth it when cores are idle; a loaded server gains more from one core per query). The
    /// gain needs the pool's threads awake: queries back to back split a scan of 1M 64-bit codes
    /// 1.8-2x faster, but a query arriving after the pool has slept pays for waking a thread, and
    /// on the virtual machine of BENCHMARKS.md that took longer than such a scan.
    pub fn search_split(&self, query: &[u64], opts: &SearchOptions) -> SearchResult {
        check_query(self.codes(), query);
        if let Some(hits) = self.try_multi_index(query, opts, LinearCost::Split) {
            return SearchResult { hits, method: SearchMethod::MultiIndex };
        }
        let hits = linear_search_split(self.scan_codes(), query, opts.k, max_distance(self.bits(), opts));
        SearchResult { hits, method: SearchMethod::Linear }
    }

    /// Exact search for many queries, in parallel. Under `Auto`, each query first tries
    /// multi-index hashing within a budget set by the batched scan's cost; the rest share one
    /// cache-blocked scan. Panics if the queries' code length differs from the index's.
    pub fn search_batch(&self, queries: CodeMatrix<'_>, opts: &SearchOptions) -> Vec<SearchResult> {
        assert_eq!(queries.bits(), self.bits(), "queries and index have different code lengths");
        let mih: Vec<Option<Vec<Hit>>> = if opts.method == SearchMethod::Linear {
            vec![None; queries.len()]
        } else {
            (0..queries.len())
                .into_par_iter()
                .map(|q| self.try_multi_index(queries.code(q), opts, LinearCost::Batch))
                .collect()
        };
        let rest: Vec<usize> = (0..queries.len()).filter(|&q| mih[q].is_none()).collect();
        let rest_words: Vec<u64> = rest.iter().flat_map(|&q| queries.code(q).iter().copied()).collect();
        let rest = CodeMatrix::new(self.bits(), &rest_words);
        let mut linear =
            linear_search_batch(self.scan_codes(), rest, opts.k, max_distance(self.bits(), opts)).into_iter();
        mih.into_iter()
            .map(|hits| match hits {
                Some(hits) => SearchResult { hits, method: SearchMethod::MultiIndex },
                None => SearchResult { hits: linear.next().unwrap_or_default(), method: SearchMethod::Linear },
            })
            .collect()
    }
}

/// Which scan multi-index hashing competes with, for the planner's cost estimate.
#[derive(Clone, Copy, Debug)]
pub(crate) enum LinearCost {
    Single,
    Split,
    Batch,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{IndexMetadata, IndexWriter};

    #[test]
    fn single_query_scans_set_the_planners_scan_cost() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("codes.hidx");
        let mut writer = IndexWriter::create(&path, 64, IndexMetadata::default()).unwrap();
        for i in 0..20_000u64 {
            writer.push(&[i.wrapping_mul(0x9E37_79B9_7F4A_7C15)], 0, i, "").unwrap();
        }
        writer.finish().unwrap();
        let index = CodeIndex::open(&path).unwrap();
        assert_eq!(index.scan_ns_per_word(), None, "nothing timed before the first scan");
        let opts = SearchOptions { k: 10, radius: None, method: SearchMethod::Linear };
        index.search(&[0], &opts);
        let first = index.scan_ns_per_word().expect("the scan was timed");
        assert!(first.is_finite() && first > 0.0, "{first}");
        // Later scans move the estimate a quarter of the way towards their own time.
        index.scan_ns_per_word.store(1e6f64.to_bits(), Ordering::Relaxed);
        index.search(&[0], &opts);
        let moved = index.scan_ns_per_word().unwrap();
        assert!((0.75e6..1e6).contains(&moved), "{moved}");
    }
}
