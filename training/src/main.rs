//! `hashsrv-train`: the command line over [`hashsrv_train::train::run`]. Trains the hash model
//! with tch (libtorch) and writes `model.onnx`, `train.hidx`, `checkpoints/`, `config.json` and
//! `metrics.json` into `--out`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use hashsrv::dataset::DatasetKind;
use hashsrv::device::Device;
use hashsrv_train::loss::{Strategy, default_margin};
use hashsrv_train::model::Stem;
use hashsrv_train::optim::Optimizer;
use hashsrv_train::precision::Precision;
use hashsrv_train::train::{Schedule, TrainConfig, run};

/// Trains the deep hash model (ResNet-18 + FC + tanh) with the triplet ranking loss.
#[derive(Debug, Parser)]
#[command(name = "hashsrv-train", version, about)]
struct Args {
    /// Data set: cub, dogs, fashion-mnist or folder.
    #[arg(long, alias = "dataset_name")]
    dataset: DatasetKind,
    /// Root of the data set (default: its environment variable, or Debian's Fashion-MNIST).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Output folder.
    #[arg(long)]
    out: PathBuf,
    /// Code length in bits.
    #[arg(long, alias = "binary_bits", default_value_t = 64)]
    bits: u32,
    /// Triplet margin on squared distances (default: bits / 4 + 4, i.e. 8 for 16 bits, 20 for 64).
    #[arg(long)]
    margin: Option<f64>,
    /// Triplets per batch: batch-all or batch-hard.
    #[arg(long, default_value = "batch-all")]
    strategy: Strategy,
    /// Weight of the quantization regulariser mean((|F| - 1)^2); 0 disables it.
    #[arg(long, default_value_t = 0.0)]
    quantization: f64,
    /// Weight of the hash-centre term: each class gets a fixed, well-separated target code and
    /// each output is pulled to its class's (binary cross-entropy; Yuan et al., CSQ, CVPR 2020).
    /// 0 trains on triplets alone, as the seed does.
    #[arg(long, default_value_t = 0.0)]
    centres: f64,
    /// Optimiser: sgd (the seed's; --momentum, L2 --weight-decay) or adamw (decoupled
    /// --weight-decay).
    #[arg(long, default_value = "sgd")]
    optimizer: Optimizer,
    /// Learning rate.
    #[arg(long, default_value_t = 0.001)]
    lr: f64,
    /// Learning-rate schedule: step (the seed's: x --lr-gamma every --lr-step epochs) or cosine
    /// (decay to 0 over the run's batches after a short warm-up; better for short runs).
    #[arg(long, default_value = "step")]
    schedule: Schedule,
    /// Multiply the learning rate by --lr-gamma every this many epochs (default: 2/3 of the epochs).
    #[arg(long)]
    lr_step: Option<u64>,
    #[arg(long, default_value_t = 0.1)]
    lr_gamma: f64,
    #[arg(long, default_value_t = 0.9)]
    momentum: f64,
    #[arg(long, default_value_t = 5e-4)]
    weight_decay: f64,
    /// Images per batch (classes-per-batch x images per class).
    #[arg(long, default_value_t = 80)]
    batch: usize,
    /// Classes per batch (P of the P x K sampler).
    #[arg(long, default_value_t = 10)]
    classes_per_batch: usize,
    /// Epochs to train (with --time-budget, the most it may take).
    #[arg(long, default_value_t = 10)]
    epochs: u64,
    /// Train as many whole epochs (at most --epochs) as fit in this many seconds on this
    /// machine, measured by a few timed steps before the run (needs --schedule cosine).
    #[arg(long, value_name = "SECONDS")]
    time_budget: Option<f64>,
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    device: Device,
    /// The seed's GPU count: 0 = --device cpu, 1 or more = --device cuda:0.
    #[arg(long, conflicts_with = "device")]
    ngpu: Option<u32>,
    /// Keep a stratified subset of this many training images.
    #[arg(long)]
    limit_train: Option<usize>,
    /// Keep a stratified subset of this many test images.
    #[arg(long)]
    limit_test: Option<usize>,
    /// Fraction of the training split held out for validation (model selection).
    #[arg(long, default_value_t = 0.1)]
    val_fraction: f32,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Side of the square network input (default: 32 for fashion-mnist, 224 otherwise).
    #[arg(long)]
    input_size: Option<u32>,
    /// imagenet (7x7/2 + max pool) or small (3x3/1; default for inputs up to 64 pixels).
    #[arg(long)]
    stem: Option<StemArg>,
    /// `none`, a ResNet-18 checkpoint (torchvision .pth or safetensors), or a previous run's
    /// `checkpoints/best.safetensors` (its hash layer is used only at the same --bits).
    #[arg(long, default_value = "none")]
    pretrained: String,
    /// Keep the --pretrained trunk fixed: compute its features once and train only the hash
    /// layer (seconds instead of hours on a CPU; e.g. 16/32-bit models from a 64-bit run).
    #[arg(long)]
    freeze_trunk: bool,
    /// Continue from <out>/checkpoints/last.
    #[arg(long)]
    resume: bool,
    /// Evaluate validation mAP every this many epochs (and after the last).
    #[arg(long, default_value_t = 1)]
    eval_every: u64,
    /// Arithmetic of the training steps: bf16 runs the trunk's forward pass in bfloat16 (CPU
    /// autocast; weights, optimiser and loss stay fp32); auto picks it on CPUs with bfloat16
    /// instructions (AVX-512 BF16). Evaluation and the exported model are fp32 either way.
    #[arg(long, value_enum, default_value_t = Precision::Auto)]
    precision: Precision,
    /// Threads for libtorch and the image loader (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Batches the loader prepares ahead.
    #[arg(long, default_value_t = 4)]
    prefetch: usize,
    /// Leave out images that cannot be read instead of failing.
    #[arg(long)]
    skip_unreadable: bool,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum StemArg {
    Imagenet,
    Small,
}

impl Args {
    fn into_config(self) -> TrainConfig {
        let input_size = self.input_size.unwrap_or_else(|| self.dataset.default_preprocess().crop);
        let stem = match self.stem {
            Some(StemArg::Imagenet) => Stem::ImageNet,
            Some(StemArg::Small) => Stem::Small,
            None if input_size <= 64 => Stem::Small,
            None => Stem::ImageNet,
        };
        let pretrained = match self.pretrained.trim() {
            "" | "none" => None,
            path => Some(PathBuf::from(path)),
        };
        TrainConfig {
            dataset: self.dataset,
            data: self.data,
            out: self.out,
            bits: self.bits,
            margin: self.margin.unwrap_or_else(|| default_margin(self.bits)),
            strategy: self.strategy,
            quantization: self.quantization,
            centres: self.centres,
            optimizer: self.optimizer,
            lr: self.lr,
            schedule: self.schedule,
            lr_step: self.lr_step.unwrap_or_else(|| (self.epochs * 2).div_ceil(3).max(1)),
            lr_gamma: self.lr_gamma,
            momentum: self.momentum,
            weight_decay: self.weight_decay,
            batch: self.batch,
            classes_per_batch: self.classes_per_batch,
            epochs: self.epochs,
            time_budget: self.time_budget,
            device: self.ngpu.map_or(self.device, Device::from_ngpu),
            precision: self.precision,
            limit_train: self.limit_train,
            limit_test: self.limit_test,
            val_fraction: self.val_fraction,
            seed: self.seed,
            input_size,
            stem,
            pretrained,
            freeze_trunk: self.freeze_trunk,
            resume: self.resume,
            eval_every: self.eval_every,
            threads: self.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
            prefetch: self.prefetch,
            skip_unreadable: self.skip_unreadable,
        }
    }
}

/// libtorch's OpenMP threads busy-wait between operations by default. On a CPU shared with the
/// loader's threads (or anything else) that spinning took 3.6x the CPU time for the same work
/// (BENCHMARKS.md, "Training"). GNU OpenMP reads `OMP_WAIT_POLICY` once, when libtorch is loaded
/// before `main`, so the only way to set it from here is to run this program again with it set.
/// A value the user set is kept.
#[cfg(unix)]
fn run_again_with_passive_openmp() {
    use std::os::unix::process::CommandExt;
    if std::env::var_os("OMP_WAIT_POLICY").is_some() {
        return;
    }
    let Ok(exe) = std::env::current_exe() else { return };
    let err =
        std::process::Command::new(exe).args(std::env::args_os().skip(1)).env("OMP_WAIT_POLICY", "PASSIVE").exec();
    // exec returns only on failure: carry on with the default policy.
    eprintln!("warning: could not restart with OMP_WAIT_POLICY=PASSIVE ({err}); continuing");
}

fn main() -> ExitCode {
    #[cfg(unix)]
    run_again_with_passive_openmp();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let config = Args::parse().into_config();
    match train(&config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn train(config: &TrainConfig) -> anyhow::Result<()> {
    let summary = run(config).with_context(|| format!("training into {}", config.out.display()))?;
    match summary.metrics.best {
        Some((epoch, map)) => println!("best validation mAP {map:.4} at epoch {epoch}"),
        None => println!("no validation mAP computed"),
    }
    println!("model  {} (sha256 {})", summary.model.display(), summary.model_sha256);
    println!("index  {}", summary.index.display());
    Ok(())
}
