//! TEMPORARY stand-in for `hashsrv_index::{CodeIndex, IndexWriter, ...}` (branch `index`, not
//! merged yet) with the agreed interface, so the server compiles and is tested meanwhile.
//! Removed as soon as the index crate lands: do not use elsewhere.
#![allow(dead_code, missing_docs)]

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::index::code::words_for_bits;
use crate::index::{CodeMatrix, hamming};

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct IndexError(String);

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct IndexMetadata {
    pub model_sha256: Option<String>,
    pub dataset: Option<String>,
    pub class_names: Vec<String>,
    pub extra: serde_json::Map<String, serde_json::Value>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct CodeIndex {
    bits: u32,
    words: Vec<u64>,
    labels: Vec<u32>,
    ids: Vec<u64>,
    paths: Vec<String>,
    metadata: IndexMetadata,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SearchMethod {
    Auto,
    Linear,
    MultiIndex,
}

#[derive(Clone, Debug)]
pub struct SearchOptions {
    pub k: usize,
    pub radius: Option<u32>,
    pub method: SearchMethod,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hit {
    pub position: usize,
    pub distance: u32,
}

#[derive(Clone, Debug)]
pub struct SearchResult {
    pub hits: Vec<Hit>,
    pub method: SearchMethod,
}

#[derive(Debug)]
pub struct IndexWriter {
    path: std::path::PathBuf,
    index: CodeIndex,
}

impl IndexWriter {
    pub fn create(path: &Path, bits: u32, metadata: IndexMetadata) -> Result<IndexWriter, IndexError> {
        let index = CodeIndex { bits, words: vec![], labels: vec![], ids: vec![], paths: vec![], metadata };
        Ok(IndexWriter { path: path.to_path_buf(), index })
    }

    pub fn push(&mut self, code: &[u64], label: u32, id: u64, path: &str) -> Result<(), IndexError> {
        if code.len() != words_for_bits(self.index.bits) {
            return Err(IndexError("wrong code length".into()));
        }
        self.index.words.extend_from_slice(code);
        self.index.labels.push(label);
        self.index.ids.push(id);
        self.index.paths.push(path.to_string());
        Ok(())
    }

    pub fn finish(self) -> Result<(), IndexError> {
        let text = serde_json::to_vec(&self.index).map_err(|e| IndexError(e.to_string()))?;
        std::fs::write(&self.path, text).map_err(|e| IndexError(e.to_string()))
    }
}

impl CodeIndex {
    pub fn open(path: &Path) -> Result<CodeIndex, IndexError> {
        let bytes = std::fs::read(path).map_err(|e| IndexError(e.to_string()))?;
        serde_json::from_slice(&bytes).map_err(|e| IndexError(e.to_string()))
    }

    pub fn bits(&self) -> u32 {
        self.bits
    }

    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    pub fn codes(&self) -> CodeMatrix<'_> {
        CodeMatrix::new(self.bits, &self.words)
    }

    pub fn labels(&self) -> &[u32] {
        &self.labels
    }

    pub fn id(&self, i: usize) -> u64 {
        self.ids[i]
    }

    pub fn path(&self, i: usize) -> &str {
        &self.paths[i]
    }

    pub fn metadata(&self) -> &IndexMetadata {
        &self.metadata
    }

    pub fn search(&self, query: &[u64], opts: &SearchOptions) -> SearchResult {
        let w = words_for_bits(self.bits);
        let mut hits: Vec<Hit> = self
            .words
            .chunks(w)
            .enumerate()
            .map(|(position, code)| Hit { position, distance: hamming::distance(code, query) })
            .filter(|h| opts.radius.is_none_or(|r| h.distance <= r))
            .collect();
        hits.sort_by_key(|h| (h.distance, h.position));
        hits.truncate(opts.k);
        SearchResult { hits, method: SearchMethod::Linear }
    }
}
