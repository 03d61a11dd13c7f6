//! Fuzz target: `mistnet_codec::decode` must return `Ok` or a `CodecError` for any input, never
//! panic, overflow or allocate past the shape's bound. The first input byte picks a mode: raw
//! bytes, or the rest of the input as edits (offset, value pairs) to a valid message, with the
//! checksum recomputed so the edits reach the field checks behind it.
//!
//! `cd fuzz && cargo +nightly fuzz run decode` (see docs/wire-format.md).
#![no_main]

use libfuzzer_sys::fuzz_target;
use mistnet_codec::{DecodeLimits, EncodeParams, Encoding, FrontHash, HEADER_LEN, Mechanism, Privacy, decode, encode, seeded_rng};

fn valid_message(encoding: Encoding, zstd: bool) -> Vec<u8> {
    let values: Vec<f32> = (0..45).map(|i| (i as f32 * 0.7).sin()).collect();
    let params = EncodeParams {
        privacy: Privacy::new(Mechanism::Sue, Some(2.0)).expect("valid ε"),
        encoding,
        zstd_level: zstd.then_some(1),
        cut: 4,
        front_hash: FrontHash([7; 32]),
    };
    encode(&values, &[1, 5, 3, 3], &params, &mut seeded_rng(0)).expect("valid input")
}

fuzz_target!(|data: &[u8]| {
    let limits = DecodeLimits::default();
    let Some((&mode, rest)) = data.split_first() else { return };
    let result = if mode % 2 == 0 {
        decode(rest, &limits)
    } else {
        let encoding = Encoding::ALL[usize::from(mode / 2) % 3];
        let mut msg = valid_message(encoding, mode & 0x40 != 0);
        for edit in rest.chunks_exact(3) {
            let at = usize::from(u16::from_le_bytes([edit[0], edit[1]])) % msg.len();
            msg[at] = edit[2];
        }
        if mode & 0x80 != 0 {
            let crc = crc32c::crc32c_append(crc32c::crc32c(&msg[..76]), &msg[HEADER_LEN..]);
            msg[76..80].copy_from_slice(&crc.to_le_bytes());
        }
        decode(&msg, &limits)
    };
    if let Ok(d) = result {
        assert_eq!(d.bits.len() as u64, d.header.shape.elements());
    }
});
