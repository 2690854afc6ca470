//! ONNX export of a trained [`HashNet`](crate::model::HashNet), written from Rust (tch has no
//! exporter).
//!
//! The graph is the network in evaluation mode with each batch norm folded into the convolution
//! before it, so it uses only Conv, Relu, MaxPool, Add, GlobalAveragePool, Flatten, Gemm and Tanh
//! (IR version 8, opset 17). Input `images` is f32 [N,3,S,S] already normalised by
//! `hashsrv::preprocess` (normalisation is outside the graph); output `outputs` is f32 [N,bits]
//! after tanh; N is dynamic. The preprocessing contract, code length, data set and class names
//! travel in the model's metadata props ([`META_BITS`] ...), and the model's identity is the
//! SHA-256 of the file.

mod proto;

use std::io::Write;
use std::path::{Path, PathBuf};

use hashsrv::preprocess::Preprocess;
use proto::Message;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use tch::{Device, Kind, Tensor, nn};

use crate::model::{BLOCKS_PER_STAGE, BN_EPS, FEATURES, HashNetConfig, ModelError, STAGE_CHANNELS};

pub const IR_VERSION: i64 = 8;
pub const OPSET: i64 = 17;
pub const INPUT_NAME: &str = "images";
pub const OUTPUT_NAME: &str = "outputs";
/// Metadata keys (values are strings; the JSON ones are compact JSON).
pub const META_BITS: &str = "hashsrv.bits";
pub const META_PREPROCESS: &str = "hashsrv.preprocess";
pub const META_DATASET: &str = "hashsrv.dataset";
pub const META_CLASS_NAMES: &str = "hashsrv.class_names";
pub const META_MODEL_CONFIG: &str = "hashsrv.model_config";

/// What the server needs to know besides the weights.
#[derive(Clone, Debug, PartialEq)]
pub struct ExportMetadata {
    /// The evaluation transform the model was trained with; its crop must equal the input size.
    pub preprocess: Preprocess,
    /// Data set name, e.g. "fashion-mnist".
    pub dataset: String,
    pub class_names: Vec<String>,
    /// Extra entries for `hashsrv.model_config` besides the architecture (e.g. margin, epochs).
    pub extra_config: Map<String, Value>,
}

/// Why the model could not be exported.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Config(#[from] ModelError),
    #[error(
        "the preprocessing crops {crop}x{crop} but the network was built for {input_size}x{input_size} inputs; \
         export with the preprocessing the model was trained with"
    )]
    CropMismatch { crop: u32, input_size: u32 },
    #[error("the variable store has no `{0}`: it does not hold a HashNet built with this configuration")]
    MissingVariable(String),
    #[error("variable `{name}` has shape {found:?}, the configuration needs {expected:?}")]
    Shape { name: String, expected: Vec<i64>, found: Vec<i64> },
    #[error("reading the weights from libtorch failed: {0}")]
    Torch(#[from] tch::TchError),
    #[error("cannot write the model to {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

/// Writes the ONNX model of the network in `vs` to `path` atomically (temporary file in the same
/// folder, fsync, rename) and returns the SHA-256 (lower-case hex) of the bytes written.
pub fn export_onnx(
    vs: &nn::VarStore,
    config: &HashNetConfig,
    meta: &ExportMetadata,
    path: &Path,
) -> Result<String, ExportError> {
    let bytes = model_bytes(vs, config, meta)?;
    write_atomically(path, &bytes).map_err(|source| ExportError::Io { path: path.to_path_buf(), source })?;
    Ok(sha256_hex(&bytes))
}

/// Lower-case hex SHA-256, the model identity stored in indexes.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().ok_or_else(|| std::io::Error::other("the path names no file"))?;
    let tmp = dir.join(format!(".{}.tmp-{}", name.to_string_lossy(), std::process::id()));
    let result = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        // Make the rename itself durable.
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// The serialized ModelProto.
pub fn model_bytes(vs: &nn::VarStore, config: &HashNetConfig, meta: &ExportMetadata) -> Result<Vec<u8>, ExportError> {
    config.validate()?;
    if meta.preprocess.crop != config.input_size {
        return Err(ExportError::CropMismatch { crop: meta.preprocess.crop, input_size: config.input_size });
    }
    let graph = build_graph(vs, config)?;

    let mut model = Message::new();
    model.int(1, IR_VERSION).string(2, "hashsrv-train").string(3, env!("CARGO_PKG_VERSION"));
    model.string(6, "hashsrv deep hash model: ResNet-18 + FC + tanh, batch norm folded");
    model.message(7, &graph);
    model.message(8, Message::new().string(1, "").int(2, OPSET));
    let mut model_config = match serde_json::to_value(config) {
        Ok(Value::Object(map)) => map,
        _ => Map::new(),
    };
    model_config.extend(meta.extra_config.clone());
    let props = [
        (META_BITS, config.bits.to_string()),
        (META_PREPROCESS, json(&meta.preprocess)),
        (META_DATASET, meta.dataset.clone()),
        (META_CLASS_NAMES, json(&meta.class_names)),
        (META_MODEL_CONFIG, json(&model_config)),
    ];
    for (key, value) in props {
        model.message(14, Message::new().string(1, key).string(2, &value));
    }
    Ok(model.into_bytes())
}

fn json<T: serde::Serialize>(value: &T) -> String {
    // Plain data (strings, numbers, derived Serialize): serialisation cannot fail.
    serde_json::to_string(value).unwrap_or_default()
}

/// Builds the graph: nodes in topological order, folded weights as initializers.
struct GraphBuilder<'a> {
    vars: &'a std::collections::HashMap<String, Tensor>,
    graph: Message,
}

impl GraphBuilder<'_> {
    fn var(&self, name: &str, shape: &[i64]) -> Result<Tensor, ExportError> {
        let t = self.vars.get(name).ok_or_else(|| ExportError::MissingVariable(name.to_string()))?;
        if t.size() != shape {
            return Err(ExportError::Shape { name: name.into(), expected: shape.to_vec(), found: t.size() });
        }
        // Fold in double precision so the exported weights are the f32 rounding of the exact ones.
        Ok(t.f_to_device(Device::Cpu)?.f_to_kind(Kind::Double)?.detach())
    }

    fn initializer(&mut self, name: &str, t: &Tensor) -> Result<(), ExportError> {
        let values = Vec::<f32>::try_from(t.f_to_kind(Kind::Float)?.f_flatten(0, -1)?)?;
        let raw: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let mut tensor = Message::new();
        tensor.ints(1, &t.size()).int(2, 1 /* FLOAT */).string(8, name).bytes(9, &raw);
        self.graph.message(5, &tensor);
        Ok(())
    }

    fn node(&mut self, op: &str, name: &str, inputs: &[&str], output: &str, attributes: &[Message]) {
        let mut node = Message::new();
        for input in inputs {
            node.string(1, input);
        }
        node.string(2, output).string(3, name).string(4, op);
        for attribute in attributes {
            node.message(5, attribute);
        }
        self.graph.message(1, &node);
    }

    /// Conv (batch norm `bn` folded in) from `input` to a value named after the conv.
    #[allow(clippy::too_many_arguments)]
    fn conv_bn(
        &mut self,
        conv: &str,
        bn: &str,
        input: &str,
        c_in: i64,
        c_out: i64,
        kernel: i64,
        stride: i64,
        padding: i64,
    ) -> Result<String, ExportError> {
        let w = self.var(&format!("{conv}.weight"), &[c_out, c_in, kernel, kernel])?;
        let gamma = self.var(&format!("{bn}.weight"), &[c_out])?;
        let beta = self.var(&format!("{bn}.bias"), &[c_out])?;
        let mean = self.var(&format!("{bn}.running_mean"), &[c_out])?;
        let var = self.var(&format!("{bn}.running_var"), &[c_out])?;
        let scale = gamma / (var + BN_EPS).sqrt();
        let w = w * scale.view([-1, 1, 1, 1]);
        let b = beta - mean * scale;
        let (w_name, b_name) = (format!("{conv}.weight_folded"), format!("{conv}.bias_folded"));
        self.initializer(&w_name, &w)?;
        self.initializer(&b_name, &b)?;
        let attributes = [
            ints_attr("kernel_shape", &[kernel, kernel]),
            ints_attr("strides", &[stride, stride]),
            ints_attr("pads", &[padding; 4]),
            ints_attr("dilations", &[1, 1]),
            int_attr("group", 1),
        ];
        self.node("Conv", conv, &[input, &w_name, &b_name], conv, &attributes);
        Ok(conv.to_string())
    }

    fn relu(&mut self, input: &str, output: &str) -> String {
        self.node("Relu", output, &[input], output, &[]);
        output.to_string()
    }
}

fn attr(name: &str, kind: i64) -> Message {
    let mut a = Message::new();
    a.string(1, name).int(20, kind);
    a
}

fn int_attr(name: &str, v: i64) -> Message {
    let mut a = attr(name, 2 /* INT */);
    a.int(3, v);
    a
}

fn ints_attr(name: &str, vs: &[i64]) -> Message {
    let mut a = attr(name, 7 /* INTS */);
    a.ints(8, vs);
    a
}

/// ValueInfoProto of an f32 tensor; `None` dims are the symbolic batch dimension "N".
fn value_info(name: &str, dims: &[Option<i64>]) -> Message {
    let mut shape = Message::new();
    for dim in dims {
        let mut d = Message::new();
        match dim {
            Some(v) => d.int(1, *v),
            None => d.string(2, "N"),
        };
        shape.message(1, &d);
    }
    let mut tensor_type = Message::new();
    tensor_type.int(1, 1 /* FLOAT */).message(2, &shape);
    let mut info = Message::new();
    info.string(1, name).message(2, Message::new().message(1, &tensor_type));
    info
}

fn build_graph(vs: &nn::VarStore, config: &HashNetConfig) -> Result<Message, ExportError> {
    let vars = vs.variables();
    let mut g = GraphBuilder { vars: &vars, graph: Message::new() };
    let (kernel, stride, padding) = config.stem.conv1_geometry();
    let x = g.conv_bn("conv1", "bn1", INPUT_NAME, 3, STAGE_CHANNELS[0], kernel, stride, padding)?;
    let mut x = g.relu(&x, "relu");
    if config.stem.has_max_pool() {
        let attributes =
            [ints_attr("kernel_shape", &[3, 3]), ints_attr("strides", &[2, 2]), ints_attr("pads", &[1; 4])];
        g.node("MaxPool", "maxpool", &[&x], "maxpool", &attributes);
        x = "maxpool".into();
    }
    let mut c_in = STAGE_CHANNELS[0];
    for (stage, &c_out) in STAGE_CHANNELS.iter().enumerate() {
        for block in 0..BLOCKS_PER_STAGE {
            let b = format!("layer{}.{block}", stage + 1);
            let stride = if stage > 0 && block == 0 { 2 } else { 1 };
            let y = g.conv_bn(&format!("{b}.conv1"), &format!("{b}.bn1"), &x, c_in, c_out, 3, stride, 1)?;
            let y = g.relu(&y, &format!("{b}.relu1"));
            let y = g.conv_bn(&format!("{b}.conv2"), &format!("{b}.bn2"), &y, c_out, c_out, 3, 1, 1)?;
            let shortcut = if stride != 1 || c_in != c_out {
                let (conv, bn) = (format!("{b}.downsample.0"), format!("{b}.downsample.1"));
                g.conv_bn(&conv, &bn, &x, c_in, c_out, 1, stride, 0)?
            } else {
                x.clone()
            };
            let sum = format!("{b}.add");
            g.node("Add", &sum, &[&y, &shortcut], &sum, &[]);
            x = g.relu(&sum, &format!("{b}.relu2"));
            c_in = c_out;
        }
    }
    g.node("GlobalAveragePool", "avgpool", &[&x], "avgpool", &[]);
    g.node("Flatten", "flatten", &["avgpool"], "flatten", &[int_attr("axis", 1)]);
    let bits = i64::from(config.bits);
    let weight = g.var("hash.weight", &[bits, FEATURES])?;
    let bias = g.var("hash.bias", &[bits])?;
    g.initializer("hash.weight", &weight)?;
    g.initializer("hash.bias", &bias)?;
    g.node("Gemm", "hash", &["flatten", "hash.weight", "hash.bias"], "hash", &[int_attr("transB", 1)]);
    g.node("Tanh", "tanh", &["hash"], OUTPUT_NAME, &[]);

    let size = i64::from(config.input_size);
    let mut graph = g.graph;
    graph.string(2, "hashnet");
    graph.message(11, &value_info(INPUT_NAME, &[None, Some(3), Some(size), Some(size)]));
    graph.message(12, &value_info(OUTPUT_NAME, &[None, Some(bits)]));
    Ok(graph)
}
