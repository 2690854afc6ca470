//! `IndexError`: every way writing, opening or checking an index file can fail, each message
//! saying what went wrong and how to recover.

use crate::code::CodeError;

/// The command that rebuilds an index, named in every "the file is damaged" message.
const REBUILD: &str = "rebuild it with `hashsrv build-index`";

/// Errors from writing, opening or verifying an index file.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "not a hashsrv index (the file starts with {found:02x?}); give the path of a file written by `hashsrv build-index`"
    )]
    NotAnIndex { found: Vec<u8> },
    #[error("index file is truncated: {needed} bytes needed, {len} present; {REBUILD}")]
    Truncated { needed: u64, len: u64 },
    #[error(
        "index file format version {found} is not readable by this build (it reads versions {oldest}..={newest}); \
         {REBUILD}"
    )]
    UnsupportedVersion { found: u32, oldest: u32, newest: u32 },
    #[error(
        "index file (format version {found}) needs a reader of format version {min_reader} or newer, this build \
         reads up to {newest}; upgrade hashsrv or {REBUILD}"
    )]
    NeedsNewerReader { found: u32, min_reader: u32, newest: u32 },
    #[error("index file was written with the opposite byte order (big-endian); {REBUILD} on this machine")]
    WrongEndian,
    #[error("this build reads index files on little-endian machines only")]
    UnsupportedHost,
    #[error(
        "index header checksum mismatch (stored {stored:08x}, computed {computed:08x}): the header is damaged; {REBUILD}"
    )]
    HeaderChecksum { stored: u32, computed: u32 },
    #[error(
        "index {section} section checksum mismatch (stored {stored:08x}, computed {computed:08x}): the file is damaged; {REBUILD}"
    )]
    SectionChecksum { section: &'static str, stored: u32, computed: u32 },
    #[error("index file is damaged: {what}; {REBUILD}")]
    Corrupt { what: String },
    #[error("index metadata is not valid JSON of the expected shape ({0}); {REBUILD}")]
    Metadata(String),
    #[error("index is too large for this machine's address space ({what})")]
    TooLarge { what: &'static str },
    #[error(transparent)]
    Code(#[from] CodeError),
    #[error("a {bits}-bit code is {expected} u64 words, got {found}; encode with the model the index was built for")]
    WrongCodeLength { bits: u32, expected: usize, found: usize },
    #[error("padding bits past bit {bits} of item {item} are set; build codes with `HashCode` so padding stays zero")]
    NonZeroPadding { bits: u32, item: u64 },
    #[error("could not encode the index metadata as JSON: {0}")]
    MetadataEncode(String),
}

impl IndexError {
    pub(crate) fn corrupt(what: impl Into<String>) -> Self {
        Self::Corrupt { what: what.into() }
    }

    pub(crate) fn io(action: &'static str, path: &std::path::Path, source: std::io::Error) -> Self {
        Self::Io { action, path: path.to_owned(), source }
    }
}
