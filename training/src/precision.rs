//! The arithmetic of the training steps: fp32 everywhere, or the trunk's forward pass in
//! bfloat16 under libtorch's CPU autocast with the convolutions in channels-last layout.
//!
//! On CPUs with bfloat16 dot products (AVX-512 BF16) oneDNN's bfloat16 convolutions make the
//! whole training step about 1.3x as fast, as PyTorch's own autocast does
//! (`scripts/bench_train.py`; BENCHMARKS.md, "Training"). The weights, their gradients and the
//! optimiser's state stay fp32; the `hash` layer, tanh and the loss run in fp32 on the trunk's
//! features. Evaluation, the exported ONNX model and the index are fp32 whatever the training
//! precision, so codes do not depend on it.
//!
//! tch exposes only CUDA's autocast switch, so `cpp/cpu_autocast.cpp` (built by `build.rs`)
//! bridges the two libtorch calls that turn CPU autocast on and drop its cache of weight copies.

use serde::{Deserialize, Serialize};
use tch::{Device, Tensor, nn};

unsafe extern "C" {
    fn hashsrv_cpu_autocast(enabled: bool) -> bool;
    fn hashsrv_autocast_clear_cache();
}

/// `--precision`: the arithmetic of the training steps.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// bf16 on a CPU with bfloat16 dot products (AVX-512 BF16), fp32 otherwise.
    #[default]
    Auto,
    /// fp32 everywhere.
    Fp32,
    /// The trunk's forward pass in bfloat16 (CPU only; slow on CPUs without bf16 instructions).
    Bf16,
}

impl Precision {
    /// The precision a run on `device` uses: never `Auto`.
    pub fn resolve(self, device: Device) -> Result<Precision, String> {
        match (self, device) {
            (Precision::Fp32, _) => Ok(Precision::Fp32),
            (Precision::Auto, Device::Cpu) if cpu_has_bf16_dot_products() => Ok(Precision::Bf16),
            (Precision::Auto, _) => Ok(Precision::Fp32),
            (Precision::Bf16, Device::Cpu) => Ok(Precision::Bf16),
            (Precision::Bf16, other) => {
                Err(format!("--precision bf16 is implemented for the CPU only, not {other:?}; use fp32 or auto"))
            }
        }
    }
}

/// Whether the CPU multiplies bfloat16 in hardware, which is what makes autocast pay off.
pub fn cpu_has_bf16_dot_products() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        // CPUs with AMX have AVX-512 BF16 too.
        std::arch::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Runs `forward` with CPU autocast to bfloat16 on this thread, then turns it off and drops the
/// cached bfloat16 copies of the weights (the next optimiser step makes them stale).
pub fn bf16_autocast<T>(forward: impl FnOnce() -> T) -> T {
    struct Off;
    impl Drop for Off {
        fn drop(&mut self) {
            // SAFETY: both calls only change libtorch's thread-local autocast state; they take no
            // pointers.
            unsafe {
                hashsrv_cpu_autocast(false);
                hashsrv_autocast_clear_cache();
            }
        }
    }
    // SAFETY: as above.
    let switched = unsafe { hashsrv_cpu_autocast(true) };
    assert!(switched, "libtorch refused to turn on CPU autocast");
    let _off = Off;
    forward()
}

/// `xs` [N,C,H,W] with channels-last strides (the same values), the layout oneDNN's bfloat16
/// convolutions run fastest on.
pub fn channels_last(xs: &Tensor) -> Tensor {
    xs.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2])
}

/// Re-lays every 4-d variable (the convolution kernels) of `vs` out channels-last, in place:
/// the network, the checkpoints and the optimiser see the same tensors, only their strides change.
pub fn convolutions_channels_last(vs: &nn::VarStore) {
    tch::no_grad(|| {
        for (_, mut var) in vs.variables() {
            if var.dim() == 4 {
                let relaid = channels_last(&var);
                var.set_data(&relaid);
            }
        }
    });
}
