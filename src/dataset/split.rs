//! Seeded stratified selection: the validation hold-out, the folder layout's train/test split
//! and the `--limit-*` subsets all go through here, so every split of the project is carved the
//! same way.
//!
//! Quotas are allocated per class in proportion to the class sizes (largest remainder, ties to
//! the lower label), then each class's members are shuffled with a ChaCha8 generator seeded by
//! `seed` and the first `quota` are taken. Results are in the original order.

use std::collections::BTreeMap;

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

/// Indices (ascending) of a stratified subset of `limit` items (all items when `limit` is at
/// least their number).
pub fn stratified_subset(labels: &[u32], limit: usize, seed: u64) -> Vec<usize> {
    if limit >= labels.len() {
        return (0..labels.len()).collect();
    }
    let chosen = choose(labels, limit, seed, false);
    (0..labels.len()).filter(|&i| chosen[i]).collect()
}

/// Marks a stratified, seeded fraction of the items (`true` = held out). The total held out is
/// `round(fraction * n)`, spread over the classes in proportion to their sizes, and no class
/// loses all its items, so every class stays in the complement.
pub fn stratified_holdout(labels: &[u32], fraction: f32, seed: u64) -> Vec<bool> {
    let total = (f64::from(fraction.clamp(0.0, 1.0)) * labels.len() as f64).round() as usize;
    choose(labels, total, seed, true)
}

fn choose(labels: &[u32], total: usize, seed: u64, keep_one_per_class: bool) -> Vec<bool> {
    let mut members: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
    for (i, &label) in labels.iter().enumerate() {
        members.entry(label).or_default().push(i);
    }
    let counts: Vec<usize> = members.values().map(Vec::len).collect();
    let caps: Vec<usize> = counts.iter().map(|&c| if keep_one_per_class { c.saturating_sub(1) } else { c }).collect();
    let quotas = allocate(&counts, &caps, total);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut chosen = vec![false; labels.len()];
    for (class_members, quota) in members.into_values().zip(quotas) {
        let mut shuffled = class_members;
        shuffled.shuffle(&mut rng);
        for &i in &shuffled[..quota] {
            chosen[i] = true;
        }
    }
    chosen
}

/// Splits `total` over classes in proportion to `counts`, never above `caps`.
fn allocate(counts: &[usize], caps: &[usize], total: usize) -> Vec<usize> {
    let n: usize = counts.iter().sum();
    let total = total.min(caps.iter().sum());
    if n == 0 || total == 0 {
        return vec![0; counts.len()];
    }
    let mut quotas: Vec<usize> = counts.iter().zip(caps).map(|(&c, &cap)| (c * total / n).min(cap)).collect();
    // Hand out the rest by largest remainder; ties (and caps) resolved by class order.
    let mut order: Vec<usize> = (0..counts.len()).collect();
    order.sort_by_key(|&k| std::cmp::Reverse((counts[k] * total) % n));
    let mut given: usize = quotas.iter().sum();
    while given < total {
        let before = given;
        for &k in &order {
            if given == total {
                break;
            }
            if quotas[k] < caps[k] {
                quotas[k] += 1;
                given += 1;
            }
        }
        if given == before {
            break;
        }
    }
    quotas
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(counts: &[usize]) -> Vec<u32> {
        // Interleaved so that classes are not contiguous, like a shuffled list.
        let mut out = Vec::new();
        let mut left = counts.to_vec();
        while left.iter().any(|&c| c > 0) {
            for (label, c) in left.iter_mut().enumerate() {
                if *c > 0 {
                    out.push(label as u32);
                    *c -= 1;
                }
            }
        }
        out
    }

    fn per_class(labels: &[u32], chosen: &[bool]) -> Vec<usize> {
        let classes = labels.iter().max().map_or(0, |&m| m as usize + 1);
        let mut counts = vec![0; classes];
        for (l, c) in labels.iter().zip(chosen) {
            if *c {
                counts[*l as usize] += 1;
            }
        }
        counts
    }

    #[test]
    fn holdout_is_stratified_and_seeded() {
        let labels = labels(&[100, 50, 30, 20]);
        let held = stratified_holdout(&labels, 0.1, 7);
        assert_eq!(held.iter().filter(|&&h| h).count(), 20);
        assert_eq!(per_class(&labels, &held), vec![10, 5, 3, 2]);
        assert_eq!(held, stratified_holdout(&labels, 0.1, 7), "same seed, same split");
        assert_ne!(held, stratified_holdout(&labels, 0.1, 8), "another seed, another split");
    }

    #[test]
    fn holdout_keeps_every_class_in_the_complement() {
        let labels = labels(&[1, 2, 2, 1]);
        let held = stratified_holdout(&labels, 0.9, 0);
        let kept = held.iter().map(|h| !h).collect::<Vec<_>>();
        assert!(per_class(&labels, &kept).iter().all(|&c| c >= 1));
        assert_eq!(held.iter().filter(|&&h| h).count(), 2, "only the two classes with two items can give one");
    }

    #[test]
    fn holdout_of_zero_is_empty() {
        let labels = labels(&[5, 5]);
        assert!(stratified_holdout(&labels, 0.0, 0).iter().all(|h| !h));
    }

    #[test]
    fn subset_has_the_limit_and_proportions_in_order() {
        let labels = labels(&[60, 30, 10]);
        let subset = stratified_subset(&labels, 10, 3);
        assert_eq!(subset.len(), 10);
        assert!(subset.windows(2).all(|w| w[0] < w[1]), "ascending original order");
        let mut chosen = vec![false; labels.len()];
        for &i in &subset {
            chosen[i] = true;
        }
        assert_eq!(per_class(&labels, &chosen), vec![6, 3, 1]);
        assert_eq!(stratified_subset(&labels, 1000, 3).len(), labels.len());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 64, rng_seed: proptest::test_runner::RngSeed::Fixed(20261128), ..Default::default() })]

        /// For any labels: the hold-out has the promised size, leaves every class in the
        /// complement, and is a function of the seed.
        #[test]
        fn holdout_invariants(labels in proptest::collection::vec(0u32..12, 0..300), fraction in 0.0f32..0.95, seed in 0u64..1000) {
            let held = stratified_holdout(&labels, fraction, seed);
            proptest::prop_assert_eq!(held.len(), labels.len());
            let mut counts = std::collections::BTreeMap::new();
            for (&l, &h) in labels.iter().zip(&held) {
                let entry = counts.entry(l).or_insert((0usize, 0usize));
                entry.0 += 1;
                entry.1 += usize::from(h);
            }
            let capacity: usize = counts.values().map(|(n, _)| n - 1).sum();
            let wanted = ((fraction as f64) * labels.len() as f64).round() as usize;
            proptest::prop_assert_eq!(held.iter().filter(|&&h| h).count(), wanted.min(capacity));
            for (n, h) in counts.values() {
                proptest::prop_assert!(h < n, "a class lost all its items");
            }
            proptest::prop_assert_eq!(held, stratified_holdout(&labels, fraction, seed));
        }

        #[test]
        fn subset_invariants(labels in proptest::collection::vec(0u32..12, 0..300), limit in 0usize..400, seed in 0u64..1000) {
            let subset = stratified_subset(&labels, limit, seed);
            proptest::prop_assert_eq!(subset.len(), limit.min(labels.len()));
            proptest::prop_assert!(subset.windows(2).all(|w| w[0] < w[1]));
        }
    }

    #[test]
    fn allocate_uses_largest_remainders() {
        // 10 over 3, 3, 4 of 10 -> exact: 3, 3, 4.
        assert_eq!(allocate(&[3, 3, 4], &[3, 3, 4], 10), vec![3, 3, 4]);
        // 2 over 3, 3, 4: 0.6, 0.6, 0.8 -> floors 0, remainders favour the last then the first.
        assert_eq!(allocate(&[3, 3, 4], &[3, 3, 4], 2), vec![1, 0, 1]);
        assert_eq!(allocate(&[2, 2], &[1, 1], 4), vec![1, 1]);
    }
}
