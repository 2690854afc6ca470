//! The on-disk index format: header layout, section table and the checks `open` runs before any
//! section is touched. Reading and writing live in `reader.rs` and `writer.rs`; this module owns
//! the bytes.
//!
//! # Layout (format version 1)
//!
//! All integers are little-endian. Every section starts at a multiple of 64 bytes (so a memory
//! map gives SIMD loads that never straddle a cache line) and the gaps are zero.
//!
//! | offset | size | field | meaning |
//! |-------:|-----:|-------|---------|
//! | 0 | 8 | `magic` | `b"HSIDX\0\r\n"` (the `\r\n` catches text-mode transfers) |
//! | 8 | 4 | `format_version` | version this file was written as (1) |
//! | 12 | 4 | `min_reader_version` | oldest reader format version that can read it (1) |
//! | 16 | 4 | `endian` | `0x01020304`; read as `0x04030201` the file is byte-swapped |
//! | 20 | 4 | `header_len` | 256; later versions may grow the header |
//! | 24 | 4 | `bits` | code length in bits, 8..=1024 |
//! | 28 | 4 | `words_per_code` | `ceil(bits / 64)` |
//! | 32 | 8 | `count` | number of items |
//! | 40 | 8 | `flags` | feature flags, 0 in version 1 (a reader refuses unknown flags) |
//! | 48 | 7 × 24 | `sections` | `{offset: u64, len: u64, crc32: u32, reserved: u32}` per section, in the order below |
//! | 216 | 36 | reserved | zero |
//! | 252 | 4 | `header_crc32` | CRC-32 (IEEE) of bytes 0..252 |
//!
//! | section | content | length |
//! |---------|---------|--------|
//! | 0 `codes` | code `i` = `words_per_code` u64 words, each the in-memory word of [`crate::HashCode`] (big-endian reading of 8 packed `numpy.packbits` bytes) stored little-endian; padding bits zero | `count × words_per_code × 8` |
//! | 1 `labels` | u32 class label per item | `count × 4` |
//! | 2 `label_offsets` | empty in version 1 (one label per item) | 0 |
//! | 3 `ids` | u64 external id per item | `count × 8` |
//! | 4 `path_offsets` | u64 byte offsets into `path_bytes`, `count + 1` of them, first 0, non-decreasing, last = `path_bytes` length, each on a UTF-8 character boundary | `(count + 1) × 8` |
//! | 5 `path_bytes` | UTF-8 item paths, concatenated | any |
//! | 6 `metadata` | JSON of [`IndexMetadata`] (model SHA-256, dataset, class names, extras) | any |
//!
//! Multi-label room: a later version fills `label_offsets` with `count + 1` u64 offsets into
//! `labels` (item `i` has labels `labels[off[i]..off[i+1]]`, so `labels` holds any number of
//! labels) and sets `min_reader_version` to that version, so this reader refuses such a file with
//! a clear error instead of misreading it.
//!
//! `open` checks the length, magic, byte order, header checksum, version range, flags, bits, that
//! every section lies inside the file at a 64-byte boundary with the size `count` implies, the
//! path table and the metadata JSON. It does not read the codes, labels or ids; `verify` recomputes
//! each section's CRC-32 (stored in the section table) and checks that code padding bits are zero.

use std::ops::Range;

use serde::{Deserialize, Serialize};
use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::code::{check_bits, words_for_bits};
use crate::error::IndexError;

/// File magic.
pub const MAGIC: [u8; 8] = *b"HSIDX\0\r\n";
/// Format version this build writes.
pub const FORMAT_VERSION: u32 = 1;
/// Oldest format version this build reads.
pub const OLDEST_READABLE_VERSION: u32 = 1;
/// Byte-order marker as written.
pub const ENDIAN_MARKER: u32 = 0x0102_0304;
/// Header length in bytes; the first section starts here.
pub const HEADER_LEN: usize = 256;
/// Alignment of every section.
pub const SECTION_ALIGN: usize = 64;
/// Bytes of the header covered by the header checksum.
const HEADER_CRC_SPAN: usize = HEADER_LEN - 4;

/// The sections of an index file, in file order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Section {
    Codes = 0,
    Labels = 1,
    LabelOffsets = 2,
    Ids = 3,
    PathOffsets = 4,
    PathBytes = 5,
    Metadata = 6,
}

impl Section {
    /// All sections in file order.
    pub const ALL: [Section; 7] = [
        Section::Codes,
        Section::Labels,
        Section::LabelOffsets,
        Section::Ids,
        Section::PathOffsets,
        Section::PathBytes,
        Section::Metadata,
    ];

    /// Name used in error messages.
    pub fn name(self) -> &'static str {
        match self {
            Section::Codes => "codes",
            Section::Labels => "labels",
            Section::LabelOffsets => "label_offsets",
            Section::Ids => "ids",
            Section::PathOffsets => "path_offsets",
            Section::PathBytes => "path_bytes",
            Section::Metadata => "metadata",
        }
    }
}

/// Provenance and descriptive data stored with an index.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct IndexMetadata {
    /// SHA-256 (hex) of the `model.onnx` bytes that produced the codes.
    #[serde(default)]
    pub model_sha256: Option<String>,
    /// Data set name, e.g. `fashion-mnist`.
    #[serde(default)]
    pub dataset: Option<String>,
    /// Class names, indexed by label.
    #[serde(default)]
    pub class_names: Vec<String>,
    /// Anything else worth keeping with the index.
    #[serde(default)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// One entry of the section table.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct SectionEntry {
    pub offset: U64,
    pub len: U64,
    pub crc32: U32,
    pub reserved: U32,
}

/// The fixed file header (see the module docs for the table).
#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct Header {
    pub magic: [u8; 8],
    pub format_version: U32,
    pub min_reader_version: U32,
    pub endian: U32,
    pub header_len: U32,
    pub bits: U32,
    pub words_per_code: U32,
    pub count: U64,
    pub flags: U64,
    pub sections: [SectionEntry; 7],
    pub reserved: [u8; 36],
    pub header_crc32: U32,
}

const _: () = assert!(size_of::<Header>() == HEADER_LEN);

impl Header {
    /// A version-1 header with empty sections and no checksum yet.
    pub(crate) fn new(bits: u32, count: u64) -> Self {
        Self {
            magic: MAGIC,
            format_version: FORMAT_VERSION.into(),
            min_reader_version: FORMAT_VERSION.into(),
            endian: ENDIAN_MARKER.into(),
            header_len: (HEADER_LEN as u32).into(),
            bits: bits.into(),
            words_per_code: (words_for_bits(bits) as u32).into(),
            count: count.into(),
            flags: 0.into(),
            sections: [SectionEntry::default(); 7],
            reserved: [0; 36],
            header_crc32: 0.into(),
        }
    }

    /// CRC-32 of the checksummed span of the header.
    pub(crate) fn compute_crc(&self) -> u32 {
        crc32fast::hash(&self.as_bytes()[..HEADER_CRC_SPAN])
    }

    /// The header with its checksum filled in.
    pub(crate) fn sealed(mut self) -> Self {
        self.header_crc32 = self.compute_crc().into();
        self
    }
}

/// A file whose header and section table passed every check of `open`: section byte ranges that
/// lie inside the file with the sizes `count` implies.
#[derive(Clone, Debug)]
pub(crate) struct Layout {
    pub bits: u32,
    pub words_per_code: usize,
    pub count: usize,
    pub ranges: [Range<usize>; 7],
    pub crcs: [u32; 7],
}

/// Rounds `n` up to the section alignment.
pub(crate) fn align_up(n: u64) -> u64 {
    n.div_ceil(SECTION_ALIGN as u64) * SECTION_ALIGN as u64
}

/// Checks the header and section table of `bytes` (see the module docs), without reading sections.
pub(crate) fn parse_layout(bytes: &[u8]) -> Result<Layout, IndexError> {
    if cfg!(target_endian = "big") {
        return Err(IndexError::UnsupportedHost);
    }
    let len = bytes.len() as u64;
    let prefix = &bytes[..bytes.len().min(MAGIC.len())];
    if prefix != &MAGIC[..prefix.len()] || prefix.is_empty() {
        return Err(IndexError::NotAnIndex { found: prefix.to_vec() });
    }
    let Ok((header, _)) = Header::read_from_prefix(bytes) else {
        return Err(IndexError::Truncated { needed: HEADER_LEN as u64, len });
    };
    match header.endian.get() {
        ENDIAN_MARKER => {}
        m if m == ENDIAN_MARKER.swap_bytes() => return Err(IndexError::WrongEndian),
        m => return Err(IndexError::corrupt(format!("byte-order marker is {m:#010x}"))),
    }
    let (stored, computed) = (header.header_crc32.get(), header.compute_crc());
    if stored != computed {
        return Err(IndexError::HeaderChecksum { stored, computed });
    }
    let found = header.format_version.get();
    if found < OLDEST_READABLE_VERSION {
        return Err(IndexError::UnsupportedVersion { found, oldest: OLDEST_READABLE_VERSION, newest: FORMAT_VERSION });
    }
    let min_reader = header.min_reader_version.get();
    if min_reader > FORMAT_VERSION || min_reader > found {
        return Err(IndexError::NeedsNewerReader { found, min_reader, newest: FORMAT_VERSION });
    }
    if header.flags.get() != 0 {
        return Err(IndexError::corrupt(format!(
            "unknown feature flags {:#x} (a newer hashsrv may read them)",
            header.flags.get()
        )));
    }
    let header_len = u64::from(header.header_len.get());
    if header_len < HEADER_LEN as u64 || header_len > len {
        return Err(IndexError::corrupt(format!("header length {header_len}")));
    }
    let bits = header.bits.get();
    check_bits(bits).map_err(|e| IndexError::corrupt(e.to_string()))?;
    let wpc = words_for_bits(bits);
    if header.words_per_code.get() as usize != wpc {
        return Err(IndexError::corrupt(format!(
            "{} words per code for {bits}-bit codes (expected {wpc})",
            header.words_per_code.get()
        )));
    }
    let count = header.count.get();
    let expected = |per_item: u64, extra: u64| count.checked_mul(per_item).and_then(|n| n.checked_add(extra));
    let mut ranges: [Range<usize>; 7] = Default::default();
    let mut crcs = [0u32; 7];
    for (section, entry) in Section::ALL.into_iter().zip(&header.sections) {
        let (offset, size) = (entry.offset.get(), entry.len.get());
        let want = match section {
            Section::Codes => expected(wpc as u64 * 8, 0),
            Section::Labels => expected(4, 0),
            Section::LabelOffsets => Some(0),
            Section::Ids => expected(8, 0),
            Section::PathOffsets => expected(8, 8),
            Section::PathBytes | Section::Metadata => Some(size),
        };
        if want != Some(size) {
            return Err(IndexError::corrupt(format!(
                "{} section is {size} bytes, {count} items need {}",
                section.name(),
                want.map_or("more than 2^64".to_string(), |w| w.to_string())
            )));
        }
        if !offset.is_multiple_of(SECTION_ALIGN as u64) || offset < header_len {
            return Err(IndexError::corrupt(format!("{} section starts at offset {offset}", section.name())));
        }
        let end = offset.checked_add(size).ok_or_else(|| IndexError::corrupt("section end overflows"))?;
        if end > len {
            return Err(IndexError::Truncated { needed: end, len });
        }
        // Both fit in the file, hence in usize.
        ranges[section as usize] = offset as usize..end as usize;
        crcs[section as usize] = entry.crc32.get();
    }
    // Search keys pack a position into 40 bits (an 8 TB file of 64-bit codes).
    let count = usize::try_from(count)
        .ok()
        .filter(|_| count < 1 << 40)
        .ok_or(IndexError::TooLarge { what: "item count" })?;
    Ok(Layout { bits, words_per_code: wpc, count, ranges, crcs })
}
