//! Binary hash codes: the one bit layout used everywhere (files, hex strings, FAISS, numpy).
//!
//! Bit `i` of a code is set when output `i` of the network is positive (`> 0.0`; zero and NaN
//! map to 0). The packed-byte form is `numpy.packbits` of the 0/1 vector: bit `i` lives in byte
//! `i / 8` at bit position `7 - i % 8` (most significant bit first), and the hex form is those bytes
//! in order. That is also the layout of FAISS's binary indexes, so codes move between hashsrv,
//! FAISS and Python with no reordering.
//!
//! In memory a code is a run of `u64` words: word `w` is the big-endian reading of packed bytes
//! `8w..8w+8`, zero-padded past the last bit. Padding bits are always zero, so Hamming distance is
//! the popcount of the XOR of whole words.

use std::fmt;

/// Errors from building a code out of bytes, hex or outputs.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CodeError {
    #[error("code length {bits} bits is outside the supported range {min}..={max}")]
    UnsupportedBits { bits: u32, min: u32, max: u32 },
    #[error("a {bits}-bit code packs into {expected} bytes, got {found}")]
    WrongByteLength { bits: u32, expected: usize, found: usize },
    #[error("padding bits past bit {bits} must be zero")]
    NonZeroPadding { bits: u32 },
    #[error("invalid hex code: {0}")]
    InvalidHex(String),
}

/// Smallest supported code length in bits.
pub const MIN_BITS: u32 = 8;
/// Largest supported code length in bits.
pub const MAX_BITS: u32 = 1024;

/// Number of `u64` words a `bits`-bit code occupies.
pub const fn words_for_bits(bits: u32) -> usize {
    bits.div_ceil(64) as usize
}

/// Number of packed bytes (`numpy.packbits`) a `bits`-bit code occupies.
pub const fn bytes_for_bits(bits: u32) -> usize {
    bits.div_ceil(8) as usize
}

/// Checks that `bits` is a supported code length.
pub fn check_bits(bits: u32) -> Result<(), CodeError> {
    if (MIN_BITS..=MAX_BITS).contains(&bits) {
        Ok(())
    } else {
        Err(CodeError::UnsupportedBits { bits, min: MIN_BITS, max: MAX_BITS })
    }
}

/// One binary hash code.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct HashCode {
    bits: u32,
    words: Box<[u64]>,
}

impl HashCode {
    /// The code of a network output vector: bit `i` is `outputs[i] > 0.0`.
    pub fn from_outputs(outputs: &[f32]) -> Result<Self, CodeError> {
        let bits = u32::try_from(outputs.len()).unwrap_or(u32::MAX);
        check_bits(bits)?;
        let mut words = vec![0u64; words_for_bits(bits)];
        for (i, &x) in outputs.iter().enumerate() {
            if x > 0.0 {
                words[i / 64] |= 1u64 << (63 - (i % 64));
            }
        }
        Ok(Self { bits, words: words.into() })
    }

    /// A code from its packed bytes (`numpy.packbits` layout); padding bits must be zero.
    pub fn from_packed(bits: u32, bytes: &[u8]) -> Result<Self, CodeError> {
        check_bits(bits)?;
        let expected = bytes_for_bits(bits);
        if bytes.len() != expected {
            return Err(CodeError::WrongByteLength { bits, expected, found: bytes.len() });
        }
        let mut words = vec![0u64; words_for_bits(bits)];
        for (w, chunk) in words.iter_mut().zip(bytes.chunks(8)) {
            let mut be = [0u8; 8];
            be[..chunk.len()].copy_from_slice(chunk);
            *w = u64::from_be_bytes(be);
        }
        let code = Self { bits, words: words.into() };
        if code.words.last().is_some_and(|&last| last & !last_word_mask(bits) != 0) {
            return Err(CodeError::NonZeroPadding { bits });
        }
        Ok(code)
    }

    /// A code from its words (the in-memory layout); padding bits must be zero.
    pub fn from_words(bits: u32, words: &[u64]) -> Result<Self, CodeError> {
        check_bits(bits)?;
        let expected = words_for_bits(bits);
        if words.len() != expected {
            return Err(CodeError::WrongByteLength { bits, expected: expected * 8, found: words.len() * 8 });
        }
        if words.last().is_some_and(|&last| last & !last_word_mask(bits) != 0) {
            return Err(CodeError::NonZeroPadding { bits });
        }
        Ok(Self { bits, words: words.into() })
    }

    /// A code from its hex form (the packed bytes in order, `2 * ceil(bits / 8)` hex digits).
    pub fn from_hex(bits: u32, text: &str) -> Result<Self, CodeError> {
        let bytes = hex::decode(text.trim()).map_err(|e| CodeError::InvalidHex(e.to_string()))?;
        Self::from_packed(bits, &bytes)
    }

    /// Code length in bits.
    pub fn bits(&self) -> u32 {
        self.bits
    }

    /// The in-memory words (see the module docs for the layout).
    pub fn words(&self) -> &[u64] {
        &self.words
    }

    /// Bit `i` (output `i` of the network was positive).
    pub fn bit(&self, i: u32) -> bool {
        assert!(i < self.bits, "bit {i} of a {}-bit code", self.bits);
        self.words[(i / 64) as usize] >> (63 - (i % 64)) & 1 == 1
    }

    /// The packed bytes, `numpy.packbits` layout.
    pub fn to_packed(&self) -> Vec<u8> {
        let mut bytes: Vec<u8> = self.words.iter().flat_map(|w| w.to_be_bytes()).collect();
        bytes.truncate(bytes_for_bits(self.bits));
        bytes
    }

    /// The hex form: the packed bytes in order, lower case.
    pub fn to_hex(&self) -> String {
        hex::encode(self.to_packed())
    }

    /// Hamming distance to another code of the same length.
    pub fn distance(&self, other: &HashCode) -> u32 {
        assert_eq!(self.bits, other.bits, "Hamming distance between codes of different lengths");
        crate::hamming::distance(&self.words, &other.words)
    }
}

impl fmt::Debug for HashCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HashCode({} bits, {})", self.bits, self.to_hex())
    }
}

impl fmt::Display for HashCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// Mask of the bits of the last word that belong to a `bits`-bit code.
pub fn last_word_mask(bits: u32) -> u64 {
    match bits % 64 {
        0 => u64::MAX,
        r => !(u64::MAX >> r),
    }
}

/// A borrowed, contiguous matrix of codes: code `i` is `words[i * words_per_code..][..words_per_code]`.
#[derive(Clone, Copy, Debug)]
pub struct CodeMatrix<'a> {
    bits: u32,
    words_per_code: usize,
    words: &'a [u64],
}

impl<'a> CodeMatrix<'a> {
    /// Wraps `words` as codes of `bits` bits. Panics if the length is not a whole number of codes.
    pub fn new(bits: u32, words: &'a [u64]) -> Self {
        let words_per_code = words_for_bits(bits);
        assert!(words.len().is_multiple_of(words_per_code), "word count is not a whole number of codes");
        Self { bits, words_per_code, words }
    }

    /// Code length in bits.
    pub fn bits(&self) -> u32 {
        self.bits
    }

    /// Words per code.
    pub fn words_per_code(&self) -> usize {
        self.words_per_code
    }

    /// Number of codes.
    pub fn len(&self) -> usize {
        self.words.len() / self.words_per_code
    }

    /// Whether there are no codes.
    pub fn is_empty(&self) -> bool {
        self.words.is_empty()
    }

    /// The words of code `i`.
    pub fn code(&self, i: usize) -> &'a [u64] {
        &self.words[i * self.words_per_code..(i + 1) * self.words_per_code]
    }

    /// All words, code after code.
    pub fn words(&self) -> &'a [u64] {
        self.words
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packed_layout_matches_numpy_packbits() {
        // numpy.packbits([1,0,0,0,0,0,0,1, 0,1,0,0,0,0,0,0]) == [0x81, 0x40]
        let mut outputs = vec![-1.0f32; 16];
        outputs[0] = 0.5;
        outputs[7] = 2.0;
        outputs[9] = 1.0;
        let code = HashCode::from_outputs(&outputs).unwrap();
        assert_eq!(code.to_packed(), vec![0x81, 0x40]);
        assert_eq!(code.to_hex(), "8140");
        assert!(code.bit(0) && code.bit(7) && code.bit(9) && !code.bit(1));
        assert_eq!(HashCode::from_hex(16, "8140").unwrap(), code);
    }

    #[test]
    fn zero_and_nan_map_to_zero_bits() {
        let mut outputs = vec![0.0f32; 8];
        outputs[3] = f32::NAN;
        outputs[4] = -0.0;
        assert_eq!(HashCode::from_outputs(&outputs).unwrap().to_packed(), vec![0]);
    }

    #[test]
    fn odd_lengths_round_trip_and_reject_padding() {
        for bits in [8u32, 12, 48, 65, 100, 128, 1024] {
            let outputs: Vec<f32> = (0..bits).map(|i| if (i * 7 + 3) % 5 < 2 { 1.0 } else { -1.0 }).collect();
            let code = HashCode::from_outputs(&outputs).unwrap();
            let back = HashCode::from_packed(bits, &code.to_packed()).unwrap();
            assert_eq!(back, code);
            for i in 0..bits {
                assert_eq!(code.bit(i), outputs[i as usize] > 0.0);
            }
        }
        // 12 bits: the low nibble of the second byte is padding.
        assert_eq!(HashCode::from_packed(12, &[0xff, 0x0f]), Err(CodeError::NonZeroPadding { bits: 12 }));
        assert!(matches!(HashCode::from_packed(12, &[0xff]), Err(CodeError::WrongByteLength { .. })));
        assert!(matches!(HashCode::from_outputs(&[1.0; 4]), Err(CodeError::UnsupportedBits { .. })));
    }

    #[test]
    fn distance_counts_differing_bits() {
        let a = HashCode::from_hex(64, "ffffffffffffffff").unwrap();
        let b = HashCode::from_hex(64, "0fffffffffffff00").unwrap();
        assert_eq!(a.distance(&b), 12);
    }
}
