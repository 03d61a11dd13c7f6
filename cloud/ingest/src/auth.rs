//! Who may call: per-edge bearer tokens from a file the operator controls (lines `edge-id token`,
//! `#` comments), and optionally one operator token. Tokens are kept only as SHA-256 digests and
//! compared in constant time. An edge's call names its edge in `x-mistnet-edge` and must carry
//! that edge's token; a call without `x-mistnet-edge` is the operator's and must carry the
//! operator token. With [`Policy::bind_cert_san`], an edge's call must also come over mTLS with a
//! client certificate whose SAN (DNS name or URI) is that edge id.
//!
//! Loading refuses what could never work or would blur who is who: edge ids and tokens that are
//! not visible ASCII (they cannot travel as gRPC metadata), an edge listed twice, two edges sharing
//! a token (either could pass for the other, so quotas and ε budgets would no longer be per edge).
//! Token files readable by group or others are warned about, or refused with
//! [`Policy::strict_permissions`].

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use mistnet_proto::{AUTHORIZATION, EDGE_HEADER, read_token_file};
use sha2::{Digest, Sha256};
use tonic::{Request, Status};
use x509_parser::extensions::GeneralName;

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

/// How strictly tokens are loaded and checked beyond the tokens themselves.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Policy {
    /// Refuse (instead of warning about) a tokens or operator token file readable by group or others.
    pub strict_permissions: bool,
    /// An edge's call must present a client certificate (mTLS) with a SAN equal to its edge id.
    pub bind_cert_san: bool,
}

/// Token digests by edge id, and the operator's.
#[derive(Debug, Clone)]
pub struct Tokens {
    edges: Arc<HashMap<String, [u8; 32]>>,
    operator: Option<[u8; 32]>,
    bind_cert_san: bool,
}

impl Tokens {
    /// Reads the edges' tokens file and, if given, the operator's token file. An error names the
    /// file (and line) at fault; the operator token must differ from every edge's token.
    pub fn load(tokens: &Path, operator_token_file: Option<&Path>, policy: Policy) -> Result<Self> {
        check_permissions(tokens, policy)?;
        let text = std::fs::read_to_string(tokens).with_context(|| format!("cannot read tokens file {}", tokens.display()))?;
        // Edge id → (token digest, line number).
        let mut lines: HashMap<String, ([u8; 32], usize)> = HashMap::new();
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
            if !is_metadata_text(edge) {
                bail!("{at}: edge id {edge:?} can never authenticate: an edge id must be visible ASCII (it travels as gRPC metadata)");
            }
            if token.len() < MIN_TOKEN_LEN {
                bail!("{at}: the token of edge {edge} is shorter than {MIN_TOKEN_LEN} characters");
            }
            if !is_metadata_text(token) {
                bail!("{at}: the token of edge {edge} can never authenticate: a token must be visible ASCII (it travels as gRPC metadata)");
            }
            let d = digest(token);
            if let Some((other, line)) = lines.iter().find_map(|(other, (o, line))| constant_time_eq(o, &d).then_some((other, line))) {
                bail!("{at}: edge {edge} has the token of edge {other} (line {line}); give every edge its own token, or either could pass for the other");
            }
            if lines.insert(edge.to_string(), (d, n + 1)).is_some() {
                bail!("{at}: edge {edge} is listed twice");
            }
        }
        let edges: HashMap<String, [u8; 32]> = lines.into_iter().map(|(edge, (d, _))| (edge, d)).collect();
        if edges.is_empty() {
            bail!("{}: no `edge-id token` lines", tokens.display());
        }
        let operator = match operator_token_file {
            None => None,
            Some(path) => {
                check_permissions(path, policy)?;
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
        Ok(Self { edges: Arc::new(edges), operator, bind_cert_san: policy.bind_cert_san })
    }

    /// Interceptor: UNAUTHENTICATED without a token (or without an edge id when no operator token
    /// is configured), PERMISSION_DENIED when the token is not the named edge's (or the edge is
    /// unknown), or, without an edge id, not the operator's; with [`Policy::bind_cert_san`], also
    /// when an edge's call has no client certificate naming that edge in its SAN.
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
                if self.bind_cert_san {
                    check_cert_san(&req, &edge)?;
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

/// The SAN (DNS names and URIs) of the call's client certificate must include `edge`.
fn check_cert_san(req: &Request<()>, edge: &str) -> Result<(), Status> {
    let certs = req.peer_certs().ok_or_else(|| Status::unauthenticated(format!("edge {edge:?} must present a client certificate (mTLS)")))?;
    let leaf = certs.first().ok_or_else(|| Status::unauthenticated(format!("edge {edge:?} must present a client certificate (mTLS)")))?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).map_err(|_| Status::unauthenticated("the client certificate does not parse"))?;
    let san = cert.subject_alternative_name().map_err(|_| Status::unauthenticated("the client certificate's SAN does not parse"))?;
    let names: Vec<&str> = san
        .map(|ext| &ext.value.general_names)
        .into_iter()
        .flatten()
        .filter_map(|name| match name {
            GeneralName::DNSName(n) | GeneralName::URI(n) => Some(*n),
            _ => None,
        })
        .collect();
    if names.contains(&edge) {
        return Ok(());
    }
    Err(Status::permission_denied(format!("the client certificate is not edge {edge:?}'s: its SAN names {names:?}")))
}

/// Visible ASCII only (no space, no control character): what gRPC ASCII metadata can carry
/// unchanged in a `x-mistnet-edge` or `authorization` value.
fn is_metadata_text(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_graphic())
}

/// Warns about (or, when strict, refuses) a token file that group or others may read.
#[cfg(unix)]
fn check_permissions(path: &Path, policy: Policy) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?.permissions().mode();
    if mode & 0o077 == 0 {
        return Ok(());
    }
    let what = format!("{} is readable or writable by group or others (mode {:03o}); run `chmod 600 {}`", path.display(), mode & 0o777, path.display());
    if policy.strict_permissions {
        bail!("{what} (refused: --strict-token-permissions)");
    }
    tracing::warn!("{what}");
    Ok(())
}

#[cfg(not(unix))]
fn check_permissions(_path: &Path, _policy: Policy) -> Result<()> {
    Ok(())
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
        let t = Tokens::load(&tokens, Some(&op), Policy::default()).unwrap();
        assert_eq!(call(&t, Some(EDGE_TOKEN), Some("edge-1")), Ok(Caller::Edge("edge-1".into())));
        assert_eq!(call(&t, Some(OPERATOR_TOKEN), None), Ok(Caller::Operator));
        assert_eq!(call(&t, Some(OPERATOR_TOKEN), Some("edge-1")), Err(Code::PermissionDenied), "the operator token is no edge's");
        assert_eq!(call(&t, Some(EDGE_TOKEN), None), Err(Code::PermissionDenied), "an edge token is not the operator's");
        assert_eq!(call(&t, None, None), Err(Code::Unauthenticated));
        assert_eq!(call(&t, Some(EDGE_TOKEN), Some("edge-2")), Err(Code::PermissionDenied));

        let without_operator = Tokens::load(&tokens, None, Policy::default()).unwrap();
        assert_eq!(call(&without_operator, Some(OPERATOR_TOKEN), None), Err(Code::Unauthenticated));
    }

    #[test]
    fn an_operator_token_that_is_short_or_an_edge_token_is_refused() {
        let (_dir, tokens, op) = files(EDGE_TOKEN);
        let err = Tokens::load(&tokens, Some(&op), Policy::default()).unwrap_err().to_string();
        assert!(err.contains("also the token of edge edge-1"), "{err}");
        let (_dir, tokens, op) = files("short");
        let err = Tokens::load(&tokens, Some(&op), Policy::default()).unwrap_err().to_string();
        assert!(err.contains("shorter than 16"), "{err}");
    }

    fn load_lines(lines: &str, policy: Policy) -> Result<Tokens> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.txt");
        std::fs::write(&path, lines).unwrap();
        #[cfg(unix)]
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        Tokens::load(&path, None, policy)
    }

    #[test]
    fn edges_sharing_a_token_are_refused_naming_both_lines() {
        let err = load_lines(&format!("edge-1 {EDGE_TOKEN}\n# c\nedge-2 {EDGE_TOKEN}\n"), Policy::default()).unwrap_err().to_string();
        assert!(err.contains("tokens.txt:3: edge edge-2 has the token of edge edge-1 (line 1)"), "{err}");
    }

    #[test]
    fn edge_ids_and_tokens_that_cannot_travel_as_metadata_are_refused_with_the_line() {
        for (edge, line) in [("\u{1}edge", "edge-0 token-of-edge-0-0123456\n\u{1}edge"), ("édge", "édge")] {
            let err = load_lines(&format!("{line} {EDGE_TOKEN}\n"), Policy::default()).unwrap_err().to_string();
            let n = line.lines().count();
            assert!(err.contains(&format!("tokens.txt:{n}: edge id {edge:?} can never authenticate")), "{err}");
        }
        let err = load_lines("edge-1 tökén-0123456789abcdef\n", Policy::default()).unwrap_err().to_string();
        assert!(err.contains("tokens.txt:1: the token of edge edge-1 can never authenticate"), "{err}");
    }

    #[cfg(unix)]
    #[test]
    fn token_files_readable_by_others_are_refused_when_strict() {
        use std::os::unix::fs::PermissionsExt;
        let (_dir, tokens, op) = files(OPERATOR_TOKEN);
        let strict = Policy { strict_permissions: true, ..Policy::default() };
        for mode in [0o644, 0o640] {
            std::fs::set_permissions(&tokens, std::fs::Permissions::from_mode(mode)).unwrap();
            std::fs::set_permissions(&op, std::fs::Permissions::from_mode(0o600)).unwrap();
            assert!(Tokens::load(&tokens, Some(&op), Policy::default()).is_ok(), "only a warning by default");
            let err = Tokens::load(&tokens, Some(&op), strict).unwrap_err().to_string();
            assert!(err.contains(&format!("tokens.txt is readable or writable by group or others (mode {mode:03o})")), "{err}");
        }
        std::fs::set_permissions(&tokens, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::set_permissions(&op, std::fs::Permissions::from_mode(0o604)).unwrap();
        let err = Tokens::load(&tokens, Some(&op), strict).unwrap_err().to_string();
        assert!(err.contains("operator.token is readable"), "{err}");
        std::fs::set_permissions(&op, std::fs::Permissions::from_mode(0o400)).unwrap();
        Tokens::load(&tokens, Some(&op), strict).unwrap();
    }

    #[test]
    fn a_bound_edge_call_without_a_client_certificate_is_refused() {
        let (_dir, tokens, _op) = files(OPERATOR_TOKEN);
        let t = Tokens::load(&tokens, None, Policy { bind_cert_san: true, ..Policy::default() }).unwrap();
        assert_eq!(call(&t, Some(EDGE_TOKEN), Some("edge-1")), Err(Code::Unauthenticated));
    }
}
