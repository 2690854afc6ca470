//! Criterion benchmarks, one group per concern, fixed seeds: open, single-query scan, batch scan,
//! multi-index hashing. `cargo bench -p hashsrv-index --bench search`.

use std::path::Path;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use hashsrv_index::code::{last_word_mask, words_for_bits};
use hashsrv_index::{CodeIndex, CodeMatrix, IndexMetadata, IndexWriter, SearchMethod, SearchOptions};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const SEED: u64 = 42;
const N: usize = 1_000_000;

fn random_codes(rng: &mut ChaCha8Rng, bits: u32, n: usize) -> Vec<u64> {
    let wpc = words_for_bits(bits);
    let mut words: Vec<u64> = (0..n * wpc).map(|_| rng.random()).collect();
    for code in words.chunks_exact_mut(wpc) {
        code[wpc - 1] &= last_word_mask(bits);
    }
    words
}

fn write(path: &Path, bits: u32, words: &[u64]) -> CodeIndex {
    let mut writer = IndexWriter::create(path, bits, IndexMetadata::default()).unwrap();
    for (i, code) in words.chunks_exact(words_for_bits(bits)).enumerate() {
        writer.push(code, (i % 10) as u32, i as u64, "").unwrap();
    }
    writer.finish().unwrap();
    CodeIndex::open(path).unwrap()
}

fn open(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("open.hsidx");
    let mut rng = ChaCha8Rng::seed_from_u64(SEED);
    write(&path, 64, &random_codes(&mut rng, 64, N));
    c.bench_function("open/64bit_1M", |b| b.iter(|| CodeIndex::open(&path).unwrap()));
}

fn scan(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let mut group = c.benchmark_group("scan");
    group.throughput(Throughput::Elements(N as u64));
    for bits in [16u32, 32, 64, 128] {
        let mut rng = ChaCha8Rng::seed_from_u64(SEED);
        let index = write(&dir.path().join(format!("{bits}.hsidx")), bits, &random_codes(&mut rng, bits, N));
        let query = random_codes(&mut rng, bits, 1);
        for k in [10usize, 100] {
            let opts = SearchOptions { k, radius: None, method: SearchMethod::Linear };
            group.bench_function(BenchmarkId::new(format!("{bits}bit_k{k}"), N), |b| {
                b.iter(|| index.search(&query, &opts))
            });
            group.bench_function(BenchmarkId::new(format!("{bits}bit_k{k}_split"), N), |b| {
                b.iter(|| index.search_split(&query, &opts))
            });
        }
    }
    group.finish();
}

fn batch_scan(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let mut group = c.benchmark_group("batch_scan");
    group.sample_size(10);
    let queries = 1000;
    group.throughput(Throughput::Elements((N * queries) as u64));
    for bits in [16u32, 64] {
        let mut rng = ChaCha8Rng::seed_from_u64(SEED);
        let index = write(&dir.path().join(format!("{bits}.hsidx")), bits, &random_codes(&mut rng, bits, N));
        let qwords = random_codes(&mut rng, bits, queries);
        let qs = CodeMatrix::new(bits, &qwords);
        let opts = SearchOptions { k: 10, radius: None, method: SearchMethod::Linear };
        group.bench_function(BenchmarkId::new(format!("{bits}bit_k10_1000q"), N), |b| {
            b.iter(|| index.search_batch(qs, &opts))
        });
    }
    group.finish();
}

/// Uniform background plus planted near-duplicates (within 3 bits) of the query.
fn mih(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let bits = 64;
    let mut rng = ChaCha8Rng::seed_from_u64(SEED);
    let mut words = random_codes(&mut rng, bits, N);
    let query: u64 = rng.random();
    for _ in 0..20 {
        let mut planted = query;
        for _ in 0..rng.random_range(0..=3) {
            planted ^= 1u64 << rng.random_range(0..64);
        }
        let at = rng.random_range(0..N);
        words[at] = planted;
    }
    let index = write(&dir.path().join("mih.hsidx"), bits, &words);
    assert!(index.prepare_multi_index());
    let mut group = c.benchmark_group("mih");
    for method in [SearchMethod::MultiIndex, SearchMethod::Linear, SearchMethod::Auto] {
        let opts = SearchOptions { k: 10, radius: Some(3), method };
        group.bench_function(BenchmarkId::new(format!("64bit_r3_k10_{method:?}"), N), |b| {
            b.iter(|| index.search(&[query], &opts))
        });
    }
    group.finish();
}

criterion_group!(benches, open, scan, batch_scan, mih);
criterion_main!(benches);
