//! Exact Hamming search over a `CodeIndex`: options and results, the top-k collector, the linear
//! scan (single query, a single query split over threads, cache-blocked batches) and the planner
//! that chooses between the scan and multi-index hashing (`mih.rs`).
//!
//! Results are exact and deterministic: hits are ordered by (distance, position) and the first
//! `k` are returned, so ties at the k-th distance go to the items stored first.

use rayon::prelude::*;

use crate::code::CodeMatrix;
use crate::kernel::Kernel;
use crate::reader::CodeIndex;

/// How to search.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SearchMethod {
    /// Multi-index hashing when its cost estimate beats the scan, else the linear scan.
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
/// Bytes of codes a batch scans per query block, sized to stay in L2 across the block's queries.
const L2_BLOCK_BYTES: usize = 256 * 1024;
/// Most queries scanning one code block together.
const MAX_QUERY_BLOCK: usize = 64;
/// Positions must fit below the distance in a sort key.
const POSITION_BITS: u32 = 40;

/// Collects the best `k` (distance, position) pairs without a heap in the hot loop: candidates
/// below the current threshold are appended to a buffer, and when it fills, one selection keeps
/// the best `k` and tightens the threshold to the k-th distance.
#[derive(Debug)]
pub(crate) struct TopK {
    k: usize,
    /// Sort key of the current k-th best, or one past the largest admissible distance.
    kth_key: u64,
    buf: Vec<u64>,
    cap: usize,
}

fn key(distance: u32, position: usize) -> u64 {
    (u64::from(distance) << POSITION_BITS) | position as u64
}

impl TopK {
    /// Keeps the best `k` of items within `max_distance`.
    pub(crate) fn new(k: usize, max_distance: u32) -> Self {
        let cap = k.saturating_mul(2).saturating_add(1024);
        TopK { k, kth_key: key(max_distance + 1, 0), buf: Vec::new(), cap }
    }

    /// A scan visiting positions in increasing order only needs distances below this.
    #[inline]
    pub(crate) fn threshold(&self) -> u32 {
        (self.kth_key >> POSITION_BITS) as u32
    }

    /// Adds an item found in increasing position order whose distance is below `threshold()`.
    #[inline]
    pub(crate) fn push_in_order(&mut self, distance: u32, position: usize) {
        self.buf.push(key(distance, position));
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
        self.buf.sort_unstable();
        self.buf.truncate(self.k);
        let mask = (1u64 << POSITION_BITS) - 1;
        self.buf
            .into_iter()
            .map(|key| Hit { position: (key & mask) as usize, distance: (key >> POSITION_BITS) as u32 })
            .collect()
    }
}

/// Scans codes `range` for `query` in position order, feeding `top`.
fn scan(kernel: Kernel, codes: CodeMatrix<'_>, query: &[u64], range: std::ops::Range<usize>, top: &mut TopK) {
    let wpc = codes.words_per_code();
    let words = &codes.words()[range.start * wpc..range.end * wpc];
    let mut out = [0u32; BLOCK];
    for (b, block) in words.chunks(BLOCK * wpc).enumerate() {
        let out = &mut out[..block.len() / wpc];
        if kernel.distances(query, block, out) < top.threshold() {
            let base = range.start + b * BLOCK;
            for (j, &d) in out.iter().enumerate() {
                if d < top.threshold() {
                    top.push_in_order(d, base + j);
                }
            }
        }
    }
}

/// Largest distance a search with these options admits.
pub(crate) fn max_distance(bits: u32, opts: &SearchOptions) -> u32 {
    opts.radius.map_or(bits, |r| r.min(bits))
}

/// Exact linear-scan search of one query on the calling thread.
pub fn linear_search(codes: CodeMatrix<'_>, query: &[u64], opts: &SearchOptions) -> Vec<Hit> {
    check_query(codes, query);
    let mut top = TopK::new(opts.k, max_distance(codes.bits(), opts));
    if opts.k > 0 {
        scan(Kernel::detect(), codes, query, 0..codes.len(), &mut top);
    }
    top.into_hits()
}

/// Exact linear-scan search of one query, the codes split over the rayon pool's threads.
pub fn linear_search_split(codes: CodeMatrix<'_>, query: &[u64], opts: &SearchOptions) -> Vec<Hit> {
    check_query(codes, query);
    let n = codes.len();
    let parts = rayon::current_num_threads().max(1);
    let kernel = Kernel::detect();
    let max_d = max_distance(codes.bits(), opts);
    if opts.k == 0 || parts == 1 || n < parts * 4 * BLOCK {
        return linear_search(codes, query, opts);
    }
    let step = n.div_ceil(parts).next_multiple_of(BLOCK);
    (0..n)
        .step_by(step)
        .collect::<Vec<_>>()
        .into_par_iter()
        .map(|start| {
            let mut top = TopK::new(opts.k, max_d);
            scan(kernel, codes, query, start..(start + step).min(n), &mut top);
            top
        })
        .reduce_with(TopK::merge)
        .map_or_else(Vec::new, TopK::into_hits)
}

/// Exact linear-scan search of many queries: query blocks run in parallel, and each block scans
/// the codes in L2-sized pieces so each piece is read from memory once per block of queries.
pub fn linear_search_batch(codes: CodeMatrix<'_>, queries: CodeMatrix<'_>, opts: &SearchOptions) -> Vec<Vec<Hit>> {
    assert_eq!(codes.bits(), queries.bits(), "queries and codes have different lengths");
    let nq = queries.len();
    if nq < rayon::current_num_threads() {
        return (0..nq).map(|q| linear_search_split(codes, queries.code(q), opts)).collect();
    }
    let kernel = Kernel::detect();
    let max_d = max_distance(codes.bits(), opts);
    let code_block = (L2_BLOCK_BYTES / (8 * codes.words_per_code())).next_multiple_of(BLOCK);
    let query_block = nq.div_ceil(rayon::current_num_threads() * 2).clamp(1, MAX_QUERY_BLOCK);
    let idx: Vec<usize> = (0..nq).collect();
    idx.par_chunks(query_block)
        .flat_map_iter(|chunk| {
            let mut tops: Vec<TopK> = chunk.iter().map(|_| TopK::new(opts.k, max_d)).collect();
            if opts.k > 0 {
                for start in (0..codes.len()).step_by(code_block) {
                    let range = start..(start + code_block).min(codes.len());
                    for (&q, top) in chunk.iter().zip(&mut tops) {
                        scan(kernel, codes, queries.code(q), range.clone(), top);
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
    /// Exact search for one query (`words_for_bits(bits())` words). Runs on the calling thread;
    /// see [`search_split`](Self::search_split) to use the whole pool. Panics if the query
    /// length does not match the index.
    pub fn search(&self, query: &[u64], opts: &SearchOptions) -> SearchResult {
        check_query(self.codes(), query);
        if let Some(hits) = self.try_multi_index(query, opts, LinearCost::Single) {
            return SearchResult { hits, method: SearchMethod::MultiIndex };
        }
        SearchResult { hits: linear_search(self.codes(), query, opts), method: SearchMethod::Linear }
    }

    /// Like [`search`](Self::search), but a linear scan is split over the rayon pool's threads
    /// (worth it when cores are idle; a loaded server gains more from one core per query).
    pub fn search_split(&self, query: &[u64], opts: &SearchOptions) -> SearchResult {
        check_query(self.codes(), query);
        if let Some(hits) = self.try_multi_index(query, opts, LinearCost::Split) {
            return SearchResult { hits, method: SearchMethod::MultiIndex };
        }
        SearchResult { hits: linear_search_split(self.codes(), query, opts), method: SearchMethod::Linear }
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
        let mut linear = linear_search_batch(self.codes(), CodeMatrix::new(self.bits(), &rest_words), opts).into_iter();
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
