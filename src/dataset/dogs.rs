//! Stanford Dogs from `Images/<wnid>-<breed>/<file>.jpg` and the official MATLAB v5 lists
//! `train_list.mat` / `test_list.mat` (at the root or under `lists/`), each holding `file_list`
//! (cell array of paths relative to `Images/`), `annotation_list` and `labels` (1-based doubles).
//! Labels become 0-based; a class is named by its breed (the folder name without the WordNet id).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::mat::{MatFile, MatValue};
use super::{DatasetError, DatasetKind, Item, RawDataset};

const IMAGES: &str = "Images";
const TRAIN_LIST: &str = "train_list.mat";
const TEST_LIST: &str = "test_list.mat";

/// The folder holding the two lists: the root, else `root/lists`.
fn locate_lists(root: &Path) -> Option<PathBuf> {
    [root.to_path_buf(), root.join("lists")]
        .into_iter()
        .find(|dir| dir.join(TRAIN_LIST).is_file() && dir.join(TEST_LIST).is_file())
}

pub(super) fn open(root: &Path) -> Result<RawDataset, DatasetError> {
    let lists = locate_lists(root).filter(|_| root.join(IMAGES).is_dir()).ok_or_else(|| DatasetError::NotFound {
        kind: DatasetKind::Dogs,
        root: root.to_path_buf(),
        expected: format!("{IMAGES}/ and {TRAIN_LIST}, {TEST_LIST} at the root or under lists/"),
    })?;
    let train_path = lists.join(TRAIN_LIST);
    let test_path = lists.join(TEST_LIST);
    let train = read_list(&train_path)?;
    let test = read_list(&test_path)?;

    // label -> (folder, where first seen): every file of a label must sit in one folder.
    let mut folders: BTreeMap<u32, (String, PathBuf, usize)> = BTreeMap::new();
    for (path, entries) in [(&train_path, &train), (&test_path, &test)] {
        for (i, (file, label)) in entries.iter().enumerate() {
            let folder = file.split('/').next().unwrap_or_default().to_string();
            match folders.get(label) {
                Some((known, first_path, first_i)) if *known != folder => {
                    return Err(DatasetError::invalid(
                        path,
                        Some(i + 1),
                        format!(
                            "label {} is folder {folder:?} here but {known:?} at entry {} of {}",
                            label + 1,
                            first_i + 1,
                            first_path.display()
                        ),
                    ));
                }
                Some(_) => {}
                None => {
                    folders.insert(*label, (folder, path.clone(), i));
                }
            }
        }
    }
    let classes = folders.keys().last().map_or(0, |&l| l as usize + 1);
    let mut class_names = Vec::with_capacity(classes);
    for label in 0..classes as u32 {
        let (folder, _, _) = folders.get(&label).ok_or_else(|| {
            DatasetError::invalid(
                &train_path,
                None,
                format!("no image has label {} (labels must be 1..={classes})", label + 1),
            )
        })?;
        // "n02085620-Chihuahua" -> "Chihuahua"; keep the folder name if it has no WordNet prefix.
        let breed = folder.split_once('-').map_or(folder.as_str(), |(_, breed)| breed);
        class_names.push(breed.to_string());
    }

    let shared_root: Arc<Path> = Arc::from(root);
    let items = |entries: Vec<(String, u32)>| -> Vec<Item> {
        entries.into_iter().map(|(file, label)| Item::file(&shared_root, format!("{IMAGES}/{file}"), label)).collect()
    };
    Ok(RawDataset { root: root.to_path_buf(), class_names, train: items(train), test: items(test) })
}

/// Reads `(path relative to Images/, 0-based label)` pairs from one list.
fn read_list(path: &Path) -> Result<Vec<(String, u32)>, DatasetError> {
    let bytes = std::fs::read(path).map_err(|e| DatasetError::io(path, e))?;
    let mat = MatFile::parse(&bytes).map_err(|source| DatasetError::Mat { path: path.to_path_buf(), source })?;
    let invalid = |line: Option<usize>, message: String| DatasetError::invalid(path, line, message);
    let files = mat
        .get("file_list")
        .ok_or_else(|| invalid(None, "no variable `file_list`".into()))?
        .as_cells()
        .ok_or_else(|| invalid(None, "`file_list` is not a cell array".into()))?;
    let labels_value = mat.get("labels").ok_or_else(|| invalid(None, "no variable `labels`".into()))?;
    let labels = labels_value
        .as_f64s()
        .ok_or_else(|| invalid(None, format!("`labels` is {}, not a numeric array", labels_value.describe())))?;
    if files.len() != labels.len() {
        return Err(invalid(None, format!("{} entries in `file_list` but {} in `labels`", files.len(), labels.len())));
    }
    let mut out = Vec::with_capacity(files.len());
    for (i, (cell, &label)) in files.iter().zip(labels).enumerate() {
        let entry = Some(i + 1);
        let file = file_name(cell).ok_or_else(|| {
            invalid(entry, format!("`file_list` entry is {}, not a one-row char array", cell.describe()))
        })?;
        let file = file.trim().replace('\\', "/");
        if file.is_empty() || file.starts_with('/') || file.split('/').any(|part| part == "..") {
            return Err(invalid(entry, format!("`file_list` entry {file:?} is not a relative path inside {IMAGES}/")));
        }
        if label.fract() != 0.0 || !(1.0..=f64::from(u32::MAX)).contains(&label) {
            return Err(invalid(entry, format!("label {label} is not a class number (1-based)")));
        }
        out.push((file, label as u32 - 1));
    }
    Ok(out)
}

/// A path stored as a char array, or as a 1x1 cell around one (both occur in MAT-files).
fn file_name(cell: &MatValue) -> Option<String> {
    match cell {
        MatValue::Cell { cells, .. } if cells.len() == 1 => file_name(&cells[0]),
        other => other.as_string(),
    }
}
