//! Opening a dataset of any supported format ([`Dataset::open`]) and loading a split into
//! [`Sample`]s, with a [`BadDataPolicy`] for bad images and labels and a [`LoadSummary`] of what
//! was skipped and why.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use super::coco::CocoDataset;
use super::error::{BadKind, BadSample, DataError};
use super::label::Sample;
use super::yolo::YoloDataset;

/// A dataset split.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Split {
    Train,
    Val,
    Test,
}

impl Split {
    /// The split's key in a dataset YAML.
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Val => "val",
            Split::Test => "test",
        }
    }
}

/// What to do with a bad sample (missing or unreadable image, malformed label line, coordinate
/// outside `[0, 1]`, unknown class).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BadDataPolicy {
    /// Leave the sample out and record why in the [`LoadSummary`].
    Skip,
    /// Stop at the first bad sample with its error.
    #[default]
    Fail,
}

impl BadDataPolicy {
    /// Applies the policy to one sample's outcome: the sample, `None` if it was skipped (and
    /// recorded in `summary`), or the error that stops the load.
    pub fn apply<T>(self, outcome: Result<T, DataError>, summary: &mut LoadSummary) -> Result<Option<T>, DataError> {
        match outcome {
            Ok(v) => Ok(Some(v)),
            Err(DataError::Bad(bad)) if self == BadDataPolicy::Skip => {
                tracing::warn!("skipping: {bad}");
                summary.skipped.push(bad);
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }
}

/// What a load kept and what it skipped.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LoadSummary {
    /// Samples loaded.
    pub loaded: usize,
    /// Every skipped sample (or, for COCO, annotation) with the reason.
    pub skipped: Vec<BadSample>,
    /// COCO annotations with `iscrowd: 1`, left out as Ultralytics' COCO conversion does.
    pub crowd_ignored: usize,
}

impl LoadSummary {
    /// How many were skipped for each kind of problem.
    pub fn counts(&self) -> BTreeMap<BadKind, usize> {
        let mut counts = BTreeMap::new();
        for bad in &self.skipped {
            *counts.entry(bad.kind()).or_insert(0) += 1;
        }
        counts
    }
}

impl fmt::Display for LoadSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} images loaded, {} skipped", self.loaded, self.skipped.len())?;
        let counts = self.counts();
        if !counts.is_empty() {
            let parts: Vec<String> = counts.iter().map(|(k, n)| format!("{n} {}", k.name())).collect();
            write!(f, " ({})", parts.join(", "))?;
        }
        if self.crowd_ignored > 0 {
            write!(f, ", {} crowd annotations ignored", self.crowd_ignored)?;
        }
        Ok(())
    }
}

/// The samples of one split and the summary of loading them.
#[derive(Debug, Clone)]
pub struct LoadedSplit {
    pub samples: Vec<Sample>,
    pub summary: LoadSummary,
}

/// A dataset in one of the supported formats.
#[derive(Debug, Clone)]
pub enum Dataset {
    Yolo(YoloDataset),
    Coco(CocoDataset),
}

impl Dataset {
    /// Opens `path`: a dataset YAML (`.yaml`/`.yml`), a COCO instances file (`.json`, images
    /// resolved against the file's directory; use [`CocoDataset::open`] for another image root)
    /// or a YOLO-format directory (see [`YoloDataset::from_dir`]).
    pub fn open(path: &Path) -> Result<Self, DataError> {
        let ext = path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
        match ext.as_deref() {
            _ if path.is_dir() => Ok(Dataset::Yolo(YoloDataset::from_dir(path)?)),
            Some("yaml" | "yml") => Ok(Dataset::Yolo(YoloDataset::from_yaml(path)?)),
            Some("json") => {
                let images = path.parent().unwrap_or(Path::new("."));
                Ok(Dataset::Coco(CocoDataset::open(path, images)?))
            }
            _ if !path.exists() => Err(DataError::io(path, std::io::ErrorKind::NotFound.into())),
            _ => Err(DataError::UnknownFormat { path: path.to_path_buf() }),
        }
    }

    /// The class names, index = class.
    pub fn names(&self) -> &[String] {
        match self {
            Dataset::Yolo(d) => &d.names,
            Dataset::Coco(d) => &d.names,
        }
    }

    /// The file or directory the dataset was opened from.
    pub fn source(&self) -> &Path {
        match self {
            Dataset::Yolo(d) => &d.source,
            Dataset::Coco(d) => &d.source,
        }
    }

    /// Whether the dataset has `split` (a COCO file holds one split: train).
    pub fn has_split(&self, split: Split) -> bool {
        match self {
            Dataset::Yolo(d) => d.sources(split).is_some(),
            Dataset::Coco(_) => split == Split::Train,
        }
    }

    /// Loads the samples of `split`.
    pub fn load(&self, split: Split, policy: BadDataPolicy) -> Result<LoadedSplit, DataError> {
        match self {
            Dataset::Yolo(d) => d.load(split, policy),
            Dataset::Coco(d) if split == Split::Train => d.load(policy),
            Dataset::Coco(d) => Err(DataError::NoSplit { path: d.source.clone(), split: split.name() }),
        }
    }
}

/// Width and height of an image file, read from its header (the format is guessed from the
/// content, not the extension). An absent or undecodable file is an [`BadSample::UnreadableImage`].
pub fn image_size(path: &Path) -> Result<(u32, u32), BadSample> {
    let unreadable = |reason: String| BadSample::UnreadableImage { image: path.to_path_buf(), reason };
    let reader = image::ImageReader::open(path).map_err(|e| unreadable(e.to_string()))?;
    let reader = reader.with_guessed_format().map_err(|e| unreadable(e.to_string()))?;
    let (w, h) = reader.into_dimensions().map_err(|e| unreadable(e.to_string()))?;
    if w == 0 || h == 0 {
        return Err(unreadable(format!("image is {w}x{h}")));
    }
    Ok((w, h))
}
