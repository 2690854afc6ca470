//! `hashsrv evaluate`.

use std::process::ExitCode;

/// Flags of `hashsrv evaluate`.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs `hashsrv evaluate`.
pub fn run(_args: Args) -> anyhow::Result<ExitCode> {
    Err(super::not_yet("evaluate", 6))
}
