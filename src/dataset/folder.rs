//! A user's own images as `root/<class>/<image>` (classes sorted by name, images sorted by file
//! name, searched recursively inside each class folder), with an optional `root/split.txt` of
//! `<relative path> <train|test>` lines; without it a seeded, stratified 80/20 split.

use std::path::Path;
use std::sync::Arc;

use super::{DatasetError, DatasetKind, Item, RawDataset, read_text, stratified_holdout};

/// The optional split file at the root.
pub const SPLIT_FILE: &str = "split.txt";
/// Fraction of each class that becomes Test without a split file.
const TEST_FRACTION: f32 = 0.2;
/// Added to the user's seed so the test split and the validation split are independent draws.
const TEST_SPLIT_STREAM: u64 = 0x7e57_5eed;

const IMAGE_EXTENSIONS: [&str; 8] = ["jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff"];

fn is_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.iter().any(|x| x.eq_ignore_ascii_case(e)))
}

fn is_hidden(name: &std::ffi::OsStr) -> bool {
    name.to_str().is_some_and(|n| n.starts_with('.'))
}

pub(super) fn open(root: &Path, seed: u64) -> Result<RawDataset, DatasetError> {
    let shared_root: Arc<Path> = Arc::from(root);
    let mut class_dirs = Vec::new();
    for entry in std::fs::read_dir(root).map_err(|e| DatasetError::io(root, e))? {
        let entry = entry.map_err(|e| DatasetError::io(root, e))?;
        let path = entry.path();
        if path.is_dir() && !is_hidden(&entry.file_name()) {
            let name = entry.file_name().into_string().map_err(|name| {
                DatasetError::invalid(&path, None, format!("class folder name {name:?} is not valid UTF-8"))
            })?;
            class_dirs.push(name);
        }
    }
    class_dirs.sort();
    let mut all = Vec::new();
    let mut class_names = Vec::new();
    for name in class_dirs {
        let mut files = Vec::new();
        collect_images(root, &root.join(&name), &mut files)?;
        if files.is_empty() {
            continue;
        }
        files.sort();
        let label = class_names.len() as u32;
        all.extend(files.into_iter().map(|path| Item::file(&shared_root, path, label)));
        class_names.push(name);
    }
    if all.is_empty() {
        return Err(DatasetError::NotFound {
            kind: DatasetKind::Folder,
            root: root.to_path_buf(),
            expected: format!("class folders holding images ({})", IMAGE_EXTENSIONS.join(", ")),
        });
    }
    let split_path = root.join(SPLIT_FILE);
    let (train, test) = if split_path.is_file() {
        split_from_file(&split_path, all)?
    } else {
        let labels: Vec<u32> = all.iter().map(|item| item.label).collect();
        let is_test = stratified_holdout(&labels, TEST_FRACTION, seed.wrapping_add(TEST_SPLIT_STREAM));
        let (test, train): (Vec<_>, Vec<_>) = all.into_iter().zip(is_test).partition(|(_, t)| *t);
        (train.into_iter().map(|(i, _)| i).collect(), test.into_iter().map(|(i, _)| i).collect())
    };
    Ok(RawDataset { root: root.to_path_buf(), class_names, train, test })
}

/// Image files under `dir`, as `/`-separated paths relative to `root`. Class folders and image
/// files may be symbolic links; sub-folders are followed only when they are real folders, so a
/// link cycle cannot recurse forever.
fn collect_images(root: &Path, dir: &Path, out: &mut Vec<String>) -> Result<(), DatasetError> {
    for entry in std::fs::read_dir(dir).map_err(|e| DatasetError::io(dir, e))? {
        let entry = entry.map_err(|e| DatasetError::io(dir, e))?;
        if is_hidden(&entry.file_name()) {
            continue;
        }
        let path = entry.path();
        let file_type = entry.file_type().map_err(|e| DatasetError::io(&path, e))?;
        if file_type.is_dir() {
            collect_images(root, &path, out)?;
        } else if is_image(&path) && path.is_file() {
            let relative = path.strip_prefix(root).unwrap_or(&path);
            let parts: Option<Vec<&str>> = relative.components().map(|c| c.as_os_str().to_str()).collect();
            let parts = parts.ok_or_else(|| DatasetError::invalid(&path, None, "file name is not valid UTF-8"))?;
            out.push(parts.join("/"));
        }
    }
    Ok(())
}

/// Assigns items by `split.txt`; items the file does not mention are left out, and a line that
/// names no image of a class folder, or a path twice, is an error naming the line.
fn split_from_file(path: &Path, all: Vec<Item>) -> Result<(Vec<Item>, Vec<Item>), DatasetError> {
    let text = read_text(path)?;
    let mut index = std::collections::HashMap::new();
    for (i, item) in all.iter().enumerate() {
        index.insert(item.path.clone(), i);
    }
    let mut assigned: Vec<Option<bool>> = vec![None; all.len()];
    for (n, line) in text.lines().enumerate() {
        let line_no = n + 1;
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (file, which) = line
            .rsplit_once(char::is_whitespace)
            .ok_or_else(|| DatasetError::invalid(path, Some(line_no), "expected `<relative path> <train|test>`"))?;
        let is_test = match which.trim().to_ascii_lowercase().as_str() {
            "train" => false,
            "test" => true,
            other => {
                return Err(DatasetError::invalid(
                    path,
                    Some(line_no),
                    format!("split {other:?} is neither train nor test"),
                ));
            }
        };
        let file = file.trim().trim_start_matches("./");
        let &i = index.get(file).ok_or_else(|| {
            DatasetError::invalid(path, Some(line_no), format!("{file:?} is not an image inside a class folder"))
        })?;
        if assigned[i].replace(is_test).is_some() {
            return Err(DatasetError::invalid(path, Some(line_no), format!("{file:?} is listed twice")));
        }
    }
    let (mut train, mut test) = (Vec::new(), Vec::new());
    for (item, side) in all.into_iter().zip(assigned) {
        match side {
            Some(false) => train.push(item),
            Some(true) => test.push(item),
            None => {}
        }
    }
    if train.is_empty() {
        return Err(DatasetError::invalid(path, None, "no image is assigned to the train split"));
    }
    Ok((train, test))
}
