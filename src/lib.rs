//! `hashsrv`: image retrieval on a learned deep hash model.
//!
//! This library holds everything the serving binary needs and the training crate shares:
//! the data sets and their splits, image preprocessing, the ONNX Runtime encoder, and the HTTP
//! server. It never links libtorch, so a server deploys without the torch libraries.

pub mod baselines;
pub mod cli;
pub mod dataset;
pub mod device;
pub mod encoder;
pub mod evaluation;
pub mod onnxruntime;
pub mod preprocess;
pub mod report;
pub mod server;

pub use hashsrv_index as index;
