//! Dynamic micro-batching: requests queue their preprocessed tensors; one task collects those
//! that arrive within `max_wait` of the first (up to `max_batch` images) and runs them as one
//! ONNX Runtime batch, like Triton's dynamic batcher. The wait is only spent when another
//! request is still decoding its upload ([`Batcher::arriving`]): a lone request runs at once, so
//! batching costs no latency on an idle server. The queue is bounded: at most `queue`
//! requests may be admitted and not yet answered (waiting, collected or running); past that a
//! request is refused at once ([`SubmitError::Full`], a 503) instead of waiting without limit.
//!
//! A request alone on the server (nothing queued, no batch collecting or running, no other
//! request decoding) runs the model on its own thread instead of handing its tensor to the
//! batching task: each hand-off wakes a sleeping thread, which on a small virtual machine costs
//! more than the rest of the HTTP path. Both run the model through `infer`; the runner lock keeps
//! such a run and the batching task's from running at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};

use super::metrics::Metrics;
use crate::encoder::Encoder;
use crate::index::HashCode;

/// Batching limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchConfig {
    /// Most images per run (1 disables batching).
    pub max_batch: usize,
    /// How long the first request of a batch waits for company.
    pub max_wait: Duration,
    /// Most requests admitted and not yet answered; more are refused.
    pub queue: usize,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig { max_batch: 16, max_wait: Duration::from_millis(2), queue: 256 }
    }
}

/// The codes of one request and where its time went.
#[derive(Debug)]
pub struct Encoded {
    pub codes: Vec<HashCode>,
    /// From submission to the start of its run.
    pub queue: Duration,
    /// The run it was part of.
    pub inference: Duration,
    /// Images in that run (this request's and others').
    pub batch_images: usize,
}

/// Why a request got no codes.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("the server is busy: {0} requests are already waiting for the model; retry shortly")]
    Full(usize),
    #[error("the server is shutting down")]
    Closed,
    #[error("inference failed: {0}")]
    Inference(String),
}

/// A request's place in the queue, given back (and the depth gauge lowered) when it is dropped.
struct Admission {
    _permit: OwnedSemaphorePermit,
    metrics: Arc<Metrics>,
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.metrics.queue_left();
    }
}

struct Job {
    _admission: Admission,
    encoder: Arc<Encoder>,
    tensor: Vec<f32>,
    images: usize,
    submitted: Instant,
    reply: oneshot::Sender<Result<Encoded, SubmitError>>,
}

/// The submitting side; cheap to clone. The batching task ends when every clone is dropped.
#[derive(Clone, Debug)]
pub struct Batcher {
    tx: mpsc::Sender<Job>,
    places: Arc<Semaphore>,
    metrics: Arc<Metrics>,
    config: BatchConfig,
    arriving: Arc<AtomicUsize>,
    /// Held by the batching task from its first job to the end of the run, and by a lone request
    /// running the model itself.
    runner: Arc<tokio::sync::Mutex<()>>,
}

/// A request decoding its images, soon to be submitted; counted until dropped.
#[derive(Debug)]
pub struct Arriving(Arc<AtomicUsize>);

impl Drop for Arriving {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job").field("images", &self.images).finish_non_exhaustive()
    }
}

impl Batcher {
    /// Starts the batching task on the current tokio runtime.
    pub fn start(config: BatchConfig, metrics: Arc<Metrics>) -> Batcher {
        let config = BatchConfig { max_batch: config.max_batch.max(1), queue: config.queue.max(1), ..config };
        let (tx, rx) = mpsc::channel(config.queue);
        let arriving = Arc::new(AtomicUsize::new(0));
        let runner = Arc::new(tokio::sync::Mutex::new(()));
        tokio::spawn(run(rx, config, Arc::clone(&metrics), Arc::clone(&arriving), Arc::clone(&runner)));
        Batcher { tx, places: Arc::new(Semaphore::new(config.queue)), metrics, config, arriving, runner }
    }

    /// Announces a request that will submit images once decoded; [`Batcher::encode`] takes it
    /// back once they are queued (dropping it withdraws a failed request). Batches wait for
    /// company only while one is announced.
    pub fn arriving(&self) -> Arriving {
        self.arriving.fetch_add(1, Ordering::SeqCst);
        Arriving(Arc::clone(&self.arriving))
    }

    pub fn config(&self) -> BatchConfig {
        self.config
    }

    /// Queues `images` preprocessed images (`tensor` is `[images,3,S,S]` for `encoder`) and
    /// waits for their codes. Jobs of different encoders (after a reload) never share a run.
    pub async fn encode(
        &self,
        encoder: Arc<Encoder>,
        tensor: Vec<f32>,
        images: usize,
        arriving: Arriving,
    ) -> Result<Encoded, SubmitError> {
        let Ok(permit) = Arc::clone(&self.places).try_acquire_owned() else {
            self.metrics.record_shed();
            return Err(SubmitError::Full(self.config.queue));
        };
        self.metrics.queue_entered();
        let admission = Admission { _permit: permit, metrics: Arc::clone(&self.metrics) };
        // Alone: this request is the only one announced, nothing is queued, and the batching task
        // is idle (it holds the runner from its first job on).
        let alone = self.arriving.load(Ordering::SeqCst) == 1 && self.tx.capacity() == self.tx.max_capacity();
        if let (true, Ok(_running)) = (alone, self.runner.try_lock()) {
            drop(arriving);
            let started = Instant::now();
            let codes = infer(encoder, tensor, images, &self.metrics).await.map_err(SubmitError::Inference)?;
            drop(admission);
            return Ok(Encoded { codes, queue: Duration::ZERO, inference: started.elapsed(), batch_images: images });
        }
        let (reply, answer) = oneshot::channel();
        let job = Job { _admission: admission, encoder, tensor, images, submitted: Instant::now(), reply };
        // The channel has a place for every permit, so it is never full here.
        if self.tx.try_send(job).is_err() {
            return Err(SubmitError::Closed);
        }
        // Queued: the batcher now sees the job itself, so it stops counting it as on its way.
        drop(arriving);
        answer.await.unwrap_or_else(|_| Err(SubmitError::Inference("the inference task stopped".into())))
    }
}

async fn run(
    mut rx: mpsc::Receiver<Job>,
    config: BatchConfig,
    metrics: Arc<Metrics>,
    arriving: Arc<AtomicUsize>,
    runner: Arc<tokio::sync::Mutex<()>>,
) {
    // A job that could not join the previous batch (another encoder, or too many images) starts the next.
    let mut carried: Option<Job> = None;
    loop {
        let first = match carried.take() {
            Some(job) => job,
            None => match rx.recv().await {
                Some(job) => job,
                None => return,
            },
        };
        let _running = runner.lock().await;
        let deadline = tokio::time::Instant::now() + config.max_wait;
        let mut images = first.images;
        let mut batch = vec![first];
        while images < config.max_batch {
            let job = match rx.try_recv() {
                Ok(job) => job,
                Err(mpsc::error::TryRecvError::Disconnected) => break,
                // Nobody is on the way: waiting would only add latency.
                Err(mpsc::error::TryRecvError::Empty) if arriving.load(Ordering::SeqCst) == 0 => break,
                Err(mpsc::error::TryRecvError::Empty) => match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(job)) => job,
                    Ok(None) | Err(_) => break,
                },
            };
            if !Arc::ptr_eq(&job.encoder, &batch[0].encoder) || images + job.images > config.max_batch {
                carried = Some(job);
                break;
            }
            images += job.images;
            batch.push(job);
        }
        run_batch(batch, images, &metrics).await;
    }
}

/// Runs one batch off the async threads and answers each job with its slice of the codes.
async fn run_batch(mut batch: Vec<Job>, images: usize, metrics: &Metrics) {
    let started = Instant::now();
    let encoder = Arc::clone(&batch[0].encoder);
    let tensor: Vec<f32> = if batch.len() == 1 {
        std::mem::take(&mut batch[0].tensor) // the single job's own tensor, no copy
    } else {
        batch.iter().flat_map(|job| job.tensor.iter().copied()).collect()
    };
    let result = infer(encoder, tensor, images, metrics).await;
    let inference = started.elapsed();
    match result {
        Ok(codes) => {
            let mut codes = codes.into_iter();
            for job in batch {
                let mine: Vec<HashCode> = codes.by_ref().take(job.images).collect();
                let queue = started.saturating_duration_since(job.submitted);
                let _ = job.reply.send(Ok(Encoded { codes: mine, queue, inference, batch_images: images }));
            }
        }
        Err(message) => {
            tracing::error!("inference failed on a batch of {images} images: {message}");
            for job in batch {
                let _ = job.reply.send(Err(SubmitError::Inference(message.clone())));
            }
        }
    }
}

/// One model run of `images` preprocessed images, for the batching task and for a lone request
/// alike; counts the run unless it panicked. A panic inside ONNX Runtime's wrapper becomes an
/// error for the run's requests (a 500) and ends neither the batching task nor the server.
async fn infer(
    encoder: Arc<Encoder>,
    tensor: Vec<f32>,
    images: usize,
    metrics: &Metrics,
) -> Result<Vec<HashCode>, String> {
    let result = super::blocking(move || encoder.encode_tensor(&tensor, images))
        .await
        .map_err(|e| format!("the inference run panicked: {e}"))?;
    metrics.record_batch(images);
    result.map_err(|e| e.to_string())
}
