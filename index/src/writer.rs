//! `IndexWriter`: streams items into a new index file and publishes it atomically.
//!
//! Codes go straight to a temporary file in the target's directory as they are pushed; labels,
//! ids and paths are small per item and are kept in memory until `finish` appends them. `finish`
//! writes the header last, fsyncs the file, renames it over the target and fsyncs the directory,
//! so the target path only ever holds a complete index. A writer dropped without `finish` (or a
//! failed `finish`) deletes its temporary file and leaves the target untouched.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use zerocopy::IntoBytes;

use crate::code::{check_bits, last_word_mask, words_for_bits};
use crate::error::IndexError;
use crate::format::{HEADER_LEN, Header, IndexMetadata, Section, align_up};

/// Writes an index file item by item; see the module docs for the publishing guarantees.
#[derive(Debug)]
pub struct IndexWriter {
    target: PathBuf,
    /// The temporary file, deleted on drop while `Some`.
    temp: Option<PathBuf>,
    file: BufWriter<File>,
    bits: u32,
    count: u64,
    codes_crc: crc32fast::Hasher,
    labels: Vec<u32>,
    ids: Vec<u64>,
    path_offsets: Vec<u64>,
    path_bytes: Vec<u8>,
    metadata: IndexMetadata,
}

impl IndexWriter {
    /// Starts a new index of `bits`-bit codes to be published at `path` by [`finish`](Self::finish).
    pub fn create(path: &Path, bits: u32, metadata: IndexMetadata) -> Result<IndexWriter, IndexError> {
        check_bits(bits)?;
        let temp = temp_path(path);
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temp)
            .map_err(|e| IndexError::io("creating temporary index file", &temp, e))?;
        let mut writer = IndexWriter {
            target: path.to_owned(),
            temp: Some(temp),
            file: BufWriter::with_capacity(1 << 20, file),
            bits,
            count: 0,
            codes_crc: crc32fast::Hasher::new(),
            labels: Vec::new(),
            ids: Vec::new(),
            path_offsets: vec![0],
            path_bytes: Vec::new(),
            metadata,
        };
        // Room for the header, written last.
        writer.write(&[0u8; HEADER_LEN])?;
        Ok(writer)
    }

    /// Appends one item: its code words (`words_for_bits(bits)` of them, padding bits zero), class
    /// label, external id and path.
    pub fn push(&mut self, code: &[u64], label: u32, id: u64, path: &str) -> Result<(), IndexError> {
        let expected = words_for_bits(self.bits);
        if code.len() != expected {
            return Err(IndexError::WrongCodeLength { bits: self.bits, expected, found: code.len() });
        }
        if code.last().is_some_and(|&w| w & !last_word_mask(self.bits) != 0) {
            return Err(IndexError::NonZeroPadding { bits: self.bits, item: self.count });
        }
        let mut bytes = [0u8; 8 * words_for_bits(crate::code::MAX_BITS)];
        for (chunk, word) in bytes.chunks_exact_mut(8).zip(code) {
            chunk.copy_from_slice(&word.to_le_bytes());
        }
        let bytes = &bytes[..8 * expected];
        self.codes_crc.update(bytes);
        self.write(bytes)?;
        self.labels.push(label);
        self.ids.push(id);
        self.path_bytes.extend_from_slice(path.as_bytes());
        self.path_offsets.push(self.path_bytes.len() as u64);
        self.count += 1;
        Ok(())
    }

    /// Number of items pushed so far.
    pub fn len(&self) -> u64 {
        self.count
    }

    /// Whether no item was pushed yet.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Writes the remaining sections and the header, then atomically replaces the target path.
    pub fn finish(mut self) -> Result<(), IndexError> {
        let metadata = serde_json::to_vec(&self.metadata).map_err(|e| IndexError::MetadataEncode(e.to_string()))?;
        let mut header = Header::new(self.bits, self.count);
        let mut pos = HEADER_LEN as u64;
        let codes_len = self.count * words_for_bits(self.bits) as u64 * 8;
        self.record(&mut header, Section::Codes, pos, codes_len, self.codes_crc.clone().finalize());
        pos += codes_len;
        let sections: [(Section, Vec<u8>); 6] = [
            (Section::Labels, self.labels.iter().flat_map(|v| v.to_le_bytes()).collect()),
            (Section::LabelOffsets, Vec::new()),
            (Section::Ids, self.ids.iter().flat_map(|v| v.to_le_bytes()).collect()),
            (Section::PathOffsets, self.path_offsets.iter().flat_map(|v| v.to_le_bytes()).collect()),
            (Section::PathBytes, std::mem::take(&mut self.path_bytes)),
            (Section::Metadata, metadata),
        ];
        for (section, bytes) in sections {
            let start = align_up(pos);
            self.write(&vec![0u8; (start - pos) as usize])?;
            self.write(&bytes)?;
            self.record(&mut header, section, start, bytes.len() as u64, crc32fast::hash(&bytes));
            pos = start + bytes.len() as u64;
        }
        let temp = self.temp.clone().unwrap_or_default();
        let header = header.sealed();
        let io = |e| IndexError::io("writing index file", &temp, e);
        self.file.flush().map_err(io)?;
        let file = self.file.get_mut();
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        file.write_all(header.as_bytes()).map_err(io)?;
        file.sync_all().map_err(io)?;
        std::fs::rename(&temp, &self.target).map_err(|e| IndexError::io("publishing index file", &self.target, e))?;
        self.temp = None;
        sync_parent_dir(&self.target)
    }

    fn record(&self, header: &mut Header, section: Section, offset: u64, len: u64, crc: u32) {
        let entry = &mut header.sections[section as usize];
        entry.offset = offset.into();
        entry.len = len.into();
        entry.crc32 = crc.into();
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), IndexError> {
        let temp = self.temp.as_deref().unwrap_or(Path::new(""));
        self.file.write_all(bytes).map_err(|e| IndexError::io("writing index file", temp, e))
    }
}

impl Drop for IndexWriter {
    fn drop(&mut self) {
        if let Some(temp) = self.temp.take() {
            // Best effort: the target was never touched, a leftover temp file is only clutter.
            let _ = std::fs::remove_file(temp);
        }
    }
}

/// A fresh temporary name beside `target` (same directory, so the rename is atomic).
fn temp_path(target: &Path) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name = target.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "index".into());
    let unique = COUNTER.fetch_add(1, Ordering::Relaxed);
    target.with_file_name(format!(".{name}.tmp-{}-{unique}", std::process::id()))
}

/// Makes the rename durable.
fn sync_parent_dir(target: &Path) -> Result<(), IndexError> {
    let dir = match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| IndexError::io("syncing directory of index file", dir, e))
}
