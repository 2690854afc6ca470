//! `hashsrv search`.

use std::process::ExitCode;

/// Flags of `hashsrv search`.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs `hashsrv search`.
pub fn run(_args: Args) -> anyhow::Result<ExitCode> {
    Err(super::not_yet("search", 5))
}
