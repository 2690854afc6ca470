//! Fashion-MNIST from its four gzipped IDX files (Debian's `dataset-fashion-mnist` layout):
//! strict IDX header parsing (magic, dimensions, counts must agree) and the pixels kept in one
//! shared buffer per split, so items clone cheaply.

use std::fmt;
use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use flate2::read::GzDecoder;
use image::{DynamicImage, GrayImage};

use super::{DatasetError, DatasetKind, Item, RawDataset, Source};

/// Where Debian's package `dataset-fashion-mnist` installs the files.
pub(super) const DEBIAN_ROOT: &str = "/usr/share/datasets/fashion-mnist";

/// The ten class names, index = label.
pub const FASHION_MNIST_CLASSES: [&str; 10] =
    ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"];

const TRAIN_IMAGES: &str = "train-images-idx3-ubyte.gz";
const TRAIN_LABELS: &str = "train-labels-idx1-ubyte.gz";
const TEST_IMAGES: &str = "t10k-images-idx3-ubyte.gz";
const TEST_LABELS: &str = "t10k-labels-idx1-ubyte.gz";

/// IDX magic numbers: two zero bytes, type 0x08 (unsigned byte), then the number of dimensions.
const IDX_IMAGES_MAGIC: u32 = 0x0000_0803;
const IDX_LABELS_MAGIC: u32 = 0x0000_0801;
/// No real IDX file is near this; it bounds what a corrupt or hostile gzip can make us allocate.
const MAX_DECOMPRESSED: u64 = 1 << 30;

/// A stack of same-sized grey images from an IDX file.
pub struct IdxImages {
    pub rows: u32,
    pub cols: u32,
    pixels: Vec<u8>,
}

impl fmt::Debug for IdxImages {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdxImages")
            .field("rows", &self.rows)
            .field("cols", &self.cols)
            .field("count", &self.len())
            .finish()
    }
}

impl IdxImages {
    pub fn len(&self) -> usize {
        let size = self.rows as usize * self.cols as usize;
        self.pixels.len().checked_div(size).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The raw pixels of image `index` (row-major, `rows * cols` bytes).
    pub fn pixels(&self, index: usize) -> Option<&[u8]> {
        let size = self.rows as usize * self.cols as usize;
        self.pixels.get(index.checked_mul(size)?..index.checked_add(1)?.checked_mul(size)?)
    }

    /// Image `index` as a grey image.
    pub fn image(&self, index: usize) -> Option<DynamicImage> {
        let pixels = self.pixels(index)?.to_vec();
        GrayImage::from_raw(self.cols, self.rows, pixels).map(DynamicImage::ImageLuma8)
    }
}

pub(super) fn open(root: &Path) -> Result<RawDataset, DatasetError> {
    let missing: Vec<&str> = [TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS]
        .into_iter()
        .filter(|f| !root.join(f).is_file())
        .collect();
    if !missing.is_empty() {
        return Err(DatasetError::NotFound {
            kind: DatasetKind::FashionMnist,
            root: root.to_path_buf(),
            expected: format!(
                "the gzipped IDX files {} (missing: {})",
                [TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS].join(", "),
                missing.join(", ")
            ),
        });
    }
    let train = read_split(root, TRAIN_IMAGES, TRAIN_LABELS)?;
    let test = read_split(root, TEST_IMAGES, TEST_LABELS)?;
    Ok(RawDataset {
        root: root.to_path_buf(),
        class_names: FASHION_MNIST_CLASSES.iter().map(|s| s.to_string()).collect(),
        train,
        test,
    })
}

fn read_split(root: &Path, images_file: &str, labels_file: &str) -> Result<Vec<Item>, DatasetError> {
    let images_path = root.join(images_file);
    let labels_path = root.join(labels_file);
    let images = parse_idx_images(&gunzip(&images_path)?).map_err(|m| DatasetError::invalid(&images_path, None, m))?;
    let labels = parse_idx_labels(&gunzip(&labels_path)?).map_err(|m| DatasetError::invalid(&labels_path, None, m))?;
    if images.len() != labels.len() {
        return Err(DatasetError::invalid(
            &labels_path,
            None,
            format!("{} labels for {} images in {images_file}", labels.len(), images.len()),
        ));
    }
    if let Some((i, label)) = labels.iter().enumerate().find(|(_, l)| usize::from(**l) >= FASHION_MNIST_CLASSES.len()) {
        return Err(DatasetError::invalid(
            &labels_path,
            None,
            format!("label {label} of item {i} is not a Fashion-MNIST class (0-9)"),
        ));
    }
    let images = Arc::new(images);
    Ok(labels
        .iter()
        .enumerate()
        .map(|(index, &label)| Item {
            label: u32::from(label),
            path: format!("{images_file}#{index}"),
            source: Source::Idx { images: Arc::clone(&images), index },
        })
        .collect())
}

fn gunzip(path: &Path) -> Result<Vec<u8>, DatasetError> {
    let file = std::fs::File::open(path).map_err(|e| DatasetError::io(path, e))?;
    let mut out = Vec::new();
    GzDecoder::new(std::io::BufReader::new(file))
        .take(MAX_DECOMPRESSED + 1)
        .read_to_end(&mut out)
        .map_err(|e| DatasetError::invalid(path, None, format!("not a valid gzip file: {e}")))?;
    if out.len() as u64 > MAX_DECOMPRESSED {
        return Err(DatasetError::invalid(path, None, "decompresses to more than 1 GiB: not an IDX file"));
    }
    Ok(out)
}

/// Reads the big-endian header: magic then `dims` sizes; returns the sizes and the payload.
fn idx_header(bytes: &[u8], magic: u32, dims: usize) -> Result<(Vec<usize>, &[u8]), String> {
    let header_len = 4 + 4 * dims;
    if bytes.len() < header_len {
        return Err(format!("IDX header needs {header_len} bytes, the file has {}", bytes.len()));
    }
    let word = |i: usize| u32::from_be_bytes([bytes[4 * i], bytes[4 * i + 1], bytes[4 * i + 2], bytes[4 * i + 3]]);
    let found = word(0);
    if found != magic {
        return Err(format!(
            "IDX magic is {found:#010x}, expected {magic:#010x} (unsigned bytes, {dims} dimension(s))"
        ));
    }
    let sizes = (1..=dims).map(|i| word(i) as usize).collect();
    Ok((sizes, &bytes[header_len..]))
}

pub(super) fn parse_idx_images(bytes: &[u8]) -> Result<IdxImages, String> {
    let (sizes, payload) = idx_header(bytes, IDX_IMAGES_MAGIC, 3)?;
    let (count, rows, cols) = (sizes[0], sizes[1], sizes[2]);
    if rows == 0 || cols == 0 || rows > 1 << 16 || cols > 1 << 16 {
        return Err(format!("implausible image size {rows}x{cols}"));
    }
    let expected = count.checked_mul(rows * cols).ok_or("image count overflows")?;
    if payload.len() != expected {
        return Err(format!(
            "header says {count} images of {rows}x{cols} = {expected} bytes, the file holds {}",
            payload.len()
        ));
    }
    Ok(IdxImages { rows: rows as u32, cols: cols as u32, pixels: payload.to_vec() })
}

pub(super) fn parse_idx_labels(bytes: &[u8]) -> Result<Vec<u8>, String> {
    let (sizes, payload) = idx_header(bytes, IDX_LABELS_MAGIC, 1)?;
    if payload.len() != sizes[0] {
        return Err(format!("header says {} labels, the file holds {}", sizes[0], payload.len()));
    }
    Ok(payload.to_vec())
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use flate2::Compression;
    use flate2::write::GzEncoder;

    use super::*;
    use crate::dataset::{Dataset, OpenOptions, Split};

    fn idx_images(count: u32, rows: u32, cols: u32, fill: impl Fn(u32) -> u8) -> Vec<u8> {
        let mut out = IDX_IMAGES_MAGIC.to_be_bytes().to_vec();
        for v in [count, rows, cols] {
            out.extend_from_slice(&v.to_be_bytes());
        }
        for i in 0..count {
            out.extend(std::iter::repeat_n(fill(i), (rows * cols) as usize));
        }
        out
    }

    fn idx_labels(labels: &[u8]) -> Vec<u8> {
        let mut out = IDX_LABELS_MAGIC.to_be_bytes().to_vec();
        out.extend_from_slice(&(labels.len() as u32).to_be_bytes());
        out.extend_from_slice(labels);
        out
    }

    fn write_gz(path: &Path, bytes: &[u8]) {
        let mut encoder = GzEncoder::new(std::fs::File::create(path).unwrap(), Compression::fast());
        encoder.write_all(bytes).unwrap();
        encoder.finish().unwrap();
    }

    /// Writes a tiny Fashion-MNIST: image i is filled with the value i, label i % 10.
    fn write_dataset(dir: &Path, train: u32, test: u32) {
        let labels = |n: u32| (0..n).map(|i| (i % 10) as u8).collect::<Vec<_>>();
        write_gz(&dir.join(TRAIN_IMAGES), &idx_images(train, 28, 28, |i| i as u8));
        write_gz(&dir.join(TRAIN_LABELS), &idx_labels(&labels(train)));
        write_gz(&dir.join(TEST_IMAGES), &idx_images(test, 28, 28, |i| 200 + i as u8));
        write_gz(&dir.join(TEST_LABELS), &idx_labels(&labels(test)));
    }

    #[test]
    fn opens_written_idx_files() {
        let dir = tempfile::tempdir().unwrap();
        write_dataset(dir.path(), 50, 20);
        let options = OpenOptions { val_fraction: 0.2, ..OpenOptions::default() };
        let data = Dataset::open(DatasetKind::FashionMnist, dir.path(), &options).unwrap();
        assert_eq!(data.class_names().len(), 10);
        assert_eq!(data.class_names()[9], "Ankle boot");
        assert_eq!(data.split(Split::Train).len(), 50);
        assert_eq!(data.split(Split::Test).len(), 20);
        assert_eq!(data.split(Split::Val).len(), 10);
        assert_eq!(data.split(Split::Fit).len(), 40);
        let item = data.find(Split::Train, "train-images-idx3-ubyte.gz#13").unwrap();
        assert_eq!(item.label, 3);
        let image = item.load().unwrap().to_luma8();
        assert_eq!(image.dimensions(), (28, 28));
        assert!(image.pixels().all(|p| p.0[0] == 13));
        let test_item = &data.split(Split::Test)[5];
        assert_eq!(test_item.load().unwrap().to_luma8().get_pixel(3, 4).0[0], 205);
    }

    #[test]
    fn count_mismatch_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        write_dataset(dir.path(), 30, 10);
        write_gz(&dir.path().join(TRAIN_LABELS), &idx_labels(&[1; 29]));
        let err = Dataset::open(DatasetKind::FashionMnist, dir.path(), &OpenOptions::default()).unwrap_err();
        let text = err.to_string();
        assert!(text.contains(TRAIN_LABELS) && text.contains("29 labels for 30 images"), "{text}");
    }

    #[test]
    fn bad_headers_are_refused() {
        let mut wrong_magic = idx_images(2, 28, 28, |_| 0);
        wrong_magic[3] = 0x02;
        assert!(parse_idx_images(&wrong_magic).unwrap_err().contains("magic"));
        let mut short = idx_images(3, 28, 28, |_| 0);
        short.truncate(short.len() - 1);
        assert!(parse_idx_images(&short).unwrap_err().contains("3 images"));
        assert!(parse_idx_images(&[0, 0, 8]).unwrap_err().contains("header"));
        let mut labels = idx_labels(&[1, 2, 3]);
        labels.push(4);
        assert!(parse_idx_labels(&labels).unwrap_err().contains("3 labels"));
        assert!(parse_idx_labels(&idx_images(1, 1, 1, |_| 0)).unwrap_err().contains("magic"));
    }

    #[test]
    fn out_of_range_label_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        write_dataset(dir.path(), 5, 5);
        write_gz(&dir.path().join(TEST_LABELS), &idx_labels(&[0, 1, 2, 10, 4]));
        let text =
            Dataset::open(DatasetKind::FashionMnist, dir.path(), &OpenOptions::default()).unwrap_err().to_string();
        assert!(text.contains(TEST_LABELS) && text.contains("label 10 of item 3"), "{text}");
    }

    #[test]
    fn not_gzip_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        write_dataset(dir.path(), 5, 5);
        std::fs::write(dir.path().join(TRAIN_IMAGES), b"plain text").unwrap();
        let text =
            Dataset::open(DatasetKind::FashionMnist, dir.path(), &OpenOptions::default()).unwrap_err().to_string();
        assert!(text.contains(TRAIN_IMAGES) && text.contains("gzip"), "{text}");
    }

    #[test]
    fn missing_files_are_listed() {
        let dir = tempfile::tempdir().unwrap();
        let text =
            Dataset::open(DatasetKind::FashionMnist, dir.path(), &OpenOptions::default()).unwrap_err().to_string();
        assert!(text.contains("t10k-labels-idx1-ubyte.gz") && text.contains("dataset-fashion-mnist"), "{text}");
    }

    /// The real data set, when installed (CI installs Debian's package).
    #[test]
    fn real_fashion_mnist_when_installed() {
        let root = Path::new(DEBIAN_ROOT);
        if !root.join(TRAIN_IMAGES).is_file() {
            return;
        }
        let data = Dataset::open(DatasetKind::FashionMnist, root, &OpenOptions::default()).unwrap();
        assert_eq!(data.split(Split::Train).len(), 60_000);
        assert_eq!(data.split(Split::Test).len(), 10_000);
        assert_eq!(data.split(Split::Val).len(), 6_000);
        let mut per_class = [0usize; 10];
        for item in data.split(Split::Val) {
            per_class[item.label as usize] += 1;
        }
        assert_eq!(per_class, [600; 10], "the validation split is stratified");
        let image = data.split(Split::Test)[0].load().unwrap();
        assert_eq!((image.width(), image.height()), (28, 28));
    }
}
