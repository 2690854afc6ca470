//! The subcommands of the `hashsrv` binary, one module each: flags, then a `run` that calls the
//! library. Each `run` returns the process exit code or an error whose message tells the user
//! how to recover.

pub mod baseline;
pub mod build_index;
pub mod doctor;
pub mod evaluate;
pub mod info;
pub mod search;
pub mod serve;
pub mod train;

/// Logs to stderr; `RUST_LOG` overrides the default `info` level.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,ort=warn"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}

/// The error of a subcommand whose capability has not landed yet: clear, never a silent stub.
pub(crate) fn not_yet(command: &str, issue: u32) -> anyhow::Error {
    anyhow::anyhow!("`hashsrv {command}` is not available in this build yet (tracked in issue {issue})")
}

/// Opens a data set at `--data`, else at its default root (its environment variable, or Debian's
/// Fashion-MNIST); with neither, the error names both and says how to get the data.
pub(crate) fn open_dataset(
    kind: crate::dataset::DatasetKind,
    data: Option<&std::path::Path>,
    options: &crate::dataset::OpenOptions,
) -> anyhow::Result<crate::dataset::Dataset> {
    let root = match data {
        Some(root) => root.to_path_buf(),
        None => kind.default_root().ok_or_else(|| {
            anyhow::anyhow!(
                "no --data given for the {kind} data set and {} is not set; {}",
                kind.env_var(),
                kind.how_to_get()
            )
        })?,
    };
    Ok(crate::dataset::Dataset::open(kind, &root, options)?)
}
