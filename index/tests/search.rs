//! Exact search against the brute-force oracle: top-k, radius, batch, split scan and multi-index
//! hashing, on uniform and tie-heavy codes of every common length.

mod common;

use common::{codes, oracle, perturb, random_code, write_index};
use hashsrv_index::code::words_for_bits;
use hashsrv_index::{CodeMatrix, SearchMethod, SearchOptions};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const SEED: u64 = 0x5eed_1dec;
const BITS: [u32; 8] = [8, 16, 32, 48, 64, 100, 128, 256];

fn config(cases: u32) -> Config {
    eprintln!("proptest seed: {SEED:#x}");
    Config { cases, rng_seed: RngSeed::Fixed(SEED), failure_persistence: None, ..Config::default() }
}

/// Queries: stored codes, their noisy copies and fresh random codes.
fn queries(seed: u64, bits: u32, words: &[u64], count: usize) -> Vec<u64> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0xabcd);
    let wpc = words_for_bits(bits);
    let n = words.len() / wpc;
    (0..count)
        .flat_map(|i| match (i % 3, n) {
            (0, n) if n > 0 => words[rng.random_range(0..n) * wpc..][..wpc].to_vec(),
            (1, n) if n > 0 => {
                let at = rng.random_range(0..n) * wpc;
                let flips = rng.random_range(1..5);
                perturb(&mut rng, &words[at..at + wpc], bits, flips)
            }
            _ => random_code(&mut rng, bits),
        })
        .collect()
}

proptest! {
    #![proptest_config(config(96))]

    #[test]
    fn every_method_matches_the_oracle(
        bits in proptest::sample::select(BITS.to_vec()),
        n in 0usize..600,
        tie_heavy in any::<bool>(),
        seed in any::<u64>(),
        k in prop_oneof![Just(0usize), 1usize..20, Just(100), Just(usize::MAX)],
        radius in proptest::option::of(0u32..20),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let words = codes(seed, bits, n, tie_heavy);
        let index = write_index(&dir.path().join("i.hsidx"), bits, &words);
        let qwords = queries(seed, bits, &words, 6);
        let qs = CodeMatrix::new(bits, &qwords);
        let max_d = radius.map_or(bits, |r| r.min(bits));
        let expected: Vec<_> = (0..qs.len()).map(|q| oracle(&words, bits, qs.code(q), k, max_d)).collect();
        for method in [SearchMethod::Linear, SearchMethod::MultiIndex, SearchMethod::Auto] {
            let opts = SearchOptions { k, radius, method };
            let used = if method == SearchMethod::MultiIndex && bits >= 32 {
                SearchMethod::MultiIndex
            } else {
                SearchMethod::Linear
            };
            for (q, want) in expected.iter().enumerate() {
                let got = index.search(qs.code(q), &opts);
                prop_assert_eq!(&got.hits, want, "{:?} query {}", method, q);
                prop_assert_eq!(got.method, used);
                prop_assert_eq!(&index.search_split(qs.code(q), &opts).hits, want);
            }
            let batch = index.search_batch(qs, &opts);
            prop_assert_eq!(batch.len(), expected.len());
            for (got, want) in batch.iter().zip(&expected) {
                prop_assert_eq!(&got.hits, want, "{:?} batch", method);
            }
        }
    }

    #[test]
    fn radius_search_returns_everything_within_the_radius(
        bits in proptest::sample::select(BITS.to_vec()),
        n in 1usize..400,
        seed in any::<u64>(),
        radius in 0u32..12,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let words = codes(seed, bits, n, true);
        let index = write_index(&dir.path().join("i.hsidx"), bits, &words);
        let qwords = queries(seed, bits, &words, 3);
        let qs = CodeMatrix::new(bits, &qwords);
        for q in 0..qs.len() {
            let want = oracle(&words, bits, qs.code(q), usize::MAX, radius);
            for method in [SearchMethod::Linear, SearchMethod::MultiIndex] {
                let opts = SearchOptions { method, ..SearchOptions::within(radius) };
                prop_assert_eq!(&index.search(qs.code(q), &opts).hits, &want);
            }
        }
    }
}

/// Big enough for the split scan and the batch's code blocks to have several pieces, and for
/// `Auto` to choose multi-index hashing: it may spend 5% of the scan's estimated cost, and a
/// sparse neighbourhood here costs it a few microseconds against a scan of about 150.
#[test]
fn large_index_matches_the_oracle_and_the_planner_chooses_by_cost() {
    let bits = 64;
    let n = 400_000;
    let mut rng = ChaCha8Rng::seed_from_u64(SEED);
    // Uniform background plus near-duplicates (within 3 bits) of a few query codes.
    let targets: Vec<Vec<u64>> = (0..4).map(|_| random_code(&mut rng, bits)).collect();
    let mut words = codes(SEED, bits, n, false);
    for i in 0..40 {
        let flips = rng.random_range(0..4);
        let planted = perturb(&mut rng, &targets[i % 4], bits, flips);
        let at = rng.random_range(0..n);
        words[at..at + 1].copy_from_slice(&planted);
    }
    let dir = tempfile::tempdir().unwrap();
    let index = write_index(&dir.path().join("i.hsidx"), bits, &words);
    let qwords: Vec<u64> = targets.concat();
    let qs = CodeMatrix::new(bits, &qwords);

    // A sparse neighbourhood (radius 3) is proven with a few bucket probes: MIH wins.
    let sparse = SearchOptions { k: 10, radius: Some(3), method: SearchMethod::Auto };
    // The 100 nearest uniform codes lie far away: proving them would probe most buckets.
    let dense = SearchOptions { k: 100, radius: None, method: SearchMethod::Auto };
    for (opts, method) in [(sparse, SearchMethod::MultiIndex), (dense, SearchMethod::Linear)] {
        let max_d = opts.radius.unwrap_or(bits);
        for q in 0..qs.len() {
            let want = oracle(&words, bits, qs.code(q), opts.k, max_d);
            assert!(!want.is_empty());
            let got = index.search(qs.code(q), &opts);
            assert_eq!(got.hits, want);
            assert_eq!(got.method, method, "{opts:?}");
            assert_eq!(index.search_split(qs.code(q), &opts).hits, want);
            let forced = SearchOptions { method: SearchMethod::MultiIndex, ..opts };
            assert_eq!(index.search(qs.code(q), &forced).hits, want);
            let linear = SearchOptions { method: SearchMethod::Linear, ..opts };
            assert_eq!(index.search(qs.code(q), &linear).hits, want);
        }
        for (q, got) in index.search_batch(qs, &opts).into_iter().enumerate() {
            assert_eq!(got.hits, oracle(&words, bits, qs.code(q), opts.k, max_d));
        }
    }
}

/// Short codes (scanned from narrow lanes) and long ones, on an index big enough for several scan
/// blocks, a split over three threads and many query blocks.
#[test]
fn every_scan_path_matches_the_oracle_on_a_larger_index() {
    let pool = rayon::ThreadPoolBuilder::new().num_threads(3).build().unwrap();
    for bits in [8, 16, 20, 32, 128] {
        let words = codes(SEED, bits, 13_000, true);
        let dir = tempfile::tempdir().unwrap();
        let index = write_index(&dir.path().join("i.hsidx"), bits, &words);
        let qwords = queries(SEED, bits, &words, 100);
        let qs = CodeMatrix::new(bits, &qwords);
        for (k, radius) in [(7, None), (40, Some(bits / 4))] {
            let opts = SearchOptions { k, radius, method: SearchMethod::Linear };
            let want: Vec<_> =
                (0..qs.len()).map(|q| oracle(&words, bits, qs.code(q), k, radius.unwrap_or(bits))).collect();
            let batch = pool.install(|| index.search_batch(qs, &opts));
            assert_eq!(batch.len(), qs.len());
            for (q, want) in want.iter().enumerate() {
                assert_eq!(&batch[q].hits, want, "{bits} bits, batch, query {q}");
                assert_eq!(&index.search(qs.code(q), &opts).hits, want, "{bits} bits, single, query {q}");
                let split = pool.install(|| index.search_split(qs.code(q), &opts));
                assert_eq!(&split.hits, want, "{bits} bits, split, query {q}");
            }
        }
    }
}

/// Crowded buckets: every code is one of two values, so the uniform-occupancy estimate looks
/// cheap but the query's bucket holds half the index. `Auto` charges the real bucket sizes, gives
/// up on multi-index hashing and scans; forcing MIH still gives the exact answer.
#[test]
fn auto_scans_when_real_buckets_are_crowded() {
    let bits = 64;
    let words: Vec<u64> = (0..60_000u64).map(|i| if i % 2 == 0 { 0x0123_4567_89ab_cdef } else { !0 }).collect();
    let dir = tempfile::tempdir().unwrap();
    let index = write_index(&dir.path().join("i.hsidx"), bits, &words);
    let query = [0x0123_4567_89ab_cdef_u64 ^ 1];
    for method in [SearchMethod::Auto, SearchMethod::MultiIndex] {
        let opts = SearchOptions { k: 10, radius: None, method };
        let got = index.search(&query, &opts);
        assert_eq!(got.hits, oracle(&words, bits, &query, 10, bits));
        let expected = if method == SearchMethod::Auto { SearchMethod::Linear } else { SearchMethod::MultiIndex };
        assert_eq!(got.method, expected);
    }
}
