//! `mistnet-cloud status`: asks a running `serve` for per-edge counts, store size and the ε ledger:
//! of every edge with the operator token, or of one edge with that edge's token. It connects as
//! the edges do (TLS, mTLS, no plaintext off loopback). The server sends each edge's ledger in
//! pages; this follows them (waiting out the server's rate limit) and shows the whole ledger.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use mistnet_cli::ClientArgs;
use mistnet_proto::pb::{self, ingest_status_client::IngestStatusClient};
use serde_json::json;

#[derive(clap::Args)]
#[command(after_help = "Examples:\n  \
# every edge and the store size, as the operator:\n  \
mistnet-cloud status --server http://127.0.0.1:50051 --token-file operator.token\n  \
# only edge-1, with edge-1's token:\n  \
mistnet-cloud status --server http://127.0.0.1:50051 --edge edge-1 --token-file edge-1.token --json\n  \
# over mutual TLS:\n  \
mistnet-cloud status --server https://cloud:50051 --ca-cert ca.pem --client-cert op.pem --client-key op.key --token-file operator.token\n\n\
--token-file holds the operator's token (`serve --operator-token-file`), or with --edge that edge's.")]
pub struct Args {
    #[command(flatten)]
    client: ClientArgs,
    /// Ask as this edge, with its token: the answer shows only this edge. Without --edge the call is
    /// the operator's (the token of `serve --operator-token-file`) and shows every edge and the store size.
    #[arg(long)]
    edge: Option<String>,
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

/// Ledger entries asked for per page when following an edge's ledger.
const LEDGER_PAGE: u32 = 10_000;
/// Rate-limited calls retried in a row before giving up.
const RATE_LIMIT_RETRIES: u32 = 20;

async fn fetch(args: &Args) -> Result<pb::StatusResponse> {
    let client = args.client.client(args.edge.as_deref())?;
    let channel = client.connect().await?;
    let mut rpc = IngestStatusClient::new(channel).max_decoding_message_size(mistnet_proto::MAX_MESSAGE_BYTES);
    // The first page of every edge's ledger, then the rest edge by edge.
    let mut status = call(&mut rpc, &client, pb::StatusRequest::default()).await?;
    for edge in &mut status.edges {
        while !edge.ledger_next_page_token.is_empty() {
            let request = pb::StatusRequest { max_ledger: Some(LEDGER_PAGE), edge: edge.edge.clone(), ledger_page_token: std::mem::take(&mut edge.ledger_next_page_token) };
            let mut page = call(&mut rpc, &client, request).await?;
            let Some(more) = page.edges.pop().filter(|e| e.edge == edge.edge) else { bail!("the server answered a ledger page of edge {} with another edge", edge.edge) };
            edge.ledger.extend(more.ledger);
            edge.ledger_next_page_token = more.ledger_next_page_token;
        }
    }
    Ok(status)
}

/// One GetStatus call; a rate-limited one is retried after the server's advice.
async fn call(rpc: &mut IngestStatusClient<tonic::transport::Channel>, client: &mistnet_proto::client::Client, request: pb::StatusRequest) -> Result<pb::StatusResponse> {
    let mut refused = 0;
    loop {
        match rpc.get_status(client.request(request.clone())).await {
            Ok(reply) => return Ok(reply.into_inner()),
            Err(s) if s.code() == tonic::Code::ResourceExhausted && refused < RATE_LIMIT_RETRIES => {
                refused += 1;
                tokio::time::sleep(mistnet_proto::retry_after(&s).unwrap_or(Duration::from_secs(1))).await;
            }
            Err(s) => bail!("status call refused: {}: {}", s.code(), s.message()),
        }
    }
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
