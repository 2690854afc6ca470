//! `hashsrv-train` as a library: the hash network (ResNet-18 + FC + tanh) and its ONNX export,
//! the triplet loss, the P x K sampler, the parallel loader, checkpoints, the training run, its
//! frozen-trunk mode and its time budget.
//! The binary (`main.rs`) is only the command line.

pub mod budget;
pub mod checkpoint;
pub mod frozen;
pub mod loader;
pub mod loss;
pub mod model;
pub mod onnx;
pub mod optim;
pub mod precision;
pub mod pretrained;
pub mod sampler;
pub mod train;
