//! The P x K batch sampler: every batch holds `P` distinct classes with `K` images each, so every
//! anchor has positives and negatives in its batch (the triplet loss needs both).
//!
//! Batches are a pure function of `(seed, epoch)`: a resumed run sees the same batches as an
//! uninterrupted one. Within an epoch each class's images are drawn from a shuffled queue that
//! refills when it runs short, so an epoch visits the images of a class evenly rather than at
//! random and a batch never repeats an image of a class with at least `K`; a class with fewer than `K` images is drawn with replacement. An epoch has
//! `max(1, round(len / (P x K)))` batches: about one pass over the data.

use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// A sampler that cannot be built.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SamplerError {
    #[error("the batch needs at least 1 class and 1 image per class (got P={p}, K={k})")]
    Empty { p: usize, k: usize },
    #[error("the triplet loss needs at least 2 classes in a batch, but the training split has {classes} class(es)")]
    TooFewClasses { classes: usize },
    #[error("the training split is empty")]
    NoItems,
}

/// P classes x K images per batch.
#[derive(Clone, Debug)]
pub struct PkSampler {
    /// Item indices of each class that has any (classes without items are left out).
    classes: Vec<Vec<usize>>,
    p: usize,
    k: usize,
    seed: u64,
    len: usize,
}

impl PkSampler {
    /// A sampler over items with these labels. When there are fewer than `p` classes, every
    /// batch holds all of them (smaller batches).
    pub fn new(labels: &[u32], p: usize, k: usize, seed: u64) -> Result<Self, SamplerError> {
        if p == 0 || k == 0 {
            return Err(SamplerError::Empty { p, k });
        }
        if labels.is_empty() {
            return Err(SamplerError::NoItems);
        }
        let classes_len = labels.iter().max().map_or(0, |&m| m as usize + 1);
        let mut classes = vec![Vec::new(); classes_len];
        for (i, &label) in labels.iter().enumerate() {
            classes[label as usize].push(i);
        }
        classes.retain(|members| !members.is_empty());
        if classes.len() < 2 {
            return Err(SamplerError::TooFewClasses { classes: classes.len() });
        }
        Ok(Self { p: p.min(classes.len()), classes, k, seed, len: labels.len() })
    }

    /// Classes per batch (`P`, capped at the number of classes).
    pub fn classes_per_batch(&self) -> usize {
        self.p
    }

    /// Images per class in a batch (`K`).
    pub fn images_per_class(&self) -> usize {
        self.k
    }

    /// Images per batch.
    pub fn batch_size(&self) -> usize {
        self.p * self.k
    }

    /// Batches in one epoch: about one pass over the items.
    pub fn batches_per_epoch(&self) -> usize {
        (self.len as f64 / self.batch_size() as f64).round().max(1.0) as usize
    }

    /// The batches of `epoch` (item indices, grouped by class within a batch).
    pub fn epoch(&self, epoch: u64) -> Vec<Vec<usize>> {
        // Mixing the epoch into the seed (odd multiplier: distinct epochs give distinct streams).
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let mut queues: Vec<Vec<usize>> = vec![Vec::new(); self.classes.len()];
        let class_ids: Vec<usize> = (0..self.classes.len()).collect();
        (0..self.batches_per_epoch())
            .map(|_| {
                let mut batch = Vec::with_capacity(self.batch_size());
                for &class in class_ids.choose_multiple(&mut rng, self.p) {
                    let members = &self.classes[class];
                    if members.len() < self.k {
                        batch.extend((0..self.k).map(|_| members[rng.random_range(0..members.len())]));
                        continue;
                    }
                    let queue = &mut queues[class];
                    if queue.len() < self.k {
                        refill(queue, members, &mut rng);
                    }
                    batch.extend(queue.drain(queue.len() - self.k..));
                }
                batch
            })
            .collect()
    }
}

/// Puts a fresh shuffle of `members` under what is left of `queue` (items are taken from the
/// end). The fresh copies of the leftovers go to the bottom, so the next draw of `K` never
/// repeats an image (the class has at least `K`).
fn refill(queue: &mut Vec<usize>, members: &[usize], rng: &mut ChaCha8Rng) {
    let mut fresh = members.to_vec();
    fresh.shuffle(rng);
    let left: std::collections::HashSet<usize> = queue.iter().copied().collect();
    fresh.sort_by_key(|i| !left.contains(i));
    fresh.append(queue);
    *queue = fresh;
}
