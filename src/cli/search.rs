//! `hashsrv search`: the Hamming neighbours of images (encoded by a model) or of hex codes made
//! elsewhere, from the command line.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use hashsrv_index::{CodeIndex, HashCode, SearchMethod, SearchOptions, SearchResult};
use serde_json::json;

use crate::encoder::{Device, Encoder, EncoderOptions};
use crate::preprocess::{DecodeLimits, decode_image};

/// Flags of `hashsrv search`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  hashsrv search --model runs/fm64/model.onnx --index runs/fm64/train.hidx shoe.jpg bag.png -k 5
  hashsrv search --index train.hidx --code 8f3a00c17e5b9d24 --radius 2 --json")]
pub struct Args {
    /// The index to search.
    #[arg(long)]
    pub index: PathBuf,
    /// The model that encodes IMAGE arguments (the one the index was built with).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Query images.
    #[arg(value_name = "IMAGE")]
    pub images: Vec<PathBuf>,
    /// Query codes in hex (`numpy.packbits` bytes in order), instead of images.
    #[arg(long = "code", value_name = "HEX")]
    pub codes: Vec<String>,
    /// Number of neighbours.
    #[arg(short, long, default_value_t = 10)]
    pub k: usize,
    /// Only neighbours within this Hamming distance (with -k, at most k of them).
    #[arg(long)]
    pub radius: Option<u32>,
    /// Search method: auto (planner), linear or multi-index.
    #[arg(long, default_value = "auto", value_parser = parse_method)]
    pub method: SearchMethod,
    /// Print JSON instead of tables.
    #[arg(long)]
    pub json: bool,
    /// Search even if the model's hash differs from the one the index was built with.
    #[arg(long)]
    pub allow_model_mismatch: bool,
    /// Where to run the model: auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: Device,
}

fn parse_method(s: &str) -> Result<SearchMethod, String> {
    match s.to_ascii_lowercase().as_str() {
        "auto" => Ok(SearchMethod::Auto),
        "linear" => Ok(SearchMethod::Linear),
        "multi-index" | "mih" => Ok(SearchMethod::MultiIndex),
        _ => Err(format!("unknown search method {s:?}: expected auto, linear or multi-index")),
    }
}

/// Runs `hashsrv search`.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    if args.images.is_empty() && args.codes.is_empty() {
        bail!("give query images (with --model) or --code HEX");
    }
    if args.k == 0 {
        bail!("-k must be at least 1");
    }
    let index = CodeIndex::open(&args.index)?;
    let mut queries: Vec<(String, HashCode)> = Vec::new();
    for hex in &args.codes {
        let code = HashCode::from_hex(index.bits(), hex).with_context(|| format!("--code {hex}"))?;
        queries.push((format!("code {hex}"), code));
    }
    if !args.images.is_empty() {
        let model = args.model.as_deref().context("image queries need --model (the model the index was built with)")?;
        let encoder = Encoder::open(model, &EncoderOptions { device: args.device, ..EncoderOptions::default() })?;
        encoder.check_against_index(&index, args.allow_model_mismatch)?;
        let images = args
            .images
            .iter()
            .map(|path| {
                let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
                decode_image(&bytes, &DecodeLimits::default()).with_context(|| format!("decoding {}", path.display()))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let codes = encoder.encode_images(&images)?;
        queries.extend(args.images.iter().map(|p| p.display().to_string()).zip(codes));
    }

    let options = SearchOptions { k: args.k, radius: args.radius, method: args.method };
    let class_names = &index.metadata().class_names;
    let class_name = |label: u32| class_names.get(label as usize).cloned().unwrap_or_default();
    let mut answers = Vec::new();
    for (query, code) in &queries {
        let result = index.search(code.words(), &options);
        if args.json {
            answers.push(json!({
                "query": query,
                "code": code.to_hex(),
                "method": result.method,
                "results": hits(&index, &result).map(|(rank, hit, label)| json!({
                    "rank": rank, "id": index.id(hit.position), "path": index.path(hit.position),
                    "label": label, "class_name": class_name(label), "distance": hit.distance,
                })).collect::<Vec<_>>(),
            }));
        } else {
            println!("{query}  code {}  ({} hits, {:?} search)", code.to_hex(), result.hits.len(), result.method);
            println!("  {:>4}  {:>8}  {:>10}  {:<16}  path", "rank", "distance", "id", "class");
            for (rank, hit, label) in hits(&index, &result) {
                let class = format!("{label} {}", class_name(label));
                let (id, path) = (index.id(hit.position), index.path(hit.position));
                println!("  {rank:>4}  {:>8}  {id:>10}  {class:<16}  {path}", hit.distance);
            }
        }
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&answers)?);
    }
    Ok(ExitCode::SUCCESS)
}

fn hits<'a>(
    index: &'a CodeIndex,
    result: &'a SearchResult,
) -> impl Iterator<Item = (usize, &'a hashsrv_index::Hit, u32)> + 'a {
    result.hits.iter().enumerate().map(|(i, hit)| (i + 1, hit, index.labels()[hit.position]))
}
