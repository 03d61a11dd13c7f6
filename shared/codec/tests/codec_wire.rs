//! The wire format against its specification (`docs/wire-format.md`): messages built by hand from
//! the documented byte layout, round trips through `encode`/`decode`, one test per decoder error,
//! and a property test that the decoder never panics.

use mistnet_codec::{
    Bits, CodecError, Compression, DecodeLimits, EncodeParams, Encoding, FrontHash, HEADER_LEN, Mechanism, Privacy,
    Shape, Stats, binarize, decode, encode, seeded_rng,
};
use proptest::prelude::*;

const HASH: [u8; 32] = [0xab; 32];

/// A message assembled field by field from the documented layout, independently of the encoder.
#[derive(Clone)]
struct RawMessage {
    magic: [u8; 4],
    version: u16,
    cut: u16,
    mechanism: u8,
    encoding: u8,
    compression: u8,
    reserved: u8,
    shape: [u32; 4],
    epsilon: f64,
    payload: Vec<u8>,
}

impl RawMessage {
    /// 11 elements `1,0,0,1,0,0,0,0,0,1,0`, packed, uncompressed, no noise.
    fn valid() -> Self {
        Self {
            magic: *b"MNF\0",
            version: 1,
            cut: 4,
            mechanism: 0,
            encoding: 0,
            compression: 0,
            reserved: 0,
            shape: [1, 1, 1, 11],
            epsilon: 0.0,
            payload: vec![0x09, 0x02],
        }
    }

    fn bytes(&self) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&self.magic);
        m.extend_from_slice(&self.version.to_le_bytes());
        m.extend_from_slice(&self.cut.to_le_bytes());
        m.extend_from_slice(&[self.mechanism, self.encoding, self.compression, self.reserved]);
        for d in self.shape {
            m.extend_from_slice(&d.to_le_bytes());
        }
        m.extend_from_slice(&self.epsilon.to_le_bytes());
        m.extend_from_slice(&HASH);
        m.extend_from_slice(&(self.payload.len() as u64).to_le_bytes());
        assert_eq!(m.len(), 76);
        let crc = crc32c::crc32c_append(crc32c::crc32c(&m), &self.payload);
        m.extend_from_slice(&crc.to_le_bytes());
        m.extend_from_slice(&self.payload);
        m
    }

    fn decode(&self) -> Result<mistnet_codec::Decoded, CodecError> {
        decode(&self.bytes(), &DecodeLimits::default())
    }
}

fn params(privacy: Privacy, encoding: Encoding, zstd_level: Option<i32>) -> EncodeParams {
    EncodeParams { privacy, encoding, zstd_level, cut: 4, front_hash: FrontHash(HASH) }
}

/// Deterministic pseudo-features with about half of the values positive.
fn features(n: usize) -> Vec<f32> {
    (0..n).map(|i| ((i as f32 * 0.7).sin() * 3.0 + 0.1).round() - 0.5).collect()
}

fn all_privacies() -> Vec<Privacy> {
    let mut v = vec![Privacy::none()];
    for m in [Mechanism::Sue, Mechanism::Rr, Mechanism::Oue] {
        v.push(Privacy::new(m, Some(1.5)).unwrap());
    }
    v
}

#[test]
fn crc32c_is_the_castagnoli_crc() {
    assert_eq!(crc32c::crc32c(b"123456789"), 0xe306_9283);
}

#[test]
fn a_hand_built_message_decodes_and_the_encoder_writes_the_same_bytes() {
    let raw = RawMessage::valid();
    let d = raw.decode().unwrap();
    assert_eq!(d.header.cut, 4);
    assert_eq!(d.header.privacy, Privacy::none());
    assert_eq!(d.header.encoding, Encoding::Packed);
    assert_eq!(d.header.compression, Compression::None);
    assert_eq!(d.header.shape, Shape([1, 1, 1, 11]));
    assert_eq!(d.header.front_hash.to_string(), "ab".repeat(32));
    assert_eq!(d.bits.to_elements(), [1, 0, 0, 1, 0, 0, 0, 0, 0, 1, 0]);

    let values = [2.0, 0.0, -1.0, 0.5, -0.0, -3.0, 0.0, -1.0, 0.0, 9.0, -2.0];
    let encoded = encode(&values, &[1, 1, 11], &params(Privacy::none(), Encoding::Packed, None), &mut seeded_rng(0)).unwrap();
    assert_eq!(encoded, raw.bytes());
}

#[test]
fn hand_built_f16_f32_and_noisy_headers_decode() {
    let mut f16 = RawMessage { encoding: 1, shape: [1, 1, 1, 3], ..RawMessage::valid() };
    f16.payload = vec![0x00, 0x3c, 0x00, 0x00, 0x00, 0x3c];
    assert_eq!(f16.decode().unwrap().bits.to_elements(), [1, 0, 1]);
    let mut f32 = RawMessage { encoding: 2, shape: [1, 1, 1, 2], mechanism: 3, epsilon: 0.5, ..RawMessage::valid() };
    f32.payload = vec![0, 0, 0, 0, 0x00, 0x00, 0x80, 0x3f];
    let d = f32.decode().unwrap();
    assert_eq!(d.bits.to_elements(), [0, 1]);
    assert_eq!(d.header.privacy, Privacy::new(Mechanism::Oue, Some(0.5)).unwrap());
}

#[test]
fn every_mechanism_and_encoding_round_trips_odd_shapes() {
    for dims in [vec![1, 3, 5, 7], vec![2, 1, 3, 3], vec![3, 4, 4], vec![1, 1, 1, 1]] {
        let n: usize = dims.iter().product();
        let values = features(n);
        for privacy in all_privacies() {
            // The bits the encoder must have produced: same seed, same steps.
            let mut expected = binarize(&values).unwrap();
            privacy.randomize(&mut expected, &mut seeded_rng(42));
            for encoding in Encoding::ALL {
                for level in [None, Some(1), Some(19)] {
                    let p = params(privacy, encoding, level);
                    let msg = encode(&values, &dims, &p, &mut seeded_rng(42)).unwrap();
                    let d = decode(&msg, &DecodeLimits::default()).unwrap();
                    let ctx = format!("{dims:?} {} {encoding} {level:?}", privacy.mechanism());
                    assert_eq!(d.bits, expected, "{ctx}");
                    assert_eq!(d.header.privacy, privacy, "{ctx}");
                    assert_eq!(d.header.encoding, encoding, "{ctx}");
                    assert_eq!(d.header.cut, 4, "{ctx}");
                    assert_eq!(d.header.shape, Shape::from_dims(&dims).unwrap(), "{ctx}");
                    assert_eq!(d.header.payload_len as usize, msg.len() - HEADER_LEN, "{ctx}");
                    if level.is_none() {
                        assert_eq!(d.header.compression, Compression::None, "{ctx}");
                    }
                }
            }
        }
    }
}

#[test]
fn compressible_payloads_are_zstd_and_random_ones_stored() {
    let zeros = vec![-1.0f32; 4096];
    let p = params(Privacy::none(), Encoding::F32, Some(3));
    let msg = encode(&zeros, &[1, 4, 32, 32], &p, &mut seeded_rng(0)).unwrap();
    let d = decode(&msg, &DecodeLimits::default()).unwrap();
    assert_eq!(d.header.compression, Compression::Zstd);
    assert!(msg.len() < 200, "{} bytes", msg.len());
    // Noise at ε = 0.01 is essentially fair coins: zstd cannot shrink packed bits.
    let noisy = params(Privacy::new(Mechanism::Rr, Some(0.01)).unwrap(), Encoding::Packed, Some(3));
    let msg = encode(&zeros, &[4, 32, 32], &noisy, &mut seeded_rng(0)).unwrap();
    assert_eq!(decode(&msg, &DecodeLimits::default()).unwrap().header.compression, Compression::None);
    assert_eq!(msg.len(), HEADER_LEN + 4096 / 8);
}

#[test]
fn stats_report_ones_and_sizes() {
    let d = RawMessage::valid().decode().unwrap();
    let s = Stats::of(&d, HEADER_LEN + 2);
    assert_eq!((s.elements, s.ones, s.message_bytes, s.payload_bytes), (11, 3, 82, 2));
    assert!((s.fraction_ones() - 3.0 / 11.0).abs() < 1e-12);
    assert!((s.compression_ratio() - 44.0 / 82.0).abs() < 1e-12);
    assert!((s.bits_per_element() - 8.0 * 82.0 / 11.0).abs() < 1e-12);
}

// ---- every decoder error ----

fn err(raw: &RawMessage) -> CodecError {
    raw.decode().unwrap_err()
}

#[test]
fn truncated_and_trailing_bytes() {
    let msg = RawMessage::valid().bytes();
    let limits = DecodeLimits::default();
    assert_eq!(decode(&[], &limits).unwrap_err(), CodecError::Truncated { field: "magic and version", needed: 6, got: 0 });
    assert_eq!(decode(&msg[..50], &limits).unwrap_err(), CodecError::Truncated { field: "header", needed: 80, got: 50 });
    assert_eq!(decode(&msg[..81], &limits).unwrap_err(), CodecError::Truncated { field: "payload", needed: 82, got: 81 });
    let mut long = msg.clone();
    long.push(0);
    assert_eq!(decode(&long, &limits).unwrap_err(), CodecError::TrailingBytes { extra: 1, payload_len: 2 });
    // A payload_len near u64::MAX must not overflow.
    let mut huge = msg.clone();
    huge[68..76].copy_from_slice(&u64::MAX.to_le_bytes());
    assert_eq!(decode(&huge, &limits).unwrap_err(), CodecError::Truncated { field: "payload", needed: u64::MAX, got: 82 });
}

#[test]
fn bad_magic_and_unknown_version() {
    assert_eq!(err(&RawMessage { magic: *b"PK\x03\x04", ..RawMessage::valid() }), CodecError::BadMagic { found: *b"PK\x03\x04" });
    assert_eq!(err(&RawMessage { version: 2, ..RawMessage::valid() }), CodecError::UnsupportedVersion { found: 2 });
    assert_eq!(err(&RawMessage { version: 0, ..RawMessage::valid() }), CodecError::UnsupportedVersion { found: 0 });
}

#[test]
fn checksum_mismatch_in_header_or_payload() {
    let msg = RawMessage::valid().bytes();
    for i in [6, 8, 30, 40, 76, 80, 81] {
        let mut m = msg.clone();
        m[i] ^= 0x10;
        assert!(matches!(decode(&m, &DecodeLimits::default()), Err(CodecError::ChecksumMismatch { .. })), "byte {i}");
    }
}

#[test]
fn unknown_codes_reserved_byte_and_cut() {
    let unknown = |offset, code| match err(&{
        let mut r = RawMessage::valid();
        match offset {
            8 => r.mechanism = code,
            9 => r.encoding = code,
            _ => r.compression = code,
        }
        r
    }) {
        CodecError::UnknownCode { offset: o, code: c, .. } => (o, c),
        other => panic!("offset {offset}: {other}"),
    };
    assert_eq!(unknown(8, 4), (8, 4));
    assert_eq!(unknown(9, 3), (9, 3));
    assert_eq!(unknown(10, 255), (10, 255));
    assert_eq!(
        err(&RawMessage { reserved: 1, ..RawMessage::valid() }),
        CodecError::ReservedNonZero { offset: 11, field: "reserved", found: 1 }
    );
    assert_eq!(err(&RawMessage { cut: 0, ..RawMessage::valid() }), CodecError::InvalidCut);
}

#[test]
fn shape_errors() {
    assert!(matches!(err(&RawMessage { shape: [1, 0, 1, 11], ..RawMessage::valid() }), CodecError::InvalidShape { .. }));
    assert_eq!(
        err(&RawMessage { shape: [u32::MAX; 4], ..RawMessage::valid() }),
        CodecError::TooManyElements { shape: [u32::MAX; 4], elements: u64::MAX, max: 1 << 26 }
    );
    let small = DecodeLimits { max_elements: 10 };
    assert!(matches!(decode(&RawMessage::valid().bytes(), &small), Err(CodecError::TooManyElements { elements: 11, .. })));
    // Shape and payload disagree.
    assert_eq!(
        err(&RawMessage { shape: [1, 1, 1, 17], ..RawMessage::valid() }),
        CodecError::PayloadSize { actual: 2, expected: 3 }
    );
    assert_eq!(
        err(&RawMessage { shape: [1, 1, 1, 8], ..RawMessage::valid() }),
        CodecError::PayloadSize { actual: 2, expected: 1 }
    );
}

#[test]
fn epsilon_out_of_range_or_with_none() {
    for (mechanism, epsilon) in [(1, 0.0), (2, -1.0), (3, 64.5), (1, f64::NAN), (2, f64::INFINITY), (3, -0.0)] {
        let e = err(&RawMessage { mechanism, epsilon, ..RawMessage::valid() });
        assert!(matches!(e, CodecError::EpsilonOutOfRange { .. }), "{mechanism} {epsilon}: {e}");
    }
    assert!(RawMessage { mechanism: 2, epsilon: 64.0, ..RawMessage::valid() }.decode().is_ok());
    assert_eq!(err(&RawMessage { epsilon: 1.0, ..RawMessage::valid() }), CodecError::EpsilonWithoutNoise { epsilon: 1.0 });
    assert!(matches!(err(&RawMessage { epsilon: -0.0, ..RawMessage::valid() }), CodecError::EpsilonWithoutNoise { .. }));
}

#[test]
fn values_that_are_not_bits() {
    let f16 = |payload: Vec<u8>| err(&RawMessage { encoding: 1, shape: [1, 1, 1, 2], payload, ..RawMessage::valid() });
    assert_eq!(f16(vec![0, 0, 0x00, 0x38]), CodecError::NotABit { index: 1, value: "0.5".into() });
    assert_eq!(f16(vec![0x00, 0x7e, 0, 0]), CodecError::NotABit { index: 0, value: "NaN".into() });
    assert_eq!(f16(vec![0x00, 0x80, 0, 0]), CodecError::NotABit { index: 0, value: "-0".into() });
    let f32 = |payload: Vec<u8>| err(&RawMessage { encoding: 2, shape: [1, 1, 1, 2], payload, ..RawMessage::valid() });
    assert_eq!(f32([0f32, f32::NAN].iter().flat_map(|v| v.to_le_bytes()).collect()), CodecError::NotABit { index: 1, value: "NaN".into() });
    assert_eq!(f32([2f32, 1.0].iter().flat_map(|v| v.to_le_bytes()).collect()), CodecError::NotABit { index: 0, value: "2".into() });
    assert_eq!(
        err(&RawMessage { payload: vec![0x09, 0x0a], ..RawMessage::valid() }),
        CodecError::NonZeroPadding { len: 11 }
    );
}

#[test]
fn zstd_bombs_and_garbage_are_refused() {
    // 10 MB of zeros in a few hundred bytes, for a shape that allows 2 bytes.
    let bomb = zstd::bulk::compress(&vec![0u8; 10_000_000], 19).unwrap();
    assert!(bomb.len() < 2000);
    let e = err(&RawMessage { compression: 1, payload: bomb, ..RawMessage::valid() });
    assert_eq!(e, CodecError::DecompressedTooLarge { expected: 2, declared: Some(10_000_000) });
    // Without a declared content size the decoder must stop by itself.
    let mut streamed = Vec::new();
    let mut enc = zstd::stream::write::Encoder::new(&mut streamed, 19).unwrap();
    std::io::copy(&mut std::io::repeat(0).take(10_000_000), &mut enc).unwrap();
    enc.finish().unwrap();
    assert!(matches!(zstd::zstd_safe::get_frame_content_size(&streamed), Ok(None)));
    let e = err(&RawMessage { compression: 1, payload: streamed, ..RawMessage::valid() });
    assert_eq!(e, CodecError::DecompressedTooLarge { expected: 2, declared: None });
    // Too short after decompression.
    let short = zstd::bulk::compress(&[0x09], 1).unwrap();
    assert_eq!(err(&RawMessage { compression: 1, payload: short, ..RawMessage::valid() }), CodecError::PayloadSize { actual: 1, expected: 2 });
    // Not zstd at all.
    assert!(matches!(err(&RawMessage { compression: 1, payload: vec![1, 2, 3, 4, 5], ..RawMessage::valid() }), CodecError::Zstd(_)));
}

use std::io::Read as _;

#[test]
fn encoder_refuses_bad_input() {
    let p = params(Privacy::none(), Encoding::Packed, None);
    let mut rng = seeded_rng(0);
    assert_eq!(
        encode(&[1.0; 5], &[1, 2, 3], &p, &mut rng),
        Err(CodecError::LengthMismatch { values: 5, shape: [1, 1, 2, 3], expected: 6 })
    );
    assert_eq!(encode(&[1.0, f32::NAN], &[1, 1, 2], &p, &mut rng), Err(CodecError::NanInput { index: 1 }));
    assert!(matches!(encode(&[1.0; 4], &[2, 2], &p, &mut rng), Err(CodecError::InvalidShape { .. })));
    assert!(matches!(encode(&[], &[0, 2, 2], &p, &mut rng), Err(CodecError::InvalidShape { .. })));
    let bad_level = params(Privacy::none(), Encoding::Packed, Some(99));
    assert!(matches!(encode(&[1.0; 4], &[1, 2, 2], &bad_level, &mut rng), Err(CodecError::ZstdLevel { level: 99, .. })));
    assert!(matches!("xyz".parse::<FrontHash>(), Err(CodecError::InvalidFrontHash(_))));
    assert_eq!("ab".repeat(32).parse::<FrontHash>().unwrap(), FrontHash(HASH));
    assert_eq!("f16".parse::<Encoding>().unwrap(), Encoding::F16);
    assert!(matches!("f64".parse::<Encoding>(), Err(CodecError::UnknownEncoding(_))));
}

// ---- the decoder never panics ----

fn valid_messages() -> Vec<Vec<u8>> {
    let values = features(45);
    let mut out = vec![RawMessage::valid().bytes()];
    for encoding in Encoding::ALL {
        for level in [None, Some(1)] {
            let p = params(Privacy::new(Mechanism::Sue, Some(2.0)).unwrap(), encoding, level);
            out.push(encode(&values, &[1, 5, 3, 3], &p, &mut seeded_rng(3)).unwrap());
        }
    }
    out.push(encode(&vec![0.0; 4000], &[1, 10, 20, 20], &params(Privacy::none(), Encoding::F16, Some(3)), &mut seeded_rng(3)).unwrap());
    out
}

/// Recomputes the checksum so that mutations reach the field checks behind it.
fn reseal(m: &mut [u8]) {
    if m.len() >= HEADER_LEN {
        let crc = crc32c::crc32c_append(crc32c::crc32c(&m[..76]), &m[HEADER_LEN..]);
        m[76..80].copy_from_slice(&crc.to_le_bytes());
    }
}

fn check_consistent(result: Result<mistnet_codec::Decoded, CodecError>) {
    if let Ok(d) = result {
        assert_eq!(d.bits.len() as u64, d.header.shape.elements());
        assert!(Bits::from_packed(&d.bits.to_packed(), d.bits.len()).is_ok());
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn decoder_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        check_consistent(decode(&bytes, &DecodeLimits::default()));
    }

    #[test]
    fn decoder_never_panics_on_arbitrary_bytes_behind_a_valid_prefix(
        tail in proptest::collection::vec(any::<u8>(), 0..400), seal in any::<bool>()
    ) {
        let mut m = RawMessage::valid().bytes()[..12].to_vec();
        m.extend_from_slice(&tail);
        if seal { reseal(&mut m); }
        check_consistent(decode(&m, &DecodeLimits::default()));
    }

    #[test]
    fn decoder_never_panics_on_mutated_messages(
        which in 0usize..8,
        edits in proptest::collection::vec((any::<proptest::sample::Index>(), any::<u8>()), 1..6),
        cut in proptest::option::of(any::<proptest::sample::Index>()),
        seal in any::<bool>(),
    ) {
        let messages = valid_messages();
        let mut m = messages[which % messages.len()].clone();
        for (i, b) in edits {
            let i = i.index(m.len());
            m[i] = b;
        }
        if let Some(c) = cut { m.truncate(c.index(m.len())); }
        if seal { reseal(&mut m); }
        check_consistent(decode(&m, &DecodeLimits::default()));
    }
}

#[test]
fn a_zstd_payload_is_one_frame_smaller_than_what_it_holds() {
    // A real packed, zstd-compressed message of a compressible map.
    let params = params(Privacy::none(), Encoding::Packed, Some(3));
    let msg = encode(&vec![1.0; 4096], &[1, 1, 64, 64], &params, &mut seeded_rng(0)).unwrap();
    let good = decode(&msg, &DecodeLimits::default()).unwrap();
    assert_eq!(good.header.compression, Compression::Zstd);
    let payload = msg[HEADER_LEN..].to_vec();
    let with = |payload: Vec<u8>| RawMessage { compression: 1, shape: [1, 1, 64, 64], payload, ..RawMessage::valid() };
    assert_eq!(with(payload.clone()).decode().unwrap().bits, good.bits, "the hand-built copy decodes");

    // Padded with a skippable frame after the real one (the padding attack), or before it.
    let mut skippable = vec![0x50, 0x2a, 0x4d, 0x18];
    skippable.extend_from_slice(&1000u32.to_le_bytes());
    skippable.extend(std::iter::repeat_n(0u8, 1000));
    let padded = [payload.clone(), skippable.clone()].concat();
    assert_eq!(err(&with(padded.clone())), CodecError::ZstdTrailing { frame: payload.len() as u64, payload: padded.len() as u64 });
    assert!(matches!(err(&with([skippable, payload.clone()].concat())), CodecError::Zstd(m) if m.contains("skippable")));
    // Two frames holding the halves.
    let half = zstd::bulk::compress(&vec![0xff; 256], 3).unwrap();
    assert!(matches!(err(&with([half.clone(), half].concat())), CodecError::ZstdTrailing { .. }));
    // One frame of exactly the right content, no smaller than the raw 512 bytes (incompressible
    // bits go into a raw zstd block, plus the frame's own header).
    use rand::{RngCore, SeedableRng};
    let mut random = vec![0u8; 512];
    rand::rngs::StdRng::seed_from_u64(3).fill_bytes(&mut random);
    let frame = zstd::bulk::compress(&random, 1).unwrap();
    assert!(frame.len() >= 512, "{} bytes", frame.len());
    assert_eq!(err(&with(frame.clone())), CodecError::CompressedNotSmaller { compressed: frame.len() as u64, raw: 512 });
}
