//! Checkpoints in `<out>/checkpoints/`: the network's variables as safetensors (`VarStore::save`)
//! beside a JSON of the run's configuration and progress, both written atomically (temporary
//! file, rename) so an interrupted run never leaves a torn checkpoint.
//!
//! Two are kept: `last` (written after every epoch; `--resume` continues from it) and `best`
//! (the best validation mAP so far; exported at the end). The optimiser's momentum is not saved:
//! a resumed run restarts it from zero, which costs a few steps of warm-up and nothing else.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tch::Tensor;
use tch::nn::VarStore;

/// Why a checkpoint could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: not a checkpoint description ({source}); delete the checkpoints folder to start over", path.display())]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{}: {source}; the file is damaged or from another network configuration", path.display())]
    Weights {
        path: PathBuf,
        #[source]
        source: tch::TchError,
    },
}

/// What is written beside the weights.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CheckpointInfo {
    /// Epochs completed when the checkpoint was written.
    pub epoch: u64,
    /// The run's configuration (see `train::TrainConfig`).
    pub config: serde_json::Value,
    /// Validation mAP at this epoch, when it was evaluated.
    pub val_map: Option<f64>,
    /// The best validation mAP so far and its epoch.
    pub best: Option<(u64, f64)>,
}

/// The checkpoints folder of a run.
#[derive(Clone, Debug)]
pub struct Checkpoints {
    dir: PathBuf,
}

impl Checkpoints {
    /// The folder `<out>/checkpoints`, created if needed.
    pub fn create(out: &Path) -> Result<Self, CheckpointError> {
        let dir = out.join("checkpoints");
        std::fs::create_dir_all(&dir).map_err(|source| CheckpointError::Io { path: dir.clone(), source })?;
        Ok(Self { dir })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `<dir>/<name>.safetensors`.
    pub fn weights_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.safetensors"))
    }

    /// `<dir>/<name>.json`.
    pub fn info_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.json"))
    }

    /// Writes the weights, then the description (a description always has its weights).
    pub fn save(&self, name: &str, vs: &VarStore, info: &CheckpointInfo) -> Result<(), CheckpointError> {
        let weights = self.weights_path(name);
        let tmp = self.dir.join(format!(".{name}.tmp.safetensors"));
        // safetensors holds row-major tensors only; bf16 training keeps its kernels channels-last.
        let contiguous: Vec<(String, Tensor)> =
            vs.variables().into_iter().map(|(name, var)| (name, var.contiguous())).collect();
        Tensor::write_safetensors(&contiguous, &tmp)
            .map_err(|source| CheckpointError::Weights { path: tmp.clone(), source })?;
        std::fs::rename(&tmp, &weights).map_err(|source| CheckpointError::Io { path: weights.clone(), source })?;
        let json = serde_json::to_vec_pretty(info)
            .map_err(|source| CheckpointError::Json { path: self.info_path(name), source })?;
        write_atomically(&self.info_path(name), &json)
    }

    /// The description of checkpoint `name`, `None` when there is none.
    pub fn info(&self, name: &str) -> Result<Option<CheckpointInfo>, CheckpointError> {
        let path = self.info_path(name);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(CheckpointError::Io { path, source }),
        };
        serde_json::from_slice(&bytes).map(Some).map_err(|source| CheckpointError::Json { path, source })
    }

    /// Loads checkpoint `name`'s weights into `vs` (every variable of `vs` must be in the file).
    pub fn load_weights(&self, name: &str, vs: &mut VarStore) -> Result<(), CheckpointError> {
        let path = self.weights_path(name);
        if !path.is_file() {
            return Err(CheckpointError::Io {
                path,
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "checkpoint weights missing"),
            });
        }
        vs.load(&path).map_err(|source| CheckpointError::Weights { path, source })
    }
}

/// Writes `bytes` to `path` through a temporary file in the same folder and a rename.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), CheckpointError> {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    std::fs::write(&tmp, bytes)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|source| CheckpointError::Io { path: path.to_path_buf(), source })
}
