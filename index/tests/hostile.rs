//! No bytes make `open` or a search on what it opened panic: random, truncated and mutated files,
//! with and without a re-sealed header checksum (so mutations reach the deeper checks).

mod common;

use hashsrv_index::format::HEADER_LEN;
use hashsrv_index::{CodeIndex, CodeMatrix, SearchMethod, SearchOptions};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed};

const SEED: u64 = 0xbad_f11e;

fn config() -> Config {
    eprintln!("proptest seed: {SEED:#x}");
    Config { cases: 400, rng_seed: RngSeed::Fixed(SEED), failure_persistence: None, ..Config::default() }
}

/// A valid index file of `n` items of `bits` bits.
fn valid(bits: u32, n: usize, seed: u64) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v.hsidx");
    common::write_index(&path, bits, &common::codes(seed, bits, n, seed.is_multiple_of(2)));
    std::fs::read(path).unwrap()
}

/// Everything a user of an opened index may call.
fn exercise(bytes: &[u8]) {
    let Ok(index) = CodeIndex::from_bytes(bytes) else { return };
    let _ = index.verify();
    let wpc = index.codes().words_per_code();
    for i in 0..index.len().min(50) {
        let _ = (index.path(i), index.id(i), index.labels()[i]);
    }
    let _ = (index.metadata(), index.class_counts(), index.bit_balance());
    let queries: Vec<u64> = (0..2 * wpc as u64).map(|w| w.wrapping_mul(0x9e37_79b9_7f4a_7c15)).collect();
    for method in [SearchMethod::Linear, SearchMethod::MultiIndex, SearchMethod::Auto] {
        let opts = SearchOptions { k: 5, radius: Some(9), method };
        let hits = index.search(&queries[..wpc], &opts).hits;
        assert!(hits.iter().all(|h| h.position < index.len() && h.distance <= 9));
        let _ = index.search_batch(CodeMatrix::new(index.bits(), &queries), &opts);
    }
    let _ = index.bucket_occupancy();
}

fn reseal(bytes: &mut [u8]) {
    if bytes.len() >= HEADER_LEN {
        let crc = crc32fast::hash(&bytes[..HEADER_LEN - 4]);
        bytes[HEADER_LEN - 4..HEADER_LEN].copy_from_slice(&crc.to_le_bytes());
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn random_bytes_never_panic(mut bytes in proptest::collection::vec(any::<u8>(), 0..1200), magic in any::<bool>()) {
        if magic && bytes.len() >= 8 {
            bytes[..8].copy_from_slice(b"HSIDX\0\r\n");
            reseal(&mut bytes);
        }
        exercise(&bytes);
    }

    #[test]
    fn mutated_and_truncated_files_never_panic(
        bits in proptest::sample::select(vec![8u32, 32, 48, 64, 100, 128]),
        n in 0usize..40,
        seed in any::<u64>(),
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u64>(), 0usize..4), 0..6),
        cut in proptest::option::of(any::<prop::sample::Index>()),
        sealed in any::<bool>(),
    ) {
        let mut bytes = valid(bits, n, seed);
        for (at, value, kind) in edits {
            // Half the integer edits land on a header field (4-byte aligned).
            let i = if kind == 0 { at.index(bytes.len().min(HEADER_LEN)) & !3 } else { at.index(bytes.len()) };
            match kind {
                // A small or huge little-endian integer over whatever field is there.
                0 | 1 => {
                    let v = if kind == 0 { value % 300 } else { value };
                    let end = (i + 8).min(bytes.len());
                    bytes[i..end].copy_from_slice(&v.to_le_bytes()[..end - i]);
                }
                2 => bytes[i] ^= 1 << (value % 8),
                _ => bytes[i] = value as u8,
            }
        }
        if let Some(cut) = cut {
            bytes.truncate(cut.index(bytes.len() + 1));
        }
        if sealed {
            reseal(&mut bytes);
        }
        exercise(&bytes);
    }
}
