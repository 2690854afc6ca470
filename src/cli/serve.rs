//! `hashsrv serve`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;

use crate::dataset::DatasetKind;
use crate::encoder::{Device, EncoderOptions};
use crate::server::batcher::BatchConfig;
use crate::server::{AppState, ServerConfig, serve, shutdown_signal};

/// ONNX Runtime's intra-op threads between runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Spinning {
    On,
    Off,
}

/// Flags of `hashsrv serve`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  hashsrv serve --model runs/fm64/model.onnx --index fm64-train.hidx
  hashsrv serve --model m.onnx --index train.hidx --dataset fashion-mnist --data /data/fashion-mnist --addr 0.0.0.0:8080
  curl -F image=@shoe.jpg 'http://127.0.0.1:8080/search?k=5'
  curl -X POST http://127.0.0.1:8080/admin/reload     # reopen model and index (loopback only; also SIGHUP)
  curl -X POST http://127.0.0.1:8080/evaluate -d '{\"limit\": 1000}'   # evaluate on --dataset's test split
  curl http://127.0.0.1:8080/evaluate/1                # its progress, then metrics and plots")]
pub struct Args {
    /// The exported model (model.onnx).
    #[arg(long)]
    pub model: PathBuf,
    /// The index to search (built with this model by `hashsrv build-index`).
    #[arg(long)]
    pub index: PathBuf,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub addr: SocketAddr,
    /// The data set the index was built from: thumbnails on the web page, and its test split
    /// for evaluation jobs (POST /evaluate).
    #[arg(long, requires = "data")]
    pub dataset: Option<DatasetKind>,
    /// Root folder of that data set.
    #[arg(long, requires = "dataset")]
    pub data: Option<PathBuf>,
    /// Most images per ONNX Runtime run (1 disables batching).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub max_batch: u32,
    /// How long the first request of a batch waits for others still decoding their uploads
    /// (milliseconds); a request with nobody else on the way runs at once.
    #[arg(long, default_value_t = 2)]
    pub max_wait_ms: u64,
    /// Most requests waiting for the model; more are answered 503 with Retry-After.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..))]
    pub queue: u32,
    /// ONNX Runtime intra-op threads (default: one per core).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Whether ONNX Runtime's threads spin between runs (its default) or sleep. Sleeping frees
    /// the cores for decoding under concurrent load (more requests/s on small machines) but
    /// adds a wake-up to each lone request (see BENCHMARKS.md, "Server").
    #[arg(long, value_enum, default_value_t = Spinning::On)]
    pub ort_spinning: Spinning,
    /// Where to run the model: auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: Device,
    /// Serve even if the model's hash differs from the one the index was built with (warns).
    #[arg(long)]
    pub allow_model_mismatch: bool,
    /// Largest request body in bytes.
    #[arg(long, default_value_t = 20 * 1024 * 1024)]
    pub max_body: usize,
    /// Largest k a client may ask for.
    #[arg(long, default_value_t = 1000)]
    pub max_k: usize,
    /// Requests taking longer are answered 503 (seconds).
    #[arg(long, default_value_t = 30)]
    pub timeout_secs: u64,
    /// Folder for evaluation reports, one subfolder per job (default: a temporary folder
    /// removed when the server stops).
    #[arg(long)]
    pub report_dir: Option<PathBuf>,
    /// Threads of an evaluation job (default and most: --threads, else one per core).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub eval_threads: Option<u32>,
}

/// Runs `hashsrv serve` until ctrl-c or SIGTERM, then drains the requests in flight.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let mut config = ServerConfig::new(args.model, args.index);
    config.encoder = EncoderOptions {
        device: args.device,
        intra_threads: args.threads,
        intra_spinning: Some(args.ort_spinning == Spinning::On),
    };
    config.allow_model_mismatch = args.allow_model_mismatch;
    config.batch = BatchConfig {
        max_batch: args.max_batch as usize,
        max_wait: Duration::from_millis(args.max_wait_ms),
        queue: args.queue as usize,
    };
    config.max_body = args.max_body;
    config.decode_limits.max_bytes = args.max_body;
    config.max_k = args.max_k.max(1);
    config.request_timeout = Duration::from_secs(args.timeout_secs.max(1));
    config.dataset = args.dataset.zip(args.data);
    config.evaluation.report_dir = args.report_dir;
    config.evaluation.threads = args.eval_threads.map(|t| t as usize);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting tokio")?;
    runtime.block_on(async move {
        let state = AppState::new(config)?;
        let listener = tokio::net::TcpListener::bind(args.addr)
            .await
            .with_context(|| format!("cannot listen on {}: is another server using that port?", args.addr))?;
        tracing::info!("serving on http://{}", listener.local_addr()?);
        #[cfg(unix)]
        tokio::spawn(reload_on_sighup(std::sync::Arc::clone(&state)));
        serve(listener, state, shutdown_signal()).await.context("serving")?;
        tracing::info!("stopped");
        Ok(ExitCode::SUCCESS)
    })
}

/// SIGHUP reopens the model and index from their paths, like `POST /admin/reload`.
#[cfg(unix)]
async fn reload_on_sighup(state: std::sync::Arc<AppState>) {
    let Ok(mut hangup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
        return;
    };
    while hangup.recv().await.is_some() {
        if let Err(e) = state.reload(None, None).await {
            tracing::error!("SIGHUP reload failed, still serving the previous model and index: {e}");
        }
    }
}
