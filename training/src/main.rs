//! `hashsrv-train`: trains the hash model with tch (libtorch) and exports ONNX and the index.

fn main() -> std::process::ExitCode {
    eprintln!("error: `hashsrv-train` is not available in this build yet (tracked in issue 4)");
    eprintln!("libtorch 2.13 linked; CUDA available: {}", tch::Cuda::is_available());
    std::process::ExitCode::FAILURE
}
