//! The training run: data set and splits, P x K batches through the parallel loader, SGD on the
//! triplet loss, validation mAP, checkpoints, and at the end the exported model and the
//! training split's index.
//!
//! Files written into the output folder: `config.json` (the resolved configuration, at the
//! start), `metrics.json` (per-epoch loss and speed, validation mAP per evaluation; rewritten
//! after every epoch), `checkpoints/` (see [`crate::checkpoint`]), `model.onnx` and `train.hidx`.
//!
//! Model selection uses only the validation split: its codes are split into alternating halves,
//! one half the queries and the other the database, so an evaluation costs one pass over Val and
//! no query finds itself. The test split is never touched here.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use hashsrv::dataset::{Dataset, DatasetError, DatasetKind, Item, OpenOptions, Split};
use hashsrv::preprocess::{IMAGENET_MEAN, IMAGENET_STD, Preprocess, Resize};
use hashsrv_index::code::{CodeMatrix, HashCode, words_for_bits};
use hashsrv_index::metrics::{MetricsError, TieMode, mean_average_precision};
use hashsrv_index::{IndexError, IndexMetadata, IndexWriter};
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use tch::nn;
use tch::{Device, Kind, Tensor};

use crate::budget::{self, BudgetPlan};
use crate::checkpoint::{CheckpointError, CheckpointInfo, Checkpoints, write_atomically};
use crate::frozen::FrozenTrunk;
use crate::loader::{Batch, LoadError, Loader, Transform, sequential_batches};
use crate::loss::{HashCentres, Strategy, TripletLoss};
use crate::model::{HashNet, HashNetConfig, ModelError, Stem};
use crate::onnx::{ExportError, ExportMetadata, export_onnx};
use crate::optim::{Optim, Optimizer};
use crate::precision::Precision;
use crate::pretrained::{self, PretrainedError};
use crate::sampler::{PkSampler, SamplerError};

/// The libtorch device of `device`; asking for CUDA where libtorch sees none is an error.
pub fn tch_device(device: hashsrv::device::Device) -> Result<Device, TrainError> {
    use hashsrv::device::Device as Choice;
    match device {
        Choice::Cpu => Ok(Device::Cpu),
        Choice::Auto => Ok(if tch::Cuda::is_available() { Device::Cuda(0) } else { Device::Cpu }),
        Choice::Cuda(n) => {
            let count = if tch::Cuda::is_available() { tch::Cuda::device_count() } else { 0 };
            match usize::try_from(n).ok().filter(|_| i64::from(n) < count) {
                Some(n) => Ok(Device::Cuda(n)),
                None => Err(TrainError::Config(format!(
                    "--device cuda:{n} asked for a GPU, but libtorch sees {count} CUDA device(s) \
                     (tch::Cuda::is_available() is {}); use --device cpu, or --device auto to use a GPU only \
                     when there is one",
                    tch::Cuda::is_available()
                ))),
            }
        }
    }
}

/// The learning-rate schedule.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    /// The seed's: multiply by `lr_gamma` every `lr_step` epochs, changing between epochs.
    #[default]
    Step,
    /// Cosine decay from `lr` to 0 over all batches of the run, after a short linear warm-up:
    /// the better choice for runs of a few epochs.
    Cosine,
}

/// The cosine schedule's rate at batch `t` of `total`: a linear warm-up over the first 3% of the
/// batches (at most 200), then `lr * (1 + cos(pi t / total)) / 2`.
fn cosine_lr(lr: f64, t: usize, total: usize) -> f64 {
    let (t, total) = (t as f64, total.max(1) as f64);
    // A network trained from scratch takes the full rate badly in its first batches, before
    // batch norm's running statistics settle.
    let warmup = (0.03 * total).clamp(1.0, 200.0);
    let warm = ((t + 1.0) / warmup).min(1.0);
    warm * lr * 0.5 * (1.0 + (std::f64::consts::PI * t / total).cos())
}

/// Everything a run is made of; written to `config.json` with every default resolved.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    pub dataset: DatasetKind,
    /// The data set's root; `None` uses its default location.
    pub data: Option<PathBuf>,
    pub out: PathBuf,
    pub bits: u32,
    pub margin: f64,
    pub strategy: Strategy,
    /// Weight of the quantization regulariser (0 disables it).
    pub quantization: f64,
    /// Weight of the hash-centre term (0 disables it; see [`crate::loss::HashCentres`]).
    #[serde(default)]
    pub centres: f64,
    #[serde(default)]
    pub optimizer: Optimizer,
    pub lr: f64,
    /// How the learning rate changes over the run.
    #[serde(default)]
    pub schedule: Schedule,
    /// Under [`Schedule::Step`], the learning rate is multiplied by `lr_gamma` every `lr_step`
    /// epochs.
    pub lr_step: u64,
    pub lr_gamma: f64,
    pub momentum: f64,
    pub weight_decay: f64,
    /// Images per batch: `classes_per_batch` x (`batch / classes_per_batch`).
    pub batch: usize,
    pub classes_per_batch: usize,
    /// Epochs of the run; with `time_budget`, the most it may take.
    pub epochs: u64,
    /// Seconds of training (epochs and their validation) to fit the epoch count into, measured
    /// on this machine before the run (see [`crate::budget`]); `None` runs `epochs` epochs.
    #[serde(default)]
    pub time_budget: Option<f64>,
    pub device: hashsrv::device::Device,
    /// The arithmetic of the training steps; `config.json` holds the resolved one.
    #[serde(default)]
    pub precision: Precision,
    pub limit_train: Option<usize>,
    pub limit_test: Option<usize>,
    pub val_fraction: f32,
    pub seed: u64,
    pub input_size: u32,
    pub stem: Stem,
    /// A torchvision / safetensors ResNet-18 checkpoint, or a previous run's checkpoint, to
    /// start from; `None` trains from scratch.
    pub pretrained: Option<PathBuf>,
    /// Train only the `hash` layer on trunk features computed once (see [`crate::frozen`]).
    #[serde(default)]
    pub freeze_trunk: bool,
    pub resume: bool,
    /// Evaluate on the validation split every this many epochs (and after the last).
    pub eval_every: u64,
    /// Threads for libtorch and for the loader.
    pub threads: usize,
    /// Batches the loader prepares ahead.
    pub prefetch: usize,
    pub skip_unreadable: bool,
}

impl TrainConfig {
    /// The run's optimiser over the trainable variables of `vs`, at the base learning rate.
    pub fn optimizer(&self, vs: &nn::VarStore) -> Result<Optim, tch::TchError> {
        self.optimizer.build(vs, self.lr, self.momentum, self.weight_decay)
    }

    /// The preprocessing of this run: the data set's kind at `input_size`.
    pub fn preprocess(&self) -> Preprocess {
        match self.dataset {
            DatasetKind::FashionMnist => Preprocess::small(self.input_size),
            // ImageNet proportions: resize the shorter side to 8/7 of the crop (256 for 224).
            _ => Preprocess {
                resize: Resize::ShorterSide(self.input_size * 8 / 7),
                crop: self.input_size,
                mean: IMAGENET_MEAN,
                std: IMAGENET_STD,
            },
        }
    }

    pub fn model_config(&self) -> HashNetConfig {
        HashNetConfig { bits: self.bits, stem: self.stem, input_size: self.input_size }
    }

    /// The learning rate of batch `step` (0-based) of 0-based `epoch`, with `steps` batches an
    /// epoch.
    pub fn lr_at(&self, epoch: u64, step: usize, steps: usize) -> f64 {
        match self.schedule {
            Schedule::Step => self.lr * self.lr_gamma.powi((epoch / self.lr_step.max(1)) as i32),
            Schedule::Cosine => {
                let total = self.epochs as usize * steps;
                cosine_lr(self.lr, epoch as usize * steps + step, total)
            }
        }
    }

    /// Checks what the run cannot start with.
    pub fn validate(&self) -> Result<(), TrainError> {
        self.model_config().validate()?;
        self.preprocess().validate().map_err(|e| TrainError::Config(e.to_string()))?;
        let fail = |m: String| Err(TrainError::Config(m));
        if self.classes_per_batch < 2 || self.batch < self.classes_per_batch * 2 {
            return fail(format!(
                "--batch {} with --classes-per-batch {} leaves fewer than 2 classes or 2 images per class; the \
                 triplet loss needs both",
                self.batch, self.classes_per_batch
            ));
        }
        if !self.batch.is_multiple_of(self.classes_per_batch) {
            return fail(format!(
                "--batch {} is not a multiple of --classes-per-batch {}",
                self.batch, self.classes_per_batch
            ));
        }
        if self.freeze_trunk && self.pretrained.is_none() {
            return fail(
                "--freeze-trunk needs --pretrained <file> (a previous run's checkpoints/best.safetensors or a \
                 torchvision resnet18 .pth / safetensors): a frozen random trunk learns nothing"
                    .into(),
            );
        }
        if self.epochs == 0 || self.eval_every == 0 || self.threads == 0 {
            return fail("--epochs, --eval-every and --threads must be at least 1".into());
        }
        let positive = |x: f64| x > 0.0 && x.is_finite();
        if !positive(self.lr) || !positive(self.margin) {
            return fail(format!("--lr ({}) and --margin ({}) must be positive", self.lr, self.margin));
        }
        if let Some(seconds) = self.time_budget {
            if !positive(seconds) {
                return fail(format!("--time-budget must be a positive number of seconds, got {seconds}"));
            }
            if self.freeze_trunk {
                return fail(
                    "--time-budget sizes full training; a --freeze-trunk run takes seconds an epoch: \
                             give --epochs alone"
                        .into(),
                );
            }
            if self.schedule == Schedule::Step {
                return fail(
                    "--time-budget chooses the epoch count, which the step schedule's --lr-step was \
                             set from: use --schedule cosine"
                        .into(),
                );
            }
        }
        Ok(())
    }
}

/// Why a run failed.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Dataset(#[from] DatasetError),
    #[error(transparent)]
    Sampler(#[from] SamplerError),
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error("exporting the model: {0}")]
    Export(#[from] ExportError),
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "cannot resume: the checkpoint in {} was trained with {field} {found}, this run asks for {wanted}; \
         use another --out or drop --resume",
        dir.display()
    )]
    ResumeMismatch { dir: PathBuf, field: &'static str, found: String, wanted: String },
    #[error("the loss became {0} at epoch {1}: lower --lr or --margin")]
    Diverged(f64, u64),
    #[error("loading pretrained weights: {0}")]
    Pretrained(#[from] PretrainedError),
    #[error("computing validation mAP: {0}")]
    Metrics(#[from] MetricsError),
    #[error("writing the index: {0}")]
    Index(#[from] IndexError),
}

/// One epoch's training numbers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpochMetrics {
    /// 1-based.
    pub epoch: u64,
    pub lr: f64,
    /// Mean total loss over the epoch's batches.
    pub loss: f64,
    /// Mean over batches of the fraction of valid triplets (anchors) with a positive loss.
    pub active_fraction: f64,
    pub quantization: f64,
    /// Mean unweighted hash-centre term (0 without centres).
    #[serde(default)]
    pub centre: f64,
    pub images: usize,
    pub seconds: f64,
    pub images_per_second: f64,
}

/// One validation evaluation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    pub epoch: u64,
    /// mAP@all (index-order ties) of the validation queries against the validation database
    /// half; `None` when no query has a relevant item.
    pub val_map: Option<f64>,
    pub queries: usize,
    pub database: usize,
    /// Fraction of code bits that are 1 (a collapsed code shows as 0 or 1).
    pub ones_fraction: f64,
    pub seconds: f64,
}

/// `metrics.json`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    pub device: String,
    pub epochs: Vec<EpochMetrics>,
    pub evaluations: Vec<Evaluation>,
    /// Epoch and validation mAP of the checkpoint kept as `best`.
    pub best: Option<(u64, f64)>,
    /// How `--time-budget` chose the epoch count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_budget: Option<BudgetPlan>,
}

/// What a finished run produced.
#[derive(Clone, Debug)]
pub struct TrainSummary {
    pub metrics: Metrics,
    pub model: PathBuf,
    pub model_sha256: String,
    pub index: PathBuf,
}

/// Trains, evaluates, checkpoints and exports as `config` says.
pub fn run(config: &TrainConfig) -> Result<TrainSummary, TrainError> {
    config.validate()?;
    let device = tch_device(config.device)?;
    let precision = config.precision.resolve(device).map_err(TrainError::Config)?;
    tracing::info!(device = ?device, requested = %config.device, ?precision, "training device");
    let config = &TrainConfig { precision, ..config.clone() };
    tch::set_num_threads(config.threads as i32);
    let out = &config.out;
    std::fs::create_dir_all(out).map_err(|source| TrainError::Io { path: out.clone(), source })?;

    let options = OpenOptions {
        val_fraction: config.val_fraction,
        seed: config.seed,
        limit_train: config.limit_train,
        limit_test: config.limit_test,
        skip_unreadable: config.skip_unreadable,
    };
    let data = match &config.data {
        Some(root) => Dataset::open(config.dataset, root, &options)?,
        None => Dataset::open_default(config.dataset, &options)?,
    };
    for skipped in data.skipped() {
        tracing::warn!(split = %skipped.split, path = %skipped.path, reason = %skipped.reason, "skipped unreadable image");
    }
    let fit: Arc<[Item]> = data.split(Split::Fit).into();
    let val: Arc<[Item]> = data.split(Split::Val).into();
    tracing::info!(fit = fit.len(), val = val.len(), train = data.split(Split::Train).len(), "data set opened");
    let labels: Vec<u32> = fit.iter().map(|item| item.label).collect();
    let sampler =
        PkSampler::new(&labels, config.classes_per_batch, config.batch / config.classes_per_batch, config.seed)?;
    let centres = (config.centres > 0.0)
        .then(|| (HashCentres::new(data.class_names().len(), config.bits, config.seed), config.centres));
    let loss_fn =
        TripletLoss { strategy: config.strategy, margin: config.margin, quantization: config.quantization, centres };
    let preprocess = config.preprocess();
    let checkpoints = Checkpoints::create(out)?;
    let last = if config.resume { checkpoints.info("last")? } else { None };
    let resuming = last.is_some();

    // The epoch count of a budgeted run is measured once: a resumed run keeps the count its
    // schedule was laid out over.
    let mut budget_plan = None;
    let config = &match (config.time_budget, &last) {
        (Some(_), Some(last)) => {
            let epochs = last.config.get("epochs").and_then(serde_json::Value::as_u64);
            TrainConfig { epochs: epochs.unwrap_or(config.epochs), ..config.clone() }
        }
        (Some(seconds), None) => {
            let plan = budget::plan(config, seconds, &fit, &val, &sampler, &loss_fn, &preprocess, device)?;
            tracing::info!(
                budget_seconds = seconds,
                step_seconds = plan.step_seconds,
                epoch_seconds = plan.epoch_seconds,
                epochs = plan.epochs,
                "time budget: epochs chosen from this machine's measured speed"
            );
            let config = TrainConfig { epochs: plan.epochs, ..config.clone() };
            budget_plan = Some(plan);
            config
        }
        (None, _) => config.clone(),
    };
    let config_json = serde_json::to_value(config).map_err(|e| TrainError::Config(e.to_string()))?;
    write_json(&out.join("config.json"), &config_json)?;

    tch::manual_seed(config.seed as i64);
    let mut vs = nn::VarStore::new(device);
    let mut net = HashNet::new(&vs.root(), &config.model_config())?;
    net.set_training_precision(&vs, config.precision);
    let mut metrics = Metrics { device: format!("{device:?}"), ..Metrics::default() };
    let mut start_epoch = 0;
    if resuming {
        start_epoch = resume(config, &checkpoints, &mut vs, &mut metrics)?;
        metrics.device = format!("{device:?}");
    } else if config.resume {
        tracing::info!(dir = %checkpoints.dir().display(), "no checkpoint to resume from: starting from scratch");
    }
    if budget_plan.is_some() {
        metrics.time_budget = budget_plan;
    }
    if start_epoch == 0
        && let Some(path) = &config.pretrained
    {
        load_pretrained(&mut vs, config, path)?;
    }

    let mut optimizer = config.optimizer(&vs)?;
    let frozen = match config.freeze_trunk {
        true => Some(FrozenTrunk::compute(config, &mut vs, &net, &data, &preprocess, device)?),
        false => None,
    };

    for epoch in start_epoch..config.epochs {
        let epoch_metrics = match &frozen {
            Some(frozen) => frozen.train_epoch(config, &net, &mut optimizer, &loss_fn, &sampler, epoch)?,
            None => train_epoch(config, &net, &mut optimizer, &loss_fn, &sampler, &fit, &preprocess, device, epoch)?,
        };
        tracing::info!(
            epoch = epoch + 1,
            loss = epoch_metrics.loss,
            active = epoch_metrics.active_fraction,
            images_per_second = epoch_metrics.images_per_second,
            "epoch done"
        );
        metrics.epochs.push(epoch_metrics);
        let completed = epoch + 1;
        let mut val_map = None;
        let evaluated = completed.is_multiple_of(config.eval_every) || completed == config.epochs;
        if evaluated {
            let started = Instant::now();
            let words = match &frozen {
                Some(frozen) => frozen.val_codes(&net)?,
                None => encode(&net, &val, &preprocess, device, config, "validation")?,
            };
            let evaluation = evaluate(config.bits, &words, &val, completed, started)?;
            tracing::info!(epoch = completed, val_map = ?evaluation.val_map, ones = evaluation.ones_fraction, "validation");
            val_map = evaluation.val_map;
            metrics.evaluations.push(evaluation);
        }
        let improved = val_map.is_some_and(|m| metrics.best.is_none_or(|(_, best)| m > best));
        if improved {
            metrics.best = val_map.map(|m| (completed, m));
        }
        let info = CheckpointInfo { epoch: completed, config: config_json.clone(), val_map, best: metrics.best };
        // A frozen-trunk epoch takes less time than writing the whole network, so `last` is
        // written only with the evaluations there.
        if frozen.is_none() || evaluated {
            checkpoints.save("last", &vs, &info)?;
        }
        if improved {
            checkpoints.save("best", &vs, &info)?;
        }
        write_json(&out.join("metrics.json"), &metrics)?;
    }

    if metrics.best.is_some() {
        checkpoints.load_weights("best", &mut vs)?;
    }
    let model = out.join("model.onnx");
    let model_sha256 = export_model(config, &data, &vs, &model)?;
    tracing::info!(path = %model.display(), sha256 = %model_sha256, "model exported");
    let index = out.join("train.hidx");
    let train: Arc<[Item]> = data.split(Split::Train).into();
    let words = match &frozen {
        Some(frozen) => frozen.train_codes(&net)?,
        None => encode(&net, &train, &preprocess, device, config, "index")?,
    };
    export_index(config, &data, &words, &model_sha256, &index)?;
    Ok(TrainSummary { metrics, model, model_sha256, index })
}

/// Restores the `last` checkpoint and `metrics.json`; returns the number of completed epochs.
fn resume(
    config: &TrainConfig,
    checkpoints: &Checkpoints,
    vs: &mut nn::VarStore,
    metrics: &mut Metrics,
) -> Result<u64, TrainError> {
    let Some(info) = checkpoints.info("last")? else { return Ok(0) };
    let saved: TrainConfig = serde_json::from_value(info.config.clone())
        .map_err(|e| TrainError::Config(format!("{}: {e}", checkpoints.info_path("last").display())))?;
    let mismatch = |field: &'static str, found: String, wanted: String| TrainError::ResumeMismatch {
        dir: checkpoints.dir().to_path_buf(),
        field,
        found,
        wanted,
    };
    if saved.model_config() != config.model_config() {
        return Err(mismatch("network", format!("{:?}", saved.model_config()), format!("{:?}", config.model_config())));
    }
    if saved.dataset != config.dataset || saved.limit_train != config.limit_train || saved.seed != config.seed {
        return Err(mismatch(
            "data set / limit / seed",
            format!("{} {:?} {}", saved.dataset, saved.limit_train, saved.seed),
            format!("{} {:?} {}", config.dataset, config.limit_train, config.seed),
        ));
    }
    checkpoints.load_weights("last", vs)?;
    let path = config.out.join("metrics.json");
    if let Ok(bytes) = std::fs::read(&path) {
        *metrics =
            serde_json::from_slice(&bytes).map_err(|e| TrainError::Config(format!("{}: {e}", path.display())))?;
        metrics.epochs.retain(|e| e.epoch <= info.epoch);
        metrics.evaluations.retain(|e| e.epoch <= info.epoch);
    }
    metrics.best = info.best;
    tracing::info!(epoch = info.epoch, "resumed from the last checkpoint (optimiser momentum restarts at zero)");
    Ok(info.epoch)
}

#[allow(clippy::too_many_arguments)]
fn train_epoch(
    config: &TrainConfig,
    net: &HashNet,
    optimizer: &mut Optim,
    loss_fn: &TripletLoss,
    sampler: &PkSampler,
    fit: &Arc<[Item]>,
    preprocess: &Preprocess,
    device: Device,
    epoch: u64,
) -> Result<EpochMetrics, TrainError> {
    let batches = sampler.epoch(epoch);
    let steps_per_epoch = batches.len();
    let progress = progress_bar(batches.len() as u64, format!("epoch {}/{}", epoch + 1, config.epochs));
    let loader = Loader::spawn(
        Arc::clone(fit),
        batches,
        preprocess.clone(),
        Transform::Train { seed: config.seed, epoch },
        config.threads,
        config.prefetch,
    )?;
    let side = i64::from(preprocess.crop);
    let mut tally = EpochTally::start(config, epoch, steps_per_epoch);
    for batch in loader {
        let batch = batch?;
        optimizer.set_lr(tally.lr());
        tally.record(train_on_batch(net, optimizer, loss_fn, &batch, side, device), batch.len())?;
        progress.set_message(format!("loss {:.3} | {:.0} img/s", tally.mean_loss(), tally.images_per_second()));
        progress.inc(1);
    }
    progress.finish_and_clear();
    Ok(tally.finish())
}

/// The running totals of one epoch: the learning rate of each step, the loss sums, and a
/// refusal of a diverged loss; ends as the epoch's [`EpochMetrics`]. Full and frozen-trunk
/// training both count their epochs with it.
pub(crate) struct EpochTally<'a> {
    config: &'a TrainConfig,
    epoch: u64,
    steps_per_epoch: usize,
    started: Instant,
    loss_sum: f64,
    active_sum: f64,
    quantization_sum: f64,
    centre_sum: f64,
    images: usize,
    steps: usize,
}

impl<'a> EpochTally<'a> {
    /// Starts the clock of 0-based `epoch`, which has `steps_per_epoch` batches.
    pub(crate) fn start(config: &'a TrainConfig, epoch: u64, steps_per_epoch: usize) -> Self {
        EpochTally {
            config,
            epoch,
            steps_per_epoch,
            started: Instant::now(),
            loss_sum: 0.0,
            active_sum: 0.0,
            quantization_sum: 0.0,
            centre_sum: 0.0,
            images: 0,
            steps: 0,
        }
    }

    /// The learning rate of the next step.
    pub(crate) fn lr(&self) -> f64 {
        self.config.lr_at(self.epoch, self.steps, self.steps_per_epoch)
    }

    /// Adds one step over `images` images; a loss that is no longer finite ends the run.
    pub(crate) fn record(&mut self, step: StepOutput, images: usize) -> Result<(), TrainError> {
        if !step.total.is_finite() {
            return Err(TrainError::Diverged(step.total, self.epoch + 1));
        }
        self.loss_sum += step.total;
        self.active_sum += step.active as f64 / step.valid.max(1) as f64;
        self.quantization_sum += step.quantization;
        self.centre_sum += step.centre;
        self.images += images;
        self.steps += 1;
        Ok(())
    }

    pub(crate) fn mean_loss(&self) -> f64 {
        self.loss_sum / self.steps.max(1) as f64
    }

    pub(crate) fn images_per_second(&self) -> f64 {
        self.images as f64 / self.started.elapsed().as_secs_f64().max(1e-9)
    }

    pub(crate) fn finish(self) -> EpochMetrics {
        let seconds = self.started.elapsed().as_secs_f64();
        let steps = self.steps.max(1) as f64;
        EpochMetrics {
            epoch: self.epoch + 1,
            lr: self.config.lr_at(self.epoch, 0, self.steps_per_epoch),
            loss: self.loss_sum / steps,
            active_fraction: self.active_sum / steps,
            quantization: self.quantization_sum / steps,
            centre: self.centre_sum / steps,
            images: self.images,
            seconds,
            images_per_second: self.images as f64 / seconds.max(1e-9),
        }
    }
}

/// What one optimisation step reports.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepOutput {
    /// The loss that was back-propagated.
    pub total: f64,
    /// The unweighted quantization regulariser.
    pub quantization: f64,
    /// The unweighted hash-centre term (0 without centres).
    pub centre: f64,
    /// Active and valid triplets (see [`crate::loss::LossOutput`]).
    pub active: i64,
    pub valid: i64,
}

/// One SGD step of the whole network on a batch `xs` [B,3,S,S] with `labels` [B] (int64), both
/// on the network's device. `scripts/bench_train.py` times this function against PyTorch.
pub fn train_step(
    net: &HashNet,
    optimizer: &mut Optim,
    loss_fn: &TripletLoss,
    xs: &Tensor,
    labels: &Tensor,
) -> StepOutput {
    optimise(optimizer, loss_fn, &net.forward_t(xs, true), labels)
}

/// [`train_step`] on a batch from the loader (images of side `side`).
pub(crate) fn train_on_batch(
    net: &HashNet,
    optimizer: &mut Optim,
    loss_fn: &TripletLoss,
    batch: &Batch,
    side: i64,
    device: Device,
) -> StepOutput {
    let labels: Vec<i64> = batch.labels.iter().map(|&l| i64::from(l)).collect();
    let labels = Tensor::from_slice(&labels).to_device(device);
    train_step(net, optimizer, loss_fn, &input_tensor(batch, side, device), &labels)
}

/// A loader batch's images as the network's input [B,3,side,side] on `device`.
fn input_tensor(batch: &Batch, side: i64, device: Device) -> Tensor {
    Tensor::from_slice(&batch.images).view([batch.len() as i64, 3, side, side]).to_device(device)
}

/// One SGD step of the `hash` layer alone on trunk features [B,512] (the frozen-trunk mode).
pub fn hash_step(
    net: &HashNet,
    optimizer: &mut Optim,
    loss_fn: &TripletLoss,
    features: &Tensor,
    labels: &Tensor,
) -> StepOutput {
    optimise(optimizer, loss_fn, &net.hash_head(features), labels)
}

fn optimise(optimizer: &mut Optim, loss_fn: &TripletLoss, outputs: &Tensor, labels: &Tensor) -> StepOutput {
    let loss = loss_fn.forward(outputs, labels);
    optimizer.backward_step(&loss.total);
    StepOutput {
        total: loss.total.double_value(&[]),
        quantization: loss.quantization.double_value(&[]),
        centre: loss.centre.double_value(&[]),
        active: loss.active,
        valid: loss.valid,
    }
}

/// Runs `f` on every batch of `items` (evaluation transform, in order, no gradients) and
/// stacks the results: [N, D] floats on the CPU.
pub fn eval_pass(
    items: &Arc<[Item]>,
    preprocess: &Preprocess,
    device: Device,
    config: &TrainConfig,
    label: &str,
    f: impl Fn(&Tensor) -> Tensor,
) -> Result<Tensor, TrainError> {
    let batches = sequential_batches(items.len(), config.batch.max(64));
    let progress = progress_bar(batches.len() as u64, label.to_string());
    let loader = Loader::spawn(Arc::clone(items), batches, preprocess.clone(), Transform::Eval, config.threads, 2)?;
    let side = i64::from(preprocess.crop);
    let mut outputs = Vec::new();
    for batch in loader {
        let batch = batch?;
        outputs
            .push(tch::no_grad(|| f(&input_tensor(&batch, side, device)).to_device(Device::Cpu).to_kind(Kind::Float)));
        progress.inc(1);
    }
    progress.finish_and_clear();
    Ok(if outputs.is_empty() { Tensor::zeros([0, 0], (Kind::Float, Device::Cpu)) } else { Tensor::cat(&outputs, 0) })
}

/// The binary codes of network outputs [N, bits] (bit i = output i > 0), code after code as
/// [`HashCode`] words.
pub fn codes_of(outputs: &Tensor, bits: u32) -> Result<Vec<u64>, TrainError> {
    let flat = Vec::<f32>::try_from(outputs.to_kind(Kind::Float).contiguous().view([-1]))?;
    let mut words = Vec::with_capacity(flat.len() / bits.max(1) as usize * words_for_bits(bits));
    for row in flat.chunks(bits as usize) {
        let code = HashCode::from_outputs(row).map_err(|e| TrainError::Config(e.to_string()))?;
        words.extend_from_slice(code.words());
    }
    Ok(words)
}

/// The codes of `items` through the whole network in evaluation mode.
pub fn encode(
    net: &HashNet,
    items: &Arc<[Item]>,
    preprocess: &Preprocess,
    device: Device,
    config: &TrainConfig,
    label: &str,
) -> Result<Vec<u64>, TrainError> {
    let outputs = eval_pass(items, preprocess, device, config, label, |xs| net.forward_t(xs, false))?;
    codes_of(&outputs, net.config().bits)
}

/// Validation mAP of the codes `words` of the validation split `val`.
fn evaluate(bits: u32, words: &[u64], val: &[Item], epoch: u64, started: Instant) -> Result<Evaluation, TrainError> {
    let per_code = words_for_bits(bits);
    // Alternating halves: the split is in the official order, stratified, so both halves hold
    // every class in proportion.
    let (mut queries, mut database) = (Vec::new(), Vec::new());
    let (mut query_labels, mut database_labels) = (Vec::new(), Vec::new());
    for (i, (code, item)) in words.chunks(per_code).zip(val.iter()).enumerate() {
        if i.is_multiple_of(2) {
            queries.extend_from_slice(code);
            query_labels.push(item.label);
        } else {
            database.extend_from_slice(code);
            database_labels.push(item.label);
        }
    }
    let ones: u64 = words.iter().map(|w| u64::from(w.count_ones())).sum();
    let val_map = validation_map(bits, &database, &database_labels, &queries, &query_labels)?;
    Ok(Evaluation {
        epoch,
        val_map,
        queries: query_labels.len(),
        database: database_labels.len(),
        ones_fraction: ones as f64 / (val.len().max(1) as f64 * f64::from(bits)),
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// mAP@all (index-order ties) of the validation queries against the database half; `None`
/// when no query has a relevant item (a split too small to hold two of a class).
fn validation_map(
    bits: u32,
    database: &[u64],
    database_labels: &[u32],
    queries: &[u64],
    query_labels: &[u32],
) -> Result<Option<f64>, TrainError> {
    let result = mean_average_precision(
        CodeMatrix::new(bits, database),
        database_labels,
        CodeMatrix::new(bits, queries),
        query_labels,
        TieMode::IndexOrder,
    )?;
    Ok((result.queries > 0).then_some(result.map))
}

fn load_pretrained(vs: &mut nn::VarStore, config: &TrainConfig, path: &Path) -> Result<(), TrainError> {
    let report = pretrained::load_pretrained(vs, &config.model_config(), path)?;
    tracing::info!(
        path = %path.display(),
        loaded = report.loaded.len(),
        skipped = report.skipped.len(),
        "pretrained trunk weights loaded"
    );
    for (name, reason) in &report.skipped {
        tracing::debug!(%name, %reason, "pretrained entry not used");
    }
    Ok(())
}

fn export_model(config: &TrainConfig, data: &Dataset, vs: &nn::VarStore, path: &Path) -> Result<String, TrainError> {
    let mut extra_config = serde_json::Map::new();
    for (key, value) in [
        ("margin", serde_json::json!(config.margin)),
        ("strategy", serde_json::json!(config.strategy)),
        ("epochs", serde_json::json!(config.epochs)),
        ("seed", serde_json::json!(config.seed)),
    ] {
        extra_config.insert(key.to_string(), value);
    }
    let meta = ExportMetadata {
        preprocess: config.preprocess(),
        dataset: config.dataset.to_string(),
        class_names: data.class_names().to_vec(),
        extra_config,
    };
    Ok(export_onnx(vs, &config.model_config(), &meta, path)?)
}

/// Writes the codes `words` of the whole training split (evaluation transform) into
/// `train.hidx`: item `i` of the split has id `i` and its data set path.
fn export_index(
    config: &TrainConfig,
    data: &Dataset,
    words: &[u64],
    model_sha256: &str,
    path: &Path,
) -> Result<(), TrainError> {
    let train = data.split(Split::Train);
    let preprocess = config.preprocess();
    let mut extra = serde_json::Map::new();
    extra.insert("split".into(), serde_json::json!(Split::Train));
    extra.insert("preprocess".into(), serde_json::json!(preprocess));
    let metadata = IndexMetadata {
        model_sha256: Some(model_sha256.to_string()),
        dataset: Some(config.dataset.to_string()),
        class_names: data.class_names().to_vec(),
        extra,
    };
    let mut writer = IndexWriter::create(path, config.bits, metadata)?;
    let per_code = words_for_bits(config.bits);
    for (i, (code, item)) in words.chunks(per_code).zip(train.iter()).enumerate() {
        writer.push(code, item.label, i as u64, &item.path)?;
    }
    writer.finish()?;
    tracing::info!(path = %path.display(), items = train.len(), "training split indexed");
    Ok(())
}

fn progress_bar(len: u64, prefix: String) -> ProgressBar {
    let bar = ProgressBar::new(len);
    if let Ok(style) = ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg} ETA {eta}") {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_prefix(prefix);
    bar
}

fn write_json(path: &Path, value: &impl Serialize) -> Result<(), TrainError> {
    let bytes = serde_json::to_vec_pretty(value).map_err(|e| TrainError::Config(e.to_string()))?;
    Ok(write_atomically(path, &bytes)?)
}

#[cfg(test)]
mod tests {
    use super::cosine_lr;

    #[test]
    fn the_cosine_schedule_warms_up_peaks_and_decays_to_zero() {
        let total = 1000;
        let lrs: Vec<f64> = (0..total).map(|t| cosine_lr(0.1, t, total)).collect();
        // 30 warm-up batches rising linearly to (almost) the full rate.
        assert!((lrs[0] - 0.1 / 30.0).abs() < 1e-12);
        assert!(lrs[..30].windows(2).all(|w| w[0] < w[1]));
        let peak = lrs.iter().cloned().fold(0.0, f64::max);
        assert!(peak <= 0.1 && peak > 0.099, "{peak}");
        assert!(lrs[30..].windows(2).all(|w| w[0] >= w[1]));
        assert!(lrs[total - 1] < 1e-5 && lrs[total - 1] > 0.0);
        // Half way the rate is half the peak.
        assert!((cosine_lr(0.1, 500, total) - 0.05).abs() < 1e-12);
    }
}
