//! MistNet shared library.
//!
//! - [`model`]: YOLOv5 in candle (config parsing, layers, weights I/O) and the edge/cloud split.
//! - [`data`]: images, letterboxing, datasets.
//! - [`metrics`]: SSIM/PSNR, YOLOv5 NMS, COCO and YOLOv5 mAP, matching their reference implementations.
//! - [`codec`]: what leaves an edge: binarization, randomized-response LDP, bit packing, zstd, the wire format.
//! - [`logging`]: the tracing set-up both binaries share.
//! - [`runtime`]: the process-wide allocator and thread settings both binaries apply.
pub use mistnet_codec as codec;
pub use mistnet_data as data;
pub mod encoder;
pub mod logging;
pub mod runtime;
pub use mistnet_metrics as metrics;
pub mod model;
