//! Scan kernels: one query against a block of codes, feeding a [`TopK`], compiled several times
//! for different instruction sets and chosen at run time, so a portable build still uses AVX-512
//! VPOPCNTDQ or AVX2 where the CPU has them (no `-C target-cpu=native` needed).
//!
//! Every variant runs the same body: the block's distances and their minimum (LLVM vectorises
//! the popcounts with `vpopcntq` under AVX-512 and with the nibble-lookup `vpshufb` method under
//! AVX2), then, only when the minimum is below the top-k threshold, a search for the hits (whose
//! below-threshold masks the AVX-512 variant builds with explicit compares). Both steps are
//! compiled under the variant's features: outside them, even the minimum of a piece of
//! distances falls back to SSE2 emulation. The word body is specialised for 1 and 2 words per
//! code (up to 128 bits), where the per-code loop over words would cost more than the popcounts.
//!
//! Codes of at most 32 bits are scanned from narrow lanes (`Lane`: one code per `u16` or `u32`),
//! where a 256-bit vector holds 16 or 8 codes instead of 4 padded words.

use std::sync::OnceLock;

use crate::search::TopK;

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
            // Every feature the variant's functions enable, so none runs where one is missing.
            if is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512vl")
                && is_x86_feature_detected!("avx512vpopcntdq")
                && is_x86_feature_detected!("avx512bitalg")
            {
                kernels.push(Kernel::Avx512);
            }
        }
        kernels
    }

    /// Scans `codes` (`out.len()` codes of `query.len()` words; code `j` is position
    /// `first + j`) for `query`, feeding `top` every code below its threshold. `out` is scratch.
    #[inline]
    pub(crate) fn scan_words(self, query: &[u64], codes: &[u64], out: &mut [u32], first: usize, top: &mut TopK) {
        debug_assert_eq!(codes.len(), out.len() * query.len());
        match self {
            Kernel::Portable => scan_words::<false>(query, codes, out, first, top),
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `Kernel::Popcnt` exists only where `available` detected every feature
            // `scan_words_popcnt` enables.
            Kernel::Popcnt => unsafe { scan_words_popcnt(query, codes, out, first, top) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `Kernel::Avx2` exists only where `available` detected every feature
            // `scan_words_avx2` enables.
            Kernel::Avx2 => unsafe { scan_words_avx2(query, codes, out, first, top) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `Kernel::Avx512` exists only where `available` detected every feature
            // `scan_words_avx512` enables.
            Kernel::Avx512 => unsafe { scan_words_avx512(query, codes, out, first, top) },
        }
    }

    /// [`scan_words`](Self::scan_words) for codes in narrow lanes.
    #[inline]
    pub(crate) fn scan_lanes<L: Lane>(self, query: L, codes: &[L], out: &mut [L], first: usize, top: &mut TopK) {
        debug_assert_eq!(codes.len(), out.len());
        match self {
            Kernel::Portable => scan_lanes::<L, false>(query, codes, out, first, top),
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `Kernel::Popcnt` exists only where `available` detected every feature
            // `scan_lanes_popcnt` enables.
            Kernel::Popcnt => unsafe { scan_lanes_popcnt(query, codes, out, first, top) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `Kernel::Avx2` exists only where `available` detected every feature
            // `scan_lanes_avx2` enables.
            Kernel::Avx2 => unsafe { scan_lanes_avx2(query, codes, out, first, top) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `Kernel::Avx512` exists only where `available` detected every feature
            // `scan_lanes_avx512` enables.
            Kernel::Avx512 => unsafe { scan_lanes_avx512(query, codes, out, first, top) },
        }
    }
}

/// One code of at most 32 bits in a narrow integer, its bits in the low end.
pub(crate) trait Lane:
    Copy + Ord + Send + Sync + Into<u32> + TryFrom<u32> + std::ops::BitXor<Output = Self>
{
    const MAX: Self;
    /// The popcount, in the lane's own width so that a vector of lanes stays one vector.
    fn ones(self) -> Self;
    /// Bit `j` set where `piece[j] < t`, with AVX-512 compares.
    ///
    /// # Safety
    /// The CPU must have AVX-512 F and BW.
    #[cfg(target_arch = "x86_64")]
    unsafe fn below_avx512(piece: &[Self; PIECE], t: Self) -> u64;
}

impl Lane for u16 {
    const MAX: u16 = u16::MAX;
    #[inline(always)]
    fn ones(self) -> u16 {
        self.count_ones() as u16
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn below_avx512(piece: &[u16; PIECE], t: u16) -> u64 {
        // SAFETY: the caller guarantees the features.
        unsafe { below_u16_avx512(piece, t) }
    }
}

impl Lane for u32 {
    const MAX: u32 = u32::MAX;
    #[inline(always)]
    fn ones(self) -> u32 {
        self.count_ones()
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn below_avx512(piece: &[u32; PIECE], t: u32) -> u64 {
        // SAFETY: the caller guarantees the features.
        unsafe { below_u32_avx512(piece, t) }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "popcnt")]
fn scan_words_popcnt(query: &[u64], codes: &[u64], out: &mut [u32], first: usize, top: &mut TopK) {
    scan_words::<false>(query, codes, out, first, top)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,popcnt")]
fn scan_words_avx2(query: &[u64], codes: &[u64], out: &mut [u32], first: usize, top: &mut TopK) {
    scan_words::<false>(query, codes, out, first, top)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vpopcntdq,avx512bitalg,popcnt")]
fn scan_words_avx512(query: &[u64], codes: &[u64], out: &mut [u32], first: usize, top: &mut TopK) {
    scan_words::<true>(query, codes, out, first, top)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "popcnt")]
fn scan_lanes_popcnt<L: Lane>(query: L, codes: &[L], out: &mut [L], first: usize, top: &mut TopK) {
    scan_lanes::<L, false>(query, codes, out, first, top)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,popcnt")]
fn scan_lanes_avx2<L: Lane>(query: L, codes: &[L], out: &mut [L], first: usize, top: &mut TopK) {
    scan_lanes::<L, false>(query, codes, out, first, top)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vpopcntdq,avx512bitalg,popcnt")]
fn scan_lanes_avx512<L: Lane>(query: L, codes: &[L], out: &mut [L], first: usize, top: &mut TopK) {
    scan_lanes::<L, true>(query, codes, out, first, top)
}

/// `AVX512`: compiled inside the AVX-512 variant, so it may use AVX-512 intrinsics.
#[inline(always)]
fn scan_words<const AVX512: bool>(query: &[u64], codes: &[u64], out: &mut [u32], first: usize, top: &mut TopK) {
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
    if min < top.threshold() {
        push_hits::<_, AVX512>(out, first, top);
    }
}

#[inline(always)]
fn scan_lanes<L: Lane, const AVX512: bool>(query: L, codes: &[L], out: &mut [L], first: usize, top: &mut TopK) {
    let mut min = L::MAX;
    for (o, &c) in out.iter_mut().zip(codes) {
        let d = (c ^ query).ones();
        *o = d;
        min = min.min(d);
    }
    if min.into() < top.threshold() {
        push_hits::<_, AVX512>(out, first, top);
    }
}

/// Feeds `top` the codes whose distance in `out` is below its threshold. Once the threshold is
/// tight a block holds few of them, so each piece of 64 is first reduced to a bit mask of its
/// distances below the threshold, and only the set bits are visited; each is checked again,
/// since every push may lower the threshold. All the masks are built before any is visited, so
/// that finding the piece that holds a hit costs no branch per piece: which piece it is is
/// random, and a branch per piece was mispredicted about once a block.
#[inline(always)]
fn push_hits<D: Lane, const AVX512: bool>(out: &[D], first: usize, top: &mut TopK) {
    for (g, group) in out.chunks(MAX_PIECES * PIECE).enumerate() {
        push_group_hits::<D, AVX512>(group, first + g * MAX_PIECES * PIECE, top);
    }
}

/// [`push_hits`] for up to `MAX_PIECES` pieces.
#[inline(always)]
fn push_group_hits<D: Lane, const AVX512: bool>(out: &[D], first: usize, top: &mut TopK) {
    let start_threshold = top.threshold();
    let mut masks = [0u64; MAX_PIECES];
    let mut pieces = 0u32;
    for (p, (piece, mask)) in out.chunks(PIECE).zip(&mut masks).enumerate() {
        *mask = below::<D, AVX512>(piece, start_threshold);
        pieces |= u32::from(*mask != 0) << p;
    }
    while pieces != 0 {
        let p = pieces.trailing_zeros() as usize;
        pieces &= pieces - 1;
        let piece = &out[p * PIECE..(p * PIECE + PIECE).min(out.len())];
        // Pushes may have tightened the threshold since the masks were built (they do in a
        // scan's first blocks, where most distances are below it): visit only the survivors.
        let threshold = top.threshold();
        let mut hits = if threshold < start_threshold { below::<D, AVX512>(piece, threshold) } else { masks[p] };
        while hits != 0 {
            let j = hits.trailing_zeros() as usize;
            hits &= hits - 1;
            let d = piece[j].into();
            if d < top.threshold() {
                top.push_in_order(d, first + p * PIECE + j);
            }
        }
    }
}

/// Bit `j` set where `piece[j] < threshold` (a threshold beyond the lane's range admits every
/// distance the lane can hold).
#[inline(always)]
fn below<D: Lane, const AVX512: bool>(piece: &[D], threshold: u32) -> u64 {
    let t = D::try_from(threshold).unwrap_or(D::MAX);
    match piece.try_into() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `AVX512` is true only in the AVX-512 variant, which `Kernel::available` hands
        // out only where the CPU has AVX-512 F and BW.
        Ok(whole) if AVX512 => unsafe { D::below_avx512(whole, t) },
        _ => piece.iter().enumerate().fold(0u64, |mask, (j, &d)| mask | (u64::from(d < t) << j)),
    }
}

/// Pieces whose masks [`push_group_hits`] builds at once (the scan's blocks hold at most 1,024
/// distances).
const MAX_PIECES: usize = 16;

/// Distances per bit mask in [`push_hits`].
const PIECE: usize = 64;

/// The below-threshold mask of a whole piece with AVX-512 compares: LLVM turns the portable fold
/// into 128-bit compares and a tree of ORs, which made `push_hits` about 40% of a k = 100 scan of
/// 16-bit codes.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
fn below_u16_avx512(piece: &[u16; PIECE], t: u16) -> u64 {
    use std::arch::x86_64::*;
    let t = _mm512_set1_epi16(t as i16);
    let p = piece.as_ptr().cast::<__m512i>();
    // SAFETY: the two loads read the piece's 2 x 32 lanes (unaligned loads).
    let (lo, hi) = unsafe { (_mm512_loadu_si512(p), _mm512_loadu_si512(p.add(1))) };
    u64::from(_mm512_cmplt_epu16_mask(lo, t)) | (u64::from(_mm512_cmplt_epu16_mask(hi, t)) << 32)
}

#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f")]
fn below_u32_avx512(piece: &[u32; PIECE], t: u32) -> u64 {
    use std::arch::x86_64::*;
    let t = _mm512_set1_epi32(t as i32);
    let p = piece.as_ptr().cast::<__m512i>();
    (0..4).fold(0u64, |mask, i| {
        // SAFETY: vector `i` of the piece's 4 x 16 lanes (an unaligned load).
        let v = unsafe { _mm512_loadu_si512(p.add(i)) };
        mask | (u64::from(_mm512_cmplt_epu32_mask(v, t)) << (16 * i))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// Every hit of a scan that keeps everything: `(position, distance)` in position order.
    fn all_hits(scan: impl FnOnce(&mut TopK), max_distance: u32) -> Vec<(usize, u32)> {
        let mut top = TopK::new(usize::MAX, max_distance);
        scan(&mut top);
        let mut hits: Vec<_> = top.into_hits().into_iter().map(|h| (h.position, h.distance)).collect();
        hits.sort_unstable();
        hits
    }

    #[test]
    fn every_available_lane_kernel_finds_the_reference_distances() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(8);
        for n in [0usize, 1, 7, 64, 257, 1025] {
            let (q16, q32): (u16, u32) = (rng.random(), rng.random());
            let c16: Vec<u16> = (0..n).map(|_| rng.random()).collect();
            let c32: Vec<u32> = (0..n).map(|_| rng.random()).collect();
            let want16: Vec<_> = c16.iter().enumerate().map(|(j, c)| (5 + j, (c ^ q16).count_ones())).collect();
            let want32: Vec<_> = c32.iter().enumerate().map(|(j, c)| (5 + j, (c ^ q32).count_ones())).collect();
            for kernel in Kernel::available() {
                let got16 = all_hits(|top| kernel.scan_lanes(q16, &c16, &mut vec![0; n], 5, top), 16);
                assert_eq!(got16, want16, "{kernel:?}, u16, {n} codes");
                let got32 = all_hits(|top| kernel.scan_lanes(q32, &c32, &mut vec![0; n], 5, top), 32);
                assert_eq!(got32, want32, "{kernel:?}, u32, {n} codes");
            }
        }
    }

    /// A tight threshold exercises the below-threshold masks (all-hits scans set every bit).
    #[test]
    fn every_available_kernel_keeps_the_same_top_k() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
        let top = |k: usize, bits: u32, scan: &dyn Fn(&mut TopK)| {
            let mut top = TopK::new(k, bits);
            scan(&mut top);
            top.into_hits()
        };
        for n in [64usize, 200, 1024] {
            let (q16, q32, q64): (u16, u32, u64) = (rng.random(), rng.random(), rng.random());
            let c16: Vec<u16> = (0..n).map(|_| rng.random()).collect();
            let c32: Vec<u32> = (0..n).map(|_| rng.random()).collect();
            let c64: Vec<u64> = (0..n).map(|_| rng.random()).collect();
            for k in [1usize, 5, 40] {
                let want16 = top(k, 16, &|t| Kernel::Portable.scan_lanes(q16, &c16, &mut vec![0; n], 0, t));
                let want32 = top(k, 32, &|t| Kernel::Portable.scan_lanes(q32, &c32, &mut vec![0; n], 0, t));
                let want64 = top(k, 64, &|t| Kernel::Portable.scan_words(&[q64], &c64, &mut vec![0; n], 0, t));
                for kernel in Kernel::available() {
                    let got16 = top(k, 16, &|t| kernel.scan_lanes(q16, &c16, &mut vec![0; n], 0, t));
                    assert_eq!(got16, want16, "{kernel:?}, u16, {n} codes, k {k}");
                    let got32 = top(k, 32, &|t| kernel.scan_lanes(q32, &c32, &mut vec![0; n], 0, t));
                    assert_eq!(got32, want32, "{kernel:?}, u32, {n} codes, k {k}");
                    let got64 = top(k, 64, &|t| kernel.scan_words(&[q64], &c64, &mut vec![0; n], 0, t));
                    assert_eq!(got64, want64, "{kernel:?}, 1 word, {n} codes, k {k}");
                }
            }
        }
    }

    #[test]
    fn every_available_kernel_finds_the_reference_distances() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        for words in [1usize, 2, 3, 4, 16] {
            for n in [0usize, 1, 7, 64, 257] {
                let query: Vec<u64> = (0..words).map(|_| rng.random()).collect();
                let codes: Vec<u64> = (0..n * words).map(|_| rng.random()).collect();
                let want: Vec<_> = codes
                    .chunks_exact(words)
                    .enumerate()
                    .map(|(j, c)| (9 + j, crate::hamming::distance(&query, c)))
                    .collect();
                for kernel in Kernel::available() {
                    let bits = 64 * words as u32;
                    let got = all_hits(|top| kernel.scan_words(&query, &codes, &mut vec![0; n], 9, top), bits);
                    assert_eq!(got, want, "{kernel:?}, {words} words, {n} codes");
                }
            }
        }
    }
}
