//! A small reader of MATLAB level-5 MAT-files (the format of Stanford Dogs' lists), enough for
//! numeric arrays, char arrays and cell arrays of them, which `matfile` cannot read.
//!
//! Format (MathWorks, "MAT-File Format", level 5): a 128-byte header (text, subsystem offset,
//! version 0x0100, endian indicator `IM`/`MI`), then data elements. Each element has an 8-byte
//! tag (type, byte count) or the 4-byte "small data element" form (byte count in the upper 16
//! bits of the first word, data in the next 4 bytes), and is padded to 8 bytes. A top-level
//! element is either `miMATRIX` (a variable) or `miCOMPRESSED` (zlib around one `miMATRIX`).
//! `miMATRIX` holds array flags (class), dimensions, name, then by class: the real (and
//! imaginary) parts of numeric arrays in any numeric storage type (MATLAB stores doubles as
//! `miUINT8` when they fit), characters as UTF-8/UTF-16/UTF-32 or their integer aliases, or
//! one `miMATRIX` per cell in column-major order. Other classes (struct, object, sparse,
//! function handles) are kept as [`MatValue::Unsupported`] and skipped by their byte count.
//!
//! The reader never panics on hostile input: every length is checked against the bytes left,
//! nesting depth and decompressed sizes are bounded.

use std::io::Read;

/// What can be wrong with a MAT-file.
#[derive(Debug, thiserror::Error)]
pub enum MatError {
    #[error("not a MAT v5 file: {0}")]
    NotMat(String),
    #[error("unsupported MAT-file: {0}")]
    Unsupported(String),
    #[error("truncated at byte {offset}{}: needs {needed} more byte(s), {available} left", context_suffix(.context))]
    Truncated { offset: usize, needed: usize, available: usize, context: Option<String> },
    #[error("malformed at byte {offset}{}: {message}", context_suffix(.context))]
    Malformed { offset: usize, message: String, context: Option<String> },
    #[error("corrupt compressed element at byte {offset}: {message}")]
    Decompress { offset: usize, message: String },
}

fn context_suffix(context: &Option<String>) -> String {
    context.as_ref().map(|c| format!(" ({c})")).unwrap_or_default()
}

/// MATLAB array classes (`mxCLASS`) we read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NumericClass {
    Double,
    Single,
    Int8,
    UInt8,
    Int16,
    UInt16,
    Int32,
    UInt32,
    Int64,
    UInt64,
}

impl NumericClass {
    fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            6 => NumericClass::Double,
            7 => NumericClass::Single,
            8 => NumericClass::Int8,
            9 => NumericClass::UInt8,
            10 => NumericClass::Int16,
            11 => NumericClass::UInt16,
            12 => NumericClass::Int32,
            13 => NumericClass::UInt32,
            14 => NumericClass::Int64,
            15 => NumericClass::UInt64,
            _ => return None,
        })
    }
}

const MX_CELL: u8 = 1;
const MX_CHAR: u8 = 4;

const MI_INT8: u32 = 1;
const MI_UINT8: u32 = 2;
const MI_INT16: u32 = 3;
const MI_UINT16: u32 = 4;
const MI_INT32: u32 = 5;
const MI_UINT32: u32 = 6;
const MI_SINGLE: u32 = 7;
const MI_DOUBLE: u32 = 9;
const MI_INT64: u32 = 12;
const MI_UINT64: u32 = 13;
const MI_MATRIX: u32 = 14;
const MI_COMPRESSED: u32 = 15;
const MI_UTF8: u32 = 16;
const MI_UTF16: u32 = 17;
const MI_UTF32: u32 = 18;

/// Deeper nesting than any real file; bounds recursion on hostile input.
const MAX_DEPTH: usize = 32;
/// Largest decompressed variable accepted.
const MAX_DECOMPRESSED: u64 = 256 << 20;

/// The value of a variable or of a cell.
#[derive(Clone, Debug, PartialEq)]
pub enum MatValue {
    /// A numeric array, converted to `f64`, column-major.
    Numeric { class: NumericClass, dims: Vec<usize>, real: Vec<f64>, imag: Option<Vec<f64>> },
    /// A char array, column-major.
    Char { dims: Vec<usize>, chars: Vec<char> },
    /// A cell array, column-major.
    Cell { dims: Vec<usize>, cells: Vec<MatValue> },
    /// An empty `miMATRIX` element (no flags, no data), as MATLAB writes for some empty arrays.
    Empty,
    /// A class this reader does not decode (struct, object, sparse, ...), with its `mxCLASS` code.
    Unsupported { class: u8, dims: Vec<usize> },
}

impl MatValue {
    pub fn dims(&self) -> &[usize] {
        match self {
            MatValue::Numeric { dims, .. }
            | MatValue::Char { dims, .. }
            | MatValue::Cell { dims, .. }
            | MatValue::Unsupported { dims, .. } => dims,
            MatValue::Empty => &[],
        }
    }

    /// The real values of a numeric array.
    pub fn as_f64s(&self) -> Option<&[f64]> {
        match self {
            MatValue::Numeric { real, .. } => Some(real),
            _ => None,
        }
    }

    /// The text of a char array with at most one row (`1 x n` or `0 x 0`).
    pub fn as_string(&self) -> Option<String> {
        match self {
            MatValue::Char { dims, chars } if dims.first().is_none_or(|&rows| rows <= 1) => {
                Some(chars.iter().collect())
            }
            MatValue::Empty => Some(String::new()),
            _ => None,
        }
    }

    pub fn as_cells(&self) -> Option<&[MatValue]> {
        match self {
            MatValue::Cell { cells, .. } => Some(cells),
            _ => None,
        }
    }

    /// A short description for error messages ("cell 12000x1", "double 1x5").
    pub fn describe(&self) -> String {
        let dims = self.dims().iter().map(|d| d.to_string()).collect::<Vec<_>>().join("x");
        match self {
            MatValue::Numeric { class, .. } => format!("{class:?} {dims}").to_lowercase(),
            MatValue::Char { .. } => format!("char {dims}"),
            MatValue::Cell { .. } => format!("cell {dims}"),
            MatValue::Empty => "empty".into(),
            MatValue::Unsupported { class, .. } => format!("unsupported class {class} {dims}"),
        }
    }
}

/// A named variable.
#[derive(Clone, Debug, PartialEq)]
pub struct MatVariable {
    pub name: String,
    pub value: MatValue,
}

/// A parsed MAT-file.
#[derive(Clone, Debug, PartialEq)]
pub struct MatFile {
    /// The descriptive text of the header (e.g. "MATLAB 5.0 MAT-file, Platform: ...").
    pub header_text: String,
    pub variables: Vec<MatVariable>,
}

impl MatFile {
    /// The variable with this name.
    pub fn get(&self, name: &str) -> Option<&MatValue> {
        self.variables.iter().find(|v| v.name == name).map(|v| &v.value)
    }

    /// Parses a whole file.
    pub fn parse(bytes: &[u8]) -> Result<MatFile, MatError> {
        if bytes.len() < 128 {
            return Err(MatError::NotMat(format!("{} bytes, shorter than the 128-byte header", bytes.len())));
        }
        if bytes.starts_with(b"\x89HDF") || bytes.get(512..516) == Some(b"\x89HDF") {
            return Err(MatError::Unsupported("MAT v7.3 (HDF5); re-save it with `save -v7`".into()));
        }
        let big_endian = match &bytes[126..128] {
            b"IM" => false,
            b"MI" => true,
            other => {
                return Err(MatError::NotMat(format!(
                    "endian indicator is {other:?}, expected \"IM\" or \"MI\" (a MAT v4 file or not a MAT-file)"
                )));
            }
        };
        let reader = Reader { bytes, big_endian, context: None };
        let version = reader.u16_at(124);
        if version != 0x0100 {
            return Err(MatError::Unsupported(format!("header version {version:#06x}, expected 0x0100 (level 5)")));
        }
        let header_text = String::from_utf8_lossy(&bytes[..116]).trim_end_matches([' ', '\0']).to_string();
        let mut variables = Vec::new();
        reader.top_level(128, &mut variables, true)?;
        Ok(MatFile { header_text, variables })
    }
}

/// One data element: its type, its data and where the next element starts.
struct Element<'a> {
    data_type: u32,
    data: &'a [u8],
    offset: usize,
    next: usize,
}

struct Reader<'a> {
    bytes: &'a [u8],
    big_endian: bool,
    /// Set inside a decompressed element: offsets are then relative to its decompressed bytes.
    context: Option<String>,
}

impl<'a> Reader<'a> {
    fn u16_at(&self, at: usize) -> u16 {
        let b = [self.bytes[at], self.bytes[at + 1]];
        if self.big_endian { u16::from_be_bytes(b) } else { u16::from_le_bytes(b) }
    }

    fn u32_of(&self, b: &[u8]) -> u32 {
        let b = [b[0], b[1], b[2], b[3]];
        if self.big_endian { u32::from_be_bytes(b) } else { u32::from_le_bytes(b) }
    }

    fn truncated(&self, offset: usize, needed: usize, available: usize) -> MatError {
        MatError::Truncated { offset, needed, available, context: self.context.clone() }
    }

    fn malformed(&self, offset: usize, message: impl Into<String>) -> MatError {
        MatError::Malformed { offset, message: message.into(), context: self.context.clone() }
    }

    /// Reads the element at `offset`, no further than `end`.
    fn element(&self, offset: usize, end: usize) -> Result<Element<'a>, MatError> {
        let available = end.saturating_sub(offset);
        if available < 8 {
            return Err(self.truncated(offset, 8, available));
        }
        let first = self.u32_of(&self.bytes[offset..offset + 4]);
        let small_len = (first >> 16) as usize;
        if small_len != 0 {
            if small_len > 4 {
                return Err(self.malformed(offset, format!("small data element of {small_len} bytes (at most 4)")));
            }
            let data = &self.bytes[offset + 4..offset + 4 + small_len];
            return Ok(Element { data_type: first & 0xffff, data, offset, next: offset + 8 });
        }
        let len = self.u32_of(&self.bytes[offset + 4..offset + 8]) as usize;
        let start = offset + 8;
        if len > end - start {
            return Err(self.truncated(start, len, end - start));
        }
        let data = &self.bytes[start..start + len];
        // Elements are padded to 8 bytes, except compressed ones; the last padding may be absent.
        let padded = if first == MI_COMPRESSED { len } else { len.div_ceil(8) * 8 };
        Ok(Element { data_type: first, data, offset, next: (start + padded).min(end) })
    }

    /// Reads the top-level elements from `offset` to the end.
    fn top_level(&self, mut offset: usize, out: &mut Vec<MatVariable>, allow_compressed: bool) -> Result<(), MatError> {
        let end = self.bytes.len();
        while offset < end {
            // Trailing zero padding after the last element is harmless.
            if self.bytes[offset..].iter().all(|&b| b == 0) {
                break;
            }
            // Compressed elements are unpadded, but some writers pad them anyway: a zero word
            // where a tag should be (no data type is 0) is padding up to the 8-byte boundary.
            let aligned = offset.next_multiple_of(8);
            if aligned != offset && self.bytes.get(offset..offset + 4) == Some(&[0, 0, 0, 0]) {
                offset = aligned;
                continue;
            }
            let element = self.element(offset, end)?;
            match element.data_type {
                MI_MATRIX => {
                    if let Some(variable) = self.matrix(element.data, element.offset + 8, 0)? {
                        out.push(variable);
                    }
                }
                MI_COMPRESSED if allow_compressed => {
                    let inflated = inflate(element.data, element.offset)?;
                    let inner = Reader {
                        bytes: &inflated,
                        big_endian: self.big_endian,
                        context: Some(format!("inside the compressed element at byte {}", element.offset)),
                    };
                    inner.top_level(0, out, false)?;
                }
                MI_COMPRESSED => {
                    return Err(self.malformed(element.offset, "compressed element inside a compressed one"));
                }
                // Other top-level element types carry nothing we read (e.g. subsystem data).
                _ => {}
            }
            offset = element.next;
        }
        Ok(())
    }

    /// Parses the contents of an `miMATRIX` element (`data` starts at absolute `base`).
    fn matrix(&self, data: &'a [u8], base: usize, depth: usize) -> Result<Option<MatVariable>, MatError> {
        if depth > MAX_DEPTH {
            return Err(self.malformed(base, format!("arrays nested deeper than {MAX_DEPTH}")));
        }
        if data.is_empty() {
            return Ok(Some(MatVariable { name: String::new(), value: MatValue::Empty }));
        }
        let sub = Reader { bytes: data, big_endian: self.big_endian, context: self.context.clone() };
        let end = data.len();
        let rebase = |e: MatError| rebase_error(e, base);

        let flags = sub.element(0, end).map_err(rebase)?;
        if flags.data_type != MI_UINT32 || flags.data.len() != 8 {
            return Err(self.malformed(base, "array flags must be 8 bytes of miUINT32"));
        }
        let flag_word = sub.u32_of(&flags.data[..4]);
        let class = (flag_word & 0xff) as u8;
        let complex = flag_word & 0x0800 != 0;

        let dims_element = sub.element(flags.next, end).map_err(rebase)?;
        if dims_element.data_type != MI_INT32
            || !dims_element.data.len().is_multiple_of(4)
            || dims_element.data.len() < 8
        {
            return Err(self.malformed(base + flags.next, "dimensions must be at least two miINT32 values"));
        }
        let mut dims = Vec::with_capacity(dims_element.data.len() / 4);
        for chunk in dims_element.data.chunks_exact(4) {
            let d = sub.u32_of(chunk) as i32;
            if d < 0 {
                return Err(self.malformed(base + flags.next, format!("negative dimension {d}")));
            }
            dims.push(d as usize);
        }
        let count = dims
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| self.malformed(base + flags.next, format!("dimensions {dims:?} overflow")))?;

        let name_element = sub.element(dims_element.next, end).map_err(rebase)?;
        if !matches!(name_element.data_type, MI_INT8 | MI_UINT8 | MI_UTF8) {
            return Err(self.malformed(base + dims_element.next, "array name must be miINT8"));
        }
        let name = String::from_utf8_lossy(name_element.data).into_owned();
        let mut at = name_element.next;

        let value = match class {
            MX_CELL => {
                // Each cell needs at least an 8-byte tag: refuse counts the data cannot hold
                // before allocating for them.
                if count > (end - at) / 8 {
                    return Err(self.truncated(base + at, count.saturating_mul(8), end - at));
                }
                let mut cells = Vec::with_capacity(count);
                for _ in 0..count {
                    let cell = sub.element(at, end).map_err(rebase)?;
                    if cell.data_type != MI_MATRIX {
                        return Err(self.malformed(
                            base + at,
                            format!("cell element of type {} instead of miMATRIX", cell.data_type),
                        ));
                    }
                    let value = self.matrix(cell.data, base + at + 8, depth + 1)?.map_or(MatValue::Empty, |v| v.value);
                    cells.push(value);
                    at = cell.next;
                }
                MatValue::Cell { dims, cells }
            }
            MX_CHAR => {
                let chars = if count == 0 && at >= end {
                    Vec::new()
                } else {
                    let element = sub.element(at, end).map_err(rebase)?;
                    sub.chars(&element, base)?
                };
                if chars.len() != count {
                    return Err(
                        self.malformed(base + at, format!("{} characters for dimensions {dims:?}", chars.len()))
                    );
                }
                MatValue::Char { dims, chars }
            }
            code => match NumericClass::from_code(code) {
                Some(numeric) => {
                    let real_element = sub.element(at, end).map_err(rebase)?;
                    let real = sub.numbers(&real_element, base)?;
                    if real.len() != count {
                        return Err(self.malformed(base + at, format!("{} values for dimensions {dims:?}", real.len())));
                    }
                    let imag = if complex {
                        let imag_element = sub.element(real_element.next, end).map_err(rebase)?;
                        let imag = sub.numbers(&imag_element, base)?;
                        if imag.len() != count {
                            return Err(self.malformed(base + real_element.next, "imaginary part has the wrong length"));
                        }
                        Some(imag)
                    } else {
                        None
                    };
                    MatValue::Numeric { class: numeric, dims, real, imag }
                }
                None => MatValue::Unsupported { class, dims },
            },
        };
        Ok(Some(MatVariable { name, value }))
    }

    /// Decodes a numeric element of any storage type to `f64`.
    fn numbers(&self, element: &Element<'_>, base: usize) -> Result<Vec<f64>, MatError> {
        let d = element.data;
        let width = match element.data_type {
            MI_INT8 | MI_UINT8 => 1,
            MI_INT16 | MI_UINT16 => 2,
            MI_INT32 | MI_UINT32 | MI_SINGLE => 4,
            MI_DOUBLE | MI_INT64 | MI_UINT64 => 8,
            other => return Err(self.malformed(base + element.offset, format!("data type {other} is not numeric"))),
        };
        if !d.len().is_multiple_of(width) {
            return Err(
                self.malformed(base + element.offset, format!("{} bytes is not a multiple of {width}", d.len()))
            );
        }
        let be = self.big_endian;
        let word = |c: &[u8]| -> [u8; 8] {
            let mut b = [0u8; 8];
            b[..c.len()].copy_from_slice(c);
            b
        };
        Ok(d.chunks_exact(width)
            .map(|c| {
                let b = word(c);
                match element.data_type {
                    MI_INT8 => f64::from(c[0] as i8),
                    MI_UINT8 => f64::from(c[0]),
                    MI_INT16 => {
                        f64::from(if be { i16::from_be_bytes([b[0], b[1]]) } else { i16::from_le_bytes([b[0], b[1]]) })
                    }
                    MI_UINT16 => {
                        f64::from(if be { u16::from_be_bytes([b[0], b[1]]) } else { u16::from_le_bytes([b[0], b[1]]) })
                    }
                    MI_INT32 => {
                        let a = [b[0], b[1], b[2], b[3]];
                        f64::from(if be { i32::from_be_bytes(a) } else { i32::from_le_bytes(a) })
                    }
                    MI_UINT32 => {
                        let a = [b[0], b[1], b[2], b[3]];
                        f64::from(if be { u32::from_be_bytes(a) } else { u32::from_le_bytes(a) })
                    }
                    MI_SINGLE => {
                        let a = [b[0], b[1], b[2], b[3]];
                        f64::from(if be { f32::from_be_bytes(a) } else { f32::from_le_bytes(a) })
                    }
                    MI_DOUBLE => {
                        if be {
                            f64::from_be_bytes(b)
                        } else {
                            f64::from_le_bytes(b)
                        }
                    }
                    MI_INT64 => (if be { i64::from_be_bytes(b) } else { i64::from_le_bytes(b) }) as f64,
                    _ => (if be { u64::from_be_bytes(b) } else { u64::from_le_bytes(b) }) as f64,
                }
            })
            .collect())
    }

    /// Decodes a char element: UTF-8/UTF-16/UTF-32 or the integer types MATLAB uses for them.
    fn chars(&self, element: &Element<'_>, base: usize) -> Result<Vec<char>, MatError> {
        let d = element.data;
        let bad = |what: &str| self.malformed(base + element.offset, what.to_string());
        match element.data_type {
            MI_UTF8 => std::str::from_utf8(d).map(|s| s.chars().collect()).map_err(|_| bad("invalid UTF-8 text")),
            // 8-bit characters are Latin-1.
            MI_UINT8 | MI_INT8 => Ok(d.iter().map(|&b| char::from(b)).collect()),
            MI_UTF16 | MI_UINT16 | MI_INT16 => {
                if !d.len().is_multiple_of(2) {
                    return Err(bad("odd number of bytes in UTF-16 text"));
                }
                let units = d.chunks_exact(2).map(|c| {
                    if self.big_endian { u16::from_be_bytes([c[0], c[1]]) } else { u16::from_le_bytes([c[0], c[1]]) }
                });
                char::decode_utf16(units).collect::<Result<_, _>>().map_err(|_| bad("invalid UTF-16 text"))
            }
            MI_UTF32 | MI_UINT32 | MI_INT32 => {
                if !d.len().is_multiple_of(4) {
                    return Err(bad("UTF-32 text length is not a multiple of 4"));
                }
                d.chunks_exact(4)
                    .map(|c| char::from_u32(self.u32_of(c)).ok_or_else(|| bad("invalid UTF-32 text")))
                    .collect()
            }
            other => Err(bad(&format!("data type {other} is not text"))),
        }
    }
}

/// Offsets of errors found inside a sub-slice are made absolute.
fn rebase_error(error: MatError, base: usize) -> MatError {
    match error {
        MatError::Truncated { offset, needed, available, context } => {
            MatError::Truncated { offset: offset + base, needed, available, context }
        }
        MatError::Malformed { offset, message, context } => {
            MatError::Malformed { offset: offset + base, message, context }
        }
        other => other,
    }
}

fn inflate(data: &[u8], offset: usize) -> Result<Vec<u8>, MatError> {
    let mut out = Vec::new();
    flate2::read::ZlibDecoder::new(data)
        .take(MAX_DECOMPRESSED + 1)
        .read_to_end(&mut out)
        .map_err(|e| MatError::Decompress { offset, message: e.to_string() })?;
    if out.len() as u64 > MAX_DECOMPRESSED {
        return Err(MatError::Decompress { offset, message: "decompresses to more than 256 MiB".into() });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    //! Hand-built files in the forms MATLAB itself writes and scipy does not: UTF-16 chars,
    //! doubles stored as `miUINT8`, small data elements, big-endian byte order.

    use super::*;

    struct Writer {
        big_endian: bool,
    }

    impl Writer {
        fn u32(&self, v: u32) -> [u8; 4] {
            if self.big_endian { v.to_be_bytes() } else { v.to_le_bytes() }
        }

        fn element(&self, data_type: u32, data: &[u8]) -> Vec<u8> {
            let mut out = Vec::new();
            if data.len() <= 4 && data_type != MI_MATRIX && !data.is_empty() {
                out.extend_from_slice(&self.u32(((data.len() as u32) << 16) | data_type));
                out.extend_from_slice(data);
                out.resize(8, 0);
                return out;
            }
            out.extend_from_slice(&self.u32(data_type));
            out.extend_from_slice(&self.u32(data.len() as u32));
            out.extend_from_slice(data);
            out.resize(8 + data.len().div_ceil(8) * 8, 0);
            out
        }

        fn matrix(&self, class: u8, dims: &[u32], name: &str, body: &[Vec<u8>]) -> Vec<u8> {
            let mut content = Vec::new();
            let mut flags = self.u32(u32::from(class)).to_vec();
            flags.extend_from_slice(&self.u32(0));
            content.extend(self.element(MI_UINT32, &flags));
            let dims: Vec<u8> = dims.iter().flat_map(|&d| self.u32(d)).collect();
            content.extend(self.element(MI_INT32, &dims));
            content.extend(self.element(MI_INT8, name.as_bytes()));
            for part in body {
                content.extend_from_slice(part);
            }
            self.element(MI_MATRIX, &content)
        }

        fn utf16(&self, text: &str) -> Vec<u8> {
            let data: Vec<u8> = text
                .encode_utf16()
                .flat_map(|u| if self.big_endian { u.to_be_bytes() } else { u.to_le_bytes() })
                .collect();
            self.element(MI_UINT16, &data)
        }

        fn file(&self, elements: &[Vec<u8>]) -> Vec<u8> {
            let mut out = b"MATLAB 5.0 MAT-file, Platform: GLNXA64, Created on: test".to_vec();
            out.resize(116, b' ');
            out.resize(124, 0);
            out.extend_from_slice(&if self.big_endian { 0x0100u16.to_be_bytes() } else { 0x0100u16.to_le_bytes() });
            out.extend_from_slice(if self.big_endian { b"MI" } else { b"IM" });
            for e in elements {
                out.extend_from_slice(e);
            }
            out
        }

        fn matlab_style_list(&self) -> Vec<u8> {
            let files = ["n02085620-Chihuahua/a.jpg", "n02085782-Japanese_spaniel/b.jpg", "x"];
            let cells: Vec<Vec<u8>> = files
                .iter()
                .map(|f| self.matrix(MX_CHAR, &[1, f.encode_utf16().count() as u32], "", &[self.utf16(f)]))
                .collect();
            let file_list = self.matrix(MX_CELL, &[3, 1], "file_list", &cells);
            // MATLAB stores small whole doubles compactly: class double, data miUINT8.
            let labels = self.matrix(6, &[3, 1], "labels", &[self.element(MI_UINT8, &[1, 2, 120])]);
            let mut singles = Vec::new();
            for v in [0.5f32, -2.0] {
                singles.extend_from_slice(&if self.big_endian { v.to_be_bytes() } else { v.to_le_bytes() });
            }
            let single = self.matrix(7, &[1, 2], "s", &[self.element(MI_SINGLE, &singles)]);
            let empty_cell = self.matrix(MX_CELL, &[0, 0], "nothing", &[]);
            let strukt = self.matrix(2, &[1, 1], "info", &[self.element(MI_INT32, &self.u32(32))]);
            self.file(&[file_list, labels, single, empty_cell, strukt])
        }
    }

    fn check_list(mat: &MatFile) {
        let files: Vec<String> =
            mat.get("file_list").unwrap().as_cells().unwrap().iter().map(|c| c.as_string().unwrap()).collect();
        assert_eq!(files, ["n02085620-Chihuahua/a.jpg", "n02085782-Japanese_spaniel/b.jpg", "x"]);
        assert_eq!(mat.get("labels").unwrap().as_f64s().unwrap(), [1.0, 2.0, 120.0]);
        assert_eq!(mat.get("s").unwrap().as_f64s().unwrap(), [0.5, -2.0]);
        assert_eq!(mat.get("nothing").unwrap().as_cells().unwrap().len(), 0);
        assert!(matches!(mat.get("info"), Some(MatValue::Unsupported { class: 2, .. })));
        assert!(mat.header_text.contains("GLNXA64"));
    }

    #[test]
    fn reads_matlab_style_little_endian() {
        let bytes = Writer { big_endian: false }.matlab_style_list();
        check_list(&MatFile::parse(&bytes).unwrap());
    }

    #[test]
    fn reads_matlab_style_big_endian() {
        let bytes = Writer { big_endian: true }.matlab_style_list();
        check_list(&MatFile::parse(&bytes).unwrap());
    }

    #[test]
    fn reads_a_compressed_variable() {
        use std::io::Write;
        let w = Writer { big_endian: false };
        let labels = w.matrix(6, &[1, 2], "labels", &[w.element(MI_UINT8, &[7, 9])]);
        let mut zlib = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        zlib.write_all(&labels).unwrap();
        let compressed = zlib.finish().unwrap();
        let mut element = w.u32(MI_COMPRESSED).to_vec();
        element.extend_from_slice(&w.u32(compressed.len() as u32));
        element.extend_from_slice(&compressed);
        let mat = MatFile::parse(&w.file(&[element.clone()])).unwrap();
        assert_eq!(mat.get("labels").unwrap().as_f64s().unwrap(), [7.0, 9.0]);

        // Two compressed variables, unpadded as scipy and MATLAB write them, then padded.
        let mut padded = element.clone();
        padded.resize(padded.len().next_multiple_of(8), 0);
        assert_ne!(padded.len(), element.len(), "the fixture must need padding to test it");
        for first in [element.clone(), padded] {
            let mat = MatFile::parse(&w.file(&[first, element.clone()])).unwrap();
            assert_eq!(mat.variables.len(), 2);
        }

        // Corrupt zlib data is reported as such.
        let mut corrupt = element;
        let len = corrupt.len();
        corrupt[10..len - 4].iter_mut().for_each(|b| *b = 0xff);
        let err = MatFile::parse(&w.file(&[corrupt])).unwrap_err();
        assert!(
            matches!(err, MatError::Decompress { .. } | MatError::Truncated { .. } | MatError::Malformed { .. }),
            "{err}"
        );
    }

    #[test]
    fn hostile_counts_are_refused_before_allocating() {
        let w = Writer { big_endian: false };
        // A cell claiming 2^31 x 2^31 cells with no data, and a char array whose length disagrees.
        let huge = w.matrix(MX_CELL, &[i32::MAX as u32, i32::MAX as u32], "c", &[]);
        assert!(MatFile::parse(&w.file(&[huge])).is_err());
        let short = w.matrix(MX_CHAR, &[1, 10], "t", &[w.utf16("abc")]);
        let err = MatFile::parse(&w.file(&[short])).unwrap_err().to_string();
        assert!(err.contains("3 characters"), "{err}");
        let negative = w.matrix(6, &[1, u32::MAX], "n", &[]);
        assert!(MatFile::parse(&w.file(&[negative])).unwrap_err().to_string().contains("negative"));
    }

    #[test]
    fn deep_nesting_is_bounded() {
        let w = Writer { big_endian: false };
        let mut value = w.matrix(6, &[1, 1], "", &[w.element(MI_UINT8, &[1])]);
        for _ in 0..(MAX_DEPTH + 5) {
            value = w.matrix(MX_CELL, &[1, 1], "", &[value]);
        }
        let err = MatFile::parse(&w.file(&[value])).unwrap_err().to_string();
        assert!(err.contains("nested"), "{err}");
    }
}
