//! The ONNX Runtime encoder on the tiny fixture model (tests/fixtures/model, made by
//! scripts/make_test_model.py): contract checks, outputs against numpy's, batching invariance,
//! image encoding through the shared preprocessing, and the model/index cross-check.

use std::path::PathBuf;

use hashsrv::encoder::{Device, Encoder, EncoderError, EncoderOptions};
use hashsrv::index::HashCode;
use hashsrv::preprocess::Preprocess;
use serde::Deserialize;
use sha2::{Digest, Sha256};

fn model(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/model").join(name)
}

fn options() -> EncoderOptions {
    EncoderOptions { device: Device::Cpu, intra_threads: Some(1), ..EncoderOptions::default() }
}

#[derive(Deserialize)]
struct Reference {
    bits: u32,
    inputs: Vec<Vec<f32>>,
    outputs: Vec<Vec<f32>>,
    codes_hex: Vec<String>,
}

fn reference() -> Reference {
    serde_json::from_slice(&std::fs::read(model("tiny_reference.json")).unwrap()).unwrap()
}

#[test]
fn the_tiny_model_opens_with_its_contract() {
    let encoder = Encoder::open(&model("tiny.onnx"), &options()).unwrap();
    let info = encoder.info();
    assert_eq!(info.bits, 16);
    assert_eq!(info.preprocess, Preprocess::small(8));
    assert_eq!(info.dataset.as_deref(), Some("fashion-mnist"));
    assert_eq!(info.class_names.len(), 10);
    assert_eq!(info.class_names[9], "Ankle boot");
    assert_eq!(info.model_config.as_ref().unwrap()["bits"], 16);
    assert_eq!(info.provider, "CPUExecutionProvider");
    let bytes = std::fs::read(model("tiny.onnx")).unwrap();
    assert_eq!(info.sha256, hex::encode(Sha256::digest(&bytes)));
}

#[test]
fn outputs_and_codes_match_numpy() {
    let encoder = Encoder::open(&model("tiny.onnx"), &options()).unwrap();
    let reference = reference();
    let n = reference.inputs.len();
    let batch: Vec<f32> = reference.inputs.concat();
    let outputs = encoder.outputs(&batch, n).unwrap();
    for (got, want) in outputs.iter().zip(reference.outputs.concat()) {
        assert!((got - want).abs() < 1e-5, "{got} vs {want}");
    }
    let codes = encoder.encode_tensor(&batch, n).unwrap();
    let hex: Vec<String> = codes.iter().map(HashCode::to_hex).collect();
    assert_eq!(hex, reference.codes_hex);
    assert!(codes.iter().all(|c| c.bits() == reference.bits));
    // Each image alone gives the same code as in the batch.
    for (i, input) in reference.inputs.iter().enumerate() {
        assert_eq!(encoder.encode_tensor(input, 1).unwrap()[0], codes[i]);
    }
    assert!(encoder.encode_tensor(&[], 0).unwrap().is_empty());
}

#[test]
fn a_batch_of_the_wrong_length_is_refused() {
    let encoder = Encoder::open(&model("tiny.onnx"), &options()).unwrap();
    let err = encoder.encode_tensor(&[0.0; 191], 1).unwrap_err();
    assert!(matches!(err, EncoderError::BatchLength { got: 191, n: 1, per_image: 192, .. }), "{err}");
}

#[test]
fn images_go_through_the_shared_preprocessing() {
    let encoder = Encoder::open(&model("tiny.onnx"), &options()).unwrap();
    let images: Vec<image::DynamicImage> = (0..5u32)
        .map(|s| {
            image::DynamicImage::ImageRgb8(image::RgbImage::from_fn(40 + s * 7, 30 + s * 3, |x, y| {
                image::Rgb([(x * 9 + s * 40) as u8, (y * 13) as u8, ((x ^ y) * 5) as u8])
            }))
        })
        .collect();
    let codes = encoder.encode_images(&images).unwrap();
    let p = Preprocess::small(8);
    for (image, code) in images.iter().zip(&codes) {
        let mut tensor = vec![0f32; p.tensor_len()];
        p.eval_into(image, &mut tensor).unwrap();
        assert_eq!(&encoder.encode_tensor(&tensor, 1).unwrap()[0], code);
    }
    // Different pictures give different codes (the model is not constant).
    assert!(codes.windows(2).any(|w| w[0] != w[1]));
}

#[test]
fn models_breaking_the_contract_are_refused_with_the_reason() {
    for (file, needle) in [
        ("bad_input_name.onnx", "`x`"),
        ("bad_output_name.onnx", "no output named `outputs`"),
        ("bad_input_dtype.onnx", "Float64"),
        ("bad_input_size.onnx", "shape"),
        ("bad_no_bits.onnx", "hashsrv.bits"),
        ("bad_bits_mismatch.onnx", "`outputs` has shape"),
        ("bad_preprocess.onnx", "hashsrv.preprocess"),
    ] {
        let err = Encoder::open(&model(file), &options()).unwrap_err();
        assert!(matches!(err, EncoderError::Contract { .. }), "{file}: {err}");
        let message = err.to_string();
        assert!(message.contains(needle), "{file}: {message}");
    }
    let err = Encoder::open(&model("missing.onnx"), &options()).unwrap_err();
    assert!(matches!(err, EncoderError::Read { .. }), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.onnx");
    std::fs::write(&junk, b"not a model").unwrap();
    let err = Encoder::open(&junk, &options()).unwrap_err();
    assert!(matches!(err, EncoderError::Load { .. }), "{err}");
}

#[test]
fn the_index_check_compares_bits_and_hash() {
    let encoder = Encoder::open(&model("tiny.onnx"), &options()).unwrap();
    let sha = encoder.info().sha256.clone();
    assert!(encoder.check_against(16, Some(&sha), false).unwrap().is_empty());
    assert!(encoder.check_against(16, Some(&sha.to_uppercase()), false).unwrap().is_empty());
    let err = encoder.check_against(32, Some(&sha), true).unwrap_err().to_string();
    assert!(err.contains("16-bit") && err.contains("32-bit"), "{err}");
    let other = "ab".repeat(32);
    let err = encoder.check_against(16, Some(&other), false).unwrap_err().to_string();
    assert!(err.contains("--allow-model-mismatch") && err.contains(&other), "{err}");
    assert_eq!(encoder.check_against(16, Some(&other), true).unwrap().len(), 1);
    assert!(encoder.check_against(16, None, false).is_err());
    assert_eq!(encoder.check_against(16, None, true).unwrap().len(), 1);
}

#[test]
fn auto_device_falls_back_to_the_cpu() {
    let auto =
        Encoder::open(&model("tiny.onnx"), &EncoderOptions { device: Device::Auto, ..EncoderOptions::default() })
            .unwrap();
    let cuda_available = <ort::ep::CUDA as ort::ep::ExecutionProvider>::is_available().unwrap_or(false);
    if !cuda_available {
        assert_eq!(auto.info().provider, "CPUExecutionProvider");
        // Asked for explicitly, a missing CUDA is an error, not a silent CPU run.
        let err = Encoder::open(
            &model("tiny.onnx"),
            &EncoderOptions { device: Device::Cuda(0), ..EncoderOptions::default() },
        )
        .unwrap_err();
        assert!(matches!(err, EncoderError::Cuda { device: 0, .. }), "{err}");
    }
}
