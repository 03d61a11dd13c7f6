//! The one client of the MistNet services, shared by `mistnet-edge run`, `mistnet-cloud status`,
//! `mistnet-cloud job`, the end-to-end tests and the ingest benchmark.
//!
//! - [`Connection`]: the endpoint. `https://` verifies the server with `--ca-cert` or, without it,
//!   the system roots, and presents a client certificate for mutual TLS; plaintext `http://` is
//!   refused to anything but a loopback address unless explicitly allowed, so a token never travels
//!   in the clear by accident.
//! - [`Credentials`]: the token (and edge id) every call carries, as a request helper or a tonic
//!   interceptor.
//! - [`Client`]: both together.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tonic::metadata::{AsciiMetadataValue, errors::InvalidMetadataValue};
use tonic::service::Interceptor;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};

use crate::{AUTHORIZATION, EDGE_HEADER, TokenFileError, read_token_file};

/// TLS files of a client (all optional: `https://` alone verifies the server with the system roots).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TlsFiles {
    /// CA certificate (PEM) to verify the server with, instead of the system roots.
    pub ca_cert: Option<PathBuf>,
    /// Client certificate and key (PEM) for mutual TLS: both or neither.
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
}

impl TlsFiles {
    fn any(&self) -> bool {
        self.ca_cert.is_some() || self.client_cert.is_some() || self.client_key.is_some()
    }
}

/// Why a client cannot be set up or cannot reach the server.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid server URL {server}: {reason}")]
    Url { server: String, reason: String },
    #[error("refusing plaintext to {server}: use https:// (with --ca-cert, or the system roots), a loopback address, or --insecure-plaintext")]
    Plaintext { server: String },
    #[error("TLS files given for the plaintext URL {server}: use https://")]
    TlsWithoutHttps { server: String },
    #[error("a client certificate needs its key and a key its certificate (--client-cert with --client-key)")]
    HalfIdentity,
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("invalid TLS configuration: {0}")]
    Tls(tonic::transport::Error),
    #[error("cannot connect to {server}: {source}")]
    Connect { server: String, source: tonic::transport::Error },
    #[error("the {what} is not valid ASCII metadata: {source}")]
    Metadata { what: &'static str, source: InvalidMetadataValue },
    #[error(transparent)]
    TokenFile(#[from] TokenFileError),
    #[error("health check of {service} at {server} failed: {status}")]
    Health { server: String, service: String, status: Box<tonic::Status> },
}

/// Whether `host` (of a URL) is a loopback name or address.
fn is_loopback(host: &str) -> bool {
    host == "localhost" || host.trim_matches(['[', ']']).parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Where the server is and how to reach it.
#[derive(Debug, Clone)]
pub struct Connection {
    server: String,
    endpoint: Endpoint,
}

impl Connection {
    /// Checks `server` (`https://HOST:PORT`, or `http://` to loopback or with `insecure_plaintext`)
    /// and reads the TLS files.
    pub fn new(server: &str, tls: &TlsFiles, insecure_plaintext: bool) -> Result<Self, ClientError> {
        let url_error = |reason: String| ClientError::Url { server: server.to_string(), reason };
        let mut endpoint = Endpoint::from_shared(server.to_string()).map_err(|e| url_error(e.to_string()))?;
        let uri = endpoint.uri().clone();
        let host = uri.host().ok_or_else(|| url_error("no host".into()))?;
        match uri.scheme_str() {
            Some("https") => {
                let read = |p: &Path| std::fs::read(p).map_err(|source| ClientError::Read { path: p.to_path_buf(), source });
                let mut config = match &tls.ca_cert {
                    Some(ca) => ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(ca)?)),
                    None => ClientTlsConfig::new().with_enabled_roots(),
                };
                match (&tls.client_cert, &tls.client_key) {
                    (Some(cert), Some(key)) => config = config.identity(Identity::from_pem(read(cert)?, read(key)?)),
                    (None, None) => {}
                    _ => return Err(ClientError::HalfIdentity),
                }
                endpoint = endpoint.tls_config(config).map_err(ClientError::Tls)?;
            }
            Some("http") => {
                if tls.any() {
                    return Err(ClientError::TlsWithoutHttps { server: server.to_string() });
                }
                if !is_loopback(host) && !insecure_plaintext {
                    return Err(ClientError::Plaintext { server: server.to_string() });
                }
            }
            other => return Err(url_error(format!("the scheme must be http or https, not {}", other.unwrap_or("missing")))),
        }
        let endpoint = endpoint.connect_timeout(Duration::from_secs(5)).http2_keep_alive_interval(Duration::from_secs(10));
        Ok(Self { server: server.to_string(), endpoint })
    }

    /// The server URL as given.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// Opens a channel (TCP, and the TLS handshake for https).
    pub async fn connect(&self) -> Result<Channel, ClientError> {
        self.endpoint.connect().await.map_err(|source| ClientError::Connect { server: self.server.clone(), source })
    }

    /// Whether `service` (a gRPC service name such as `mistnet.v1.FeatureUpload`) reports SERVING
    /// on the standard health service; `Err` while the server cannot be reached.
    pub async fn serving(&self, service: &str) -> Result<bool, ClientError> {
        let channel = self.connect().await?;
        let request = HealthCheckRequest { service: service.to_string() };
        match HealthClient::new(channel).check(request).await {
            Ok(response) => Ok(response.into_inner().status == ServingStatus::Serving as i32),
            Err(status) if status.code() == tonic::Code::NotFound => Ok(false),
            Err(status) => Err(ClientError::Health { server: self.server.clone(), service: service.to_string(), status: Box::new(status) }),
        }
    }
}

/// The credentials every call carries: `authorization: Bearer <token>`, and for an edge
/// `x-mistnet-edge: <edge id>`. Without an edge id the calls are the operator's.
#[derive(Debug, Clone)]
pub struct Credentials {
    token: AsciiMetadataValue,
    edge: Option<AsciiMetadataValue>,
}

impl Credentials {
    /// An edge's credentials.
    pub fn edge(edge: &str, token: &str) -> Result<Self, ClientError> {
        let edge = edge.parse().map_err(|source| ClientError::Metadata { what: "edge id", source })?;
        Ok(Self { edge: Some(edge), ..Self::operator(token)? })
    }

    /// The operator's credentials (only `GetStatus`, of every edge).
    pub fn operator(token: &str) -> Result<Self, ClientError> {
        let token = format!("Bearer {token}").parse().map_err(|source| ClientError::Metadata { what: "token", source })?;
        Ok(Self { token, edge: None })
    }

    /// The token of `token_file`, as `edge` or, without one, as the operator.
    pub fn from_token_file(token_file: &Path, edge: Option<&str>) -> Result<Self, ClientError> {
        let token = read_token_file(token_file)?;
        match edge {
            Some(edge) => Self::edge(edge, &token),
            None => Self::operator(&token),
        }
    }

    /// `message` with these credentials attached.
    pub fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut req = tonic::Request::new(message);
        self.attach(&mut req);
        req
    }

    fn attach<T>(&self, req: &mut tonic::Request<T>) {
        req.metadata_mut().insert(AUTHORIZATION, self.token.clone());
        if let Some(edge) = &self.edge {
            req.metadata_mut().insert(EDGE_HEADER, edge.clone());
        }
    }
}

/// Attaches the credentials to every call of a client made `with_interceptor`.
impl Interceptor for Credentials {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        self.attach(&mut req);
        Ok(req)
    }
}

/// A connection and the credentials its calls carry.
#[derive(Debug, Clone)]
pub struct Client {
    pub connection: Connection,
    pub credentials: Credentials,
}

impl Client {
    pub fn new(connection: Connection, credentials: Credentials) -> Self {
        Self { connection, credentials }
    }

    pub async fn connect(&self) -> Result<Channel, ClientError> {
        self.connection.connect().await
    }

    /// `message` with the credentials attached.
    pub fn request<T>(&self, message: T) -> tonic::Request<T> {
        self.credentials.request(message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plaintext_is_refused_off_loopback_and_tls_files_need_https() {
        let none = TlsFiles::default();
        for ok in ["http://127.0.0.1:50051", "http://localhost:1", "http://[::1]:50051", "https://cloud.example:443"] {
            Connection::new(ok, &none, false).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        let remote = "http://192.0.2.1:50051";
        assert!(matches!(Connection::new(remote, &none, false), Err(ClientError::Plaintext { .. })));
        Connection::new(remote, &none, true).unwrap();
        let ca = TlsFiles { ca_cert: Some("ca.pem".into()), ..TlsFiles::default() };
        assert!(matches!(Connection::new("http://127.0.0.1:1", &ca, false), Err(ClientError::TlsWithoutHttps { .. })));
        assert!(matches!(Connection::new("https://h:1", &ca, false), Err(ClientError::Read { .. })));
        let half = TlsFiles { client_cert: Some("c.pem".into()), ..TlsFiles::default() };
        assert!(matches!(Connection::new("https://h:1", &half, false), Err(ClientError::HalfIdentity)));
        for bad in ["127.0.0.1:50051", "ftp://h:1", "not a url"] {
            assert!(matches!(Connection::new(bad, &none, false), Err(ClientError::Url { .. })), "{bad}");
        }
    }

    #[test]
    fn credentials_carry_the_token_and_the_edge_id() {
        let req = Credentials::edge("edge-1", "secret-0123456789").unwrap().request(());
        assert_eq!(req.metadata().get(AUTHORIZATION).unwrap(), "Bearer secret-0123456789");
        assert_eq!(req.metadata().get(EDGE_HEADER).unwrap(), "edge-1");
        let mut operator = Credentials::operator("secret-0123456789").unwrap();
        let req = operator.call(tonic::Request::new(())).unwrap();
        assert_eq!(req.metadata().get(AUTHORIZATION).unwrap(), "Bearer secret-0123456789");
        assert!(req.metadata().get(EDGE_HEADER).is_none());
        assert!(Credentials::edge("edge\n1", "t").is_err());
    }
}
