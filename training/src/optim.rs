//! The optimisers: the seed's SGD (libtorch's) and AdamW as one fused pass over each weight.
//!
//! libtorch's C++ AdamW (what `tch::nn::AdamW` builds) runs nine element-wise operations per
//! weight tensor, each a pass over memory, plus a temporary: on ResNet-18's 11 M weights that was
//! a fifth of a CPU training step, most of it memory traffic. [`AdamW`] reads the weight, its
//! gradient and the two moments once and writes them once, like PyTorch's `fused=True`; the
//! arithmetic is PyTorch's AdamW (decoupled weight decay, bias-corrected moments). On a GPU,
//! where the weights are not in host memory, AdamW stays libtorch's.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use tch::nn::{self, OptimizerConfig};
use tch::{Device, Kind, Tensor};

/// `--optimizer`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Optimizer {
    /// The seed's: SGD with `momentum` and L2 weight decay.
    #[default]
    Sgd,
    /// AdamW (betas 0.9 / 0.999, decoupled weight decay): adapts each weight's step to its
    /// gradient's scale, which a network trained from scratch in a few epochs needs.
    Adamw,
}

impl Optimizer {
    /// The optimiser over the trainable variables of `vs` at rate `lr`.
    pub fn build(self, vs: &nn::VarStore, lr: f64, momentum: f64, weight_decay: f64) -> Result<Optim, tch::TchError> {
        Ok(match self {
            Optimizer::Sgd => {
                Optim::Libtorch(nn::Sgd { momentum, dampening: 0.0, wd: weight_decay, nesterov: false }.build(vs, lr)?)
            }
            Optimizer::Adamw if vs.device() == Device::Cpu => Optim::FusedAdamW(AdamW::new(vs, lr, weight_decay)),
            Optimizer::Adamw => Optim::Libtorch(
                nn::AdamW {
                    beta1: BETA1.into(),
                    beta2: BETA2.into(),
                    wd: weight_decay,
                    eps: EPS.into(),
                    amsgrad: false,
                }
                .build(vs, lr)?,
            ),
        })
    }
}

/// A built optimiser.
#[derive(Debug)]
pub enum Optim {
    /// libtorch's: SGD, and AdamW off the CPU.
    Libtorch(nn::Optimizer),
    FusedAdamW(AdamW),
}

impl Optim {
    pub fn set_lr(&mut self, lr: f64) {
        match self {
            Optim::Libtorch(optimizer) => optimizer.set_lr(lr),
            Optim::FusedAdamW(adamw) => adamw.lr = lr,
        }
    }

    /// Zeroes the gradients, back-propagates `loss` and updates the weights.
    pub fn backward_step(&mut self, loss: &Tensor) {
        match self {
            Optim::Libtorch(optimizer) => optimizer.backward_step(loss),
            Optim::FusedAdamW(adamw) => {
                adamw.zero_grad();
                loss.backward();
                adamw.step();
            }
        }
    }
}

const BETA1: f32 = 0.9;
const BETA2: f32 = 0.999;
const EPS: f32 = 1e-8;

/// Weights per task of the parallel update: large enough that a task is not dominated by
/// scheduling, small enough that both cores get work on the small tensors.
const CHUNK: usize = 1 << 14;

/// AdamW over fp32 CPU weights, fused (see the module docs).
#[derive(Debug)]
pub struct AdamW {
    /// Each weight with its first and second moments (same shape and strides).
    weights: Vec<(Tensor, Tensor, Tensor)>,
    pub lr: f64,
    weight_decay: f64,
    steps: i32,
}

impl AdamW {
    pub fn new(vs: &nn::VarStore, lr: f64, weight_decay: f64) -> Self {
        let weights = vs
            .trainable_variables()
            .into_iter()
            .map(|w| {
                assert!(
                    w.device() == Device::Cpu && w.kind() == Kind::Float && is_dense(&w),
                    "the fused AdamW updates dense fp32 CPU weights only"
                );
                // zeros_like keeps the weight's strides, so moment i and weight i share an offset.
                let (m, v) = (w.zeros_like(), w.zeros_like());
                (w, m, v)
            })
            .collect();
        Self { weights, lr, weight_decay, steps: 0 }
    }

    pub fn zero_grad(&mut self) {
        for (w, _, _) in &mut self.weights {
            let mut grad = w.grad();
            if grad.defined() {
                let _ = grad.zero_();
            }
        }
    }

    /// One update of every weight that has a gradient (frozen ones have none).
    pub fn step(&mut self) {
        self.steps += 1;
        let lr = self.lr as f32;
        let decay = 1.0 - lr * self.weight_decay as f32;
        let step_size = lr / (1.0 - BETA1.powi(self.steps));
        let correction2_sqrt = (1.0 - BETA2.powi(self.steps)).sqrt();
        for (w, m, v) in &self.weights {
            let grad = w.grad();
            if !grad.defined() {
                continue;
            }
            // Autograd gives a dense weight a gradient of the same layout; copy if it did not.
            let grad = if grad.stride() == w.stride() {
                grad
            } else {
                let mut relaid = w.empty_like();
                relaid.copy_(&grad);
                relaid
            };
            let n = w.numel();
            // SAFETY: w, m, v and grad are distinct dense fp32 CPU tensors of n elements with the
            // same strides (checked above and in `new`), so each pointer addresses exactly n
            // floats and element i of one is element i of the others. Nothing else touches them
            // during the update: the backward pass is over and the optimiser owns m and v.
            let (w, m, v, g) = unsafe {
                (
                    std::slice::from_raw_parts_mut(w.data_ptr().cast::<f32>(), n),
                    std::slice::from_raw_parts_mut(m.data_ptr().cast::<f32>(), n),
                    std::slice::from_raw_parts_mut(v.data_ptr().cast::<f32>(), n),
                    std::slice::from_raw_parts(grad.data_ptr().cast::<f32>(), n),
                )
            };
            w.par_chunks_mut(CHUNK)
                .zip(m.par_chunks_mut(CHUNK))
                .zip(v.par_chunks_mut(CHUNK))
                .zip(g.par_chunks(CHUNK))
                .for_each(|(((w, m), v), g)| {
                    for i in 0..w.len() {
                        m[i] = BETA1 * m[i] + (1.0 - BETA1) * g[i];
                        v[i] = BETA2 * v[i] + (1.0 - BETA2) * g[i] * g[i];
                        let denom = v[i].sqrt() / correction2_sqrt + EPS;
                        w[i] = w[i] * decay - step_size * m[i] / denom;
                    }
                });
        }
    }
}

/// Whether `t`'s elements fill its memory exactly once in some order of its dimensions
/// (row-major, channels-last, ...), so it can be updated as a flat slice.
fn is_dense(t: &Tensor) -> bool {
    let mut dims: Vec<(i64, i64)> = t.size().into_iter().zip(t.stride()).filter(|&(size, _)| size != 1).collect();
    dims.sort_by_key(|&(_, stride)| stride);
    let mut expected = 1;
    for (size, stride) in dims {
        if stride != expected {
            return false;
        }
        expected *= size;
    }
    true
}
