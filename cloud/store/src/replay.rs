//! Reading a whole store directory back, as the writer does on open and the trainer's reader does:
//! every segment in order, checked as a whole.
//!
//! - Segments are numbered 1, 2, … without a gap: a missing one is an error, never silence.
//! - A torn tail (damage no valid record follows) may end only the last segment: that is what a
//!   crash mid-append leaves, and those records were never acknowledged.
//! - Damage followed by valid records is corruption at rest. [`OnCorruption::Refuse`] stops with
//!   the file and byte; [`OnCorruption::Quarantine`] keeps every valid record and sets the damaged
//!   bytes aside (the writer moves them into `quarantine/`, the read-only reader skips them).
//! - A second `Sample` record of the same (edge, sample id) is an error: the writer never writes
//!   one, so it can only come from a copied or replayed file, and it would count a sample twice.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use super::StoreError;
use super::record::{Record, RecordKind};
use super::segment::{self, Damage};

/// What to do with corruption at rest (damage followed by valid records).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnCorruption {
    /// Refuse to open the store, naming the file and byte.
    #[default]
    Refuse,
    /// Keep every valid record; the damaged bytes are set aside.
    Quarantine,
}

impl std::fmt::Display for OnCorruption {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Refuse => "refuse",
            Self::Quarantine => "quarantine",
        })
    }
}

impl std::str::FromStr for OnCorruption {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "refuse" => Ok(Self::Refuse),
            "quarantine" => Ok(Self::Quarantine),
            _ => Err(format!("expected refuse or quarantine, got {s:?}")),
        }
    }
}

/// One segment as read back.
#[derive(Debug, Clone, PartialEq)]
pub struct SegmentState {
    pub number: u64,
    pub path: PathBuf,
    /// End of its last valid record.
    pub valid_len: u64,
    /// Corruption found in it (empty unless [`OnCorruption::Quarantine`]).
    pub corrupt: Vec<Damage>,
    /// Its torn tail; only the last segment can have one.
    pub torn_tail: Option<Damage>,
}

/// Replays every record of the store in `dir` through `visit`, in the order it was written.
pub fn replay(dir: &Path, on_corruption: OnCorruption, mut visit: impl FnMut(Record)) -> Result<Vec<SegmentState>, StoreError> {
    let segments = segment::list(dir)?;
    for (expected, (number, path)) in (1u64..).zip(&segments) {
        if *number != expected {
            let missing = dir.join(segment::segment_name(expected));
            return Err(StoreError::Corrupt {
                file: missing,
                offset: 0,
                reason: format!("segment {expected} is missing (the next one present is {})", path.display()),
            });
        }
    }
    let mut samples: HashSet<(String, String)> = HashSet::new();
    let mut states = Vec::with_capacity(segments.len());
    let count = segments.len();
    for (i, (number, path)) in segments.into_iter().enumerate() {
        let mut duplicate = None;
        let end = segment::scan(&path, |rec, offset| {
            if rec.kind == RecordKind::Sample && !samples.insert((rec.edge.clone(), rec.sample_id.clone())) {
                duplicate.get_or_insert((offset, rec.edge.clone(), rec.sample_id.clone()));
            }
            visit(rec);
        })?;
        if let Some((offset, edge, sample_id)) = duplicate {
            return Err(StoreError::Corrupt {
                file: path,
                offset,
                reason: format!("a second record of sample {sample_id:?} of edge {edge:?} (the store never writes one: a copied or replayed file?)"),
            });
        }
        if let (Some(first), OnCorruption::Refuse) = (end.corrupt.first(), on_corruption) {
            return Err(StoreError::Corrupt {
                file: path,
                offset: first.start,
                reason: format!(
                    "{}; {} damaged byte(s), valid records follow (open with quarantine to keep them and set the damage aside)",
                    first.reason,
                    first.end - first.start
                ),
            });
        }
        if let Some(torn) = &end.torn_tail
            && i + 1 < count
        {
            return Err(StoreError::Corrupt {
                file: path,
                offset: torn.start,
                reason: format!("{}; only the last segment may end in a torn tail", torn.reason),
            });
        }
        states.push(SegmentState { number, path, valid_len: end.valid_len, corrupt: end.corrupt, torn_tail: end.torn_tail });
    }
    Ok(states)
}
