//! The main job end to end on real Fashion-MNIST, small: `hashsrv train` (forwarded to
//! `hashsrv-train`) on a few hundred images for one epoch, which exports ONNX and the index;
//! `hashsrv evaluate` on test images; then `hashsrv serve` on a real port and one multipart
//! search with a PNG made from the data set.

mod server_support;

use std::path::Path;
use std::process::{Child, Command, Stdio};

use hashsrv::dataset::{Dataset, DatasetKind, OpenOptions, Split};
use hashsrv_index::CodeIndex;
use hashsrv_index::code::HashCode;
use server_support::{encode, serving_url};

const FASHION_MNIST: &str = "/usr/share/datasets/fashion-mnist";
const BITS: u32 = 16;

fn hashsrv() -> Command {
    Command::new(env!("CARGO_BIN_EXE_hashsrv"))
}

fn run(command: &mut Command) -> String {
    let output = command.output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{command:?} exited with {}\nstdout:\n{stdout}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// Kills the server even when an assertion fails first.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn train_export_index_evaluate_and_search_over_http() {
    assert!(
        Path::new(FASHION_MNIST).join("train-images-idx3-ubyte.gz").is_file(),
        "Fashion-MNIST is missing: run scripts/setup.sh (Debian package dataset-fashion-mnist)"
    );
    let trainer = Path::new(env!("CARGO_BIN_EXE_hashsrv")).with_file_name("hashsrv-train");
    assert!(
        trainer.is_file(),
        "{} is missing: cargo build -p hashsrv-train (cargo test --workspace does)",
        trainer.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let run_dir = dir.path().join("run");

    // Train: the command the README's main job runs, on 300 images and one epoch.
    run(hashsrv()
        .args(["train", "--dataset", "fashion-mnist", "--data", FASHION_MNIST, "--bits", &BITS.to_string()])
        .args(["--input-size", "32", "--stem", "imagenet", "--epochs", "1", "--batch", "40"])
        .args(["--limit-train", "300", "--limit-test", "50", "--threads", "2", "--lr", "0.01", "--out"])
        .arg(&run_dir));
    let model = run_dir.join("model.onnx");
    let index_path = run_dir.join("train.hidx");
    let index = CodeIndex::open(&index_path).unwrap();
    index.verify().unwrap();
    assert_eq!(index.bits(), BITS);
    // The whole training split (300 stratified images), validation tenth included.
    assert_eq!(index.len(), 300);
    assert_eq!(index.metadata().class_names.len(), 10);

    // Evaluate the first 50 test images against the index.
    let report = run_dir.join("report");
    run(hashsrv()
        .args(["evaluate", "--dataset", "fashion-mnist", "--data", FASHION_MNIST, "--limit-test", "50", "--model"])
        .arg(&model)
        .arg("--index")
        .arg(&index_path)
        .arg("--out")
        .arg(&report));
    let metrics: serde_json::Value =
        serde_json::from_slice(&std::fs::read(report.join("metrics.json")).unwrap()).unwrap();
    assert_eq!(metrics["queries"], 50, "{metrics:#}");
    assert_eq!(metrics["database_size"], 300, "{metrics:#}");
    let map_in = |ties: &str| {
        let entry = metrics["map"].as_array().unwrap().iter().find(|e| e["ties"] == ties).unwrap();
        entry["map"].as_f64().unwrap()
    };
    let (low, mid, high) = (map_in("pessimistic"), map_in("index-order"), map_in("optimistic"));
    assert!(0.0 < low && low <= mid && mid <= high && high <= 1.0, "{metrics:#}");
    assert!(report.join("pr_curve.svg").is_file());

    // Serve, then search with a training image as a PNG upload: its code must be the one the
    // trainer indexed for it (up to an output at the sign boundary), so it is found near 0. ONNX
    // Runtime's threads sleep between runs here, the setting for loaded servers.
    let mut child = hashsrv()
        .args([
            "serve",
            "--addr",
            "127.0.0.1:0",
            "--threads",
            "1",
            "--ort-spinning",
            "off",
            "--dataset",
            "fashion-mnist",
        ])
        .arg("--data")
        .arg(FASHION_MNIST)
        .arg("--model")
        .arg(&model)
        .arg("--index")
        .arg(&index_path)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let _server = Server(child);
    let (url, _log, _rest) = serving_url(stderr);

    let data = Dataset::open(
        DatasetKind::FashionMnist,
        Path::new(FASHION_MNIST),
        &OpenOptions { limit_train: Some(300), limit_test: Some(50), ..Default::default() },
    )
    .unwrap();
    let position = 7;
    let item_path = index.path(position).to_string();
    let item = data.find(Split::Train, &item_path).expect("the index's items come from the training split");
    let form = reqwest::blocking::multipart::Form::new().part(
        "image",
        reqwest::blocking::multipart::Part::bytes(encode(&item.load().unwrap(), image::ImageFormat::Png))
            .file_name("query.png")
            .mime_str("image/png")
            .unwrap(),
    );
    let response = reqwest::blocking::Client::new().post(format!("{url}/search?k=300")).multipart(form).send().unwrap();
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().unwrap();
    let query = &body["queries"][0];
    let code = HashCode::from_hex(BITS, query["code"].as_str().unwrap()).unwrap();
    let indexed = HashCode::from_words(BITS, index.codes().code(position)).unwrap();
    let differing = code.distance(&indexed);
    assert!(differing <= 1, "the uploaded image's code differs from its indexed code in {differing} bits");
    let results = query["results"].as_array().unwrap();
    assert_eq!(results.len(), 300);
    let own = results.iter().find(|r| r["path"] == item_path.as_str()).expect("every item is ranked with k = all");
    assert_eq!(own["distance"], differing);
    assert_eq!(own["class_name"], data.class_names()[item.label as usize].as_str());
    let distances: Vec<u64> = results.iter().map(|r| r["distance"].as_u64().unwrap()).collect();
    assert!(distances.is_sorted());

    // The page's thumbnails of the results are PNGs of the data set's images.
    let id = results[0]["id"].as_u64().unwrap();
    let thumbnail = reqwest::blocking::get(format!("{url}/images/{id}")).unwrap();
    assert_eq!(thumbnail.status(), 200);
    assert_eq!(thumbnail.headers()["content-type"], "image/png");
    image::load_from_memory(&thumbnail.bytes().unwrap()).unwrap();
}
