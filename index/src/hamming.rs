//! Hamming distance: the one definition every search and metric in the crate uses.

/// Hamming distance between two codes given as equal-length word slices.
#[inline]
pub fn distance(a: &[u64], b: &[u64]) -> u32 {
    debug_assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x ^ y).count_ones()).sum()
}
