//! `mistnet-proto`: the gRPC contract between MistNet edges and the cloud (`mistnet.proto`).
//!
//! - `FrontDistribution.GetFront`: the Front (model YAML, cut, weights, hash) an edge caches by hash.
//! - `FeatureUpload.ListStored` / `Upload`: bidirectional upload of samples, acked once durably stored.
//! - `IngestStatus.GetStatus`: per-edge counts, store size and the ε ledger.
//!
//! Every call carries the [`AUTHORIZATION`] (`Bearer <token>`) and [`EDGE_HEADER`] metadata.

/// Generated messages, clients and servers of package `mistnet.v1`.
pub mod pb {
    tonic::include_proto!("mistnet.v1");
}

/// Metadata key of the bearer token.
pub const AUTHORIZATION: &str = "authorization";
/// Metadata key naming the edge a call is made for.
pub const EDGE_HEADER: &str = "x-mistnet-edge";
/// Largest gRPC message either side accepts: the Front's weights for yolov5x at the deepest cut fit.
pub const MAX_MESSAGE_BYTES: usize = 256 << 20;
