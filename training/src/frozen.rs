//! Frozen-trunk training (`--freeze-trunk`): the trunk's 512-d features of the training split
//! are computed once (evaluation-mode batch norm, the evaluation transform, no augmentation) and
//! kept in memory; only the `hash` layer is then trained on them, with the same sampler, loss and
//! optimiser as a full run. A step costs a 512 x bits product instead of a ResNet-18 pass, so a
//! new code length from a trained trunk takes seconds.
//!
//! The trunk's variables are frozen (`requires_grad` off) and never run in training mode, so
//! their weights and batch-norm statistics stay bit-for-bit those of the `--pretrained` file.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use hashsrv::dataset::{Dataset, Item, Split};
use hashsrv::preprocess::Preprocess;
use tch::{Device, Kind, Tensor, nn};

use crate::loss::TripletLoss;
use crate::model::HashNet;
use crate::optim::Optim;
use crate::sampler::PkSampler;
use crate::train::{EpochMetrics, EpochTally, TrainConfig, TrainError, codes_of, eval_pass, hash_step};

/// The cached trunk features of the training split and where Fit and Val sit in it.
#[derive(Debug)]
pub struct FrozenTrunk {
    /// [Train, 512], in the training split's order.
    train: Tensor,
    /// Positions of the Fit and Val items in the training split (int64, on the device).
    fit: Tensor,
    val: Tensor,
    /// Labels of the Fit items (int64, on the device), indexed like the sampler's batches.
    fit_labels: Tensor,
}

impl FrozenTrunk {
    /// Freezes every variable of `vs` but the `hash` layer and computes the trunk features of the
    /// training split (one evaluation pass).
    pub fn compute(
        config: &TrainConfig,
        vs: &mut nn::VarStore,
        net: &HashNet,
        data: &Dataset,
        preprocess: &Preprocess,
        device: Device,
    ) -> Result<Self, TrainError> {
        vs.freeze();
        for (name, var) in vs.variables() {
            if name.starts_with("hash.") {
                let _ = var.set_requires_grad(true);
            }
        }
        let started = Instant::now();
        let train: Arc<[Item]> = data.split(Split::Train).into();
        let features = eval_pass(&train, preprocess, device, config, "trunk features", |xs| net.features_t(xs, false))?;
        let position: HashMap<&str, i64> =
            train.iter().enumerate().map(|(i, item)| (item.path.as_str(), i as i64)).collect();
        let positions = |split: Split| -> Result<Tensor, TrainError> {
            let found: Option<Vec<i64>> =
                data.split(split).iter().map(|item| position.get(item.path.as_str()).copied()).collect();
            let found = found.ok_or_else(|| {
                TrainError::Config(format!(
                    "an item of the {split} split is not in the training split; the data set is inconsistent"
                ))
            })?;
            Ok(Tensor::from_slice(&found).to_device(device))
        };
        let fit_labels: Vec<i64> = data.split(Split::Fit).iter().map(|item| i64::from(item.label)).collect();
        let frozen = Self {
            train: features.to_device(device),
            fit: positions(Split::Fit)?,
            val: positions(Split::Val)?,
            fit_labels: Tensor::from_slice(&fit_labels).to_device(device),
        };
        tracing::info!(
            items = train.len(),
            seconds = started.elapsed().as_secs_f64(),
            "trunk features computed once; training only the hash layer"
        );
        Ok(frozen)
    }

    /// One epoch of the hash layer over the cached Fit features.
    pub fn train_epoch(
        &self,
        config: &TrainConfig,
        net: &HashNet,
        optimizer: &mut Optim,
        loss_fn: &TripletLoss,
        sampler: &PkSampler,
        epoch: u64,
    ) -> Result<EpochMetrics, TrainError> {
        let batches = sampler.epoch(epoch);
        let mut tally = EpochTally::start(config, epoch, batches.len());
        let fit_features = self.train.index_select(0, &self.fit);
        for batch in batches {
            optimizer.set_lr(tally.lr());
            let index: Vec<i64> = batch.iter().map(|&i| i as i64).collect();
            let index = Tensor::from_slice(&index).to_device(fit_features.device());
            let step = hash_step(
                net,
                optimizer,
                loss_fn,
                &fit_features.index_select(0, &index),
                &self.fit_labels.index_select(0, &index),
            );
            tally.record(step, batch.len())?;
        }
        Ok(tally.finish())
    }

    /// The codes of the validation split, in its order.
    pub fn val_codes(&self, net: &HashNet) -> Result<Vec<u64>, TrainError> {
        self.codes(net, Some(&self.val))
    }

    /// The codes of the whole training split, in its order (the index).
    pub fn train_codes(&self, net: &HashNet) -> Result<Vec<u64>, TrainError> {
        self.codes(net, None)
    }

    fn codes(&self, net: &HashNet, rows: Option<&Tensor>) -> Result<Vec<u64>, TrainError> {
        let outputs = tch::no_grad(|| {
            let features = rows.map_or_else(|| self.train.shallow_clone(), |rows| self.train.index_select(0, rows));
            net.hash_head(&features).to_device(Device::Cpu).to_kind(Kind::Float)
        });
        codes_of(&outputs, net.config().bits)
    }
}
