//! Pretrained weights: checkpoints written by the real torch (`torch.save` of a torchvision-shaped
//! resnet18 state dict, and the same as safetensors) load into the network tensor for tensor.

mod model_support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use hashsrv_train::model::{HashNet, HashNetConfig, Stem};
use hashsrv_train::pretrained::{PretrainedError, load_pretrained, read_state_dict};
use tch::{Device, Kind, Tensor, nn};

struct Fixture {
    _dir: tempfile::TempDir,
    pth: PathBuf,
    safetensors: PathBuf,
    /// Every float tensor of the state dict, read from the script's raw reference dump.
    reference: HashMap<String, Tensor>,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    // Named like the real download: torch.save uses the file stem as the archive's top folder.
    let pth = dir.path().join("resnet18-f37072fd.pth");
    let safetensors = dir.path().join("resnet18.safetensors");
    let reference = dir.path().join("reference");
    let script = model_support::script("torchvision_resnet18.py");
    model_support::run_python(&[
        script.as_os_str(),
        "save".as_ref(),
        pth.as_os_str(),
        safetensors.as_os_str(),
        reference.as_os_str(),
    ]);
    let index: Vec<(String, Vec<i64>)> =
        serde_json::from_str(&std::fs::read_to_string(reference.with_extension("json")).unwrap()).unwrap();
    let raw = std::fs::read(reference.with_extension("bin")).unwrap();
    let mut offset = 0;
    let mut tensors = HashMap::new();
    for (name, shape) in index {
        let bytes = 4 * shape.iter().product::<i64>() as usize;
        let t = Tensor::from_data_size(&raw[offset..offset + bytes], &shape, Kind::Float);
        offset += bytes;
        tensors.insert(name, t);
    }
    assert_eq!(offset, raw.len());
    assert_eq!(tensors.len(), 102, "100 trunk tensors + fc.weight + fc.bias");
    Fixture { _dir: dir, pth, safetensors, reference: tensors }
}

fn network(stem: Stem) -> (nn::VarStore, HashNetConfig) {
    let config = HashNetConfig { bits: 32, stem, input_size: if stem == Stem::Small { 28 } else { 224 } };
    let vs = nn::VarStore::new(Device::Cpu);
    HashNet::new(&vs.root(), &config).unwrap();
    (vs, config)
}

fn snapshot(vs: &nn::VarStore) -> HashMap<String, Tensor> {
    vs.variables().into_iter().map(|(k, v)| (k, v.copy())).collect()
}

#[test]
fn both_formats_read_every_tensor_exactly() {
    let f = fixture();
    for path in [&f.pth, &f.safetensors] {
        let tensors = read_state_dict(path).unwrap();
        assert_eq!(tensors.len(), 122, "{}", path.display());
        for (name, t) in &tensors {
            if name.ends_with("num_batches_tracked") {
                assert_eq!(t.kind(), Kind::Int64);
                assert_eq!(t.int64_value(&[]), 1234, "{name}");
            } else {
                assert!(t.equal(&f.reference[name]), "{name} differs in {}", path.display());
            }
        }
    }
}

#[test]
fn loads_the_whole_trunk_and_leaves_the_hash_layer() {
    let f = fixture();
    for path in [&f.pth, &f.safetensors] {
        let (mut vs, config) = network(Stem::ImageNet);
        let before = snapshot(&vs);
        let report = load_pretrained(&mut vs, &config, path).unwrap();
        assert_eq!(report.loaded.len(), 100);
        let skipped: Vec<&str> = report.skipped.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(skipped.len(), 22);
        assert!(skipped.contains(&"fc.weight") && skipped.contains(&"fc.bias"));
        assert_eq!(skipped.iter().filter(|n| n.ends_with("num_batches_tracked")).count(), 20);
        for (name, var) in vs.variables() {
            if name.starts_with("hash.") {
                assert!(var.equal(&before[&name]), "{name} must not change");
            } else {
                assert!(var.equal(&f.reference[&name]), "{name} was not loaded from {}", path.display());
            }
        }
    }
}

#[test]
fn small_stem_keeps_its_own_conv1_and_bn1() {
    let f = fixture();
    let (mut vs, config) = network(Stem::Small);
    let before = snapshot(&vs);
    let report = load_pretrained(&mut vs, &config, &f.pth).unwrap();
    assert_eq!(report.loaded.len(), 95, "100 minus conv1.weight and bn1's four tensors");
    assert!(report.skipped.iter().any(|(n, why)| n == "conv1.weight" && why.contains("small stem")));
    for (name, var) in vs.variables() {
        let fresh = name.starts_with("hash.") || name.starts_with("conv1.") || name.starts_with("bn1.");
        let expected = if fresh { &before[&name] } else { &f.reference[&name] };
        assert!(var.equal(expected), "{name}");
    }
}

#[test]
fn strided_views_and_other_dtypes_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("views.pth");
    let script = model_support::script("torchvision_resnet18.py");
    let json = model_support::run_python(&[script.as_os_str(), "save_views".as_ref(), path.as_os_str()]);
    let expected: HashMap<String, (Vec<i64>, String, Vec<f64>)> = serde_json::from_str(&json).unwrap();
    let tensors = read_state_dict(&path).unwrap();
    let names: Vec<&str> = tensors.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["whole", "transposed", "offset_rows", "strided_cols", "half", "double", "long", "scalar"]);
    for (name, t) in &tensors {
        let (shape, dtype, values) = &expected[name];
        assert_eq!(&t.size(), shape, "{name}");
        let kind = match dtype.as_str() {
            "torch.float32" => Kind::Float,
            "torch.float16" => Kind::Half,
            "torch.float64" => Kind::Double,
            "torch.int64" => Kind::Int64,
            other => panic!("unexpected dtype {other}"),
        };
        assert_eq!(t.kind(), kind, "{name}");
        let got = Vec::<f64>::try_from(t.to_kind(Kind::Double).flatten(0, -1)).unwrap();
        assert_eq!(&got, values, "{name}");
    }
}

fn assert_refused(path: &Path, check: impl Fn(&PretrainedError) -> bool) {
    let (mut vs, config) = network(Stem::ImageNet);
    let before = snapshot(&vs);
    let err = load_pretrained(&mut vs, &config, path).unwrap_err();
    assert!(check(&err), "unexpected error: {err}");
    assert!(err.to_string().contains(&path.display().to_string()), "the message names the file: {err}");
    for (name, var) in vs.variables() {
        assert!(var.equal(&before[&name]), "{name} changed although loading failed");
    }
}

#[test]
fn wrong_files_are_clear_errors_and_change_nothing() {
    let f = fixture();
    let dir = f.pth.parent().unwrap();
    let mut good: Vec<(String, Tensor)> = read_state_dict(&f.safetensors).unwrap();

    let shape = dir.join("shape.safetensors");
    for (name, t) in good.iter_mut() {
        if name == "layer2.1.conv2.weight" {
            *t = Tensor::zeros([128, 128, 1, 1], (Kind::Float, Device::Cpu));
        }
    }
    Tensor::write_safetensors(&good, &shape).unwrap();
    assert_refused(&shape, |e| matches!(e, PretrainedError::Shape { name, .. } if name == "layer2.1.conv2.weight"));

    let partial = dir.join("partial.safetensors");
    let complete = read_state_dict(&f.safetensors).unwrap();
    Tensor::write_safetensors(&complete[..50], &partial).unwrap();
    assert_refused(&partial, |e| matches!(e, PretrainedError::MissingKeys { .. }));

    let extra = dir.join("extra.safetensors");
    let mut with_extra = read_state_dict(&f.safetensors).unwrap();
    with_extra.push(("layer5.0.conv1.weight".into(), Tensor::zeros([1], (Kind::Float, Device::Cpu))));
    Tensor::write_safetensors(&with_extra, &extra).unwrap();
    assert_refused(
        &extra,
        |e| matches!(e, PretrainedError::UnexpectedKey { name, .. } if name == "layer5.0.conv1.weight"),
    );

    let bytes = std::fs::read(&f.pth).unwrap();
    for cut in [10, bytes.len() / 2, bytes.len() - 30] {
        let truncated = dir.join(format!("truncated-{cut}.pth"));
        std::fs::write(&truncated, &bytes[..cut]).unwrap();
        assert_refused(&truncated, |e| matches!(e, PretrainedError::Archive { .. }));
    }

    let legacy = dir.join("legacy.pth");
    let script = model_support::script("torchvision_resnet18.py");
    model_support::run_python(&[script.as_os_str(), "save_legacy".as_ref(), legacy.as_os_str()]);
    assert_refused(&legacy, |e| matches!(e, PretrainedError::LegacyFormat { .. }));

    let text = dir.join("notes.txt");
    std::fs::write(&text, "not a checkpoint at all").unwrap();
    assert_refused(&text, |e| matches!(e, PretrainedError::UnknownFormat { .. }));
    assert_refused(&dir.join("missing.pth"), |e| matches!(e, PretrainedError::Io { .. }));
}

fn read_f32(path: &Path) -> Vec<f32> {
    std::fs::read(path).unwrap().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect()
}

#[test]
fn loaded_trunk_computes_what_torchvision_computes() {
    // The same weights in torchvision's architecture (run by the real torch) and in ours must give
    // the same features: this checks strides, paddings and the shortcut, not just the names.
    let f = fixture();
    let (n, size) = (2i64, 64i64);
    let out = f.pth.with_file_name("torch");
    let script = model_support::script("torchvision_resnet18.py");
    let (n_arg, size_arg) = (n.to_string(), size.to_string());
    model_support::run_python(&[
        script.as_os_str(),
        "features".as_ref(),
        f.pth.as_os_str(),
        n_arg.as_ref(),
        size_arg.as_ref(),
        out.as_os_str(),
    ]);
    let input = read_f32(&out.with_extension("input.bin"));
    let expected = read_f32(&out.with_extension("features.bin"));

    let config = HashNetConfig { bits: 16, stem: Stem::ImageNet, input_size: size as u32 };
    let mut vs = nn::VarStore::new(Device::Cpu);
    let net = HashNet::new(&vs.root(), &config).unwrap();
    load_pretrained(&mut vs, &config, &f.pth).unwrap();
    let xs = Tensor::from_slice(&input).view([n, 3, size, size]);
    let features = tch::no_grad(|| net.features_t(&xs, false));
    let got = Vec::<f32>::try_from(features.flatten(0, -1)).unwrap();
    assert_eq!(got.len(), expected.len());
    let scale = expected.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let max_diff = got.iter().zip(&expected).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    eprintln!("features up to {scale}, max |tch - torch| = {max_diff:e}");
    assert!(scale > 0.1, "degenerate reference features (max {scale})");
    assert!(max_diff <= 1e-5 * scale.max(1.0), "max |tch - torch| = {max_diff} (features up to {scale})");
}

#[test]
fn a_hashsrv_checkpoint_loads_its_trunk_and_its_hash_layer_only_at_the_same_length() {
    let dir = tempfile::tempdir().unwrap();
    let checkpoint = dir.path().join("best.safetensors");
    // A small-stem 64-bit network, as a previous run saves it (VarStore::save).
    let source_config = HashNetConfig { bits: 64, stem: Stem::Small, input_size: 28 };
    let source = nn::VarStore::new(Device::Cpu);
    HashNet::new(&source.root(), &source_config).unwrap();
    source.save(&checkpoint).unwrap();
    let saved = snapshot(&source);

    for bits in [64, 16] {
        let config = HashNetConfig { bits, ..source_config.clone() };
        let mut vs = nn::VarStore::new(Device::Cpu);
        HashNet::new(&vs.root(), &config).unwrap();
        let before = snapshot(&vs);
        let report = load_pretrained(&mut vs, &config, &checkpoint).unwrap();
        let same_length = bits == 64;
        assert_eq!(report.loaded.len(), if same_length { 102 } else { 100 }, "{bits} bits");
        assert_eq!(
            report.skipped.iter().any(|(n, why)| n == "hash.weight" && why.contains("code length")),
            !same_length
        );
        for (name, var) in vs.variables() {
            let expected = if name.starts_with("hash.") && !same_length { &before[&name] } else { &saved[&name] };
            assert!(var.equal(expected), "{name} at {bits} bits");
        }
    }

    // An ImageNet-stem network cannot take the small stem's 3x3 conv1.
    let config = HashNetConfig { bits: 64, stem: Stem::ImageNet, input_size: 32 };
    let mut vs = nn::VarStore::new(Device::Cpu);
    HashNet::new(&vs.root(), &config).unwrap();
    let err = load_pretrained(&mut vs, &config, &checkpoint).unwrap_err();
    assert!(matches!(&err, PretrainedError::Shape { name, .. } if name == "conv1.weight"), "{err}");
}
