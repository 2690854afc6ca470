//! Distance kernels: the Hamming distances of one query to a block of codes, compiled several
//! times for different instruction sets and chosen at run time, so a portable build still uses
//! AVX-512 VPOPCNTDQ or AVX2 where the CPU has them (no `-C target-cpu=native` needed).
//!
//! Every variant runs the same body (`block_distances`); LLVM vectorises its popcounts with
//! `vpopcntq` under AVX-512 VPOPCNTDQ and with the nibble-lookup (`vpshufb`) method under AVX2.
//! The body is specialised for 1 and 2 words per code (16..=128 bits), where the per-code loop
//! over words would otherwise cost more than the popcounts.

use std::sync::OnceLock;

/// One compiled variant of the distance kernel. Only `detect`/`available` hand out variants,
/// and only those the running CPU supports, which is what makes calling them sound.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kernel {
    Portable,
    #[cfg(target_arch = "x86_64")]
    Popcnt,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

impl Kernel {
    /// The fastest variant this CPU supports (detected once).
    pub(crate) fn detect() -> Kernel {
        static DETECTED: OnceLock<Kernel> = OnceLock::new();
        *DETECTED.get_or_init(|| *Self::available().last().unwrap_or(&Kernel::Portable))
    }

    /// Every variant this CPU supports, slowest first.
    pub(crate) fn available() -> Vec<Kernel> {
        #[allow(unused_mut)]
        let mut kernels = vec![Kernel::Portable];
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("popcnt") {
                kernels.push(Kernel::Popcnt);
            }
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("popcnt") {
                kernels.push(Kernel::Avx2);
            }
            if is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512vpopcntdq") {
                kernels.push(Kernel::Avx512);
            }
        }
        kernels
    }

    /// Writes the distance from `query` to each code of `codes` (`out.len()` codes of
    /// `query.len()` words) into `out` and returns the smallest (`u32::MAX` if `out` is empty).
    #[inline]
    pub(crate) fn distances(self, query: &[u64], codes: &[u64], out: &mut [u32]) -> u32 {
        debug_assert_eq!(codes.len(), out.len() * query.len());
        match self {
            Kernel::Portable => block_distances(query, codes, out),
            // SAFETY: `Kernel::Popcnt` is only created by `available` after detecting `popcnt`.
            #[cfg(target_arch = "x86_64")]
            Kernel::Popcnt => unsafe { distances_popcnt(query, codes, out) },
            // SAFETY: `Kernel::Avx2` is only created by `available` after detecting `avx2` and `popcnt`.
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => unsafe { distances_avx2(query, codes, out) },
            // SAFETY: `Kernel::Avx512` is only created by `available` after detecting `avx512f` and
            // `avx512vpopcntdq`.
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 => unsafe { distances_avx512(query, codes, out) },
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "popcnt")]
fn distances_popcnt(query: &[u64], codes: &[u64], out: &mut [u32]) -> u32 {
    block_distances(query, codes, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,popcnt")]
fn distances_avx2(query: &[u64], codes: &[u64], out: &mut [u32]) -> u32 {
    block_distances(query, codes, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vpopcntdq,popcnt")]
fn distances_avx512(query: &[u64], codes: &[u64], out: &mut [u32]) -> u32 {
    block_distances(query, codes, out)
}

#[inline(always)]
fn block_distances(query: &[u64], codes: &[u64], out: &mut [u32]) -> u32 {
    let mut min = u32::MAX;
    match *query {
        [q0] => {
            for (o, &c) in out.iter_mut().zip(codes) {
                let d = (c ^ q0).count_ones();
                *o = d;
                min = min.min(d);
            }
        }
        [q0, q1] => {
            for (o, c) in out.iter_mut().zip(codes.chunks_exact(2)) {
                let d = (c[0] ^ q0).count_ones() + (c[1] ^ q1).count_ones();
                *o = d;
                min = min.min(d);
            }
        }
        _ => {
            for (o, c) in out.iter_mut().zip(codes.chunks_exact(query.len())) {
                let d = crate::hamming::distance(query, c);
                *o = d;
                min = min.min(d);
            }
        }
    }
    min
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn every_available_kernel_matches_the_reference_distance() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        for words in [1usize, 2, 3, 4, 16] {
            for n in [0usize, 1, 7, 64, 257] {
                let query: Vec<u64> = (0..words).map(|_| rng.random()).collect();
                let codes: Vec<u64> = (0..n * words).map(|_| rng.random()).collect();
                let expected: Vec<u32> =
                    codes.chunks_exact(words).map(|c| crate::hamming::distance(&query, c)).collect();
                for kernel in Kernel::available() {
                    let mut out = vec![0u32; n];
                    let min = kernel.distances(&query, &codes, &mut out);
                    assert_eq!(out, expected, "{kernel:?}, {words} words, {n} codes");
                    assert_eq!(min, expected.iter().copied().min().unwrap_or(u32::MAX));
                }
            }
        }
    }
}
