//! `hashsrv-train` as a library: the hash network (ResNet-18 + FC + tanh) and its ONNX export,
//! the triplet loss, the P x K sampler, the parallel loader, checkpoints and the training run.
//! The binary (`main.rs`) is only the command line.

pub mod checkpoint;
pub mod loader;
pub mod loss;
pub mod model;
pub mod onnx;
pub mod pretrained;
pub mod sampler;
pub mod train;
