//! The data set readers on fixtures in the official layouts (tests/fixtures/{cub,dogs,folder},
//! written by scripts/make_fixtures.py; the Dogs lists by scipy's `savemat`), and their errors.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use hashsrv::dataset::mat::{MatFile, MatValue};
use hashsrv::dataset::{Dataset, DatasetError, DatasetKind, OpenOptions, Split};

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(rel)
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

fn paths(data: &Dataset, split: Split) -> Vec<String> {
    data.split(split).iter().map(|i| i.path.clone()).collect()
}

/// Val and Fit are disjoint, their union is Train, and every item keeps its order.
fn assert_val_fit_partition_train(data: &Dataset) {
    let train = paths(data, Split::Train);
    let val: HashSet<_> = paths(data, Split::Val).into_iter().collect();
    let fit: HashSet<_> = paths(data, Split::Fit).into_iter().collect();
    assert!(val.is_disjoint(&fit));
    assert_eq!(val.len() + fit.len(), train.len());
    let union: HashSet<_> = val.union(&fit).cloned().collect();
    assert_eq!(union, train.iter().cloned().collect::<HashSet<_>>());
    let fit_in_order: Vec<_> = train.iter().filter(|p| fit.contains(*p)).cloned().collect();
    assert_eq!(fit_in_order, paths(data, Split::Fit));
}

fn mean_rgb(data: &Dataset, split: Split, index: usize) -> [f64; 3] {
    let image = data.split(split)[index].load().unwrap().to_rgb8();
    let mut sum = [0f64; 3];
    for p in image.pixels() {
        for (total, value) in sum.iter_mut().zip(p.0) {
            *total += f64::from(value);
        }
    }
    let n = f64::from(image.width() * image.height());
    sum.map(|s| s / n)
}

fn dominant_channel(rgb: [f64; 3]) -> usize {
    (0..3).max_by(|&a, &b| rgb[a].total_cmp(&rgb[b])).unwrap()
}

// ---------------------------------------------------------------- CUB-200-2011

#[test]
fn cub_opens_from_the_folder_and_its_parent() {
    let options = OpenOptions { val_fraction: 0.34, ..OpenOptions::default() };
    let inner = Dataset::open(DatasetKind::Cub, &fixture("cub/CUB_200_2011"), &options).unwrap();
    let parent = Dataset::open(DatasetKind::Cub, &fixture("cub"), &options).unwrap();
    assert_eq!(paths(&inner, Split::Train), paths(&parent, Split::Train));
    assert_eq!(inner.root(), parent.root());
    assert_eq!(inner.class_names(), ["001.Black_footed_Albatross", "002.Laysan_Albatross", "003.Sooty_Albatross"]);
    assert_eq!(inner.split(Split::Train).len(), 6);
    assert_eq!(inner.split(Split::Test).len(), 6);
    let first = &inner.split(Split::Train)[0];
    assert_eq!(first.path, "images/001.Black_footed_Albatross/Black_Footed_Albatross_0001_796001.jpg");
    assert_eq!(first.label, 0);
    let labels: Vec<u32> = inner.split(Split::Test).iter().map(|i| i.label).collect();
    assert_eq!(labels, [0, 0, 1, 1, 2, 2], "labels are 0-based, in images.txt order");
    assert_val_fit_partition_train(&inner);
    assert_eq!(inner.split(Split::Val).len(), 2);
    // The fixture colours: class 0 red, 1 green, 2 blue.
    for (i, item) in inner.split(Split::Test).iter().enumerate() {
        assert_eq!(dominant_channel(mean_rgb(&inner, Split::Test, i)), item.label as usize, "{}", item.path);
    }
    assert!(inner.find(Split::Test, &inner.split(Split::Test)[3].path).is_some());
    assert!(inner.find(Split::Train, &inner.split(Split::Test)[3].path).is_none());
}

#[test]
fn cub_bad_label_names_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&fixture("cub"), dir.path());
    let labels = dir.path().join("CUB_200_2011/image_class_labels.txt");
    let text = std::fs::read_to_string(&labels).unwrap().replace("5 2\n", "5 9\n");
    std::fs::write(&labels, text).unwrap();
    let err = Dataset::open(DatasetKind::Cub, dir.path(), &OpenOptions::default()).unwrap_err();
    let message = err.to_string();
    assert!(message.contains("image_class_labels.txt:5") && message.contains("class 9"), "{message}");
}

#[test]
fn cub_count_mismatch_and_bad_flag_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&fixture("cub"), dir.path());
    let split = dir.path().join("CUB_200_2011/train_test_split.txt");
    let original = std::fs::read_to_string(&split).unwrap();
    let shorter: String = original.lines().skip(1).map(|l| format!("{l}\n")).collect();
    std::fs::write(&split, shorter).unwrap();
    let message = Dataset::open(DatasetKind::Cub, dir.path(), &OpenOptions::default()).unwrap_err().to_string();
    assert!(message.contains("train_test_split.txt") && message.contains("11 entries"), "{message}");

    std::fs::write(&split, original.replace("3 1\n", "3 yes\n")).unwrap();
    let message = Dataset::open(DatasetKind::Cub, dir.path(), &OpenOptions::default()).unwrap_err().to_string();
    assert!(message.contains("train_test_split.txt:3"), "{message}");
}

#[test]
fn cub_wrong_root_says_what_is_expected() {
    let err = Dataset::open(DatasetKind::Cub, &fixture("folder"), &OpenOptions::default()).unwrap_err();
    assert!(matches!(err, DatasetError::NotFound { .. }));
    let message = err.to_string();
    assert!(message.contains("images.txt") && message.contains("caltech"), "{message}");
}

#[test]
fn unreadable_images_fail_or_are_skipped_on_request() {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&fixture("cub"), dir.path());
    let broken = "images/002.Laysan_Albatross/Laysan_Albatross_0001_796005.jpg";
    std::fs::write(dir.path().join("CUB_200_2011").join(broken), b"not a jpeg").unwrap();
    let message = Dataset::open(DatasetKind::Cub, dir.path(), &OpenOptions::default()).unwrap_err().to_string();
    assert!(message.contains("Laysan_Albatross_0001_796005.jpg") && message.contains("skip-unreadable"), "{message}");

    let options = OpenOptions { skip_unreadable: true, ..OpenOptions::default() };
    let data = Dataset::open(DatasetKind::Cub, dir.path(), &options).unwrap();
    assert_eq!(data.skipped().len(), 1);
    assert_eq!(data.skipped()[0].path, broken);
    assert_eq!(data.skipped()[0].split, Split::Train);
    assert_eq!(data.split(Split::Train).len(), 5);
    assert!(data.find(Split::Train, broken).is_none());
}

#[test]
fn a_missing_image_file_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&fixture("cub"), dir.path());
    let gone = "images/003.Sooty_Albatross/Sooty_Albatross_0002_796010.jpg";
    std::fs::remove_file(dir.path().join("CUB_200_2011").join(gone)).unwrap();
    let message = Dataset::open(DatasetKind::Cub, dir.path(), &OpenOptions::default()).unwrap_err().to_string();
    assert!(message.contains("Sooty_Albatross_0002_796010.jpg"), "{message}");
}

// ---------------------------------------------------------------- Stanford Dogs

#[test]
fn dogs_opens_with_compressed_lists_under_lists() {
    let data = Dataset::open(DatasetKind::Dogs, &fixture("dogs"), &OpenOptions::default()).unwrap();
    assert_eq!(data.class_names(), ["Chihuahua", "Japanese_spaniel", "Shih-Tzu"]);
    assert_eq!(data.split(Split::Train).len(), 9);
    assert_eq!(data.split(Split::Test).len(), 6);
    let first = &data.split(Split::Train)[0];
    assert_eq!(first.path, "Images/n02085620-Chihuahua/n02085620_1000.jpg");
    assert_eq!(first.label, 0);
    let test_labels: Vec<u32> = data.split(Split::Test).iter().map(|i| i.label).collect();
    assert_eq!(test_labels, [0, 0, 1, 1, 2, 2]);
    for (i, item) in data.split(Split::Train).iter().enumerate() {
        assert_eq!(dominant_channel(mean_rgb(&data, Split::Train, i)), item.label as usize, "{}", item.path);
    }
    assert_val_fit_partition_train(&data);
}

#[test]
fn dogs_opens_with_uncompressed_lists_at_the_root() {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&fixture("dogs/Images"), &dir.path().join("Images"));
    for list in ["train_list.mat", "test_list.mat"] {
        std::fs::copy(fixture("dogs/uncompressed").join(list), dir.path().join(list)).unwrap();
    }
    let at_root = Dataset::open(DatasetKind::Dogs, dir.path(), &OpenOptions::default()).unwrap();
    let under_lists = Dataset::open(DatasetKind::Dogs, &fixture("dogs"), &OpenOptions::default()).unwrap();
    assert_eq!(at_root.class_names(), under_lists.class_names());
    for split in Split::ALL {
        assert_eq!(paths(&at_root, split), paths(&under_lists, split), "{split}");
    }
}

#[test]
fn dogs_corrupt_list_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&fixture("dogs"), dir.path());
    let list = dir.path().join("lists/test_list.mat");
    let bytes = std::fs::read(&list).unwrap();
    std::fs::write(&list, &bytes[..bytes.len() - 20]).unwrap();
    let message = Dataset::open(DatasetKind::Dogs, dir.path(), &OpenOptions::default()).unwrap_err().to_string();
    assert!(message.contains("test_list.mat"), "{message}");
}

#[test]
fn dogs_missing_lists_say_where_to_get_them() {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&fixture("dogs/Images"), &dir.path().join("Images"));
    let message = Dataset::open(DatasetKind::Dogs, dir.path(), &OpenOptions::default()).unwrap_err().to_string();
    assert!(message.contains("train_list.mat") && message.contains("stanford.edu"), "{message}");
}

// ---------------------------------------------------------------- the MAT v5 reader

fn read_mat(rel: &str) -> MatFile {
    MatFile::parse(&std::fs::read(fixture(rel)).unwrap()).unwrap()
}

#[test]
fn mat_reader_reads_scipy_lists_compressed_and_not() {
    for rel in ["dogs/lists/train_list.mat", "dogs/uncompressed/train_list.mat"] {
        let mat = read_mat(rel);
        assert!(mat.header_text.starts_with("MATLAB 5.0 MAT-file"), "{rel}: {}", mat.header_text);
        let files = mat.get("file_list").unwrap();
        assert_eq!(files.dims(), [9, 1], "{rel}");
        let names: Vec<String> = files.as_cells().unwrap().iter().map(|c| c.as_string().unwrap()).collect();
        assert_eq!(names[0], "n02085620-Chihuahua/n02085620_1000.jpg");
        assert_eq!(names[8], "n02086240-Shih-Tzu/n02086240_1016.jpg");
        let labels = mat.get("labels").unwrap();
        assert_eq!(labels.dims(), [9, 1]);
        assert_eq!(labels.as_f64s().unwrap(), [1.0, 1.0, 1.0, 2.0, 2.0, 2.0, 3.0, 3.0, 3.0]);
        let annotations = mat.get("annotation_list").unwrap().as_cells().unwrap();
        assert_eq!(annotations[3].as_string().unwrap(), "n02085782-Japanese_spaniel/n02085782_1001");
    }
    assert_eq!(read_mat("dogs/lists/train_list.mat").variables, read_mat("dogs/uncompressed/train_list.mat").variables);
    assert_eq!(read_mat("dogs/lists/file_list.mat").get("labels").unwrap().dims(), [15, 1]);
}

#[test]
fn mat_reader_refuses_every_truncation_without_panicking() {
    for rel in ["dogs/lists/test_list.mat", "dogs/uncompressed/test_list.mat"] {
        let bytes = std::fs::read(fixture(rel)).unwrap();
        for len in 0..bytes.len() {
            let result = MatFile::parse(&bytes[..len]);
            // A cut between two variables leaves a valid file holding the first ones (the header
            // alone is an empty MAT-file); any other cut must fail.
            if let Ok(mat) = result {
                let full = read_mat(rel).variables;
                assert!(full.starts_with(&mat.variables), "{rel} cut at {len} parsed to something else");
            }
        }
        let message = MatFile::parse(&bytes[..bytes.len() / 2]).unwrap_err().to_string();
        assert!(!message.is_empty());
    }
}

#[test]
fn mat_reader_survives_corrupted_bytes() {
    for rel in ["dogs/lists/test_list.mat", "dogs/uncompressed/test_list.mat"] {
        let bytes = std::fs::read(fixture(rel)).unwrap();
        for at in 0..bytes.len() {
            for value in [0x00, 0xff, 0x7f] {
                let mut corrupt = bytes.clone();
                corrupt[at] ^= value;
                // Any outcome but a panic is acceptable; errors must carry a message.
                if let Err(e) = MatFile::parse(&corrupt) {
                    assert!(!e.to_string().is_empty());
                }
            }
        }
    }
}

#[test]
fn mat_reader_rejects_non_mat_files() {
    let jpeg = std::fs::read(fixture("folder/apples/apples_0.jpg")).unwrap();
    let mut padded = jpeg.clone();
    padded.resize(200, 0);
    assert!(MatFile::parse(&padded).unwrap_err().to_string().contains("not a MAT v5 file"));
    assert!(MatFile::parse(b"short").is_err());
    let mut hdf5 = vec![0u8; 1024];
    hdf5[512..516].copy_from_slice(b"\x89HDF");
    assert!(MatFile::parse(&hdf5).unwrap_err().to_string().contains("7.3"));
    assert!(matches!(read_mat("dogs/lists/test_list.mat").get("labels"), Some(MatValue::Numeric { .. })));
}

// ---------------------------------------------------------------- folder per class

#[test]
fn folder_sorted_classes_and_seeded_stratified_split() {
    let options = OpenOptions { seed: 5, ..OpenOptions::default() };
    let data = Dataset::open(DatasetKind::Folder, &fixture("folder"), &options).unwrap();
    assert_eq!(data.class_names(), ["apples", "bananas", "cherries"]);
    assert_eq!(data.split(Split::Train).len(), 12);
    assert_eq!(data.split(Split::Test).len(), 3);
    let mut test_labels: Vec<u32> = data.split(Split::Test).iter().map(|i| i.label).collect();
    test_labels.sort();
    assert_eq!(test_labels, [0, 1, 2], "one test image per class");
    let again = Dataset::open(DatasetKind::Folder, &fixture("folder"), &options).unwrap();
    assert_eq!(paths(&data, Split::Test), paths(&again, Split::Test));
    let seeds: HashSet<Vec<String>> = (0..8)
        .map(|seed| {
            let options = OpenOptions { seed, ..OpenOptions::default() };
            paths(&Dataset::open(DatasetKind::Folder, &fixture("folder"), &options).unwrap(), Split::Test)
        })
        .collect();
    assert!(seeds.len() > 1, "the split depends on the seed");
    assert_val_fit_partition_train(&data);
    assert!(data.split(Split::Train).iter().chain(data.split(Split::Test)).all(|i| i.load().is_ok()));
}

#[test]
fn folder_split_file_assigns_and_reports_bad_lines() {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&fixture("folder"), dir.path());
    std::fs::write(
        dir.path().join("split.txt"),
        "# comment\napples/apples_0.jpg train\nbananas/bananas_1.png test\n./cherries/cherries_2.jpg train\n",
    )
    .unwrap();
    let data = Dataset::open(DatasetKind::Folder, dir.path(), &OpenOptions::default()).unwrap();
    assert_eq!(paths(&data, Split::Train), ["apples/apples_0.jpg", "cherries/cherries_2.jpg"]);
    assert_eq!(paths(&data, Split::Test), ["bananas/bananas_1.png"]);
    assert_eq!(data.split(Split::Test)[0].label, 1);

    std::fs::write(dir.path().join("split.txt"), "apples/apples_0.jpg train\napples/nope.jpg test\n").unwrap();
    let message = Dataset::open(DatasetKind::Folder, dir.path(), &OpenOptions::default()).unwrap_err().to_string();
    assert!(message.contains("split.txt:2") && message.contains("nope.jpg"), "{message}");

    std::fs::write(dir.path().join("split.txt"), "apples/apples_0.jpg validation\n").unwrap();
    let message = Dataset::open(DatasetKind::Folder, dir.path(), &OpenOptions::default()).unwrap_err().to_string();
    assert!(message.contains("split.txt:1") && message.contains("validation"), "{message}");
}

#[test]
fn folder_follows_linked_classes_but_not_link_cycles() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    std::fs::create_dir(&root).unwrap();
    std::os::unix::fs::symlink(fixture("folder/apples"), root.join("apples")).unwrap();
    copy_dir(&fixture("folder/bananas"), &root.join("bananas"));
    std::os::unix::fs::symlink(&root, root.join("bananas/loop")).unwrap();
    let data = Dataset::open(DatasetKind::Folder, &root, &OpenOptions::default()).unwrap();
    assert_eq!(data.class_names(), ["apples", "bananas"]);
    assert_eq!(data.split(Split::Train).len() + data.split(Split::Test).len(), 10);
}

#[test]
fn folder_without_images_is_not_found() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("empty_class")).unwrap();
    let err = Dataset::open(DatasetKind::Folder, dir.path(), &OpenOptions::default()).unwrap_err();
    assert!(matches!(err, DatasetError::NotFound { .. }), "{err}");
}

#[test]
fn limits_take_stratified_subsets() {
    let options = OpenOptions { limit_train: Some(6), limit_test: Some(3), ..OpenOptions::default() };
    let data = Dataset::open(DatasetKind::Dogs, &fixture("dogs"), &options).unwrap();
    let count = |split| {
        let mut per_class = [0; 3];
        for item in data.split(split) {
            per_class[item.label as usize] += 1;
        }
        per_class
    };
    assert_eq!(count(Split::Train), [2, 2, 2]);
    assert_eq!(count(Split::Test), [1, 1, 1]);
    assert_eq!(data.class_counts(Split::Train), count(Split::Train));
    assert_eq!(data.class_counts(Split::Test), count(Split::Test));
}
