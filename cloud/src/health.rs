//! `mistnet-cloud health`: asks a running `serve` for one service's status on the standard gRPC
//! health service (`grpc.health.v1.Health/Check`, no token needed) and exits 0 only when it is
//! SERVING. It is the container image's HEALTHCHECK (the image has no shell), and a probe for
//! anything else that can run a command.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use mistnet_proto::client::{Connection, TlsFiles};
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};

#[derive(clap::Args)]
#[command(after_help = "Exits 0 when the service is SERVING; 1 when it is not (NOT_SERVING, unknown service, \
unreachable server, timeout), printing why on stderr.\n\n\
Examples:\n  \
mistnet-cloud health\n  \
mistnet-cloud health --server http://127.0.0.1:50051 --service mistnet.v1.FeatureUpload\n  \
mistnet-cloud health --server https://cloud:50051 --ca-cert ca.pem")]
pub struct Args {
    /// Server URL: https://HOST:PORT (TLS), or http://HOST:PORT (plaintext: loopback only, unless --insecure-plaintext).
    #[arg(long, value_name = "URL", default_value = "http://127.0.0.1:50051")]
    server: String,
    /// Service to ask about: "" is the server as a whole; mistnet.v1.FeatureUpload, mistnet.v1.FrontDistribution,
    /// mistnet.v1.ModelDistribution and mistnet.v1.IngestStatus are the services `serve` reports.
    #[arg(long, default_value = "")]
    service: String,
    /// CA certificate (PEM) to verify the server with (default for https: the system roots).
    #[arg(long, value_name = "PEM")]
    ca_cert: Option<PathBuf>,
    /// Client certificate (PEM) for a server that requires mutual TLS.
    #[arg(long, value_name = "PEM", requires = "client_key")]
    client_cert: Option<PathBuf>,
    /// Client private key (PEM) for mutual TLS.
    #[arg(long, value_name = "PEM", requires = "client_cert")]
    client_key: Option<PathBuf>,
    /// Allow plaintext to a non-loopback server (the health service carries no token).
    #[arg(long)]
    insecure_plaintext: bool,
    /// Seconds to wait for the answer (connecting included).
    #[arg(long, default_value_t = 3.0)]
    timeout: f64,
}

pub fn run(args: Args) -> Result<ExitCode> {
    let tls = TlsFiles { ca_cert: args.ca_cert.clone(), client_cert: args.client_cert.clone(), client_key: args.client_key.clone() };
    let connection = Connection::new(&args.server, &tls, args.insecure_plaintext)?;
    anyhow::ensure!(args.timeout.is_finite() && args.timeout > 0.0, "--timeout must be a positive number of seconds, got {}", args.timeout);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("cannot start the async runtime")?;
    let name = if args.service.is_empty() { "the server".to_string() } else { args.service.clone() };
    let answer = runtime.block_on(async {
        tokio::time::timeout(Duration::from_secs_f64(args.timeout), async {
            let channel = connection.connect().await?;
            let reply = HealthClient::new(channel).check(HealthCheckRequest { service: args.service.clone() }).await;
            anyhow::Ok(reply)
        })
        .await
    });
    let status = match answer {
        Err(_) => {
            eprintln!("unhealthy: no answer from {} within {} s", args.server, args.timeout);
            return Ok(ExitCode::FAILURE);
        }
        Ok(Err(e)) => {
            eprintln!("unhealthy: {e}");
            return Ok(ExitCode::FAILURE);
        }
        Ok(Ok(Err(s))) if s.code() == tonic::Code::NotFound => {
            eprintln!("unhealthy: {} does not report {name:?} (unknown service)", args.server);
            return Ok(ExitCode::FAILURE);
        }
        Ok(Ok(Err(s))) => {
            eprintln!("unhealthy: health check of {name} at {} failed: {}: {}", args.server, s.code(), s.message());
            return Ok(ExitCode::FAILURE);
        }
        Ok(Ok(Ok(reply))) => reply.into_inner().status,
    };
    if status == ServingStatus::Serving as i32 {
        println!("{name} at {}: SERVING", args.server);
        Ok(ExitCode::SUCCESS)
    } else {
        let word = ServingStatus::try_from(status).map(|s| s.as_str_name()).unwrap_or("an unknown status");
        eprintln!("unhealthy: {name} at {}: {word}", args.server);
        Ok(ExitCode::FAILURE)
    }
}
