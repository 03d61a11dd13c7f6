//! The wire format (version 1): an 80-byte little-endian header, then the payload.
//!
//! ```text
//! offset size field
//!      0    4 magic        "MNF\0" = 4d 4e 46 00
//!      4    2 version      u16 = 1
//!      6    2 cut          u16 >= 1 (Plato's convention: the edge ran modules 0..cut-1)
//!      8    1 mechanism    0 none, 1 sue, 2 rr, 3 oue
//!      9    1 encoding     0 packed, 1 f16, 2 f32
//!     10    1 compression  0 none, 1 zstd
//!     11    1 reserved     0
//!     12   16 shape        N, C, H, W: four u32, each >= 1
//!     28    8 epsilon      f64; +0.0 for none, 0 < ε <= 64 otherwise
//!     36   32 front_hash   SHA-256 of the Front weights, raw bytes
//!     68    8 payload_len  u64: bytes after the header
//!     76    4 checksum     u32 CRC-32C of bytes 0..76 followed by the payload
//!     80    - payload      payload_len bytes
//! ```
//! `docs/wire-format.md` is the full specification, with every error case.

use std::fmt;
use std::io::Read;
use std::str::FromStr;

use rand::CryptoRng;
use sha2::{Digest, Sha256};

use super::{Bits, CodecError, Mechanism, Privacy, binarize};

/// First four bytes of every message.
pub const MAGIC: [u8; 4] = *b"MNF\0";
/// The format version this code writes and reads.
pub const VERSION: u16 = 1;
/// Header bytes before the payload.
pub const HEADER_LEN: usize = 80;
/// zstd level used when the caller has no preference.
pub const DEFAULT_ZSTD_LEVEL: i32 = 3;

const CHECKSUM_OFFSET: usize = 76;
const F16_ONE: u16 = 0x3c00;
const F32_ONE: u32 = 0x3f80_0000;

/// How the 0/1 elements are serialized before compression.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Encoding {
    /// 8 elements per byte, LSB first.
    Packed,
    /// One little-endian IEEE half float per element, 0.0 or 1.0.
    F16,
    /// One little-endian IEEE single float per element, 0.0 or 1.0.
    F32,
}

impl Encoding {
    pub const ALL: [Encoding; 3] = [Encoding::Packed, Encoding::F16, Encoding::F32];

    /// The name used on the command line, in JSON and in the docs.
    pub fn name(self) -> &'static str {
        match self {
            Encoding::Packed => "packed",
            Encoding::F16 => "f16",
            Encoding::F32 => "f32",
        }
    }

    /// The code in the wire header.
    pub fn code(self) -> u8 {
        match self {
            Encoding::Packed => 0,
            Encoding::F16 => 1,
            Encoding::F32 => 2,
        }
    }

    pub fn from_code(code: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|e| e.code() == code)
    }

    /// Uncompressed payload bytes for `elements` elements.
    pub fn payload_len(self, elements: u64) -> u64 {
        match self {
            Encoding::Packed => elements.div_ceil(8),
            Encoding::F16 => elements.saturating_mul(2),
            Encoding::F32 => elements.saturating_mul(4),
        }
    }
}

impl fmt::Display for Encoding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Encoding {
    type Err = CodecError;

    fn from_str(s: &str) -> Result<Self, CodecError> {
        Self::ALL.into_iter().find(|e| e.name() == s).ok_or_else(|| CodecError::UnknownEncoding(s.to_string()))
    }
}

/// Whether the payload is zstd-compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Compression {
    None,
    Zstd,
}

impl Compression {
    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Zstd => "zstd",
        }
    }

    pub fn code(self) -> u8 {
        match self {
            Compression::None => 0,
            Compression::Zstd => 1,
        }
    }

    pub fn from_code(code: u8) -> Option<Self> {
        [Compression::None, Compression::Zstd].into_iter().find(|c| c.code() == code)
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// SHA-256 of the Front weights that produced the features (see `mistnet::model::Front::hash`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FrontHash(pub [u8; 32]);

impl FromStr for FrontHash {
    type Err = CodecError;

    /// Parses 64 hex digits.
    fn from_str(s: &str) -> Result<Self, CodecError> {
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(s, &mut bytes).map_err(|_| CodecError::InvalidFrontHash(s.to_string()))?;
        Ok(Self(bytes))
    }
}

/// Computes a [`FrontHash`] tensor by tensor: SHA-256 over each tensor's `u64 LE name length,
/// name, u64 LE rank, u64 LE dims, f32 LE values`, in the order added (by name, for a Front;
/// docs/wire-format.md, "The Front hash").
#[derive(Default)]
pub struct FrontHasher(Sha256);

impl FrontHasher {
    /// Adds one tensor; `le_values` are the little-endian bytes of its f32 values.
    pub fn add(&mut self, name: &str, dims: &[usize], le_values: &[u8]) {
        self.0.update((name.len() as u64).to_le_bytes());
        self.0.update(name.as_bytes());
        self.0.update((dims.len() as u64).to_le_bytes());
        for d in dims {
            self.0.update((*d as u64).to_le_bytes());
        }
        self.0.update(le_values);
    }

    pub fn finish(self) -> FrontHash {
        FrontHash(self.0.finalize().into())
    }
}

impl fmt::Display for FrontHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

/// A tensor shape `[N, C, H, W]`, every dimension at least 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Shape(pub [u32; 4]);

impl Shape {
    /// `[N, C, H, W]`, or `[C, H, W]` read as `N = 1`.
    pub fn from_dims(dims: &[usize]) -> Result<Self, CodecError> {
        let invalid = |reason: &str| CodecError::InvalidShape { dims: dims.to_vec(), reason: reason.to_string() };
        let four: [usize; 4] = match *dims {
            [c, h, w] => [1, c, h, w],
            [n, c, h, w] => [n, c, h, w],
            _ => return Err(invalid("expected [N, C, H, W] or [C, H, W]")),
        };
        let mut out = [0u32; 4];
        for (o, d) in out.iter_mut().zip(four) {
            *o = u32::try_from(d).map_err(|_| invalid("a dimension does not fit in u32"))?;
        }
        let shape = Self(out);
        shape.check()?;
        Ok(shape)
    }

    fn check(&self) -> Result<(), CodecError> {
        if self.0.contains(&0) {
            return Err(CodecError::InvalidShape { dims: self.dims().to_vec(), reason: "every dimension must be at least 1".into() });
        }
        Ok(())
    }

    pub fn dims(&self) -> [usize; 4] {
        self.0.map(|d| d as usize)
    }

    /// Number of elements (saturating: a product over `u64::MAX` reads as `u64::MAX`).
    pub fn elements(&self) -> u64 {
        self.0.iter().try_fold(1u64, |n, &d| n.checked_mul(u64::from(d))).unwrap_or(u64::MAX)
    }
}

/// Everything the encoder needs besides the values and their shape.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EncodeParams {
    pub privacy: Privacy,
    pub encoding: Encoding,
    /// zstd level, or `None` to store the payload uncompressed. If compressing does not make
    /// the payload smaller, it is stored uncompressed (the header says which).
    pub zstd_level: Option<i32>,
    pub cut: u16,
    pub front_hash: FrontHash,
}

/// A decoded header: every field validated.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Header {
    pub cut: u16,
    pub privacy: Privacy,
    pub encoding: Encoding,
    pub compression: Compression,
    pub shape: Shape,
    pub front_hash: FrontHash,
    pub payload_len: u64,
}

/// Bounds the decoder enforces before it allocates or decompresses anything.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecodeLimits {
    /// The most elements a message may declare.
    pub max_elements: u64,
}

impl Default for DecodeLimits {
    /// 2^26 = 67,108,864 elements: 8 MiB packed; yolov5x's largest cut at 1280 px has 32.8 M.
    fn default() -> Self {
        Self { max_elements: 1 << 26 }
    }
}

/// A decoded message: the header and one bit per element.
#[derive(Clone, Debug, PartialEq)]
pub struct Decoded {
    pub header: Header,
    pub bits: Bits,
}

/// Binarizes `values` (shape `dims`, `[N, C, H, W]` or `[C, H, W]`), applies the randomized
/// response of `params.privacy` with `rng`, and serializes the message.
pub fn encode<R: CryptoRng + ?Sized>(
    values: &[f32],
    dims: &[usize],
    params: &EncodeParams,
    rng: &mut R,
) -> Result<Vec<u8>, CodecError> {
    let shape = Shape::from_dims(dims)?;
    if values.len() as u64 != shape.elements() {
        return Err(CodecError::LengthMismatch { values: values.len(), shape: shape.0, expected: shape.elements() as usize });
    }
    if let Some(level) = params.zstd_level {
        let range = zstd::compression_level_range();
        if !range.contains(&level) {
            return Err(CodecError::ZstdLevel { level, min: *range.start(), max: *range.end() });
        }
    }
    let mut bits = binarize(values)?;
    params.privacy.randomize(&mut bits, rng);
    let raw = serialize(&bits, params.encoding);
    let (compression, payload) = match params.zstd_level {
        Some(level) => {
            let packed = zstd::bulk::compress(&raw, level).map_err(|e| CodecError::Zstd(e.to_string()))?;
            if packed.len() < raw.len() { (Compression::Zstd, packed) } else { (Compression::None, raw) }
        }
        None => (Compression::None, raw),
    };

    let mut msg = Vec::with_capacity(HEADER_LEN + payload.len());
    msg.extend_from_slice(&MAGIC);
    msg.extend_from_slice(&VERSION.to_le_bytes());
    msg.extend_from_slice(&params.cut.to_le_bytes());
    msg.extend_from_slice(&[params.privacy.mechanism().code(), params.encoding.code(), compression.code(), 0]);
    for d in shape.0 {
        msg.extend_from_slice(&d.to_le_bytes());
    }
    msg.extend_from_slice(&params.privacy.epsilon().unwrap_or(0.0).to_le_bytes());
    msg.extend_from_slice(&params.front_hash.0);
    msg.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    let crc = crc32c::crc32c_append(crc32c::crc32c(&msg), &payload);
    msg.extend_from_slice(&crc.to_le_bytes());
    msg.extend_from_slice(&payload);
    Ok(msg)
}

fn serialize(bits: &Bits, encoding: Encoding) -> Vec<u8> {
    match encoding {
        Encoding::Packed => bits.to_packed(),
        Encoding::F16 => (0..bits.len()).flat_map(|i| (if bits.get(i) { F16_ONE } else { 0 }).to_le_bytes()).collect(),
        Encoding::F32 => (0..bits.len()).flat_map(|i| (if bits.get(i) { F32_ONE } else { 0 }).to_le_bytes()).collect(),
    }
}

/// Validates and decodes a message. Every malformed input is a [`CodecError`]; nothing panics,
/// and nothing larger than the shape allows (bounded by `limits`) is allocated or decompressed.
pub fn decode(msg: &[u8], limits: &DecodeLimits) -> Result<Decoded, CodecError> {
    let got = msg.len() as u64;
    if msg.len() < 6 {
        return Err(CodecError::Truncated { field: "magic and version", needed: 6, got });
    }
    let found: [u8; 4] = msg[0..4].try_into().expect("4 bytes");
    if found != MAGIC {
        return Err(CodecError::BadMagic { found });
    }
    let version = u16::from_le_bytes([msg[4], msg[5]]);
    if version != VERSION {
        return Err(CodecError::UnsupportedVersion { found: version });
    }
    if msg.len() < HEADER_LEN {
        return Err(CodecError::Truncated { field: "header", needed: HEADER_LEN as u64, got });
    }
    let u32_at = |o: usize| u32::from_le_bytes(msg[o..o + 4].try_into().expect("4 bytes"));
    let u64_at = |o: usize| u64::from_le_bytes(msg[o..o + 8].try_into().expect("8 bytes"));

    let payload_len = u64_at(68);
    let available = got - HEADER_LEN as u64;
    if available < payload_len {
        return Err(CodecError::Truncated { field: "payload", needed: (HEADER_LEN as u64).saturating_add(payload_len), got });
    }
    if available > payload_len {
        return Err(CodecError::TrailingBytes { extra: available - payload_len, payload_len });
    }
    let payload = &msg[HEADER_LEN..];
    let stored = u32_at(CHECKSUM_OFFSET);
    let computed = crc32c::crc32c_append(crc32c::crc32c(&msg[..CHECKSUM_OFFSET]), payload);
    if stored != computed {
        return Err(CodecError::ChecksumMismatch { stored, computed });
    }

    let cut = u16::from_le_bytes([msg[6], msg[7]]);
    if cut == 0 {
        return Err(CodecError::InvalidCut);
    }
    let unknown = |offset: usize, field: &'static str, known: &'static str| CodecError::UnknownCode {
        offset,
        field,
        code: msg[offset],
        known,
    };
    let mechanism = Mechanism::from_code(msg[8]).ok_or_else(|| unknown(8, "mechanism", "0 none, 1 sue, 2 rr, 3 oue"))?;
    let encoding = Encoding::from_code(msg[9]).ok_or_else(|| unknown(9, "encoding", "0 packed, 1 f16, 2 f32"))?;
    let compression = Compression::from_code(msg[10]).ok_or_else(|| unknown(10, "compression", "0 none, 1 zstd"))?;
    if msg[11] != 0 {
        return Err(CodecError::ReservedNonZero { offset: 11, field: "reserved", found: msg[11] });
    }
    let shape = Shape([u32_at(12), u32_at(16), u32_at(20), u32_at(24)]);
    shape.check()?;
    let elements = shape.elements();
    if elements > limits.max_elements {
        return Err(CodecError::TooManyElements { shape: shape.0, elements, max: limits.max_elements });
    }
    let epsilon = f64::from_le_bytes(msg[28..36].try_into().expect("8 bytes"));
    let privacy = match mechanism {
        Mechanism::None if epsilon.to_bits() == 0 => Privacy::none(),
        Mechanism::None => return Err(CodecError::EpsilonWithoutNoise { epsilon }),
        m => Privacy::new(m, Some(epsilon))?,
    };
    let front_hash = FrontHash(msg[36..68].try_into().expect("32 bytes"));
    let header = Header { cut, privacy, encoding, compression, shape, front_hash, payload_len };

    let expected = encoding.payload_len(elements);
    let raw = match compression {
        Compression::None => std::borrow::Cow::Borrowed(payload),
        Compression::Zstd => {
            check_single_frame(payload)?;
            std::borrow::Cow::Owned(decompress_bounded(payload, expected)?)
        }
    };
    if raw.len() as u64 != expected {
        return Err(CodecError::PayloadSize { actual: raw.len() as u64, expected });
    }
    // The encoder compresses only when that makes the payload smaller; anything else is padding.
    if compression == Compression::Zstd && payload_len >= expected {
        return Err(CodecError::CompressedNotSmaller { compressed: payload_len, raw: expected });
    }
    let bits = deserialize(&raw, elements as usize, encoding)?;
    Ok(Decoded { header, bits })
}

/// A zstd payload is exactly one zstd frame: no skippable frame (which would carry arbitrary bytes
/// past every size check), nothing after it.
fn check_single_frame(payload: &[u8]) -> Result<(), CodecError> {
    const ZSTD_FRAME_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
    if payload.get(..4) != Some(&ZSTD_FRAME_MAGIC[..]) {
        return Err(CodecError::Zstd("the payload does not start with a zstd frame (skippable frames are not allowed)".into()));
    }
    match zstd::zstd_safe::find_frame_compressed_size(payload) {
        Ok(frame) if frame == payload.len() => Ok(()),
        Ok(frame) => Err(CodecError::ZstdTrailing { frame: frame as u64, payload: payload.len() as u64 }),
        Err(code) => Err(CodecError::Zstd(zstd::zstd_safe::get_error_name(code).to_string())),
    }
}

/// Decompresses at most `expected + 1` bytes, so a zstd bomb costs no more than the shape allows.
fn decompress_bounded(payload: &[u8], expected: u64) -> Result<Vec<u8>, CodecError> {
    match zstd::zstd_safe::get_frame_content_size(payload) {
        Ok(Some(declared)) if declared > expected => {
            return Err(CodecError::DecompressedTooLarge { expected, declared: Some(declared) });
        }
        _ => {}
    }
    let decoder = zstd::stream::read::Decoder::with_buffer(payload).map_err(|e| CodecError::Zstd(e.to_string()))?;
    let mut out = Vec::new();
    decoder.take(expected.saturating_add(1)).read_to_end(&mut out).map_err(|e| CodecError::Zstd(e.to_string()))?;
    if out.len() as u64 > expected {
        return Err(CodecError::DecompressedTooLarge { expected, declared: None });
    }
    Ok(out)
}

fn deserialize(raw: &[u8], len: usize, encoding: Encoding) -> Result<Bits, CodecError> {
    match encoding {
        Encoding::Packed => Bits::from_packed(raw, len),
        Encoding::F16 => {
            let mut elements = Vec::with_capacity(len);
            for (index, c) in raw.chunks_exact(2).enumerate() {
                elements.push(match u16::from_le_bytes([c[0], c[1]]) {
                    0 => 0,
                    F16_ONE => 1,
                    other => return Err(CodecError::NotABit { index, value: half::f16::from_bits(other).to_string() }),
                });
            }
            Bits::from_elements(&elements)
        }
        Encoding::F32 => {
            let mut elements = Vec::with_capacity(len);
            for (index, c) in raw.chunks_exact(4).enumerate() {
                elements.push(match u32::from_le_bytes([c[0], c[1], c[2], c[3]]) {
                    0 => 0,
                    F32_ONE => 1,
                    other => return Err(CodecError::NotABit { index, value: f32::from_bits(other).to_string() }),
                });
            }
            Bits::from_elements(&elements)
        }
    }
}
