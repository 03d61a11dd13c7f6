//! `mistnet-proto`: the gRPC contract between MistNet edges and the cloud (`mistnet.proto`).
//!
//! - `FrontDistribution.GetFront`: the Front (model YAML, cut, weights, hash) an edge caches by hash.
//! - `ModelDistribution.GetModel`: the trained, deployable detector in chunks, pinned by hash, for edges to run.
//! - `FeatureUpload.ListStored` / `Upload`: bidirectional upload of samples, acked once durably stored.
//! - `IngestStatus.GetStatus`: per-edge counts, store size and the ε ledger.
//!
//! Every call carries the [`AUTHORIZATION`] (`Bearer <token>`) metadata; an edge's calls also name
//! the edge in [`EDGE_HEADER`]. A `GetStatus` call without [`EDGE_HEADER`] is the operator's, with the
//! operator token. [`read_token_file`] reads the token files both sides use; [`client`] is the
//! one client every caller uses (TLS/mTLS, the plaintext guard, the credentials, health checks).

use std::path::{Path, PathBuf};

pub mod client;

/// Generated messages, clients and servers of package `mistnet.v1`.
pub mod pb {
    tonic::include_proto!("mistnet.v1");
}

/// Metadata key of the bearer token.
pub const AUTHORIZATION: &str = "authorization";
/// Metadata key naming the edge a call is made for.
pub const EDGE_HEADER: &str = "x-mistnet-edge";
/// Metadata key of a RESOURCE_EXHAUSTED status's retry advice (a rate limit): milliseconds to wait.
pub const RETRY_AFTER_MS: &str = "retry-after-ms";

/// The retry advice of `status` ([`RETRY_AFTER_MS`]), if it carries one.
pub fn retry_after(status: &tonic::Status) -> Option<std::time::Duration> {
    let ms = status.metadata().get(RETRY_AFTER_MS)?.to_str().ok()?.parse().ok()?;
    Some(std::time::Duration::from_millis(ms))
}

/// Largest gRPC message either side accepts: the Front's weights for yolov5x at the deepest cut fit.
pub const MAX_MESSAGE_BYTES: usize = 256 << 20;

/// Longest sample id in bytes (`Sample.sample_id`).
pub const MAX_SAMPLE_ID: usize = 256;

/// Checks a sample id as the cloud does: 1 to [`MAX_SAMPLE_ID`] bytes of UTF-8 without control
/// characters (a newline in an id would break every line-based record of it).
pub fn check_sample_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > MAX_SAMPLE_ID || id.chars().any(char::is_control) {
        return Err(format!("sample id {id:?} must be 1 to {MAX_SAMPLE_ID} bytes without control characters"));
    }
    Ok(())
}

/// A token file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    #[error("cannot read token file {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("token file {} is empty: its first line must hold the token", path.display())]
    Empty { path: PathBuf },
}

/// The token in a token file: its first line, without surrounding whitespace.
pub fn read_token_file(path: &Path) -> Result<String, TokenFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| TokenFileError::Read { path: path.to_path_buf(), source })?;
    let token = text.lines().next().unwrap_or_default().trim();
    if token.is_empty() {
        return Err(TokenFileError::Empty { path: path.to_path_buf() });
    }
    Ok(token.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_file_gives_its_first_line_trimmed_and_an_empty_one_is_an_error() {
        let dir = std::env::temp_dir().join(format!("mistnet-proto-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (good, empty) = (dir.join("good"), dir.join("empty"));
        std::fs::write(&good, "  secret-token-0123456789 \nsecond line\n").unwrap();
        std::fs::write(&empty, "\n").unwrap();
        assert_eq!(read_token_file(&good).unwrap(), "secret-token-0123456789");
        assert!(matches!(read_token_file(&empty), Err(TokenFileError::Empty { .. })));
        assert!(matches!(read_token_file(&dir.join("missing")), Err(TokenFileError::Read { .. })));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
