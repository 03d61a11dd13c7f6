//! MistNet shared library.
//!
//! - [`model`]: YOLOv5 in candle (config parsing, layers, weights I/O) and the edge/cloud split.
//! - [`data`]: images, letterboxing, datasets.
//! - [`metrics`]: SSIM/PSNR, YOLOv5 NMS, COCO and YOLOv5 mAP, matching their reference implementations.
//! - [`codec`]: what leaves an edge: binarization, randomized-response LDP, bit packing, zstd, the wire format.
//! - [`runtime`]: the process-wide allocator and thread settings both binaries apply.
pub mod codec;
pub mod data;
pub mod runtime;
pub mod metrics;
pub mod model;
