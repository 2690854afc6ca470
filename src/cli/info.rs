//! `hashsrv info`.

use std::process::ExitCode;

/// Flags of `hashsrv info`.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs `hashsrv info`.
pub fn run(_args: Args) -> anyhow::Result<ExitCode> {
    Err(super::not_yet("info", 5))
}
