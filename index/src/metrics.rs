//! Retrieval metrics of hash codes against a database of codes: mAP@all in four tie modes,
//! mAP@k (two denominators), precision@k, and precision/recall within a Hamming radius (the PR
//! curve by radius). Needs only codes and labels.
//!
//! # Algorithm
//!
//! Per query, one pass over the database in position order counts items per Hamming distance
//! (`bits + 1` buckets) and, for each relevant item, records its distance, its ordinal among all
//! items of that distance seen so far and among the relevant ones. After the pass the bucket
//! prefix sums give every relevant item's rank with ties broken by database position, so every
//! metric costs O(N + bits) per query with no sort. Queries run in parallel with rayon; memory is
//! O(N + bits) per worker thread, independent of the number of queries.
//!
//! # Conventions
//!
//! - Relevant means "same label" ([`is_relevant`], the one place to change for multi-label data).
//! - A query with no relevant database item has no defined AP: it is **excluded** from every mean
//!   in the report (mAP, mAP@k, precision@k, radius and PR curve) and counted in `excluded`.
//! - AP at rank positions `i` of the relevant items is the mean of `precision@i` (mAP@all).
//! - Tie modes inside a group of equal distances: [`TieMode::IndexOrder`] ranks by database
//!   position (numpy's stable argsort); [`TieMode::Expected`] is the exact expectation over a
//!   uniformly random order (McSherry & Najork, ECIR 2008); [`TieMode::Optimistic`] puts relevant
//!   items first and [`TieMode::Pessimistic`] last. mAP@k and precision@k use index order.
//! - mAP@k: [`MapAtK::Ir`] divides the sum of precisions at relevant ranks `<= k` by
//!   `min(relevant, k)` (the IR definition); [`MapAtK::FoundInTopK`] divides by the relevant items
//!   found in the top k (the common deep-hashing code, `CalcTopMap`), and a query that finds none
//!   scores 0.
//! - precision@k divides by `k` even when the database has fewer than `k` items.
//! - Within radius `r` the "ball" is every item at distance `<= r`. Precision of an empty ball is
//!   counted as 0 and the queries with an empty ball are reported (`empty_ball_queries`);
//!   recall is the share of the query's relevant items inside the ball.
//! - Means are summed in fixed point (2^-64 resolution), so results do not depend on the number
//!   of threads or on scheduling.

use std::fmt;
use std::str::FromStr;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::code::{CodeMatrix, last_word_mask};
use crate::hamming::distance;

/// Errors from evaluating codes: inputs that do not belong together.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MetricsError {
    #[error("database codes have {database} bits but query codes have {queries}: evaluate codes of one model")]
    BitsMismatch { database: u32, queries: u32 },
    #[error("{what} has {codes} codes but {labels} labels: pass one label per code")]
    LabelCount { what: &'static str, codes: usize, labels: usize },
    #[error("{what} code {index} has non-zero padding bits past bit {bits}: build codes with HashCode")]
    NonZeroPadding { what: &'static str, index: usize, bits: u32 },
    #[error("database has {0} items, more than the 4294967295 the metrics support")]
    DatabaseTooLarge(usize),
    #[error("k must be at least 1 in {0}")]
    ZeroK(&'static str),
    #[error("unknown tie mode {0:?}: use index-order, expected, optimistic or pessimistic")]
    UnknownTieMode(String),
}

/// How items at equal Hamming distance are ordered when computing AP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TieMode {
    /// Ties broken by database position (deterministic; numpy's stable argsort).
    IndexOrder,
    /// Exact expected AP over a uniformly random order inside each tie group.
    Expected,
    /// Relevant items first inside each tie group (upper bound).
    Optimistic,
    /// Relevant items last inside each tie group (lower bound).
    Pessimistic,
}

impl TieMode {
    /// All modes, in report order.
    pub const ALL: [TieMode; 4] = [TieMode::IndexOrder, TieMode::Expected, TieMode::Optimistic, TieMode::Pessimistic];

    /// The name printed next to every number and used in JSON.
    pub fn name(self) -> &'static str {
        match self {
            TieMode::IndexOrder => "index-order",
            TieMode::Expected => "expected",
            TieMode::Optimistic => "optimistic",
            TieMode::Pessimistic => "pessimistic",
        }
    }
}

impl fmt::Display for TieMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for TieMode {
    type Err = MetricsError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let wanted = s.trim().to_ascii_lowercase().replace('_', "-");
        TieMode::ALL.into_iter().find(|m| m.name() == wanted).ok_or_else(|| MetricsError::UnknownTieMode(s.to_owned()))
    }
}

/// The denominator of AP@k.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MapAtK {
    /// IR definition: divide by `min(relevant items in the database, k)`.
    Ir,
    /// Deep-hashing code (`CalcTopMap`): divide by the relevant items found in the top k.
    FoundInTopK,
}

/// Whether a database item is relevant to a query. The one definition of relevance: a
/// multi-label data set changes this to "shares at least one label".
#[inline]
pub fn is_relevant(query_label: u32, database_label: u32) -> bool {
    query_label == database_label
}

/// mAP@all in one tie mode.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct MapResult {
    /// Mean AP over the evaluated queries; NaN when no query was evaluated.
    pub map: f64,
    /// Queries evaluated (with at least one relevant database item).
    pub queries: usize,
    /// Queries excluded because no database item is relevant to them.
    pub excluded: usize,
}

/// What [`evaluate`] computes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct EvalConfig {
    /// Tie modes of mAP@all.
    pub ties: Vec<TieMode>,
    /// Cut-offs of mAP@k (both denominators, index-order ties).
    pub map_at_k: Vec<usize>,
    /// Cut-offs of precision@k (index-order ties).
    pub precision_at_k: Vec<usize>,
    /// Hamming radius of the precision/recall-within-radius numbers.
    pub radius: u32,
    /// Whether to include the PR curve by radius `0..=bits`.
    pub pr_curve: bool,
}

impl Default for EvalConfig {
    fn default() -> Self {
        Self {
            ties: TieMode::ALL.to_vec(),
            map_at_k: vec![100, 1000],
            precision_at_k: vec![1, 10, 100, 1000],
            radius: 2,
            pr_curve: true,
        }
    }
}

/// Everything [`evaluate`] measured. Means are over the evaluated queries; `None` when no query
/// was evaluated.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    pub bits: u32,
    pub database_size: usize,
    /// All queries given.
    pub queries: usize,
    /// Queries with at least one relevant database item: the denominator of every mean.
    pub evaluated_queries: usize,
    /// Queries without a relevant database item, left out of every mean.
    pub excluded_queries: usize,
    pub relevance: String,
    pub map: Vec<MapEntry>,
    pub map_at_k: Vec<MapAtKEntry>,
    pub precision_at_k: Vec<PrecisionAtK>,
    pub radius: RadiusEntry,
    /// Precision/recall within radius `0..=bits`; empty when not requested.
    pub pr_curve: Vec<RadiusEntry>,
}

/// mAP@all in one tie mode.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MapEntry {
    pub ties: TieMode,
    pub map: Option<f64>,
}

/// mAP@k with both denominators.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MapAtKEntry {
    pub k: usize,
    pub ties: TieMode,
    /// Denominator `min(relevant, k)` ([`MapAtK::Ir`]).
    pub ir: Option<f64>,
    /// Denominator: relevant found in the top k ([`MapAtK::FoundInTopK`]).
    pub found_in_top_k: Option<f64>,
}

/// Precision of the top k.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PrecisionAtK {
    pub k: usize,
    pub ties: TieMode,
    pub precision: Option<f64>,
}

/// Precision and recall within a Hamming radius.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RadiusEntry {
    pub radius: u32,
    /// Mean precision, an empty ball counting as 0.
    pub precision: Option<f64>,
    pub recall: Option<f64>,
    /// Evaluated queries with no database item within the radius.
    pub empty_ball_queries: usize,
}

/// mAP@all of `queries` against `database` in one tie mode.
pub fn mean_average_precision(
    database: CodeMatrix<'_>,
    database_labels: &[u32],
    queries: CodeMatrix<'_>,
    query_labels: &[u32],
    ties: TieMode,
) -> Result<MapResult, MetricsError> {
    let config = EvalConfig { ties: vec![ties], map_at_k: vec![], precision_at_k: vec![], radius: 0, pr_curve: false };
    let sums = run(database, database_labels, queries, query_labels, &config)?;
    Ok(MapResult {
        map: sums.map[0].mean(sums.evaluated).unwrap_or(f64::NAN),
        queries: sums.evaluated,
        excluded: sums.excluded,
    })
}

/// mAP@k of `queries` against `database` with index-order ties.
pub fn mean_average_precision_at_k(
    database: CodeMatrix<'_>,
    database_labels: &[u32],
    queries: CodeMatrix<'_>,
    query_labels: &[u32],
    k: usize,
    denominator: MapAtK,
) -> Result<MapResult, MetricsError> {
    let config = EvalConfig { ties: vec![], map_at_k: vec![k], precision_at_k: vec![], radius: 0, pr_curve: false };
    let sums = run(database, database_labels, queries, query_labels, &config)?;
    let sum = match denominator {
        MapAtK::Ir => &sums.ap_at_k_ir[0],
        MapAtK::FoundInTopK => &sums.ap_at_k_found[0],
    };
    Ok(MapResult {
        map: sum.mean(sums.evaluated).unwrap_or(f64::NAN),
        queries: sums.evaluated,
        excluded: sums.excluded,
    })
}

/// Every metric of `config`, for `queries` against `database`.
pub fn evaluate(
    database: CodeMatrix<'_>,
    database_labels: &[u32],
    queries: CodeMatrix<'_>,
    query_labels: &[u32],
    config: &EvalConfig,
) -> Result<EvalReport, MetricsError> {
    let sums = run(database, database_labels, queries, query_labels, config)?;
    let n = sums.evaluated;
    let bits = database.bits();
    let radius_entry = |r: usize| RadiusEntry {
        radius: r as u32,
        precision: sums.radius_precision[r].mean(n),
        recall: sums.radius_recall[r].mean(n),
        empty_ball_queries: sums.radius_empty[r],
    };
    Ok(EvalReport {
        bits,
        database_size: database.len(),
        queries: queries.len(),
        evaluated_queries: n,
        excluded_queries: sums.excluded,
        relevance: "same label".to_owned(),
        map: config.ties.iter().zip(&sums.map).map(|(&ties, s)| MapEntry { ties, map: s.mean(n) }).collect(),
        map_at_k: config
            .map_at_k
            .iter()
            .enumerate()
            .map(|(i, &k)| MapAtKEntry {
                k,
                ties: TieMode::IndexOrder,
                ir: sums.ap_at_k_ir[i].mean(n),
                found_in_top_k: sums.ap_at_k_found[i].mean(n),
            })
            .collect(),
        precision_at_k: config
            .precision_at_k
            .iter()
            .zip(&sums.precision_at_k)
            .map(|(&k, s)| PrecisionAtK { k, ties: TieMode::IndexOrder, precision: s.mean(n) })
            .collect(),
        radius: radius_entry(config.radius.min(bits) as usize),
        pr_curve: if config.pr_curve { (0..=bits as usize).map(radius_entry).collect() } else { Vec::new() },
    })
}

/// A sum of values in `[0, 1]` kept exactly in fixed point, so the order of additions (thread
/// scheduling) cannot change the result.
#[derive(Clone, Copy, Debug, Default)]
struct FixedSum(i128);

const FIXED_ONE: f64 = 18446744073709551616.0; // 2^64

impl FixedSum {
    fn add(&mut self, x: f64) {
        self.0 += (x * FIXED_ONE).round() as i128;
    }
    fn merge(&mut self, other: FixedSum) {
        self.0 += other.0;
    }
    fn mean(self, n: usize) -> Option<f64> {
        (n > 0).then(|| self.0 as f64 / FIXED_ONE / n as f64)
    }
}

/// Per-query metric sums, merged across threads.
#[derive(Debug)]
struct Sums {
    evaluated: usize,
    excluded: usize,
    map: Vec<FixedSum>,
    ap_at_k_ir: Vec<FixedSum>,
    ap_at_k_found: Vec<FixedSum>,
    precision_at_k: Vec<FixedSum>,
    radius_precision: Vec<FixedSum>,
    radius_recall: Vec<FixedSum>,
    radius_empty: Vec<usize>,
}

impl Sums {
    fn new(config: &EvalConfig, bits: u32) -> Self {
        let buckets = bits as usize + 1;
        Self {
            evaluated: 0,
            excluded: 0,
            map: vec![FixedSum::default(); config.ties.len()],
            ap_at_k_ir: vec![FixedSum::default(); config.map_at_k.len()],
            ap_at_k_found: vec![FixedSum::default(); config.map_at_k.len()],
            precision_at_k: vec![FixedSum::default(); config.precision_at_k.len()],
            radius_precision: vec![FixedSum::default(); buckets],
            radius_recall: vec![FixedSum::default(); buckets],
            radius_empty: vec![0; buckets],
        }
    }

    fn merge(mut self, other: Sums) -> Sums {
        self.evaluated += other.evaluated;
        self.excluded += other.excluded;
        let pairs = [
            (&mut self.map, &other.map),
            (&mut self.ap_at_k_ir, &other.ap_at_k_ir),
            (&mut self.ap_at_k_found, &other.ap_at_k_found),
            (&mut self.precision_at_k, &other.precision_at_k),
            (&mut self.radius_precision, &other.radius_precision),
            (&mut self.radius_recall, &other.radius_recall),
        ];
        for (mine, theirs) in pairs {
            mine.iter_mut().zip(theirs).for_each(|(a, &b)| a.merge(b));
        }
        self.radius_empty.iter_mut().zip(&other.radius_empty).for_each(|(a, b)| *a += b);
        self
    }
}

fn validate(
    database: CodeMatrix<'_>,
    database_labels: &[u32],
    queries: CodeMatrix<'_>,
    query_labels: &[u32],
    config: &EvalConfig,
) -> Result<(), MetricsError> {
    if database.bits() != queries.bits() {
        return Err(MetricsError::BitsMismatch { database: database.bits(), queries: queries.bits() });
    }
    for (what, codes, labels) in [("database", database, database_labels), ("queries", queries, query_labels)] {
        if codes.len() != labels.len() {
            return Err(MetricsError::LabelCount { what, codes: codes.len(), labels: labels.len() });
        }
        // Padding bits would push distances past `bits` and out of the histograms.
        let (wpc, mask) = (codes.words_per_code(), last_word_mask(codes.bits()));
        if let Some(index) = codes.words().chunks_exact(wpc).position(|c| c[wpc - 1] & !mask != 0) {
            return Err(MetricsError::NonZeroPadding { what, index, bits: codes.bits() });
        }
    }
    if u32::try_from(database.len()).is_err() {
        return Err(MetricsError::DatabaseTooLarge(database.len()));
    }
    if config.map_at_k.contains(&0) {
        return Err(MetricsError::ZeroK("map_at_k"));
    }
    if config.precision_at_k.contains(&0) {
        return Err(MetricsError::ZeroK("precision_at_k"));
    }
    Ok(())
}

fn run(
    database: CodeMatrix<'_>,
    database_labels: &[u32],
    queries: CodeMatrix<'_>,
    query_labels: &[u32],
    config: &EvalConfig,
) -> Result<Sums, MetricsError> {
    validate(database, database_labels, queries, query_labels, config)?;
    let bits = database.bits();
    let harmonic = config.ties.contains(&TieMode::Expected).then(|| Harmonic::new(database.len()));
    let cutoffs = Cutoffs::new(config);
    let sums = (0..queries.len())
        .into_par_iter()
        .with_min_len(8)
        .fold(
            || Worker::new(config, bits, harmonic.as_ref(), &cutoffs),
            |mut worker, q| {
                worker.query(database, database_labels, queries.code(q), query_labels[q]);
                worker
            },
        )
        .map(|worker| worker.sums)
        .reduce(|| Sums::new(config, bits), Sums::merge);
    Ok(sums)
}

/// The distinct k of mAP@k and precision@k, sorted, with where each config entry lives.
#[derive(Debug)]
struct Cutoffs {
    ks: Vec<usize>,
    map_slot: Vec<usize>,
    precision_slot: Vec<usize>,
}

impl Cutoffs {
    fn new(config: &EvalConfig) -> Self {
        let mut ks: Vec<usize> = config.map_at_k.iter().chain(&config.precision_at_k).copied().collect();
        ks.sort_unstable();
        ks.dedup();
        let slot = |k: &usize| ks.binary_search(k).unwrap_or_default();
        let map_slot = config.map_at_k.iter().map(slot).collect();
        let precision_slot = config.precision_at_k.iter().map(slot).collect();
        Self { ks, map_slot, precision_slot }
    }
}

/// A relevant database item seen during the scan.
#[derive(Clone, Copy, Debug)]
struct Relevant {
    distance: u32,
    /// 1-based ordinal among all items at this distance, in position order.
    within: u32,
    /// 1-based ordinal among the relevant items at this distance, in position order.
    relevant_within: u32,
}

/// Per-thread scratch and sums.
#[derive(Debug)]
struct Worker<'a> {
    config: &'a EvalConfig,
    harmonic: Option<&'a Harmonic>,
    cutoffs: &'a Cutoffs,
    /// Items per distance.
    count: Vec<u32>,
    /// Relevant items per distance.
    relevant: Vec<u32>,
    /// Items / relevant items at smaller distances.
    before: Vec<u32>,
    relevant_before: Vec<u32>,
    /// Scratch of the scan: `(distance << 32) | within` per item, the relevant ones first.
    hits: Vec<u64>,
    /// The relevant items of the last scan, in position order.
    items: Vec<Relevant>,
    /// Per distinct k: relevant items ranked exactly in `(k_{i-1}, k_i]` and their precision sum.
    k_found: Vec<u32>,
    k_precision: Vec<f64>,
    sums: Sums,
}

impl<'a> Worker<'a> {
    fn new(config: &'a EvalConfig, bits: u32, harmonic: Option<&'a Harmonic>, cutoffs: &'a Cutoffs) -> Self {
        let buckets = bits as usize + 1;
        Self {
            config,
            harmonic,
            cutoffs,
            count: vec![0; buckets],
            relevant: vec![0; buckets],
            before: vec![0; buckets],
            relevant_before: vec![0; buckets],
            hits: Vec::new(),
            items: Vec::new(),
            k_found: vec![0; cutoffs.ks.len()],
            k_precision: vec![0.0; cutoffs.ks.len()],
            sums: Sums::new(config, bits),
        }
    }

    fn query(&mut self, database: CodeMatrix<'_>, database_labels: &[u32], query: &[u64], label: u32) {
        self.scan(database, database_labels, query, label);
        let total_relevant = self.items.len();
        if total_relevant == 0 {
            self.sums.excluded += 1;
            return;
        }
        self.sums.evaluated += 1;
        let (mut n, mut r) = (0u32, 0u32);
        for d in 0..self.count.len() {
            self.before[d] = n;
            self.relevant_before[d] = r;
            n += self.count[d];
            r += self.relevant[d];
        }
        let rel = total_relevant as f64;
        for (i, &mode) in self.config.ties.iter().enumerate() {
            let sum = match mode {
                TieMode::IndexOrder => self.index_order_precision_sum(),
                TieMode::Expected => self.groups_precision_sum(expected_group),
                TieMode::Optimistic => self.groups_precision_sum(optimistic_group),
                TieMode::Pessimistic => self.groups_precision_sum(pessimistic_group),
            };
            self.sums.map[i].add(sum / rel);
        }
        if !self.cutoffs.ks.is_empty() {
            self.top_k(total_relevant);
        }
        self.radius(total_relevant);
    }

    /// The counting pass over the database, in position order.
    fn scan(&mut self, database: CodeMatrix<'_>, database_labels: &[u32], query: &[u64], label: u32) {
        self.count.fill(0);
        self.relevant.fill(0);
        if self.hits.len() < database_labels.len() {
            self.hits.resize(database_labels.len(), 0);
        }
        let pass = Pass {
            database,
            database_labels,
            query,
            label,
            count: &mut self.count,
            relevant: &mut self.relevant,
            hits: &mut self.hits,
            items: &mut self.items,
        };
        pass.run();
    }

    fn index_order_precision_sum(&self) -> f64 {
        self.items
            .iter()
            .map(|it| {
                let d = it.distance as usize;
                f64::from(self.relevant_before[d] + it.relevant_within) / f64::from(self.before[d] + it.within)
            })
            .sum()
    }

    /// Sum of precisions over the tie groups that hold relevant items, `group` giving one group's.
    fn groups_precision_sum(&self, group: fn(&Group, Option<&Harmonic>) -> f64) -> f64 {
        (0..self.count.len())
            .filter(|&d| self.relevant[d] > 0)
            .map(|d| {
                let g = Group {
                    before: self.before[d],
                    relevant_before: self.relevant_before[d],
                    size: self.count[d],
                    relevant: self.relevant[d],
                };
                group(&g, self.harmonic)
            })
            .sum()
    }

    fn top_k(&mut self, total_relevant: usize) {
        let ks = &self.cutoffs.ks;
        self.k_found.fill(0);
        self.k_precision.fill(0.0);
        for it in &self.items {
            let d = it.distance as usize;
            let rank = (self.before[d] + it.within) as usize;
            let slot = ks.partition_point(|&k| k < rank);
            if slot < ks.len() {
                self.k_found[slot] += 1;
                self.k_precision[slot] += f64::from(self.relevant_before[d] + it.relevant_within) / rank as f64;
            }
        }
        // Prefix sums: slot i now covers every rank <= ks[i].
        for i in 1..ks.len() {
            self.k_found[i] += self.k_found[i - 1];
            self.k_precision[i] += self.k_precision[i - 1];
        }
        for (i, &slot) in self.cutoffs.map_slot.iter().enumerate() {
            let k = ks[slot];
            let (found, precision) = (self.k_found[slot], self.k_precision[slot]);
            self.sums.ap_at_k_ir[i].add(precision / total_relevant.min(k) as f64);
            self.sums.ap_at_k_found[i].add(if found > 0 { precision / f64::from(found) } else { 0.0 });
        }
        for (i, &slot) in self.cutoffs.precision_slot.iter().enumerate() {
            self.sums.precision_at_k[i].add(f64::from(self.k_found[slot]) / ks[slot] as f64);
        }
    }

    fn radius(&mut self, total_relevant: usize) {
        let (mut n, mut r) = (0u32, 0u32);
        for d in 0..self.count.len() {
            n += self.count[d];
            r += self.relevant[d];
            if n == 0 {
                self.sums.radius_empty[d] += 1;
            } else {
                self.sums.radius_precision[d].add(f64::from(r) / f64::from(n));
            }
            self.sums.radius_recall[d].add(f64::from(r) / total_relevant as f64);
        }
    }
}

/// One counting pass of a query over the database.
#[derive(Debug)]
struct Pass<'a> {
    database: CodeMatrix<'a>,
    database_labels: &'a [u32],
    query: &'a [u64],
    label: u32,
    count: &'a mut [u32],
    relevant: &'a mut [u32],
    /// At least as long as the database.
    hits: &'a mut [u64],
    items: &'a mut Vec<Relevant>,
}

impl Pass<'_> {
    /// Runs the pass, filling `count` and `relevant` and replacing `items`.
    fn run(self) {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("popcnt") {
            // SAFETY: the CPU has the popcnt instruction, checked just above.
            return unsafe { self.run_popcnt() };
        }
        self.run_portable()
    }

    /// The same pass compiled with the popcnt instruction, which the baseline x86-64 target lacks
    /// (its software popcount triples the cost of the pass).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "popcnt")]
    fn run_popcnt(self) {
        self.run_portable()
    }

    #[inline(always)]
    fn run_portable(self) {
        let Pass { database, database_labels, query, label, count, relevant, hits, items } = self;
        let mut found = 0;
        let mut visit = |d: u32, db_label: u32| {
            let d = d as usize;
            count[d] += 1;
            // Written for every item, kept only for relevant ones: no unpredictable branch, and
            // one 8-byte store (stores bound this loop).
            hits[found] = (d as u64) << 32 | u64::from(count[d]);
            found += usize::from(is_relevant(label, db_label));
        };
        if let [q] = query {
            // One-word codes: let the compiler see the length.
            for (code, &db_label) in database.words().iter().zip(database_labels) {
                visit(distance(std::slice::from_ref(q), std::slice::from_ref(code)), db_label);
            }
        } else {
            for (code, &db_label) in database.words().chunks_exact(database.words_per_code()).zip(database_labels) {
                visit(distance(query, code), db_label);
            }
        }
        // Only the relevant items need their ordinal among relevant items of their distance.
        items.clear();
        items.extend(hits[..found].iter().map(|&hit| {
            let distance = (hit >> 32) as u32;
            let r = &mut relevant[distance as usize];
            *r += 1;
            Relevant { distance, within: hit as u32, relevant_within: *r }
        }));
    }
}

/// One tie group: `size` items at one distance, `relevant` of them relevant, after `before`
/// items of which `relevant_before` are relevant.
#[derive(Debug)]
struct Group {
    before: u32,
    relevant_before: u32,
    size: u32,
    relevant: u32,
}

/// Relevant items first: the k-th relevant item sits at rank `before + k`.
fn optimistic_group(g: &Group, _: Option<&Harmonic>) -> f64 {
    (1..=g.relevant).map(|k| f64::from(g.relevant_before + k) / f64::from(g.before + k)).sum()
}

/// Relevant items last: the k-th relevant item sits at rank `before + size - relevant + k`.
fn pessimistic_group(g: &Group, _: Option<&Harmonic>) -> f64 {
    let offset = g.before + g.size - g.relevant;
    (1..=g.relevant).map(|k| f64::from(g.relevant_before + k) / f64::from(offset + k)).sum()
}

/// Expected sum of precisions of the group's relevant items under a uniformly random order
/// (McSherry & Najork 2008). With T = before, R = relevant_before, n = size, r = relevant: the
/// item at group position p is relevant with probability r/n, and then the p-1 items before it
/// hold (p-1)(r-1)/(n-1) relevant items in expectation, so the sum is
/// `r/n * sum_{p=1..n} (R + 1 + (p-1)(r-1)/(n-1)) / (T + p)`; with `h = sum 1/(T+p)` and
/// `sum (p-1)/(T+p) = n - (T+1) h` this is `r/n * ((R+1) h + (r-1)/(n-1) (n - (T+1) h))`.
fn expected_group(g: &Group, harmonic: Option<&Harmonic>) -> f64 {
    let (t, n, r) = (f64::from(g.before), f64::from(g.size), f64::from(g.relevant));
    let big_r = f64::from(g.relevant_before);
    // Small groups: the direct sums avoid the cancellation in `n - (T+1) h`.
    const DIRECT: u32 = 32;
    let (h, shifted) = match harmonic {
        Some(table) if g.size > DIRECT => {
            let h = table.range(g.before, g.before + g.size);
            (h, n - (t + 1.0) * h)
        }
        _ => (1..=g.size).fold((0.0, 0.0), |(h, s), p| {
            let denom = f64::from(g.before + p);
            (h + 1.0 / denom, s + f64::from(p - 1) / denom)
        }),
    };
    let spread = if g.size > 1 { (r - 1.0) / (n - 1.0) * shifted } else { 0.0 };
    r / n * ((big_r + 1.0) * h + spread)
}

/// Harmonic numbers `H(m) = sum_{i=1..m} 1/i` for `m <= N`, each kept as an unevaluated sum of
/// two f64 (compensated summation) so that differences of nearly equal values stay accurate.
#[derive(Debug)]
struct Harmonic {
    hi: Vec<f64>,
    lo: Vec<f64>,
}

impl Harmonic {
    fn new(n: usize) -> Self {
        let (mut hi, mut lo) = (Vec::with_capacity(n + 1), Vec::with_capacity(n + 1));
        let (mut s, mut c) = (0.0f64, 0.0f64);
        hi.push(0.0);
        lo.push(0.0);
        for i in 1..=n {
            // TwoSum: s + x = t + e exactly.
            let x = 1.0 / i as f64;
            let t = s + x;
            let z = t - s;
            let e = (s - (t - z)) + (x - z);
            s = t;
            c += e;
            hi.push(s);
            lo.push(c);
        }
        Self { hi, lo }
    }

    /// `H(b) - H(a) = sum_{i=a+1..b} 1/i`.
    fn range(&self, a: u32, b: u32) -> f64 {
        let (a, b) = (a as usize, b as usize);
        (self.hi[b] - self.hi[a]) + (self.lo[b] - self.lo[a])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expected_group_closed_form_matches_direct_sum_on_large_groups() {
        let table = Harmonic::new(100_000);
        for (before, relevant_before, size, relevant) in
            [(0, 0, 1000, 7), (59_000, 300, 900, 450), (10, 3, 33, 1), (40_000, 5000, 60_000 - 40_000, 20_000)]
        {
            let g = Group { before, relevant_before, size, relevant };
            let closed = expected_group(&g, Some(&table));
            let direct = expected_group(&g, None);
            assert!((closed - direct).abs() <= 1e-12 * direct.max(1.0), "{g:?}: {closed} vs {direct}");
        }
    }

    #[test]
    fn tie_mode_names_parse_back() {
        for mode in TieMode::ALL {
            assert_eq!(mode.name().parse::<TieMode>().unwrap(), mode);
            assert_eq!(serde_json::to_string(&mode).unwrap(), format!("\"{}\"", mode.name()));
        }
        assert_eq!("Index_Order".parse::<TieMode>().unwrap(), TieMode::IndexOrder);
        assert!(matches!("random".parse::<TieMode>(), Err(MetricsError::UnknownTieMode(_))));
    }
}
