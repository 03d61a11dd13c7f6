//! The gRPC client's flags: server URL, token file, TLS files and the plaintext override,
//! turned into the one client of `mistnet_proto::client`.

use std::path::PathBuf;

use anyhow::Result;
use mistnet_proto::client::{Client, Connection, Credentials, TlsFiles};

use crate::argv::{Argv, ToArgs};

/// Where `serve` listens by default.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:50051";

#[derive(clap::Args, Debug, Clone, PartialEq)]
pub struct ClientArgs {
    /// Server URL: https://HOST:PORT (TLS), or http://HOST:PORT (plaintext: loopback only, unless --insecure-plaintext).
    #[arg(long, value_name = "URL", default_value = DEFAULT_SERVER)]
    pub server: String,
    /// File holding the token (its first line).
    #[arg(long, value_name = "FILE")]
    pub token_file: PathBuf,
    /// CA certificate (PEM) to verify the server with (default for https: the system roots).
    #[arg(long, value_name = "PEM")]
    pub ca_cert: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS.
    #[arg(long, value_name = "PEM", requires = "client_key")]
    pub client_cert: Option<PathBuf>,
    /// Client private key (PEM) for mutual TLS.
    #[arg(long, value_name = "PEM", requires = "client_cert")]
    pub client_key: Option<PathBuf>,
    /// Allow plaintext to a non-loopback server. INSECURE: the token and everything else travel in the clear.
    #[arg(long)]
    pub insecure_plaintext: bool,
}

impl ClientArgs {
    /// The checked connection (URL, plaintext guard, TLS files read), before any network traffic.
    pub fn connection(&self) -> Result<Connection> {
        let tls = TlsFiles { ca_cert: self.ca_cert.clone(), client_cert: self.client_cert.clone(), client_key: self.client_key.clone() };
        Ok(Connection::new(&self.server, &tls, self.insecure_plaintext)?)
    }

    /// The client: the connection and the token of --token-file, as `edge` or, without one, as the operator.
    pub fn client(&self, edge: Option<&str>) -> Result<Client> {
        let connection = self.connection()?;
        Ok(Client::new(connection, Credentials::from_token_file(&self.token_file, edge)?))
    }
}

impl ToArgs for ClientArgs {
    fn to_args(&self) -> Vec<std::ffi::OsString> {
        Argv::new()
            .arg("--server", &self.server)
            .arg("--token-file", &self.token_file)
            .opt("--ca-cert", self.ca_cert.as_ref())
            .opt("--client-cert", self.client_cert.as_ref())
            .opt("--client-key", self.client_key.as_ref())
            .switch("--insecure-plaintext", self.insecure_plaintext)
            .build()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::argv::reparse;

    #[test]
    fn client_flags_parse_back() {
        let plain = ClientArgs {
            server: "http://127.0.0.1:7".into(),
            token_file: "t".into(),
            ca_cert: None,
            client_cert: None,
            client_key: None,
            insecure_plaintext: false,
        };
        assert_eq!(reparse(&plain).unwrap(), plain);
        let mtls = ClientArgs {
            server: "https://cloud:443".into(),
            ca_cert: Some("ca.pem".into()),
            client_cert: Some("c.pem".into()),
            client_key: Some("c.key".into()),
            insecure_plaintext: true,
            ..plain
        };
        assert_eq!(reparse(&mtls).unwrap(), mtls);
    }

    #[test]
    fn a_client_certificate_needs_its_key() {
        let cmd = <ClientArgs as clap::Args>::augment_args(clap::Command::new("t").no_binary_name(true));
        assert!(cmd.try_get_matches_from(["--token-file", "t", "--client-cert", "c.pem"]).is_err());
    }
}
