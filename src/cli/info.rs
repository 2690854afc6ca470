//! `hashsrv info`: what an index file holds: code length, items, provenance, items per class
//! and how balanced the bits are; `--verify` recomputes the checksums.

use std::path::PathBuf;
use std::process::ExitCode;

use hashsrv_index::CodeIndex;
use serde_json::json;

/// Flags of `hashsrv info`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  hashsrv info runs/fashion-mnist-64/train.hidx
  hashsrv info train.hidx --verify --json")]
pub struct Args {
    /// The index file.
    pub index: PathBuf,
    /// Recompute every checksum (reads the whole file).
    #[arg(long)]
    pub verify: bool,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Runs `hashsrv info`.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let index = CodeIndex::open(&args.index)?;
    if args.verify {
        index.verify()?;
    }
    let metadata = index.metadata();
    let class_name = |label: u32| metadata.class_names.get(label as usize).cloned().unwrap_or_default();
    let classes: Vec<_> = index
        .class_counts()
        .into_iter()
        .map(|(label, count)| json!({"label": label, "class_name": class_name(label), "items": count}))
        .collect();
    let balance = index.bit_balance();
    // How far the bits are from 50/50: a bit set on every item (or none) carries no information.
    let skew: Vec<f64> = balance.iter().map(|p| (p - 0.5).abs()).collect();
    let mean_skew = if skew.is_empty() { 0.0 } else { skew.iter().sum::<f64>() / skew.len() as f64 };
    let constant_bits = balance.iter().filter(|&&p| p == 0.0 || p == 1.0).count();
    let file_bytes = std::fs::metadata(&args.index)?.len();

    if args.json {
        let report = json!({
            "path": args.index,
            "file_bytes": file_bytes,
            "bits": index.bits(),
            "items": index.len(),
            "metadata": metadata,
            "classes": classes,
            "bit_balance": balance,
            "mean_bit_skew": mean_skew,
            "constant_bits": constant_bits,
            "verified": args.verify,
        });
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("{}", args.index.display());
    println!("  {} bits, {} items, {file_bytes} bytes", index.bits(), index.len());
    println!("  model sha256: {}", metadata.model_sha256.as_deref().unwrap_or("(none recorded)"));
    println!("  dataset: {}", metadata.dataset.as_deref().unwrap_or("(none recorded)"));
    for (key, value) in &metadata.extra {
        println!("  {key}: {value}");
    }
    println!("  checksums: {}", if args.verify { "verified" } else { "not checked (pass --verify)" });
    println!("  bit balance: mean |P(bit=1) - 0.5| = {mean_skew:.3}, {constant_bits} constant bits");
    println!("  items per class:");
    for class in &classes {
        println!("    {:>5}  {:<24} {:>8}", class["label"], class["class_name"].as_str().unwrap_or(""), class["items"]);
    }
    Ok(ExitCode::SUCCESS)
}
