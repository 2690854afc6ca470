//! The `hashsrv` offline commands as a user runs them: build-index (from a model over a data set,
//! and from .npy codes), info, search (images and hex codes), evaluate (model and .npy queries),
//! and their refusals of bad input. Real binary, real ONNX Runtime on the tiny fixture model,
//! real image files.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use hashsrv::index::metrics::{self, TieMode};
use hashsrv::index::{CodeIndex, CodeMatrix, HashCode, npy};

fn hashsrv(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hashsrv")).args(args).env("RUST_LOG", "warn").output().expect("runs hashsrv")
}

fn ok(args: &[&str]) -> String {
    let out = hashsrv(args);
    assert!(out.status.success(), "hashsrv {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn fails(args: &[&str]) -> String {
    let out = hashsrv(args);
    assert_eq!(out.status.code(), Some(1), "hashsrv {args:?} should fail with exit 1");
    String::from_utf8(out.stderr).unwrap()
}

fn fixture(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(path)
}

fn s(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// Codes of 3 clusters (32 bits): items of class c are noisy copies of centre c.
fn clustered(n: usize, seed: u64) -> (Vec<u64>, Vec<u32>) {
    let centres = [0x0f0f_0f0f_u64, 0xf0f0_f0f0, 0x3c3c_3c3c];
    let mut state = seed;
    let mut words = Vec::new();
    let mut labels = Vec::new();
    for i in 0..n {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let label = (i % 3) as u32;
        let noise = 1u64 << ((state >> 33) % 32);
        // 32-bit codes sit in the high half of the word (MSB-first layout).
        words.push((centres[label as usize] ^ noise) << 32);
        labels.push(label);
    }
    (words, labels)
}

#[test]
fn npy_codes_build_an_index_that_info_search_and_evaluate_read() {
    let dir = tempfile::tempdir().unwrap();
    let (db, db_labels) = clustered(300, 1);
    let (q, q_labels) = clustered(60, 2);
    let (db_codes, db_lab, q_codes, q_lab) = (
        dir.path().join("db.npy"),
        dir.path().join("db_labels.npy"),
        dir.path().join("q.npy"),
        dir.path().join("q_labels.npy"),
    );
    npy::write_packed_codes(&db_codes, CodeMatrix::new(32, &db)).unwrap();
    npy::write_labels(&db_lab, &db_labels).unwrap();
    npy::write_packed_codes(&q_codes, CodeMatrix::new(32, &q)).unwrap();
    npy::write_labels(&q_lab, &q_labels).unwrap();
    let names = dir.path().join("names.txt");
    std::fs::write(&names, "alpha\nbeta\ngamma\n").unwrap();
    let index = dir.path().join("db.hidx");

    ok(&[
        "build-index",
        "--codes",
        s(&db_codes),
        "--packed-bits",
        "32",
        "--labels",
        s(&db_lab),
        "--class-names",
        s(&names),
        "--out",
        s(&index),
    ]);
    let opened = CodeIndex::open(&index).unwrap();
    assert_eq!((opened.bits(), opened.len()), (32, 300));
    assert_eq!(opened.labels(), db_labels.as_slice());
    assert_eq!(opened.codes().words(), db.as_slice());

    let info = ok(&["info", s(&index), "--verify"]);
    assert!(info.contains("32 bits, 300 items") && info.contains("verified") && info.contains("gamma"), "{info}");

    // The nearest neighbour of a database code is itself (distance 0, rank 1).
    let hex = HashCode::from_words(32, &db[7..8]).unwrap().to_hex();
    let found: serde_json::Value =
        serde_json::from_str(&ok(&["search", "--index", s(&index), "--code", &hex, "-k", "3", "--json"])).unwrap();
    let first = &found[0]["results"][0];
    assert_eq!((first["distance"].as_u64(), first["label"].as_u64()), (Some(0), Some(1)));
    assert_eq!(found[0]["results"].as_array().unwrap().len(), 3);

    let out_dir = dir.path().join("report");
    let evaluate = [
        "evaluate",
        "--index",
        s(&index),
        "--query-codes",
        s(&q_codes),
        "--packed-bits",
        "32",
        "--query-labels",
        s(&q_lab),
    ];
    let report: serde_json::Value =
        serde_json::from_str(&ok(&[&evaluate[..], &["--out", s(&out_dir), "--json"]].concat())).unwrap();
    let expected = metrics::mean_average_precision(
        CodeMatrix::new(32, &db),
        &db_labels,
        CodeMatrix::new(32, &q),
        &q_labels,
        TieMode::IndexOrder,
    )
    .unwrap();
    assert_eq!(report["map"][0]["ties"], "index-order");
    assert!((report["map"][0]["map"].as_f64().unwrap() - expected.map).abs() < 1e-12);
    for file in ["metrics.json", "pr_curve.svg", "precision_at_k.svg"] {
        assert!(out_dir.join(file).is_file(), "{file} missing");
    }
    let table = ok(&evaluate);
    assert!(table.contains("mAP@all") && table.contains("ties: expected"), "{table}");
}

#[test]
fn a_model_indexes_a_folder_data_set_and_evaluates_its_test_split() {
    let dir = tempfile::tempdir().unwrap();
    let index = dir.path().join("train.hidx");
    let model = fixture("model/tiny.onnx");
    let data = fixture("folder");
    ok(&[
        "build-index",
        "--dataset",
        "folder",
        "--data",
        s(&data),
        "--model",
        s(&model),
        "--out",
        s(&index),
        "--device",
        "cpu",
    ]);
    let opened = CodeIndex::open(&index).unwrap();
    assert_eq!(opened.bits(), 16);
    assert!(!opened.is_empty());
    assert_eq!(opened.metadata().class_names, ["apples", "bananas", "cherries"]);
    let model_sha = opened.metadata().model_sha256.clone().unwrap();
    assert_eq!(model_sha.len(), 64);

    // An image of the index finds itself at distance 0.
    let first_path = data.join(opened.path(0));
    let found: serde_json::Value = serde_json::from_str(&ok(&[
        "search",
        "--model",
        s(&model),
        "--index",
        s(&index),
        s(&first_path),
        "--json",
        "-k",
        "1",
    ]))
    .unwrap();
    assert_eq!(found[0]["results"][0]["distance"], 0);
    assert_eq!(found[0]["results"][0]["path"], opened.path(0));

    let report: serde_json::Value = serde_json::from_str(&ok(&[
        "evaluate",
        "--dataset",
        "FOLDER",
        "--data",
        s(&data),
        "--model",
        s(&model),
        "--index",
        s(&index),
        "--json",
    ]))
    .unwrap();
    assert!(report["queries"].as_u64().unwrap() > 0);
    let map = report["map"][0]["map"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&map));

    // A model that is not the one the index was built with is refused unless allowed.
    let other = fixture("model/bad_bits_mismatch.onnx");
    let err = fails(&["search", "--model", s(&other), "--index", s(&index), s(&first_path)]);
    assert!(err.contains("error:"), "{err}");
}

#[test]
fn bad_inputs_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let corrupt = dir.path().join("corrupt.hidx");
    std::fs::write(&corrupt, b"definitely not an index").unwrap();
    let err = fails(&["info", s(&corrupt)]);
    assert!(err.contains("corrupt.hidx") || err.contains("index"), "{err}");
    let err = fails(&["search", "--index", s(&corrupt), "--code", "00ff"]);
    assert!(!err.contains("panicked"), "{err}");

    let (db, labels) = clustered(30, 3);
    let codes = dir.path().join("c.npy");
    let few_labels = dir.path().join("l.npy");
    npy::write_packed_codes(&codes, CodeMatrix::new(32, &db)).unwrap();
    npy::write_labels(&few_labels, &labels[..10]).unwrap();
    let target = dir.path().join("db.hidx");
    let err = fails(&[
        "build-index",
        "--codes",
        s(&codes),
        "--packed-bits",
        "32",
        "--labels",
        s(&few_labels),
        "--out",
        s(&target),
    ]);
    assert!(err.contains("30 codes") && err.contains("10 labels"), "{err}");
    assert!(!target.exists(), "a failed build must not leave an index behind");

    npy::write_labels(&few_labels, &labels).unwrap();
    ok(&["build-index", "--codes", s(&codes), "--packed-bits", "32", "--labels", s(&few_labels), "--out", s(&target)]);
    let err = fails(&["search", "--index", s(&target), "--code", "abc"]);
    assert!(err.contains("hex") || err.contains("bytes"), "{err}");
    let err = fails(&["evaluate", "--dataset", "dogs", "--model", "m.onnx", "--index", s(&target)]);
    assert!(err.contains("m.onnx") || err.contains("HASHSRV_DOGS_DATA"), "{err}");
    // Missing data root for a data set without a default names the flag and the variable.
    let out = Command::new(env!("CARGO_BIN_EXE_hashsrv"))
        .args(["baseline", "--method", "lsh", "--dataset", "cub"])
        .env_remove("HASHSRV_CUB_DATA")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(err.contains("--data") && err.contains("HASHSRV_CUB_DATA"), "{err}");
}
