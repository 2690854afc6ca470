//! Pretrained trunk weights from a local file: torchvision's `resnet18-f37072fd.pth` (a
//! `torch.save` zip: `<name>/data.pkl` + `<name>/data/<key>` stored records), a
//! `.safetensors` file with the same keys, or a previous run's `checkpoints/best.safetensors`
//! (the same names plus `hash.*`).
//!
//! `VarStore::load` cannot read a `torch.save` state dict (it expects TorchScript), so the zip
//! and the pickle are read here (see [`pickle`]). torchvision's `fc.*` and batch norm's
//! `num_batches_tracked` are skipped; for the `Small` stem, whose `conv1` is 3x3, an ImageNet
//! `conv1` (7x7) and its `bn1` are skipped and keep their fresh initialisation. A checkpoint's
//! `hash` layer is loaded when it has this network's code length and skipped otherwise.

pub mod pickle;

use std::io::Read;
use std::path::{Path, PathBuf};

use pickle::{PickleError, TensorRef, Value};
use tch::{Kind, Tensor, nn};

use crate::model::{HashNetConfig, Stem};

/// Why the weights could not be read or loaded.
#[derive(Debug, thiserror::Error)]
pub enum PretrainedError {
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path} is neither a torch.save zip (.pth) nor a safetensors file")]
    UnknownFormat { path: PathBuf },
    #[error(
        "{path} uses torch.save's legacy (pre-1.6) format; re-save it with \
         `torch.save(torch.load(path), new_path)` in a current torch, or convert it to safetensors"
    )]
    LegacyFormat { path: PathBuf },
    #[error("{path}: {what}")]
    Archive { path: PathBuf, what: String },
    #[error("{path}: data.pkl: {source}")]
    Pickle { path: PathBuf, source: PickleError },
    #[error("{path}: {what}")]
    Tensor { path: PathBuf, what: String },
    #[error(
        "{path}: `{name}` has shape {found:?} but the network's is {expected:?}; \
         the file must be a torchvision resnet18 state dict or a hashsrv checkpoint"
    )]
    Shape { path: PathBuf, name: String, expected: Vec<i64>, found: Vec<i64> },
    #[error(
        "{path}: unexpected key `{name}`: the file must be a torchvision resnet18 state dict or a hashsrv checkpoint"
    )]
    UnexpectedKey { path: PathBuf, name: String },
    #[error(
        "{path} lacks {missing} trunk weights (e.g. `{first}`): the file must be a complete resnet18 state dict or hashsrv checkpoint"
    )]
    MissingKeys { path: PathBuf, missing: usize, first: String },
}

/// What [`load_pretrained`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LoadReport {
    /// Network variables overwritten from the file.
    pub loaded: Vec<String>,
    /// File entries not used, with the reason.
    pub skipped: Vec<(String, String)>,
}

/// Reads every tensor of a `.pth` (torch.save zip) or `.safetensors` file, on the CPU, in the
/// file's order (safetensors: sorted by name).
pub fn read_state_dict(path: &Path) -> Result<Vec<(String, Tensor)>, PretrainedError> {
    let io = |source| PretrainedError::Io { path: path.to_path_buf(), source };
    let mut magic = [0u8; 9];
    let mut file = std::fs::File::open(path).map_err(io)?;
    let n = file.read(&mut magic).map_err(io)?;
    match &magic[..n] {
        [b'P', b'K', 3, 4, ..] => read_torch_zip(path),
        // safetensors: u64 header length, then the JSON header.
        [_, _, _, _, _, _, _, _, b'{'] => Tensor::read_safetensors(path)
            .map_err(|e| PretrainedError::Tensor { path: path.to_path_buf(), what: e.to_string() }),
        // The legacy format is a bare pickle starting with torch's magic number (a LONG1).
        [0x80, 0x02, 0x8a, 0x0a, ..] => Err(PretrainedError::LegacyFormat { path: path.to_path_buf() }),
        _ => Err(PretrainedError::UnknownFormat { path: path.to_path_buf() }),
    }
}

/// Copies the weights in `path` into the network variables of `vs` (built by `HashNet::new`
/// with `config`): the whole trunk (see the module docs for the small stem), and the `hash`
/// layer only when the file has one of the same code length.
pub fn load_pretrained(
    vs: &mut nn::VarStore,
    config: &HashNetConfig,
    path: &Path,
) -> Result<LoadReport, PretrainedError> {
    let tensors = read_state_dict(path)?;
    let mut vars = vs.variables();
    let same_shape = |name: &str, tensors: &[(String, Tensor)]| {
        let file = tensors.iter().find(|(n, _)| n == name).map(|(_, t)| t.size());
        file.is_some() && file == vars.get(name).map(Tensor::size)
    };
    let skip_stem = config.stem == Stem::Small && !same_shape("conv1.weight", &tensors);
    let skip_hash = !same_shape("hash.weight", &tensors) || !same_shape("hash.bias", &tensors);
    let mut report = LoadReport::default();
    let mut updates = Vec::new();
    for (name, tensor) in tensors {
        let skip = if name.starts_with("fc.") {
            Some("torchvision's classifier; the hash layer replaces it")
        } else if name.ends_with(".num_batches_tracked") {
            Some("batch norm step counter, unused with momentum 0.1")
        } else if skip_stem && (name.starts_with("conv1.") || name.starts_with("bn1.")) {
            Some("the small stem's 3x3 conv1 (and its batch norm) cannot use the 7x7 ImageNet stem")
        } else if skip_hash && name.starts_with("hash.") {
            Some("the file's hash layer has another code length; this run trains a fresh one")
        } else {
            None
        };
        if let Some(reason) = skip {
            report.skipped.push((name, reason.to_string()));
            continue;
        }
        let Some(var) = vars.remove(&name) else {
            return Err(PretrainedError::UnexpectedKey { path: path.to_path_buf(), name });
        };
        if var.size() != tensor.size() {
            return Err(PretrainedError::Shape {
                path: path.to_path_buf(),
                name,
                expected: var.size(),
                found: tensor.size(),
            });
        }
        updates.push((name, var, tensor));
    }
    let mut missing: Vec<String> = vars
        .into_keys()
        .filter(|k| !k.starts_with("hash.") && !(skip_stem && (k.starts_with("conv1.") || k.starts_with("bn1."))))
        .collect();
    if !missing.is_empty() {
        missing.sort();
        return Err(PretrainedError::MissingKeys {
            path: path.to_path_buf(),
            missing: missing.len(),
            first: missing.swap_remove(0),
        });
    }
    // Only copy once the whole file has been checked, so a bad file leaves the network as it was.
    tch::no_grad(|| -> Result<(), PretrainedError> {
        for (name, mut var, tensor) in updates {
            let source = tensor.to_kind(var.kind()).to_device(var.device());
            var.f_copy_(&source)
                .map_err(|e| PretrainedError::Tensor { path: path.to_path_buf(), what: e.to_string() })?;
            report.loaded.push(name);
        }
        Ok(())
    })?;
    Ok(report)
}

fn read_torch_zip(path: &Path) -> Result<Vec<(String, Tensor)>, PretrainedError> {
    let archive_err = |what: String| PretrainedError::Archive { path: path.to_path_buf(), what };
    let file = std::fs::File::open(path).map_err(|source| PretrainedError::Io { path: path.to_path_buf(), source })?;
    let mut zip = zip::ZipArchive::new(std::io::BufReader::new(file))
        .map_err(|e| archive_err(format!("not a readable zip: {e}")))?;
    // torch.save names the top folder after the file (`resnet18-f37072fd/`) or `archive/`.
    let pkl = zip
        .file_names()
        .find(|n| n.ends_with("/data.pkl") && n.matches('/').count() == 1)
        .ok_or_else(|| archive_err("no <name>/data.pkl record: not a torch.save file".into()))?
        .to_string();
    let prefix = pkl.trim_end_matches("data.pkl").to_string();
    let mut record = |name: &str| -> Result<Vec<u8>, PretrainedError> {
        let mut entry = zip.by_name(name).map_err(|e| archive_err(format!("record {name}: {e}")))?;
        let mut bytes = Vec::with_capacity(usize::try_from(entry.size()).unwrap_or(0).min(1 << 30));
        entry.read_to_end(&mut bytes).map_err(|e| archive_err(format!("record {name}: {e}")))?;
        Ok(bytes)
    };
    if let Ok(order) = record(&format!("{prefix}byteorder"))
        && order != b"little"
    {
        return Err(archive_err(format!("byte order {:?} is not supported", String::from_utf8_lossy(&order))));
    }
    let root = pickle::unpickle(&record(&pkl)?)
        .map_err(|source| PretrainedError::Pickle { path: path.to_path_buf(), source })?;
    let Value::Dict(entries) = root else {
        return Err(archive_err("data.pkl does not hold a dict: save `model.state_dict()`".into()));
    };
    let mut out = Vec::with_capacity(entries.len());
    for (key, value) in entries {
        let (Value::Str(name), Value::Tensor(t)) = (key, value) else {
            return Err(archive_err(
                "the dict is not a state dict of name -> tensor: save `model.state_dict()`".into(),
            ));
        };
        let bytes = record(&format!("{prefix}data/{}", t.key))?;
        let tensor = materialise(&t, &bytes)
            .map_err(|what| PretrainedError::Tensor { path: path.to_path_buf(), what: format!("`{name}`: {what}") })?;
        out.push((name, tensor));
    }
    Ok(out)
}

fn kind_of(storage_type: &str) -> Option<(Kind, usize)> {
    Some(match storage_type {
        "FloatStorage" => (Kind::Float, 4),
        "DoubleStorage" => (Kind::Double, 8),
        "HalfStorage" => (Kind::Half, 2),
        "BFloat16Storage" => (Kind::BFloat16, 2),
        "LongStorage" => (Kind::Int64, 8),
        "IntStorage" => (Kind::Int, 4),
        "ShortStorage" => (Kind::Int16, 2),
        "CharStorage" => (Kind::Int8, 1),
        "ByteStorage" => (Kind::Uint8, 1),
        "BoolStorage" => (Kind::Bool, 1),
        _ => return None,
    })
}

/// The tensor `t` describes, as a contiguous copy of its view into the storage `bytes`.
fn materialise(t: &TensorRef, bytes: &[u8]) -> Result<Tensor, String> {
    let (kind, elem) =
        kind_of(&t.storage_type).ok_or_else(|| format!("unsupported storage type {}", t.storage_type))?;
    if !bytes.len().is_multiple_of(elem) {
        return Err(format!("storage {} holds {} bytes, not whole {elem}-byte elements", t.key, bytes.len()));
    }
    let storage_len = (bytes.len() / elem) as i64;
    if t.size.len() != t.stride.len() || t.size.iter().chain(&t.stride).any(|&v| v < 0) || t.offset < 0 {
        return Err(format!("invalid size {:?} / stride {:?} / offset {}", t.size, t.stride, t.offset));
    }
    // The last element the view touches must lie inside the storage.
    if !t.size.contains(&0) {
        let last =
            t.size.iter().zip(&t.stride).try_fold(t.offset, |acc, (&n, &s)| acc.checked_add((n - 1).checked_mul(s)?));
        if last.is_none_or(|last| last >= storage_len) {
            return Err(format!("the view {:?} at offset {} runs past its storage of {storage_len}", t.size, t.offset));
        }
    }
    let storage = Tensor::f_from_data_size(bytes, &[storage_len], kind).map_err(|e| e.to_string())?;
    storage.f_as_strided(&t.size, &t.stride, Some(t.offset)).and_then(|v| v.f_contiguous()).map_err(|e| e.to_string())
}
