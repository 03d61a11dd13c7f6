//! Ingest benchmark: throughput (samples/s, MB/s) and ack latency (p50/p99) of `mistnet-cloud serve`
//! with 1, 16 and 64 concurrent edges on loopback, durable writes (fsync before ack) on.
//!
//! The server serves a yolov5s Front at cut 4 and 640 px (random-init weights written to a temporary
//! file), so payloads are yolov5s cut-4 640 px features: [1, 128, 80, 80] = 819,200 elements, packed,
//! SUE ε = 2 over random values (incompressible: 102,480 bytes with the header).
//!
//! Run: `cargo bench -p mistnet-cloud --bench ingest [-- SAMPLES [EDGES...]]` (default 3000 samples
//! per configuration, edges 1 16 64). `RUST_LOG` is passed to the server (default `warn`;
//! `mistnet_store=debug` logs every group commit). Besides throughput and latency it prints the CPU
//! time the server and this client process spent per sample (from /proc, Linux only).
//! `MISTNET_CLOUD_BIN=PATH` benchmarks another `mistnet-cloud` binary with the same client.

mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use mistnet_proto::pb::feature_upload_client::FeatureUploadClient;
use support::{Server, authed, channel, cpu_seconds, load_average, peak_rss_kb, sample};

const EDGES: [usize; 3] = [1, 16, 64];
const DISTINCT_MESSAGES: usize = 32;

fn main() {
    let numbers: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let samples_per_config = numbers.first().copied().unwrap_or(3000);
    let edge_counts = if numbers.len() > 1 { numbers[1..].to_vec() } else { EDGES.to_vec() };
    let server = Server::start("yolov5s", 640, edge_counts.iter().copied().max().unwrap_or(1));
    let (url, shape) = (server.url.clone(), server.shape);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let messages = server.messages(DISTINCT_MESSAGES).await;
        let bytes = messages[0].len();
        println!("{} cut {} at {} px: {shape:?}, {bytes} bytes per sample; {samples_per_config} samples per configuration; fsync before every ack", server.model, support::CUT, server.imgsz);
        println!("{:>6} {:>10} {:>8} {:>10} {:>10} {:>16} {:>16}", "edges", "samples/s", "MB/s", "p50 ms", "p99 ms", "server CPU ms/s.", "client CPU ms/s.");
        println!("(CPU ms/s.: CPU time per sample; server peak RSS is printed after each configuration)");
        for edges in edge_counts {
            let per_edge = samples_per_config / edges;
            let cpu_before = (cpu_seconds(server.pid()), cpu_seconds(std::process::id()));
            let start = Instant::now();
            let tasks: Vec<_> = (0..edges)
                .map(|e| {
                    let (url, messages) = (url.clone(), messages.clone());
                    tokio::spawn(async move { run_edge(&url, e, edges, per_edge, &messages).await })
                })
                .collect();
            let mut latencies = Vec::new();
            for t in tasks {
                latencies.extend(t.await.unwrap());
            }
            let secs = start.elapsed().as_secs_f64();
            latencies.sort();
            let pct = |p: f64| latencies[((latencies.len() - 1) as f64 * p) as usize].as_secs_f64() * 1e3;
            let n = latencies.len() as f64;
            let per_sample = |before: Option<f64>, pid: u32| match (before, cpu_seconds(pid)) {
                (Some(b), Some(a)) => format!("{:.3}", (a - b) * 1e3 / n),
                _ => "-".into(),
            };
            let (server_cpu, client_cpu) = (per_sample(cpu_before.0, server.pid()), per_sample(cpu_before.1, std::process::id()));
            println!(
                "{edges:>6} {:>10.0} {:>8.1} {:>10.2} {:>10.2} {server_cpu:>16} {client_cpu:>16}",
                n / secs,
                n * bytes as f64 / secs / 1e6,
                pct(0.5),
                pct(0.99)
            );
            if let Some(kb) = peak_rss_kb(server.pid()) {
                println!("       server peak RSS so far: {:.0} MB; load average {}", kb as f64 / 1e3, load_average());
            }
        }
    });
}

/// One edge: streams `count` samples and returns the ack latency of each.
async fn run_edge(url: &str, edge: usize, run: usize, count: usize, messages: &[Vec<u8>]) -> Vec<Duration> {
    let channel = channel(url).await;
    let mut client = FeatureUploadClient::new(channel);
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let sent = std::sync::Arc::new(std::sync::Mutex::new(HashMap::new()));
    let sent_by_sender = std::sync::Arc::clone(&sent);
    let messages = messages.to_vec();
    tokio::spawn(async move {
        for i in 0..count {
            let sample = sample(format!("run{run}-{i}"), messages[i % messages.len()].clone());
            sent_by_sender.lock().unwrap().insert(sample.sample_id.clone(), Instant::now());
            if tx.send(sample).await.is_err() {
                break;
            }
        }
    });
    let mut acks = client.upload(authed(tokio_stream::wrappers::ReceiverStream::new(rx), edge)).await.unwrap().into_inner();
    let mut latencies = Vec::with_capacity(count);
    while latencies.len() < count {
        let ack = acks.message().await.unwrap().expect("stream ended early");
        assert_eq!(ack.code, 0, "{}", ack.message);
        let at = sent.lock().unwrap().remove(&ack.sample_id).expect("ack for a sent sample");
        latencies.push(at.elapsed());
    }
    latencies
}
