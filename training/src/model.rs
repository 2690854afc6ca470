//! The hash network: a ResNet-18 trunk, global average pooling, a `hash` linear layer to `bits`
//! outputs and tanh.
//!
//! Variable names equal torchvision's `resnet18` state-dict keys (`conv1.weight`,
//! `layer2.0.downsample.1.running_var`, ...) so that torchvision's ImageNet checkpoint loads by
//! name (see `pretrained`) and the ONNX exporter (see `onnx`) can walk the weights by name. The
//! one torchvision key tch does not keep is batch norm's `num_batches_tracked`, which only
//! matters for `momentum=None` and is ignored. The trunk is written here rather than taken from
//! `tch::vision::resnet` because of the `Small` stem for 28x28 / 32x32 inputs.

use serde::{Deserialize, Serialize};
use tch::nn::{self, ModuleT};
use tch::{Kind, Tensor};

use crate::precision::{self, Precision};

/// Width of the trunk's output (ResNet-18's last stage).
pub const FEATURES: i64 = 512;

/// Batch norm epsilon, as in torchvision (the exporter folds it into the convolutions).
pub const BN_EPS: f64 = 1e-5;

/// Channels of the four stages.
pub const STAGE_CHANNELS: [i64; 4] = [64, 128, 256, 512];

/// Basic blocks per stage (ResNet-18).
pub const BLOCKS_PER_STAGE: usize = 2;

/// The first layers of the trunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stem {
    /// torchvision's stem: 7x7 stride-2 convolution and 3x3 stride-2 max pooling (224x224 input).
    #[serde(rename = "imagenet")]
    ImageNet,
    /// A CIFAR-style stem for tiny inputs: 3x3 stride-1 convolution, no max pooling. Its
    /// `conv1.weight` is [64,3,3,3], so torchvision's pretrained `conv1` does not apply.
    Small,
}

impl Stem {
    /// Kernel, stride and padding of `conv1`.
    pub fn conv1_geometry(self) -> (i64, i64, i64) {
        match self {
            Stem::ImageNet => (7, 2, 3),
            Stem::Small => (3, 1, 1),
        }
    }

    /// Whether a 3x3 stride-2 max pooling follows `conv1`.
    pub fn has_max_pool(self) -> bool {
        self == Stem::ImageNet
    }
}

/// The architecture: everything needed to rebuild the network's variables.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HashNetConfig {
    /// Code length: outputs of the `hash` layer.
    pub bits: u32,
    pub stem: Stem,
    /// Side of the square input image (the preprocessing crop).
    pub input_size: u32,
}

/// A configuration the network cannot be built from.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ModelError {
    #[error("the code length must be between {min} and {max} bits, got {bits}")]
    Bits { bits: u32, min: u32, max: u32 },
    #[error("the input size {size} is too small for the {stem:?} stem (at least {min} pixels)")]
    InputSize { size: u32, stem: Stem, min: u32 },
}

impl HashNetConfig {
    /// Checks the code length against what the index supports and the input against the stem.
    pub fn validate(&self) -> Result<(), ModelError> {
        use hashsrv_index::code::{MAX_BITS, MIN_BITS};
        if !(MIN_BITS..=MAX_BITS).contains(&self.bits) {
            return Err(ModelError::Bits { bits: self.bits, min: MIN_BITS, max: MAX_BITS });
        }
        // Every stage must still have at least one pixel: the trunk divides by 32 (ImageNet) or 8.
        let min = match self.stem {
            Stem::ImageNet => 32,
            Stem::Small => 8,
        };
        if self.input_size < min {
            return Err(ModelError::InputSize { size: self.input_size, stem: self.stem, min });
        }
        Ok(())
    }
}

fn conv2d(p: nn::Path, c_in: i64, c_out: i64, ksize: i64, stride: i64, padding: i64) -> nn::Conv2D {
    // torchvision: kaiming_normal_(mode="fan_out", nonlinearity="relu"), no bias.
    use nn::init::{FanInOut, NonLinearity, NormalOrUniform};
    let ws_init =
        nn::Init::Kaiming { dist: NormalOrUniform::Normal, fan: FanInOut::FanOut, non_linearity: NonLinearity::ReLU };
    nn::conv2d(p, c_in, c_out, ksize, nn::ConvConfig { stride, padding, bias: false, ws_init, ..Default::default() })
}

fn batch_norm(p: nn::Path, channels: i64) -> nn::BatchNorm {
    // torchvision starts with weight 1 and bias 0 (tch's default weight is uniform).
    let config = nn::BatchNormConfig { eps: BN_EPS, ws_init: nn::Init::Const(1.0), ..Default::default() };
    nn::batch_norm2d(p, channels, config)
}

#[derive(Debug)]
struct BasicBlock {
    conv1: nn::Conv2D,
    bn1: nn::BatchNorm,
    conv2: nn::Conv2D,
    bn2: nn::BatchNorm,
    downsample: Option<(nn::Conv2D, nn::BatchNorm)>,
}

impl BasicBlock {
    fn new(p: nn::Path, c_in: i64, c_out: i64, stride: i64) -> Self {
        let downsample = (stride != 1 || c_in != c_out).then(|| {
            let d = &p / "downsample";
            (conv2d(&d / "0", c_in, c_out, 1, stride, 0), batch_norm(&d / "1", c_out))
        });
        Self {
            conv1: conv2d(&p / "conv1", c_in, c_out, 3, stride, 1),
            bn1: batch_norm(&p / "bn1", c_out),
            conv2: conv2d(&p / "conv2", c_out, c_out, 3, 1, 1),
            bn2: batch_norm(&p / "bn2", c_out),
            downsample,
        }
    }

    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let ys = xs.apply(&self.conv1).apply_t(&self.bn1, train).relu().apply(&self.conv2).apply_t(&self.bn2, train);
        let shortcut = match &self.downsample {
            Some((conv, bn)) => xs.apply(conv).apply_t(bn, train),
            None => xs.shallow_clone(),
        };
        (shortcut + ys).relu()
    }
}

/// ResNet-18 + `hash` linear layer + tanh. The variables live in the `VarStore` the network was
/// built on; the struct only holds handles to them.
#[derive(Debug)]
pub struct HashNet {
    config: HashNetConfig,
    conv1: nn::Conv2D,
    bn1: nn::BatchNorm,
    blocks: Vec<BasicBlock>,
    hash: nn::Linear,
    /// The arithmetic of training forward passes (evaluation is always fp32).
    training_precision: Precision,
}

impl HashNet {
    /// Creates the network's variables under `vs` (normally the root of a fresh `VarStore`).
    pub fn new(vs: &nn::Path, config: &HashNetConfig) -> Result<Self, ModelError> {
        config.validate()?;
        let (k, stride, padding) = config.stem.conv1_geometry();
        let conv1 = conv2d(vs / "conv1", 3, STAGE_CHANNELS[0], k, stride, padding);
        let bn1 = batch_norm(vs / "bn1", STAGE_CHANNELS[0]);
        let mut blocks = Vec::with_capacity(STAGE_CHANNELS.len() * BLOCKS_PER_STAGE);
        let mut c_in = STAGE_CHANNELS[0];
        for (stage, &c_out) in STAGE_CHANNELS.iter().enumerate() {
            let layer = vs / format!("layer{}", stage + 1);
            for block in 0..BLOCKS_PER_STAGE {
                let stride = if stage > 0 && block == 0 { 2 } else { 1 };
                blocks.push(BasicBlock::new(&layer / block, c_in, c_out, stride));
                c_in = c_out;
            }
        }
        // PyTorch's nn.Linear initialisation (kaiming uniform weight, uniform bias), tch's default.
        let hash = nn::linear(vs / "hash", FEATURES, i64::from(config.bits), Default::default());
        Ok(Self { config: config.clone(), conv1, bn1, blocks, hash, training_precision: Precision::Fp32 })
    }

    /// Trains in `precision` (resolved: fp32 or bf16) from now on. For bf16 the convolution
    /// kernels of `vs`, the store the network was built on, are re-laid channels-last; call it
    /// before the optimiser is built.
    pub fn set_training_precision(&mut self, vs: &nn::VarStore, precision: Precision) {
        if precision == Precision::Bf16 {
            precision::convolutions_channels_last(vs);
        }
        self.training_precision = precision;
    }

    pub fn config(&self) -> &HashNetConfig {
        &self.config
    }

    /// The trunk's pooled features, [N,512], for input [N,3,S,S].
    pub fn features_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let mut ys = xs.apply(&self.conv1).apply_t(&self.bn1, train).relu();
        if self.config.stem.has_max_pool() {
            ys = ys.max_pool2d([3, 3], [2, 2], [1, 1], [1, 1], false);
        }
        for block in &self.blocks {
            ys = block.forward_t(&ys, train);
        }
        ys.adaptive_avg_pool2d([1, 1]).flatten(1, -1)
    }

    /// The hash layer and tanh on trunk features [N,512] -> [N,bits] (the frozen-trunk mode
    /// trains only this).
    pub fn hash_head(&self, features: &Tensor) -> Tensor {
        features.apply(&self.hash).tanh()
    }

    /// The relaxed codes in (-1, 1), [N,bits]; bit i of the binary code is `output i > 0`.
    pub fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let features = match (train, self.training_precision) {
            (true, Precision::Bf16) => {
                let xs = precision::channels_last(xs);
                precision::bf16_autocast(|| self.features_t(&xs, true)).to_kind(Kind::Float)
            }
            _ => self.features_t(xs, train),
        };
        self.hash_head(&features)
    }
}

impl ModuleT for HashNet {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        HashNet::forward_t(self, xs, train)
    }
}
