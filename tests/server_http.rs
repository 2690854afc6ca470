//! The server on a real port (127.0.0.1:0) with a real HTTP client (reqwest) and real multipart
//! uploads of real JPEG/PNG/WebP files: bad inputs leave it serving, concurrent requests share
//! ONNX Runtime batches, a full queue sheds load with 503 + Retry-After, slow requests time out,
//! reload swaps the index without downtime, shutdown drains requests in flight, and a bounded
//! load test prints p50/p99.

mod server_support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use hashsrv::server::routes::SearchResponse;
use image::ImageFormat;
use reqwest::multipart::{Form, Part};
use serde_json::Value;
use server_support::*;

fn image_form(bytes: Vec<u8>, file: &str, mime: &str) -> Form {
    Form::new().part("image", Part::bytes(bytes).file_name(file.to_string()).mime_str(mime).unwrap())
}

/// `POST url` with `image` as a PNG body; the answer must be a search response.
async fn search_png(client: &reqwest::Client, url: String, image: &image::DynamicImage) -> SearchResponse {
    let response = client.post(url).body(encode(image, ImageFormat::Png)).send().await.unwrap();
    response.json().await.unwrap()
}

async fn error_of(response: reqwest::Response) -> (u16, String) {
    let status = response.status().as_u16();
    let json: Value = response.json().await.expect("error bodies are JSON");
    assert!(json["detail"].as_str().is_some_and(|d| !d.is_empty()), "{json}");
    (status, json["error"].as_str().unwrap().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_uploads_of_each_format_and_every_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(state(dir.path(), |c| c.max_body = 256 * 1024)).await;
    let client = reqwest::Client::new();
    let picture = picture(500, 375, 4);
    let formats = [
        (encode(&picture, ImageFormat::Jpeg), "q.jpg", "image/jpeg"),
        (encode(&picture, ImageFormat::Png), "q.png", "image/png"),
        (encode(&picture, ImageFormat::WebP), "q.webp", "image/webp"),
    ];
    let mut codes = Vec::new();
    for (bytes, file, mime) in &formats {
        let response = client
            .post(server.url("/search?k=5"))
            .multipart(image_form(bytes.clone(), file, mime))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{file}");
        let answer: SearchResponse = response.json().await.unwrap();
        assert_eq!(answer.queries[0].results.len(), 5);
        codes.push(answer.queries[0].code.clone());
    }
    // PNG and WebP (lossless) are the same pixels, so the same code.
    assert_eq!(codes[1], codes[2]);

    let jpeg = formats[0].0.clone();
    let bad: Vec<(&str, reqwest::RequestBuilder, u16, &str)> = vec![
        (
            "zero bytes",
            client.post(server.url("/search")).multipart(image_form(vec![], "e.jpg", "image/jpeg")),
            400,
            "empty_image",
        ),
        ("truncated", client.post(server.url("/search")).body(jpeg[..jpeg.len() * 2 / 3].to_vec()), 400, "bad_image"),
        (
            "not an image",
            client.post(server.url("/search")).multipart(image_form(b"plain text".to_vec(), "a.txt", "text/plain")),
            415,
            "unsupported_media_type",
        ),
        (
            "too large",
            client.post(server.url("/search")).multipart(image_form(vec![7; 300 * 1024], "big.jpg", "image/jpeg")),
            413,
            "payload_too_large",
        ),
        (
            "wrong field",
            client
                .post(server.url("/search"))
                .multipart(Form::new().part("picture", Part::bytes(jpeg.clone()).file_name("a.jpg"))),
            400,
            "bad_request",
        ),
        ("bad k", client.post(server.url("/search?k=abc")).body(jpeg.clone()), 400, "bad_request"),
        ("bad hex", client.post(server.url("/search")).json(&serde_json::json!({"code": "not hex!"})), 400, "bad_code"),
    ];
    for (name, request, status, kind) in bad {
        let (got_status, got_kind) = error_of(request.send().await.unwrap()).await;
        assert_eq!((got_status, got_kind.as_str()), (status, kind), "{name}");
    }
    // Still serving.
    let response = client.post(server.url("/search")).body(jpeg).send().await.unwrap();
    assert_eq!(response.status(), 200);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_are_batched() {
    let dir = tempfile::tempdir().unwrap();
    // A long wait makes the first request of a batch wait for the others.
    let server = start(state(dir.path(), |c| {
        c.batch.max_batch = 8;
        c.batch.max_wait = Duration::from_millis(300);
    }))
    .await;
    let client = reqwest::Client::new();
    // Each picture's code alone, to check that a batch hands every request its own slice.
    let mut alone = Vec::new();
    for i in 0..16u32 {
        alone.push(search_png(&client, server.url("/search?k=3"), &picture(64, 48, i)).await.queries[0].code.clone());
    }
    // A request still decoding its upload, as far as the batcher knows: no request runs alone, so
    // batches form however the machine's scheduler spaces the requests.
    let on_its_way = server.state.batcher.arriving();
    let requests = (0..16u32).map(|i| {
        let client = client.clone();
        let url = server.url("/search?k=3");
        let png = encode(&picture(64, 48, i), ImageFormat::Png);
        tokio::spawn(
            async move { client.post(url).body(png).send().await.unwrap().json::<SearchResponse>().await.unwrap() },
        )
    });
    let mut largest = 0;
    for (request, code) in requests.collect::<Vec<_>>().into_iter().zip(&alone) {
        let answer = request.await.unwrap();
        assert!(answer.batch_images <= 8);
        assert_eq!(&answer.queries[0].code, code, "a batched request got its own image's code");
        largest = largest.max(answer.batch_images);
    }
    drop(on_its_way);
    assert!(largest > 1, "16 concurrent requests never shared a batch");
    let metrics = client.get(server.url("/metrics")).send().await.unwrap().text().await.unwrap();
    let value = |name: &str| -> f64 {
        metrics.lines().find_map(|l| l.strip_prefix(name)).and_then(|v| v.trim().parse().ok()).unwrap()
    };
    // Less the 16 lone runs of the first pass.
    let batches = value("hashsrv_batch_size_count") - 16.0;
    let singles = value("hashsrv_batch_size_bucket{le=\"1\"}") - 16.0;
    assert_eq!(value("hashsrv_batch_size_sum") - 16.0, 16.0, "every image ran once");
    assert!(batches < 16.0 && singles < batches, "{metrics}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_request_does_not_wait_for_company() {
    let dir = tempfile::tempdir().unwrap();
    // A wait far longer than a run: a request that spent it would show it in its queue time.
    let server = start(state(dir.path(), |c| c.batch.max_wait = Duration::from_secs(5))).await;
    let client = reqwest::Client::new();
    for seed in 0..3 {
        let answer = search_png(&client, server.url("/search"), &picture(32, 32, seed)).await;
        assert_eq!(answer.batch_images, 1);
        // Alone, it runs the model on its own thread: it never enters the queue at all.
        assert_eq!(answer.timings_ms.queue, 0.0, "queued {} ms with nobody else coming", answer.timings_ms.queue);
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_sheds_load_with_503_and_retry_after() {
    let dir = tempfile::tempdir().unwrap();
    // One admitted request at most, and a batch waits long for company while one is on its way.
    let server = start(state(dir.path(), |c| {
        c.batch.max_wait = Duration::from_secs(2);
        c.batch.queue = 1;
    }))
    .await;
    // Another request still decoding its upload, as far as the batcher knows: the first request
    // is queued (not run alone) and its batch waits the whole `max_wait` for it. Counting on real
    // requests to overlap made this test depend on the machine's speed.
    let on_its_way = server.state.batcher.arriving();
    let client = reqwest::Client::new();
    let png = encode(&picture(32, 32, 9), ImageFormat::Png);
    let first = {
        let request = client.post(server.url("/search")).body(png.clone());
        tokio::spawn(async move { request.send().await.unwrap() })
    };
    while server.state.metrics.queue_depth() == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let shed = 3;
    for _ in 0..shed {
        let response = client.post(server.url("/search")).body(png.clone()).send().await.unwrap();
        assert_eq!(response.status(), 503);
        assert_eq!(response.headers()["retry-after"], "1");
        assert_eq!(error_of(response).await.1, "overloaded");
    }
    assert!(!first.is_finished(), "the admitted request waited for company while the others were shed");
    let response = first.await.unwrap();
    assert_eq!(response.status(), 200, "the admitted request is served");
    drop(on_its_way);
    // Its place is free again.
    let answer = search_png(&client, server.url("/search"), &picture(32, 32, 9)).await;
    assert_eq!(answer.batch_images, 1);
    let metrics = client.get(server.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains(&format!("hashsrv_shed_total {shed}\n")), "{metrics}");
    server.stop().await;
}

/// A client that sends a POST's headers and the first `first` bytes of its body, then waits for
/// `resume` before sending the rest: a slow upload on a real socket.
async fn slow_post(
    addr: std::net::SocketAddr,
    path: &'static str,
    body: Vec<u8>,
    first: usize,
    resume: tokio::sync::oneshot::Receiver<()>,
) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: image/png\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&body[..first]).await.unwrap();
    stream.flush().await.unwrap();
    let _ = resume.await;
    // The server may have answered (and closed) already: the rest is then refused, which is fine.
    let _ = stream.write_all(&body[first..]).await;
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response).await;
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map_or(String::new(), |(_, b)| b.to_string());
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_request_times_out_with_the_error_shape() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(state(dir.path(), |c| c.request_timeout = Duration::from_millis(200))).await;
    let png = encode(&picture(32, 32, 1), ImageFormat::Png);
    // Half the upload, then nothing until long after the limit.
    let (resume, wait) = tokio::sync::oneshot::channel();
    let upload = tokio::spawn(slow_post(server.addr, "/search", png.clone(), png.len() / 2, wait));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let _ = resume.send(());
    let (status, body) = upload.await.unwrap();
    assert_eq!(status, 503, "{body}");
    let json: Value = serde_json::from_str(&body).expect("error bodies are JSON");
    assert_eq!(json["error"], "timeout", "{json}");
    let client = reqwest::Client::new();
    let health = client.get(server.url("/health")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_swaps_the_index_and_keeps_the_old_one_on_failure() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(state(dir.path(), |_| {})).await;
    let client = reqwest::Client::new();
    let items = |health: &Value| health["index"]["items"].as_u64().unwrap();
    let health: Value = client.get(server.url("/health")).send().await.unwrap().json().await.unwrap();
    assert_eq!(items(&health), 15);

    let small = dir.path().join("small.hidx");
    build_index(&small, Some(4));
    let response =
        client.post(server.url("/admin/reload")).json(&serde_json::json!({ "index": small })).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let health: Value = client.get(server.url("/health")).send().await.unwrap().json().await.unwrap();
    assert_eq!(items(&health), 4);
    let answer = search_png(&client, server.url("/search?k=10"), &picture(40, 40, 2)).await;
    assert_eq!(answer.queries[0].results.len(), 4, "searches use the new index");

    let response = client
        .post(server.url("/admin/reload"))
        .json(&serde_json::json!({ "index": dir.path().join("missing.hidx") }))
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(response).await.0, 422);
    let health: Value = client.get(server.url("/health")).send().await.unwrap().json().await.unwrap();
    assert_eq!(items(&health), 4, "a failed reload keeps the current index");
    assert!(server.state.metrics.render().contains("hashsrv_index_items 4\n"));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_requests_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(state(dir.path(), |_| {})).await;
    let png = encode(&picture(32, 32, 5), ImageFormat::Png);
    // A request in the middle of its upload when the shutdown starts.
    let (resume, wait) = tokio::sync::oneshot::channel();
    let in_flight = tokio::spawn(slow_post(server.addr, "/search", png.clone(), png.len() / 2, wait));
    // Until the server has the request's headers and is reading its body.
    while server.state.metrics.in_flight() == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let addr = server.addr;
    let stopping = tokio::spawn(server.stop());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!stopping.is_finished(), "shutdown did not wait for the request in flight");
    let _ = resume.send(());
    let (status, body) = in_flight.await.unwrap();
    assert_eq!(status, 200, "the request in flight was answered: {body}");
    stopping.await.unwrap();
    assert!(tokio::net::TcpStream::connect(addr).await.is_err(), "no new connections after shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bounded_load_test() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(state(dir.path(), |_| {})).await;
    let client = reqwest::Client::new();
    let bodies: Arc<Vec<Vec<u8>>> =
        Arc::new((0..8).map(|i| encode(&picture(500, 375, i), ImageFormat::Jpeg)).collect());
    let (total, concurrency) = (500usize, 16usize);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (client, url, bodies, next) =
                (client.clone(), server.url("/search?k=10"), bodies.clone(), next.clone());
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut errors = Vec::new();
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= total {
                        break;
                    }
                    let t = Instant::now();
                    let response = client.post(&url).body(bodies[i % bodies.len()].clone()).send().await.unwrap();
                    let status = response.status().as_u16();
                    let _ = response.bytes().await.unwrap();
                    latencies.push(t.elapsed());
                    if status != 200 {
                        errors.push(status);
                    }
                }
                (latencies, errors)
            })
        })
        .collect();
    let mut latencies = Vec::new();
    let mut errors = Vec::new();
    for worker in workers {
        let (l, e) = worker.await.unwrap();
        latencies.extend(l);
        errors.extend(e);
    }
    let elapsed = started.elapsed();
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() - 1) as f64 * p).round() as usize];
    println!(
        "load: {total} requests (500x375 JPEG) at concurrency {concurrency}: {:.0} req/s, p50 {:?}, p99 {:?}, errors {}",
        total as f64 / elapsed.as_secs_f64(),
        pct(0.5),
        pct(0.99),
        errors.len()
    );
    assert_eq!(latencies.len(), total);
    assert!(errors.is_empty(), "errors: {errors:?}");
    server.stop().await;
}
