//! The file format: writer round trip, atomic publishing, every corruption case and its error, and
//! the frozen version-1 file.

mod common;

use std::path::Path;

use hashsrv_index::format::{HEADER_LEN, Header, Section};
use hashsrv_index::{CodeIndex, HashCode, Hit, IndexError, IndexMetadata, IndexWriter, SearchMethod, SearchOptions};
use zerocopy::{FromBytes, IntoBytes};

/// The frozen version-1 fixture and the items it was written from (`frozen_items`).
const FROZEN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/v1_tiny.hsidx");

/// Items of the frozen file: 48-bit codes (16 padding bits per word); item `i < 12` has its first
/// `i` bits set, so it is at distance `i` from item 0; item 12 repeats item 3 (a tie).
fn frozen_items() -> Vec<(HashCode, u32, u64, String)> {
    let mut items: Vec<_> = (0..12)
        .map(|i: usize| {
            let outputs: Vec<f32> = (0..48).map(|b| if b < i { 1.0 } else { -1.0 }).collect();
            let path = if i == 5 { "images/grüße.png".to_string() } else { format!("images/{i}.png") };
            (HashCode::from_outputs(&outputs).unwrap(), (i % 3) as u32, 1000 + i as u64, path)
        })
        .collect();
    items.push((items[3].0.clone(), 7, 2000, "images/copy-of-3.png".to_string()));
    items
}

fn frozen_metadata() -> IndexMetadata {
    let mut extra = serde_json::Map::new();
    extra.insert("note".into(), "frozen fixture of format version 1".into());
    IndexMetadata {
        model_sha256: Some("ab".repeat(32)),
        dataset: Some("fixture".into()),
        class_names: vec!["zero".into(), "one".into(), "two".into()],
        extra,
    }
}

fn write_frozen_items(path: &Path) {
    let mut writer = IndexWriter::create(path, 48, frozen_metadata()).unwrap();
    for (code, label, id, p) in frozen_items() {
        writer.push(code.words(), label, id, &p).unwrap();
    }
    writer.finish().unwrap();
}

/// Regenerate (only when deliberately changing the format, then keep the old file too):
/// `HASHSRV_WRITE_FIXTURE=1 cargo test -p hashsrv-index --test format frozen`.
#[test]
fn frozen_version_1_file_opens_verifies_and_searches() {
    if std::env::var_os("HASHSRV_WRITE_FIXTURE").is_some() {
        write_frozen_items(Path::new(FROZEN));
    }
    let index = CodeIndex::open(Path::new(FROZEN)).unwrap();
    index.verify().unwrap();
    assert_eq!((index.bits(), index.len()), (48, 13));
    assert_eq!(index.metadata(), &frozen_metadata());
    assert_eq!(index.path(5), "images/grüße.png");
    assert_eq!((index.id(12), index.labels()[12]), (2000, 7));
    assert_eq!(HashCode::from_words(48, index.codes().code(4)).unwrap().to_hex(), "f00000000000");
    let query = index.codes().code(0).to_vec();
    for method in [SearchMethod::Linear, SearchMethod::MultiIndex] {
        let hits = index.search(&query, &SearchOptions { k: 5, radius: None, method }).hits;
        let expected = [(0, 0), (1, 1), (2, 2), (3, 3), (12, 3)].map(|(position, distance)| Hit { position, distance });
        assert_eq!(hits, expected, "{method:?}");
    }
}

/// While version 1 is current, the writer must reproduce the frozen bytes exactly: a change here
/// is a format change and needs a version bump.
#[test]
fn writer_reproduces_the_frozen_file_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("again.hsidx");
    write_frozen_items(&path);
    assert!(std::fs::read(&path).unwrap() == std::fs::read(FROZEN).unwrap());
}

fn sample_bytes() -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.hsidx");
    write_frozen_items(&path);
    std::fs::read(path).unwrap()
}

fn header_of(bytes: &[u8]) -> Header {
    Header::read_from_prefix(bytes).unwrap().0
}

/// Writes `header` back with a fresh checksum, as a buggy or hostile writer would.
fn with_header(bytes: &[u8], edit: impl FnOnce(&mut Header)) -> Vec<u8> {
    let mut header = header_of(bytes);
    edit(&mut header);
    let crc = crc32fast::hash(&header.as_bytes()[..HEADER_LEN - 4]);
    header.header_crc32 = crc.into();
    let mut out = bytes.to_vec();
    out[..HEADER_LEN].copy_from_slice(header.as_bytes());
    out
}

fn section_start(bytes: &[u8], s: Section) -> usize {
    header_of(bytes).sections[s as usize].offset.get() as usize
}

#[test]
fn every_corruption_is_refused_with_its_error() {
    let good = sample_bytes();
    let open = |b: &[u8]| CodeIndex::from_bytes(b).map(|_| ());
    assert!(open(&good).is_ok());

    assert!(matches!(open(&[]), Err(IndexError::NotAnIndex { .. })));
    assert!(matches!(open(b"\x89PNG\r\n\x1a\n rest"), Err(IndexError::NotAnIndex { .. })));
    assert!(matches!(open(&good[..100]), Err(IndexError::Truncated { needed: 256, len: 100 })));
    assert!(matches!(open(&good[..good.len() - 1]), Err(IndexError::Truncated { .. })));

    let mut flipped = good.clone();
    flipped[33] ^= 1; // count
    assert!(matches!(open(&flipped), Err(IndexError::HeaderChecksum { .. })));

    let swapped = with_header(&good, |h| h.endian = 0x0102_0304u32.swap_bytes().into());
    assert!(matches!(open(&swapped), Err(IndexError::WrongEndian)));
    let old = with_header(&good, |h| h.format_version = 0.into());
    assert!(matches!(open(&old), Err(IndexError::UnsupportedVersion { found: 0, oldest: 1, newest: 1 })));
    let future = with_header(&good, |h| {
        h.format_version = 3.into();
        h.min_reader_version = 2.into();
    });
    assert!(matches!(open(&future), Err(IndexError::NeedsNewerReader { found: 3, min_reader: 2, newest: 1 })));
    // A newer file that an old reader may still read (it only added things we can ignore).
    let compatible = with_header(&good, |h| h.format_version = 2.into());
    assert!(open(&compatible).is_ok());

    let corrupt = |edit: &dyn Fn(&mut Header)| match open(&with_header(&good, edit)) {
        Err(IndexError::Corrupt { what }) => what,
        other => panic!("expected Corrupt, got {other:?}"),
    };
    assert!(corrupt(&|h| h.bits = 4.into()).contains("bits"));
    assert!(corrupt(&|h| h.words_per_code = 2.into()).contains("words per code"));
    assert!(corrupt(&|h| h.flags = 1.into()).contains("flags"));
    assert!(corrupt(&|h| h.count = 14.into()).contains("items need"));
    assert!(corrupt(&|h| h.count = u64::MAX.into()).contains("items need"));
    assert!(corrupt(&|h| h.sections[1].offset = (h.sections[1].offset.get() + 8).into()).contains("starts at"));
    assert!(corrupt(&|h| h.sections[0].offset = 0.into()).contains("starts at"));
    assert!(corrupt(&|h| h.sections[2].len = 8.into()).contains("label_offsets"));
    let past_end = with_header(&good, |h| h.sections[6].offset = (1u64 << 40).into());
    assert!(matches!(open(&past_end), Err(IndexError::Truncated { .. })));
    let overflow = with_header(&good, |h| h.sections[5].offset = (u64::MAX - 63).into());
    assert!(matches!(open(&overflow), Err(IndexError::Corrupt { .. })));

    let paths = section_start(&good, Section::PathBytes);
    let mut bad_utf8 = good.clone();
    bad_utf8[paths] = 0xff;
    assert!(matches!(open(&bad_utf8), Err(IndexError::Corrupt { .. })));
    let offsets = section_start(&good, Section::PathOffsets);
    let mut unordered = good.clone();
    unordered[offsets + 8] = 200;
    assert!(matches!(open(&unordered), Err(IndexError::Corrupt { .. })));
    let mut split_char = good.clone();
    // Item 5's path "images/grüße.png" starts after items 0..5 ("images/i.png", 12 bytes each):
    // ending item 5 one byte into "ü" splits the character.
    let mid_char = (5 * 12 + "images/gr".len() + 1) as u64;
    split_char[offsets + 6 * 8..offsets + 7 * 8].copy_from_slice(&mid_char.to_le_bytes());
    assert!(matches!(open(&split_char), Err(IndexError::Corrupt { .. })));
    let meta = section_start(&good, Section::Metadata);
    let mut bad_json = good.clone();
    bad_json[meta] = b'[';
    assert!(matches!(open(&bad_json), Err(IndexError::Metadata(_))));
}

#[test]
fn verify_finds_damaged_sections_and_set_padding() {
    let good = sample_bytes();
    CodeIndex::from_bytes(&good).unwrap().verify().unwrap();
    for (section, name) in [(Section::Codes, "codes"), (Section::Labels, "labels"), (Section::Ids, "ids")] {
        let mut bytes = good.clone();
        bytes[section_start(&good, section) + 1] ^= 0x10;
        let index = CodeIndex::from_bytes(&bytes).expect("open does not read section bodies");
        match index.verify() {
            Err(IndexError::SectionChecksum { section, .. }) => assert_eq!(section, name),
            other => panic!("expected a {name} checksum error, got {other:?}"),
        }
    }
    // Padding set, checksum updated to match: the CRC passes, the padding check does not.
    let codes = section_start(&good, Section::Codes);
    let mut bytes = good.clone();
    bytes[codes] |= 1; // lowest bit of item 0's word: past bit 48
    let crc = crc32fast::hash(&bytes[codes..codes + 13 * 8]);
    let bytes = with_header(&bytes, |h| h.sections[0].crc32 = crc.into());
    let err = CodeIndex::from_bytes(&bytes).unwrap().verify().unwrap_err();
    assert!(err.to_string().contains("padding bits of item 0"), "{err}");
    assert!(err.to_string().contains("hashsrv build-index"), "{err}");
}

#[test]
fn writer_round_trips_every_field_and_length() {
    let dir = tempfile::tempdir().unwrap();
    for bits in [8u32, 12, 64, 65, 200, 1024] {
        let path = dir.path().join(format!("{bits}.hsidx"));
        let words = common::codes(u64::from(bits), bits, 37, false);
        let index = common::write_index(&path, bits, &words);
        index.verify().unwrap();
        assert_eq!((index.bits(), index.len()), (bits, 37));
        assert_eq!(index.codes().words(), &words[..]);
        for i in 0..37 {
            assert_eq!(
                (index.labels()[i], index.id(i), index.path(i)),
                ((i % 5) as u32, 1000 + i as u64, &*format!("item/{i}"))
            );
        }
        assert_eq!(index.class_counts().values().sum::<usize>(), 37);
        assert_eq!(index.class_counts()[&0], 8);
    }
}

#[test]
fn empty_index_opens_and_finds_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let index = common::write_index(&dir.path().join("e.hsidx"), 64, &[]);
    index.verify().unwrap();
    assert!(index.is_empty());
    assert!(index.search(&[0], &SearchOptions::default()).hits.is_empty());
    assert!(index.bit_balance().is_empty());
}

#[test]
fn push_refuses_wrong_lengths_and_set_padding() {
    let dir = tempfile::tempdir().unwrap();
    let mut writer = IndexWriter::create(&dir.path().join("w.hsidx"), 48, IndexMetadata::default()).unwrap();
    assert!(matches!(writer.push(&[0, 0], 0, 0, ""), Err(IndexError::WrongCodeLength { expected: 1, found: 2, .. })));
    assert!(matches!(writer.push(&[1], 0, 0, ""), Err(IndexError::NonZeroPadding { bits: 48, item: 0 })));
    writer.push(&[1 << 16], 0, 0, "").unwrap();
    assert_eq!(writer.len(), 1);
    assert!(matches!(
        IndexWriter::create(&dir.path().join("x"), 4, IndexMetadata::default()),
        Err(IndexError::Code(_))
    ));
}

#[test]
fn target_is_untouched_until_finish_and_temp_files_are_cleaned_up() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("live.hsidx");
    std::fs::write(&target, b"previous index").unwrap();
    let listing = || {
        let mut names: Vec<String> =
            std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        names.sort();
        names
    };
    {
        let mut writer = IndexWriter::create(&target, 64, IndexMetadata::default()).unwrap();
        writer.push(&[42], 1, 2, "a").unwrap();
        assert_eq!(listing().len(), 2, "the temporary file sits beside the target");
        assert_eq!(std::fs::read(&target).unwrap(), b"previous index");
    } // dropped without finish
    assert_eq!(listing(), ["live.hsidx"]);
    assert_eq!(std::fs::read(&target).unwrap(), b"previous index");

    let mut writer = IndexWriter::create(&target, 64, IndexMetadata::default()).unwrap();
    writer.push(&[42], 1, 2, "a").unwrap();
    writer.finish().unwrap();
    assert_eq!(listing(), ["live.hsidx"]);
    assert_eq!(CodeIndex::open(&target).unwrap().codes().words(), &[42]);

    let missing = dir.path().join("no/such/dir/x.hsidx");
    let err = IndexWriter::create(&missing, 64, IndexMetadata::default()).unwrap_err();
    assert!(matches!(err, IndexError::Io { .. }) && err.to_string().contains("no/such/dir"), "{err}");
    let err = CodeIndex::open(&missing).unwrap_err();
    assert!(matches!(err, IndexError::Io { .. }));
}

#[test]
fn open_of_short_and_foreign_files_names_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f");
    std::fs::write(&path, b"").unwrap();
    assert!(matches!(CodeIndex::open(&path), Err(IndexError::NotAnIndex { .. })));
    std::fs::write(&path, b"HSIDX\0\r\n tail").unwrap();
    assert!(matches!(CodeIndex::open(&path), Err(IndexError::Truncated { .. })));
    std::fs::write(&path, vec![b'x'; 4096]).unwrap();
    let err = CodeIndex::open(&path).unwrap_err();
    assert!(err.to_string().contains("not a hashsrv index"), "{err}");
}

#[test]
fn bit_balance_counts_ones_per_bit() {
    let index = CodeIndex::open(Path::new(FROZEN)).unwrap();
    let balance = index.bit_balance();
    assert_eq!(balance.len(), 48);
    // Bit b is set in items b+1..12 and in item 12 (a copy of item 3) when b < 3.
    for (b, &f) in balance.iter().enumerate() {
        let ones = (b + 1..12).len() + usize::from(b < 3);
        assert!((f - ones as f64 / 13.0).abs() < 1e-12, "bit {b}: {f}");
    }
    let occupancy = index.bucket_occupancy();
    assert!(!occupancy.is_empty());
    assert_eq!(occupancy.iter().map(|o| o.bits).sum::<u32>(), 48);
    assert!(occupancy.iter().all(|o| o.max >= 1 && o.nonempty >= 1 && o.mean_nonempty >= 1.0));
}
