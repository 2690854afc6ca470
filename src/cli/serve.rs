//! `hashsrv serve`.

use std::process::ExitCode;

/// Flags of `hashsrv serve`.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs `hashsrv serve`.
pub fn run(_args: Args) -> anyhow::Result<ExitCode> {
    Err(super::not_yet("serve", 5))
}
