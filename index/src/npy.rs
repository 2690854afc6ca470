//! `.npy` files of hash codes and labels: how codes made elsewhere (PyTorch, DeepHash-pytorch,
//! FAISS users) come in, and how ours go out to numpy.
//!
//! Reads format versions 1, 2 and 3, little-endian, C order. Codes are a 2-D array `[n, bits]` of
//! float32/float64 (±1 or raw network outputs), int8/int16/…/uint8/bool (0/1 or ±1), where bit `i`
//! is set iff the value is `> 0` (the [`HashCode::from_outputs`] rule), or packed uint8 rows
//! `[n, ceil(bits / 8)]` (`numpy.packbits`, the [`HashCode::from_packed`] layout) when the caller
//! says how many bits they hold. Labels are a 1-D integer array, or a one-hot 2-D array turned
//! into one label per row; multi-hot rows are refused for now. Writes packed uint8 codes and
//! int64 labels with numpy's exact header, so `numpy.load` reads them back.

use std::path::{Path, PathBuf};

use crate::code::{CodeError, CodeMatrix, HashCode, bytes_for_bits, check_bits};

/// Errors from reading or writing `.npy` files.
#[derive(Debug, thiserror::Error)]
pub enum NpyError {
    #[error("cannot {action} {path}: {source}")]
    Io { action: &'static str, path: PathBuf, source: std::io::Error },
    #[error("not a .npy file (no \\x93NUMPY magic): save it with numpy.save")]
    NotNpy,
    #[error(".npy format version {0}.{1} is not supported (1.0, 2.0 and 3.0 are)")]
    UnsupportedVersion(u8, u8),
    #[error("malformed .npy header: {0}")]
    BadHeader(String),
    #[error("array is in Fortran order: save numpy.ascontiguousarray(a) instead")]
    FortranOrder,
    #[error("dtype {0:?} is big-endian: save a.astype(a.dtype.newbyteorder('<')) instead")]
    BigEndian(String),
    #[error("dtype {descr:?} is not supported for {what}: use {supported}")]
    UnsupportedDtype { descr: String, what: &'static str, supported: &'static str },
    #[error("{what} must have shape {expected}, found {shape:?}")]
    WrongShape { what: &'static str, expected: String, shape: Vec<usize> },
    #[error("header promises {expected} data bytes, the file holds {found}")]
    DataLength { expected: usize, found: usize },
    #[error(
        "code matrix row {row}, column {column} holds {value}: integer codes must be 0/1 or -1/+1; \
         packed numpy.packbits rows need the number of bits"
    )]
    NotBinary { row: usize, column: usize, value: i128 },
    #[error("code row {row}: {source}")]
    Code { row: usize, source: CodeError },
    #[error("label {index} is {value}: labels must be whole numbers in 0..=4294967295")]
    BadLabel { index: usize, value: String },
    #[error("one-hot label row {row} has no label set")]
    NoLabel { row: usize },
    #[error("label row {row} has several labels set: multi-label data sets are not supported yet")]
    MultiHot { row: usize },
    #[error("one-hot label row {row} holds {value}: one-hot rows must be 0/1")]
    NotOneHot { row: usize, value: String },
}

/// Codes read from a `.npy` file, in the crate's word layout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NpyCodes {
    bits: u32,
    words: Vec<u64>,
}

impl NpyCodes {
    /// Code length in bits.
    pub fn bits(&self) -> u32 {
        self.bits
    }
    /// Number of codes.
    pub fn len(&self) -> usize {
        self.matrix().len()
    }
    /// Whether the file held no codes.
    pub fn is_empty(&self) -> bool {
        self.words.is_empty()
    }
    /// The codes as a matrix.
    pub fn matrix(&self) -> CodeMatrix<'_> {
        CodeMatrix::new(self.bits, &self.words)
    }
    /// The words, code after code.
    pub fn into_words(self) -> Vec<u64> {
        self.words
    }
}

/// Reads codes from `path`; `packed_bits` says the file holds `numpy.packbits` rows of that many
/// bits, `None` that it holds one column per bit.
pub fn read_codes(path: &Path, packed_bits: Option<u32>) -> Result<NpyCodes, NpyError> {
    parse_codes(&read(path)?, packed_bits)
}

/// Reads labels from `path`.
pub fn read_labels(path: &Path) -> Result<Vec<u32>, NpyError> {
    parse_labels(&read(path)?)
}

/// Writes codes as packed uint8 rows `[n, ceil(bits / 8)]` (`numpy.packbits` layout).
pub fn write_packed_codes(path: &Path, codes: CodeMatrix<'_>) -> Result<(), NpyError> {
    write(path, &encode_packed_codes(codes))
}

/// Writes labels as an int64 vector.
pub fn write_labels(path: &Path, labels: &[u32]) -> Result<(), NpyError> {
    write(path, &encode_labels(labels))
}

/// Codes from the bytes of a `.npy` file (see [`read_codes`]).
pub fn parse_codes(bytes: &[u8], packed_bits: Option<u32>) -> Result<NpyCodes, NpyError> {
    let array = Array::parse(bytes)?;
    let &[n, width] = array.shape.as_slice() else {
        let expected = if packed_bits.is_some() { "[n, bits / 8]" } else { "[n, bits]" };
        return Err(NpyError::WrongShape { what: "codes", expected: expected.into(), shape: array.shape });
    };
    let code_err = |row| move |source| NpyError::Code { row, source };
    if let Some(bits) = packed_bits {
        check_bits(bits).map_err(code_err(0))?;
        if array.dtype != Dtype::U1 {
            return Err(array.unsupported("packed codes", "uint8 (numpy.packbits output)"));
        }
        if width != bytes_for_bits(bits) {
            let expected = format!("[n, {}] for {bits}-bit packed codes", bytes_for_bits(bits));
            return Err(NpyError::WrongShape { what: "packed codes", expected, shape: array.shape });
        }
        let mut words = Vec::new();
        for (row, packed) in array.data.chunks_exact(width.max(1)).take(n).enumerate() {
            words.extend_from_slice(HashCode::from_packed(bits, packed).map_err(code_err(row))?.words());
        }
        return Ok(NpyCodes { bits, words });
    }
    // Integer matrices first: packed rows given without their bit count fail here, with a hint.
    if !array.dtype.is_float() && array.dtype != Dtype::B1 {
        for (i, value) in (0..n * width).map(|i| (i, array.integer(i))) {
            if !matches!(value, Some(-1..=1)) {
                let value = value.unwrap_or_default();
                return Err(NpyError::NotBinary { row: i / width, column: i % width, value });
            }
        }
    }
    let bits = u32::try_from(width).unwrap_or(u32::MAX);
    check_bits(bits).map_err(code_err(0))?;
    let mut words = Vec::with_capacity(n * crate::code::words_for_bits(bits));
    let mut outputs = vec![0f32; width];
    for row in 0..n {
        // Map to ±1 first so that every dtype goes through the one `> 0` rule of from_outputs.
        for (column, out) in outputs.iter_mut().enumerate() {
            *out = if array.positive(row * width + column) { 1.0 } else { -1.0 };
        }
        words.extend_from_slice(HashCode::from_outputs(&outputs).map_err(code_err(row))?.words());
    }
    Ok(NpyCodes { bits, words })
}

/// Labels from the bytes of a `.npy` file (see [`read_labels`]).
pub fn parse_labels(bytes: &[u8]) -> Result<Vec<u32>, NpyError> {
    let array = Array::parse(bytes)?;
    match *array.shape.as_slice() {
        [n] => (0..n)
            .map(|i| {
                array
                    .integer(i)
                    .and_then(|v| u32::try_from(v).ok())
                    .ok_or_else(|| NpyError::BadLabel { index: i, value: array.display(i) })
            })
            .collect(),
        [n, classes] => (0..n)
            .map(|row| {
                let mut label = None;
                for class in 0..classes {
                    let i = row * classes + class;
                    match array.integer(i) {
                        Some(0) => {}
                        Some(1) if label.is_none() => label = Some(class as u32),
                        Some(1) => return Err(NpyError::MultiHot { row }),
                        _ => return Err(NpyError::NotOneHot { row, value: array.display(i) }),
                    }
                }
                label.ok_or(NpyError::NoLabel { row })
            })
            .collect(),
        _ => Err(NpyError::WrongShape {
            what: "labels",
            expected: "[n] or one-hot [n, classes]".into(),
            shape: array.shape,
        }),
    }
}

/// The bytes of a `.npy` file of packed uint8 code rows.
pub fn encode_packed_codes(codes: CodeMatrix<'_>) -> Vec<u8> {
    let width = bytes_for_bits(codes.bits());
    let mut out = header("|u1", &[codes.len(), width]);
    for code in codes.words().chunks_exact(codes.words_per_code()) {
        let packed: Vec<u8> = code.iter().flat_map(|w| w.to_be_bytes()).take(width).collect();
        out.extend_from_slice(&packed);
    }
    out
}

/// The bytes of a `.npy` file of int64 labels.
pub fn encode_labels(labels: &[u32]) -> Vec<u8> {
    let mut out = header("<i8", &[labels.len()]);
    out.extend(labels.iter().flat_map(|&l| i64::from(l).to_le_bytes()));
    out
}

const MAGIC: &[u8; 6] = b"\x93NUMPY";
/// numpy aligns the data to 64 bytes.
const ALIGN: usize = 64;
/// numpy leaves room for the first axis to grow to this many digits.
const GROWTH_AXIS_MAX_DIGITS: usize = 21;
/// Larger headers are not written by numpy for plain arrays; refuse rather than allocate.
const MAX_HEADER: usize = 1 << 20;

/// A version 1.0 header exactly as `numpy.save` writes it.
fn header(descr: &str, shape: &[usize]) -> Vec<u8> {
    let dims = match shape {
        [n] => format!("({n},)"),
        _ => format!("({})", shape.iter().map(usize::to_string).collect::<Vec<_>>().join(", ")),
    };
    let mut dict = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {dims}, }}");
    let first = shape.first().map_or(0, |n| n.to_string().len());
    dict.push_str(&" ".repeat(GROWTH_AXIS_MAX_DIGITS.saturating_sub(first)));
    let len = dict.len() + 1;
    let pad = ALIGN - (MAGIC.len() + 4 + len) % ALIGN;
    let mut out = MAGIC.to_vec();
    out.extend_from_slice(&[1, 0]);
    out.extend_from_slice(&((len + pad) as u16).to_le_bytes());
    out.extend_from_slice(dict.as_bytes());
    out.extend(std::iter::repeat_n(b' ', pad));
    out.push(b'\n');
    out
}

fn read(path: &Path) -> Result<Vec<u8>, NpyError> {
    std::fs::read(path).map_err(|source| NpyError::Io { action: "read", path: path.into(), source })
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), NpyError> {
    std::fs::write(path, bytes).map_err(|source| NpyError::Io { action: "write", path: path.into(), source })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dtype {
    F4,
    F8,
    B1,
    I1,
    U1,
    I2,
    U2,
    I4,
    U4,
    I8,
    U8,
}

impl Dtype {
    /// From a little-endian or byte-order-free numpy `descr` without its byte-order character.
    fn from_code(code: &str) -> Option<Self> {
        Some(match code {
            "f4" => Dtype::F4,
            "f8" => Dtype::F8,
            "b1" => Dtype::B1,
            "i1" => Dtype::I1,
            "u1" => Dtype::U1,
            "i2" => Dtype::I2,
            "u2" => Dtype::U2,
            "i4" => Dtype::I4,
            "u4" => Dtype::U4,
            "i8" => Dtype::I8,
            "u8" => Dtype::U8,
            _ => return None,
        })
    }

    fn size(self) -> usize {
        match self {
            Dtype::B1 | Dtype::I1 | Dtype::U1 => 1,
            Dtype::I2 | Dtype::U2 => 2,
            Dtype::F4 | Dtype::I4 | Dtype::U4 => 4,
            Dtype::F8 | Dtype::I8 | Dtype::U8 => 8,
        }
    }

    fn is_float(self) -> bool {
        matches!(self, Dtype::F4 | Dtype::F8)
    }
}

/// A parsed `.npy` array borrowing the file's bytes.
#[derive(Debug)]
struct Array<'a> {
    descr: String,
    dtype: Dtype,
    shape: Vec<usize>,
    data: &'a [u8],
}

impl<'a> Array<'a> {
    fn parse(bytes: &'a [u8]) -> Result<Self, NpyError> {
        if bytes.len() < 10 || &bytes[..6] != MAGIC {
            return Err(NpyError::NotNpy);
        }
        let (major, minor) = (bytes[6], bytes[7]);
        let (len, start) = match (major, minor) {
            (1, 0) => (usize::from(u16::from_le_bytes([bytes[8], bytes[9]])), 10),
            (2 | 3, 0) if bytes.len() >= 12 => {
                (u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize, 12)
            }
            _ => return Err(NpyError::UnsupportedVersion(major, minor)),
        };
        if len > MAX_HEADER || bytes.len() < start + len {
            return Err(NpyError::BadHeader(format!("header of {len} bytes does not fit the file")));
        }
        // Versions 1 and 2 are latin-1, 3 is UTF-8; the keys and values we accept are ASCII.
        let text = std::str::from_utf8(&bytes[start..start + len])
            .map_err(|_| NpyError::BadHeader("header is not ASCII/UTF-8 text".into()))?;
        let header = Header::parse(text)?;
        if header.fortran_order && header.shape.len() > 1 {
            return Err(NpyError::FortranOrder);
        }
        let descr = header.descr;
        let dtype = match descr.split_at_checked(1) {
            Some(("<" | "|" | "=", code)) => Dtype::from_code(code),
            // Single-byte types have no byte order (numpy writes '|'), wider ones must be '<'.
            Some((">", code)) => match Dtype::from_code(code) {
                Some(d) if d.size() > 1 => return Err(NpyError::BigEndian(descr)),
                other => other,
            },
            _ => None,
        };
        let Some(dtype) = dtype else {
            return Err(NpyError::UnsupportedDtype {
                descr,
                what: "hash codes or labels",
                supported: "float32/64, bool, or (u)int8/16/32/64",
            });
        };
        let data = &bytes[start + len..];
        let expected = header
            .shape
            .iter()
            .try_fold(dtype.size(), |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| NpyError::BadHeader(format!("shape {:?} is too large", header.shape)))?;
        if data.len() != expected {
            return Err(NpyError::DataLength { expected, found: data.len() });
        }
        Ok(Self { descr, dtype, shape: header.shape, data })
    }

    fn unsupported(&self, what: &'static str, supported: &'static str) -> NpyError {
        NpyError::UnsupportedDtype { descr: self.descr.clone(), what, supported }
    }

    fn bytes<const N: usize>(&self, i: usize) -> [u8; N] {
        let mut out = [0u8; N];
        out.copy_from_slice(&self.data[i * N..(i + 1) * N]);
        out
    }

    fn float(&self, i: usize) -> f64 {
        match self.dtype {
            Dtype::F4 => f64::from(f32::from_le_bytes(self.bytes(i))),
            Dtype::F8 => f64::from_le_bytes(self.bytes(i)),
            _ => self.integer(i).map_or(f64::NAN, |v| v as f64),
        }
    }

    /// Element `i` as an integer; floats only when they hold a whole number.
    fn integer(&self, i: usize) -> Option<i128> {
        Some(match self.dtype {
            Dtype::B1 | Dtype::U1 => i128::from(self.data[i]),
            Dtype::I1 => i128::from(self.data[i] as i8),
            Dtype::I2 => i128::from(i16::from_le_bytes(self.bytes(i))),
            Dtype::U2 => i128::from(u16::from_le_bytes(self.bytes(i))),
            Dtype::I4 => i128::from(i32::from_le_bytes(self.bytes(i))),
            Dtype::U4 => i128::from(u32::from_le_bytes(self.bytes(i))),
            Dtype::I8 => i128::from(i64::from_le_bytes(self.bytes(i))),
            Dtype::U8 => i128::from(u64::from_le_bytes(self.bytes(i))),
            Dtype::F4 | Dtype::F8 => {
                let x = self.float(i);
                if x.fract() != 0.0 || x.abs() > 1e30 || x.is_nan() {
                    return None;
                }
                x as i128
            }
        })
    }

    /// Whether element `i` is `> 0` (NaN is not).
    fn positive(&self, i: usize) -> bool {
        if self.dtype.is_float() { self.float(i) > 0.0 } else { self.integer(i).is_some_and(|v| v > 0) }
    }

    fn display(&self, i: usize) -> String {
        match self.integer(i) {
            Some(v) if !self.dtype.is_float() => v.to_string(),
            _ => self.float(i).to_string(),
        }
    }
}

/// The header dictionary: `{'descr': '<f4', 'fortran_order': False, 'shape': (3, 64), }`.
#[derive(Debug)]
struct Header {
    descr: String,
    fortran_order: bool,
    shape: Vec<usize>,
}

impl Header {
    fn parse(text: &str) -> Result<Self, NpyError> {
        let bad = |why: &str| NpyError::BadHeader(format!("{why} in {:?}", text.trim_end()));
        let mut rest = text.trim().strip_prefix('{').ok_or_else(|| bad("no '{'"))?.trim_start();
        let (mut descr, mut fortran, mut shape) = (None, None, None);
        while !rest.starts_with('}') {
            let (key, after) = quoted(rest).ok_or_else(|| bad("expected a quoted key"))?;
            rest = after.trim_start().strip_prefix(':').ok_or_else(|| bad("expected ':'"))?.trim_start();
            match key {
                "descr" => {
                    let (value, after) = quoted(rest).ok_or_else(|| bad("descr is not a plain dtype string"))?;
                    descr = Some(value.to_owned());
                    rest = after;
                }
                "fortran_order" => {
                    let (value, after) = if let Some(a) = rest.strip_prefix("True") {
                        (true, a)
                    } else if let Some(a) = rest.strip_prefix("False") {
                        (false, a)
                    } else {
                        return Err(bad("fortran_order is not True/False"));
                    };
                    fortran = Some(value);
                    rest = after;
                }
                "shape" => {
                    let inner = rest.strip_prefix('(').ok_or_else(|| bad("shape is not a tuple"))?;
                    let close = inner.find(')').ok_or_else(|| bad("unclosed shape tuple"))?;
                    let dims = inner[..close]
                        .split(',')
                        .map(str::trim)
                        .filter(|d| !d.is_empty())
                        .map(|d| d.trim_end_matches('L').parse::<usize>())
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(|_| bad("shape holds a non-integer"))?;
                    shape = Some(dims);
                    rest = &inner[close + 1..];
                }
                _ => return Err(bad(&format!("unknown key {key:?}"))),
            }
            rest = rest.trim_start();
            rest = rest.strip_prefix(',').unwrap_or(rest).trim_start();
            if rest.is_empty() {
                return Err(bad("no closing '}'"));
            }
        }
        match (descr, fortran, shape) {
            (Some(descr), Some(fortran_order), Some(shape)) => Ok(Header { descr, fortran_order, shape }),
            _ => Err(bad("descr, fortran_order or shape missing")),
        }
    }
}

/// A single-quoted (or double-quoted) Python string without escapes, and what follows it.
fn quoted(text: &str) -> Option<(&str, &str)> {
    let quote = text.chars().next().filter(|c| *c == '\'' || *c == '"')?;
    let body = &text[1..];
    let end = body.find(quote)?;
    Some((&body[..end], &body[end + 1..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_parser_accepts_numpy_variants_and_rejects_structured_dtypes() {
        let h = Header::parse("{'descr': '<f4', 'fortran_order': False, 'shape': (3, 64), }   \n").unwrap();
        assert_eq!((h.descr.as_str(), h.fortran_order, h.shape.as_slice()), ("<f4", false, &[3usize, 64][..]));
        let h = Header::parse("{\"shape\": (5,), \"descr\": \"|u1\", \"fortran_order\": True}").unwrap();
        assert_eq!(h.shape, vec![5]);
        assert!(h.fortran_order);
        assert_eq!(
            Header::parse("{'descr': '<i8', 'fortran_order': False, 'shape': (), }").unwrap().shape,
            Vec::<usize>::new()
        );
        assert!(Header::parse("{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (2,), }").is_err());
        assert!(Header::parse("{'descr': '<f4', 'fortran_order': False, 'shape': (2,").is_err());
        assert!(Header::parse("{'descr': '<f4', 'shape': (2,), }").is_err());
    }
}
