//! `hashsrv build-index`.

use std::process::ExitCode;

/// Flags of `hashsrv build-index`.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs `hashsrv build-index`.
pub fn run(_args: Args) -> anyhow::Result<ExitCode> {
    Err(super::not_yet("build-index", 5))
}
