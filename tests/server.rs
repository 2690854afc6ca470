//! Router tests without a socket (`tower::ServiceExt::oneshot`): every route, every bad input
//! and its status and JSON error shape, on the tiny model and an index of the folder fixture.

mod server_support;

use std::sync::Arc;

use axum::body::{Body, to_bytes};
use axum::http::{Request, StatusCode, header};
use hashsrv::index::HashCode;
use hashsrv::server::routes::SearchResponse;
use hashsrv::server::{AppState, router};
use image::ImageFormat;
use serde_json::Value;
use server_support::*;
use tower::ServiceExt;

async fn send(state: &Arc<AppState>, request: Request<Body>) -> (StatusCode, axum::http::HeaderMap, Vec<u8>) {
    let response = router(Arc::clone(state)).oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let body = to_bytes(response.into_body(), usize::MAX).await.unwrap().to_vec();
    (status, headers, body)
}

fn post(uri: &str, content_type: &str, body: Vec<u8>) -> Request<Body> {
    Request::post(uri).header(header::CONTENT_TYPE, content_type).body(Body::from(body)).unwrap()
}

fn get(uri: &str) -> Request<Body> {
    Request::get(uri).body(Body::empty()).unwrap()
}

/// Asserts the one error shape and returns the `error` kind.
fn error_kind(status: StatusCode, expected: StatusCode, body: &[u8]) -> String {
    assert_eq!(status, expected, "{}", String::from_utf8_lossy(body));
    let json: Value = serde_json::from_slice(body).expect("errors are JSON");
    let object = json.as_object().unwrap();
    assert_eq!(object.len(), 2, "{json}");
    assert!(!object["detail"].as_str().unwrap().is_empty());
    object["error"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_with_an_index_image_finds_it_at_distance_zero() {
    let dir = tempfile::tempdir().unwrap();
    let state = state(dir.path(), |_| {});
    let loaded = state.current();
    let position = (0..loaded.index.len()).find(|&i| loaded.index.path(i).ends_with(".png")).unwrap();
    let path = loaded.index.path(position).to_string();
    let id = loaded.index.id(position);
    let (status, _, body) = send(
        &state,
        post("/search?k=15", &multipart_type(), multipart(&[("image", Some("q.png"), &fixture_image(&path))])),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let answer: SearchResponse = serde_json::from_slice(&body).unwrap();
    assert_eq!(answer.bits, 16);
    assert_eq!(answer.k, 15);
    assert_eq!(answer.model_sha256, loaded.encoder.info().sha256);
    assert_eq!(answer.queries.len(), 1);
    let query = &answer.queries[0];
    let results = &query.results;
    assert_eq!(results.len(), 15, "the index holds 15 items");
    let me = results.iter().find(|r| r.id == id).expect("the query image is in the results");
    assert_eq!(me.distance, 0);
    assert_eq!(me.path, path);
    assert_eq!(me.class_name.as_deref(), Some(path.split('/').next().unwrap()));
    // Ranks are 1.. and distances non-decreasing; every distance is that of the query code.
    let code = HashCode::from_hex(16, &query.code).unwrap();
    for (i, r) in results.iter().enumerate() {
        assert_eq!(r.rank, i + 1);
        let position = loaded.position(r.id).unwrap();
        let stored = HashCode::from_words(16, loaded.index.codes().code(position)).unwrap();
        assert_eq!(code.distance(&stored), r.distance);
        assert_eq!(loaded.index.labels()[position], r.label);
    }
    assert!(results.windows(2).all(|w| w[0].distance <= w[1].distance));
    assert!(answer.timings_ms.total >= answer.timings_ms.inference);
    assert!(answer.batch_images >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_body_multipart_batch_and_code_agree() {
    let dir = tempfile::tempdir().unwrap();
    let state = state(dir.path(), |_| {});
    let jpeg = encode(&picture(120, 90, 1), ImageFormat::Jpeg);
    let webp = encode(&picture(64, 64, 2), ImageFormat::WebP);

    let (status, _, raw) = send(&state, post("/search?k=3", "image/jpeg", jpeg.clone())).await;
    assert_eq!(status, StatusCode::OK);
    let raw: SearchResponse = serde_json::from_slice(&raw).unwrap();

    let body = multipart(&[("image", Some("a.jpg"), &jpeg), ("image", Some("b.webp"), &webp), ("k", None, b"3")]);
    let (status, _, batch) = send(&state, post("/search", &multipart_type(), body)).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&batch));
    let batch: SearchResponse = serde_json::from_slice(&batch).unwrap();
    assert_eq!(batch.queries.len(), 2);
    assert_eq!(batch.k, 3);
    assert_eq!(batch.queries[0], raw.queries[0], "the same image gives the same answer either way");

    // The code of the second image, sent as hex, gives its results.
    let code = batch.queries[1].code.clone();
    let json = serde_json::to_vec(&serde_json::json!({ "code": code, "k": 3 })).unwrap();
    let (status, _, by_code) = send(&state, post("/search", "application/json", json)).await;
    assert_eq!(status, StatusCode::OK);
    let by_code: SearchResponse = serde_json::from_slice(&by_code).unwrap();
    assert_eq!(by_code.queries[0], batch.queries[1]);
    assert_eq!(by_code.batch_images, 0);

    // radius keeps only results within it.
    let json = serde_json::to_vec(&serde_json::json!({ "code": code, "k": 100, "radius": 4 })).unwrap();
    let (_, _, within) = send(&state, post("/search", "application/json", json)).await;
    let within: SearchResponse = serde_json::from_slice(&within).unwrap();
    assert!(within.queries[0].results.iter().all(|r| r.distance <= 4));
    let json = serde_json::to_vec(&serde_json::json!({ "code": code, "k": 100 })).unwrap();
    let (_, _, all) = send(&state, post("/search", "application/json", json)).await;
    let all: SearchResponse = serde_json::from_slice(&all).unwrap();
    let expected = all.queries[0].results.iter().filter(|r| r.distance <= 4).count();
    assert_eq!(within.queries[0].results.len(), expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_input_has_its_status_and_the_error_shape() {
    let dir = tempfile::tempdir().unwrap();
    let state = state(dir.path(), |c| {
        c.max_body = 64 * 1024;
        c.decode_limits.max_pixels = 1_000_000;
    });
    let jpeg = encode(&picture(80, 60, 3), ImageFormat::Jpeg);
    let png = encode(&picture(80, 60, 3), ImageFormat::Png);
    let huge = encode(&image::DynamicImage::new_luma8(2000, 1000), ImageFormat::Png); // 2 Mpx, small file
    assert!(huge.len() < 64 * 1024);
    let mp = |parts: &[(&str, Option<&str>, &[u8])]| post("/search", &multipart_type(), multipart(parts));
    let cases: Vec<(&str, Request<Body>, StatusCode, &str)> = vec![
        ("empty body", post("/search", "image/jpeg", vec![]), StatusCode::BAD_REQUEST, "empty_image"),
        ("empty field", mp(&[("image", Some("e.jpg"), b"")]), StatusCode::BAD_REQUEST, "empty_image"),
        (
            "truncated JPEG",
            post("/search", "image/jpeg", jpeg[..jpeg.len() / 2].to_vec()),
            StatusCode::BAD_REQUEST,
            "bad_image",
        ),
        (
            "truncated PNG",
            post("/search", "image/png", png[..png.len() - 20].to_vec()),
            StatusCode::BAD_REQUEST,
            "bad_image",
        ),
        (
            "not an image",
            post("/search", "image/jpeg", b"hello, this is text".to_vec()),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
        (
            "unsupported format",
            // A recognised signature (ICO) of a format the server does not decode.
            post("/search", "image/x-icon", b"\x00\x00\x01\x00\x01\x00\x10\x10\x00\x00".to_vec()),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
        (
            "body too large",
            post("/search", "image/jpeg", vec![0xFF; 100 * 1024]),
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
        ),
        (
            "multipart too large",
            mp(&[("image", Some("big.jpg"), &vec![0xFF; 100 * 1024])]),
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
        ),
        ("too many pixels", post("/search", "image/png", huge), StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
        ("wrong field", mp(&[("file", Some("a.jpg"), &jpeg)]), StatusCode::BAD_REQUEST, "bad_request"),
        ("no field", mp(&[("k", None, b"3")]), StatusCode::BAD_REQUEST, "bad_request"),
        ("bad multipart", post("/search", "multipart/form-data", jpeg.clone()), StatusCode::BAD_REQUEST, "bad_request"),
        ("k zero", post("/search?k=0", "image/jpeg", jpeg.clone()), StatusCode::BAD_REQUEST, "bad_request"),
        ("k too big", post("/search?k=1001", "image/jpeg", jpeg.clone()), StatusCode::BAD_REQUEST, "bad_request"),
        ("k not a number", post("/search?k=ten", "image/jpeg", jpeg.clone()), StatusCode::BAD_REQUEST, "bad_request"),
        (
            "k in the form",
            mp(&[("image", Some("a.jpg"), &jpeg), ("k", None, b"-1")]),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "radius past bits",
            post("/search?radius=17", "image/jpeg", jpeg.clone()),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        ("unknown parameter", post("/search?q=1", "image/jpeg", jpeg.clone()), StatusCode::BAD_REQUEST, "bad_request"),
        (
            "bad hex",
            post("/search", "application/json", br#"{"code":"zz11"}"#.to_vec()),
            StatusCode::BAD_REQUEST,
            "bad_code",
        ),
        (
            "short code",
            post("/search", "application/json", br#"{"code":"ab"}"#.to_vec()),
            StatusCode::BAD_REQUEST,
            "bad_code",
        ),
        ("bad JSON", post("/search", "application/json", b"{code:".to_vec()), StatusCode::BAD_REQUEST, "bad_request"),
        (
            "unknown JSON field",
            post("/search", "application/json", br#"{"code":"abcd","x":1}"#.to_vec()),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "second image bad",
            mp(&[("image", Some("a.jpg"), &jpeg), ("image", Some("b.jpg"), b"GIF89a")]),
            StatusCode::BAD_REQUEST,
            "bad_image",
        ),
        ("GET search", get("/search"), StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
        ("no route", get("/nope"), StatusCode::NOT_FOUND, "not_found"),
        ("id not a number", get("/images/..%2F..%2Fetc%2Fpasswd"), StatusCode::BAD_REQUEST, "bad_request"),
        ("id not in the index", get("/images/999"), StatusCode::NOT_FOUND, "not_found"),
        (
            "reload without a loopback peer",
            post("/admin/reload", "application/json", vec![]),
            StatusCode::FORBIDDEN,
            "forbidden",
        ),
    ];
    for (name, request, status, kind) in cases {
        let (got, _, body) = send(&state, request).await;
        assert_eq!(error_kind(got, status, &body), kind, "{name}: {}", String::from_utf8_lossy(&body));
    }
    // Still serving, and the errors were counted.
    let (status, _, _) = send(&state, post("/search", "image/jpeg", jpeg)).await;
    assert_eq!(status, StatusCode::OK);
    let metrics = state.metrics.render();
    assert!(metrics.contains("hashsrv_errors_total{kind=\"bad_image\"} 3\n"), "{metrics}");
    assert!(metrics.contains("hashsrv_requests_total{route=\"/search\",status=\"200\"} 1\n"), "{metrics}");
    assert!(metrics.contains("hashsrv_requests_total{route=\"/search\",status=\"413\"} 3\n"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thumbnails_only_for_index_items() {
    let dir = tempfile::tempdir().unwrap();
    let state = state(dir.path(), |_| {});
    let loaded = state.current();
    for position in [0, loaded.index.len() - 1] {
        let id = loaded.index.id(position);
        let (status, headers, body) = send(&state, get(&format!("/images/{id}"))).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers[header::CONTENT_TYPE], "image/png");
        let thumb = image::load_from_memory_with_format(&body, ImageFormat::Png).unwrap();
        let original = image::load_from_memory(&fixture_image(loaded.index.path(position))).unwrap().to_rgb8();
        // Small fixture images are enlarged by a whole factor to nearly 128 px.
        let factor = thumb.width() / original.width();
        assert!(
            factor >= 2 && thumb.width() == original.width() * factor && thumb.height() == original.height() * factor
        );
        assert!((65..=128).contains(&thumb.width().max(thumb.height())));
        // The thumbnail shows the item: same mean colour as the original.
        let mean = |img: &image::RgbImage| {
            img.pixels().map(|p| f64::from(p[0]) + f64::from(p[1]) + f64::from(p[2])).sum::<f64>() / img.len() as f64
        };
        assert!((mean(&original) - mean(&thumb.to_rgb8())).abs() < 6.0);
    }
    // Without a data set the server says how to get thumbnails.
    let bare = hashsrv::server::AppState::new({
        let mut c = config(dir.path());
        c.dataset = None;
        c
    })
    .unwrap();
    let (status, _, body) = send(&bare, get("/images/0")).await;
    assert_eq!(error_kind(status, StatusCode::NOT_FOUND, &body), "not_found");
    assert!(String::from_utf8_lossy(&body).contains("--dataset"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_metrics_openapi_and_page() {
    let dir = tempfile::tempdir().unwrap();
    let state = state(dir.path(), |_| {});
    let (status, _, body) = send(&state, get("/health")).await;
    assert_eq!(status, StatusCode::OK);
    let health: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(health["model"]["bits"], 16);
    assert_eq!(health["model"]["provider"], "CPUExecutionProvider");
    assert_eq!(health["index"]["items"], 15);
    assert_eq!(health["index"]["bits"], 16);
    assert_eq!(health["thumbnails"], true);
    assert_eq!(health["warnings"].as_array().unwrap().len(), 0);

    let (status, headers, body) = send(&state, get("/metrics")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(headers[header::CONTENT_TYPE].to_str().unwrap().starts_with("text/plain"));
    let text = String::from_utf8(body).unwrap();
    for name in [
        "hashsrv_requests_total",
        "hashsrv_stage_seconds_bucket{stage=\"inference\"",
        "hashsrv_batch_size_count",
        "hashsrv_queue_depth 0",
        "hashsrv_index_items 15",
    ] {
        assert!(text.contains(name), "{name} missing from\n{text}");
    }

    let (status, _, body) = send(&state, get("/openapi.json")).await;
    assert_eq!(status, StatusCode::OK);
    let api: Value = serde_json::from_slice(&body).unwrap();
    for path in [
        "/search",
        "/images/{id}",
        "/evaluate",
        "/evaluate/{job}",
        "/evaluate/{job}/{plot}",
        "/health",
        "/metrics",
        "/admin/reload",
    ] {
        assert!(api["paths"][path].is_object(), "{path} not documented");
    }

    let (status, headers, body) = send(&state, get("/")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(headers[header::CONTENT_TYPE].to_str().unwrap().starts_with("text/html"));
    assert!(String::from_utf8_lossy(&body).contains("/page.js"));
    let (status, _, body) = send(&state, get("/page.js")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(String::from_utf8_lossy(&body).contains("/search"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_that_does_not_match_the_index_is_refused_or_warned_about() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    // An index built by "another" model: same bits, different hash.
    let other = dir.path().join("other.hidx");
    {
        use hashsrv::index::{IndexMetadata, IndexWriter};
        let metadata = IndexMetadata { model_sha256: Some("00".repeat(32)), ..IndexMetadata::default() };
        let mut writer = IndexWriter::create(&other, 16, metadata).unwrap();
        writer.push(&[0xABCD_u64 << 48], 0, 7, "x.png").unwrap();
        writer.finish().unwrap();
    }
    config.index = other;
    let refused = AppState::new(config.clone()).unwrap_err().to_string();
    assert!(refused.contains("--allow-model-mismatch"), "{refused}");
    config.allow_model_mismatch = true;
    let state = AppState::new(config).unwrap();
    let (_, _, body) = send(&state, get("/health")).await;
    let health: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(health["warnings"].as_array().unwrap().len(), 1);
}
