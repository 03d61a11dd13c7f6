//! Who may call: per-edge bearer tokens from a file the operator controls (lines `edge-id token`,
//! `#` comments), and optionally one operator token. Tokens are kept only as SHA-256 digests and
//! compared in constant time. An edge's call names its edge in `x-mistnet-edge` and must carry
//! that edge's token; a call without `x-mistnet-edge` is the operator's and must carry the
//! operator token.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use mistnet_proto::{AUTHORIZATION, EDGE_HEADER, read_token_file};
use sha2::{Digest, Sha256};
use tonic::{Request, Status};

/// Shortest token accepted, edge or operator.
pub const MIN_TOKEN_LEN: usize = 16;

/// The authenticated caller, put in the request's extensions by [`Tokens::check`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// An edge of the tokens file.
    Edge(String),
    /// The holder of the operator token: may only ask for the status of every edge.
    Operator,
}

/// Token digests by edge id, and the operator's.
#[derive(Debug, Clone)]
pub struct Tokens {
    edges: Arc<HashMap<String, [u8; 32]>>,
    operator: Option<[u8; 32]>,
}

impl Tokens {
    /// Reads the edges' tokens file and, if given, the operator's token file. An error names the
    /// file (and line) at fault; the operator token must differ from every edge's token.
    pub fn load(tokens: &Path, operator_token_file: Option<&Path>) -> Result<Self> {
        let text = std::fs::read_to_string(tokens).with_context(|| format!("cannot read tokens file {}", tokens.display()))?;
        let mut edges = HashMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let at = format!("{}:{}", tokens.display(), n + 1);
            let mut parts = line.split_whitespace();
            let (Some(edge), Some(token), None) = (parts.next(), parts.next(), parts.next()) else {
                bail!("{at}: expected `edge-id token`");
            };
            if token.len() < MIN_TOKEN_LEN {
                bail!("{at}: the token of edge {edge} is shorter than {MIN_TOKEN_LEN} characters");
            }
            if edges.insert(edge.to_string(), digest(token)).is_some() {
                bail!("{at}: edge {edge} is listed twice");
            }
        }
        if edges.is_empty() {
            bail!("{}: no `edge-id token` lines", tokens.display());
        }
        let operator = match operator_token_file {
            None => None,
            Some(path) => {
                let token = read_token_file(path)?;
                if token.len() < MIN_TOKEN_LEN {
                    bail!("{}: the operator token is shorter than {MIN_TOKEN_LEN} characters", path.display());
                }
                let d = digest(&token);
                if let Some(edge) = edges.iter().find_map(|(edge, e)| constant_time_eq(e, &d).then_some(edge)) {
                    bail!("{}: the operator token is also the token of edge {edge} in {}; give the operator its own", path.display(), tokens.display());
                }
                Some(d)
            }
        };
        Ok(Self { edges: Arc::new(edges), operator })
    }

    /// Interceptor: UNAUTHENTICATED without a token (or without an edge id when no operator token
    /// is configured), PERMISSION_DENIED when the token is not the named edge's (or the edge is
    /// unknown), or, without an edge id, not the operator's.
    pub fn check(&self, mut req: Request<()>) -> Result<Request<()>, Status> {
        let meta = req.metadata();
        let token = meta
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| Status::unauthenticated("missing `authorization: Bearer <token>` metadata"))?;
        let caller = match meta.get(EDGE_HEADER) {
            Some(edge) => {
                let edge = edge.to_str().map_err(|_| Status::unauthenticated(format!("`{EDGE_HEADER}` metadata is not ASCII")))?.to_string();
                if !self.edges.get(&edge).is_some_and(|d| constant_time_eq(d, &digest(token))) {
                    return Err(Status::permission_denied(format!("edge {edge:?} is unknown or the token is not its token")));
                }
                Caller::Edge(edge)
            }
            None => match &self.operator {
                None => {
                    return Err(Status::unauthenticated(format!(
                        "missing `{EDGE_HEADER}` metadata naming the edge (this server has no operator token)"
                    )));
                }
                Some(d) if constant_time_eq(d, &digest(token)) => Caller::Operator,
                Some(_) => return Err(Status::permission_denied(format!("no `{EDGE_HEADER}` metadata, and the token is not the operator token"))),
            },
        };
        req.extensions_mut().insert(caller);
        Ok(req)
    }
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    const EDGE_TOKEN: &str = "edge-token-0123456789";
    const OPERATOR_TOKEN: &str = "operator-token-0123456789";

    fn files(operator: &str) -> (tempfile::TempDir, std::path::PathBuf, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let (tokens, op) = (dir.path().join("tokens.txt"), dir.path().join("operator.token"));
        std::fs::write(&tokens, format!("# edges\nedge-1 {EDGE_TOKEN}\n")).unwrap();
        std::fs::write(&op, format!("{operator}\n")).unwrap();
        (dir, tokens, op)
    }

    fn call(tokens: &Tokens, token: Option<&str>, edge: Option<&str>) -> Result<Caller, Code> {
        let mut req = Request::new(());
        if let Some(t) = token {
            req.metadata_mut().insert(AUTHORIZATION, format!("Bearer {t}").parse().unwrap());
        }
        if let Some(e) = edge {
            req.metadata_mut().insert(EDGE_HEADER, e.parse().unwrap());
        }
        tokens.check(req).map(|r| r.extensions().get::<Caller>().unwrap().clone()).map_err(|s| s.code())
    }

    #[test]
    fn edges_and_the_operator_are_told_apart() {
        let (_dir, tokens, op) = files(OPERATOR_TOKEN);
        let t = Tokens::load(&tokens, Some(&op)).unwrap();
        assert_eq!(call(&t, Some(EDGE_TOKEN), Some("edge-1")), Ok(Caller::Edge("edge-1".into())));
        assert_eq!(call(&t, Some(OPERATOR_TOKEN), None), Ok(Caller::Operator));
        assert_eq!(call(&t, Some(OPERATOR_TOKEN), Some("edge-1")), Err(Code::PermissionDenied), "the operator token is no edge's");
        assert_eq!(call(&t, Some(EDGE_TOKEN), None), Err(Code::PermissionDenied), "an edge token is not the operator's");
        assert_eq!(call(&t, None, None), Err(Code::Unauthenticated));
        assert_eq!(call(&t, Some(EDGE_TOKEN), Some("edge-2")), Err(Code::PermissionDenied));

        let without_operator = Tokens::load(&tokens, None).unwrap();
        assert_eq!(call(&without_operator, Some(OPERATOR_TOKEN), None), Err(Code::Unauthenticated));
    }

    #[test]
    fn an_operator_token_that_is_short_or_an_edge_token_is_refused() {
        let (_dir, tokens, op) = files(EDGE_TOKEN);
        let err = Tokens::load(&tokens, Some(&op)).unwrap_err().to_string();
        assert!(err.contains("also the token of edge edge-1"), "{err}");
        let (_dir, tokens, op) = files("short");
        let err = Tokens::load(&tokens, Some(&op)).unwrap_err().to_string();
        assert!(err.contains("shorter than 16"), "{err}");
    }
}
