//! Packed bit vectors: one bit per feature element, binarization, packing and unpacking.
//!
//! Bit order is LSB-first: element `i` is bit `i % 8` (value `1 << (i % 8)`) of byte `i / 8`.
//! In memory the bits live in `u64` words with the same order (element `i` is bit `i % 64` of word
//! `i / 64`), so a word's little-endian bytes are exactly the packed bytes. Bits past `len` are
//! always 0.

use super::CodecError;

/// A fixed-length vector of bits, packed 64 to a word.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bits {
    words: Vec<u64>,
    len: usize,
}

/// Binarizes feature values as MistNet does: bit = 1 if `x > 0`, else 0. NaN is an error.
pub fn binarize(values: &[f32]) -> Result<Bits, CodecError> {
    if let Some(index) = values.iter().position(|v| v.is_nan()) {
        return Err(CodecError::NanInput { index });
    }
    let words = values
        .chunks(64)
        .map(|chunk| chunk.iter().enumerate().fold(0u64, |w, (j, &v)| w | (u64::from(v > 0.0) << j)))
        .collect();
    Ok(Bits { words, len: values.len() })
}

impl Bits {
    /// `len` zero bits.
    pub fn zeros(len: usize) -> Self {
        Self { words: vec![0; len.div_ceil(64)], len }
    }

    /// Bits from one byte per element, each 0 or 1.
    pub fn from_elements(elements: &[u8]) -> Result<Self, CodecError> {
        let mut bits = Self::zeros(elements.len());
        for (i, &e) in elements.iter().enumerate() {
            match e {
                0 => {}
                1 => bits.words[i / 64] |= 1 << (i % 64),
                _ => return Err(CodecError::NotABit { index: i, value: e.to_string() }),
            }
        }
        Ok(bits)
    }

    /// Reads `len` bits packed LSB-first in `len.div_ceil(8)` bytes; the padding bits must be 0.
    pub fn from_packed(bytes: &[u8], len: usize) -> Result<Self, CodecError> {
        let expected = len.div_ceil(8);
        if bytes.len() != expected {
            return Err(CodecError::PayloadSize { actual: bytes.len() as u64, expected: expected as u64 });
        }
        let used = len % 8;
        if used != 0 && bytes[expected - 1] >> used != 0 {
            return Err(CodecError::NonZeroPadding { len });
        }
        let words = bytes
            .chunks(8)
            .map(|c| {
                let mut w = [0u8; 8];
                w[..c.len()].copy_from_slice(c);
                u64::from_le_bytes(w)
            })
            .collect();
        Ok(Self { words, len })
    }

    /// The packed bytes: 8 elements per byte, LSB first, zero padding in the last byte.
    pub fn to_packed(&self) -> Vec<u8> {
        let mut out: Vec<u8> = self.words.iter().flat_map(|w| w.to_le_bytes()).collect();
        out.truncate(self.len.div_ceil(8));
        out
    }

    /// One byte per element, 0 or 1 (the unpacked form).
    pub fn to_elements(&self) -> Vec<u8> {
        (0..self.len).map(|i| u8::from(self.get(i))).collect()
    }

    /// One float per element, 0.0 or 1.0 (what the cloud's Back takes as input).
    pub fn to_f32(&self) -> Vec<f32> {
        let mut out = Vec::with_capacity(self.len);
        for (k, &word) in self.words.iter().enumerate() {
            out.extend((0..(self.len - 64 * k).min(64)).map(|j| (word >> j & 1) as f32));
        }
        out
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Element `i`'s bit. Panics if `i >= len`, like slice indexing.
    pub fn get(&self, i: usize) -> bool {
        assert!(i < self.len, "bit index {i} out of range for {} bits", self.len);
        self.words[i / 64] >> (i % 64) & 1 == 1
    }

    /// Number of 1 bits.
    pub fn count_ones(&self) -> usize {
        self.words.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// The words, for in-place randomization; the caller must call [`Bits::clear_padding`] after.
    pub(crate) fn words_mut(&mut self) -> &mut [u64] {
        &mut self.words
    }

    /// Zeroes the bits past `len` in the last word, restoring the invariant.
    pub(crate) fn clear_padding(&mut self) {
        let used = self.len % 64;
        if used != 0 {
            let last = self.words.len() - 1; // len > 0, so there is a last word
            self.words[last] &= (1u64 << used) - 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binarize_is_strictly_positive() {
        let b = binarize(&[1.0, 0.0, -0.0, -1.0, 1e-30, f32::INFINITY, f32::NEG_INFINITY]).unwrap();
        assert_eq!(b.to_elements(), [1, 0, 0, 0, 1, 1, 0]);
        assert_eq!(binarize(&[0.5, f32::NAN]), Err(CodecError::NanInput { index: 1 }));
    }

    #[test]
    fn packing_is_lsb_first_with_zero_padding() {
        // Elements 0, 3 and 9 set: byte 0 = 0b0000_1001, byte 1 = 0b0000_0010.
        let mut e = [0u8; 11];
        e[0] = 1;
        e[3] = 1;
        e[9] = 1;
        let b = Bits::from_elements(&e).unwrap();
        assert_eq!(b.to_packed(), [0x09, 0x02]);
        assert_eq!(Bits::from_packed(&[0x09, 0x02], 11).unwrap(), b);
        assert_eq!(b.count_ones(), 3);
    }

    #[test]
    fn pack_unpack_round_trips_across_word_boundaries() {
        for len in [0usize, 1, 7, 8, 9, 63, 64, 65, 127, 128, 200] {
            let e: Vec<u8> = (0..len).map(|i| ((i * 7 + i / 3) % 3 == 0) as u8).collect();
            let b = Bits::from_elements(&e).unwrap();
            let packed = b.to_packed();
            assert_eq!(packed.len(), len.div_ceil(8));
            let back = Bits::from_packed(&packed, len).unwrap();
            assert_eq!(back.to_elements(), e, "len {len}");
            assert_eq!(back.to_f32(), e.iter().map(|&x| x as f32).collect::<Vec<_>>());
        }
    }

    #[test]
    fn from_packed_rejects_wrong_length_and_padding() {
        assert_eq!(Bits::from_packed(&[0, 0], 17), Err(CodecError::PayloadSize { actual: 2, expected: 3 }));
        assert_eq!(Bits::from_packed(&[0b1000_0000], 7), Err(CodecError::NonZeroPadding { len: 7 }));
        assert!(Bits::from_packed(&[0b0100_0000], 7).is_ok());
        assert_eq!(Bits::from_elements(&[0, 2]), Err(CodecError::NotABit { index: 1, value: "2".into() }));
    }
}
