//! Per-edge bearer tokens from a file the operator controls: lines `edge-id token`, `#` comments.
//! Tokens are kept only as SHA-256 digests; a call names its edge in `x-mistnet-edge` and must
//! carry that edge's token.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use mistnet_proto::{AUTHORIZATION, EDGE_HEADER};
use sha2::{Digest, Sha256};
use tonic::{Request, Status};

/// The authenticated edge of a call, put in the request's extensions by [`Tokens::check`].
#[derive(Debug, Clone)]
pub struct Edge(pub String);

/// Token digests by edge id.
#[derive(Debug, Clone)]
pub struct Tokens(Arc<HashMap<String, [u8; 32]>>);

impl Tokens {
    /// Reads a tokens file; an error names the file and line at fault.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read tokens file {}", path.display()))?;
        let mut map = HashMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let at = format!("{}:{}", path.display(), n + 1);
            let mut parts = line.split_whitespace();
            let (Some(edge), Some(token), None) = (parts.next(), parts.next(), parts.next()) else {
                bail!("{at}: expected `edge-id token`");
            };
            if token.len() < 16 {
                bail!("{at}: the token of edge {edge} is shorter than 16 characters");
            }
            if map.insert(edge.to_string(), digest(token)).is_some() {
                bail!("{at}: edge {edge} is listed twice");
            }
        }
        if map.is_empty() {
            bail!("{}: no `edge-id token` lines", path.display());
        }
        Ok(Self(Arc::new(map)))
    }

    /// Interceptor: UNAUTHENTICATED without a token or edge id, PERMISSION_DENIED when the token
    /// is not the named edge's (or the edge is unknown).
    pub fn check(&self, mut req: Request<()>) -> Result<Request<()>, Status> {
        let meta = req.metadata();
        let token = meta
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| Status::unauthenticated("missing `authorization: Bearer <token>` metadata"))?;
        let edge = meta
            .get(EDGE_HEADER)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| Status::unauthenticated(format!("missing `{EDGE_HEADER}` metadata naming the edge")))?
            .to_string();
        let ok = self.0.get(&edge).is_some_and(|d| constant_time_eq(d, &digest(token)));
        if !ok {
            return Err(Status::permission_denied(format!("edge {edge:?} is unknown or the token is not its token")));
        }
        req.extensions_mut().insert(Edge(edge));
        Ok(req)
    }
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
