//! `hashsrv-index`: binary hash codes, their memory-mapped index file, exact Hamming search and
//! the retrieval metrics that need only codes and labels. No ML dependencies: anyone can read an
//! index and evaluate codes without ONNX Runtime or libtorch.

pub mod code;
pub mod error;
pub mod format;
pub mod hamming;
mod kernel;
pub mod metrics;
pub mod mih;
pub mod npy;
pub mod reader;
pub mod search;
pub mod writer;

pub use code::{CodeError, CodeMatrix, HashCode};
pub use error::IndexError;
pub use format::IndexMetadata;
pub use reader::CodeIndex;
pub use search::{Hit, SearchMethod, SearchOptions, SearchResult};
pub use writer::IndexWriter;
