//! Status-flood benchmark (issue 14, item 8): does one edge hammering the status calls slow another
//! edge's uploads? `mistnet-cloud serve` on 127.0.0.1 serves a random-init yolov5n Front at cut 4,
//! 128 px (`[1, 64, 16, 16]`, 2,064-byte packed SUE ε = 2 messages). Edge 1 first stores STORED
//! samples, so the calls have a ledger to walk; then rounds alternate between **quiet** (edge 0
//! uploads alone) and **flood** (the same while six tasks of edge 1, each on its own connection,
//! call GetStatus and ListStored — every stored id — back to back, never backing off when refused).
//! Edge 0 uploads one sample at a time (send, wait for its ack, fsync'd), so each ack latency is
//! the service time of one upload. Printed per round: edge 0's ack p50 and p99, the flooder's calls
//! answered and refused (RESOURCE_EXHAUSTED) per second, the server's CPU and the load average.
//!
//! Run: `cargo bench -p mistnet-cloud --bench status_flood [-- STORED ROUNDS UPLOADS]` (defaults
//! 20000 3 300). `MISTNET_CLOUD_BIN=PATH` runs another server build with the same client.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use mistnet_proto::pb::{self, feature_upload_client::FeatureUploadClient, ingest_status_client::IngestStatusClient};
use support::{Server, authed, channel, cpu_seconds, load_average, peak_rss_kb, sample};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

const UPLOADER: usize = 0;
const FLOODER: usize = 1;
const FLOOD_TASKS: usize = 6;
const DISTINCT_MESSAGES: usize = 16;

fn main() {
    let numbers: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let stored = numbers.first().copied().unwrap_or(20_000);
    let rounds = numbers.get(1).copied().unwrap_or(3);
    let uploads = numbers.get(2).copied().unwrap_or(300);
    let server = Server::start("yolov5n", 128, 2);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let messages = server.messages(DISTINCT_MESSAGES).await;
        let started = Instant::now();
        prefill(&server.url, stored, &messages).await;
        println!(
            "{} cut {} at {} px: {:?}, {} bytes per sample; edge {FLOODER} stored {stored} samples in {:.1} s; {uploads} uploads per round, one at a time",
            server.model,
            support::CUT,
            server.imgsz,
            server.shape,
            messages[0].len(),
            started.elapsed().as_secs_f64()
        );
        println!("{:>5} {:>7} {:>9} {:>9} {:>14} {:>14} {:>13} {:>6}", "round", "", "p50 ms", "p99 ms", "flood ok/s", "refused/s", "server CPU %", "load");
        let mut ratios = Vec::new();
        for round in 0..rounds {
            let mut p50 = [0.0; 2];
            for (k, flood) in [false, true].into_iter().enumerate() {
                let cpu = cpu_seconds(server.pid());
                let t = Instant::now();
                let (latencies, calls) = if flood {
                    let stop = Arc::new(AtomicBool::new(false));
                    let counts = Arc::new((AtomicU64::new(0), AtomicU64::new(0)));
                    let flooders: Vec<_> = (0..FLOOD_TASKS).map(|_| tokio::spawn(flood_calls(server.url.clone(), Arc::clone(&stop), Arc::clone(&counts)))).collect();
                    let latencies = upload_one_by_one(&server.url, &format!("r{round}-flood"), uploads, &messages).await;
                    stop.store(true, Ordering::Relaxed);
                    for f in flooders {
                        f.await.unwrap();
                    }
                    (latencies, Some((counts.0.load(Ordering::Relaxed), counts.1.load(Ordering::Relaxed))))
                } else {
                    (upload_one_by_one(&server.url, &format!("r{round}-quiet"), uploads, &messages).await, None)
                };
                let secs = t.elapsed().as_secs_f64();
                let cpu = match (cpu, cpu_seconds(server.pid())) {
                    (Some(a), Some(b)) => format!("{:.0}", (b - a) / secs * 100.0),
                    _ => "-".into(),
                };
                let pct = |p: f64| latencies[((latencies.len() - 1) as f64 * p) as usize].as_secs_f64() * 1e3;
                p50[k] = pct(0.5);
                let (ok, refused) = calls.map_or(("-".into(), "-".into()), |(ok, no)| (format!("{:.0}", ok as f64 / secs), format!("{:.0}", no as f64 / secs)));
                let label = if flood { "flood" } else { "quiet" };
                println!("{round:>5} {label:>7} {:>9.2} {:>9.2} {ok:>14} {refused:>14} {cpu:>13} {:>6}", pct(0.5), pct(0.99), load_average());
            }
            ratios.push(p50[1] / p50[0]);
        }
        if let Some(kb) = peak_rss_kb(server.pid()) {
            println!("server peak RSS: {:.0} MB", kb as f64 / 1e3);
        }
        ratios.sort_by(f64::total_cmp);
        println!("flood / quiet ack p50, per round: {}; median {:.2}×", ratios.iter().map(|r| format!("{r:.2}×")).collect::<Vec<_>>().join(" "), ratios[ratios.len() / 2]);
    });
}

/// Edge [`FLOODER`] stores `n` samples, pipelined.
async fn prefill(url: &str, n: usize, messages: &[Vec<u8>]) {
    let mut client = FeatureUploadClient::new(channel(url).await);
    let (tx, rx) = mpsc::channel(256);
    let messages = messages.to_vec();
    tokio::spawn(async move {
        for i in 0..n {
            if tx.send(sample(format!("stored-{i:06}"), messages[i % messages.len()].clone())).await.is_err() {
                break;
            }
        }
    });
    let mut acks = client.upload(authed(ReceiverStream::new(rx), FLOODER)).await.unwrap().into_inner();
    for _ in 0..n {
        let ack = acks.message().await.unwrap().expect("an ack per sample");
        assert_eq!(ack.code, 0, "{}", ack.message);
    }
}

/// Edge [`UPLOADER`] uploads `n` samples on one stream, each sent once the previous one is
/// acknowledged; the latency of each ack.
async fn upload_one_by_one(url: &str, prefix: &str, n: usize, messages: &[Vec<u8>]) -> Vec<Duration> {
    let mut client = FeatureUploadClient::new(channel(url).await);
    let (tx, rx) = mpsc::channel(1);
    let next = |i: usize| sample(format!("{prefix}-{i}"), messages[i % messages.len()].clone());
    let mut sent_at = Instant::now();
    tx.send(next(0)).await.unwrap();
    let mut acks = client.upload(authed(ReceiverStream::new(rx), UPLOADER)).await.unwrap().into_inner();
    let mut latencies = Vec::with_capacity(n);
    for i in 0..n {
        let ack = acks.message().await.unwrap().expect("an ack per sample");
        assert_eq!(ack.code, 0, "{}", ack.message);
        latencies.push(sent_at.elapsed());
        if i + 1 < n {
            sent_at = Instant::now();
            tx.send(next(i + 1)).await.unwrap();
        }
    }
    latencies.sort();
    latencies
}

/// One flooding task of edge [`FLOODER`]: GetStatus then ListStored (every id), back to back, until
/// `stop`; counts answered (`.0`) and refused (`.1`) calls.
async fn flood_calls(url: String, stop: Arc<AtomicBool>, counts: Arc<(AtomicU64, AtomicU64)>) {
    let ch = channel(&url).await;
    let (mut status, mut upload) = (IngestStatusClient::new(ch.clone()), FeatureUploadClient::new(ch));
    let count = |answer: Result<(), tonic::Status>| match answer {
        Ok(()) => counts.0.fetch_add(1, Ordering::Relaxed),
        Err(s) if s.code() == tonic::Code::ResourceExhausted => counts.1.fetch_add(1, Ordering::Relaxed),
        Err(s) => panic!("flood call failed: {s}"),
    };
    while !stop.load(Ordering::Relaxed) {
        count(status.get_status(authed(pb::StatusRequest::default(), FLOODER)).await.map(drop));
        let listed = async {
            let mut batches = upload.list_stored(authed(pb::ListStoredRequest::default(), FLOODER)).await?.into_inner();
            while batches.message().await?.is_some() {}
            Ok(())
        };
        count(listed.await);
    }
}
