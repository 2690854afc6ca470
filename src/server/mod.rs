//! The HTTP server: owns the served model and index (swapped atomically on reload), the
//! micro-batcher, the evaluation jobs, the metrics and the router. Handlers live in [`routes`].
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use hashsrv::server::{AppState, ServerConfig, serve, shutdown_signal};
//! let config = ServerConfig::new("model.onnx".into(), "train.hidx".into());
//! let state = AppState::new(config)?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! serve(listener, state, shutdown_signal()).await?;
//! # Ok(()) }
//! ```

pub mod batcher;
pub mod error;
pub mod evaluation;
pub mod metrics;
pub mod routes;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;

use self::batcher::{BatchConfig, Batcher};
use self::evaluation::{EvaluationConfig, Evaluations};
use self::metrics::Metrics;
use crate::dataset::{Dataset, DatasetError, DatasetKind, Item, OpenOptions, Split};
use crate::encoder::{Encoder, EncoderError, EncoderOptions};
use crate::index::{CodeIndex, IndexError};
use crate::preprocess::DecodeLimits;

/// Everything the server is started with.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub model: PathBuf,
    pub index: PathBuf,
    pub encoder: EncoderOptions,
    /// Serve even when the model hash differs from the index's (warns instead of refusing).
    pub allow_model_mismatch: bool,
    pub batch: BatchConfig,
    /// Largest request body (bytes); larger bodies get 413.
    pub max_body: usize,
    /// Largest `k` a client may ask for.
    pub max_k: usize,
    /// Most images in one request.
    pub max_images: usize,
    /// A request taking longer is answered 503 `timeout`.
    pub request_timeout: Duration,
    pub decode_limits: DecodeLimits,
    /// The data set the index was built from, for thumbnails (`GET /images/{id}`) and, its
    /// test split, for evaluation jobs (`POST /evaluate`).
    pub dataset: Option<(DatasetKind, PathBuf)>,
    pub evaluation: EvaluationConfig,
}

impl ServerConfig {
    /// Defaults: batches of up to 16 waiting 2 ms, queue 256, 20 MB bodies, k up to 1000.
    pub fn new(model: PathBuf, index: PathBuf) -> Self {
        ServerConfig {
            model,
            index,
            encoder: EncoderOptions::default(),
            allow_model_mismatch: false,
            batch: BatchConfig::default(),
            max_body: 20 * 1024 * 1024,
            max_k: 1000,
            max_images: 64,
            request_timeout: Duration::from_secs(30),
            decode_limits: DecodeLimits::default(),
            dataset: None,
            evaluation: EvaluationConfig::default(),
        }
    }
}

/// Why the server could not start or reload.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Encoder(#[from] EncoderError),
    #[error("cannot open the index {}: {source}", path.display())]
    Index {
        path: PathBuf,
        #[source]
        source: IndexError,
    },
    #[error("cannot open the data set for thumbnails: {0}")]
    Dataset(#[from] DatasetError),
    #[error("{0}")]
    Internal(String),
}

/// A model and an index that belong together; replaced as a whole on reload, so a request
/// holding one sees a consistent pair until it finishes.
#[derive(Debug)]
pub struct Loaded {
    pub encoder: Arc<Encoder>,
    pub index: CodeIndex,
    pub model_path: PathBuf,
    pub index_path: PathBuf,
    /// Index position of each item id.
    ids: HashMap<u64, usize>,
    /// The index's class names, else the model's.
    pub class_names: Vec<String>,
    /// Accepted mismatches (`--allow-model-mismatch`), shown in `/health`.
    pub warnings: Vec<String>,
}

impl Loaded {
    /// Opens and cross-checks a model and an index.
    pub fn open(model: &Path, index: &Path, config: &ServerConfig) -> Result<Loaded, ServeError> {
        let encoder = Encoder::open(model, &config.encoder)?;
        let code_index =
            CodeIndex::open(index).map_err(|source| ServeError::Index { path: index.to_path_buf(), source })?;
        let warnings = encoder.check_against_index(&code_index, config.allow_model_mismatch)?;
        let ids = (0..code_index.len()).map(|i| (code_index.id(i), i)).collect();
        let class_names = if code_index.metadata().class_names.is_empty() {
            encoder.info().class_names.clone()
        } else {
            code_index.metadata().class_names.clone()
        };
        tracing::info!(index = %index.display(), items = code_index.len(), bits = code_index.bits(), "index loaded");
        Ok(Loaded {
            encoder: Arc::new(encoder),
            index: code_index,
            model_path: model.to_path_buf(),
            index_path: index.to_path_buf(),
            ids,
            class_names,
            warnings,
        })
    }

    /// The index position of item `id`.
    pub fn position(&self, id: u64) -> Option<usize> {
        self.ids.get(&id).copied()
    }

    pub fn class_name(&self, label: u32) -> Option<&str> {
        self.class_names.get(label as usize).map(String::as_str)
    }
}

/// The data set items thumbnails are rendered from, by relative path.
#[derive(Debug)]
pub struct Thumbnails {
    items: HashMap<String, Item>,
}

impl Thumbnails {
    pub fn open(kind: DatasetKind, root: &Path) -> Result<Thumbnails, DatasetError> {
        let dataset = Dataset::open(kind, root, &OpenOptions::default())?;
        let items = [Split::Train, Split::Test]
            .iter()
            .flat_map(|&split| dataset.split(split).iter())
            .map(|item| (item.path.clone(), item.clone()))
            .collect();
        Ok(Thumbnails { items })
    }

    pub fn item(&self, path: &str) -> Option<&Item> {
        self.items.get(path)
    }
}

/// Shared state of the running server.
#[derive(Debug)]
pub struct AppState {
    pub config: ServerConfig,
    current: RwLock<Arc<Loaded>>,
    pub batcher: Batcher,
    pub metrics: Arc<Metrics>,
    pub thumbnails: Option<Thumbnails>,
    pub evaluations: Evaluations,
    /// Serialises reloads (loading is slow; two at once would race on the swap).
    reloading: tokio::sync::Mutex<()>,
}

impl AppState {
    /// Loads the model, index and data set, and starts the batcher. Call inside a tokio runtime.
    pub fn new(config: ServerConfig) -> Result<Arc<AppState>, ServeError> {
        let loaded = Loaded::open(&config.model, &config.index, &config)?;
        let thumbnails = match &config.dataset {
            Some((kind, root)) => Some(Thumbnails::open(*kind, root)?),
            None => None,
        };
        Ok(Self::with_loaded(config, loaded, thumbnails))
    }

    /// State around an already opened model and index (tests, embedding).
    pub fn with_loaded(config: ServerConfig, loaded: Loaded, thumbnails: Option<Thumbnails>) -> Arc<AppState> {
        let metrics = Arc::new(Metrics::new(config.batch.queue));
        metrics.set_index_size(loaded.index.len());
        let batcher = Batcher::start(config.batch, Arc::clone(&metrics));
        let evaluations = Evaluations::new(
            config.evaluation.clone(),
            config.dataset.clone(),
            config.encoder.clone(),
            Arc::clone(&metrics),
        );
        Arc::new(AppState {
            config,
            current: RwLock::new(Arc::new(loaded)),
            batcher,
            metrics,
            thumbnails,
            evaluations,
            reloading: tokio::sync::Mutex::new(()),
        })
    }

    /// The model and index now being served.
    pub fn current(&self) -> Arc<Loaded> {
        Arc::clone(&self.current.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Opens a new model and index (default: the current paths) and swaps them in; requests in
    /// flight finish on the old pair. On failure the old pair keeps serving.
    pub async fn reload(&self, model: Option<PathBuf>, index: Option<PathBuf>) -> Result<Arc<Loaded>, ServeError> {
        let _guard = self.reloading.lock().await;
        let old = self.current();
        let model = model.unwrap_or_else(|| old.model_path.clone());
        let index = index.unwrap_or_else(|| old.index_path.clone());
        let config = self.config.clone();
        let loaded = tokio::task::spawn_blocking(move || Loaded::open(&model, &index, &config))
            .await
            .map_err(|e| ServeError::Internal(format!("loading stopped: {e}")))??;
        let loaded = Arc::new(loaded);
        self.metrics.set_index_size(loaded.index.len());
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::clone(&loaded);
        tracing::info!(model = %loaded.model_path.display(), index = %loaded.index_path.display(), "reloaded");
        Ok(loaded)
    }
}

/// Runs a request's blocking work (decoding, a model run) and returns its result, or the panic
/// message if it panicked. On a multi-thread runtime it runs on the request's own thread
/// (`block_in_place` moves the thread's other tasks elsewhere), which saves waking a pool thread
/// and then the request's thread again; otherwise on the blocking pool.
pub(crate) async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> Result<T, String> {
    use tokio::runtime::{Handle, RuntimeFlavor};
    if Handle::current().runtime_flavor() == RuntimeFlavor::MultiThread {
        tokio::task::block_in_place(|| std::panic::catch_unwind(std::panic::AssertUnwindSafe(work)))
            .map_err(|panic| panic_message(&*panic))
    } else {
        tokio::task::spawn_blocking(work).await.map_err(|e| e.to_string())
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    match (panic.downcast_ref::<&str>(), panic.downcast_ref::<String>()) {
        (Some(text), _) => (*text).to_string(),
        (_, Some(text)) => text.clone(),
        _ => "panicked".to_string(),
    }
}

/// The router with every route, limit and layer.
pub fn router(state: Arc<AppState>) -> Router {
    routes::router(Arc::clone(&state)).layer(DefaultBodyLimit::max(state.config.max_body))
}

/// Serves until `shutdown` resolves, then stops accepting and drains the requests in flight.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = router(state).into_make_service_with_connect_info::<SocketAddr>();
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await
}

/// Resolves on ctrl-c or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("ctrl-c: draining requests in flight, then stopping"),
        () = terminate => tracing::info!("SIGTERM: draining requests in flight, then stopping"),
    }
}
