//! The `hashsrv` command line: serve, build-index, search, evaluate, info, train, doctor.
//!
//! Exit codes scripts can rely on: 0 success, 1 failure (the message says why and how to
//! recover), 2 bad usage.

use clap::{Parser, Subcommand};
use hashsrv::cli;

#[derive(Debug, Parser)]
#[command(
    name = "hashsrv",
    version,
    about = "Image retrieval on a learned deep hash model: encode images with ONNX Runtime, search a memory-mapped Hamming index.",
    after_help = "Run `hashsrv <command> --help` for a command's flags and examples."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the search API and web page over HTTP.
    Serve(cli::serve::Args),
    /// Encode a data set split (or imported codes) into an index file.
    BuildIndex(cli::build_index::Args),
    /// Search an index with images or a hex code.
    Search(cli::search::Args),
    /// Retrieval metrics (mAP and friends) of a model or of imported codes against an index.
    Evaluate(cli::evaluate::Args),
    /// Fit and evaluate a non-learned baseline (LSH or ITQ on pixels) on a data set's splits.
    Baseline(cli::baseline::Args),
    /// Show an index file's header, classes and bit statistics.
    Info(cli::info::Args),
    /// Train a hash model: runs `hashsrv-train` (found beside this binary or on the PATH).
    #[command(disable_help_flag = true)]
    Train(cli::train::Args),
    /// Check the installation: ONNX Runtime, execution providers, the default data set.
    Doctor(cli::doctor::Args),
}

fn main() -> std::process::ExitCode {
    // ONNX Runtime 1.29+ sends usage telemetry from Linux too (model metadata and run counts, to
    // mobile.events.data.microsoft.com). Its only full opt-out is this variable, read once when the
    // library starts, so it is set here, before any thread exists, unless the user set it.
    if std::env::var_os("ORT_DISABLE_TELEMETRY").is_none() {
        // SAFETY: the process has one thread so far; nothing reads the environment concurrently.
        unsafe { std::env::set_var("ORT_DISABLE_TELEMETRY", "1") };
    }
    let cli = Cli::parse();
    cli::init_logging();
    let result = match cli.command {
        Command::Serve(args) => cli::serve::run(args),
        Command::BuildIndex(args) => cli::build_index::run(args),
        Command::Search(args) => cli::search::run(args),
        Command::Evaluate(args) => cli::evaluate::run(args),
        Command::Baseline(args) => cli::baseline::run(args),
        Command::Info(args) => cli::info::run(args),
        Command::Train(args) => cli::train::run(args),
        Command::Doctor(args) => cli::doctor::run(args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
