//! The privacy codec: what leaves an edge. Knows only floats, bits and bytes — no model, no candle.
//!
//! Pipeline ([`encode`]): the Front's output `&[f32]` is binarized (`x > 0 → 1`, [`binarize`]), every
//! bit goes through randomized response ([`Privacy::randomize`], mechanisms `sue`/`rr`/`oue`/`none`),
//! and the bits are serialized ([`Encoding`]: bit-packed LSB-first, or f16/f32 0/1 floats as
//! baselines), optionally zstd-compressed, behind a self-describing, checksummed header. [`decode`]
//! validates every field and returns a typed [`CodecError`], never panics.
//!
//! The wire format and what ε guarantees are specified in `docs/wire-format.md`.
//!
//! - [`bits`]: packed bit vectors, binarization, packing and unpacking.
//! - [`privacy`]: mechanisms, ε, randomized response, the CSPRNG.
//! - [`wire`]: the message format, [`encode`], [`decode`].
//! - [`stats`]: statistics of a message (fraction of ones, compression ratio).

pub mod bits;
pub mod privacy;
pub mod stats;
pub mod wire;

pub use bits::{Bits, binarize};
pub use privacy::{CodecRng, EPSILON_MAX, Mechanism, Privacy, os_rng, seeded_rng};
pub use stats::Stats;
pub use wire::{
    Compression, DEFAULT_ZSTD_LEVEL, DecodeLimits, Decoded, EncodeParams, Encoding, FrontHash, FrontHasher, HEADER_LEN, Header,
    MAGIC, Shape, VERSION, decode, encode,
};

/// Long `--help` text for a `--mechanism` flag.
pub const MECHANISM_HELP: &str = "\
Randomized response applied to every binarized element (bit = 1 if x > 0):
  sue   symmetric unary encoding (Plato's MistNet): a bit is kept with p = e^(ε/2)/(e^(ε/2)+1), flipped with 1-p
  rr    the MistNet paper's per-bit form: a bit is kept with p = e^ε/(e^ε+1), flipped with 1-p
  oue   optimized unary encoding: a 1 stays 1 with 1/2, a 0 becomes 1 with 1/(e^ε+1)
  none  binarize only: no privacy at all (no --epsilon)";

/// Long `--help` text for an `--epsilon` flag: what ε guarantees, exactly.
pub const EPSILON_HELP: &str = "\
Privacy parameter ε of the randomized response, 0 < ε <= 64 (not allowed with mechanism none). Smaller ε, more noise.

What it guarantees for ONE element (change that element's bit, everything else fixed):
  rr   each bit is ε-LDP;   sue  each bit is ε/2-LDP;   oue  each bit is ln((e^ε+1)/2)-LDP.
  (sue and oue are ε-LDP for a one-hot vector, where two inputs differ in exactly two elements.)
What it means for a whole feature map: it is not one-hot. All k elements come from the same image and two
images may differ in every bit, so the map as a whole is only k × (per-element ε)-LDP in the worst case
(k = 819,200 for yolov5s cut 4 at 640 px). The per-element ε does NOT bound what a whole map reveals about the
image; measure that with model-inversion attacks (`mistnet-cloud privacy`).
Re-uploads: every encoding of the same image draws fresh noise, and T uploads add up to T × the bound above
(basic composition); averaging copies removes the noise.
See docs/wire-format.md, \"What ε guarantees\".";

/// Long `--help` text for an `--encoding` flag.
pub const ENCODING_HELP: &str = "\
How the 0/1 elements are serialized:
  packed  8 elements per byte, LSB first (the default: the 1-bit-per-element floor)
  f16     one IEEE half float (0.0 or 1.0) per element, as Plato sends; a baseline
  f32     one IEEE single float (0.0 or 1.0) per element; a baseline";

/// Everything that can go wrong encoding or decoding a message. Decoder errors name the byte
/// offset and field at fault.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum CodecError {
    #[error("truncated message: {field} needs {needed} bytes, only {got} present")]
    Truncated { field: &'static str, needed: u64, got: u64 },
    #[error("{extra} unexpected bytes after the payload (header says payload_len = {payload_len})")]
    TrailingBytes { extra: u64, payload_len: u64 },
    #[error("bad magic {found:02x?} at byte 0: not a MistNet feature message (expected {MAGIC:02x?})")]
    BadMagic { found: [u8; 4] },
    #[error("unsupported format version {found} at byte 4 (this decoder reads version {VERSION})")]
    UnsupportedVersion { found: u16 },
    #[error("byte {offset} ({field}): unknown code {code}; known: {known}")]
    UnknownCode { offset: usize, field: &'static str, code: u8, known: &'static str },
    #[error("byte {offset} ({field}) is reserved and must be 0, found {found}")]
    ReservedNonZero { offset: usize, field: &'static str, found: u8 },
    #[error("checksum mismatch: header says crc32c {stored:#010x}, header+payload hash to {computed:#010x}")]
    ChecksumMismatch { stored: u32, computed: u32 },
    #[error("invalid cut 0 at byte 6: cuts start at 1")]
    InvalidCut,
    #[error("invalid shape {dims:?}: {reason}")]
    InvalidShape { dims: Vec<usize>, reason: String },
    #[error("shape {shape:?} has {elements} elements, over the limit of {max}")]
    TooManyElements { shape: [u32; 4], elements: u64, max: u64 },
    #[error("{values} values given for shape {shape:?} ({expected} elements)")]
    LengthMismatch { values: usize, shape: [u32; 4], expected: usize },
    #[error("ε = {epsilon} is out of range: it must be finite, 0 < ε <= {max}", max = privacy::EPSILON_MAX)]
    EpsilonOutOfRange { epsilon: f64 },
    #[error("mechanism {mechanism} needs an ε")]
    MissingEpsilon { mechanism: Mechanism },
    #[error("mechanism none adds no noise and takes no ε (got {epsilon})")]
    EpsilonWithoutNoise { epsilon: f64 },
    #[error("unknown mechanism {0:?}; known: sue, rr, oue, none")]
    UnknownMechanism(String),
    #[error("unknown encoding {0:?}; known: packed, f16, f32")]
    UnknownEncoding(String),
    #[error("front hash {0:?} is not 64 hex digits (a SHA-256)")]
    InvalidFrontHash(String),
    #[error("zstd level {level} is out of range {min}..={max}")]
    ZstdLevel { level: i32, min: i32, max: i32 },
    #[error("zstd: {0}")]
    Zstd(String),
    #[error("payload decompresses to more than the {expected} bytes the shape and encoding allow{}",
        declared.map(|d| format!(" (its frame declares {d})")).unwrap_or_default())]
    DecompressedTooLarge { expected: u64, declared: Option<u64> },
    #[error("the zstd payload holds {payload} bytes, its one frame {frame}: a payload is exactly one zstd frame")]
    ZstdTrailing { frame: u64, payload: u64 },
    #[error("the zstd payload ({compressed} bytes) is not smaller than the {raw} bytes it holds: send it uncompressed")]
    CompressedNotSmaller { compressed: u64, raw: u64 },
    #[error("payload holds {actual} bytes, the shape and encoding need exactly {expected}")]
    PayloadSize { actual: u64, expected: u64 },
    #[error("element {index}: value {value} is not 0 or 1")]
    NotABit { index: usize, value: String },
    #[error("input element {index} is NaN")]
    NanInput { index: usize },
    #[error("packed payload: padding bits after element {len} in the last byte must be 0")]
    NonZeroPadding { len: usize },
    #[error("cannot seed the CSPRNG from the operating system: {0}")]
    OsRng(String),
}
