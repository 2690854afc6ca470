//! `hashsrv evaluate`: retrieval metrics of a model (its codes of a data set's test split as
//! queries) or of query codes made elsewhere (`.npy`), against an index as the database.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context as _, bail};
use hashsrv_index::metrics::{EvalConfig, TieMode};
use hashsrv_index::{CodeIndex, npy};

use crate::dataset::{DatasetKind, OpenOptions, Split};
use crate::evaluation::{self, Queries};

/// Flags of `hashsrv evaluate`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  hashsrv evaluate --dataset fashion-mnist --model runs/fm64/model.onnx --index runs/fm64/train.hidx --out report/
  hashsrv evaluate --dataset Dogs --data ~/data/dogs --model dogs64.onnx --index dogs-train.hidx
  hashsrv evaluate --query-codes q.npy --query-labels q_labels.npy --index db.hidx   # codes made elsewhere

Tie modes (how items at equal Hamming distance are ordered): index-order (database position,
the default), expected (exact mean over random orders), optimistic and pessimistic bounds.")]
pub struct Args {
    /// The database: an index built from the training split.
    #[arg(long)]
    pub index: PathBuf,
    /// Data set whose test split is the queries (case-insensitive: cub, dogs, fashion-mnist, folder).
    #[arg(long, conflicts_with = "query_codes", requires = "model")]
    pub dataset: Option<DatasetKind>,
    /// Data set root; defaults to the data set's environment variable (or Debian's Fashion-MNIST).
    #[arg(long, requires = "dataset")]
    pub data: Option<PathBuf>,
    /// The model that encodes the queries (the one the index was built with).
    #[arg(long, requires = "dataset")]
    pub model: Option<PathBuf>,
    /// Which split holds the queries.
    #[arg(long, default_value = "test")]
    pub split: Split,
    /// Keep a stratified subset of this many test items as queries.
    #[arg(long)]
    pub limit_test: Option<usize>,
    /// Query codes made elsewhere (.npy: float/int/bool columns or packed uint8 rows).
    #[arg(long, requires = "query_labels")]
    pub query_codes: Option<PathBuf>,
    /// Labels of `--query-codes` (.npy, 1-D integers or one-hot rows).
    #[arg(long, requires = "query_codes")]
    pub query_labels: Option<PathBuf>,
    /// Code length of packed uint8 `--query-codes` rows.
    #[arg(long, requires = "query_codes")]
    pub packed_bits: Option<u32>,
    /// Hamming radius of the precision/recall-within-radius figures.
    #[arg(long, default_value_t = 2)]
    pub radius: u32,
    /// Tie modes of mAP@all (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "index-order,expected,optimistic,pessimistic")]
    pub ties: Vec<TieMode>,
    /// Cut-offs of mAP@k (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "100,1000")]
    pub map_at: Vec<usize>,
    /// Cut-offs of precision@k (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "1,10,100,1000")]
    pub precision_at: Vec<usize>,
    /// Write metrics.json and the plots (pr_curve.svg, precision_at_k.svg) into this folder.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Print the report as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub run: super::ModelRunArgs,
    /// Evaluate even if the model's hash differs from the one the index was built with.
    #[arg(long)]
    pub allow_model_mismatch: bool,
}

/// Runs `hashsrv evaluate`.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let index = CodeIndex::open(&args.index)?;
    let (queries, source) = match (&args.dataset, &args.query_codes) {
        (Some(kind), None) => encode_queries(&args, *kind, &index)?,
        (None, Some(codes_path)) => {
            let labels_path = args.query_labels.as_deref().context("--query-codes needs --query-labels")?;
            let codes = npy::read_codes(codes_path, args.packed_bits)?;
            let labels = npy::read_labels(labels_path)?;
            if codes.bits() != index.bits() {
                bail!(
                    "{} holds {}-bit codes but the index {}-bit codes",
                    codes_path.display(),
                    codes.bits(),
                    index.bits()
                );
            }
            let source = serde_json::json!({ "query_codes": codes_path, "query_labels": labels_path });
            (Queries { bits: codes.bits(), words: codes.into_words(), labels }, source)
        }
        _ => bail!("say what the queries are: --dataset with --model, or --query-codes with --query-labels"),
    };
    let config = EvalConfig {
        ties: args.ties.clone(),
        map_at_k: args.map_at.clone(),
        precision_at_k: args.precision_at.clone(),
        radius: args.radius,
        pr_curve: true,
    };
    let metrics_started = Instant::now();
    let report = queries.evaluate(&index, &config)?;
    let mut extra = serde_json::json!({
        "index": args.index,
        "model_sha256": index.metadata().model_sha256,
        "metrics_seconds": metrics_started.elapsed().as_secs_f64(),
        "total_seconds": started.elapsed().as_secs_f64(),
    });
    if let (Some(map), serde_json::Value::Object(source)) = (extra.as_object_mut(), source) {
        map.extend(source);
    }
    let title = format!("Retrieval of {} against {}", describe(&args), args.index.display());
    crate::report::print(&title, &report, &extra, args.json);
    if let Some(out) = &args.out {
        crate::report::write(out, &report, &extra)?;
        eprintln!("report written to {}", out.display());
    }
    Ok(ExitCode::SUCCESS)
}

fn describe(args: &Args) -> String {
    match (&args.dataset, &args.query_codes) {
        (Some(kind), _) => format!("the {kind} {} split", args.split),
        (_, Some(codes)) => codes.display().to_string(),
        _ => String::new(),
    }
}

/// The test split's codes by the model, after checking the model against the index.
fn encode_queries(args: &Args, kind: DatasetKind, index: &CodeIndex) -> anyhow::Result<(Queries, serde_json::Value)> {
    let model = args.model.as_deref().context("--dataset needs --model")?;
    let encoder = args.run.open(model)?;
    encoder.check_against_index(index, args.allow_model_mismatch)?;
    let options = OpenOptions { limit_test: args.limit_test, ..Default::default() };
    let dataset = super::open_dataset(kind, args.data.as_deref(), &options)?;
    let progress = super::progress_bar(dataset.split(args.split).len(), "encoding queries");
    let queries = evaluation::encode_queries(&encoder, index, &dataset, args.split, args.run.batch, |done| {
        progress.set_position(done as u64)
    })?;
    progress.finish_and_clear();
    let source = serde_json::json!({
        "dataset": kind, "split": args.split.to_string(), "model": model, "queries_from": dataset.root(),
    });
    Ok((queries, source))
}
