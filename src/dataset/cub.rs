//! CUB-200-2011 from its official lists: `images.txt` (`<id> <path>`), `image_class_labels.txt`
//! (`<id> <class, 1-based>`), `train_test_split.txt` (`<id> <1 = train, 0 = test>`),
//! `classes.txt` (`<class id> <name>`) and `images/`. The root is the `CUB_200_2011/` folder or
//! its parent; item paths are relative to `CUB_200_2011/` (`images/...`). Labels become 0-based; names are kept as written (e.g. `001.Black_footed_Albatross`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{DatasetError, DatasetKind, Item, RawDataset, read_text};

const LISTS: [&str; 4] = ["images.txt", "image_class_labels.txt", "train_test_split.txt", "classes.txt"];
const FOLDER: &str = "CUB_200_2011";

/// The folder holding the lists: `root` itself or `root/CUB_200_2011`.
fn locate(root: &Path) -> Result<PathBuf, DatasetError> {
    for candidate in [root.to_path_buf(), root.join(FOLDER)] {
        if LISTS.iter().all(|f| candidate.join(f).is_file()) && candidate.join("images").is_dir() {
            return Ok(candidate);
        }
    }
    Err(DatasetError::NotFound {
        kind: DatasetKind::Cub,
        root: root.to_path_buf(),
        expected: format!("{} and images/ in it or in {FOLDER}/ under it", LISTS.join(", ")),
    })
}

/// Lines of `<id> <value>` as (line number, id, value); the value may contain spaces.
fn id_lines(path: &Path) -> Result<Vec<(usize, u64, String)>, DatasetError> {
    let text = read_text(path)?;
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let (id, value) = line.split_once(char::is_whitespace).ok_or_else(|| {
            DatasetError::invalid(path, Some(n + 1), format!("expected `<id> <value>`, found {line:?}"))
        })?;
        let id = id
            .parse::<u64>()
            .map_err(|_| DatasetError::invalid(path, Some(n + 1), format!("id {id:?} is not a number")))?;
        out.push((n + 1, id, value.trim().to_string()));
    }
    Ok(out)
}

/// Maps id -> (line, value), refusing duplicate ids.
fn by_id(path: &Path, lines: Vec<(usize, u64, String)>) -> Result<HashMap<u64, (usize, String)>, DatasetError> {
    let mut map = HashMap::with_capacity(lines.len());
    for (line, id, value) in lines {
        if let Some((first, _)) = map.insert(id, (line, value)) {
            return Err(DatasetError::invalid(path, Some(line), format!("id {id} already appears on line {first}")));
        }
    }
    Ok(map)
}

pub(super) fn open(root: &Path) -> Result<RawDataset, DatasetError> {
    let dir = locate(root)?;
    let [images_path, labels_path, split_path, classes_path] = LISTS.map(|f| dir.join(f));

    let classes = id_lines(&classes_path)?;
    let mut class_names = Vec::with_capacity(classes.len());
    for (line, id, name) in classes {
        if id != class_names.len() as u64 + 1 {
            return Err(DatasetError::invalid(
                &classes_path,
                Some(line),
                format!("class id {id} out of sequence: expected {}", class_names.len() + 1),
            ));
        }
        class_names.push(name);
    }
    if class_names.is_empty() {
        return Err(DatasetError::invalid(&classes_path, None, "no classes"));
    }

    let images = id_lines(&images_path)?;
    let labels = by_id(&labels_path, id_lines(&labels_path)?)?;
    let splits = by_id(&split_path, id_lines(&split_path)?)?;
    for (file, map) in [(&labels_path, &labels), (&split_path, &splits)] {
        if map.len() != images.len() {
            return Err(DatasetError::invalid(
                file,
                None,
                format!("{} entries, but images.txt lists {} images", map.len(), images.len()),
            ));
        }
    }

    let shared_root: Arc<Path> = Arc::from(dir.as_path());
    let (mut train, mut test) = (Vec::new(), Vec::new());
    let mut seen = HashMap::with_capacity(images.len());
    for (line, id, path) in images {
        if let Some(first) = seen.insert(id, line) {
            return Err(DatasetError::invalid(
                &images_path,
                Some(line),
                format!("id {id} already appears on line {first}"),
            ));
        }
        let (label_line, label) = labels.get(&id).ok_or_else(|| {
            DatasetError::invalid(&labels_path, None, format!("no label for image id {id} (images.txt line {line})"))
        })?;
        let class: usize = label.parse().map_err(|_| {
            DatasetError::invalid(&labels_path, Some(*label_line), format!("class {label:?} is not a number"))
        })?;
        if class == 0 || class > class_names.len() {
            return Err(DatasetError::invalid(
                &labels_path,
                Some(*label_line),
                format!("class {class} is outside 1..={} of classes.txt", class_names.len()),
            ));
        }
        let (split_line, is_train) = splits.get(&id).ok_or_else(|| {
            DatasetError::invalid(&split_path, None, format!("no split for image id {id} (images.txt line {line})"))
        })?;
        let item = Item::file(&shared_root, format!("images/{path}"), (class - 1) as u32);
        match is_train.as_str() {
            "1" => train.push(item),
            "0" => test.push(item),
            other => {
                return Err(DatasetError::invalid(
                    &split_path,
                    Some(*split_line),
                    format!("split flag {other:?} is neither 1 (train) nor 0 (test)"),
                ));
            }
        }
    }
    Ok(RawDataset { root: dir, class_names, train, test })
}
