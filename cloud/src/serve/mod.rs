//! `mistnet-cloud serve`: the ingest service. Serves the Front, validates uploaded samples and
//! stores them durably, exactly once per (edge, sample id), with per-edge tokens, TLS/mTLS,
//! quotas and an ε budget.

mod auth;
mod service;
mod validate;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use candle_core::Device;
use mistnet::codec::{FrontHash, Shape};
use mistnet::model::{DEFAULT_CUT, Front, ModelConfig, ParamStore, config::EMBEDDED_CONFIGS, split::front_prefixes};
use mistnet_cloud::store::{StoreLimits, StoreWriter};
use mistnet_proto::pb::{
    self, feature_upload_server::FeatureUploadServer, front_distribution_server::FrontDistributionServer,
    ingest_status_server::IngestStatusServer,
};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};

use auth::Tokens;
use service::{Ingest, Services};
use validate::Expected;

#[derive(clap::Args)]
#[command(after_help = "Prints `listening on ADDR` on stdout once it accepts calls. Stops cleanly on SIGTERM or Ctrl-C.\n\n\
Every call needs `authorization: Bearer <token>` and `x-mistnet-edge: <edge id>` metadata matching a line of --tokens.\n\n\
Example:\n  mistnet-cloud serve --model yolov5s --weights yolov5s.safetensors --cut 4 --tokens tokens.txt \\\n    \
--tls-cert server.pem --tls-key server.key --listen 0.0.0.0:50051 --store features/")]
pub struct Args {
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:50051")]
    listen: SocketAddr,
    /// Directory of the durable feature store (created if missing).
    #[arg(long, default_value = "feature-store")]
    store: PathBuf,
    /// Model config: a YAML file in the Ultralytics format, or one of yolov5n/s/m/l/x.
    #[arg(long, default_value = "yolov5s")]
    model: String,
    /// Weights in safetensors with Ultralytics key names (repeatable); only the Front's tensors are served.
    #[arg(long, required = true)]
    weights: Vec<PathBuf>,
    /// Split point in Plato's convention: edges run modules 0..cut-1.
    #[arg(long, default_value_t = DEFAULT_CUT)]
    cut: usize,
    /// Letterbox size in pixels edges must use (features are imgsz/stride square).
    #[arg(long, default_value_t = 640)]
    imgsz: u32,
    /// Tokens file: one `edge-id token` per line (tokens of at least 16 characters; `#` starts a comment).
    #[arg(long)]
    tokens: PathBuf,
    /// Server certificate chain (PEM). With --tls-key, serves TLS.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// Server private key (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// CA certificate (PEM) that client certificates must chain to: turns on mutual TLS.
    #[arg(long, requires = "tls_cert")]
    client_ca: Option<PathBuf>,
    /// Serve plaintext on a non-loopback address. INSECURE: tokens and features travel in the clear.
    #[arg(long)]
    insecure_plaintext: bool,
    /// Per-edge ε budget (basic composition over every accepted upload, re-uploads included);
    /// uploads past it are refused with RESOURCE_EXHAUSTED. Mechanism-none uploads count as ε = ∞.
    #[arg(long)]
    epsilon_budget: Option<f64>,
    /// Most samples stored per edge; new samples past it are refused with RESOURCE_EXHAUSTED.
    #[arg(long)]
    max_samples_per_edge: Option<u64>,
    /// Largest gRPC message accepted from an edge, in bytes.
    #[arg(long, default_value_t = 16 << 20)]
    max_message_bytes: usize,
    /// Most records written per fsync (group commit).
    #[arg(long, default_value_t = 256)]
    max_batch: usize,
}

pub fn run(args: Args) -> Result<()> {
    let tokens = Tokens::load(&args.tokens)?;
    if let Some(b) = args.epsilon_budget
        && !(b.is_finite() && b > 0.0)
    {
        bail!("--epsilon-budget must be a positive number, got {b}");
    }
    let tls = tls_config(&args)?;
    if tls.is_none() && !args.listen.ip().is_loopback() && !args.insecure_plaintext {
        bail!("refusing plaintext on {}: give --tls-cert/--tls-key, listen on loopback, or pass --insecure-plaintext", args.listen);
    }
    let (front, expected) = load_front(&args)?;
    let limits = StoreLimits {
        epsilon_budget: args.epsilon_budget,
        max_samples_per_edge: args.max_samples_per_edge,
        max_batch: args.max_batch,
        ..StoreLimits::default()
    };
    let store = StoreWriter::open(&args.store, limits)?;
    tracing::info!(store = %args.store.display(), samples = store.index().samples(), front = %front.front_hash, "store open");
    let services = Services(Arc::new(Ingest { store, front, expected, epsilon_budget: args.epsilon_budget }));

    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(serve(args, tokens, tls, services))
}

async fn serve(args: Args, tokens: Tokens, tls: Option<ServerTlsConfig>, services: Services) -> Result<()> {
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<FeatureUploadServer<Services>>().await;
    health.set_serving::<FrontDistributionServer<Services>>().await;
    health.set_serving::<IngestStatusServer<Services>>().await;

    let check = |t: Tokens| move |req| t.check(req);
    let upload = FeatureUploadServer::new(services.clone()).max_decoding_message_size(args.max_message_bytes);
    let front = FrontDistributionServer::new(services.clone()).max_encoding_message_size(mistnet_proto::MAX_MESSAGE_BYTES);
    let status = IngestStatusServer::new(services.clone());

    let mut builder = Server::builder();
    if let Some(tls) = tls {
        builder = builder.tls_config(tls).context("invalid TLS configuration")?;
    }
    let listener = tokio::net::TcpListener::bind(args.listen).await.with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener.local_addr()?;
    println!("listening on {addr}");
    tracing::info!(%addr, "serving");
    builder
        .add_service(health_service)
        .add_service(tonic::service::interceptor::InterceptedService::new(upload, check(tokens.clone())))
        .add_service(tonic::service::interceptor::InterceptedService::new(front, check(tokens.clone())))
        .add_service(tonic::service::interceptor::InterceptedService::new(status, check(tokens)))
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown_signal())
        .await
        .context("server failed")?;
    tracing::info!("shut down; flushing the store");
    drop(services);
    Ok(())
}

/// Resolves on SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! { _ = ctrl_c => {}, _ = term.recv() => {} }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

fn tls_config(args: &Args) -> Result<Option<ServerTlsConfig>> {
    let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) else { return Ok(None) };
    let read = |p: &PathBuf| std::fs::read(p).with_context(|| format!("cannot read {}", p.display()));
    let mut tls = ServerTlsConfig::new().identity(Identity::from_pem(read(cert)?, read(key)?));
    if let Some(ca) = &args.client_ca {
        tls = tls.client_ca_root(Certificate::from_pem(read(ca)?));
    }
    Ok(Some(tls))
}

/// Loads the Front to serve and what samples must match.
fn load_front(args: &Args) -> Result<(pb::GetFrontResponse, Expected)> {
    if args.imgsz == 0 || !args.imgsz.is_multiple_of(32) {
        bail!("--imgsz must be a positive multiple of 32, got {}", args.imgsz);
    }
    let model_yaml = match std::fs::read_to_string(&args.model) {
        Ok(text) => text,
        Err(_) => EMBEDDED_CONFIGS
            .iter()
            .find(|(name, _)| *name == args.model)
            .map(|(_, text)| text.to_string())
            .with_context(|| format!("model config {} not found (give a YAML file or one of yolov5n/s/m/l/x)", args.model))?,
    };
    let config = ModelConfig::from_yaml(&model_yaml)?;
    let specs = config.layers()?;
    let store = ParamStore::open(&args.weights)?;
    let front = Front::load(&specs, args.cut, &store, &Device::Cpu)?;
    let prefixes = front_prefixes(args.cut);
    let tensors: Vec<_> = store.tensors().into_iter().filter(|(name, _)| prefixes.iter().any(|p| name.starts_with(p.as_str()))).collect();
    let weights = safetensors::serialize(tensors.iter().map(|(n, t)| (n.as_str(), t)), None).context("cannot serialize the Front's weights")?;
    let side = args.imgsz as usize / front.out_stride();
    let expected = Expected {
        front_hash: front.hash().parse::<FrontHash>()?,
        cut: u16::try_from(args.cut).context("--cut is too large")?,
        shape: Shape::from_dims(&[1, front.out_channels(), side, side])?,
        nc: config.nc,
    };
    let response = pb::GetFrontResponse { model_yaml, cut: args.cut as u32, weights, front_hash: front.hash().to_string(), imgsz: args.imgsz };
    Ok((response, expected))
}
