//! A model's retrieval metrics on a data set: a split's items encoded as queries and evaluated
//! against an index built from the same data set. `hashsrv evaluate` and the server's evaluation
//! jobs both go through here, so they measure the same thing the same way.

use hashsrv_index::metrics::{self, EvalConfig, EvalReport, MetricsError};
use hashsrv_index::{CodeIndex, CodeMatrix, HashCode};

use crate::dataset::{Dataset, Split};
use crate::encoder::{Encoder, EncoderError};

/// Why queries could not be encoded or evaluated.
#[derive(Debug, thiserror::Error)]
pub enum EvaluationError {
    #[error(transparent)]
    Encoder(#[from] EncoderError),
    #[error(
        "the index was built from the {indexed} data set but the queries come from {queries}: evaluate with the \
         data set the index was built from"
    )]
    DatasetMismatch { indexed: String, queries: String },
    #[error(transparent)]
    Metrics(#[from] MetricsError),
}

/// Query codes (their words, code after code, as in [`CodeMatrix`]) and their labels. The
/// pixel baselines hold their database codes this way too, having no index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Queries {
    pub bits: u32,
    pub words: Vec<u64>,
    pub labels: Vec<u32>,
}

impl Queries {
    /// Queries from codes and their labels (one each).
    pub fn from_codes(bits: u32, codes: &[HashCode], labels: Vec<u32>) -> Queries {
        Queries { bits, words: codes.iter().flat_map(|c| c.words().iter().copied()).collect(), labels }
    }

    pub fn codes(&self) -> CodeMatrix<'_> {
        CodeMatrix::new(self.bits, &self.words)
    }

    /// Every metric of `config` for these queries against `index` as the database.
    pub fn evaluate(&self, index: &CodeIndex, config: &EvalConfig) -> Result<EvalReport, EvaluationError> {
        Ok(metrics::evaluate(index.codes(), index.labels(), self.codes(), &self.labels, config)?)
    }
}

/// The codes of `split` of `dataset` by `encoder`, `batch` images per run, as queries against
/// `index` (refused when the index records another data set). `progress` gets the items done
/// so far after each batch. Check the model against the index first
/// ([`Encoder::check_against_index`]): this does not.
pub fn encode_queries(
    encoder: &Encoder,
    index: &CodeIndex,
    dataset: &Dataset,
    split: Split,
    batch: usize,
    progress: impl FnMut(usize),
) -> Result<Queries, EvaluationError> {
    let kind = dataset.kind().to_string();
    if let Some(indexed) = &index.metadata().dataset
        && indexed != &kind
    {
        return Err(EvaluationError::DatasetMismatch { indexed: indexed.clone(), queries: kind });
    }
    let items = dataset.split(split);
    let codes = encoder.encode_items(items, batch, progress)?;
    Ok(Queries::from_codes(encoder.bits(), &codes, items.iter().map(|item| item.label).collect()))
}
