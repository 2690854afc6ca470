//! `hashsrv baseline`: the non-learned hashers (LSH and ITQ on pixels) fitted on a data set's
//! training split and evaluated with its test split as queries, exactly as a learned model is
//! evaluated, so the learned numbers have a reference on the same split and code length.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context as _;
use hashsrv_index::metrics::{self, EvalConfig};
use rayon::prelude::*;

use crate::baselines::{BaselineMethod, LinearHasher, PIXEL_SIDE, pixel_features};
use crate::dataset::{DatasetKind, Item, OpenOptions, Split};
use crate::evaluation::Queries;

/// Flags of `hashsrv baseline`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  hashsrv baseline --method itq --bits 64\n  \
                        hashsrv baseline --method lsh --bits 16 --dataset fashion-mnist --out runs/lsh-16")]
pub struct Args {
    /// `lsh` (random projections) or `itq` (iterative quantization on PCA).
    #[arg(long, value_parser = parse_method)]
    pub method: BaselineMethod,
    /// Code length in bits.
    #[arg(long, default_value_t = 64)]
    pub bits: u32,
    /// Data set (case-insensitive): cub, dogs, fashion-mnist, folder.
    #[arg(long, default_value = "fashion-mnist")]
    pub dataset: DatasetKind,
    /// Data set root; defaults to the data set's environment variable or Debian's Fashion-MNIST.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Seed of the projections (LSH) or the initial rotation (ITQ), and of the data subsets.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// ITQ alternations.
    #[arg(long, default_value_t = 50)]
    pub itq_iterations: usize,
    /// Keep a stratified subset of the training split (the database).
    #[arg(long)]
    pub limit_train: Option<usize>,
    /// Keep a stratified subset of the test split (the queries).
    #[arg(long)]
    pub limit_test: Option<usize>,
    /// Write metrics.json and plots into this folder.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Print the report as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

fn parse_method(s: &str) -> Result<BaselineMethod, String> {
    match s.to_ascii_lowercase().as_str() {
        "lsh" => Ok(BaselineMethod::Lsh),
        "itq" => Ok(BaselineMethod::Itq),
        _ => Err(format!("unknown baseline {s:?}: expected lsh or itq")),
    }
}

/// Runs `hashsrv baseline`.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let options = OpenOptions {
        seed: args.seed,
        limit_train: args.limit_train,
        limit_test: args.limit_test,
        ..Default::default()
    };
    let dataset = super::open_dataset(args.dataset, args.data.as_deref(), &options)?;
    let dim = (PIXEL_SIDE * PIXEL_SIDE) as usize;
    let database = features(dataset.split(Split::Train)).context("reading the training split")?;
    let queries = features(dataset.split(Split::Test)).context("reading the test split")?;

    let fit_started = Instant::now();
    let hasher = match args.method {
        BaselineMethod::Lsh => LinearHasher::lsh(&database, dim, args.bits, args.seed)?,
        BaselineMethod::Itq => LinearHasher::itq(&database, dim, args.bits, args.itq_iterations, args.seed)?,
    };
    let fit_seconds = fit_started.elapsed().as_secs_f64();
    let bits = args.bits;
    let database = Queries::from_codes(bits, &hasher.encode_all(&database)?, labels(dataset.split(Split::Train)));
    let queries = Queries::from_codes(bits, &hasher.encode_all(&queries)?, labels(dataset.split(Split::Test)));
    let report = metrics::evaluate(
        database.codes(),
        &database.labels,
        queries.codes(),
        &queries.labels,
        &EvalConfig::default(),
    )?;
    let method = match args.method {
        BaselineMethod::Lsh => "lsh",
        BaselineMethod::Itq => "itq",
    };
    let extra = serde_json::json!({
        "method": method,
        "dataset": args.dataset,
        "seed": args.seed,
        "fit_seconds": fit_seconds,
        "total_seconds": started.elapsed().as_secs_f64(),
        "features": format!("grey pixels at {PIXEL_SIDE}x{PIXEL_SIDE}"),
    });
    let title = format!("{method} baseline on {} pixels, {bits} bits (fit {fit_seconds:.1} s)", args.dataset);
    crate::report::print(&title, &report, &extra, args.json);
    if let Some(out) = &args.out {
        crate::report::write(out, &report, &extra)?;
        eprintln!("report written to {}", out.display());
    }
    Ok(ExitCode::SUCCESS)
}

fn features(items: &[Item]) -> anyhow::Result<Vec<f32>> {
    let rows: Vec<Vec<f32>> =
        items.par_iter().map(|item| Ok(pixel_features(&item.load()?))).collect::<anyhow::Result<_>>()?;
    Ok(rows.concat())
}

fn labels(items: &[Item]) -> Vec<u32> {
    items.iter().map(|item| item.label).collect()
}
