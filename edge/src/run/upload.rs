//! Streaming spooled samples to the cloud until every one is acknowledged: each round lists what
//! the cloud already stored (resume), streams the rest and collects acks; a broken round is retried
//! with exponential backoff and full jitter (no sooner than the server's retry advice). A stream
//! the server ends with an error reports that status.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow, bail};
use indicatif::ProgressBar;
use mistnet_proto::pb::{self, feature_upload_client::FeatureUploadClient};
use rand::Rng;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

use mistnet_proto::client::Client as Cloud;
use super::spool::Spooled;

/// Retry policy.
#[derive(Debug, Clone, Copy)]
pub struct Retry {
    pub max_attempts: u32,
    pub base: Duration,
    pub cap: Duration,
}

/// Samples refused for good (validation, quota, ε budget): id and reason.
pub type Refused = Vec<(String, String)>;

/// What an upload did: the refused samples, and the bytes behind its goodput.
#[derive(Debug, Default)]
pub struct Uploaded {
    pub refused: Refused,
    /// Feature bytes of the samples acknowledged as stored.
    pub acked_bytes: u64,
    /// Feature bytes sent, resends after a broken round included.
    pub sent_bytes: u64,
    /// Rounds (connections) it took.
    pub rounds: u32,
    pub elapsed: Duration,
}

/// Uploads `pending` until it is empty, one sample per `pace` at most.
pub async fn upload_all(cloud: &Cloud, mut pending: BTreeMap<String, Spooled>, retry: Retry, pace: Option<Duration>, bar: &ProgressBar) -> Result<Uploaded> {
    let started = Instant::now();
    let mut done = Uploaded::default();
    let sent = Arc::new(AtomicU64::new(0));
    let mut failures = 0u32;
    while !pending.is_empty() {
        let before = pending.len();
        done.rounds += 1;
        let result = round(cloud, &mut pending, &mut done, &sent, pace, bar).await;
        done.sent_bytes = sent.load(Ordering::Relaxed);
        match result {
            Ok(()) => {}
            Err(RoundError::Fatal(e)) => return Err(e),
            Err(RoundError::Transient(e, advice)) => {
                if pending.len() < before {
                    failures = 0;
                }
                failures += 1;
                if failures >= retry.max_attempts {
                    bail!("gave up after {failures} failed attempts in a row, {} samples unacknowledged: {e}", pending.len());
                }
                let ceiling = retry.base.saturating_mul(1 << failures.min(16)).min(retry.cap);
                let wait = rand::rng().random_range(Duration::ZERO..=ceiling).max(advice.unwrap_or_default());
                if bar.is_hidden() {
                    // No terminal (a container, a service): the bar prints nothing, the log does.
                    tracing::warn!(attempt = failures, max_attempts = retry.max_attempts, wait = ?wait, "connection lost ({e}); retrying");
                } else {
                    bar.println(format!("connection lost ({e}); retry {failures}/{} in {wait:.1?}", retry.max_attempts));
                }
                tokio::time::sleep(wait).await;
            }
        }
    }
    done.elapsed = started.elapsed();
    Ok(done)
}

enum RoundError {
    /// Worth retrying: the connection, the server's storage or its rate limit (wait at least
    /// the server's retry advice).
    Transient(anyhow::Error, Option<Duration>),
    /// Retrying cannot help (authentication, a message the server cannot take).
    Fatal(anyhow::Error),
}

/// A failed call or stream: RESOURCE_EXHAUSTED with retry advice is a rate limit (transient);
/// without it, a stream-level one is a message over the server's size limit, which a retry would
/// send again.
fn classify(status: tonic::Status, what: &str) -> RoundError {
    let e = anyhow!("{what}: {}: {}", status.code(), status.message());
    let advice = mistnet_proto::retry_after(&status);
    match status.code() {
        Code::Unauthenticated | Code::PermissionDenied | Code::InvalidArgument | Code::Unimplemented => RoundError::Fatal(e),
        Code::ResourceExhausted if advice.is_none() => RoundError::Fatal(e),
        _ => RoundError::Transient(e, advice),
    }
}

async fn round(
    cloud: &Cloud,
    pending: &mut BTreeMap<String, Spooled>,
    done: &mut Uploaded,
    sent: &Arc<AtomicU64>,
    pace: Option<Duration>,
    bar: &ProgressBar,
) -> Result<(), RoundError> {
    let channel = cloud.connect().await.map_err(|e| RoundError::Transient(anyhow!("cannot connect: {e}"), None))?;
    let mut client = FeatureUploadClient::new(channel).max_decoding_message_size(mistnet_proto::MAX_MESSAGE_BYTES);

    let mut stored = client.list_stored(cloud.request(pb::ListStoredRequest::default())).await.map_err(|s| classify(s, "ListStored"))?.into_inner();
    while let Some(batch) = stored.message().await.map_err(|s| classify(s, "ListStored"))? {
        for id in batch.sample_ids {
            if pending.remove(&id).is_some() {
                bar.inc(1);
            }
        }
    }
    if pending.is_empty() {
        return Ok(());
    }

    let (tx, rx) = mpsc::channel::<pb::Sample>(16);
    let to_send: Vec<Spooled> = pending.values().cloned().collect();
    let sent = Arc::clone(sent);
    let sender = tokio::spawn(async move {
        for s in to_send {
            let features = match tokio::fs::read(&s.message).await {
                Ok(bytes) => bytes,
                Err(e) => {
                    tracing::error!(file = %s.message.display(), %e, "cannot read a spooled message");
                    break;
                }
            };
            let bytes = features.len() as u64;
            let sample = pb::Sample {
                sample_id: s.sample_id,
                features,
                labels: s.sample.labels.iter().map(|l| pb::Box { class: l.class as u32, cx: l.cx, cy: l.cy, w: l.w, h: l.h }).collect(),
                image_width: s.sample.size.0,
                image_height: s.sample.size.1,
            };
            if tx.send(sample).await.is_err() {
                break;
            }
            sent.fetch_add(bytes, Ordering::Relaxed);
            if let Some(pause) = pace {
                tokio::time::sleep(pause).await;
            }
        }
    });
    let mut acks = client.upload(cloud.request(ReceiverStream::new(rx))).await.map_err(|s| classify(s, "Upload"))?.into_inner();
    let result = loop {
        match acks.message().await {
            Ok(Some(ack)) => match Code::from_i32(ack.code) {
                Code::Ok => {
                    if let Some(s) = pending.remove(&ack.sample_id) {
                        bar.inc(1);
                        done.acked_bytes += std::fs::metadata(&s.message).map_or(0, |m| m.len());
                    }
                }
                Code::InvalidArgument | Code::ResourceExhausted => {
                    if pending.remove(&ack.sample_id).is_some() {
                        bar.inc(1);
                        done.refused.push((ack.sample_id, ack.message));
                    }
                }
                code => break Err(RoundError::Transient(anyhow!("sample {}: {code}: {}", ack.sample_id, ack.message), None)),
            },
            Ok(None) if pending.is_empty() => break Ok(()),
            Ok(None) => break Err(RoundError::Transient(anyhow!("the server closed the stream with {} samples unacknowledged", pending.len()), None)),
            Err(s) => break Err(classify(s, "Upload")),
        }
        if pending.is_empty() {
            break Ok(());
        }
    };
    sender.abort();
    result
}
