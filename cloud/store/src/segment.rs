//! Segment files: `seg-00000001.log`, … — an 8-byte magic, then framed records appended in order.
//! [`scan`] reads one back and tells corruption (damage with valid records after it) from the torn
//! tail a crash leaves (damage that runs to the end of the file).

use std::fs::File;
use std::io::{BufReader, Cursor, ErrorKind, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use super::StoreError;
use super::record::{FRAME_HEADER, MAX_PAYLOAD, Record, RecordKind};

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

/// A stretch of a segment file that holds no valid record.
#[derive(Debug, Clone, PartialEq)]
pub struct Damage {
    /// Byte offset where the damage starts.
    pub start: u64,
    /// Byte offset of the first valid record after it, or the file's length.
    pub end: u64,
    pub reason: String,
}

/// How a segment scan ended.
#[derive(Debug, Clone, PartialEq)]
pub struct ScanEnd {
    /// End of the last valid record (the magic's end if there is none).
    pub valid_len: u64,
    /// Damage followed by valid records: corruption at rest (a flipped bit, an overwritten block).
    /// Each valid record after it was still handed to `visit`.
    pub corrupt: Vec<Damage>,
    /// Damage that no valid record follows: the tail a write cut short by a crash leaves. (A flipped
    /// bit in the very last record looks the same; only that record is lost with it.)
    pub torn_tail: Option<Damage>,
}

/// Reads the records of one segment in order, handing each with its offset to `visit`. A damaged
/// record (a short frame, a bad length or checksum, an unparsable payload) does not end the scan:
/// the scanner looks for the next valid record after it, so damage is told apart from a torn tail.
pub fn scan(path: &Path, visit: impl FnMut(Record, u64)) -> Result<ScanEnd, StoreError> {
    let file = File::open(path).map_err(|e| StoreError::io(path, e))?;
    let file_len = file.metadata().map_err(|e| StoreError::io(path, e))?.len();
    scan_from(BufReader::with_capacity(1 << 20, file), file_len, path, visit)
}

/// [`scan`] of a segment already in memory; `path` only names it in errors (the fuzz target's
/// entry point: no file is written per input).
pub fn scan_bytes(bytes: &[u8], path: &Path, visit: impl FnMut(Record, u64)) -> Result<ScanEnd, StoreError> {
    scan_from(Cursor::new(bytes), bytes.len() as u64, path, visit)
}

fn scan_from(mut reader: impl Read + Seek, file_len: u64, path: &Path, mut visit: impl FnMut(Record, u64)) -> Result<ScanEnd, StoreError> {
    let mut magic = [0u8; 8];
    match read_exact_or_eof(&mut reader, &mut magic, path)? {
        true if &magic == SEGMENT_MAGIC => {}
        true => return Err(StoreError::Corrupt { file: path.to_path_buf(), offset: 0, reason: "not a segment file (bad magic)".into() }),
        false => {
            let torn = Damage { start: 0, end: file_len, reason: "segment header is incomplete".into() };
            return Ok(ScanEnd { valid_len: 0, corrupt: Vec::new(), torn_tail: Some(torn) });
        }
    }
    // The streaming pass, until the end or the first damage.
    let streamed = stream_records(&mut reader, SEGMENT_MAGIC.len() as u64, file_len, path, &mut visit)?;
    let (offset, Some(reason)) = (streamed.end, streamed.stopped) else {
        return Ok(ScanEnd { valid_len: streamed.end, corrupt: Vec::new(), torn_tail: None });
    };
    // Damage at `offset`: the rest of the file, in memory, is searched for valid records.
    let mut rest = Vec::new();
    reader.seek(SeekFrom::Start(offset)).map_err(|e| StoreError::io(path, e))?;
    reader.read_to_end(&mut rest).map_err(|e| StoreError::io(path, e))?;
    let base = offset;
    let (mut at, mut valid_len) = (0usize, offset);
    let mut corrupt = Vec::new();
    let mut damage = Some((0usize, reason));
    loop {
        if let Some((start, reason)) = damage.take() {
            match next_valid(&rest, start + 1) {
                Some(next) => {
                    corrupt.push(Damage { start: base + start as u64, end: base + next as u64, reason });
                    at = next;
                }
                None => {
                    let torn = Damage { start: base + start as u64, end: file_len, reason };
                    return Ok(ScanEnd { valid_len, corrupt, torn_tail: Some(torn) });
                }
            }
        }
        if at == rest.len() {
            return Ok(ScanEnd { valid_len, corrupt, torn_tail: None });
        }
        match frame_at(&rest, at) {
            Ok((record, frame_len)) => {
                visit(record, base + at as u64);
                at += frame_len;
                valid_len = base + at as u64;
            }
            Err(why) => damage = Some((at, format!("record at byte {} {why}", base + at as u64))),
        }
    }
}

/// What [`scan_tail`] found from its starting offset on.
#[derive(Debug, Clone, PartialEq)]
pub struct Tail {
    /// End of the last whole record read (the starting offset if none; 0 while the magic is incomplete).
    pub end: u64,
    /// Start and frame header (length, checksum) of the last whole record read: a later scan checks
    /// that those bytes are still there, i.e. that the file was not cut back or rewritten since.
    pub last: Option<(u64, [u8; FRAME_HEADER])>,
    /// The bytes from `end` on, when they are not a whole record (yet); `None` when `end` is the
    /// file's length.
    pub pending: Option<Pending>,
}

/// Bytes after the last whole record that do not frame one: a record being appended right now,
/// the torn tail of a crash, or damage.
#[derive(Debug, Clone, PartialEq)]
pub struct Pending {
    pub start: u64,
    pub reason: String,
    /// The offset of the first valid record after `start`, if any: damage then lies before valid
    /// records (corruption at rest, unless a record that is still being written happens to hold the
    /// bytes of one).
    pub next_valid: Option<u64>,
}

/// Reads the whole records of one segment from byte `from` on (0: from the start, magic
/// included) and hands each with its offset to `visit`, stopping at the first bytes that are no
/// whole record. Never writes, and never treats an incomplete record as an error: the caller
/// decides what [`Tail::pending`] is (`FeatureStore`'s follower: "not yet written" in the live
/// segment). A file shorter than `from` is reported pending at `from` with no bytes.
pub fn scan_tail(path: &Path, from: u64, mut visit: impl FnMut(Record, u64)) -> Result<Tail, StoreError> {
    let file = File::open(path).map_err(|e| StoreError::io(path, e))?;
    let file_len = file.metadata().map_err(|e| StoreError::io(path, e))?.len();
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let pending = |start: u64, reason: String, next_valid| Some(Pending { start, reason, next_valid });
    let mut offset = from;
    if from < SEGMENT_MAGIC.len() as u64 {
        let mut magic = [0u8; 8];
        if !read_exact_or_eof(&mut reader, &mut magic, path)? {
            return Ok(Tail { end: 0, last: None, pending: pending(0, "segment header is incomplete".into(), None) });
        }
        if &magic != SEGMENT_MAGIC {
            return Err(StoreError::Corrupt { file: path.to_path_buf(), offset: 0, reason: "not a segment file (bad magic)".into() });
        }
        offset = SEGMENT_MAGIC.len() as u64;
    } else {
        if file_len < from {
            return Ok(Tail { end: from, last: None, pending: pending(from, format!("the file is {file_len} bytes, shorter than the {from} already read"), None) });
        }
        reader.seek(SeekFrom::Start(from)).map_err(|e| StoreError::io(path, e))?;
    }
    let streamed = stream_records(&mut reader, offset, file_len, path, &mut visit)?;
    let (offset, last) = (streamed.end, streamed.last);
    let Some(reason) = streamed.stopped else { return Ok(Tail { end: offset, last, pending: None }) };
    // Is there a valid record after the bytes that are none? Only the bytes the file held when the
    // scan started are searched (a record appended since is read by the next scan).
    let mut rest = Vec::new();
    reader.seek(SeekFrom::Start(offset)).map_err(|e| StoreError::io(path, e))?;
    (&mut reader).take(file_len - offset).read_to_end(&mut rest).map_err(|e| StoreError::io(path, e))?;
    let next_valid = next_valid(&rest, 1).map(|at| offset + at as u64);
    Ok(Tail { end: offset, last, pending: pending(offset, reason, next_valid) })
}

/// Where [`stream_records`] stopped.
struct Streamed {
    /// The offset after the last whole record read.
    end: u64,
    /// That record's offset and frame header.
    last: Option<(u64, [u8; FRAME_HEADER])>,
    /// Why it stopped before the end of the file: the bytes at `end` are no whole, valid record.
    stopped: Option<String>,
}

/// Reads records from `reader`, positioned at `offset`, until `file_len` or the first bytes that
/// are no whole, valid record, handing each with its offset to `visit`: the streaming pass that
/// [`scan`] and [`scan_tail`] share.
fn stream_records(reader: &mut impl Read, mut offset: u64, file_len: u64, path: &Path, visit: &mut impl FnMut(Record, u64)) -> Result<Streamed, StoreError> {
    let mut last = None;
    let mut payload = Vec::new();
    let stopped = loop {
        if offset == file_len {
            break None;
        }
        let mut frame = [0u8; FRAME_HEADER];
        if !read_exact_or_eof(reader, &mut frame, path)? {
            break Some(format!("record header at byte {offset} is incomplete"));
        }
        let len = u32::from_le_bytes(frame[..4].try_into().expect("4 bytes")) as usize;
        if len > MAX_PAYLOAD {
            break Some(format!("record at byte {offset} declares {len} bytes, over the {MAX_PAYLOAD}-byte limit"));
        }
        // Checked before allocating: a damaged header must not cost a 64 MiB buffer.
        if offset + (FRAME_HEADER + len) as u64 > file_len {
            break Some(format!("record at byte {offset} is incomplete ({len} bytes declared)"));
        }
        payload.resize(len, 0);
        if !read_exact_or_eof(reader, &mut payload, path)? {
            break Some(format!("record at byte {offset} is incomplete ({len} bytes declared)"));
        }
        match check(&frame, &payload) {
            Ok(record) => visit(record, offset),
            Err(why) => break Some(format!("record at byte {offset} {why}")),
        }
        last = Some((offset, frame));
        offset += (FRAME_HEADER + len) as u64;
    };
    Ok(Streamed { end: offset, last, stopped })
}

/// Checks a frame's checksum and parses its payload.
fn check(header: &[u8; FRAME_HEADER], payload: &[u8]) -> Result<Record, String> {
    let crc = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
    if crc32c::crc32c(payload) != crc {
        return Err("fails its checksum".into());
    }
    Record::from_payload(payload).map_err(|field| format!("has a field that does not parse: {field}"))
}

/// The record framed at `at` in `buf` and the frame's length.
pub(crate) fn frame_at(buf: &[u8], at: usize) -> Result<(Record, usize), String> {
    let header: &[u8; FRAME_HEADER] = buf.get(at..at + FRAME_HEADER).and_then(|h| h.try_into().ok()).ok_or("has an incomplete header")?;
    let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize;
    if len > MAX_PAYLOAD {
        return Err(format!("declares {len} bytes, over the {MAX_PAYLOAD}-byte limit"));
    }
    let payload = buf.get(at + FRAME_HEADER..at + FRAME_HEADER + len).ok_or_else(|| format!("is incomplete ({len} bytes declared)"))?;
    Ok((check(header, payload)?, FRAME_HEADER + len))
}

/// The first offset at or after `from` where a valid record is framed. Offsets whose payload cannot
/// start a record (no room, or a first byte that is no [`RecordKind`]) are passed over before any
/// checksum is computed, so searching a damaged stretch costs about one checksum per ~8,000 bytes
/// of garbage instead of one per byte.
fn next_valid(buf: &[u8], from: usize) -> Option<usize> {
    (from..buf.len().saturating_sub(FRAME_HEADER)).find(|&at| could_frame(buf, at) && frame_at(buf, at).is_ok())
}

/// Whether the bytes at `at` could frame a record: a length within the limit and the buffer, and a
/// payload that starts with a record kind.
fn could_frame(buf: &[u8], at: usize) -> bool {
    let len = u32::from_le_bytes(buf[at..at + 4].try_into().expect("4 bytes")) as usize;
    len <= MAX_PAYLOAD
        && at + FRAME_HEADER + len <= buf.len()
        && matches!(buf.get(at + FRAME_HEADER), Some(&k) if k == RecordKind::Sample as u8 || k == RecordKind::Spend as u8)
}

/// Fills `buf`; `Ok(false)` when the file ends first.
fn read_exact_or_eof(reader: &mut impl Read, buf: &mut [u8], path: &Path) -> Result<bool, StoreError> {
    match reader.read_exact(buf) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(StoreError::io(path, e)),
    }
}
