//! Many edges at once: EDGES concurrent lightweight edge clients, one connection and one Upload
//! stream each, against one `mistnet-cloud serve` on loopback, for a bounded time. Every edge sends
//! a sample every INTERVAL seconds from a random phase (a fleet of cameras, each with its own
//! pace), waiting for each ack before the next; with `burst` every edge sends its first sample at
//! the same moment instead. Payloads are yolov5s cut-4 640 px features ([1, 128, 80, 80] packed,
//! SUE ε = 2 over random values: 102,480 incompressible bytes), fsync before every ack.
//!
//! Reports samples/s, the ack latency an edge sees (send to ack, p50/p99/max), refusals (acks
//! with a non-zero code; streams and connections that failed), the server's peak RSS and the
//! bytes it held in flight (`--max-in-flight-bytes`, default 256 MiB), with the load average.
//!
//! Run: `cargo bench -p mistnet-cloud --bench many_edges [-- EDGES SECONDS INTERVAL_S [burst] [SERVE FLAGS]]`
//! (default 10000 40 20); flags from the first `--...` on are passed to `serve` (`--max-in-flight-bytes 67108864`). Needs an open-file limit above EDGES for this process and the server
//! (the server raises its own to the hard limit). `MISTNET_CLOUD_BIN=PATH` runs another build of
//! the server.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use mistnet_proto::pb::feature_upload_client::FeatureUploadClient;
use rand::Rng;
use support::{Server, authed, load_average, peak_rss_kb, sample};

const DISTINCT_MESSAGES: usize = 32;
/// Connections being opened at once (the server's accept backlog is finite).
const CONNECTING_AT_ONCE: usize = 256;

#[derive(Default)]
struct Tally {
    refused_acks: AtomicU64,
    failed_streams: AtomicU64,
    failed_connections: AtomicU64,
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    let number = |i: usize, default: u64| args.get(i).and_then(|a| a.parse().ok()).unwrap_or(default);
    let (edges, seconds, interval) = (number(0, 10_000) as usize, number(1, 40), number(2, 20));
    let burst = args.iter().any(|a| a == "burst");
    let connections = (edges + 100).to_string();
    let mut serve_flags = vec!["--max-connections", &connections];
    serve_flags.extend(args.iter().skip_while(|a| !a.starts_with("--")).map(String::as_str));
    let server = Server::start_with("yolov5s", 640, edges, &serve_flags);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let messages = Arc::new(server.messages(DISTINCT_MESSAGES).await);
        println!(
            "{edges} edges, one connection each, for {seconds} s, a sample every {interval} s per edge ({}); {} cut {} at {} px, {} bytes per sample; serve {}; load average {}",
            if burst { "all at once first" } else { "random phase" },
            server.model,
            support::CUT,
            server.imgsz,
            messages[0].len(),
            serve_flags.join(" "),
            load_average()
        );
        let tally = Arc::new(Tally::default());
        let connecting = Arc::new(tokio::sync::Semaphore::new(CONNECTING_AT_ONCE));
        let connected = Arc::new(tokio::sync::Barrier::new(edges + 1));
        let start_connecting = Instant::now();
        let tasks: Vec<_> = (0..edges)
            .map(|e| {
                let (url, messages, tally, connecting, connected) =
                    (server.url.clone(), Arc::clone(&messages), Arc::clone(&tally), Arc::clone(&connecting), Arc::clone(&connected));
                let phase = if burst { Duration::ZERO } else { Duration::from_secs_f64(rand::rng().random_range(0.0..interval as f64)) };
                tokio::spawn(async move {
                    let channel = {
                        let _turn = connecting.acquire().await.unwrap();
                        tokio::time::timeout(Duration::from_secs(30), channel_or_none(&url)).await.ok().flatten()
                    };
                    connected.wait().await;
                    let Some(channel) = channel else {
                        tally.failed_connections.fetch_add(1, Ordering::Relaxed);
                        return Vec::new();
                    };
                    run_edge(channel, e, phase, Duration::from_secs(interval), Duration::from_secs(seconds), &messages, &tally).await
                })
            })
            .collect();
        // Every edge connected (or failed to): the clock starts for all at once.
        connected.wait().await;
        let connect_s = start_connecting.elapsed().as_secs_f64();
        let rss_connected = peak_rss_kb(server.pid());
        let start = Instant::now();
        let pid = server.pid();
        let watch = tokio::spawn(async move {
            // The server's resident memory every 5 s: where the peak comes from.
            let mut timeline = Vec::new();
            loop {
                tokio::time::sleep(Duration::from_secs(5)).await;
                timeline.push(format!("{:.0}s {:.0} MB", start.elapsed().as_secs_f64(), rss_kb(pid).unwrap_or(0) as f64 / 1e3));
                if start.elapsed().as_secs() > seconds {
                    return timeline;
                }
            }
        });
        let mut latencies = Vec::new();
        for t in tasks {
            latencies.extend(t.await.unwrap());
        }
        let secs = start.elapsed().as_secs_f64();
        latencies.sort();
        let pct = |p: f64| latencies.get(((latencies.len().max(1) - 1) as f64 * p) as usize).map_or(f64::NAN, |d| d.as_secs_f64() * 1e3);
        println!("connected {edges} edges in {connect_s:.1} s (server peak RSS then {:.0} MB)", rss_connected.unwrap_or(0) as f64 / 1e3);
        println!("{:>9} {:>10} {:>9} {:>9} {:>9} {:>9} {:>13} {:>14} {:>12}", "samples", "samples/s", "p50 ms", "p99 ms", "max ms", "refused", "failed streams", "failed connect", "server RSS");
        println!(
            "{:>9} {:>10.0} {:>9.1} {:>9.1} {:>9.1} {:>9} {:>13} {:>14} {:>9.0} MB",
            latencies.len(),
            latencies.len() as f64 / secs,
            pct(0.5),
            pct(0.99),
            pct(1.0),
            tally.refused_acks.load(Ordering::Relaxed),
            tally.failed_streams.load(Ordering::Relaxed),
            tally.failed_connections.load(Ordering::Relaxed),
            peak_rss_kb(server.pid()).unwrap_or(0) as f64 / 1e3
        );
        println!("server RSS every 5 s: {}", watch.await.unwrap().join(", "));
        println!("load average {}", load_average());
    });
}

async fn channel_or_none(url: &str) -> Option<tonic::transport::Channel> {
    tonic::transport::Endpoint::from_shared(url.to_string()).ok()?.tcp_nodelay(true).connect().await.ok()
}

/// One edge: after `phase`, a sample every `interval` until `run` is over, each sent once its
/// previous one is acked; returns the ack latency of each acked sample.
async fn run_edge(
    channel: tonic::transport::Channel,
    edge: usize,
    phase: Duration,
    interval: Duration,
    run: Duration,
    messages: &[Vec<u8>],
    tally: &Tally,
) -> Vec<Duration> {
    let start = Instant::now();
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let mut client = FeatureUploadClient::new(channel);
    let call = client.upload(authed(tokio_stream::wrappers::ReceiverStream::new(rx), edge));
    // The call starts once the first message is sent: send it before awaiting the response.
    let mut latencies = Vec::new();
    let mut next = start + phase;
    let mut i = 0usize;
    tokio::time::sleep_until(next.into()).await;
    if tx.send(sample(format!("e{edge}-{i}"), messages[(edge + i) % messages.len()].clone())).await.is_err() {
        tally.failed_streams.fetch_add(1, Ordering::Relaxed);
        return latencies;
    }
    let mut sent_at = Instant::now();
    let mut acks = match call.await {
        Ok(response) => response.into_inner(),
        Err(_) => {
            tally.failed_streams.fetch_add(1, Ordering::Relaxed);
            return latencies;
        }
    };
    loop {
        match acks.message().await {
            Ok(Some(ack)) => {
                latencies.push(sent_at.elapsed());
                if ack.code != 0 {
                    tally.refused_acks.fetch_add(1, Ordering::Relaxed);
                }
            }
            _ => {
                tally.failed_streams.fetch_add(1, Ordering::Relaxed);
                return latencies;
            }
        }
        i += 1;
        next += interval;
        if next.duration_since(start) >= run {
            return latencies;
        }
        tokio::time::sleep_until(next.into()).await;
        if tx.send(sample(format!("e{edge}-{i}"), messages[(edge + i) % messages.len()].clone())).await.is_err() {
            tally.failed_streams.fetch_add(1, Ordering::Relaxed);
            return latencies;
        }
        sent_at = Instant::now();
    }
}

/// Resident set size of process `pid` now, in kB (Linux `/proc`).
fn rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.split_whitespace().next()?.parse().ok()
}
