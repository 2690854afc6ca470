//! `hashsrv doctor`: checks the installation and says what is missing and how to fix it.

use std::process::ExitCode;

/// Flags of `hashsrv doctor`.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs `hashsrv doctor`: loads ONNX Runtime, lists its execution providers, says whether its
/// telemetry is off, looks for the default data set and the trainer. Fails when ONNX Runtime cannot be loaded.
pub fn run(_args: Args) -> anyhow::Result<ExitCode> {
    let path = crate::onnxruntime::find_dylib()?;
    crate::onnxruntime::environment()?;
    println!("onnxruntime: {} (loaded)", path.display());
    let cuda = <ort::ep::CUDA as ort::ep::ExecutionProvider>::is_available()?;
    println!("execution providers: CPU{}", if cuda { ", CUDA" } else { "" });
    let telemetry = std::env::var("ORT_DISABLE_TELEMETRY").unwrap_or_default();
    println!(
        "onnxruntime telemetry: {}",
        if telemetry == "1" { "off (ORT_DISABLE_TELEMETRY=1)" } else { "ON (set ORT_DISABLE_TELEMETRY=1 to stop it)" }
    );
    let fmnist = std::path::Path::new("/usr/share/datasets/fashion-mnist");
    println!(
        "fashion-mnist: {}",
        if fmnist.join("train-images-idx3-ubyte.gz").is_file() {
            fmnist.display().to_string()
        } else {
            "missing (scripts/setup.sh installs it)".into()
        }
    );
    match super::train::find_trainer() {
        Some(p) => println!("hashsrv-train: {}", p.display()),
        None => println!("hashsrv-train: not found (cargo build --release -p hashsrv-train)"),
    }
    Ok(ExitCode::SUCCESS)
}
