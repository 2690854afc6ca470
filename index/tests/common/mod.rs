//! Shared test helpers: code generators, an index builder and the brute-force oracle.
#![allow(dead_code)]

use std::path::Path;

use hashsrv_index::code::{last_word_mask, words_for_bits};
use hashsrv_index::hamming::distance;
use hashsrv_index::{CodeIndex, Hit, IndexMetadata, IndexWriter};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// A random code with zero padding.
pub fn random_code(rng: &mut impl Rng, bits: u32) -> Vec<u64> {
    let mut code: Vec<u64> = (0..words_for_bits(bits)).map(|_| rng.random()).collect();
    mask_padding(&mut code, bits);
    code
}

pub fn mask_padding(code: &mut [u64], bits: u32) {
    if let Some(last) = code.last_mut() {
        *last &= last_word_mask(bits);
    }
}

/// Flips `flips` random bits (possibly the same bit twice).
pub fn perturb(rng: &mut impl Rng, code: &[u64], bits: u32, flips: u32) -> Vec<u64> {
    let mut out = code.to_vec();
    for _ in 0..flips {
        let b = rng.random_range(0..bits);
        out[(b / 64) as usize] ^= 1u64 << (63 - b % 64);
    }
    out
}

/// `n` codes, word after word: uniform, or tie-heavy (noisy copies of a handful of centres, so
/// many items share a distance to any query).
pub fn codes(seed: u64, bits: u32, n: usize, tie_heavy: bool) -> Vec<u64> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let centres: Vec<Vec<u64>> = (0..4).map(|_| random_code(&mut rng, bits)).collect();
    (0..n)
        .flat_map(|_| {
            if tie_heavy {
                let c = &centres[rng.random_range(0..centres.len())];
                let flips = rng.random_range(0..3);
                perturb(&mut rng, c, bits, flips)
            } else {
                random_code(&mut rng, bits)
            }
        })
        .collect()
}

/// Writes an index of `words` (labels `i % 5`, ids `1000 + i`, paths `item/i`) to `path`.
pub fn write_index(path: &Path, bits: u32, words: &[u64]) -> CodeIndex {
    let mut writer = IndexWriter::create(path, bits, IndexMetadata::default()).unwrap();
    for (i, code) in words.chunks_exact(words_for_bits(bits)).enumerate() {
        writer.push(code, (i % 5) as u32, 1000 + i as u64, &format!("item/{i}")).unwrap();
    }
    writer.finish().unwrap();
    CodeIndex::open(path).unwrap()
}

/// Brute force: every item within `max_d`, sorted by (distance, position), first `k`.
pub fn oracle(words: &[u64], bits: u32, query: &[u64], k: usize, max_d: u32) -> Vec<Hit> {
    let mut hits: Vec<Hit> = words
        .chunks_exact(words_for_bits(bits))
        .enumerate()
        .map(|(position, c)| Hit { position, distance: distance(query, c) })
        .filter(|h| h.distance <= max_d)
        .collect();
    hits.sort_by_key(|h| (h.distance, h.position));
    hits.truncate(k);
    hits
}
