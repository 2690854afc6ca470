//! `hashsrv train ...`: forwards to the `hashsrv-train` binary, the way git finds its
//! subcommands. Training links libtorch, which the serving binary must not, so it lives in its
//! own executable: first beside this one, then on the PATH.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::{Command, ExitCode};

use anyhow::Context;

/// Everything after `hashsrv train` goes to `hashsrv-train` untouched.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, num_args = 0..)]
    args: Vec<OsString>,
}

const TRAINER: &str = "hashsrv-train";

/// Where `hashsrv-train` is: beside the running executable, else the first on the PATH.
pub fn find_trainer() -> Option<PathBuf> {
    let beside = std::env::current_exe().ok()?.with_file_name(TRAINER);
    if beside.is_file() {
        return Some(beside);
    }
    std::env::split_paths(&std::env::var_os("PATH")?).map(|dir| dir.join(TRAINER)).find(|p| p.is_file())
}

/// Runs `hashsrv-train` with the given arguments and returns its exit code.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let trainer = find_trainer().with_context(|| {
        format!(
            "cannot find `{TRAINER}` beside this executable or on the PATH; build it with \
             `cargo build --release -p hashsrv-train` (it links libtorch: run scripts/setup.sh first)"
        )
    })?;
    let status = Command::new(&trainer)
        .args(&args.args)
        .status()
        .with_context(|| format!("{}: cannot run", trainer.display()))?;
    Ok(match status.code() {
        Some(0) => ExitCode::SUCCESS,
        Some(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        None => ExitCode::FAILURE,
    })
}
