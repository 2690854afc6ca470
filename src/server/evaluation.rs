//! The server's evaluation jobs (`POST /evaluate`, `GET /evaluate/{job}`): one at a time, on the
//! test split of the data set the server was started with, against the served index. A job runs
//! on its own thread with its own ONNX Runtime session and a bounded rayon pool, so searches
//! keep their session, their locks and most of the cores. Each job writes its report
//! (`metrics.json` and the SVG plots, by [`crate::report::write`]) into a folder of its own.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use hashsrv_index::metrics::EvalConfig;
use serde::Serialize;

use super::Loaded;
use super::metrics::Metrics;
use crate::dataset::{Dataset, DatasetError, DatasetKind, OpenOptions, Split};
use crate::encoder::{Encoder, EncoderError, EncoderOptions};
use crate::evaluation::{self, EvaluationError};
use crate::report::{self, ReportError};

/// How evaluation jobs run.
#[derive(Clone, Debug)]
pub struct EvaluationConfig {
    /// Where the job folders go; `None`: a temporary folder removed when the server stops.
    pub report_dir: Option<PathBuf>,
    /// Images per ONNX Runtime run of a job (small, so a job's memory stays small).
    pub batch: usize,
    /// Threads of a job (decoding, ONNX Runtime intra-op, metrics); `None`: the encoder's
    /// intra-op threads, or one per core when those are not set either.
    pub threads: Option<usize>,
    /// Test hook: a job waits before its first image until this channel's sender is dropped
    /// (or sends), so a test keeps the job running for as long as it needs.
    #[doc(hidden)]
    pub hold: Option<Arc<Mutex<Receiver<()>>>>,
}

impl Default for EvaluationConfig {
    fn default() -> Self {
        EvaluationConfig { report_dir: None, batch: 32, threads: None, hold: None }
    }
}

/// What a client may choose for a job: a stratified subset of the test queries and the
/// metrics ([`EvalConfig`]'s fields, at the top level of the JSON body).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct EvaluateRequest {
    pub limit: Option<usize>,
    #[serde(flatten)]
    pub config: EvalConfig,
}

/// Most entries of each cut-off or tie-mode list (each costs memory per worker).
const MAX_LIST: usize = 64;

impl EvaluateRequest {
    /// Parses a request body: empty, or a JSON object of `limit` and [`EvalConfig`] fields.
    /// Unknown fields are refused, so a typo does not silently evaluate something else.
    pub fn parse(body: &[u8]) -> Result<EvaluateRequest, String> {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(EvaluateRequest::default());
        }
        let mut object: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(body).map_err(|e| format!("the body must be empty or a JSON object: {e}"))?;
        let limit = match object.remove("limit") {
            None | Some(serde_json::Value::Null) => None,
            Some(value) => Some(
                value
                    .as_u64()
                    .filter(|&n| n >= 1)
                    .ok_or_else(|| format!("`limit` must be a whole number of at least 1, got {value}"))?
                    as usize,
            ),
        };
        let known = serde_json::to_value(EvalConfig::default()).expect("EvalConfig serialises");
        let known: Vec<&String> = known.as_object().map(|o| o.keys().collect()).unwrap_or_default();
        if let Some(unknown) = object.keys().find(|key| !known.contains(key)) {
            return Err(format!(
                "unknown field `{unknown}`: expected limit, {}",
                known.iter().map(|k| k.as_str()).collect::<Vec<_>>().join(", ")
            ));
        }
        let config: EvalConfig = serde_json::from_value(serde_json::Value::Object(object))
            .map_err(|e| format!("invalid evaluation settings: {e}"))?;
        for (name, list) in [("map_at_k", &config.map_at_k), ("precision_at_k", &config.precision_at_k)] {
            if list.contains(&0) || list.len() > MAX_LIST {
                return Err(format!("`{name}` must list at most {MAX_LIST} cut-offs, each at least 1"));
            }
        }
        if config.ties.len() > MAX_LIST {
            return Err(format!("`ties` must list at most {MAX_LIST} tie modes"));
        }
        Ok(EvaluateRequest { limit, config })
    }
}

/// The state of a job.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    Running,
    Done,
    Failed,
}

/// Query images encoded so far, of all.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Progress {
    pub done: usize,
    pub total: usize,
}

/// `GET /evaluate/{job}`.
#[derive(Clone, Debug, Serialize)]
pub struct JobView {
    pub job: String,
    pub status: JobStatus,
    pub progress: Progress,
    /// Seconds since the Unix epoch.
    pub started: f64,
    pub finished: Option<f64>,
    pub request: EvaluateRequest,
    /// The report (`metrics.json`) when done.
    pub metrics: Option<serde_json::Value>,
    /// URLs of the job's plots when done.
    pub plots: Vec<String>,
    pub error: Option<String>,
}

#[derive(Debug)]
struct Outcome {
    status: JobStatus,
    finished: Option<f64>,
    metrics: Option<serde_json::Value>,
    plots: Vec<&'static str>,
    error: Option<String>,
}

/// One evaluation job. Its counters and outcome are its own, so polling it never waits for
/// anything a search needs.
#[derive(Debug)]
struct Job {
    id: String,
    dir: PathBuf,
    started: f64,
    request: EvaluateRequest,
    done: AtomicUsize,
    total: AtomicUsize,
    outcome: Mutex<Outcome>,
}

impl Job {
    fn outcome(&self) -> std::sync::MutexGuard<'_, Outcome> {
        self.outcome.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn view(&self) -> JobView {
        let outcome = self.outcome();
        JobView {
            job: self.id.clone(),
            status: outcome.status,
            progress: Progress { done: self.done.load(Ordering::Relaxed), total: self.total.load(Ordering::Relaxed) },
            started: self.started,
            finished: outcome.finished,
            request: self.request.clone(),
            metrics: outcome.metrics.clone(),
            plots: outcome.plots.iter().map(|plot| format!("/evaluate/{}/{plot}", self.id)).collect(),
            error: outcome.error.clone(),
        }
    }
}

/// Why a job failed (shown in its `error`).
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("cannot open the evaluation data set: {0}")]
    Dataset(#[from] DatasetError),
    #[error("cannot open the model for evaluation: {0}")]
    Encoder(#[from] EncoderError),
    #[error(
        "the model file {} changed since it was loaded (sha256 {now}, serving {served}): reload the server \
         (POST /admin/reload) and evaluate again",
        path.display()
    )]
    ModelChanged { path: PathBuf, now: String, served: String },
    #[error(transparent)]
    Evaluation(#[from] EvaluationError),
    #[error(transparent)]
    Report(#[from] ReportError),
    #[error("cannot start the evaluation threads: {0}")]
    Threads(String),
    #[error("the evaluation stopped unexpectedly: {0}")]
    Panicked(String),
}

/// Why a job was not started.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(
        "evaluation needs the data set the index was built from: start the server with --dataset and --data \
         (its test split is evaluated)"
    )]
    NoDataset,
    #[error("evaluation job {0} is running; poll GET /evaluate/{0} and start another when it is done")]
    Running(String),
    #[error("cannot create the report folder {}: {source}; pass a writable --report-dir", path.display())]
    Folder { path: PathBuf, source: std::io::Error },
    #[error("cannot start the evaluation thread: {0}")]
    Thread(std::io::Error),
}

/// The jobs of one server and the folder their reports go into.
#[derive(Debug)]
pub struct Evaluations {
    config: EvaluationConfig,
    dataset: Option<(DatasetKind, PathBuf)>,
    encoder: EncoderOptions,
    /// The folder of the job folders when no `report_dir` is configured, made at the first job
    /// and removed with the server.
    temp: Mutex<Option<tempfile::TempDir>>,
    jobs: Mutex<Vec<Arc<Job>>>,
    next: AtomicU64,
    metrics: Arc<Metrics>,
}

impl Evaluations {
    pub fn new(
        config: EvaluationConfig,
        dataset: Option<(DatasetKind, PathBuf)>,
        encoder: EncoderOptions,
        metrics: Arc<Metrics>,
    ) -> Evaluations {
        Evaluations {
            config,
            dataset,
            encoder,
            temp: Mutex::default(),
            jobs: Mutex::default(),
            next: AtomicU64::new(1),
            metrics,
        }
    }

    /// The folder the job folders go into.
    fn report_dir(&self) -> Result<PathBuf, StartError> {
        if let Some(dir) = &self.config.report_dir {
            return Ok(dir.clone());
        }
        let mut temp = self.temp.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(made) = temp.as_ref() {
            return Ok(made.path().to_path_buf());
        }
        let made = tempfile::Builder::new().prefix("hashsrv-evaluations-").tempdir().map_err(|source| {
            StartError::Folder { path: std::env::temp_dir().join("hashsrv-evaluations-*"), source }
        })?;
        Ok(temp.insert(made).path().to_path_buf())
    }

    fn jobs(&self) -> std::sync::MutexGuard<'_, Vec<Arc<Job>>> {
        self.jobs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The job `id`, as the API shows it.
    pub fn view(&self, id: &str) -> Option<JobView> {
        self.find(id).map(|job| job.view())
    }

    /// Whether job `id` exists (running or ended).
    pub fn exists(&self, id: &str) -> bool {
        self.find(id).is_some()
    }

    fn find(&self, id: &str) -> Option<Arc<Job>> {
        self.jobs().iter().find(|job| job.id == id).cloned()
    }

    /// The file of plot `name` (e.g. `pr_curve.svg`) of job `id`, if that job wrote it.
    pub fn plot(&self, id: &str, name: &str) -> Option<PathBuf> {
        let job = self.find(id)?;
        let outcome = job.outcome();
        outcome.plots.iter().find(|plot| **plot == name).map(|plot| job.dir.join(plot))
    }

    /// Starts a job evaluating `loaded` (the pair served now) on a thread of its own; returns
    /// its id. Refused while another job runs.
    pub fn start(&self, loaded: Arc<Loaded>, request: EvaluateRequest) -> Result<String, StartError> {
        let (kind, root) = self.dataset.clone().ok_or(StartError::NoDataset)?;
        let base = self.report_dir()?;
        let mut jobs = self.jobs();
        if let Some(running) = jobs.iter().find(|job| job.outcome().status == JobStatus::Running) {
            return Err(StartError::Running(running.id.clone()));
        }
        let id = self.next.fetch_add(1, Ordering::Relaxed).to_string();
        let started = unix_now();
        // The start time keeps folders of a restarted server with the same --report-dir apart.
        let dir = base.join(format!("job-{id}-{}", started as u64));
        std::fs::create_dir_all(&dir).map_err(|source| StartError::Folder { path: dir.clone(), source })?;
        let job = Arc::new(Job {
            id: id.clone(),
            dir,
            started,
            request,
            done: AtomicUsize::new(0),
            total: AtomicUsize::new(0),
            outcome: Mutex::new(Outcome {
                status: JobStatus::Running,
                finished: None,
                metrics: None,
                plots: Vec::new(),
                error: None,
            }),
        });
        let run = Run {
            job: Arc::clone(&job),
            loaded,
            kind,
            root,
            encoder: EncoderOptions { intra_threads: Some(self.threads()), ..self.encoder.clone() },
            batch: self.config.batch.max(1),
            hold: self.config.hold.clone(),
            metrics: Arc::clone(&self.metrics),
        };
        // Counted before the thread starts, so its end is never counted before its start.
        self.metrics.evaluation_started();
        if let Err(e) = std::thread::Builder::new().name(format!("evaluate-{id}")).spawn(move || run.run()) {
            self.metrics.evaluation_finished(false);
            return Err(StartError::Thread(e));
        }
        jobs.push(job);
        Ok(id)
    }

    /// Threads of a job: at most the encoder's intra-op threads.
    fn threads(&self) -> usize {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        let intra = self.encoder.intra_threads.unwrap_or(cores).max(1);
        self.config.threads.map_or(intra, |t| t.clamp(1, intra))
    }
}

/// Everything a job's thread needs.
struct Run {
    job: Arc<Job>,
    loaded: Arc<Loaded>,
    kind: DatasetKind,
    root: PathBuf,
    encoder: EncoderOptions,
    batch: usize,
    hold: Option<Arc<Mutex<Receiver<()>>>>,
    metrics: Arc<Metrics>,
}

impl Run {
    fn run(self) {
        let result =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.evaluate())).unwrap_or_else(|panic| {
                let message = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                Err(JobError::Panicked(message))
            });
        let mut outcome = self.job.outcome();
        outcome.finished = Some(unix_now());
        match result {
            Ok((metrics, plots)) => {
                outcome.status = JobStatus::Done;
                outcome.metrics = Some(metrics);
                outcome.plots = plots;
                tracing::info!(job = %self.job.id, dir = %self.job.dir.display(), "evaluation done");
            }
            Err(error) => {
                outcome.status = JobStatus::Failed;
                outcome.error = Some(error.to_string());
                tracing::error!(job = %self.job.id, "evaluation failed: {error}");
            }
        }
        self.metrics.evaluation_finished(outcome.status == JobStatus::Done);
    }

    /// Encodes the test split, evaluates it against the index and writes the report; returns
    /// the report's JSON and the plots written.
    fn evaluate(&self) -> Result<(serde_json::Value, Vec<&'static str>), JobError> {
        let started = Instant::now();
        let request = &self.job.request;
        let threads = self.encoder.intra_threads.unwrap_or(1);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("evaluate-worker-{i}"))
            .build()
            .map_err(|e| JobError::Threads(e.to_string()))?;
        let options = OpenOptions { limit_test: request.limit, ..OpenOptions::default() };
        let dataset = pool.install(|| Dataset::open(self.kind, &self.root, &options))?;
        self.job.total.store(dataset.split(Split::Test).len(), Ordering::Relaxed);
        // A session of its own: the served one stays free for searches.
        let encoder = Encoder::open(&self.loaded.model_path, &self.encoder)?;
        let served = &self.loaded.encoder.info().sha256;
        if &encoder.info().sha256 != served {
            return Err(JobError::ModelChanged {
                path: self.loaded.model_path.clone(),
                now: encoder.info().sha256.clone(),
                served: served.clone(),
            });
        }
        if let Some(hold) = &self.hold {
            // Err is the sender dropped: released.
            let _ = hold.lock().unwrap_or_else(|p| p.into_inner()).recv();
        }
        let index = &self.loaded.index;
        let queries = pool.install(|| {
            evaluation::encode_queries(&encoder, index, &dataset, Split::Test, self.batch, |done| {
                self.job.done.store(done, Ordering::Relaxed)
            })
        })?;
        let encode_seconds = started.elapsed().as_secs_f64();
        let report = pool.install(|| queries.evaluate(index, &request.config))?;
        let extra = serde_json::json!({
            "job": self.job.id,
            "index": self.loaded.index_path,
            "model": self.loaded.model_path,
            "model_sha256": served,
            "dataset": self.kind,
            "split": Split::Test.to_string(),
            "queries_from": dataset.root(),
            "limit": request.limit,
            "threads": threads,
            "encode_seconds": encode_seconds,
            "total_seconds": started.elapsed().as_secs_f64(),
        });
        let plots = report::write(&self.job.dir, &report, &extra)?;
        Ok((report::to_json(&report, &extra), plots))
    }
}

fn unix_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}
