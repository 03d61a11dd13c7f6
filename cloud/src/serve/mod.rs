//! `mistnet-cloud serve`: the ingest service. Serves the Front and the trained model, validates
//! uploaded samples and stores them durably, exactly once per (edge, sample id), with per-edge tokens, TLS/mTLS,
//! quotas and an ε budget.
//!
//! What it serves is a [`ServedFront`]: read from `export`'s directory (`--front`), or computed
//! from `--weights` by `export`'s own function. The services (crate `mistnet-ingest`) see only
//! that, never the model; this module turns the flags into their settings and listens
//! ([`listen`]: connection limits and timeouts; [`health`]: the health service and its status;
//! [`metrics`]: the Prometheus scrape endpoint).

mod health;
mod listen;
mod metrics;

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use mistnet::model::DEFAULT_CUT;
use mistnet_cli::image::DEFAULT_IMGSZ;
use mistnet_cli::model::DEFAULT_MODEL;
use mistnet_cli::{Argv, CutArgs, FrontArgs, ImageSizeArgs, ModelArgs, ToArgs};
use mistnet_store::{IngestStore, OnCorruption, StoreLimits, StoreUrl};
use mistnet_proto::pb::{
    feature_upload_server::FeatureUploadServer, front_distribution_server::FrontDistributionServer, ingest_status_server::IngestStatusServer,
    model_distribution_server::ModelDistributionServer,
};
use tokio::sync::watch;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};

use mistnet_ingest::auth::{Policy, Tokens};
use mistnet_ingest::manifest::{ExportManifest, ServedFront};
use mistnet_ingest::metrics::Reason;
use mistnet_ingest::model::ServedModel;
use mistnet_ingest::received::CountReceived;
use mistnet_ingest::service::{CallLimiter, InFlight, Ingest, Services};

/// `--weights` of serve: unlike a Front alone, serving needs the model's classes too.
const SERVE_WEIGHTS_HELP: &str = "Without --front: a deployable model, or Ultralytics-named weights with their Detect head \
(repeat for checkpoints split over several files); only the Front's tensors are served. Classes are a deployable \
model's names, else as many as the Detect head outputs; a file holding only the Front's tensors has no classes: export \
it and use --front";

#[derive(clap::Args, Debug, Clone, PartialEq)]
#[command(mut_arg("weights", |a| a.required(false).required_unless_present("export").help(SERVE_WEIGHTS_HELP)))]
#[command(after_help = "Prints `listening on ADDR` on stdout once it accepts calls. The standard gRPC health service \
(grpc.health.v1.Health, no token needed) reports mistnet.v1.FeatureUpload, mistnet.v1.FrontDistribution, \
mistnet.v1.ModelDistribution and mistnet.v1.IngestStatus SERVING from then on (and the overall status, service \"\"), NOT_SERVING while the store \
cannot write (a failed write, e.g. a full disk, is rolled back and the next upload tries again; SERVING once one \
succeeds), and NOT_SERVING once shutdown begins. At most 256 Health.Watch streams are open at once. Of --weights, \
only the Front's tensors are served.\n\n\
GetModel (`mistnet-edge detect --server`) serves a deployable model to edges: the model.safetensors of --front DIR \
(what export wrote there), or --serve-model FILE; none otherwise (NOT_FOUND). It is pinned by the SHA-256 of its \
tensors (manifest.json's model.sha256) and read again when the file changes, so a model exported into the served \
directory after training reaches the edges without a restart.\n\n\
Under hostile load: the open-file limit is raised to its hard limit; at most --max-connections connections are \
served at once (fewer when the open-file limit leaves no room: 64 descriptors stay for the store), the rest wait in \
the kernel's backlog; each carries at most --max-streams-per-connection concurrent streams; a connection that sends \
no handshake within --handshake-timeout, or reads nothing for 60 s (a live client answers the 20 s HTTP/2 keepalive \
pings), is closed.\n\n\
On SIGTERM or Ctrl-C it stops accepting connections and samples, acknowledges the samples already \
taken once they are durable, ends each upload stream with UNAVAILABLE (edges reconnect and resume \
later), closes the store and exits 0. Connections still open 10 s after the signal are cut.\n\n\
Every edge call needs `authorization: Bearer <token>` and `x-mistnet-edge: <edge id>` metadata matching a line of \
--tokens. With --operator-token-file, a GetStatus call with the operator token and no `x-mistnet-edge` shows every \
edge (`mistnet-cloud status` without --edge); an edge's token shows only that edge.\n\n\
Samples are checked against the served model: its Front hash, cut and feature shape, and its own classes (a box's \
class must be below its nc).\n\n\
With --metrics-listen ADDR, `GET http://ADDR/metrics` answers in the Prometheus text format (plaintext HTTP/1.1, no \
token, at most 8 connections at once, 10 s each). Counters since the start: mistnet_samples_stored_total{edge}, \
mistnet_feature_bytes_stored_total{edge}, mistnet_duplicates_total{edge}, mistnet_refusals_total{reason} (invalid, \
sample_quota, byte_quota, epsilon_budget, rate_limit, auth, store_unavailable), the histogram \
mistnet_ack_latency_seconds (a sample's arrival to its ack); read from the store at each scrape: \
mistnet_epsilon_spent{edge}, mistnet_store_bytes, mistnet_store_queue_depth, mistnet_in_flight_bytes, mistnet_store_writable (0/1). Edge labels \
are authenticated edge ids only. With an s3:// store, the ε and bytes are this replica's last view of each edge \
(GetStatus reads the bucket), mistnet_store_bytes counts feature bytes and the queue depth is the uploads being written.\n\n\
Several replicas on one s3:// store: each refuses to start unless the object store refuses to overwrite an object \
written create-if-absent. A replica killed mid-upload leaves that upload's ε counted though nothing was stored; the \
edge, never acknowledged, sends it again: ε is counted too much, never too little.\n\n\
Examples:\n  mistnet-cloud export --weights model.safetensors --cut 4 --out deploy/\n  \
mistnet-cloud serve --front deploy/ --tokens tokens.txt --tls-cert server.pem --tls-key server.key \\\n    \
--listen 0.0.0.0:50051 --store features/\n  \
mistnet-cloud serve --model yolov5s --weights yolov5s.safetensors --cut 4 --imgsz 640 --tokens tokens.txt --store features/\n  \
AWS_ENDPOINT=http://10.0.0.5:9000 AWS_ALLOW_HTTP=true mistnet-cloud serve --front deploy/ --tokens tokens.txt --store s3://features/job-1")]
pub struct Args {
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,
    /// The durable feature store: a directory (created if missing; also file:///ABS/PATH), or s3://BUCKET/PREFIX, a
    /// bucket of an S3-protocol object store that several serve replicas may share (exactly once per sample and the ε
    /// budget hold across them; the server must support conditional writes). The bucket's endpoint, region and
    /// credentials come from AWS_ENDPOINT, AWS_REGION, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY; AWS_ALLOW_HTTP=true
    /// allows a plain-HTTP endpoint.
    #[arg(long, value_name = "DIR|URL", default_value = "feature-store")]
    pub store: StoreUrl,
    /// Serve the output directory of `mistnet-cloud export` (manifest.json and front.safetensors): the Front,
    /// cut, imgsz, feature shape and classes come from its manifest; no model is built.
    #[arg(long = "front", value_name = "DIR", conflicts_with_all = ["weights", "model", "cut", "imgsz"])]
    pub export: Option<PathBuf>,
    /// The deployable model GetModel serves to edges (`mistnet-edge detect --server`), instead of the
    /// model.safetensors of --front DIR. It may not exist yet (where training will export it): GetModel
    /// answers NOT_FOUND until it does. Without either, GetModel answers NOT_FOUND.
    #[arg(long, value_name = "FILE")]
    pub serve_model: Option<PathBuf>,
    // Without --front: the Front edges run, computed as `export` computes it. Only the Front's tensors of
    // --weights are served; classes are a deployable model's names, else as many as the Detect head outputs.
    #[command(flatten)]
    pub front: FrontArgs,
    // The letterbox size edges must use: features are imgsz/stride square.
    #[command(flatten)]
    pub imgsz: ImageSizeArgs,
    /// Tokens file: one `edge-id token` per line (tokens of at least 16 characters; `#` starts a comment). Edge ids
    /// and tokens are visible ASCII, and every edge has its own token: else serve refuses to start, naming the line.
    #[arg(long)]
    pub tokens: PathBuf,
    /// File holding the operator token (first line, at least 16 characters, not any edge's token): it may
    /// call GetStatus for every edge and nothing else. Without it, status shows each edge only itself.
    #[arg(long)]
    pub operator_token_file: Option<PathBuf>,
    /// Server certificate chain (PEM). With --tls-key, serves TLS.
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// Server private key (PEM).
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// CA certificate (PEM) that client certificates must chain to: turns on mutual TLS.
    #[arg(long, requires = "tls_cert")]
    pub client_ca: Option<PathBuf>,
    /// With --client-ca: every edge call must come with a client certificate whose SAN (a DNS name or a URI)
    /// equals its `x-mistnet-edge`, so a stolen token is useless without that edge's certificate.
    #[arg(long, requires = "client_ca")]
    pub bind_cert_san: bool,
    /// Refuse to start when --tokens or --operator-token-file is readable by group or others (without it: a warning).
    #[arg(long)]
    pub strict_token_permissions: bool,
    /// Serve plaintext on a non-loopback address. INSECURE: tokens and features travel in the clear.
    #[arg(long)]
    pub insecure_plaintext: bool,
    /// Per-edge ε budget (basic composition over every accepted upload, re-uploads included);
    /// uploads past it are refused with RESOURCE_EXHAUSTED. Mechanism-none uploads count as ε = ∞.
    #[arg(long)]
    pub epsilon_budget: Option<f64>,
    /// Most samples stored per edge; new samples past it are refused with RESOURCE_EXHAUSTED.
    #[arg(long)]
    pub max_samples_per_edge: Option<u64>,
    /// Refuse new samples of an edge once its stored feature bytes would pass this many.
    #[arg(long, value_name = "BYTES")]
    pub max_bytes_per_edge: Option<u64>,
    /// What opening the store does with corruption at rest (damage followed by valid records): refuse (do not start,
    /// naming the file and byte) or quarantine (set the damaged bytes aside in DIR/quarantine/ and keep every valid
    /// record; the lost samples' edges upload them again). A torn tail left by a crash is always cut off.
    #[arg(long, value_name = "refuse|quarantine", default_value_t = OnCorruption::Refuse)]
    pub on_corruption: OnCorruption,
    /// Largest gRPC message accepted from an edge, in bytes.
    #[arg(long, default_value_t = DEFAULT_MAX_MESSAGE_BYTES)]
    pub max_message_bytes: usize,
    /// Most bytes of samples held at once over every upload stream (being read, validating, queued for the store,
    /// awaiting their ack). A stream reserves room for its next message before reading it; while none fits it
    /// reads nothing and HTTP/2 flow control holds back its edge's data. A stream that holds room
    /// but receives nothing gives it back after 100 ms while others wait. At least --max-message-bytes.
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_MAX_IN_FLIGHT_BYTES)]
    pub max_in_flight_bytes: usize,
    /// Most records written per fsync (group commit).
    #[arg(long, default_value_t = DEFAULT_MAX_BATCH)]
    pub max_batch: usize,
    /// Most connections served at once; more wait in the kernel's backlog.
    #[arg(long, default_value_t = DEFAULT_MAX_CONNECTIONS, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,
    /// Most concurrent HTTP/2 streams (calls) on one connection.
    #[arg(long, default_value_t = DEFAULT_MAX_STREAMS, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_streams_per_connection: u32,
    /// Seconds a new connection has to start its TLS or HTTP/2 handshake (and to finish a TLS one).
    #[arg(long, value_name = "SECONDS", default_value_t = DEFAULT_HANDSHAKE_TIMEOUT_S, value_parser = clap::value_parser!(u64).range(1..))]
    pub handshake_timeout: u64,
    /// Serve Prometheus metrics (text format) at http://ADDR/metrics: plaintext HTTP, no token. Off by default.
    /// They name edge ids and count their samples, bytes and ε, and nothing secret; still, listen on loopback or a
    /// private network (a non-loopback address is logged as a warning). The metrics are listed below.
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,
}

/// Largest gRPC message accepted from an edge by default.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 16 << 20;
/// Bytes of samples in flight over every stream by default.
pub const DEFAULT_MAX_IN_FLIGHT_BYTES: usize = 256 << 20;
/// Records per fsync by default.
pub const DEFAULT_MAX_BATCH: usize = 256;
/// Connections served at once by default.
pub const DEFAULT_MAX_CONNECTIONS: u32 = 1024;
/// Concurrent streams per connection by default (tonic's default is unlimited).
pub const DEFAULT_MAX_STREAMS: u32 = 100;
/// Handshake deadline by default, in seconds.
pub const DEFAULT_HANDSHAKE_TIMEOUT_S: u64 = 10;
/// Descriptors kept free of connections: the store's files, the runtime, stdio.
const RESERVED_DESCRIPTORS: u64 = 64;
/// HTTP/2 keepalive: a ping after this long without a frame from the client...
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(20);
/// ...which must be answered within this long.
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// A connection that reads nothing for this long is closed (a live client answers the pings).
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

impl Args {
    /// `serve --front EXPORT --store DIR --tokens TOKENS` on `listen`, every other flag at its default.
    pub fn of_export(listen: SocketAddr, store: PathBuf, export: PathBuf, tokens: PathBuf) -> Self {
        Args {
            listen,
            store: StoreUrl::Dir(store),
            export: Some(export),
            serve_model: None,
            front: FrontArgs { model: ModelArgs { name: DEFAULT_MODEL.into() }, weights: Vec::new(), cut: CutArgs { index: DEFAULT_CUT } },
            imgsz: ImageSizeArgs { px: DEFAULT_IMGSZ },
            tokens,
            operator_token_file: None,
            tls_cert: None,
            tls_key: None,
            client_ca: None,
            bind_cert_san: false,
            strict_token_permissions: false,
            insecure_plaintext: false,
            epsilon_budget: None,
            max_samples_per_edge: None,
            max_bytes_per_edge: None,
            on_corruption: OnCorruption::Refuse,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            max_in_flight_bytes: DEFAULT_MAX_IN_FLIGHT_BYTES,
            max_batch: DEFAULT_MAX_BATCH,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_streams_per_connection: DEFAULT_MAX_STREAMS,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT_S,
            metrics_listen: None,
        }
    }
}

impl ToArgs for Args {
    fn to_args(&self) -> Vec<OsString> {
        let mut argv = Argv::new();
        argv.arg("--listen", self.listen.to_string()).arg("--store", self.store.to_string());
        match &self.export {
            Some(dir) => argv.arg("--front", dir),
            None => argv.group(&self.front).group(&self.imgsz),
        };
        argv.opt("--serve-model", self.serve_model.as_ref())
            .arg("--tokens", &self.tokens)
            .opt("--operator-token-file", self.operator_token_file.as_ref())
            .opt("--tls-cert", self.tls_cert.as_ref())
            .opt("--tls-key", self.tls_key.as_ref())
            .opt("--client-ca", self.client_ca.as_ref())
            .switch("--bind-cert-san", self.bind_cert_san)
            .switch("--strict-token-permissions", self.strict_token_permissions)
            .switch("--insecure-plaintext", self.insecure_plaintext)
            .opt("--epsilon-budget", self.epsilon_budget.map(|b| b.to_string()))
            .opt("--max-samples-per-edge", self.max_samples_per_edge.map(|n| n.to_string()))
            .opt("--max-bytes-per-edge", self.max_bytes_per_edge.map(|n| n.to_string()))
            .arg("--on-corruption", self.on_corruption.to_string())
            .arg("--max-message-bytes", self.max_message_bytes.to_string())
            .arg("--max-in-flight-bytes", self.max_in_flight_bytes.to_string())
            .arg("--max-batch", self.max_batch.to_string())
            .arg("--max-connections", self.max_connections.to_string())
            .arg("--max-streams-per-connection", self.max_streams_per_connection.to_string())
            .arg("--handshake-timeout", self.handshake_timeout.to_string())
            .opt("--metrics-listen", self.metrics_listen.map(|a| a.to_string()))
            .build()
    }
}

pub fn run(args: Args) -> Result<()> {
    let policy = Policy { strict_permissions: args.strict_token_permissions, bind_cert_san: args.bind_cert_san };
    let tokens = Tokens::load(&args.tokens, args.operator_token_file.as_deref(), policy)?;
    if let Some(b) = args.epsilon_budget
        && !(b.is_finite() && b > 0.0)
    {
        bail!("--epsilon-budget must be a positive number, got {b}");
    }
    if args.max_in_flight_bytes < args.max_message_bytes {
        bail!("--max-in-flight-bytes ({}) must be at least --max-message-bytes ({}): a largest message would never fit", args.max_in_flight_bytes, args.max_message_bytes);
    }
    let tls = tls_config(&args)?;
    if tls.is_none() && !args.listen.ip().is_loopback() && !args.insecure_plaintext {
        bail!("refusing plaintext on {}: give --tls-cert/--tls-key, listen on loopback, or pass --insecure-plaintext", args.listen);
    }
    let served = match &args.export {
        Some(dir) => ServedFront::read(dir)?,
        None => front_of_weights(&args)?,
    };
    let expected = served.expected()?;
    let names = &served.manifest.names;
    tracing::info!(cut = served.manifest.cut, imgsz = served.manifest.imgsz, nc = names.len(), ?names, "serving the Front");
    let front = served.response();
    let model = served_model(&args)?;
    let limits = StoreLimits {
        epsilon_budget: args.epsilon_budget,
        max_samples_per_edge: args.max_samples_per_edge,
        max_bytes_per_edge: args.max_bytes_per_edge,
        on_corruption: args.on_corruption,
        max_batch: args.max_batch,
        ..StoreLimits::default()
    };
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let store = runtime.block_on(IngestStore::open(&args.store, limits)).with_context(|| format!("cannot open the feature store {}", args.store))?;
    let samples: u64 = store.seen().0.values().map(|t| t.samples).sum();
    tracing::info!(store = %args.store, samples, front = %front.front_hash, "store open");
    let (stop, stopping) = watch::channel(false);
    let ingest = Arc::new(Ingest { store, front, model, expected, epsilon_budget: args.epsilon_budget, stopping, limiter: CallLimiter::default(), in_flight: InFlight::new(args.max_in_flight_bytes), metrics: Arc::default() });

    let writable = ingest.store.writable();
    let served = runtime.block_on(serve(args, tokens, tls, Services(Arc::clone(&ingest)), writable, stop));
    // Dropping the runtime drops every task still holding the store (streams cut after the grace period).
    drop(runtime);
    match Arc::try_unwrap(ingest) {
        Ok(ingest) => {
            ingest.store.close();
            tracing::info!("store closed");
        }
        Err(_) => tracing::warn!("the store is still referenced; it closes when the process exits"),
    }
    served
}

/// How long after SIGTERM/Ctrl-C open connections may take to finish before they are cut.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

async fn serve(args: Args, tokens: Tokens, tls: Option<ServerTlsConfig>, services: Services, writable: watch::Receiver<bool>, stop: watch::Sender<bool>) -> Result<()> {
    let (health, health_service) = health::service();
    health::set(&health, true).await;
    let mut follower = health::follow_store(health.clone(), writable);
    let limits = listen::Limits {
        max_connections: connection_limit(args.max_connections)?,
        handshake: Duration::from_secs(args.handshake_timeout),
        idle: IDLE_TIMEOUT,
    };

    let metrics = Arc::clone(&services.0.metrics);
    let check = |t: Tokens| {
        let metrics = Arc::clone(&metrics);
        move |req| t.check(req).inspect_err(|_| metrics.refused(Reason::Auth))
    };
    let upload = FeatureUploadServer::new(services.clone()).max_decoding_message_size(args.max_message_bytes);
    let front = FrontDistributionServer::new(services.clone()).max_encoding_message_size(mistnet_proto::MAX_MESSAGE_BYTES);
    let model = ModelDistributionServer::new(services.clone());
    let scrapes = match args.metrics_listen {
        Some(at) => {
            let listener = tokio::net::TcpListener::bind(at).await.with_context(|| format!("cannot listen for metrics on {at}"))?;
            let at = listener.local_addr()?;
            if !at.ip().is_loopback() {
                tracing::warn!(%at, "metrics are served in plaintext, without a token, on a non-loopback address");
            }
            tracing::info!(url = %format!("http://{at}/metrics"), "serving metrics");
            Some(tokio::spawn(metrics::serve(listener, Arc::clone(&services.0))))
        }
        None => None,
    };
    let status = IngestStatusServer::new(services);

    let mut builder = Server::builder()
        .max_concurrent_streams(args.max_streams_per_connection)
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT));
    if let Some(tls) = tls {
        builder = builder.tls_config(tls.timeout(limits.handshake)).context("invalid TLS configuration")?;
    }
    // Installed before `listening on` is printed: a signal from then on is a clean shutdown.
    let signal = shutdown_signal()?;
    let listener = tokio::net::TcpListener::bind(args.listen).await.with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener.local_addr()?;
    println!("listening on {addr}");
    tracing::info!(%addr, max_connections = limits.max_connections, max_streams_per_connection = args.max_streams_per_connection, "serving");
    let mut stopped = stop.subscribe();
    let server = builder
        .add_service(health_service)
        .add_service(tonic::service::interceptor::InterceptedService::new(CountReceived(upload), check(tokens.clone())))
        .add_service(tonic::service::interceptor::InterceptedService::new(front, check(tokens.clone())))
        .add_service(tonic::service::interceptor::InterceptedService::new(model, check(tokens.clone())))
        .add_service(tonic::service::interceptor::InterceptedService::new(status, check(tokens)))
        .serve_with_incoming_shutdown(listen::incoming(listener, limits), async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        });
    let drain = async {
        signal.await;
        tracing::info!(grace_s = SHUTDOWN_GRACE.as_secs(), "shutting down: no new connections or samples; acknowledging the samples in flight");
        follower.abort();
        let _ = (&mut follower).await;
        health::set(&health, false).await;
        stop.send_replace(true);
        tokio::time::sleep(SHUTDOWN_GRACE).await;
    };
    tokio::select! {
        served = server => served.context("server failed")?,
        () = drain => tracing::warn!(grace_s = SHUTDOWN_GRACE.as_secs(), "connections still open after the grace period; cutting them"),
    }
    if let Some(scrapes) = scrapes {
        scrapes.abort();
    }
    tracing::info!("server stopped");
    Ok(())
}

/// `--max-connections`, lowered to what the open-file limit (raised to its hard limit first) leaves
/// after [`RESERVED_DESCRIPTORS`].
fn connection_limit(max: u32) -> Result<usize> {
    let files = listen::raise_descriptor_limit().context("cannot read or raise the open-file limit")?;
    let room = files.saturating_sub(RESERVED_DESCRIPTORS);
    if room == 0 {
        bail!("the open-file limit ({files}) leaves no descriptor for connections: {RESERVED_DESCRIPTORS} are kept for the store");
    }
    if room < u64::from(max) {
        tracing::warn!(max_connections = max, open_file_limit = files, serving = room, "the open-file limit lowers --max-connections");
    }
    Ok(room.min(u64::from(max)) as usize)
}

/// A future that resolves on SIGTERM or Ctrl-C (SIGINT). The handlers are installed by this call,
/// not when the future is first polled.
#[cfg(unix)]
fn shutdown_signal() -> Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot install the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot install the SIGINT handler")?;
    Ok(async move {
        tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
    })
}

/// A future that resolves on Ctrl-C.
#[cfg(not(unix))]
fn shutdown_signal() -> Result<impl Future<Output = ()>> {
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
    })
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

/// The model GetModel serves: --serve-model, else the one export wrote into --front DIR (checked
/// against its manifest), else none.
fn served_model(args: &Args) -> Result<Option<ServedModel>> {
    let model = match (&args.serve_model, &args.export) {
        (Some(file), _) => ServedModel::open(file, true)?,
        (None, Some(dir)) => {
            let manifest = ExportManifest::read(dir)?;
            let model = ServedModel::open(&manifest.model_path(dir)?, false)?;
            let sha256 = model.current().map(|f| f.sha256.clone()).unwrap_or_default();
            if sha256 != manifest.model.sha256 {
                bail!("{}: the model's tensors hash to {sha256}, its manifest says {}: export again", model.path().display(), manifest.model.sha256);
            }
            model
        }
        (None, None) => {
            tracing::info!("serving no model: GetModel answers NOT_FOUND (give --serve-model FILE)");
            return Ok(None);
        }
    };
    match model.current() {
        Some(file) => tracing::info!(model = %model.path().display(), sha256 = %file.sha256, "serving the model"),
        None => tracing::info!(model = %model.path().display(), "the model file does not exist yet: GetModel answers NOT_FOUND until it does"),
    }
    Ok(Some(model))
}

/// The Front of --model/--weights/--cut/--imgsz, computed as `export` computes it.
fn front_of_weights(args: &Args) -> Result<ServedFront> {
    let weights = &args.front.weights;
    let (model_yaml, names) = crate::export::model_and_classes(&args.front.model.name, weights)?;
    let exported = crate::export::export_front(&model_yaml, names, args.imgsz.px, args.front.cut.index, weights)?;
    let bytes = safetensors::serialize(exported.tensors.iter(), None).context("cannot serialize the Front's weights")?;
    ServedFront::new(exported.manifest, bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serve_flags_parse_back() {
        let a = Args {
            export: None,
            front: FrontArgs { model: ModelArgs { name: "yolov5s".into() }, weights: vec!["f.safetensors".into()], cut: CutArgs { index: 2 } },
            imgsz: ImageSizeArgs { px: 128 },
            ..Args::of_export("127.0.0.1:0".parse().unwrap(), "store".into(), "unused".into(), "tokens.txt".into())
        };
        assert_eq!(mistnet_cli::argv::reparse(&a).unwrap(), a);
        let b = Args {
            listen: "[::]:50051".parse().unwrap(),
            operator_token_file: Some("op.token".into()),
            tls_cert: Some("s.pem".into()),
            tls_key: Some("s.key".into()),
            client_ca: Some("ca.pem".into()),
            bind_cert_san: true,
            strict_token_permissions: true,
            insecure_plaintext: true,
            epsilon_budget: Some(12.5),
            max_samples_per_edge: Some(10),
            max_bytes_per_edge: Some(1 << 30),
            on_corruption: OnCorruption::Quarantine,
            max_message_bytes: 1 << 20,
            max_in_flight_bytes: 64 << 20,
            max_batch: 8,
            max_connections: 16,
            max_streams_per_connection: 4,
            handshake_timeout: 3,
            metrics_listen: Some("127.0.0.1:9464".parse().unwrap()),
            serve_model: Some("trained/model.safetensors".into()),
            ..a
        };
        assert_eq!(mistnet_cli::argv::reparse(&b).unwrap(), b);
        // --front alone: the weights flags keep their defaults and are not rendered.
        let c = Args::of_export("127.0.0.1:7".parse().unwrap(), "store".into(), "deploy".into(), "t.txt".into());
        assert_eq!(mistnet_cli::argv::reparse(&c).unwrap(), c);
    }
}
