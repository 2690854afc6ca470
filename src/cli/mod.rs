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

/// Codes of data set items with `encoder` ([`crate::encoder::Encoder::encode_items`]), with a
/// progress bar on stderr.
pub(crate) fn encode_items(
    encoder: &crate::encoder::Encoder,
    items: &[crate::dataset::Item],
    batch: usize,
    what: &str,
) -> anyhow::Result<Vec<hashsrv_index::HashCode>> {
    let progress = progress_bar(items.len(), what);
    let codes = encoder.encode_items(items, batch, |done| progress.set_position(done as u64))?;
    progress.finish_and_clear();
    Ok(codes)
}

/// A progress bar on stderr for encoding `len` images.
pub(crate) fn progress_bar(len: usize, what: &str) -> indicatif::ProgressBar {
    let progress = indicatif::ProgressBar::new(len as u64).with_style(
        indicatif::ProgressStyle::with_template("{msg} {bar:40} {pos}/{len} images, {per_sec}, eta {eta}")
            .expect("valid progress template"),
    );
    progress.set_message(what.to_owned());
    progress
}

/// How to run the model: the flags of every command that encodes a data set.
#[derive(Debug, clap::Args)]
pub struct ModelRunArgs {
    /// Images per ONNX Runtime run.
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    /// Where to run the model: auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: crate::encoder::Device,
    /// ONNX Runtime intra-op threads (default: one per core).
    #[arg(long)]
    pub threads: Option<usize>,
}

impl ModelRunArgs {
    /// Opens `model` on the chosen device.
    pub(crate) fn open(&self, model: &std::path::Path) -> anyhow::Result<crate::encoder::Encoder> {
        let options = crate::encoder::EncoderOptions {
            device: self.device,
            intra_threads: self.threads,
            ..crate::encoder::EncoderOptions::default()
        };
        Ok(crate::encoder::Encoder::open(model, &options)?)
    }
}
