//! The exported ONNX model: accepted by `onnx.checker` (full check), and ONNX Runtime computes
//! what tch computes in evaluation mode, for both stems, 16 and 64 bits, batch 1 and 3.

mod model_support;

use std::path::Path;

use hashsrv::preprocess::Preprocess;
use hashsrv_train::model::{HashNet, HashNetConfig, Stem};
use hashsrv_train::onnx::{self, ExportError, ExportMetadata};
use ort::session::Session;
use ort::value::Tensor as OrtTensor;
use serde_json::{Value, json};
use tch::{Device, Kind, Tensor, nn};

/// A network whose batch norms are far from the identity: random affine parameters and running
/// statistics from a few training-mode passes.
fn trained_net(bits: u32, stem: Stem, size: u32, seed: i64) -> (nn::VarStore, HashNet) {
    tch::manual_seed(seed);
    let vs = nn::VarStore::new(Device::Cpu);
    let net = HashNet::new(&vs.root(), &HashNetConfig { bits, stem, input_size: size }).unwrap();
    tch::no_grad(|| {
        for (name, mut t) in vs.variables() {
            let is_bn = name.starts_with("bn1") || name.contains(".bn") || name.contains("downsample.1");
            if is_bn && name.ends_with(".weight") {
                t.copy_(&(Tensor::rand_like(&t) + 0.5));
            } else if is_bn && name.ends_with(".bias") {
                t.copy_(&(Tensor::randn_like(&t) * 0.2));
            }
        }
        for _ in 0..3 {
            let xs = Tensor::randn([4, 3, i64::from(size), i64::from(size)], (Kind::Float, Device::Cpu)) * 1.5 + 0.3;
            let _ = net.forward_t(&xs, true);
        }
    });
    (vs, net)
}

fn metadata(size: u32) -> ExportMetadata {
    let preprocess = if size == 224 { Preprocess::imagenet() } else { Preprocess::small(size) };
    let mut extra_config = serde_json::Map::new();
    extra_config.insert("margin".into(), json!(20.0));
    ExportMetadata {
        preprocess,
        dataset: "fashion-mnist".into(),
        class_names: vec!["T-shirt/top".into(), "Trouser \"quoted\"".into(), "Ünïcode".into()],
        extra_config,
    }
}

fn check_with_onnx_package(path: &Path) -> Value {
    let script = model_support::script("check_onnx.py");
    serde_json::from_str(&model_support::run_python(&[script.as_os_str(), path.as_os_str()])).unwrap()
}

fn run_ort(session: &mut Session, xs: &Tensor) -> Vec<f32> {
    let shape = xs.size();
    let data = Vec::<f32>::try_from(xs.flatten(0, -1)).unwrap();
    let input = OrtTensor::from_array((shape, data)).unwrap();
    let outputs = session.run(ort::inputs![onnx::INPUT_NAME => input]).unwrap();
    let (out_shape, values) = outputs[onnx::OUTPUT_NAME].try_extract_tensor::<f32>().unwrap();
    assert_eq!(out_shape[0], xs.size()[0]);
    values.to_vec()
}

fn session(path: &Path) -> Session {
    let env = hashsrv::onnxruntime::environment().unwrap();
    Session::builder(env).unwrap().commit_from_file(path).unwrap()
}

#[test]
fn onnx_checker_accepts_the_model_and_sees_the_contract() {
    let dir = tempfile::tempdir().unwrap();
    for (stem, size, bits) in [(Stem::ImageNet, 224, 64), (Stem::Small, 28, 16)] {
        let (vs, net) = trained_net(bits, stem, size, 1);
        let path = dir.path().join(format!("{stem:?}.onnx"));
        let sha = onnx::export_onnx(&vs, net.config(), &metadata(size), &path).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(sha, onnx::sha256_hex(&bytes));
        assert_eq!(sha.len(), 64);

        let report = check_with_onnx_package(&path);
        assert_eq!(report["ir_version"], 8);
        assert_eq!(report["opsets"], json!({"": 17}));
        let ops = if stem == Stem::ImageNet {
            json!(["Add", "Conv", "Flatten", "Gemm", "GlobalAveragePool", "MaxPool", "Relu", "Tanh"])
        } else {
            json!(["Add", "Conv", "Flatten", "Gemm", "GlobalAveragePool", "Relu", "Tanh"])
        };
        assert_eq!(report["ops"], ops, "batch norm must be folded away");
        assert_eq!(report["inputs"], json!({"images": ["N", 3, size, size]}));
        assert_eq!(report["outputs"], json!({"outputs": ["N", bits]}));
        // 20 folded convolutions with weight and bias, and the hash layer's two.
        assert_eq!(report["initializers"], 42);

        let meta = &report["metadata"];
        assert_eq!(meta["hashsrv.bits"], bits.to_string());
        assert_eq!(meta["hashsrv.dataset"], "fashion-mnist");
        let names: Vec<String> = serde_json::from_str(meta["hashsrv.class_names"].as_str().unwrap()).unwrap();
        assert_eq!(names, metadata(size).class_names);
        let pre: Preprocess = serde_json::from_str(meta["hashsrv.preprocess"].as_str().unwrap()).unwrap();
        assert_eq!(pre, metadata(size).preprocess);
        let config: Value = serde_json::from_str(meta["hashsrv.model_config"].as_str().unwrap()).unwrap();
        let back: HashNetConfig = serde_json::from_value(config.clone()).unwrap();
        assert_eq!(&back, net.config());
        assert_eq!(config["margin"], 20.0);
    }
    let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(leftovers.len(), 2, "temporary files left behind: {leftovers:?}");
}

#[test]
fn onnx_runtime_matches_tch_in_eval_mode() {
    let dir = tempfile::tempdir().unwrap();
    for (stem, size) in [(Stem::ImageNet, 64), (Stem::Small, 28)] {
        for bits in [16, 64] {
            let (vs, net) = trained_net(bits, stem, size, 2 + i64::from(bits));
            let path = dir.path().join(format!("{stem:?}-{bits}.onnx"));
            onnx::export_onnx(&vs, net.config(), &metadata(size), &path).unwrap();
            let mut session = session(&path);
            for batch in [1, 3] {
                let xs = Tensor::randn([batch, 3, i64::from(size), i64::from(size)], (Kind::Float, Device::Cpu));
                let expected = tch::no_grad(|| net.forward_t(&xs, false));
                assert_eq!(expected.size(), [batch, i64::from(bits)]);
                let expected = Vec::<f32>::try_from(expected.flatten(0, -1)).unwrap();
                let got = run_ort(&mut session, &xs);
                assert_eq!(got.len(), expected.len());
                let max_diff = got.iter().zip(&expected).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
                eprintln!("{stem:?} {bits} bits batch {batch}: max |ort - tch| = {max_diff:e}");
                assert!(max_diff < 1e-4, "{stem:?} {bits} bits batch {batch}: max |ort - tch| = {max_diff}");
                // A non-trivial comparison: the outputs are not saturated or constant.
                let spread = expected.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                assert!(spread > 0.01 && spread < 0.9999, "{stem:?} {bits}: degenerate outputs, max |y| = {spread}");
            }
        }
    }
}

#[test]
fn ort_reads_the_metadata_the_server_needs() {
    let dir = tempfile::tempdir().unwrap();
    let (vs, net) = trained_net(16, Stem::Small, 28, 5);
    let path = dir.path().join("model.onnx");
    onnx::export_onnx(&vs, net.config(), &metadata(28), &path).unwrap();
    let session = session(&path);
    let meta = session.metadata().unwrap();
    assert_eq!(meta.custom(onnx::META_BITS).as_deref(), Some("16"));
    let pre: Preprocess = serde_json::from_str(&meta.custom(onnx::META_PREPROCESS).unwrap()).unwrap();
    assert_eq!(pre, Preprocess::small(28));
}

#[test]
fn export_refuses_mismatched_weights_and_preprocessing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.onnx");
    let (vs, net) = trained_net(16, Stem::Small, 28, 3);

    let err = onnx::export_onnx(&vs, net.config(), &metadata(32), &path).unwrap_err();
    assert!(matches!(err, ExportError::CropMismatch { crop: 32, input_size: 28 }), "{err}");

    let wider = HashNetConfig { bits: 64, ..net.config().clone() };
    let err = onnx::export_onnx(&vs, &wider, &metadata(28), &path).unwrap_err();
    assert!(matches!(&err, ExportError::Shape { name, .. } if name == "hash.weight"), "{err}");

    let imagenet = HashNetConfig { stem: Stem::ImageNet, input_size: 224, ..net.config().clone() };
    let err = onnx::export_onnx(&vs, &imagenet, &metadata(224), &path).unwrap_err();
    assert!(matches!(&err, ExportError::Shape { name, .. } if name == "conv1.weight"), "{err}");

    let empty = nn::VarStore::new(Device::Cpu);
    let err = onnx::export_onnx(&empty, net.config(), &metadata(28), &path).unwrap_err();
    assert!(matches!(&err, ExportError::MissingVariable(name) if name == "conv1.weight"), "{err}");

    let err = onnx::export_onnx(&vs, net.config(), &metadata(28), &dir.path().join("no/such/dir/m.onnx")).unwrap_err();
    assert!(matches!(err, ExportError::Io { .. }), "{err}");
    assert!(!path.exists(), "nothing is written when the export fails");
}
