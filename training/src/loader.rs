//! Parallel decode + preprocess with a bounded prefetch queue, so the network never waits for
//! images.
//!
//! A producer thread walks the batches in order; each batch's images are decoded and
//! preprocessed in parallel on a dedicated rayon pool, and the finished batch goes into a
//! channel holding at most `prefetch` batches (back-pressure bounds memory). Training batches
//! use [`Preprocess::train_into`] (random crop and flip) with one generator per image seeded by
//! `(seed, epoch, batch, position)`, so the pixels do not depend on thread scheduling; every
//! other pass uses [`Preprocess::eval_into`], the server's transform.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

use hashsrv::dataset::{DatasetError, Item};
use hashsrv::preprocess::{Preprocess, PreprocessError};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

/// Which transform a pass uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transform {
    /// Random crop and flip, seeded per image from `seed` and `epoch`.
    Train { seed: u64, epoch: u64 },
    /// The deterministic evaluation transform (the server's).
    Eval,
}

/// An image that could not be loaded or preprocessed.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Dataset(#[from] DatasetError),
    #[error("{path}: {source}")]
    Preprocess {
        path: String,
        #[source]
        source: PreprocessError,
    },
    #[error("batch {batch} names item {index} but the split has {len} items")]
    IndexOutOfRange { batch: usize, index: usize, len: usize },
    #[error("could not start the loader's threads: {0}")]
    Threads(String),
}

/// One preprocessed batch.
#[derive(Debug)]
pub struct Batch {
    /// Position of the batch in the pass.
    pub index: usize,
    /// `len x 3 x crop x crop` floats, CHW per image.
    pub images: Vec<f32>,
    pub labels: Vec<u32>,
    /// The items' indices in the split.
    pub items: Vec<usize>,
}

impl Batch {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
}

/// The batches of `len` items in order, `batch` at a time (the last one shorter): the
/// evaluation passes over a split.
pub fn sequential_batches(len: usize, batch: usize) -> Vec<Vec<usize>> {
    let batch = batch.max(1);
    (0..len).step_by(batch).map(|start| (start..(start + batch).min(len)).collect()).collect()
}

/// An iterator over preprocessed batches, produced ahead by background threads. Dropping it
/// stops the producer (after the batch it is working on).
#[derive(Debug)]
pub struct Loader {
    receiver: Option<Receiver<Result<Batch, LoadError>>>,
    producer: Option<JoinHandle<()>>,
}

impl Loader {
    /// Starts producing `batches` (item indices into `items`) with `threads` workers and at most
    /// `prefetch` finished batches waiting.
    pub fn spawn(
        items: Arc<[Item]>,
        batches: Vec<Vec<usize>>,
        preprocess: Preprocess,
        transform: Transform,
        threads: usize,
        prefetch: usize,
    ) -> Result<Loader, LoadError> {
        preprocess.validate().map_err(|source| LoadError::Preprocess { path: "(configuration)".into(), source })?;
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads.max(1))
            .thread_name(|i| format!("hashsrv-load-{i}"))
            .build()
            .map_err(|e| LoadError::Threads(e.to_string()))?;
        let (sender, receiver) = sync_channel(prefetch.max(1));
        let producer = std::thread::Builder::new()
            .name("hashsrv-loader".into())
            .spawn(move || produce(&pool, &items, batches, &preprocess, transform, &sender))
            .map_err(|e| LoadError::Threads(e.to_string()))?;
        Ok(Loader { receiver: Some(receiver), producer: Some(producer) })
    }
}

impl Iterator for Loader {
    type Item = Result<Batch, LoadError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.receiver.as_ref()?.recv().ok()
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        // Closing the channel makes the producer's next send fail, which ends it.
        self.receiver.take();
        if let Some(handle) = self.producer.take() {
            let _ = handle.join();
        }
    }
}

fn produce(
    pool: &rayon::ThreadPool,
    items: &[Item],
    batches: Vec<Vec<usize>>,
    preprocess: &Preprocess,
    transform: Transform,
    sender: &SyncSender<Result<Batch, LoadError>>,
) {
    for (index, indices) in batches.into_iter().enumerate() {
        let batch = pool.install(|| load_batch(items, index, indices, preprocess, transform));
        let failed = batch.is_err();
        if sender.send(batch).is_err() || failed {
            return;
        }
    }
}

fn load_batch(
    items: &[Item],
    index: usize,
    indices: Vec<usize>,
    preprocess: &Preprocess,
    transform: Transform,
) -> Result<Batch, LoadError> {
    if let Some(&bad) = indices.iter().find(|&&i| i >= items.len()) {
        return Err(LoadError::IndexOutOfRange { batch: index, index: bad, len: items.len() });
    }
    let per_image = preprocess.tensor_len();
    let mut images = vec![0f32; indices.len() * per_image];
    images.par_chunks_mut(per_image).zip(indices.par_iter()).enumerate().try_for_each(
        |(position, (out, &i))| -> Result<(), LoadError> {
            let item = &items[i];
            let image = item.load()?;
            let result = match transform {
                Transform::Eval => preprocess.eval_into(&image, out),
                Transform::Train { seed, epoch } => {
                    let mut rng = ChaCha8Rng::seed_from_u64(image_seed(seed, epoch, index, position));
                    preprocess.train_into(&image, &mut rng, out)
                }
            };
            result.map_err(|source| LoadError::Preprocess { path: item.path.clone(), source })
        },
    )?;
    let labels = indices.iter().map(|&i| items[i].label).collect();
    Ok(Batch { index, images, labels, items: indices })
}

/// A generator seed per image of a pass (SplitMix64-style mixing of the four numbers).
fn image_seed(seed: u64, epoch: u64, batch: usize, position: usize) -> u64 {
    let mut x = seed;
    for v in [epoch, batch as u64, position as u64] {
        x = (x ^ v).wrapping_add(0x9E37_79B9_7F4A_7C15);
        x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        x ^= x >> 31;
    }
    x
}

#[cfg(test)]
mod tests {
    use super::*;

    use hashsrv::dataset::{Dataset, DatasetKind, OpenOptions, Split};

    /// 50 real Fashion-MNIST images (Debian's files).
    fn items() -> Arc<[Item]> {
        let options = OpenOptions { limit_train: Some(50), seed: 3, ..OpenOptions::default() };
        let data = Dataset::open(
            DatasetKind::FashionMnist,
            std::path::Path::new("/usr/share/datasets/fashion-mnist"),
            &options,
        )
        .expect("Fashion-MNIST from dataset-fashion-mnist");
        data.split(Split::Train).into()
    }

    fn collect(loader: Loader) -> Vec<Batch> {
        loader.map(|b| b.unwrap()).collect()
    }

    #[test]
    fn eval_batches_are_the_eval_transform_in_order() {
        let items = items();
        let p = Preprocess::small(32);
        let batches = collect(
            Loader::spawn(items.clone(), sequential_batches(50, 16), p.clone(), Transform::Eval, 2, 1).unwrap(),
        );
        assert_eq!(batches.iter().map(Batch::len).collect::<Vec<_>>(), vec![16, 16, 16, 2]);
        let mut expected = vec![0f32; p.tensor_len()];
        for (b, batch) in batches.iter().enumerate() {
            assert_eq!(batch.index, b);
            for (j, &i) in batch.items.iter().enumerate() {
                assert_eq!(i, b * 16 + j);
                assert_eq!(batch.labels[j], items[i].label);
                p.eval_into(&items[i].load().unwrap(), &mut expected).unwrap();
                assert_eq!(&batch.images[j * p.tensor_len()..(j + 1) * p.tensor_len()], &expected[..], "item {i}");
            }
        }
    }

    #[test]
    fn train_batches_are_seeded_not_scheduled() {
        let items = items();
        let p = Preprocess::small(28);
        let plan = vec![vec![3, 1, 4, 1, 5], vec![9, 2, 6]];
        let run = |threads, seed, epoch| {
            collect(
                Loader::spawn(items.clone(), plan.clone(), p.clone(), Transform::Train { seed, epoch }, threads, 1)
                    .unwrap(),
            )
            .into_iter()
            .flat_map(|b| b.images)
            .collect::<Vec<f32>>()
        };
        let one = run(1, 7, 0);
        assert_eq!(one, run(3, 7, 0), "same seed and epoch, other thread count: same pixels");
        assert_ne!(one, run(1, 7, 1), "another epoch augments differently");
        assert_eq!(one.len(), 8 * p.tensor_len());
    }

    #[test]
    fn bad_indices_fail_and_dropping_stops_the_producer() {
        let items = items();
        let mut loader =
            Loader::spawn(items.clone(), vec![vec![0], vec![50]], Preprocess::small(28), Transform::Eval, 1, 1)
                .unwrap();
        assert!(loader.next().unwrap().is_ok());
        let err = loader.next().unwrap().unwrap_err();
        assert!(matches!(err, LoadError::IndexOutOfRange { index: 50, len: 50, .. }), "{err}");
        assert!(loader.next().is_none(), "the pass ends at the first error");
        // Many batches, a queue of one, read one and drop: must return, not block.
        let mut loader =
            Loader::spawn(items, sequential_batches(50, 1), Preprocess::small(28), Transform::Eval, 1, 1).unwrap();
        assert!(loader.next().is_some());
        drop(loader);
    }

    #[test]
    fn sequential_batches_cover_in_order() {
        assert_eq!(sequential_batches(5, 2), vec![vec![0, 1], vec![2, 3], vec![4]]);
        assert!(sequential_batches(0, 4).is_empty());
    }

    #[test]
    fn image_seeds_differ_by_each_coordinate() {
        let base = image_seed(1, 2, 3, 4);
        assert_ne!(base, image_seed(0, 2, 3, 4));
        assert_ne!(base, image_seed(1, 3, 3, 4));
        assert_ne!(base, image_seed(1, 2, 4, 4));
        assert_ne!(base, image_seed(1, 2, 3, 5));
        assert_eq!(base, image_seed(1, 2, 3, 4));
    }
}
