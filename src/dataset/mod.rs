//! Data sets and their splits: THE one implementation, shared by training, index building,
//! evaluation and serving.
//!
//! A [`Dataset`] is opened from its official on-disk layout (CUB-200-2011, Stanford Dogs,
//! Fashion-MNIST) or from a folder per class, and exposes four splits: the official
//! [`Split::Train`] (the retrieval database) and [`Split::Test`] (the queries), plus a seeded,
//! stratified [`Split::Val`] carved from Train for model selection and its complement
//! [`Split::Fit`] (what the optimiser sees). Labels are 0-based; class names are kept.
//!
//! ```no_run
//! use hashsrv::dataset::{Dataset, DatasetKind, OpenOptions, Split};
//!
//! let kind: DatasetKind = "fashion-mnist".parse()?;
//! let data = Dataset::open_default(kind, &OpenOptions { seed: 7, ..OpenOptions::default() })?;
//! let preprocess = kind.default_preprocess();
//! let mut tensor = vec![0f32; preprocess.tensor_len()];
//! for item in &data.split(Split::Val)[..10] {
//!     preprocess.eval_into(&item.load()?, &mut tensor)?;
//!     println!("{} is a {}", item.path, data.class_names()[item.label as usize]);
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod cub;
mod dogs;
mod fashion_mnist;
mod folder;
pub mod mat;
mod split;

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use image::DynamicImage;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::preprocess::{DecodeError, DecodeLimits, Preprocess, decode_image};

pub use fashion_mnist::{FASHION_MNIST_CLASSES, IdxImages};
pub use split::{stratified_holdout, stratified_subset};

/// The data sets we know how to read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DatasetKind {
    #[serde(alias = "CUB", alias = "cub200", alias = "cub-200-2011")]
    Cub,
    #[serde(alias = "Dogs", alias = "stanford-dogs")]
    Dogs,
    #[serde(alias = "fashion_mnist", alias = "Fashion-MNIST")]
    FashionMnist,
    Folder,
}

impl DatasetKind {
    /// Every kind, in a stable order (for help texts).
    pub const ALL: [DatasetKind; 4] =
        [DatasetKind::Cub, DatasetKind::Dogs, DatasetKind::FashionMnist, DatasetKind::Folder];

    /// The environment variable naming this data set's root.
    pub fn env_var(self) -> &'static str {
        match self {
            DatasetKind::Cub => "HASHSRV_CUB_DATA",
            DatasetKind::Dogs => "HASHSRV_DOGS_DATA",
            DatasetKind::FashionMnist => "HASHSRV_FASHION_MNIST_DATA",
            DatasetKind::Folder => "HASHSRV_FOLDER_DATA",
        }
    }

    /// The root to use when the user gives none: the environment variable if set, else Debian's
    /// Fashion-MNIST location for Fashion-MNIST, else nothing.
    pub fn default_root(self) -> Option<PathBuf> {
        if let Some(value) = std::env::var_os(self.env_var()).filter(|v| !v.is_empty()) {
            return Some(PathBuf::from(value));
        }
        match self {
            DatasetKind::FashionMnist => Some(PathBuf::from(fashion_mnist::DEBIAN_ROOT)),
            _ => None,
        }
    }

    /// The preprocessing a model of this data set uses unless told otherwise.
    pub fn default_preprocess(self) -> Preprocess {
        match self {
            DatasetKind::FashionMnist => Preprocess::small(32),
            _ => Preprocess::imagenet(),
        }
    }

    /// Where a user gets the data and the layout we expect, for error messages.
    pub fn how_to_get(self) -> &'static str {
        match self {
            DatasetKind::Cub => {
                "download CUB-200-2011 from https://www.vision.caltech.edu/datasets/cub_200_2011/ and pass the \
                 extracted CUB_200_2011/ folder (or its parent)"
            }
            DatasetKind::Dogs => {
                "download images.tar and lists.tar of Stanford Dogs from http://vision.stanford.edu/aditya86/ImageNetDogs/ \
                 and extract both into one folder (giving Images/ and lists/ or the .mat lists at the root)"
            }
            DatasetKind::FashionMnist => {
                "install Debian's package `dataset-fashion-mnist` (files in /usr/share/datasets/fashion-mnist) or \
                 download the four .gz files from https://github.com/zalandoresearch/fashion-mnist"
            }
            DatasetKind::Folder => {
                "arrange your images as <root>/<class name>/<image>, optionally with <root>/split.txt holding \
                 `<relative path> <train|test>` lines"
            }
        }
    }
}

impl fmt::Display for DatasetKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DatasetKind::Cub => "cub",
            DatasetKind::Dogs => "dogs",
            DatasetKind::FashionMnist => "fashion-mnist",
            DatasetKind::Folder => "folder",
        })
    }
}

impl FromStr for DatasetKind {
    type Err = DatasetError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let normalised: String =
            s.trim().to_ascii_lowercase().chars().filter(|c| !matches!(c, '-' | '_' | ' ')).collect();
        match normalised.as_str() {
            "cub" | "cub200" | "cub2002011" | "cub200birds" => Ok(DatasetKind::Cub),
            "dogs" | "stanforddogs" | "dog" => Ok(DatasetKind::Dogs),
            "fashionmnist" | "fmnist" => Ok(DatasetKind::FashionMnist),
            "folder" | "imagefolder" => Ok(DatasetKind::Folder),
            _ => Err(DatasetError::InvalidOption(format!(
                "unknown data set {s:?}: expected one of cub, dogs, fashion-mnist, folder"
            ))),
        }
    }
}

/// The splits of a data set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    /// The official training split: the retrieval database (index).
    Train,
    /// A seeded, stratified fraction of Train for model selection.
    Val,
    /// Train minus Val: what the optimiser sees.
    Fit,
    /// The official test split: the queries.
    Test,
}

impl Split {
    pub const ALL: [Split; 4] = [Split::Train, Split::Val, Split::Fit, Split::Test];
}

impl fmt::Display for Split {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Split::Train => "train",
            Split::Val => "val",
            Split::Fit => "fit",
            Split::Test => "test",
        })
    }
}

impl FromStr for Split {
    type Err = DatasetError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "train" | "database" | "db" => Ok(Split::Train),
            "val" | "valid" | "validation" => Ok(Split::Val),
            "fit" => Ok(Split::Fit),
            "test" | "query" => Ok(Split::Test),
            _ => Err(DatasetError::InvalidOption(format!("unknown split {s:?}: expected train, val, fit or test"))),
        }
    }
}

/// How to open a data set.
#[derive(Clone, Debug, PartialEq)]
pub struct OpenOptions {
    /// Fraction of each class of Train held out as Val, in `[0, 1)`.
    pub val_fraction: f32,
    /// Seed of every random choice (Val, the folder split, the limits).
    pub seed: u64,
    /// Keep a stratified subset of this many Train items (tests, quick looks).
    pub limit_train: Option<usize>,
    /// Keep a stratified subset of this many Test items.
    pub limit_test: Option<usize>,
    /// Leave out (and report in [`Dataset::skipped`]) images whose header cannot be read,
    /// instead of failing.
    pub skip_unreadable: bool,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions { val_fraction: 0.1, seed: 0, limit_train: None, limit_test: None, skip_unreadable: false }
    }
}

/// Everything that can go wrong opening a data set or loading an item.
#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    #[error("{kind} data set not found at {}: expected {expected}; to get it, {}", root.display(), kind.how_to_get())]
    NotFound { kind: DatasetKind, root: PathBuf, expected: String },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}{}: {message}", path.display(), line.map(|l| format!(":{l}")).unwrap_or_default())]
    Invalid { path: PathBuf, line: Option<usize>, message: String },
    #[error("{}: {source}", path.display())]
    Mat {
        path: PathBuf,
        #[source]
        source: mat::MatError,
    },
    #[error("{}: unreadable image: {source} (pass --skip-unreadable to leave such images out)", path.display())]
    Image {
        path: PathBuf,
        #[source]
        source: DecodeError,
    },
    #[error("{0}")]
    InvalidOption(String),
}

impl DatasetError {
    fn invalid(path: &Path, line: Option<usize>, message: impl Into<String>) -> Self {
        DatasetError::Invalid { path: path.to_path_buf(), line, message: message.into() }
    }

    fn io(path: &Path, source: std::io::Error) -> Self {
        DatasetError::Io { path: path.to_path_buf(), source }
    }
}

/// Where an item's pixels come from.
#[derive(Clone, Debug)]
enum Source {
    /// An image file at `root/path`.
    File { root: Arc<Path> },
    /// Image `index` of an in-memory IDX array (shared, so cloning an item is cheap).
    Idx { images: Arc<IdxImages>, index: usize },
}

/// One image of a data set with its label.
#[derive(Clone, Debug)]
pub struct Item {
    /// 0-based class label, an index into [`Dataset::class_names`].
    pub label: u32,
    /// Path relative to the data set root, or `<idx file>#<index>` for IDX data.
    pub path: String,
    source: Source,
}

/// Limits for data set images: the files are trusted more than uploads (no size cap beyond a
/// generous one), but the pixel budget still guards against a broken file.
fn dataset_decode_limits() -> DecodeLimits {
    DecodeLimits { max_bytes: 512 * 1024 * 1024, ..DecodeLimits::default() }
}

impl Item {
    fn file(root: &Arc<Path>, path: String, label: u32) -> Item {
        Item { label, path, source: Source::File { root: Arc::clone(root) } }
    }

    /// The absolute file of a file-backed item; `None` for IDX items.
    pub fn file_path(&self) -> Option<PathBuf> {
        match &self.source {
            Source::File { root } => Some(root.join(&self.path)),
            Source::Idx { .. } => None,
        }
    }

    /// Loads the image (RGB8 for files, grey for IDX data).
    pub fn load(&self) -> Result<DynamicImage, DatasetError> {
        match &self.source {
            Source::File { root } => {
                let path = root.join(&self.path);
                let bytes = std::fs::read(&path).map_err(|e| DatasetError::io(&path, e))?;
                decode_image(&bytes, &dataset_decode_limits()).map_err(|source| DatasetError::Image { path, source })
            }
            Source::Idx { images, index } => images.image(*index).ok_or_else(|| {
                DatasetError::invalid(Path::new(&self.path), None, format!("no image {index} in the IDX data"))
            }),
        }
    }

    /// Reads only the image header (format and dimensions): cheap, for checking files at open.
    fn check_header(&self) -> Result<(), String> {
        let Some(path) = self.file_path() else { return Ok(()) };
        let reader = image::ImageReader::open(&path).map_err(|e| e.to_string())?;
        let reader = reader.with_guessed_format().map_err(|e| e.to_string())?;
        let (w, h) = reader.into_dimensions().map_err(|e| e.to_string())?;
        if w == 0 || h == 0 {
            return Err(format!("the image is empty ({w}x{h})"));
        }
        Ok(())
    }
}

/// An image left out at open time because its header could not be read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skipped {
    pub split: Split,
    pub path: String,
    pub reason: String,
}

/// An opened data set: class names and the four splits.
#[derive(Clone, Debug)]
pub struct Dataset {
    kind: DatasetKind,
    root: PathBuf,
    class_names: Vec<String>,
    train: Vec<Item>,
    val: Vec<Item>,
    fit: Vec<Item>,
    test: Vec<Item>,
    skipped: Vec<Skipped>,
}

/// What a format reader returns: the official splits before limits, checks and Val.
struct RawDataset {
    root: PathBuf,
    class_names: Vec<String>,
    train: Vec<Item>,
    test: Vec<Item>,
}

impl Dataset {
    /// Opens a data set from its root, checks it and carves the splits (see [`OpenOptions`]).
    pub fn open(kind: DatasetKind, root: &Path, options: &OpenOptions) -> Result<Dataset, DatasetError> {
        if !(0.0..1.0).contains(&options.val_fraction) {
            return Err(DatasetError::InvalidOption(format!(
                "the validation fraction must be in [0, 1), got {}",
                options.val_fraction
            )));
        }
        if !root.exists() {
            return Err(DatasetError::NotFound {
                kind,
                root: root.to_path_buf(),
                expected: "an existing folder".into(),
            });
        }
        let raw = match kind {
            DatasetKind::Cub => cub::open(root)?,
            DatasetKind::Dogs => dogs::open(root)?,
            DatasetKind::FashionMnist => fashion_mnist::open(root)?,
            DatasetKind::Folder => folder::open(root, options.seed)?,
        };
        let RawDataset { root, class_names, mut train, mut test } = raw;
        if let Some(limit) = options.limit_train {
            let keep = stratified_subset(&labels_of(&train), limit, options.seed);
            train = take_indices(train, &keep);
        }
        if let Some(limit) = options.limit_test {
            let keep = stratified_subset(&labels_of(&test), limit, options.seed.wrapping_add(1));
            test = take_indices(test, &keep);
        }
        let mut skipped = Vec::new();
        train = check_readable(train, Split::Train, options.skip_unreadable, &mut skipped)?;
        test = check_readable(test, Split::Test, options.skip_unreadable, &mut skipped)?;
        let held_out = stratified_holdout(&labels_of(&train), options.val_fraction, options.seed);
        let (mut val, mut fit) = (Vec::new(), Vec::new());
        for (item, is_val) in train.iter().zip(&held_out) {
            if *is_val { val.push(item.clone()) } else { fit.push(item.clone()) }
        }
        val.shrink_to_fit();
        fit.shrink_to_fit();
        Ok(Dataset { kind, root, class_names, train, val, fit, test, skipped })
    }

    /// Opens the data set at its default root ([`DatasetKind::default_root`]).
    pub fn open_default(kind: DatasetKind, options: &OpenOptions) -> Result<Dataset, DatasetError> {
        let root = kind.default_root().ok_or_else(|| {
            DatasetError::InvalidOption(format!(
                "no path given for the {kind} data set and {} is not set; {}",
                kind.env_var(),
                kind.how_to_get()
            ))
        })?;
        Dataset::open(kind, &root, options)
    }

    pub fn kind(&self) -> DatasetKind {
        self.kind
    }

    /// The folder the item paths are relative to (for CUB, the `CUB_200_2011/` folder itself).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Class names; the index is the 0-based label.
    pub fn class_names(&self) -> &[String] {
        &self.class_names
    }

    /// The items of a split, in a deterministic order (the official list order).
    pub fn split(&self, split: Split) -> &[Item] {
        match split {
            Split::Train => &self.train,
            Split::Val => &self.val,
            Split::Fit => &self.fit,
            Split::Test => &self.test,
        }
    }

    /// The item of `split` with this relative path.
    pub fn find(&self, split: Split, path: &str) -> Option<&Item> {
        self.split(split).iter().find(|item| item.path == path)
    }

    /// Number of items of each class in `split`, indexed by label.
    pub fn class_counts(&self, split: Split) -> Vec<usize> {
        let mut counts = vec![0; self.class_names.len()];
        for item in self.split(split) {
            if let Some(count) = counts.get_mut(item.label as usize) {
                *count += 1;
            }
        }
        counts
    }

    /// Images left out because they could not be read (only with `skip_unreadable`).
    pub fn skipped(&self) -> &[Skipped] {
        &self.skipped
    }
}

fn labels_of(items: &[Item]) -> Vec<u32> {
    items.iter().map(|item| item.label).collect()
}

fn take_indices(items: Vec<Item>, keep: &[usize]) -> Vec<Item> {
    let mut slots: Vec<Option<Item>> = items.into_iter().map(Some).collect();
    keep.iter().filter_map(|&i| slots.get_mut(i).and_then(Option::take)).collect()
}

/// Reads every file's header in parallel; unreadable ones fail the open, or are recorded in
/// `skipped` when the caller asked to skip them.
fn check_readable(
    items: Vec<Item>,
    split: Split,
    skip_unreadable: bool,
    skipped: &mut Vec<Skipped>,
) -> Result<Vec<Item>, DatasetError> {
    let failures: Vec<(usize, String)> =
        items.par_iter().enumerate().filter_map(|(i, item)| item.check_header().err().map(|e| (i, e))).collect();
    if failures.is_empty() {
        return Ok(items);
    }
    if !skip_unreadable {
        let (first, reason) = &failures[0];
        let path = items[*first].file_path().unwrap_or_else(|| PathBuf::from(&items[*first].path));
        return Err(DatasetError::invalid(
            &path,
            None,
            format!(
                "unreadable image ({reason}); {} unreadable image(s) in the {split} split; pass --skip-unreadable \
                 to leave them out",
                failures.len()
            ),
        ));
    }
    let mut bad = vec![false; items.len()];
    for (i, reason) in failures {
        bad[i] = true;
        skipped.push(Skipped { split, path: items[i].path.clone(), reason });
    }
    Ok(items.into_iter().zip(bad).filter(|(_, b)| !b).map(|(item, _)| item).collect())
}

/// Reads a text list, naming the file on failure.
fn read_text(path: &Path) -> Result<String, DatasetError> {
    std::fs::read_to_string(path).map_err(|e| DatasetError::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_parses_aliases_and_displays_canonically() {
        for (text, kind) in [
            ("CUB", DatasetKind::Cub),
            ("cub200", DatasetKind::Cub),
            ("Dogs", DatasetKind::Dogs),
            ("stanford-dogs", DatasetKind::Dogs),
            ("fashion-mnist", DatasetKind::FashionMnist),
            ("fashion_mnist", DatasetKind::FashionMnist),
            ("Folder", DatasetKind::Folder),
        ] {
            assert_eq!(text.parse::<DatasetKind>().unwrap(), kind, "{text}");
        }
        for kind in DatasetKind::ALL {
            assert_eq!(kind.to_string().parse::<DatasetKind>().unwrap(), kind);
            let json = serde_json::to_string(&kind).unwrap();
            assert_eq!(json, format!("\"{kind}\""));
            assert_eq!(serde_json::from_str::<DatasetKind>(&json).unwrap(), kind);
        }
        assert_eq!(serde_json::from_str::<DatasetKind>("\"CUB\"").unwrap(), DatasetKind::Cub);
        assert!("imagenet".parse::<DatasetKind>().is_err());
    }

    #[test]
    fn items_and_data_sets_cross_threads() {
        fn send_sync<T: Send + Sync + Clone>() {}
        send_sync::<Item>();
        send_sync::<Dataset>();
        fn error<T: std::error::Error + Send + Sync + 'static>() {}
        error::<DatasetError>();
    }

    #[test]
    fn split_round_trips() {
        for split in Split::ALL {
            assert_eq!(split.to_string().parse::<Split>().unwrap(), split);
        }
        assert!("training".parse::<Split>().is_err());
    }

    #[test]
    fn default_preprocess_depends_on_the_kind() {
        assert_eq!(DatasetKind::FashionMnist.default_preprocess(), Preprocess::small(32));
        assert_eq!(DatasetKind::Cub.default_preprocess(), Preprocess::imagenet());
    }

    #[test]
    fn missing_root_names_the_path_and_how_to_get_the_data() {
        let err = Dataset::open(DatasetKind::Cub, Path::new("/nonexistent/cub"), &OpenOptions::default()).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("/nonexistent/cub") && text.contains("vision.caltech.edu"), "{text}");
    }

    #[test]
    fn bad_val_fraction_is_refused() {
        let options = OpenOptions { val_fraction: 1.0, ..OpenOptions::default() };
        let err = Dataset::open(DatasetKind::Folder, Path::new("."), &options).unwrap_err();
        assert!(matches!(err, DatasetError::InvalidOption(_)), "{err}");
    }
}
