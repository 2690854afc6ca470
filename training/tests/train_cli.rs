//! `hashsrv-train` end to end on the real Fashion-MNIST (Debian's files): a short run writes its
//! configuration, metrics, checkpoints and model, `--resume` continues it, and bad requests fail
//! with a clear message before any work.

use std::path::Path;
use std::process::{Command, Output};

use sha2::Digest;

const FASHION_MNIST: &str = "/usr/share/datasets/fashion-mnist";

fn train(out: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["--dataset", "fashion-mnist", "--data", FASHION_MNIST, "--out", out.to_str().unwrap()];
    args.extend_from_slice(extra);
    Command::new(env!("CARGO_BIN_EXE_hashsrv-train")).args(&args).output().expect("run hashsrv-train")
}

fn json(path: &Path) -> serde_json::Value {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_slice(&bytes).unwrap()
}

/// The server's path (the shared evaluation preprocessing, then ONNX Runtime on the exported
/// model, as `hashsrv build-index` runs it) gives the codes the trainer indexed with tch. An
/// output within 1e-4 of zero may fall either side between the two runtimes (they agree to
/// about 1e-6), so only those bits are allowed to differ.
fn assert_index_matches_onnx(out: &Path, bits: usize, limit_train: usize, val_fraction: f32) {
    let index = hashsrv_index::CodeIndex::open(&out.join("train.hidx")).unwrap();
    assert_eq!(index.bits() as usize, bits);
    let encoder = hashsrv::encoder::Encoder::open(
        &out.join("model.onnx"),
        &hashsrv::encoder::EncoderOptions { device: hashsrv::encoder::Device::Cpu, ..Default::default() },
    )
    .unwrap();
    let options = hashsrv::dataset::OpenOptions {
        limit_train: Some(limit_train),
        limit_test: Some(100),
        val_fraction,
        ..Default::default()
    };
    let dataset = hashsrv::dataset::Dataset::open(
        hashsrv::dataset::DatasetKind::FashionMnist,
        Path::new(FASHION_MNIST),
        &options,
    )
    .unwrap();
    let items = dataset.split(hashsrv::dataset::Split::Train);
    assert_eq!(items.len(), index.len());
    let images: Vec<_> = items.iter().map(|item| item.load().unwrap()).collect();
    let outputs = encoder.outputs(&encoder.preprocess_batch(&images).unwrap(), images.len()).unwrap();
    let mut compared = 0;
    for (i, item) in items.iter().enumerate() {
        assert_eq!(index.path(i), item.path);
        let indexed = hashsrv_index::HashCode::from_words(bits as u32, index.codes().code(i)).unwrap();
        for (bit, &y) in outputs[i * bits..(i + 1) * bits].iter().enumerate() {
            if y.abs() > 1e-4 {
                assert_eq!(indexed.bit(bit as u32), y > 0.0, "item {i} bit {bit}: ONNX output {y}");
                compared += 1;
            }
        }
    }
    assert!(
        compared * 100 > items.len() * bits * 93,
        "only {compared} of {} bits were clear of zero",
        items.len() * bits
    );
}

#[test]
fn short_run_writes_its_artefacts_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    // 30% validation so that each class has a few validation images in both halves.
    let common = [
        "--limit-train",
        "200",
        "--limit-test",
        "100",
        "--bits",
        "16",
        "--input-size",
        "28",
        "--threads",
        "2",
        "--val-fraction",
        "0.3",
    ];
    let first = train(&out, &[&common[..], &["--epochs", "1"]].concat());
    let stderr = String::from_utf8_lossy(&first.stderr);

    let config = json(&out.join("config.json"));
    assert_eq!(config["bits"], 16);
    assert_eq!(config["input_size"], 28);
    assert_eq!(config["margin"], 8.0, "default margin for 16 bits");
    assert_eq!(config["stem"], "small", "28-pixel inputs default to the small stem");
    assert_eq!(config["batch"], 80);

    let metrics = json(&out.join("metrics.json"));
    let epochs = metrics["epochs"].as_array().unwrap();
    assert_eq!(epochs.len(), 1, "{stderr}");
    let loss = epochs[0]["loss"].as_f64().unwrap();
    assert!(loss.is_finite() && loss >= 0.0, "{loss}");
    // 200 items, 30% validation: 140 fit -> round(140 / 80) = 2 batches of 80.
    assert_eq!(epochs[0]["images"], 160);
    let evaluations = metrics["evaluations"].as_array().unwrap();
    assert_eq!(evaluations.len(), 1);
    assert_eq!(evaluations[0]["queries"], 30);
    assert_eq!(evaluations[0]["database"], 30);
    let map = evaluations[0]["val_map"].as_f64().expect("validation mAP computed");
    assert!(map > 0.0 && map <= 1.0, "{map}");
    assert_eq!(metrics["best"], serde_json::json!([1, map]), "the only evaluation is the best");
    assert_eq!(json(&out.join("checkpoints/best.json"))["val_map"], map);
    let ones = evaluations[0]["ones_fraction"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&ones));

    let last = json(&out.join("checkpoints/last.json"));
    assert_eq!(last["epoch"], 1);
    assert_eq!(last["config"], config);
    assert!(
        std::fs::metadata(out.join("checkpoints/last.safetensors")).unwrap().len() > 40_000_000,
        "ResNet-18 weights"
    );
    assert!(first.status.success(), "{stderr}");

    // The index holds the whole training split (validation included), under the model's hash.
    let model = std::fs::read(out.join("model.onnx")).unwrap();
    assert!(model.len() > 40_000_000);
    let sha256: String = sha2::Sha256::digest(&model).iter().map(|b| format!("{b:02x}")).collect();
    assert!(String::from_utf8_lossy(&first.stdout).contains(&sha256));
    let index = hashsrv_index::CodeIndex::open(&out.join("train.hidx")).unwrap();
    index.verify().unwrap();
    assert_eq!(index.bits(), 16);
    assert_eq!(index.len(), 200);
    assert_eq!(index.metadata().model_sha256.as_deref(), Some(sha256.as_str()));
    assert_eq!(index.metadata().dataset.as_deref(), Some("fashion-mnist"));
    assert_eq!(index.metadata().class_names.len(), 10);
    let mut per_class = [0usize; 10];
    for &label in index.labels() {
        per_class[label as usize] += 1;
    }
    assert_eq!(per_class, [20; 10], "stratified 200");
    assert_eq!(index.id(7), 7);
    assert!(index.path(0).contains("train-images"), "{}", index.path(0));

    assert_index_matches_onnx(&out, 16, 200, 0.3);

    // A second epoch from the checkpoint: one more epoch trained, history kept.
    let second = train(&out, &[&common[..], &["--epochs", "2", "--resume"]].concat());
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(stderr.contains("resumed"), "{stderr}");
    let metrics = json(&out.join("metrics.json"));
    let epochs: Vec<u64> = metrics["epochs"].as_array().unwrap().iter().map(|e| e["epoch"].as_u64().unwrap()).collect();
    assert_eq!(epochs, vec![1, 2], "{stderr}");
    assert_eq!(json(&out.join("checkpoints/last.json"))["epoch"], 2);

    // Resuming into another network is refused, naming the difference.
    let other =
        train(&out, &["--limit-train", "200", "--bits", "32", "--input-size", "28", "--epochs", "3", "--resume"]);
    assert!(!other.status.success());
    let stderr = String::from_utf8_lossy(&other.stderr);
    assert!(stderr.contains("cannot resume") && stderr.contains("bits: 32"), "{stderr}");
}

#[test]
fn a_time_budget_sets_the_epoch_count_from_the_measured_speed() {
    let common = ["--limit-train", "200", "--bits", "16", "--input-size", "32", "--stem", "imagenet", "--threads", "2"];
    let common = [&common[..], &["--val-fraction", "0.3"]].concat();
    let cosine = [&common[..], &["--schedule", "cosine"]].concat();
    let epochs_of = |out: &Path| -> Vec<u64> {
        let metrics = json(&out.join("metrics.json"));
        metrics["epochs"].as_array().unwrap().iter().map(|e| e["epoch"].as_u64().unwrap()).collect()
    };

    // Far less time than one epoch: one epoch all the same.
    let dir = tempfile::tempdir().unwrap();
    let short = dir.path().join("short");
    let output = train(&short, &[&cosine[..], &["--time-budget", "0.001", "--epochs", "3"]].concat());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("time budget"), "{stderr}");
    assert_eq!(epochs_of(&short), vec![1], "{stderr}");
    let plan = &json(&short.join("metrics.json"))["time_budget"];
    assert_eq!(plan["epochs"], 1);
    assert_eq!(plan["seconds"], 0.001);
    let (step, epoch) = (plan["step_seconds"].as_f64().unwrap(), plan["epoch_seconds"].as_f64().unwrap());
    // 140 fit images are 2 batches of 80, plus the validation pass: more than 2 steps' time.
    assert!(step > 0.0 && epoch > 2.0 * step, "{plan}");
    assert_eq!(json(&short.join("config.json"))["epochs"], 1, "config.json holds the chosen count");

    // More time than --epochs needs: --epochs caps the count.
    let long = dir.path().join("long");
    let output = train(&long, &[&cosine[..], &["--time-budget", "100000", "--epochs", "2"]].concat());
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(epochs_of(&long), vec![1, 2]);
    assert_eq!(json(&long.join("metrics.json"))["time_budget"]["epochs"], 2);

    // A resumed run keeps the count its schedule was laid out over instead of measuring again.
    let output = train(&long, &[&cosine[..], &["--time-budget", "100000", "--epochs", "5", "--resume"]].concat());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success() && stderr.contains("resumed"), "{stderr}");
    assert!(!stderr.contains("epochs chosen"), "{stderr}");
    assert_eq!(epochs_of(&long), vec![1, 2], "{stderr}");

    // Budgets that cannot work are refused before any work.
    for (extra, message) in [
        (&["--time-budget", "0", "--schedule", "cosine"][..], "positive number of seconds"),
        (&["--time-budget", "60", "--schedule", "step"][..], "--schedule cosine"),
    ] {
        let out = dir.path().join("refused");
        let output = train(&out, &[&common[..], extra].concat());
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success() && stderr.contains(message), "{extra:?}: {stderr}");
        assert!(!out.join("config.json").exists(), "{extra:?}");
    }
}

#[test]
fn cuda_without_a_gpu_is_a_clear_error() {
    if tch::Cuda::is_available() {
        return; // the request is legitimate on a machine with a GPU
    }
    // The seed's `--ngpu 1` means the first GPU too.
    for request in [["--device", "cuda:0"], ["--ngpu", "1"]] {
        let dir = tempfile::tempdir().unwrap();
        let output = train(dir.path(), &[&request[..], &["--epochs", "1"]].concat());
        assert!(!output.status.success());
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("cuda:0") && stderr.contains("--device cpu"), "{request:?}: {stderr}");
        assert!(!dir.path().join("config.json").exists(), "nothing written before the device check");
    }
}

#[test]
fn seed_flag_names_are_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_hashsrv-train"))
        .args(["--dataset_name", "fashion-mnist", "--binary_bits", "7", "--ngpu", "0", "--out"])
        .arg(dir.path())
        .output()
        .unwrap();
    // The aliases parse; the 7-bit code is then refused by the network's own check.
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("between 8 and 1024 bits, got 7"), "{stderr}");
}

fn weights(path: &Path) -> std::collections::HashMap<String, tch::Tensor> {
    tch::Tensor::read_safetensors(path).unwrap().into_iter().collect()
}

#[test]
fn frozen_trunk_trains_only_the_hash_layer_from_a_previous_run() {
    let dir = tempfile::tempdir().unwrap();
    let common =
        ["--limit-train", "300", "--input-size", "32", "--stem", "imagenet", "--threads", "1", "--val-fraction", "0.3"];
    let source = dir.path().join("source");
    let run = train(&source, &[&common[..], &["--bits", "32", "--epochs", "1"]].concat());
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let checkpoint = source.join("checkpoints/best.safetensors");
    let source_weights = weights(&checkpoint);

    // Without a trunk to freeze, the request is refused before any work.
    let refused = train(&dir.path().join("refused"), &[&common[..], &["--freeze-trunk"]].concat());
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("--freeze-trunk needs --pretrained"), "{stderr}");

    for bits in ["32", "16"] {
        let out = dir.path().join(format!("frozen{bits}"));
        let extra = ["--bits", bits, "--epochs", "3", "--lr", "0.01", "--freeze-trunk", "--pretrained"];
        // The 16-bit head is trained with the demo's recipe (AdamW and the hash-centre term).
        let recipe: &[&str] = if bits == "16" { &["--optimizer", "adamw", "--centres", "1"] } else { &[] };
        let run = train(&out, &[&common[..], &extra, &[checkpoint.to_str().unwrap()], recipe].concat());
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert!(run.status.success(), "{stderr}");
        assert!(stderr.contains("training only the hash layer"), "{stderr}");

        let config = json(&out.join("config.json"));
        assert_eq!(config["freeze_trunk"], true);
        let metrics = json(&out.join("metrics.json"));
        assert_eq!(metrics["epochs"].as_array().unwrap().len(), 3, "{stderr}");
        let with_centres = bits == "16";
        assert_eq!(config["optimizer"], if with_centres { "adamw" } else { "sgd" });
        assert_eq!(config["centres"], if with_centres { 1.0 } else { 0.0 });
        for epoch in metrics["epochs"].as_array().unwrap() {
            let centre = epoch["centre"].as_f64().unwrap();
            assert_eq!(centre > 0.0, with_centres, "{epoch}");
        }
        assert_eq!(metrics["evaluations"].as_array().unwrap().len(), 3);
        assert!(metrics["best"][1].as_f64().is_some_and(|map| map > 0.0 && map <= 1.0), "{metrics}");

        // The trunk (weights and batch-norm statistics) is the source's, bit for bit; the hash
        // layer has this run's length and was trained (at 32 bits it started from the source's).
        let trained = weights(&out.join("checkpoints/best.safetensors"));
        assert_eq!(trained.len(), source_weights.len());
        for (name, tensor) in &trained {
            if name.starts_with("hash.") {
                assert_eq!(tensor.size()[0], bits.parse::<i64>().unwrap(), "{name}");
                if bits == "32" {
                    assert!(!tensor.equal(&source_weights[name]), "{name} was not trained");
                }
            } else {
                assert!(tensor.equal(&source_weights[name]), "{name} changed in frozen-trunk mode");
            }
        }
        assert_index_matches_onnx(&out, bits.parse().unwrap(), 300, 0.3);
    }
}
