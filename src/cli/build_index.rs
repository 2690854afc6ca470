//! `hashsrv build-index`: an index file from a data set split encoded by a model, or from codes
//! made elsewhere (`.npy`). The file is published atomically: an interrupted build never
//! replaces a good index.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context as _, bail};
use hashsrv_index::{IndexMetadata, IndexWriter, npy};

use crate::dataset::{DatasetKind, OpenOptions, Split};

/// Flags of `hashsrv build-index`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  hashsrv build-index --dataset fashion-mnist --model runs/fm64/model.onnx --out fm64-train.hidx
  hashsrv build-index --dataset dogs --data ~/data/dogs --model dogs64.onnx --out dogs-train.hidx --split train
  hashsrv build-index --codes codes.npy --labels labels.npy --out db.hidx      # codes made elsewhere")]
pub struct Args {
    /// Where to write the index (replaced atomically when the build succeeds).
    #[arg(long)]
    pub out: PathBuf,
    /// Data set to encode (case-insensitive): cub, dogs, fashion-mnist, folder.
    #[arg(long, conflicts_with = "codes", requires = "model")]
    pub dataset: Option<DatasetKind>,
    /// Data set root; defaults to the data set's environment variable (or Debian's Fashion-MNIST).
    #[arg(long, requires = "dataset")]
    pub data: Option<PathBuf>,
    /// The exported model (model.onnx) that encodes the images.
    #[arg(long, requires = "dataset")]
    pub model: Option<PathBuf>,
    /// Which split to index: train (the retrieval database), val, fit or test.
    #[arg(long, default_value = "train")]
    pub split: Split,
    /// Keep a stratified subset of this many training items.
    #[arg(long)]
    pub limit_train: Option<usize>,
    /// Keep a stratified subset of this many test items.
    #[arg(long)]
    pub limit_test: Option<usize>,
    /// Leave out images that cannot be read (they are listed) instead of failing.
    #[arg(long)]
    pub skip_unreadable: bool,
    #[command(flatten)]
    pub run: super::ModelRunArgs,
    /// Codes made elsewhere: a .npy of float/int/bool columns (bit = value > 0) or packed uint8 rows.
    #[arg(long, requires = "labels")]
    pub codes: Option<PathBuf>,
    /// Class labels of `--codes`: a 1-D integer .npy or one-hot rows.
    #[arg(long, requires = "codes")]
    pub labels: Option<PathBuf>,
    /// Code length of packed uint8 `--codes` rows (default: 8 x row bytes).
    #[arg(long, requires = "codes")]
    pub packed_bits: Option<u32>,
    /// Class names of `--codes`, one per line (line i names label i).
    #[arg(long, requires = "codes")]
    pub class_names: Option<PathBuf>,
}

/// Runs `hashsrv build-index`.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let count = match (&args.dataset, &args.codes) {
        (Some(kind), None) => from_dataset(&args, *kind)?,
        (None, Some(codes)) => from_npy(&args, codes)?,
        _ => bail!("say what to index: --dataset with --model, or --codes with --labels"),
    };
    eprintln!("wrote {} ({count} items) in {:.1} s", args.out.display(), started.elapsed().as_secs_f64());
    Ok(ExitCode::SUCCESS)
}

fn from_dataset(args: &Args, kind: DatasetKind) -> anyhow::Result<usize> {
    let model = args.model.as_deref().context("--dataset needs --model")?;
    let encoder = args.run.open(model)?;
    let options = OpenOptions {
        limit_train: args.limit_train,
        limit_test: args.limit_test,
        skip_unreadable: args.skip_unreadable,
        ..Default::default()
    };
    let dataset = super::open_dataset(kind, args.data.as_deref(), &options)?;
    for skipped in dataset.skipped() {
        eprintln!("skipped unreadable image: {skipped:?}");
    }
    let items = dataset.split(args.split);
    if items.is_empty() {
        bail!("the {} split of {kind} at {} is empty", args.split, dataset.root().display());
    }
    let info = encoder.info();
    if let Some(trained_on) = &info.dataset
        && trained_on != &kind.to_string()
    {
        tracing::warn!("the model was trained on {trained_on} but indexes {kind}");
    }
    let codes = super::encode_items(&encoder, items, args.run.batch, "encoding")?;
    let mut extra = serde_json::Map::new();
    extra.insert("split".into(), args.split.to_string().into());
    extra.insert("data_root".into(), dataset.root().display().to_string().into());
    extra.insert("preprocess".into(), serde_json::to_value(&info.preprocess)?);
    let metadata = IndexMetadata {
        model_sha256: Some(info.sha256.clone()),
        dataset: Some(kind.to_string()),
        class_names: dataset.class_names().to_vec(),
        extra,
    };
    let mut writer = IndexWriter::create(&args.out, info.bits, metadata)?;
    for (position, (item, code)) in items.iter().zip(&codes).enumerate() {
        writer.push(code.words(), item.label, position as u64, &item.path)?;
    }
    writer.finish()?;
    Ok(items.len())
}

fn from_npy(args: &Args, codes_path: &Path) -> anyhow::Result<usize> {
    let labels_path = args.labels.as_deref().context("--codes needs --labels")?;
    let codes = npy::read_codes(codes_path, args.packed_bits)?;
    let labels = npy::read_labels(labels_path)?;
    if labels.len() != codes.len() {
        bail!(
            "{} holds {} codes but {} holds {} labels: pass one label per code",
            codes_path.display(),
            codes.len(),
            labels_path.display(),
            labels.len()
        );
    }
    let class_names = match &args.class_names {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("reading class names from {}", path.display()))?
            .lines()
            .map(str::to_owned)
            .collect(),
        None => Vec::new(),
    };
    let mut extra = serde_json::Map::new();
    extra.insert("codes".into(), codes_path.display().to_string().into());
    let metadata = IndexMetadata { model_sha256: None, dataset: None, class_names, extra };
    let matrix = codes.matrix();
    let mut writer = IndexWriter::create(&args.out, codes.bits(), metadata)?;
    for (i, &label) in labels.iter().enumerate() {
        writer.push(matrix.code(i), label, i as u64, "")?;
    }
    writer.finish()?;
    Ok(codes.len())
}
