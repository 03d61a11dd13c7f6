//! Errors from reading datasets: [`BadSample`] for one bad image or label (skippable under
//! [`BadDataPolicy::Skip`](crate::dataset::BadDataPolicy)), [`DataError`] for everything that stops a load.

use std::fmt;
use std::path::PathBuf;

/// Where in a file a problem sits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Location {
    /// A 1-based line of a text file (label file, image list).
    Line(usize),
    /// A COCO annotation, by its `id`.
    Annotation(u64),
    /// A COCO image, by its `id`.
    Image(u64),
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Line(n) => write!(f, "line {n}"),
            Location::Annotation(id) => write!(f, "annotation id {id}"),
            Location::Image(id) => write!(f, "image id {id}"),
        }
    }
}

/// Why one sample cannot be used. Each names the file (and line or COCO id) at fault.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BadSample {
    #[error("{file}, {at}: image {} does not exist", image.display(), file = file.display())]
    MissingImage { image: PathBuf, file: PathBuf, at: Location },
    #[error("unreadable image {}: {reason}", image.display())]
    UnreadableImage { image: PathBuf, reason: String },
    #[error("{}, {at}: malformed label: {reason}", file.display())]
    MalformedLabel { file: PathBuf, at: Location, reason: String },
    #[error("{}, {at}: {field} = {value} is outside {range}", file.display())]
    OutOfRange { file: PathBuf, at: Location, field: &'static str, value: f64, range: &'static str },
    #[error("{}, {at}: unknown class {class} ({known})", file.display())]
    UnknownClass { file: PathBuf, at: Location, class: u64, known: String },
}

/// The kinds of [`BadSample`], for counting in a summary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum BadKind {
    MissingImage,
    UnreadableImage,
    MalformedLabel,
    OutOfRange,
    UnknownClass,
}

impl BadKind {
    /// A short human name ("missing image", ...).
    pub fn name(self) -> &'static str {
        match self {
            BadKind::MissingImage => "missing image",
            BadKind::UnreadableImage => "unreadable image",
            BadKind::MalformedLabel => "malformed label",
            BadKind::OutOfRange => "coordinate out of range",
            BadKind::UnknownClass => "unknown class",
        }
    }
}

impl BadSample {
    /// Which kind of problem this is.
    pub fn kind(&self) -> BadKind {
        match self {
            BadSample::MissingImage { .. } => BadKind::MissingImage,
            BadSample::UnreadableImage { .. } => BadKind::UnreadableImage,
            BadSample::MalformedLabel { .. } => BadKind::MalformedLabel,
            BadSample::OutOfRange { .. } => BadKind::OutOfRange,
            BadSample::UnknownClass { .. } => BadKind::UnknownClass,
        }
    }
}

/// Errors that stop reading or writing a dataset.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("dataset YAML {}: {reason}", path.display())]
    Yaml { path: PathBuf, reason: String },
    #[error("COCO JSON {}: {reason}", path.display())]
    Coco { path: PathBuf, reason: String },
    #[error("{}: the dataset has no `{split}` split", path.display())]
    NoSplit { path: PathBuf, split: &'static str },
    #[error("{}: not a dataset (expected a dataset YAML, a COCO JSON file, or a directory with images/ and classes.txt)", path.display())]
    UnknownFormat { path: PathBuf },
    #[error(transparent)]
    Bad(#[from] BadSample),
    #[error("partition: {0}")]
    Partition(String),
    #[error("synth: {0}")]
    Synth(String),
}

impl DataError {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        DataError::Io { path: path.into(), source }
    }
}
