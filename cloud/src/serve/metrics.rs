//! `--metrics-listen`: the Prometheus scrape endpoint. Plaintext HTTP/1.1, `GET /metrics` only
//! (what [`mistnet_ingest::metrics::Metrics::render`] writes), one request per connection; at most
//! [`MAX_SCRAPES`] connections at once, each with [`SCRAPE_TIMEOUT`] to send its request head (at
//! most [`MAX_REQUEST_HEAD`] bytes) and read the answer.

use std::sync::Arc;
use std::time::Duration;

use mistnet_ingest::metrics::CONTENT_TYPE;
use mistnet_ingest::service::Ingest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

/// Connections served at once; more wait in the kernel's backlog.
const MAX_SCRAPES: usize = 8;
/// Time a connection has to send its request and read the answer.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest request head read.
const MAX_REQUEST_HEAD: usize = 8 << 10;

/// Answers scrapes on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, ingest: Arc<Ingest>) {
    let permits = Arc::new(Semaphore::new(MAX_SCRAPES));
    loop {
        let Ok(permit) = Arc::clone(&permits).acquire_owned().await else { return };
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of descriptors, most likely: wait instead of spinning.
                tracing::warn!(error = %e, "metrics: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let ingest = Arc::clone(&ingest);
        tokio::spawn(async move {
            if let Ok(Err(e)) = tokio::time::timeout(SCRAPE_TIMEOUT, answer(stream, &ingest)).await {
                tracing::debug!(error = %e, "metrics: scrape failed");
            }
            drop(permit);
        });
    }
}

/// Reads one request head and answers it.
async fn answer(mut stream: TcpStream, ingest: &Ingest) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        if head.len() > MAX_REQUEST_HEAD {
            return respond(&mut stream, "431 Request Header Fields Too Large", "text/plain", "request head too large\n").await;
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&chunk[..n]);
    }
    let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let mut parts = line.split(|&b| b == b' ');
    let (method, target) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
    let path = target.split(|&b| b == b'?').next().unwrap_or_default();
    match (method, path) {
        (b"GET", b"/metrics") => respond(&mut stream, "200 OK", CONTENT_TYPE, &ingest.metrics.render(&ingest.store, ingest.in_flight.held())).await,
        (b"GET", _) => respond(&mut stream, "404 Not Found", "text/plain", "only /metrics is served\n").await,
        _ => respond(&mut stream, "405 Method Not Allowed", "text/plain", "only GET /metrics is served\n").await,
    }
}

async fn respond(stream: &mut TcpStream, status: &str, content_type: &str, body: &str) -> std::io::Result<()> {
    let head = format!("HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}
