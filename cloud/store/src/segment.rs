//! Segment files: `seg-00000001.log`, … — an 8-byte magic, then framed records appended in order.
//! [`scan`] reads one back; a damaged record ends the scan and is reported as the torn tail.

use std::fs::File;
use std::io::{BufReader, ErrorKind, Read};
use std::path::{Path, PathBuf};

use super::StoreError;
use super::record::{FRAME_HEADER, MAX_PAYLOAD, Record};

/// The first bytes of every segment file.
pub const SEGMENT_MAGIC: &[u8; 8] = b"MNSTORE1";

/// File name of segment `n`.
pub fn segment_name(n: u64) -> String {
    format!("seg-{n:08}.log")
}

/// The segment files of `dir`, by number.
pub fn list(dir: &Path) -> Result<Vec<(u64, PathBuf)>, StoreError> {
    let entries = std::fs::read_dir(dir).map_err(|e| StoreError::io(dir, e))?;
    let mut out = Vec::new();
    for entry in entries {
        let path = entry.map_err(|e| StoreError::io(dir, e))?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if let Some(n) = name.strip_prefix("seg-").and_then(|n| n.strip_suffix(".log")).and_then(|n| n.parse().ok()) {
            out.push((n, path));
        }
    }
    out.sort();
    Ok(out)
}

/// How a segment scan ended.
#[derive(Debug, Clone, PartialEq)]
pub struct ScanEnd {
    /// Bytes of the file that hold whole, valid records (magic included).
    pub valid_len: u64,
    /// Why the bytes after `valid_len` are not a record, if there are any.
    pub damage: Option<String>,
}

/// Reads the records of one segment in order, handing each with its offset to `visit`, and
/// stops at the first damaged one (a short frame, a bad length or checksum, an unparsable payload).
pub fn scan(path: &Path, mut visit: impl FnMut(Record, u64)) -> Result<ScanEnd, StoreError> {
    let file = File::open(path).map_err(|e| StoreError::io(path, e))?;
    let file_len = file.metadata().map_err(|e| StoreError::io(path, e))?.len();
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut magic = [0u8; 8];
    match read_exact_or_eof(&mut reader, &mut magic, path)? {
        true if &magic == SEGMENT_MAGIC => {}
        true => return Err(StoreError::Corrupt { file: path.to_path_buf(), offset: 0, reason: "not a segment file (bad magic)".into() }),
        false => return Ok(ScanEnd { valid_len: 0, damage: Some("segment header is incomplete".into()) }),
    }
    let mut offset = SEGMENT_MAGIC.len() as u64;
    let mut payload = Vec::new();
    loop {
        if offset == file_len {
            return Ok(ScanEnd { valid_len: offset, damage: None });
        }
        let torn = |reason: String| Ok(ScanEnd { valid_len: offset, damage: Some(reason) });
        let mut frame = [0u8; FRAME_HEADER];
        if !read_exact_or_eof(&mut reader, &mut frame, path)? {
            return torn(format!("record header at byte {offset} is incomplete"));
        }
        let len = u32::from_le_bytes(frame[..4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(frame[4..].try_into().expect("4 bytes"));
        if len > MAX_PAYLOAD {
            return torn(format!("record at byte {offset} declares {len} bytes, over the {MAX_PAYLOAD}-byte limit"));
        }
        payload.resize(len, 0);
        if !read_exact_or_eof(&mut reader, &mut payload, path)? {
            return torn(format!("record at byte {offset} is incomplete ({len} bytes declared)"));
        }
        if crc32c::crc32c(&payload) != crc {
            return torn(format!("record at byte {offset} fails its checksum"));
        }
        let record = match Record::from_payload(&payload) {
            Ok(r) => r,
            Err(field) => return torn(format!("record at byte {offset}: field {field} does not parse")),
        };
        visit(record, offset);
        offset += (FRAME_HEADER + len) as u64;
    }
}

/// Fills `buf`; `Ok(false)` when the file ends first.
fn read_exact_or_eof(reader: &mut impl Read, buf: &mut [u8], path: &Path) -> Result<bool, StoreError> {
    match reader.read_exact(buf) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(StoreError::io(path, e)),
    }
}
