//! The HTTP routes: `POST /search`, `GET /images/{id}`, `POST /evaluate` and
//! `GET /evaluate/{job}[/{plot}]`, `GET /health`, `GET /metrics`, `GET /openapi.json`, `GET /`
//! (the web page) and `POST /admin/reload` (loopback only), with the layers every route shares
//! (request timeout, metrics, JSON 404/405).

use std::collections::HashMap;
use std::io::Cursor;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{ConnectInfo, FromRequest, MatchedPath, Multipart, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::{Deserialize, Serialize};

use super::error::{ApiError, ErrorKind};

use super::evaluation::{EvaluateRequest, JobView, StartError};
use super::{AppState, Loaded};
use crate::index::{HashCode, SearchMethod, SearchOptions};
use crate::preprocess::decode_image;

const PAGE_HTML: &str = include_str!("page.html");
const PAGE_JS: &str = include_str!("page.js");
const OPENAPI: &str = include_str!("openapi.json");

/// Side of a thumbnail's longer edge; smaller images are enlarged by a whole factor (crisp pixels).
const THUMBNAIL_SIDE: u32 = 128;

type Shared = State<Arc<AppState>>;

pub(super) fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/page.js", get(page_js))
        .route("/search", post(search))
        .route("/images/{id}", get(thumbnail))
        .route("/evaluate", post(start_evaluation))
        .route("/evaluate/{job}", get(evaluation))
        .route("/evaluate/{job}/{plot}", get(evaluation_plot))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi))
        .route("/admin/reload", post(reload))
        .fallback(|| async { ApiError::not_found("no such route; see GET /openapi.json") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this route does not take that method; see GET /openapi.json",
            )
        })
        .layer(middleware::from_fn_with_state(Arc::clone(&state), timeout))
        .layer(middleware::from_fn_with_state(Arc::clone(&state), record))
        .with_state(state)
}

/// Counts requests in flight, every answer by route and status, and errors by kind.
async fn record(State(state): Shared, request: Request, next: Next) -> Response {
    let _in_flight = state.metrics.request_started();
    let route = request.extensions().get::<MatchedPath>().map_or("unmatched", |p| p.as_str()).to_string();
    let response = next.run(request).await;
    state.metrics.record_request(&route, response.status().as_u16());
    if let Some(ErrorKind(kind)) = response.extensions().get::<ErrorKind>() {
        state.metrics.record_error(kind);
    }
    response
}

/// Bounds every request's time: a stuck request is answered instead of holding its client.
async fn timeout(State(state): Shared, request: Request, next: Next) -> Response {
    let limit = state.config.request_timeout;
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError {
            retry_after: Some(1),
            ..ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "timeout",
                format!("the request took longer than {} ms; retry later", limit.as_millis()),
            )
        }
        .into_response(),
    }
}

async fn page() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], PAGE_HTML)
}

async fn page_js() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8")], PAGE_JS)
}

async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI)
}

async fn metrics(State(state): Shared) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], state.metrics.render())
}

#[derive(Serialize)]
struct Health {
    status: &'static str,
    model: ModelHealth,
    index: IndexHealth,
    queue: QueueHealth,
    thumbnails: bool,
    warnings: Vec<String>,
}

#[derive(Serialize)]
struct ModelHealth {
    path: String,
    sha256: String,
    bits: u32,
    provider: String,
    dataset: Option<String>,
    input_size: u32,
}

#[derive(Serialize)]
struct IndexHealth {
    path: String,
    items: usize,
    bits: u32,
    classes: usize,
}

#[derive(Serialize)]
struct QueueHealth {
    depth: usize,
    capacity: usize,
    max_batch: usize,
    max_wait_ms: f64,
}

fn health_of(state: &AppState, loaded: &Loaded) -> Health {
    let info = loaded.encoder.info();
    let batch = state.batcher.config();
    Health {
        status: "ok",
        model: ModelHealth {
            path: loaded.model_path.display().to_string(),
            sha256: info.sha256.clone(),
            bits: info.bits,
            provider: info.provider.clone(),
            dataset: info.dataset.clone(),
            input_size: info.preprocess.crop,
        },
        index: IndexHealth {
            path: loaded.index_path.display().to_string(),
            items: loaded.index.len(),
            bits: loaded.index.bits(),
            classes: loaded.class_names.len(),
        },
        queue: QueueHealth {
            depth: state.metrics.queue_depth(),
            capacity: state.metrics.queue_capacity(),
            max_batch: batch.max_batch,
            max_wait_ms: batch.max_wait.as_secs_f64() * 1e3,
        },
        thumbnails: state.thumbnails.is_some(),
        warnings: loaded.warnings.clone(),
    }
}

async fn health(State(state): Shared) -> Json<Health> {
    Json(health_of(&state, &state.current()))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ReloadRequest {
    model: Option<std::path::PathBuf>,
    index: Option<std::path::PathBuf>,
}

async fn reload(
    State(state): Shared,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    body: Bytes,
) -> Result<Json<Health>, ApiError> {
    let loopback = peer.is_some_and(|Extension(ConnectInfo(addr))| addr.ip().is_loopback());
    if !loopback {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "reload is only accepted from the loopback interface",
        ));
    }
    let request: ReloadRequest = if body.iter().all(u8::is_ascii_whitespace) {
        ReloadRequest::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            ApiError::bad_request(format!("the body must be empty or {{\"model\": path, \"index\": path}}: {e}"))
        })?
    };
    let loaded = state.reload(request.model, request.index).await.map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "reload_failed",
            format!("{e} (still serving the previous model and index)"),
        )
    })?;
    Ok(Json(health_of(&state, &loaded)))
}

/// One result of a query.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Neighbour {
    pub rank: usize,
    pub id: u64,
    pub path: String,
    pub label: u32,
    pub class_name: Option<String>,
    pub distance: u32,
}

/// The answer to one query image or code.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct QueryResult {
    /// The query's code, hex (`numpy.packbits` bytes).
    pub code: String,
    pub results: Vec<Neighbour>,
}

/// Milliseconds spent in each stage of the request.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
pub struct Timings {
    pub decode: f64,
    pub preprocess: f64,
    pub queue: f64,
    pub inference: f64,
    pub search: f64,
    pub total: f64,
}

/// The body of a successful `POST /search`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct SearchResponse {
    pub model_sha256: String,
    pub bits: u32,
    pub k: usize,
    pub radius: Option<u32>,
    /// The search method the index used (`linear` or `multi_index`).
    pub method: String,
    /// Images in the ONNX Runtime run that encoded this request (0 for a raw code).
    pub batch_images: usize,
    pub timings_ms: Timings,
    pub queries: Vec<QueryResult>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CodeRequest {
    code: String,
    k: Option<usize>,
    radius: Option<u32>,
}

/// What the client sent to search with.
enum Queries {
    Images(Vec<Bytes>),
    Code(String),
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

async fn search(State(state): Shared, request: Request) -> Result<Json<SearchResponse>, ApiError> {
    let started = Instant::now();
    let loaded = state.current();
    let Query(mut params) = Query::<HashMap<String, String>>::try_from_uri(request.uri())
        .map_err(|e| ApiError::bad_request(format!("invalid query string: {e}")))?;
    let content_type =
        request.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_ascii_lowercase();
    let queries = if content_type.starts_with("multipart/form-data") {
        read_multipart(&state, request, &mut params).await?
    } else if content_type.starts_with("application/json") {
        let body = read_body(&state, request).await?;
        let code: CodeRequest = serde_json::from_slice(&body).map_err(|e| {
            ApiError::bad_request(format!(
                "the JSON body must be {{\"code\": \"<hex>\", \"k\": n, \"radius\": r}}: {e}"
            ))
        })?;
        for (key, value) in [("k", code.k.map(|v| v.to_string())), ("radius", code.radius.map(|v| v.to_string()))] {
            if let Some(value) = value {
                params.insert(key.to_string(), value);
            }
        }
        Queries::Code(code.code)
    } else {
        Queries::Images(vec![read_body(&state, request).await?])
    };
    for key in params.keys() {
        if key != "k" && key != "radius" {
            return Err(ApiError::bad_request(format!("unknown parameter `{key}`: expected k and radius")));
        }
    }
    let options = search_options(&params, state.config.max_k, loaded.index.bits())?;

    let mut timings = Timings::default();
    let mut batch_images = 0;
    let codes = match queries {
        Queries::Code(text) => vec![HashCode::from_hex(loaded.index.bits(), &text).map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_code",
                format!("{e}: send {} hex digits (the code's packed bytes)", 2 * loaded.index.bits().div_ceil(8)),
            )
        })?],
        Queries::Images(uploads) => {
            let encoder = Arc::clone(&loaded.encoder);
            let limits = state.config.decode_limits;
            let numbered = uploads.len() > 1;
            let arriving = state.batcher.arriving();
            let (tensor, n, decode, preprocess) = super::blocking(move || {
                let t0 = Instant::now();
                let mut images = Vec::with_capacity(uploads.len());
                for (i, bytes) in uploads.iter().enumerate() {
                    let image =
                        decode_image(bytes, &limits).map_err(|e| ApiError::decode(&e, numbered.then_some(i)))?;
                    images.push(image);
                }
                let t1 = Instant::now();
                let tensor = encoder.preprocess_batch(&images).map_err(|e| ApiError::bad_request(e.to_string()))?;
                Ok::<_, ApiError>((tensor, images.len(), t1 - t0, t1.elapsed()))
            })
            .await
            .map_err(|e| ApiError::internal(format!("decoding stopped: {e}")))??;
            state.metrics.record_stage("decode", decode);
            state.metrics.record_stage("preprocess", preprocess);
            let encoded = state.batcher.encode(Arc::clone(&loaded.encoder), tensor, n, arriving).await?;
            state.metrics.record_stage("queue", encoded.queue);
            state.metrics.record_stage("inference", encoded.inference);
            timings.decode = ms(decode);
            timings.preprocess = ms(preprocess);
            timings.queue = ms(encoded.queue);
            timings.inference = ms(encoded.inference);
            batch_images = encoded.batch_images;
            encoded.codes
        }
    };

    let t_search = Instant::now();
    let mut method = SearchMethod::Auto;
    let queries = codes
        .iter()
        .map(|code| {
            let found = loaded.index.search(code.words(), &options);
            method = found.method;
            let results = found
                .hits
                .iter()
                .enumerate()
                .map(|(rank, hit)| {
                    let label = loaded.index.labels()[hit.position];
                    Neighbour {
                        rank: rank + 1,
                        id: loaded.index.id(hit.position),
                        path: loaded.index.path(hit.position).to_string(),
                        label,
                        class_name: loaded.class_name(label).map(str::to_string),
                        distance: hit.distance,
                    }
                })
                .collect();
            QueryResult { code: code.to_hex(), results }
        })
        .collect();
    let search_time = t_search.elapsed();
    state.metrics.record_stage("search", search_time);
    timings.search = ms(search_time);
    timings.total = ms(started.elapsed());
    state.metrics.record_stage("total", started.elapsed());
    Ok(Json(SearchResponse {
        model_sha256: loaded.encoder.info().sha256.clone(),
        bits: loaded.index.bits(),
        k: options.k,
        radius: options.radius,
        method: method_name(method).to_string(),
        batch_images,
        timings_ms: timings,
        queries,
    }))
}

fn method_name(method: SearchMethod) -> &'static str {
    match method {
        SearchMethod::Auto => "auto",
        SearchMethod::Linear => "linear",
        SearchMethod::MultiIndex => "multi_index",
    }
}

/// `k` (default 10, `1..=max_k`) and `radius` (`0..=bits`).
fn search_options(params: &HashMap<String, String>, max_k: usize, bits: u32) -> Result<SearchOptions, ApiError> {
    let k = match params.get("k") {
        None => 10,
        Some(text) => text.trim().parse::<usize>().ok().filter(|k| (1..=max_k).contains(k)).ok_or_else(|| {
            ApiError::bad_request(format!("k must be a whole number from 1 to {max_k}, got {text:?}"))
        })?,
    };
    let radius = match params.get("radius") {
        None => None,
        Some(text) => Some(text.trim().parse::<u32>().ok().filter(|r| *r <= bits).ok_or_else(|| {
            ApiError::bad_request(format!(
                "radius must be a whole number from 0 to {bits} (the code length), got {text:?}"
            ))
        })?),
    };
    Ok(SearchOptions { k, radius, method: SearchMethod::Auto })
}

/// The whole body, or 413 past the limit.
async fn read_body(state: &AppState, request: Request) -> Result<Bytes, ApiError> {
    Bytes::from_request(request, &()).await.map_err(|e| body_error(state, e.status(), e.body_text()))
}

fn body_error(state: &AppState, status: StatusCode, text: String) -> ApiError {
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::too_large(format!("the request body is larger than the limit of {} bytes", state.config.max_body))
    } else {
        ApiError::bad_request(format!("cannot read the request body: {text}"))
    }
}

/// Fields `image` (one or more, in order) and optionally `k` and `radius`.
async fn read_multipart(
    state: &AppState,
    request: Request,
    params: &mut HashMap<String, String>,
) -> Result<Queries, ApiError> {
    let mut multipart = Multipart::from_request(request, &())
        .await
        .map_err(|e| ApiError::bad_request(format!("invalid multipart request: {}", e.body_text())))?;
    let mut images = Vec::new();
    loop {
        let field = match multipart.next_field().await {
            Ok(Some(field)) => field,
            Ok(None) => break,
            Err(e) => return Err(body_error(state, e.status(), e.body_text())),
        };
        let name = field.name().unwrap_or("").to_string();
        match name.as_str() {
            "image" => {
                if images.len() == state.config.max_images {
                    return Err(ApiError::too_large(format!("at most {} images per request", state.config.max_images)));
                }
                images.push(field.bytes().await.map_err(|e| body_error(state, e.status(), e.body_text()))?);
            }
            "k" | "radius" => {
                let text = field.text().await.map_err(|e| body_error(state, e.status(), e.body_text()))?;
                params.insert(name, text);
            }
            _ => {
                return Err(ApiError::bad_request(format!(
                    "unexpected multipart field {name:?}: send the image in a field named `image` (and optionally `k`, `radius`)"
                )));
            }
        }
    }
    if images.is_empty() {
        return Err(ApiError::bad_request(
            "no `image` field in the multipart form: send the image in a field named `image`",
        ));
    }
    Ok(Queries::Images(images))
}

/// `GET /images/{id}`: a PNG thumbnail of an item of the served index (and only those).
async fn thumbnail(State(state): Shared, Path(id): Path<String>) -> Result<Response, ApiError> {
    let id: u64 = id.parse().map_err(|_| ApiError::bad_request(format!("image id {id:?} is not a number")))?;
    let loaded = state.current();
    let position = loaded.position(id).ok_or_else(|| ApiError::not_found(format!("no item {id} in the index")))?;
    let Some(thumbnails) = &state.thumbnails else {
        return Err(ApiError::not_found(
            "thumbnails need the data set the index was built from: start the server with --dataset and --data",
        ));
    };
    let path = loaded.index.path(position);
    let item = thumbnails
        .item(path)
        .ok_or_else(|| ApiError::not_found(format!("item {id} ({path}) is not in the served data set")))?
        .clone();
    let png = tokio::task::spawn_blocking(move || -> Result<Vec<u8>, ApiError> {
        let image = item.load().map_err(|e| ApiError::internal(format!("cannot load item {id}: {e}")))?;
        let (w, h) = (image.width().max(1), image.height().max(1));
        let thumb = if w.max(h) < THUMBNAIL_SIDE {
            let factor = (THUMBNAIL_SIDE / w.max(h)).max(1);
            image.resize(w * factor, h * factor, image::imageops::FilterType::Nearest)
        } else {
            image.thumbnail(THUMBNAIL_SIDE, THUMBNAIL_SIDE)
        };
        let mut png = Vec::new();
        thumb
            .write_to(&mut Cursor::new(&mut png), image::ImageFormat::Png)
            .map_err(|e| ApiError::internal(format!("cannot encode the thumbnail of item {id}: {e}")))?;
        Ok(png)
    })
    .await
    .map_err(|e| ApiError::internal(format!("thumbnail stopped: {e}")))??;
    let mut headers = HeaderMap::new();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("image/png"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=3600"));
    Ok((headers, png).into_response())
}

/// The answer to a started evaluation.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct EvaluationStarted {
    pub job: String,
    pub status_url: String,
}

/// `POST /evaluate`: starts an evaluation job of the served model and index on the test split
/// of the server's data set (202), unless one is running (409 naming it).
async fn start_evaluation(State(state): Shared, body: Bytes) -> Result<Response, ApiError> {
    let request = EvaluateRequest::parse(&body).map_err(|e| {
        ApiError::bad_request(format!(
            "{e}; send nothing, or e.g. {{\"limit\": 1000, \"ties\": [\"expected\"], \"precision_at_k\": [10]}}"
        ))
    })?;
    let job = state.evaluations.start(state.current(), request).map_err(|e| match &e {
        StartError::NoDataset => ApiError::new(StatusCode::CONFLICT, "no_dataset", e.to_string()),
        StartError::Running(id) => ApiError {
            job: Some(id.clone()),
            ..ApiError::new(StatusCode::CONFLICT, "evaluation_running", e.to_string())
        },
        StartError::Folder { .. } | StartError::Thread(_) => ApiError::internal(e.to_string()),
    })?;
    let status_url = format!("/evaluate/{job}");
    let location = HeaderValue::from_str(&status_url).map_err(|e| ApiError::internal(e.to_string()))?;
    Ok((StatusCode::ACCEPTED, [(header::LOCATION, location)], Json(EvaluationStarted { job, status_url }))
        .into_response())
}

/// `GET /evaluate/{job}`: progress, then the metrics and plot links.
async fn evaluation(State(state): Shared, Path(job): Path<String>) -> Result<Json<JobView>, ApiError> {
    state.evaluations.view(&job).map(Json).ok_or_else(|| no_job(&job))
}

fn no_job(job: &str) -> ApiError {
    ApiError::not_found(format!("no evaluation job {job:?}; POST /evaluate starts one"))
}

/// `GET /evaluate/{job}/{plot}`: a plot the job drew (only those names; no path reaches the
/// filesystem otherwise).
async fn evaluation_plot(
    State(state): Shared,
    Path((job, plot)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    if !state.evaluations.exists(&job) {
        return Err(no_job(&job));
    }
    let file = state.evaluations.plot(&job, &plot).ok_or_else(|| {
        ApiError::not_found(format!(
            "evaluation job {job} has no plot {plot:?}; its plots are listed in GET /evaluate/{job}"
        ))
    })?;
    let svg = tokio::fs::read(&file)
        .await
        .map_err(|e| ApiError::internal(format!("cannot read the plot {}: {e}", file.display())))?;
    Ok(([(header::CONTENT_TYPE, "image/svg+xml")], svg).into_response())
}
