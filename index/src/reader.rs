//! `CodeIndex`: a validated, read-only view of an index file (memory-mapped, or an owned copy of
//! bytes for tests and fuzzing), its accessors, integrity check and summary statistics. Search
//! lives in `search.rs` and `mih.rs`.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::path::Path;
use std::sync::OnceLock;

use memmap2::Mmap;
use zerocopy::{FromBytes, IntoBytes};

use crate::code::{CodeMatrix, last_word_mask};
use crate::error::IndexError;
use crate::format::{HEADER_LEN, IndexMetadata, Layout, Section, parse_layout};
use crate::mih::MultiIndex;
use crate::search::NarrowCodes;

/// Where the file bytes live. Both give 8-byte aligned bytes, so the 64-byte aligned sections can
/// be viewed as `u64`/`u32` slices in place.
#[derive(Debug)]
enum Backing {
    Mmap(Mmap),
    /// `len` bytes held in u64 words for alignment.
    Owned {
        words: Vec<u64>,
        len: usize,
    },
}

impl Backing {
    fn bytes(&self) -> &[u8] {
        match self {
            Backing::Mmap(map) => map,
            Backing::Owned { words, len } => &words.as_bytes()[..*len],
        }
    }
}

/// An open index file. Cheap to open (the header, path table and metadata are checked; codes are
/// not read until searched or verified), `Send + Sync`, and never panics on file content.
///
/// ```
/// use hashsrv_index::{CodeIndex, HashCode, IndexMetadata, IndexWriter, SearchOptions};
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let dir = tempfile::tempdir()?;
/// let path = dir.path().join("codes.hsidx");
/// let mut writer = IndexWriter::create(&path, 16, IndexMetadata::default())?;
/// for (i, hex) in ["ff00", "ff01", "00ff"].iter().enumerate() {
///     writer.push(HashCode::from_hex(16, hex)?.words(), i as u32, 100 + i as u64, &format!("img{i}.png"))?;
/// }
/// writer.finish()?; // atomically publishes `path`
///
/// let index = CodeIndex::open(&path)?;
/// index.verify()?;
/// let query = HashCode::from_hex(16, "ff03")?;
/// let hits = index.search(query.words(), &SearchOptions::top_k(2)).hits;
/// assert_eq!((hits[0].position, hits[0].distance), (1, 1));
/// assert_eq!((index.path(hits[1].position), hits[1].distance), ("img0.png", 2));
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct CodeIndex {
    backing: Backing,
    layout: Layout,
    metadata: IndexMetadata,
    pub(crate) multi_index: OnceLock<Option<MultiIndex>>,
    /// Codes of at most 32 bits in narrow lanes, for the scan (see `search::NarrowCodes`).
    pub(crate) narrow_codes: OnceLock<Option<NarrowCodes>>,
    /// The planner's measured cost of a single-query scan, nanoseconds per 8 bytes of codes, as
    /// `f64` bits (0 until a scan has been timed; see `CodeIndex::record_scan`).
    pub(crate) scan_ns_per_word: std::sync::atomic::AtomicU64,
}

impl CodeIndex {
    /// Memory-maps and validates the index file at `path`.
    pub fn open(path: &Path) -> Result<CodeIndex, IndexError> {
        let mut file = File::open(path).map_err(|e| IndexError::io("opening index file", path, e))?;
        let len = file.metadata().map_err(|e| IndexError::io("reading index file size", path, e))?.len();
        if len < HEADER_LEN as u64 {
            // Too short to map usefully (and empty maps fail on some systems): read it and let the
            // checks name the problem.
            let mut bytes = Vec::new();
            file.read_to_end(&mut bytes).map_err(|e| IndexError::io("reading index file", path, e))?;
            return Self::from_bytes(&bytes);
        }
        // SAFETY: the map is read-only and published index files are never modified in place
        // (`IndexWriter` writes a temporary file and renames it), so the bytes do not change under
        // us as long as nobody edits the file by hand while it is open.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| IndexError::io("memory-mapping index file", path, e))?;
        Self::from_backing(Backing::Mmap(map))
    }

    /// Validates an index held in memory (copied into an aligned buffer).
    pub fn from_bytes(bytes: &[u8]) -> Result<CodeIndex, IndexError> {
        let mut words = vec![0u64; bytes.len().div_ceil(8)];
        words.as_mut_bytes()[..bytes.len()].copy_from_slice(bytes);
        Self::from_backing(Backing::Owned { words, len: bytes.len() })
    }

    fn from_backing(backing: Backing) -> Result<CodeIndex, IndexError> {
        let bytes = backing.bytes();
        let layout = parse_layout(bytes)?;
        let section = |s: Section| &bytes[layout.ranges[s as usize].clone()];
        // Sections are 64-byte aligned in an 8-byte aligned buffer, so these casts only fail on a
        // layout bug; check once here so the accessors can rely on them.
        let aligned = <[u64]>::ref_from_bytes(section(Section::Codes)).is_ok()
            && <[u32]>::ref_from_bytes(section(Section::Labels)).is_ok()
            && <[u64]>::ref_from_bytes(section(Section::Ids)).is_ok();
        let offsets = <[u64]>::ref_from_bytes(section(Section::PathOffsets));
        let (true, Ok(offsets)) = (aligned, offsets) else {
            return Err(IndexError::corrupt("a section is not 8-byte aligned"));
        };
        check_paths(offsets, section(Section::PathBytes))?;
        let metadata =
            serde_json::from_slice(section(Section::Metadata)).map_err(|e| IndexError::Metadata(e.to_string()))?;
        Ok(CodeIndex {
            backing,
            layout,
            metadata,
            multi_index: OnceLock::new(),
            narrow_codes: OnceLock::new(),
            scan_ns_per_word: Default::default(),
        })
    }

    fn section(&self, s: Section) -> &[u8] {
        self.backing.bytes().get(self.layout.ranges[s as usize].clone()).unwrap_or(&[])
    }

    /// Code length in bits.
    pub fn bits(&self) -> u32 {
        self.layout.bits
    }

    /// Number of items.
    pub fn len(&self) -> usize {
        self.layout.count
    }

    /// Whether the index holds no items.
    pub fn is_empty(&self) -> bool {
        self.layout.count == 0
    }

    /// All codes, in item order.
    pub fn codes(&self) -> CodeMatrix<'_> {
        CodeMatrix::new(self.bits(), <[u64]>::ref_from_bytes(self.section(Section::Codes)).unwrap_or(&[]))
    }

    /// Class label of every item.
    pub fn labels(&self) -> &[u32] {
        <[u32]>::ref_from_bytes(self.section(Section::Labels)).unwrap_or(&[])
    }

    /// External ids of every item.
    pub fn ids(&self) -> &[u64] {
        <[u64]>::ref_from_bytes(self.section(Section::Ids)).unwrap_or(&[])
    }

    /// External id of item `i`. Panics if `i >= len()`.
    pub fn id(&self, i: usize) -> u64 {
        self.ids()[i]
    }

    /// Path of item `i`. Panics if `i >= len()`.
    pub fn path(&self, i: usize) -> &str {
        assert!(i < self.len(), "item {i} of an index of {} items", self.len());
        let offsets = <[u64]>::ref_from_bytes(self.section(Section::PathOffsets)).unwrap_or(&[]);
        let (Some(&start), Some(&end)) = (offsets.get(i), offsets.get(i + 1)) else { return "" };
        // Offsets and UTF-8 were checked at open.
        self.section(Section::PathBytes)
            .get(start as usize..end as usize)
            .and_then(|b| std::str::from_utf8(b).ok())
            .unwrap_or("")
    }

    /// Metadata stored with the index.
    pub fn metadata(&self) -> &IndexMetadata {
        &self.metadata
    }

    /// Checks that a model (SHA-256 of its `model.onnx` bytes, and its code length) is the one
    /// this index was built with. An index without a recorded model hash only checks the bits.
    pub fn check_model(&self, model_sha256: &str, bits: u32) -> Result<(), IndexError> {
        if bits != self.bits() {
            return Err(IndexError::ModelMismatch {
                what: "code bits",
                index: self.bits().to_string(),
                model: bits.to_string(),
            });
        }
        match &self.metadata.model_sha256 {
            Some(recorded) if !recorded.eq_ignore_ascii_case(model_sha256) => Err(IndexError::ModelMismatch {
                what: "model SHA-256",
                index: recorded.clone(),
                model: model_sha256.to_string(),
            }),
            _ => Ok(()),
        }
    }

    /// Recomputes every section checksum and checks that code padding bits are zero.
    pub fn verify(&self) -> Result<(), IndexError> {
        for s in Section::ALL {
            let computed = crc32fast::hash(self.section(s));
            let stored = self.layout.crcs[s as usize];
            if computed != stored {
                return Err(IndexError::SectionChecksum { section: s.name(), stored, computed });
            }
        }
        let mask = !last_word_mask(self.bits());
        let wpc = self.layout.words_per_code;
        if mask != 0
            && let Some(item) = self.codes().words().chunks_exact(wpc).position(|code| code[wpc - 1] & mask != 0)
        {
            return Err(IndexError::corrupt(format!("padding bits of item {item} are set")));
        }
        Ok(())
    }

    /// Number of items per class label.
    pub fn class_counts(&self) -> BTreeMap<u32, usize> {
        let mut counts = BTreeMap::new();
        for &label in self.labels() {
            *counts.entry(label).or_insert(0) += 1;
        }
        counts
    }

    /// Fraction of items with each bit set (bit `i` = network output `i`); 0.5 everywhere is a
    /// balanced code, values near 0 or 1 are wasted bits. Empty for an empty index.
    pub fn bit_balance(&self) -> Vec<f64> {
        if self.is_empty() {
            return Vec::new();
        }
        let codes = self.codes();
        let mut ones = vec![0u64; codes.words_per_code() * 64];
        for code in codes.words().chunks_exact(codes.words_per_code()) {
            for (w, &word) in code.iter().enumerate() {
                let mut rest = word;
                while rest != 0 {
                    let bit = rest.leading_zeros() as usize;
                    ones[w * 64 + bit] += 1;
                    rest &= !(1u64 << (63 - bit));
                }
            }
        }
        ones.truncate(self.bits() as usize);
        ones.into_iter().map(|n| n as f64 / self.len() as f64).collect()
    }
}

/// Path offsets start at 0, never decrease, end at the blob length and fall on UTF-8 boundaries;
/// the blob is UTF-8.
fn check_paths(offsets: &[u64], blob: &[u8]) -> Result<(), IndexError> {
    let text = std::str::from_utf8(blob).map_err(|_| IndexError::corrupt("item paths are not UTF-8"))?;
    if offsets.first() != Some(&0) || offsets.last() != Some(&(blob.len() as u64)) {
        return Err(IndexError::corrupt("path table does not span the path bytes"));
    }
    let bad = offsets.windows(2).any(|w| w[0] > w[1]) || offsets.iter().any(|&o| !text.is_char_boundary(o as usize));
    if bad {
        return Err(IndexError::corrupt("path offsets are out of order or split a character"));
    }
    Ok(())
}
