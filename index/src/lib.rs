//! `hashsrv-index`: binary hash codes, their memory-mapped index file, exact Hamming search and
//! the retrieval metrics that need only codes and labels. No ML dependencies: anyone can read an
//! index and evaluate codes without ONNX Runtime or libtorch.

pub mod code;
pub mod hamming;
pub mod metrics;
pub mod npy;

pub use code::{CodeError, CodeMatrix, HashCode};
