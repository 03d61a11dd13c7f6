//! The connection to the cloud: endpoint, TLS/mTLS, and the per-call token metadata.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use mistnet_proto::{AUTHORIZATION, EDGE_HEADER};
use tonic::metadata::MetadataValue;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// How to reach and authenticate to the cloud.
#[derive(Clone)]
pub struct Cloud {
    endpoint: Endpoint,
    token: MetadataValue<tonic::metadata::Ascii>,
    edge: MetadataValue<tonic::metadata::Ascii>,
}

/// TLS files of the edge.
pub struct TlsFiles {
    pub ca_cert: Option<PathBuf>,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
}

impl Cloud {
    pub fn new(server: &str, edge: &str, token: &str, tls: &TlsFiles, insecure_plaintext: bool) -> Result<Self> {
        let mut endpoint = Endpoint::from_shared(server.to_string()).with_context(|| format!("invalid --server URL {server}"))?;
        let uri = endpoint.uri().clone();
        let https = uri.scheme_str() == Some("https");
        if !https {
            let host = uri.host().unwrap_or_default();
            let loopback = host == "localhost" || host.trim_matches(['[', ']']).parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
            if !loopback && !insecure_plaintext {
                bail!("refusing plaintext to {server}: use https:// (with --ca-cert), a loopback address, or --insecure-plaintext");
            }
        } else {
            let read = |p: &PathBuf| std::fs::read(p).with_context(|| format!("cannot read {}", p.display()));
            let mut config = ClientTlsConfig::new().with_enabled_roots();
            if let Some(ca) = &tls.ca_cert {
                config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(ca)?));
            }
            if let (Some(cert), Some(key)) = (&tls.client_cert, &tls.client_key) {
                config = config.identity(Identity::from_pem(read(cert)?, read(key)?));
            }
            endpoint = endpoint.tls_config(config).context("invalid TLS configuration")?;
        }
        endpoint = endpoint.connect_timeout(std::time::Duration::from_secs(5)).http2_keep_alive_interval(std::time::Duration::from_secs(10));
        Ok(Self {
            endpoint,
            token: format!("Bearer {token}").parse().context("the token is not valid ASCII metadata")?,
            edge: edge.parse().context("the edge id is not valid ASCII metadata")?,
        })
    }

    pub async fn connect(&self) -> Result<Channel, tonic::transport::Error> {
        self.endpoint.connect().await
    }

    /// `message` with this edge's credentials attached.
    pub fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut req = tonic::Request::new(message);
        req.metadata_mut().insert(AUTHORIZATION, self.token.clone());
        req.metadata_mut().insert(EDGE_HEADER, self.edge.clone());
        req
    }
}
