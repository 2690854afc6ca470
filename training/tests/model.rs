//! The network's variables match torchvision's resnet18 state dict, and its outputs have the
//! documented shapes and range.

mod model_support;

use std::collections::BTreeMap;

use hashsrv_train::model::{HashNet, HashNetConfig, ModelError, Stem};
use tch::{Device, Kind, Tensor, nn};

fn build(bits: u32, stem: Stem, input_size: u32) -> (nn::VarStore, HashNet) {
    let vs = nn::VarStore::new(Device::Cpu);
    let net = HashNet::new(&vs.root(), &HashNetConfig { bits, stem, input_size }).unwrap();
    (vs, net)
}

fn shapes(vs: &nn::VarStore) -> BTreeMap<String, Vec<i64>> {
    vs.variables().into_iter().map(|(k, v)| (k, v.size())).collect()
}

/// torchvision's keys and shapes, from the architecture rebuilt in the venv's torch.
fn torchvision_shapes() -> BTreeMap<String, Vec<i64>> {
    let script = model_support::script("torchvision_resnet18.py");
    let json = model_support::run_python(&[script.as_os_str(), "keys".as_ref()]);
    serde_json::from_str(&json).unwrap()
}

#[test]
fn variables_are_torchvision_resnet18_plus_the_hash_layer() {
    let mut expected = torchvision_shapes();
    assert_eq!(expected.len(), 122, "the reference should be the full resnet18 state dict");
    // tch's batch norm keeps no step counter; `fc` is replaced by `hash`.
    expected.retain(|k, _| !k.ends_with(".num_batches_tracked") && !k.starts_with("fc."));
    expected.insert("hash.weight".into(), vec![64, 512]);
    expected.insert("hash.bias".into(), vec![64]);

    let (vs, _) = build(64, Stem::ImageNet, 224);
    assert_eq!(shapes(&vs), expected);

    let (vs, _) = build(64, Stem::Small, 28);
    expected.insert("conv1.weight".into(), vec![64, 3, 3, 3]);
    assert_eq!(shapes(&vs), expected);
}

#[test]
fn trainable_parameter_count_is_resnet18_without_fc_plus_hash() {
    // torchvision documents 11,689,512 parameters for resnet18, of which fc has 512*1000+1000.
    let trunk = 11_689_512 - (512 * 1000 + 1000);
    for bits in [16i64, 64] {
        let (vs, _) = build(bits as u32, Stem::ImageNet, 224);
        let count: i64 = vs.trainable_variables().iter().map(Tensor::numel).map(|n| n as i64).sum();
        assert_eq!(count, trunk + 512 * bits + bits);
    }
}

#[test]
fn batch_norm_starts_like_torchvision() {
    let (vs, _) = build(16, Stem::Small, 32);
    let vars = vs.variables();
    let ones = Tensor::ones([64], (Kind::Float, Device::Cpu));
    assert!(vars["bn1.weight"].equal(&ones));
    assert!(vars["bn1.running_var"].equal(&ones));
    assert!(vars["layer1.0.bn2.bias"].equal(&ones.zeros_like()));
    // kaiming normal, fan_out: std sqrt(2 / (64*3*3)) = 0.059 for layer1 convs.
    let std = vars["layer1.0.conv1.weight"].std(true).double_value(&[]);
    assert!((std - (2.0f64 / 576.0).sqrt()).abs() < 0.005, "std {std}");
}

#[test]
fn forward_shapes_and_range() {
    for (stem, size) in [(Stem::ImageNet, 64), (Stem::Small, 28)] {
        let (_vs, net) = build(16, stem, size);
        let xs = Tensor::randn([3, 3, i64::from(size), i64::from(size)], (Kind::Float, Device::Cpu));
        let features = net.features_t(&xs, false);
        assert_eq!(features.size(), [3, 512]);
        let codes = net.forward_t(&xs, true);
        assert_eq!(codes.size(), [3, 16]);
        assert!(codes.abs().max().double_value(&[]) < 1.0);
        // The head on the features is the whole network (same mode, same batch statistics).
        let head = net.hash_head(&net.features_t(&xs, false));
        assert!(head.allclose(&net.forward_t(&xs, false), 1e-6, 1e-6, false));
    }
}

#[test]
fn training_mode_updates_batch_statistics_and_eval_mode_does_not() {
    let (vs, net) = build(16, Stem::Small, 16);
    let before = vs.variables()["layer3.0.downsample.1.running_mean"].copy();
    let xs = Tensor::randn([4, 3, 16, 16], (Kind::Float, Device::Cpu));
    let _ = net.forward_t(&xs, false);
    assert!(vs.variables()["layer3.0.downsample.1.running_mean"].equal(&before));
    let _ = net.forward_t(&xs, true);
    assert!(!vs.variables()["layer3.0.downsample.1.running_mean"].equal(&before));
}

#[test]
fn invalid_configurations_are_refused() {
    let vs = nn::VarStore::new(Device::Cpu);
    let err = HashNet::new(&vs.root(), &HashNetConfig { bits: 4, stem: Stem::Small, input_size: 28 }).unwrap_err();
    assert!(matches!(err, ModelError::Bits { bits: 4, .. }), "{err}");
    let err = HashNet::new(&vs.root(), &HashNetConfig { bits: 64, stem: Stem::ImageNet, input_size: 28 }).unwrap_err();
    assert!(matches!(err, ModelError::InputSize { size: 28, .. }), "{err}");
    assert!(vs.variables().is_empty(), "a refused configuration creates no variables");
}

#[test]
fn config_round_trips_through_json() {
    let cfg = HashNetConfig { bits: 48, stem: Stem::ImageNet, input_size: 224 };
    let json = serde_json::to_string(&cfg).unwrap();
    assert_eq!(json, r#"{"bits":48,"stem":"imagenet","input_size":224}"#);
    assert_eq!(serde_json::from_str::<HashNetConfig>(&json).unwrap(), cfg);
    let small: HashNetConfig = serde_json::from_str(r#"{"bits":16,"stem":"small","input_size":28}"#).unwrap();
    assert_eq!(small.stem, Stem::Small);
}
