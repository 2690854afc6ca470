//! The ONNX Runtime encoder: loads an exported hash model, checks it against the model contract
//! (input `images` f32 `[N,3,S,S]`, output `outputs` f32 `[N,bits]`, `hashsrv.*` metadata) and
//! turns preprocessed tensors or decoded images into [`HashCode`]s.
//!
//! The model's identity is the SHA-256 of the `.onnx` file bytes; [`Encoder::check_against`]
//! compares it (and the code length) with what an index was built with.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use image::DynamicImage;
use ort::ep::ExecutionProvider;
use ort::session::Session;
use ort::value::{TensorElementType, TensorRef, ValueType};
use rayon::prelude::*;
use sha2::{Digest, Sha256};

use crate::dataset::{DatasetError, Item};
pub use crate::device::Device;
use crate::index::code::{CodeError, HashCode, check_bits};
use crate::onnxruntime::RuntimeError;
use crate::preprocess::{Preprocess, PreprocessError};

/// Name of the model's single input.
pub const INPUT_NAME: &str = "images";
/// Name of the model's output (tanh activations, one per bit).
pub const OUTPUT_NAME: &str = "outputs";

/// How to open an [`Encoder`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EncoderOptions {
    pub device: Device,
    /// ONNX Runtime intra-op threads; `None` lets ONNX Runtime choose (one per core).
    pub intra_threads: Option<usize>,
    /// Whether ONNX Runtime's intra-op threads spin between runs instead of sleeping; `None`
    /// keeps its default (they spin). Spinning saves a wake-up per run but holds a core that a
    /// server's own decoding and HTTP work could use.
    pub intra_spinning: Option<bool>,
}

/// What the encoder knows about its model.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelInfo {
    pub path: PathBuf,
    /// Code length: the width of `outputs`.
    pub bits: u32,
    /// The preprocessing the model was trained with (`hashsrv.preprocess`).
    pub preprocess: Preprocess,
    /// `hashsrv.dataset`, if present.
    pub dataset: Option<String>,
    /// `hashsrv.class_names`, empty if absent.
    pub class_names: Vec<String>,
    /// `hashsrv.model_config` as JSON, if present.
    pub model_config: Option<serde_json::Value>,
    /// SHA-256 (lower-case hex) of the model file: its identity.
    pub sha256: String,
    /// The execution provider the session runs on, e.g. `CPUExecutionProvider`.
    pub provider: String,
}

/// Everything that can go wrong loading or running a model.
#[derive(Debug, thiserror::Error)]
pub enum EncoderError {
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error("cannot read the model {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("ONNX Runtime cannot load the model {}: {message}", path.display())]
    Load { path: PathBuf, message: String },
    #[error(
        "{} does not follow the hashsrv model contract: {message}\n  \
         Export the model with `hashsrv-train export` (input `images` f32 [N,3,S,S], output `outputs` f32 [N,bits], \
         hashsrv.* metadata)",
        path.display()
    )]
    Contract { path: PathBuf, message: String },
    #[error(
        "cannot start the CUDA execution provider on device {device}: {message}\n  Use --device cpu, or install onnxruntime-gpu with a matching CUDA"
    )]
    Cuda { device: i32, message: String },
    #[error("the input batch has {got} floats, expected {n} x {per_image} (images x 3 x {crop} x {crop})")]
    BatchLength { got: usize, n: usize, per_image: usize, crop: u32 },
    #[error("inference failed: {0}")]
    Inference(String),
    #[error(transparent)]
    Preprocess(#[from] PreprocessError),
    #[error("the model's outputs are not a valid code: {0}")]
    Code(#[from] CodeError),
    #[error("{0}")]
    Mismatch(String),
    #[error(transparent)]
    Dataset(#[from] DatasetError),
    #[error("{path}: {source}")]
    ItemPreprocess {
        path: String,
        #[source]
        source: PreprocessError,
    },
}

/// A loaded model, ready to encode. Shareable across threads; runs are serialised (ONNX Runtime
/// parallelises inside a run, and batching gives it the work to do so).
#[derive(Debug)]
pub struct Encoder {
    session: Mutex<Session>,
    info: ModelInfo,
}

impl Encoder {
    /// Loads and checks a model.
    pub fn open(path: &Path, options: &EncoderOptions) -> Result<Encoder, EncoderError> {
        let bytes = std::fs::read(path).map_err(|source| EncoderError::Read { path: path.to_path_buf(), source })?;
        let sha256 = hex::encode(Sha256::digest(&bytes));
        let (session, provider) = build_session(path, &bytes, options)?;
        let info = read_contract(path, &session, sha256, provider)?;
        tracing::info!(
            model = %path.display(), bits = info.bits, provider = %info.provider, sha256 = %info.sha256,
            "model loaded"
        );
        Ok(Encoder { session: Mutex::new(session), info })
    }

    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    pub fn bits(&self) -> u32 {
        self.info.bits
    }

    pub fn preprocess(&self) -> &Preprocess {
        &self.info.preprocess
    }

    /// Raw `outputs` (row-major `n x bits`) of `n` preprocessed images laid out as `[n,3,S,S]`.
    pub fn outputs(&self, batch: &[f32], n: usize) -> Result<Vec<f32>, EncoderError> {
        let per_image = self.info.preprocess.tensor_len();
        let crop = self.info.preprocess.crop;
        if batch.len() != n * per_image {
            return Err(EncoderError::BatchLength { got: batch.len(), n, per_image, crop });
        }
        if n == 0 {
            return Ok(Vec::new());
        }
        let side = crop as usize;
        let input = TensorRef::from_array_view(([n, 3, side, side], batch))
            .map_err(|e| EncoderError::Inference(e.to_string()))?;
        // A poisoned lock only means another run panicked; the session itself is still sound.
        let mut session = self.session.lock().unwrap_or_else(|p| p.into_inner());
        let outputs =
            session.run(ort::inputs![INPUT_NAME => input]).map_err(|e| EncoderError::Inference(e.to_string()))?;
        let value = outputs
            .get(OUTPUT_NAME)
            .ok_or_else(|| EncoderError::Inference(format!("the run produced no `{OUTPUT_NAME}`")))?;
        let (shape, data) = value.try_extract_tensor::<f32>().map_err(|e| EncoderError::Inference(e.to_string()))?;
        let bits = self.info.bits as usize;
        if shape.len() != 2 || shape[0] != n as i64 || shape[1] != bits as i64 || data.len() != n * bits {
            return Err(EncoderError::Inference(format!("`{OUTPUT_NAME}` has shape {shape}, expected [{n}, {bits}]")));
        }
        Ok(data.to_vec())
    }

    /// Codes of `n` preprocessed images laid out as `[n,3,S,S]` (bit `i` = output `i` > 0).
    pub fn encode_tensor(&self, batch: &[f32], n: usize) -> Result<Vec<HashCode>, EncoderError> {
        let outputs = self.outputs(batch, n)?;
        outputs.chunks(self.info.bits as usize).map(|row| Ok(HashCode::from_outputs(row)?)).collect()
    }

    /// Preprocesses images (in parallel) into one `[n,3,S,S]` batch.
    pub fn preprocess_batch(&self, images: &[DynamicImage]) -> Result<Vec<f32>, EncoderError> {
        let per_image = self.info.preprocess.tensor_len();
        let mut batch = vec![0f32; images.len() * per_image];
        batch
            .par_chunks_mut(per_image)
            .zip(images.par_iter())
            .try_for_each(|(out, image)| self.info.preprocess.eval_into(image, out))?;
        Ok(batch)
    }

    /// Codes of decoded images: evaluation preprocessing, then one batched run.
    pub fn encode_images(&self, images: &[DynamicImage]) -> Result<Vec<HashCode>, EncoderError> {
        let batch = self.preprocess_batch(images)?;
        self.encode_tensor(&batch, images.len())
    }

    /// Codes of data set items, `batch` at a time: each batch is loaded and preprocessed in
    /// parallel on the current rayon pool (so a caller bounds the threads with
    /// `ThreadPool::install`), then run as one batch. `progress` gets the items done so far after
    /// each batch.
    pub fn encode_items(
        &self,
        items: &[Item],
        batch: usize,
        mut progress: impl FnMut(usize),
    ) -> Result<Vec<HashCode>, EncoderError> {
        let preprocess = &self.info.preprocess;
        let per_image = preprocess.tensor_len();
        let mut codes = Vec::with_capacity(items.len());
        let mut tensor = Vec::new();
        for chunk in items.chunks(batch.max(1)) {
            tensor.resize(chunk.len() * per_image, 0.0);
            chunk.par_iter().zip(tensor.par_chunks_mut(per_image)).try_for_each(|(item, out)| {
                let image = item.load()?;
                preprocess
                    .eval_into(&image, out)
                    .map_err(|source| EncoderError::ItemPreprocess { path: item.path.clone(), source })
            })?;
            codes.extend(self.encode_tensor(&tensor, chunk.len())?);
            progress(codes.len());
        }
        Ok(codes)
    }

    /// Checks this model against what an index was built with: the code lengths must be equal
    /// (always refused otherwise); the model hash must equal the index's `model_sha256`, else
    /// refused, or only warned about with `allow_mismatch`. Returns the warnings.
    pub fn check_against(
        &self,
        index_bits: u32,
        index_model_sha256: Option<&str>,
        allow_mismatch: bool,
    ) -> Result<Vec<String>, EncoderError> {
        if index_bits != self.info.bits {
            return Err(EncoderError::Mismatch(format!(
                "the model {} makes {}-bit codes but the index holds {index_bits}-bit codes; \
                 build the index with this model (`hashsrv build-index --model ...`)",
                self.info.path.display(),
                self.info.bits
            )));
        }
        let problem = match index_model_sha256 {
            Some(sha) if sha.eq_ignore_ascii_case(&self.info.sha256) => return Ok(Vec::new()),
            Some(sha) => format!(
                "the index was built with model sha256 {sha} but {} has sha256 {}: its codes would not match \
                 the queries'",
                self.info.path.display(),
                self.info.sha256
            ),
            None => format!(
                "the index records no model sha256, so it cannot be checked against {}",
                self.info.path.display()
            ),
        };
        if allow_mismatch {
            tracing::warn!("{problem} (continuing: --allow-model-mismatch)");
            Ok(vec![problem])
        } else {
            Err(EncoderError::Mismatch(format!(
                "{problem}; rebuild the index with this model, or pass --allow-model-mismatch"
            )))
        }
    }

    /// [`Encoder::check_against`] with the index's header.
    pub fn check_against_index(
        &self,
        index: &crate::index::CodeIndex,
        allow_mismatch: bool,
    ) -> Result<Vec<String>, EncoderError> {
        self.check_against(index.bits(), index.metadata().model_sha256.as_deref(), allow_mismatch)
    }
}

/// Creates the session on the requested device; returns it with the provider it runs on.
fn build_session(path: &Path, bytes: &[u8], options: &EncoderOptions) -> Result<(Session, String), EncoderError> {
    let cpu = || commit(path, bytes, options, None);
    match options.device {
        Device::Cpu => cpu(),
        Device::Cuda(device) => commit(path, bytes, options, Some(device)),
        Device::Auto => {
            if !ort::ep::CUDA::is_available().unwrap_or(false) {
                return cpu();
            }
            match commit(path, bytes, options, Some(0)) {
                Err(EncoderError::Cuda { message, .. }) => {
                    tracing::warn!("CUDA is available but did not start ({message}); running on the CPU");
                    cpu()
                }
                other => other,
            }
        }
    }
}

fn commit(
    path: &Path,
    bytes: &[u8],
    options: &EncoderOptions,
    cuda: Option<i32>,
) -> Result<(Session, String), EncoderError> {
    let load = |message: String| EncoderError::Load { path: path.to_path_buf(), message };
    let env = crate::onnxruntime::environment()?;
    let mut builder = Session::builder(env).map_err(|e| load(e.to_string()))?;
    if let Some(threads) = options.intra_threads {
        builder = builder.with_intra_threads(threads.max(1)).map_err(|e| load(e.to_string()))?;
    }
    if let Some(spinning) = options.intra_spinning {
        builder = builder.with_intra_op_spinning(spinning).map_err(|e| load(e.to_string()))?;
    }
    let provider = match cuda {
        Some(device) => {
            let ep = ort::ep::CUDA::default().with_device_id(device).build().error_on_failure();
            builder = builder
                .with_execution_providers([ep])
                .map_err(|e| EncoderError::Cuda { device, message: e.to_string() })?;
            ort::ep::CUDA::NAME
        }
        None => ort::ep::CPU::NAME,
    };
    let session = builder.commit_from_memory(bytes).map_err(|e| match cuda {
        Some(device) => EncoderError::Cuda { device, message: e.to_string() },
        None => load(e.to_string()),
    })?;
    Ok((session, provider.to_string()))
}

/// Reads and checks the contract: names, dtypes, shapes and metadata.
fn read_contract(path: &Path, session: &Session, sha256: String, provider: String) -> Result<ModelInfo, EncoderError> {
    let contract = |message: String| EncoderError::Contract { path: path.to_path_buf(), message };
    let metadata = session.metadata().map_err(|e| contract(format!("unreadable metadata: {e}")))?;
    let bits_text = metadata.custom("hashsrv.bits").ok_or_else(|| contract("no `hashsrv.bits` metadata".into()))?;
    let bits: u32 =
        bits_text.trim().parse().map_err(|_| contract(format!("`hashsrv.bits` is {bits_text:?}, not a number")))?;
    check_bits(bits).map_err(|e| contract(e.to_string()))?;
    let preprocess_text =
        metadata.custom("hashsrv.preprocess").ok_or_else(|| contract("no `hashsrv.preprocess` metadata".into()))?;
    let preprocess: Preprocess = serde_json::from_str(&preprocess_text)
        .map_err(|e| contract(format!("`hashsrv.preprocess` is not a preprocessing description: {e}")))?;
    preprocess.validate().map_err(|e| contract(format!("`hashsrv.preprocess`: {e}")))?;
    let class_names = match metadata.custom("hashsrv.class_names") {
        None => Vec::new(),
        Some(text) => serde_json::from_str(&text)
            .map_err(|e| contract(format!("`hashsrv.class_names` is not a JSON array of strings: {e}")))?,
    };
    let model_config = match metadata.custom("hashsrv.model_config") {
        None => None,
        Some(text) => Some(
            serde_json::from_str(&text).map_err(|e| contract(format!("`hashsrv.model_config` is not JSON: {e}")))?,
        ),
    };
    let dataset = metadata.custom("hashsrv.dataset");

    let side = i64::from(preprocess.crop);
    let [input] = session.inputs() else {
        return Err(contract(format!("expected one input `{INPUT_NAME}`, found {}", session.inputs().len())));
    };
    check_tensor(input.name(), input.dtype(), INPUT_NAME, &[None, Some(3), Some(side), Some(side)])
        .map_err(contract)?;
    let output = session
        .outputs()
        .iter()
        .find(|o| o.name() == OUTPUT_NAME)
        .ok_or_else(|| contract(format!("no output named `{OUTPUT_NAME}`")))?;
    check_tensor(output.name(), output.dtype(), OUTPUT_NAME, &[None, Some(i64::from(bits))]).map_err(contract)?;
    Ok(ModelInfo { path: path.to_path_buf(), bits, preprocess, dataset, class_names, model_config, sha256, provider })
}

/// Checks one outlet: its name, f32 and each fixed dimension (`None`: any; a dynamic `-1` passes).
fn check_tensor(name: &str, dtype: &ValueType, expected_name: &str, dims: &[Option<i64>]) -> Result<(), String> {
    let want = dims.iter().map(|d| d.map_or("N".to_string(), |d| d.to_string())).collect::<Vec<_>>().join(",");
    if name != expected_name {
        return Err(format!("the input is named `{name}`, expected `{expected_name}` f32 [{want}]"));
    }
    let ValueType::Tensor { ty, shape, .. } = dtype else {
        return Err(format!("`{name}` is not a tensor"));
    };
    if *ty != TensorElementType::Float32 {
        return Err(format!("`{name}` is {ty:?}, expected f32 [{want}]"));
    }
    let shape_ok = shape.len() == dims.len()
        && shape.iter().zip(dims).all(|(&got, want)| want.is_none_or(|w| got == w || got < 0));
    if !shape_ok {
        return Err(format!(
            "`{name}` has shape {shape}, expected [{want}] (the crop side comes from hashsrv.preprocess)"
        ));
    }
    Ok(())
}
