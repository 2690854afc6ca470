//! Server benchmarks on a real exported model (BENCHMARKS.md, section "Server"):
//! 1. one `POST /search` of a 500x375 JPEG end to end (HTTP on loopback) against the sum of its
//!    parts run directly in this process (decode + preprocess + raw ORT run + index scan);
//! 2. throughput at concurrency 1, 8 and 32 with dynamic batching on and off, against raw ORT
//!    throughput of the same model at batch 1, 8 and 32.
//!
//! ```text
//! cargo run --release -p hashsrv --example server_bench -- MODEL.onnx FASHION_MNIST_DIR [ITEMS] [REQUESTS] [MAX_WAIT_MS]
//! ```
//! The index is built here from the first ITEMS (default 1000) Fashion-MNIST training images.

use std::io::Cursor;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use hashsrv::dataset::{Dataset, DatasetKind, OpenOptions, Split};
use hashsrv::encoder::{Device, Encoder, EncoderOptions};
use hashsrv::index::{CodeIndex, IndexMetadata, IndexWriter, SearchOptions};
use hashsrv::preprocess::{DecodeLimits, decode_image};
use hashsrv::server::batcher::BatchConfig;
use hashsrv::server::{AppState, ServerConfig, serve};
use image::{DynamicImage, ImageFormat, RgbImage};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn encode(image: &DynamicImage, format: ImageFormat) -> Vec<u8> {
    let mut bytes = Vec::new();
    image.write_to(&mut Cursor::new(&mut bytes), format).expect("in-memory encoding");
    bytes
}

/// A photo-like 500x375 picture: smooth gradients and some texture, so JPEG has work to do.
fn photo() -> DynamicImage {
    DynamicImage::ImageRgb8(RgbImage::from_fn(500, 375, |x, y| {
        let t = ((x * 37 + y * 11) % 23) as u8;
        image::Rgb([(x / 2) as u8 ^ t, (y * 2 / 3) as u8, ((x + y) / 4) as u8 + t])
    }))
}

async fn start(config: ServerConfig) -> anyhow::Result<(String, tokio::sync::oneshot::Sender<()>)> {
    let state = AppState::new(config)?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(serve(listener, state, async {
        let _ = stopped.await;
    }));
    Ok((url, stop))
}

/// Requests per second over `total` requests of `body` at `concurrency`; panics on a non-200.
async fn throughput(url: &str, body: &[u8], total: usize, concurrency: usize) -> f64 {
    let client = reqwest::Client::new();
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (client, url, body, next) = (client.clone(), format!("{url}/search?k=10"), body.to_vec(), next.clone());
            tokio::spawn(async move {
                while next.fetch_add(1, Ordering::Relaxed) < total {
                    let response = client.post(&url).body(body.clone()).send().await.expect("request");
                    assert_eq!(response.status(), 200);
                    response.bytes().await.expect("body");
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.expect("worker");
    }
    total as f64 / started.elapsed().as_secs_f64()
}

/// Images run and model runs so far, from the server's `/metrics`.
async fn batch_totals(url: &str) -> (f64, f64) {
    let text = reqwest::get(format!("{url}/metrics")).await.expect("metrics").text().await.expect("metrics body");
    let value = |name: &str| {
        text.lines().find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok()).expect("a batch-size metric")
    };
    (value("hashsrv_batch_size_sum "), value("hashsrv_batch_size_count "))
}

/// Median time for one thread to send `request` bytes over loopback TCP to another thread that
/// reads them all and answers `response` bytes: the least any HTTP server can add on this machine
/// (both threads sleep between messages, as a server and its client do).
fn tcp_round_trip(request: usize, response: usize) -> anyhow::Result<f64> {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let server = std::thread::spawn(move || -> std::io::Result<()> {
        let (mut stream, _) = listener.accept()?;
        stream.set_nodelay(true)?;
        let (mut got, answer) = (vec![0u8; request], vec![7u8; response]);
        while stream.read_exact(&mut got).is_ok() {
            std::thread::sleep(Duration::from_millis(2)); // "work": the thread sleeps, as a handler's would
            stream.write_all(&answer)?;
        }
        Ok(())
    });
    let mut stream = std::net::TcpStream::connect(addr)?;
    stream.set_nodelay(true)?;
    let (body, mut answer) = (vec![1u8; request], vec![0u8; response]);
    let mut times = Vec::new();
    for _ in 0..41 {
        let t = Instant::now();
        stream.write_all(&body)?;
        stream.read_exact(&mut answer)?;
        times.push(ms(t.elapsed()) - 2.0);
    }
    drop(stream);
    server.join().map_err(|_| anyhow::anyhow!("echo thread panicked"))??;
    Ok(median(times))
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let model = PathBuf::from(
        args.first().context("usage: server_bench MODEL.onnx FASHION_MNIST_DIR [ITEMS] [REQUESTS] [MAX_WAIT_MS]")?,
    );
    let data = PathBuf::from(args.get(1).context("the Fashion-MNIST folder is the second argument")?);
    let items: usize = args.get(2).map_or(Ok(1000), |s| s.parse())?;
    let requests: usize = args.get(3).map_or(Ok(160), |s| s.parse())?;
    let max_wait_ms: u64 = args.get(4).map_or(Ok(2), |s| s.parse())?;
    let options = EncoderOptions { device: Device::Cpu, ..EncoderOptions::default() };
    let encoder = Encoder::open(&model, &options)?;
    let bits = encoder.bits();
    println!(
        "model {} ({} bits, input {}x{}, {})",
        model.display(),
        bits,
        encoder.preprocess().crop,
        encoder.preprocess().crop,
        encoder.info().provider
    );

    // The index: the first `items` training images, encoded here.
    let dir = tempfile::tempdir()?;
    let index_path = dir.path().join("bench.hidx");
    let dataset = Dataset::open(DatasetKind::FashionMnist, &data, &OpenOptions::default())?;
    let train = &dataset.split(Split::Train)[..items.min(dataset.split(Split::Train).len())];
    let metadata = IndexMetadata {
        model_sha256: Some(encoder.info().sha256.clone()),
        class_names: dataset.class_names().to_vec(),
        ..IndexMetadata::default()
    };
    let mut writer = IndexWriter::create(&index_path, bits, metadata)?;
    let t = Instant::now();
    for (chunk_no, chunk) in train.chunks(64).enumerate() {
        let images = chunk.iter().map(|item| item.load()).collect::<Result<Vec<_>, _>>()?;
        for (i, (item, code)) in chunk.iter().zip(encoder.encode_images(&images)?).enumerate() {
            writer.push(code.words(), item.label, (chunk_no * 64 + i) as u64, &item.path)?;
        }
    }
    writer.finish()?;
    println!("index of {} items built in {:.1} s", train.len(), t.elapsed().as_secs_f64());
    let index = CodeIndex::open(&index_path)?;

    let jpeg = encode(&photo(), ImageFormat::Jpeg);
    let small_png = encode(&dataset.split(Split::Test)[0].load()?, ImageFormat::Png);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let mut config = ServerConfig::new(model.clone(), index_path.clone());
    config.encoder = options.clone();
    config.batch = BatchConfig { max_batch: 32, max_wait: Duration::from_millis(max_wait_ms), queue: 256 };

    // 1. One request end to end against its parts, alternating so both see the same load.
    let (url, stop) = runtime.block_on(start(config.clone()))?;
    // The client runs on this thread (a current-thread runtime), so its own thread hand-offs do
    // not count against the server, as reqwest's blocking client's background thread would.
    let client_runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let client = reqwest::Client::new();
    let (mut parts, mut e2e, mut server_total) = (Vec::new(), Vec::new(), Vec::new());
    let (mut decode_t, mut pre_t, mut ort_t, mut scan_t) = (vec![], vec![], vec![], vec![]);
    for repeat in 0..41 {
        let t0 = Instant::now();
        let image = decode_image(&jpeg, &DecodeLimits::default())?;
        let t1 = Instant::now();
        let tensor = encoder.preprocess_batch(std::slice::from_ref(&image))?;
        let t2 = Instant::now();
        let outputs = encoder.outputs(&tensor, 1)?;
        let t3 = Instant::now();
        let code = hashsrv::index::HashCode::from_outputs(&outputs)?;
        let found = index.search(code.words(), &SearchOptions::top_k(10));
        let t4 = Instant::now();
        assert_eq!(found.hits.len(), 10);
        let t5 = Instant::now();
        let body = client_runtime.block_on(async {
            let response = client.post(format!("{url}/search?k=10")).body(jpeg.clone()).send().await?;
            anyhow::ensure!(response.status() == 200, "HTTP {}", response.status());
            Ok(response.bytes().await?)
        })?;
        let t6 = Instant::now();
        let answer: serde_json::Value = serde_json::from_slice(&body)?;
        if repeat > 0 {
            decode_t.push(ms(t1 - t0));
            pre_t.push(ms(t2 - t1));
            ort_t.push(ms(t3 - t2));
            scan_t.push(ms(t4 - t3));
            parts.push(ms(t4 - t0));
            e2e.push(ms(t6 - t5));
            server_total.push(answer["timings_ms"]["total"].as_f64().context("timings_ms.total")?);
        }
    }
    let _ = stop.send(());
    let (parts, e2e) = (median(parts), median(e2e));
    println!("\n| one 500x375 JPEG, median of 40 | ms |\n|---|---:|");
    println!(
        "| decode | {:.2} |\n| preprocess | {:.2} |\n| ORT run (batch 1) | {:.2} |\n| scan top-10 of {} | {:.3} |",
        median(decode_t),
        median(pre_t),
        median(ort_t),
        index.len(),
        median(scan_t)
    );
    println!("| sum of the parts (in process) | {parts:.2} |");
    println!("| the handler's own total (`timings_ms.total`) | {:.2} |", median(server_total));
    println!("| POST /search end to end | {e2e:.2} |");
    println!("| HTTP overhead | {:+.1}% ({:.2} ms) |", (e2e / parts - 1.0) * 100.0, e2e - parts);
    let floor = tcp_round_trip(jpeg.len(), 2048)?;
    println!("| floor: a bare TCP round trip of the same sizes, thread to thread | {floor:.2} |");

    // 2. Raw ORT throughput of the same model, then the server with batching on and off.
    println!("\n| raw ORT batch | images/s |\n|---:|---:|");
    let sample = dataset.split(Split::Test)[0].load()?;
    let mut best_raw: f64 = 0.0;
    for batch in [1usize, 8, 32] {
        let tensor = encoder.preprocess_batch(&vec![sample.clone(); batch])?;
        encoder.outputs(&tensor, batch)?;
        let runs = (requests / batch).max(3);
        let t = Instant::now();
        for _ in 0..runs {
            encoder.outputs(&tensor, batch)?;
        }
        let rate = (runs * batch) as f64 / t.elapsed().as_secs_f64();
        best_raw = best_raw.max(rate);
        println!("| {batch} | {rate:.0} |");
    }
    println!(
        "\n| concurrency | batching on (max 32, {max_wait_ms} ms) req/s | same, ORT threads sleep between runs | \
         batching off req/s |\n|---:|---:|---:|---:|"
    );
    for concurrency in [1usize, 8, 32] {
        let (mut rates, mut batches) = (Vec::new(), Vec::new());
        for (max_batch, spinning) in [(32usize, None), (32, Some(false)), (1, None)] {
            let mut c = config.clone();
            c.batch.max_batch = max_batch;
            c.encoder.intra_spinning = spinning;
            let (url, stop) = runtime.block_on(start(c))?;
            runtime.block_on(throughput(&url, &small_png, 8, 1)); // warm up
            let before = runtime.block_on(batch_totals(&url));
            rates.push(runtime.block_on(throughput(&url, &small_png, requests, concurrency)));
            let after = runtime.block_on(batch_totals(&url));
            batches.push((after.0 - before.0) / (after.1 - before.1));
            let _ = stop.send(());
        }
        println!(
            "| {concurrency} | {:.0} ({:.2}x raw best; mean batch {:.1}) | {:.0} ({:.2}x; {:.1}) | {:.0} |",
            rates[0],
            rates[0] / best_raw,
            batches[0],
            rates[1],
            rates[1] / best_raw,
            batches[1],
            rates[2]
        );
    }
    Ok(())
}
