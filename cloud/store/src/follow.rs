//! Reading a store while a writer appends to it (`train --follow`): each [`DirFollower::poll`]
//! returns the samples stored since the last one, reading only the bytes after what it has read.
//!
//! Never writes. The rules, on top of those of [`crate::replay`]:
//!
//! - In the **live segment** (the last one), bytes after the last whole record that do not frame
//!   one are a record being appended right now (or a crash's torn tail): not yet written. They are
//!   never an error and never returned; the next poll reads them again once they are whole.
//! - Damage there with a valid record after it is judged only when a later poll finds it still in
//!   place (an append finishes long before the next poll), so a record still being written whose
//!   bytes happen to hold a frame is not mistaken for corruption. Then, as in every segment before
//!   the last (which the writer never appends to again), it is corruption at rest: refused, or
//!   skipped with a warning under [`OnCorruption::Quarantine`].
//! - A torn tail in a segment that is no longer the last is an error, as on open.
//! - If the bytes already read change (the writer cut back a batch whose fsync failed, a restarted
//!   writer rewrote a segment to quarantine damage), the store is read again from its start; the
//!   samples already returned are not returned again.

use std::collections::HashSet;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use super::record::{FRAME_HEADER, RecordKind};
use super::replay::OnCorruption;
use super::segment::{self, SEGMENT_MAGIC};
use super::{StoreError, StoredSample};

/// A read-only cursor over a store that a writer may be appending to. See the module docs.
#[derive(Debug)]
pub struct DirFollower {
    dir: PathBuf,
    on_corruption: OnCorruption,
    /// The segment being read, and the end of the last whole record read in it.
    segment: u64,
    offset: u64,
    /// Start and frame header of the last record read in `segment`, to notice a rewrite.
    last: Option<(u64, [u8; FRAME_HEADER])>,
    /// Damage with a valid record after it, seen in the live segment at (segment, byte) by the last poll.
    suspect: Option<(u64, u64)>,
    /// (edge, sample id) of every Sample record read since the last start from the beginning.
    seen: HashSet<(String, String)>,
    /// Samples returned before the store was read again from its start: skipped, not returned twice.
    returned_before: HashSet<(String, String)>,
    returned: usize,
}

impl DirFollower {
    /// A follower of the store in `dir`, before its first record. The directory must exist (a
    /// writer creates it); it may hold no segment yet.
    pub fn new(dir: impl AsRef<Path>, on_corruption: OnCorruption) -> Result<Self, StoreError> {
        let dir = dir.as_ref().to_path_buf();
        let meta = std::fs::metadata(&dir).map_err(|e| StoreError::io(&dir, e))?;
        if !meta.is_dir() {
            return Err(StoreError::io(&dir, std::io::Error::new(std::io::ErrorKind::NotADirectory, "not a directory")));
        }
        Ok(Self {
            dir,
            on_corruption,
            segment: 1,
            offset: 0,
            last: None,
            suspect: None,
            seen: HashSet::new(),
            returned_before: HashSet::new(),
            returned: 0,
        })
    }

    /// Samples returned by every poll so far.
    pub fn returned(&self) -> usize {
        self.returned
    }

    /// The samples whose records were completed since the last poll, in the order they were stored.
    pub fn poll(&mut self) -> Result<Vec<StoredSample>, StoreError> {
        let segments = segment::list(&self.dir)?;
        for (expected, (number, path)) in (1u64..).zip(&segments) {
            if *number != expected {
                return Err(StoreError::Corrupt {
                    file: self.dir.join(segment::segment_name(expected)),
                    offset: 0,
                    reason: format!("segment {expected} is missing (the next one present is {})", path.display()),
                });
            }
        }
        let count = segments.len() as u64;
        if !self.unchanged(count)? {
            tracing::warn!(store = %self.dir.display(), "the store was rewritten below what was read (a rolled-back batch or a quarantine): reading it again from the start; samples already read are not read twice");
            self.returned_before.extend(self.seen.drain());
            (self.segment, self.offset, self.last, self.suspect) = (1, 0, None, None);
        }
        let mut out = Vec::new();
        while self.segment <= count {
            let path = self.dir.join(segment::segment_name(self.segment));
            let live = self.segment == count;
            let mut duplicate = None;
            let tail = segment::scan_tail(&path, self.offset, |rec, at| {
                if rec.kind != RecordKind::Sample {
                    return;
                }
                let key = (rec.edge, rec.sample_id);
                if self.returned_before.remove(&key) {
                    self.seen.insert(key);
                } else if self.seen.insert(key.clone()) {
                    out.push(StoredSample { edge: key.0, sample_id: key.1, features: rec.features, labels: rec.labels, image_size: rec.image_size });
                } else {
                    duplicate.get_or_insert((at, key));
                }
            })?;
            if let Some((at, (edge, sample_id))) = duplicate {
                return Err(StoreError::Corrupt {
                    file: path,
                    offset: at,
                    reason: format!("a second record of sample {sample_id:?} of edge {edge:?} (the store never writes one: a copied or replayed file?)"),
                });
            }
            if tail.last.is_some() {
                self.last = tail.last;
            }
            self.offset = tail.end;
            let Some(pending) = tail.pending else {
                if live {
                    break;
                }
                (self.segment, self.offset, self.last, self.suspect) = (self.segment + 1, 0, None, None);
                continue;
            };
            match pending.next_valid {
                // A record being appended (live), or the torn tail a crash left (not live: an error).
                None if live => break,
                None => {
                    return Err(StoreError::Corrupt {
                        file: path,
                        offset: pending.start,
                        reason: format!("{}; only the last segment may end in a torn tail", pending.reason),
                    });
                }
                // Damage before a valid record in the live segment: judged at the next poll.
                Some(_) if live && self.suspect != Some((self.segment, pending.start)) => {
                    self.suspect = Some((self.segment, pending.start));
                    break;
                }
                Some(next) => match self.on_corruption {
                    OnCorruption::Refuse => {
                        return Err(StoreError::Corrupt {
                            file: path,
                            offset: pending.start,
                            reason: format!(
                                "{}; {} damaged byte(s), valid records follow (read with quarantine to skip the damage)",
                                pending.reason,
                                next - pending.start
                            ),
                        });
                    }
                    OnCorruption::Quarantine => {
                        tracing::warn!(segment = %path.display(), at = pending.start, bytes = next - pending.start, reason = %pending.reason, "skipping corrupt bytes; the valid records after them are read");
                        (self.offset, self.suspect) = (next, None);
                    }
                },
            }
        }
        self.returned += out.len();
        Ok(out)
    }

    /// Whether what was read is still in place: the segment being read exists, is not shorter than
    /// what was read, and holds the last record read where it was.
    fn unchanged(&self, segments: u64) -> Result<bool, StoreError> {
        if self.offset == 0 {
            return Ok(true);
        }
        if self.segment > segments {
            return Ok(false);
        }
        let path = self.dir.join(segment::segment_name(self.segment));
        let mut file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(StoreError::io(&path, e)),
        };
        let len = file.metadata().map_err(|e| StoreError::io(&path, e))?.len();
        if len < self.offset.max(SEGMENT_MAGIC.len() as u64) {
            return Ok(false);
        }
        let Some((at, header)) = self.last else { return Ok(true) };
        let mut now = [0u8; FRAME_HEADER];
        file.seek(SeekFrom::Start(at)).and_then(|_| file.read_exact(&mut now)).map_err(|e| StoreError::io(&path, e))?;
        Ok(now == header)
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use mistnet_data::Label;

    use super::*;
    use crate::record::Record;

    fn sample(edge: &str, id: &str, features: usize) -> Record {
        Record {
            kind: RecordKind::Sample,
            edge: edge.into(),
            sample_id: id.into(),
            epsilon: 2.0,
            labels: vec![Label { class: 1, cx: 0.5, cy: 0.5, w: 0.25, h: 0.5 }],
            image_size: (64, 48),
            features: (0..features).map(|i| (i * 7 + id.len()) as u8).collect(),
        }
    }

    fn spend(edge: &str, id: &str) -> Record {
        Record { kind: RecordKind::Spend, labels: vec![], image_size: (0, 0), features: vec![], ..sample(edge, id, 0) }
    }

    fn frames(records: &[Record]) -> Vec<u8> {
        records.iter().flat_map(Record::to_frame).collect()
    }

    fn ids(samples: &[StoredSample]) -> Vec<&str> {
        samples.iter().map(|s| s.sample_id.as_str()).collect()
    }

    fn seg(dir: &Path, n: u64) -> PathBuf {
        dir.join(segment::segment_name(n))
    }

    fn append(path: &Path, bytes: &[u8]) {
        std::fs::OpenOptions::new().create(true).append(true).open(path).unwrap().write_all(bytes).unwrap();
    }

    #[test]
    fn a_record_cut_at_any_byte_is_not_returned_until_it_is_whole() {
        let a = sample("e", "a", 40);
        let b = sample("e", "b", 300);
        let whole = [SEGMENT_MAGIC.as_slice(), &a.to_frame(), &b.to_frame()].concat();
        let a_end = SEGMENT_MAGIC.len() + a.to_frame().len();
        let dir = tempfile::tempdir().unwrap();
        let path = seg(dir.path(), 1);
        // A fresh reader of the file cut at every byte: the whole records before the cut, never a part of one.
        for cut in 0..=whole.len() {
            std::fs::write(&path, &whole[..cut]).unwrap();
            let got = DirFollower::new(dir.path(), OnCorruption::Refuse).unwrap().poll().unwrap();
            let want: &[&str] = if cut == whole.len() { &["a", "b"] } else if cut >= a_end { &["a"] } else { &[] };
            assert_eq!(ids(&got), want, "cut at byte {cut}");
            if cut == whole.len() {
                assert_eq!(got[1], StoredSample { edge: "e".into(), sample_id: "b".into(), features: b.features.clone(), labels: b.labels.clone(), image_size: (64, 48) });
            }
            assert_eq!(std::fs::read(&path).unwrap(), &whole[..cut], "reading modified the file");
        }
        // One reader while the file grows a byte at a time: each record returned once, when it is whole.
        std::fs::write(&path, b"").unwrap();
        let mut follower = DirFollower::new(dir.path(), OnCorruption::Refuse).unwrap();
        let mut returned = Vec::new();
        for (at, byte) in whole.iter().enumerate() {
            append(&path, &[*byte]);
            let got = follower.poll().unwrap();
            if !got.is_empty() {
                assert!(at + 1 == a_end || at + 1 == whole.len(), "a record returned at byte {}", at + 1);
            }
            returned.extend(got.into_iter().map(|s| s.sample_id));
        }
        assert_eq!(returned, ["a", "b"]);
        assert_eq!(follower.returned(), 2);
        assert!(follower.poll().unwrap().is_empty());
    }

    #[test]
    fn each_poll_returns_what_was_stored_since_the_last_and_follows_new_segments() {
        let dir = tempfile::tempdir().unwrap();
        let mut follower = DirFollower::new(dir.path(), OnCorruption::Refuse).unwrap();
        assert!(follower.poll().unwrap().is_empty(), "no segment yet");
        std::fs::write(seg(dir.path(), 1), [SEGMENT_MAGIC.as_slice(), &frames(&[sample("e", "1", 10), spend("e", "1"), sample("f", "1", 10)])].concat()).unwrap();
        assert_eq!(ids(&follower.poll().unwrap()), ["1", "1"]);
        assert!(follower.poll().unwrap().is_empty());
        append(&seg(dir.path(), 1), &frames(&[sample("e", "2", 10)]));
        assert_eq!(ids(&follower.poll().unwrap()), ["2"]);
        // The writer rolls: the next segment starts (its magic not yet whole), then fills.
        std::fs::write(seg(dir.path(), 2), &SEGMENT_MAGIC[..3]).unwrap();
        assert!(follower.poll().unwrap().is_empty());
        append(&seg(dir.path(), 2), &[&SEGMENT_MAGIC[3..], frames(&[sample("e", "3", 10), sample("e", "4", 10)]).as_slice()].concat());
        assert_eq!(ids(&follower.poll().unwrap()), ["3", "4"]);
        assert_eq!(follower.returned(), 5);
        // A second Sample record of a sample already read is refused, as on open.
        append(&seg(dir.path(), 2), &frames(&[sample("e", "2", 10)]));
        let err = follower.poll().unwrap_err().to_string();
        assert!(err.contains("a second record of sample \"2\" of edge \"e\""), "{err}");
    }

    #[test]
    fn a_torn_tail_before_the_last_segment_and_a_missing_segment_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let torn = sample("e", "2", 10).to_frame();
        std::fs::write(seg(dir.path(), 1), [SEGMENT_MAGIC.as_slice(), &frames(&[sample("e", "1", 10)]), &torn[..torn.len() - 3]].concat()).unwrap();
        let mut follower = DirFollower::new(dir.path(), OnCorruption::Quarantine).unwrap();
        assert_eq!(ids(&follower.poll().unwrap()), ["1"], "the live segment's incomplete record is not yet written");
        std::fs::write(seg(dir.path(), 2), SEGMENT_MAGIC).unwrap();
        let err = follower.poll().unwrap_err().to_string();
        assert!(err.contains("seg-00000001.log") && err.contains("only the last segment may end in a torn tail"), "{err}");
        std::fs::write(seg(dir.path(), 4), SEGMENT_MAGIC).unwrap();
        let err = DirFollower::new(dir.path(), OnCorruption::Refuse).unwrap().poll().unwrap_err().to_string();
        assert!(err.contains("segment 3 is missing"), "{err}");
        let missing = DirFollower::new(dir.path().join("nope"), OnCorruption::Refuse).unwrap_err().to_string();
        assert!(missing.contains("nope"), "{missing}");
    }

    #[test]
    fn damage_before_a_valid_record_is_corruption_once_it_stays() {
        let dir = tempfile::tempdir().unwrap();
        let mut bad = sample("e", "2", 30).to_frame();
        bad[FRAME_HEADER + 20] ^= 0x10;
        let bytes = [SEGMENT_MAGIC.as_slice(), &frames(&[sample("e", "1", 30)]), &bad, &frames(&[sample("e", "3", 30)])].concat();
        std::fs::write(seg(dir.path(), 1), &bytes).unwrap();
        for policy in [OnCorruption::Refuse, OnCorruption::Quarantine] {
            let mut follower = DirFollower::new(dir.path(), policy).unwrap();
            // First seen: it might be a record still being written, so nothing after it yet.
            assert_eq!(ids(&follower.poll().unwrap()), ["1"], "{policy}");
            match policy {
                OnCorruption::Refuse => {
                    let err = follower.poll().unwrap_err().to_string();
                    assert!(err.contains("fails its checksum") && err.contains("valid records follow"), "{err}");
                }
                OnCorruption::Quarantine => assert_eq!(ids(&follower.poll().unwrap()), ["3"]),
            }
        }
        // In a segment the writer has left, the damage is judged at once.
        std::fs::write(seg(dir.path(), 2), SEGMENT_MAGIC).unwrap();
        assert_eq!(ids(&DirFollower::new(dir.path(), OnCorruption::Quarantine).unwrap().poll().unwrap()), ["1", "3"]);
        assert!(DirFollower::new(dir.path(), OnCorruption::Refuse).unwrap().poll().is_err());
        assert_eq!(std::fs::read(seg(dir.path(), 1)).unwrap(), bytes, "reading modified the segment");
    }

    #[test]
    fn a_rolled_back_batch_is_read_again_without_returning_a_sample_twice() {
        let dir = tempfile::tempdir().unwrap();
        let path = seg(dir.path(), 1);
        let durable = [SEGMENT_MAGIC.as_slice(), &frames(&[sample("e", "1", 20)])].concat();
        std::fs::write(&path, [durable.as_slice(), &frames(&[sample("e", "2", 20), sample("e", "3", 20)])].concat()).unwrap();
        let mut follower = DirFollower::new(dir.path(), OnCorruption::Refuse).unwrap();
        assert_eq!(ids(&follower.poll().unwrap()), ["1", "2", "3"]);
        // The fsync of the batch of 2 and 3 failed: the writer cut it off; 3 is uploaded again, then 4.
        std::fs::write(&path, [durable.as_slice(), &frames(&[sample("e", "3", 20), sample("e", "4", 200)])].concat()).unwrap();
        assert_eq!(ids(&follower.poll().unwrap()), ["4"]);
        // 2 comes back later: read once already, it is not returned again; 5 is new.
        append(&path, &frames(&[sample("e", "2", 20), sample("e", "5", 20)]));
        assert_eq!(ids(&follower.poll().unwrap()), ["5"]);
        assert_eq!(follower.returned(), 5);
        // Cut back below what was read, same length again: the header check still sees it.
        std::fs::write(&path, [durable.as_slice(), &frames(&[sample("e", "6", 20), sample("e", "7", 20), sample("e", "8", 20), sample("e", "9", 200)])].concat()).unwrap();
        assert_eq!(ids(&follower.poll().unwrap()), ["6", "7", "8", "9"]);
    }
}
