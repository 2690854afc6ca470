//! Shared fixtures of the server tests: the tiny model, an index of the folder fixture encoded
//! with it, server states, real image files and multipart bodies.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Cursor};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ChildStderr;
use std::sync::Arc;

use hashsrv::dataset::{Dataset, DatasetKind, OpenOptions, Split};
use hashsrv::encoder::{Encoder, EncoderOptions};
use hashsrv::index::{IndexMetadata, IndexWriter};
use hashsrv::server::{AppState, ServerConfig, serve};
use image::{DynamicImage, ImageFormat, RgbImage};

pub fn fixture(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(path)
}

pub fn model_path() -> PathBuf {
    fixture("model/tiny.onnx")
}

pub fn folder_root() -> PathBuf {
    fixture("folder")
}

pub fn encoder() -> Encoder {
    Encoder::open(&model_path(), &EncoderOptions { intra_threads: Some(1), ..EncoderOptions::default() })
        .expect("the tiny model opens")
}

/// Writes an index of the folder fixture's Train and Test items (ids 0.., in that order), or of
/// its first `limit` items, encoded with the tiny model. Returns the items' paths and labels.
pub fn build_index(out: &Path, limit: Option<usize>) -> Vec<(String, u32)> {
    let encoder = encoder();
    let data = Dataset::open(DatasetKind::Folder, &folder_root(), &OpenOptions::default()).unwrap();
    let mut items: Vec<_> = data.split(Split::Train).iter().chain(data.split(Split::Test)).cloned().collect();
    if let Some(limit) = limit {
        items.truncate(limit);
    }
    let images: Vec<DynamicImage> = items.iter().map(|item| item.load().unwrap()).collect();
    let codes = encoder.encode_images(&images).unwrap();
    let metadata = IndexMetadata {
        model_sha256: Some(encoder.info().sha256.clone()),
        dataset: Some("folder".into()),
        class_names: data.class_names().to_vec(),
        ..IndexMetadata::default()
    };
    let mut writer = IndexWriter::create(out, encoder.bits(), metadata).unwrap();
    for (i, (item, code)) in items.iter().zip(&codes).enumerate() {
        writer.push(code.words(), item.label, i as u64, &item.path).unwrap();
    }
    writer.finish().unwrap();
    items.iter().map(|item| (item.path.clone(), item.label)).collect()
}

/// A config on the tiny model and an index built in `dir`, with thumbnails from the folder fixture.
pub fn config(dir: &Path) -> ServerConfig {
    let index = dir.join("folder.hidx");
    if !index.exists() {
        build_index(&index, None);
    }
    let mut config = ServerConfig::new(model_path(), index);
    config.encoder = EncoderOptions { intra_threads: Some(1), ..EncoderOptions::default() };
    config.dataset = Some((DatasetKind::Folder, folder_root()));
    config
}

pub fn state(dir: &Path, tweak: impl FnOnce(&mut ServerConfig)) -> Arc<AppState> {
    let mut config = config(dir);
    tweak(&mut config);
    AppState::new(config).expect("the server state opens")
}

/// The bytes of a fixture image of the folder data set.
pub fn fixture_image(path: &str) -> Vec<u8> {
    std::fs::read(folder_root().join(path)).unwrap()
}

/// A colourful test picture of any size.
pub fn picture(width: u32, height: u32, seed: u32) -> DynamicImage {
    DynamicImage::ImageRgb8(RgbImage::from_fn(width, height, |x, y| {
        image::Rgb([
            ((x * 7 + seed * 31) % 256) as u8,
            ((y * 5 + seed * 17) % 256) as u8,
            (((x + y) * 3 + seed * 11) % 256) as u8,
        ])
    }))
}

pub fn encode(image: &DynamicImage, format: ImageFormat) -> Vec<u8> {
    let mut bytes = Vec::new();
    image.write_to(&mut Cursor::new(&mut bytes), format).unwrap();
    bytes
}

pub const BOUNDARY: &str = "hashsrv-test-boundary-7e1f";

/// A multipart/form-data body of `(field name, file name, bytes)` parts.
pub fn multipart(parts: &[(&str, Option<&str>, &[u8])]) -> Vec<u8> {
    let mut body = Vec::new();
    for (name, filename, bytes) in parts {
        body.extend_from_slice(format!("--{BOUNDARY}\r\n").as_bytes());
        match filename {
            Some(file) => body.extend_from_slice(
                format!(
                    "Content-Disposition: form-data; name=\"{name}\"; filename=\"{file}\"\r\n\
                     Content-Type: application/octet-stream\r\n\r\n"
                )
                .as_bytes(),
            ),
            None => {
                body.extend_from_slice(format!("Content-Disposition: form-data; name=\"{name}\"\r\n\r\n").as_bytes())
            }
        }
        body.extend_from_slice(bytes);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    body
}

pub fn multipart_type() -> String {
    format!("multipart/form-data; boundary={BOUNDARY}")
}

/// Reads the log of a `hashsrv serve` process (its stderr, piped, with `RUST_LOG=info`) until it
/// says where it serves. Returns that URL, the log read so far, and the rest of the stream.
pub fn serving_url(stderr: ChildStderr) -> (String, String, BufReader<ChildStderr>) {
    let mut stderr = BufReader::new(stderr);
    let mut log = String::new();
    loop {
        let mut line = String::new();
        if stderr.read_line(&mut line).unwrap() == 0 {
            panic!("the server exited before listening:\n{log}");
        }
        log.push_str(&line);
        if let Some(at) = line.find("serving on http://") {
            let url = line[at + "serving on ".len()..].trim().to_string();
            return (url, log, stderr);
        }
    }
}

/// A server of `state` on a real loopback port, running in the test's runtime until `stop`.
pub struct Running {
    pub addr: SocketAddr,
    pub state: Arc<AppState>,
    stop: tokio::sync::oneshot::Sender<()>,
    done: tokio::task::JoinHandle<std::io::Result<()>>,
}

pub async fn start(state: Arc<AppState>) -> Running {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let done = tokio::spawn(serve(listener, Arc::clone(&state), async {
        let _ = stopped.await;
    }));
    Running { addr, state, stop, done }
}

impl Running {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Asks the server to shut down and waits until it has drained.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        self.done.await.unwrap().unwrap();
    }
}
