//! Images and datasets: letterboxing, the in-memory sample type, YOLO and COCO loaders with
//! bad-data checks, partitioning into edge shards, and the synthetic default dataset.

pub mod coco;
pub mod dataset;
pub mod error;
pub mod label;
pub mod letterbox;
pub mod partition;
pub mod resize;
pub mod synth;
pub mod yolo;

pub use dataset::{BadDataPolicy, Dataset, LoadSummary, LoadedSplit, Split};
pub use error::{BadKind, BadSample, DataError, Location};
pub use label::{Label, Sample};
