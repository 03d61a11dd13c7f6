//! Fuzz target: the feature store's record parser and segment scanner must return a record, a
//! damage report or an error for any bytes, never panic or allocate past the file. The first input
//! byte picks a mode: the rest as a record payload and as a segment file's bytes (magic prepended
//! or not), or the rest as edits (offset, value pairs) to a valid three-record segment, with the
//! edited records' checksums recomputed or not. Every record the scanner hands back must be the
//! exact bytes at its offset, and the records and damage it reports must tile the file in order.
//!
//! `cd fuzz && cargo +nightly fuzz run store_record`.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use mistnet_data::Label;
use mistnet_store::record::{FRAME_HEADER, Record, RecordKind};
use mistnet_store::segment::{SEGMENT_MAGIC, scan_bytes};

fn valid_segment() -> (Vec<u8>, Vec<usize>) {
    let sample = Record {
        kind: RecordKind::Sample,
        edge: "edge-1".into(),
        sample_id: "images/a.jpg".into(),
        epsilon: 2.0,
        labels: vec![Label { class: 3, cx: 0.5, cy: 0.25, w: 0.1, h: 0.2 }],
        image_size: (640, 480),
        features: (0..40).collect(),
    };
    let spend = Record { kind: RecordKind::Spend, labels: vec![], features: vec![], image_size: (0, 0), ..sample.clone() };
    let other = Record { sample_id: "images/b.jpg".into(), labels: vec![], ..sample.clone() };
    let mut file = SEGMENT_MAGIC.to_vec();
    let mut starts = Vec::new();
    for r in [sample, spend, other] {
        starts.push(file.len());
        r.write_frame(&mut file);
    }
    (file, starts)
}

/// Scans `file` and checks the scan's account of it.
fn scan_and_check(file: &[u8]) {
    let mut records = Vec::new();
    let Ok(end) = scan_bytes(file, Path::new("fuzz-segment.log"), |r, at| records.push((r, at))) else { return };
    let len = file.len() as u64;
    // Records in order, each the canonical frame found at its offset.
    let mut pieces: Vec<(u64, u64)> = Vec::new();
    for (r, at) in &records {
        let frame = r.to_frame();
        let at = *at as usize;
        assert_eq!(&file[at..at + frame.len()], &frame[..], "record at {at} is not the bytes there");
        pieces.push((at as u64, (at + frame.len()) as u64));
    }
    pieces.extend(end.corrupt.iter().map(|d| (d.start, d.end)));
    if let Some(t) = &end.torn_tail {
        assert_eq!(t.end, len, "a torn tail runs to the end of the file");
        assert!(t.start >= end.valid_len);
        pieces.push((t.start, t.end));
    }
    pieces.sort();
    if end.valid_len == 0 {
        // Shorter than the magic: all torn.
        assert!(records.is_empty() && len < SEGMENT_MAGIC.len() as u64);
        return;
    }
    let mut at = SEGMENT_MAGIC.len() as u64;
    for (start, stop) in pieces {
        assert_eq!(start, at, "records and damage tile the file");
        assert!(stop > start);
        at = stop;
    }
    assert_eq!(at, len);
    assert!(end.valid_len <= len);
    for d in &end.corrupt {
        assert!(d.end <= end.valid_len, "corruption is followed by a valid record");
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    if mode % 2 == 0 {
        if let Ok(r) = Record::from_payload(rest) {
            assert_eq!(&r.to_frame()[FRAME_HEADER..], rest, "a parsed payload re-encodes to itself");
        }
        let file = if mode & 2 != 0 { [SEGMENT_MAGIC.as_slice(), rest].concat() } else { rest.to_vec() };
        scan_and_check(&file);
    } else {
        let (mut file, starts) = valid_segment();
        let mut touched = [false; 3];
        for edit in rest.chunks_exact(3) {
            let at = usize::from(u16::from_le_bytes([edit[0], edit[1]])) % file.len();
            file[at] = edit[2];
            if let Some(i) = starts.iter().rposition(|&s| s <= at) {
                touched[i] = true;
            }
        }
        if mode & 0x80 != 0 {
            // Recompute the checksums of the edited records whose declared length still fits.
            for (i, &s) in starts.iter().enumerate() {
                let len = u32::from_le_bytes(file[s..s + 4].try_into().unwrap()) as usize;
                if touched[i] && s + FRAME_HEADER + len <= file.len() {
                    let crc = crc32c::crc32c(&file[s + FRAME_HEADER..s + FRAME_HEADER + len]);
                    file[s + 4..s + 8].copy_from_slice(&crc.to_le_bytes());
                }
            }
        }
        if mode & 0x40 != 0 {
            file.truncate(usize::from(mode & 0x3f) * file.len() / 64);
        }
        scan_and_check(&file);
    }
});
