//! `.npy` reading and writing against files written by the real numpy
//! (scripts/make_npy_fixtures.py, numpy's own answers in tests/data/npy/expected.json).

use std::path::PathBuf;

use hashsrv_index::code::{CodeError, CodeMatrix, HashCode, last_word_mask, words_for_bits};
use hashsrv_index::npy::{
    NpyError, encode_labels, encode_packed_codes, parse_codes, parse_labels, read_codes, read_labels, write_labels,
    write_packed_codes,
};
use proptest::prelude::*;
use proptest::test_runner::RngSeed;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/npy").join(name)
}

fn bytes(name: &str) -> Vec<u8> {
    std::fs::read(fixture(name)).unwrap()
}

fn expected() -> serde_json::Value {
    serde_json::from_slice(&bytes("expected.json")).unwrap()
}

fn hexes(matrix: CodeMatrix<'_>) -> Vec<String> {
    (0..matrix.len()).map(|i| HashCode::from_words(matrix.bits(), matrix.code(i)).unwrap().to_hex()).collect()
}

#[test]
fn every_numpy_code_file_decodes_to_numpys_packbits() {
    let expected = expected();
    let cases = expected["codes"].as_object().unwrap();
    assert!(cases.len() >= 10);
    for (name, case) in cases {
        let packed_bits = case["packed_bits"].as_u64().map(|b| b as u32);
        let codes = read_codes(&fixture(name), packed_bits).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(u64::from(codes.bits()), case["bits"].as_u64().unwrap(), "{name}");
        let want: Vec<String> = case["hex"].as_array().unwrap().iter().map(|h| h.as_str().unwrap().into()).collect();
        assert_eq!(hexes(codes.matrix()), want, "{name}");
        assert_eq!(codes.len(), want.len());
    }
}

#[test]
fn every_numpy_label_file_decodes() {
    let expected = expected();
    for (name, want) in expected["labels"].as_object().unwrap() {
        let want: Vec<u32> = want.as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        assert_eq!(read_labels(&fixture(name)).unwrap_or_else(|e| panic!("{name}: {e}")), want, "{name}");
    }
}

#[test]
fn written_files_are_byte_identical_to_numpys() {
    for (name, bits) in [("codes_packed_12.npy", 12), ("codes_packed_64.npy", 64)] {
        let codes = read_codes(&fixture(name), Some(bits)).unwrap();
        assert_eq!(encode_packed_codes(codes.matrix()), bytes(name), "{name}");
    }
    let labels = read_labels(&fixture("labels_i64.npy")).unwrap();
    assert_eq!(encode_labels(&labels), bytes("labels_i64.npy"));
    // The same codes as 0/1 columns and as packed rows are one matrix.
    let unpacked = read_codes(&fixture("codes_u8_01.npy"), None).unwrap();
    assert_eq!(unpacked, read_codes(&fixture("codes_packed_12.npy"), Some(12)).unwrap());
}

#[test]
fn files_round_trip_through_disk() {
    let dir = tempfile::tempdir().unwrap();
    let codes = read_codes(&fixture("codes_f64_raw.npy"), None).unwrap();
    let path = dir.path().join("codes.npy");
    write_packed_codes(&path, codes.matrix()).unwrap();
    assert_eq!(read_codes(&path, Some(codes.bits())).unwrap(), codes);
    let labels = vec![0, 7, u32::MAX, 3];
    write_labels(&dir.path().join("labels.npy"), &labels).unwrap();
    assert_eq!(read_labels(&dir.path().join("labels.npy")).unwrap(), labels);
    let missing = read_labels(&dir.path().join("missing.npy")).unwrap_err();
    assert!(matches!(missing, NpyError::Io { action: "read", .. }), "{missing}");
    assert!(missing.to_string().contains("missing.npy"));
}

#[test]
fn bad_code_files_are_refused_with_clear_errors() {
    let err = |name: &str, bits| read_codes(&fixture(name), bits).unwrap_err();
    assert!(matches!(err("bad_fortran.npy", None), NpyError::FortranOrder));
    assert!(matches!(err("bad_big_endian.npy", None), NpyError::BigEndian(d) if d == ">f4"));
    assert!(matches!(err("bad_3d.npy", None), NpyError::WrongShape { what: "codes", .. }));
    assert!(matches!(err("bad_complex.npy", None), NpyError::UnsupportedDtype { .. }));
    let e = err("bad_u8_not_binary.npy", None);
    assert!(matches!(e, NpyError::NotBinary { row: 0, column: 2, value: 2 }), "{e}");
    assert!(e.to_string().contains("packed"), "the message should point at packed rows: {e}");
    // Packed rows read as one column per bit: 2 columns is not a supported code length.
    assert!(matches!(err("codes_packed_12.npy", None), NpyError::NotBinary { .. }));
    // Packed rows with the wrong bit count, and float data said to be packed.
    assert!(matches!(err("codes_packed_12.npy", Some(8)), NpyError::WrongShape { what: "packed codes", .. }));
    assert!(matches!(err("codes_f32_pm1.npy", Some(16)), NpyError::UnsupportedDtype { .. }));
    assert!(matches!(
        err("codes_packed_12.npy", Some(4)),
        NpyError::Code { source: CodeError::UnsupportedBits { .. }, .. }
    ));
    // A 4-column matrix is a 4-bit code: below the supported minimum.
    let narrow = encode_packed_codes(CodeMatrix::new(32, &[0, 0])); // shape [2, 4] uint8 zeros
    assert!(matches!(
        parse_codes(&narrow, None),
        Err(NpyError::Code { source: CodeError::UnsupportedBits { .. }, .. })
    ));
}

#[test]
fn packed_padding_bits_must_be_zero() {
    let mut data = bytes("codes_packed_12.npy");
    let last = data.len() - 1; // second byte of the last row: its low nibble is padding
    data[last] |= 0x01;
    assert!(matches!(
        parse_codes(&data, Some(12)),
        Err(NpyError::Code { row: 3, source: CodeError::NonZeroPadding { bits: 12 } })
    ));
}

#[test]
fn bad_label_files_are_refused_with_clear_errors() {
    let err = |name: &str| read_labels(&fixture(name)).unwrap_err();
    assert!(matches!(err("bad_labels_multihot.npy"), NpyError::MultiHot { row: 1 }));
    assert!(matches!(err("bad_labels_negative.npy"), NpyError::BadLabel { index: 1, .. }));
    assert!(matches!(err("bad_labels_fraction.npy"), NpyError::BadLabel { index: 1, .. }));
    assert!(matches!(err("bad_labels_no_label.npy"), NpyError::NoLabel { row: 1 }));
    assert!(matches!(err("bad_3d.npy"), NpyError::WrongShape { what: "labels", .. }));
    assert!(matches!(err("codes_f32_pm1.npy"), NpyError::NotOneHot { row: 0, .. }));
}

#[test]
fn damaged_files_are_errors_not_panics() {
    let good = bytes("labels_i64.npy");
    assert!(matches!(parse_labels(b"PK\x03\x04 a zip, maybe an .npz"), Err(NpyError::NotNpy)));
    let mut version = good.clone();
    version[6] = 4;
    assert!(matches!(parse_labels(&version), Err(NpyError::UnsupportedVersion(4, 0))));
    assert!(matches!(parse_labels(&good[..good.len() - 3]), Err(NpyError::DataLength { .. })));
    let mut long = good.clone();
    long.push(0);
    assert!(matches!(parse_labels(&long), Err(NpyError::DataLength { .. })));
    for cut in 0..good.len() {
        assert!(parse_labels(&good[..cut]).is_err(), "cut at {cut}");
    }
    let mut huge_header = good.clone();
    huge_header[8..10].copy_from_slice(&u16::MAX.to_le_bytes());
    assert!(matches!(parse_labels(&huge_header), Err(NpyError::BadHeader(_))));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, rng_seed: RngSeed::Fixed(0x0e9e_2026), ..ProptestConfig::default() })]

    #[test]
    fn packed_codes_round_trip(bits in 8u32..300, seed_words in prop::collection::vec(any::<u64>(), 0..40)) {
        let w = words_for_bits(bits);
        let mut words: Vec<u64> = seed_words.iter().copied().take(seed_words.len() / w * w).collect();
        for code in words.chunks_exact_mut(w) {
            code[w - 1] &= last_word_mask(bits);
        }
        let matrix = CodeMatrix::new(bits, &words);
        let back = parse_codes(&encode_packed_codes(matrix), Some(bits)).unwrap();
        prop_assert_eq!(back.bits(), bits);
        prop_assert_eq!(back.into_words(), words);
    }

    #[test]
    fn labels_round_trip(labels in prop::collection::vec(any::<u32>(), 0..200)) {
        prop_assert_eq!(parse_labels(&encode_labels(&labels)).unwrap(), labels);
    }
}
