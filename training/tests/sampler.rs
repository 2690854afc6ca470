//! The P x K sampler: composition of batches, seeding, epoch length and small classes.

use std::collections::BTreeMap;

use hashsrv_train::sampler::{PkSampler, SamplerError};

fn labels(counts: &[usize]) -> Vec<u32> {
    counts.iter().enumerate().flat_map(|(label, &c)| std::iter::repeat_n(label as u32, c)).collect()
}

#[test]
fn batches_hold_p_distinct_classes_of_k_images() {
    let labels = labels(&[50, 40, 30, 60, 45, 55, 35, 25, 70, 90, 20, 80]);
    let sampler = PkSampler::new(&labels, 10, 8, 3).unwrap();
    assert_eq!(sampler.batch_size(), 80);
    assert_eq!(sampler.batches_per_epoch(), (600.0f64 / 80.0).round() as usize);
    let batches = sampler.epoch(0);
    assert_eq!(batches.len(), sampler.batches_per_epoch());
    for batch in &batches {
        assert_eq!(batch.len(), 80);
        let mut per_class: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
        for &i in batch {
            per_class.entry(labels[i]).or_default().push(i);
        }
        assert_eq!(per_class.len(), 10, "10 distinct classes");
        for (class, members) in &per_class {
            assert_eq!(members.len(), 8, "class {class}");
            let mut unique = members.clone();
            unique.sort_unstable();
            unique.dedup();
            assert_eq!(unique.len(), 8, "class {class} has >= 8 images: no repeats within a draw of 8");
        }
    }
}

#[test]
fn seeded_per_epoch() {
    let labels = labels(&[30, 30, 30, 30]);
    let a = PkSampler::new(&labels, 2, 4, 9).unwrap();
    let b = PkSampler::new(&labels, 2, 4, 9).unwrap();
    assert_eq!(a.epoch(0), b.epoch(0));
    assert_eq!(a.epoch(5), b.epoch(5), "an epoch is reproducible on its own (resume)");
    assert_ne!(a.epoch(0), a.epoch(1));
    assert_ne!(a.epoch(0), PkSampler::new(&labels, 2, 4, 10).unwrap().epoch(0));
}

#[test]
fn epoch_visits_images_evenly() {
    // 4 classes of 16, P=4, K=4: 4 batches; each class is drawn 16 times from its shuffled queue,
    // so every image appears exactly once.
    let labels = labels(&[16, 16, 16, 16]);
    let sampler = PkSampler::new(&labels, 4, 4, 1).unwrap();
    let mut seen: Vec<usize> = sampler.epoch(2).concat();
    seen.sort_unstable();
    assert_eq!(seen, (0..64).collect::<Vec<_>>());
}

#[test]
fn small_classes_are_sampled_with_replacement() {
    let labels = labels(&[2, 50, 50]);
    let sampler = PkSampler::new(&labels, 3, 5, 4).unwrap();
    for batch in sampler.epoch(0) {
        let small: Vec<usize> = batch.iter().copied().filter(|&i| labels[i] == 0).collect();
        assert_eq!(small.len(), 5);
        assert!(small.iter().all(|&i| i < 2));
    }
}

#[test]
fn fewer_classes_than_p_gives_all_classes() {
    let labels = labels(&[10, 10, 10]);
    let sampler = PkSampler::new(&labels, 10, 4, 0).unwrap();
    assert_eq!(sampler.classes_per_batch(), 3);
    assert_eq!(sampler.batch_size(), 12);
    assert!(sampler.epoch(0).iter().all(|b| b.len() == 12));
    // Empty label slots (class 1 absent) are skipped.
    let gappy = [0u32, 0, 2, 2];
    let sampler = PkSampler::new(&gappy, 5, 2, 0).unwrap();
    assert_eq!(sampler.classes_per_batch(), 2);
    assert!(sampler.epoch(0).iter().flatten().all(|&i| i < 4));
}

#[test]
fn refuses_what_the_loss_cannot_use() {
    assert_eq!(PkSampler::new(&[0, 0, 0], 2, 2, 0).unwrap_err(), SamplerError::TooFewClasses { classes: 1 });
    assert_eq!(PkSampler::new(&[], 2, 2, 0).unwrap_err(), SamplerError::NoItems);
    assert_eq!(PkSampler::new(&[0, 1], 0, 2, 0).unwrap_err(), SamplerError::Empty { p: 0, k: 2 });
    assert_eq!(PkSampler::new(&[0, 1], 2, 0, 0).unwrap_err(), SamplerError::Empty { p: 2, k: 0 });
    assert!(PkSampler::new(&[0, 1], 2, 2, 0).is_ok());
}
