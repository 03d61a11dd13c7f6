//! `mistnet-cloud status`: asks a running `serve` for per-edge counts, store size and the ε ledger:
//! of every edge with the operator token, or of one edge with that edge's token.

use std::path::PathBuf;

use anyhow::{Context, Result};
use mistnet_proto::pb::{self, ingest_status_client::IngestStatusClient};
use mistnet_proto::{AUTHORIZATION, EDGE_HEADER, read_token_file};
use serde_json::json;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

#[derive(clap::Args)]
#[command(after_help = "Examples:\n  \
# every edge and the store size, as the operator:\n  \
mistnet-cloud status --server http://127.0.0.1:50051 --token-file operator.token\n  \
# only edge-1, with edge-1's token:\n  \
mistnet-cloud status --server http://127.0.0.1:50051 --edge edge-1 --token-file edge-1.token --json")]
pub struct Args {
    /// Server URL: http://HOST:PORT, or https://HOST:PORT for TLS.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    server: String,
    /// Ask as this edge, with its token: the answer shows only this edge. Without --edge the call is
    /// the operator's (the token of `serve --operator-token-file`) and shows every edge and the store size.
    #[arg(long)]
    edge: Option<String>,
    /// File holding the token (first line): the operator's, or with --edge that edge's.
    #[arg(long)]
    token_file: PathBuf,
    /// CA certificate (PEM) to verify the server with, for https.
    #[arg(long)]
    ca_cert: Option<PathBuf>,
    /// Print JSON instead of a table, with the per-sample ε ledger.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> Result<()> {
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let status = runtime.block_on(fetch(&args))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&to_json(&status))?);
    } else {
        print_table(&status);
    }
    Ok(())
}

async fn fetch(args: &Args) -> Result<pb::StatusResponse> {
    let token = read_token_file(&args.token_file)?;
    let mut endpoint = Endpoint::from_shared(args.server.clone()).with_context(|| format!("invalid server URL {}", args.server))?;
    if let Some(ca) = &args.ca_cert {
        let pem = std::fs::read(ca).with_context(|| format!("cannot read {}", ca.display()))?;
        endpoint = endpoint.tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)))?;
    }
    let channel = endpoint.connect().await.with_context(|| format!("cannot connect to {}", args.server))?;
    let mut req = tonic::Request::new(pb::StatusRequest {});
    req.metadata_mut().insert(AUTHORIZATION, format!("Bearer {token}").parse().context("the token is not valid metadata")?);
    if let Some(edge) = &args.edge {
        req.metadata_mut().insert(EDGE_HEADER, edge.parse().context("the edge id is not valid metadata")?);
    }
    let status = IngestStatusClient::new(channel).get_status(req).await.map_err(|s| anyhow::anyhow!("status call refused: {}: {}", s.code(), s.message()))?;
    Ok(status.into_inner())
}

/// ε as JSON: a number, or the string "inf" for an upload without noise.
fn eps(v: f64) -> serde_json::Value {
    if v.is_finite() { json!(v) } else { json!("inf") }
}

fn to_json(s: &pb::StatusResponse) -> serde_json::Value {
    json!({
        "front_hash": s.front_hash,
        "all_edges": s.all_edges,
        "samples": s.samples,
        "store_bytes": if s.all_edges { json!(s.store_bytes) } else { serde_json::Value::Null },
        "epsilon_budget": s.epsilon_budget,
        "edges": s.edges.iter().map(|e| json!({
            "edge": e.edge,
            "samples": e.samples,
            "feature_bytes": e.feature_bytes,
            "uploads": e.uploads,
            "epsilon_total": eps(e.epsilon_total),
            "uploads_without_privacy": e.uploads_without_privacy,
            "ledger": e.ledger.iter().map(|l| json!({
                "sample_id": l.sample_id,
                "epsilon": l.epsilon.iter().map(|&v| eps(v)).collect::<Vec<_>>(),
                "epsilon_total": eps(l.epsilon_total),
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}

fn print_table(s: &pb::StatusResponse) {
    let budget = s.epsilon_budget.map_or("none".to_string(), |b| b.to_string());
    if s.all_edges {
        println!("front {}  samples {}  store {:.1} MB  ε budget {budget}", s.front_hash, s.samples, s.store_bytes as f64 / 1e6);
    } else {
        println!("front {}  samples {}  ε budget {budget}  (this edge only; the operator token shows every edge)", s.front_hash, s.samples);
    }
    println!("{:<24} {:>9} {:>9} {:>12} {:>10} {:>10} {:>12}", "edge", "samples", "uploads", "MB", "ε total", "no-noise", "max ε/sample");
    for e in &s.edges {
        let max = e.ledger.iter().map(|l| l.epsilon_total).fold(0.0, f64::max);
        println!("{:<24} {:>9} {:>9} {:>12.2} {:>10.3} {:>10} {:>12.3}", e.edge, e.samples, e.uploads, e.feature_bytes as f64 / 1e6,
            e.epsilon_total, e.uploads_without_privacy, max);
    }
}
