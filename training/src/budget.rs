//! `--time-budget`: how many epochs of full training fit in a given wall-clock time on this
//! machine. The same recipe runs at about 100 images/s on one 2-core machine and 450 to 680 on
//! another, so a fixed epoch count is either short on the fast one or far over time on the slow
//! one.
//!
//! Before training, a throw-away copy of the network takes a few real steps on real batches
//! through the real loader (warm-up excluded) and encodes a few validation batches; the epoch's
//! cost is scaled from those, and the run takes as many whole epochs as fit, at least 1 and at
//! most `--epochs`. The count is fixed before the first real step because the cosine schedule
//! is laid out over the whole run.

use std::sync::Arc;
use std::time::Instant;

use hashsrv::dataset::Item;
use hashsrv::preprocess::Preprocess;
use serde::{Deserialize, Serialize};
use tch::{Device, nn};

use crate::loader::{Loader, Transform};
use crate::loss::TripletLoss;
use crate::model::HashNet;
use crate::sampler::PkSampler;
use crate::train::{TrainConfig, TrainError, encode, train_on_batch};

/// Steps run before timing starts (libtorch's first steps allocate and pick kernels).
const WARMUP_STEPS: usize = 2;
/// Timed steps: enough to average over the loader's and the scheduler's jitter.
const TIMED_STEPS: usize = 8;

/// What the measurement found and chose; kept in `metrics.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BudgetPlan {
    /// The budget, seconds.
    pub seconds: f64,
    /// Measured seconds of one training step (one batch), and of encoding one validation image.
    pub step_seconds: f64,
    pub encode_seconds_per_image: f64,
    /// Estimated seconds of one epoch: its steps, plus its share of the validation passes.
    pub epoch_seconds: f64,
    /// Epochs chosen: `seconds / epoch_seconds` rounded down, within 1..=`--epochs`.
    pub epochs: u64,
}

/// Measures this machine's speed on the run's own network, data and loader, and chooses the
/// number of epochs that fit in `seconds`.
#[allow(clippy::too_many_arguments)]
pub fn plan(
    config: &TrainConfig,
    seconds: f64,
    fit: &Arc<[Item]>,
    val: &Arc<[Item]>,
    sampler: &PkSampler,
    loss_fn: &TripletLoss,
    preprocess: &Preprocess,
    device: Device,
) -> Result<BudgetPlan, TrainError> {
    let vs = nn::VarStore::new(device);
    let mut net = HashNet::new(&vs.root(), &config.model_config())?;
    net.set_training_precision(&vs, config.precision);
    let mut optimizer = config.optimizer(&vs)?;

    let epoch_batches = sampler.epoch(0);
    let steps_per_epoch = epoch_batches.len();
    let batches: Vec<Vec<usize>> = epoch_batches.into_iter().cycle().take(WARMUP_STEPS + TIMED_STEPS).collect();
    let loader = Loader::spawn(
        Arc::clone(fit),
        batches,
        preprocess.clone(),
        Transform::Train { seed: config.seed, epoch: 0 },
        config.threads,
        config.prefetch,
    )?;
    let side = i64::from(preprocess.crop);
    let mut started = Instant::now();
    for (step, batch) in loader.enumerate() {
        if step == WARMUP_STEPS {
            started = Instant::now();
        }
        train_on_batch(&net, &mut optimizer, loss_fn, &batch?, side, device);
    }
    let step_seconds = started.elapsed().as_secs_f64() / TIMED_STEPS as f64;

    let sample: Arc<[Item]> = val.iter().take(4 * config.batch.max(64)).cloned().collect();
    let started = Instant::now();
    encode(&net, &sample, preprocess, device, config, "timing")?;
    let encode_seconds_per_image = started.elapsed().as_secs_f64() / sample.len().max(1) as f64;

    let validation = encode_seconds_per_image * val.len() as f64 / config.eval_every as f64;
    let epoch_seconds = step_seconds * steps_per_epoch as f64 + validation;
    Ok(BudgetPlan {
        seconds,
        step_seconds,
        encode_seconds_per_image,
        epoch_seconds,
        epochs: epochs_within(seconds, epoch_seconds, config.epochs),
    })
}

/// Whole epochs of `epoch_seconds` within `seconds`, at least 1 and at most `max`.
fn epochs_within(seconds: f64, epoch_seconds: f64, max: u64) -> u64 {
    let fit = (seconds / epoch_seconds).floor();
    if fit.is_finite() { (fit as u64).clamp(1, max.max(1)) } else { max.max(1) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_epoch_count_rounds_down_and_stays_within_one_and_the_maximum() {
        assert_eq!(epochs_within(540.0, 128.0, 20), 4);
        assert_eq!(epochs_within(540.0, 540.0, 20), 1);
        assert_eq!(epochs_within(540.0, 2000.0, 20), 1, "a budget shorter than one epoch still trains one");
        assert_eq!(epochs_within(540.0, 10.0, 20), 20, "--epochs caps the count");
        assert_eq!(epochs_within(540.0, 0.0, 7), 7, "an unmeasurably fast epoch takes the maximum");
    }
}
