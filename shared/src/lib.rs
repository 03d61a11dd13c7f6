//! MistNet shared library.
//!
//! - [`model`]: YOLOv5 in candle (config parsing, layers, weights I/O) and the edge/cloud split.
//! - [`data`]: images, letterboxing, datasets.
pub mod data;
pub mod model;
