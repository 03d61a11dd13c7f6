//! MistNet core: the model and the one edge pipeline, with the plain-data crates re-exported.
//!
//! - [`model`]: YOLOv5 in candle (config parsing, layers, weights I/O), the edge/cloud split and
//!   deployable models. Training kernels sit behind the `train` feature.
//! - [`encoder`]: the edge pipeline, written once: image → letterbox → Front → wire message.
//! - [`runtime`]: the process-wide allocator and thread settings both binaries apply.
//! - [`codec`] (crate `mistnet-codec`): what leaves an edge — binarization, randomized-response LDP,
//!   bit packing, zstd, the wire format, the Front hash.
//! - [`data`] (crate `mistnet-data`): datasets, labels, letterboxing, partitions, the synthetic dataset.
//! - [`metrics`] (crate `mistnet-metrics`): NMS, COCO and YOLOv5 mAP, SSIM/PSNR, matching their
//!   reference implementations.
pub use mistnet_codec as codec;
pub use mistnet_data as data;
pub use mistnet_metrics as metrics;
pub mod encoder;
pub mod model;
pub mod runtime;
