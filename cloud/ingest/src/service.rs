//! The gRPC services: Front and model distribution, feature upload and status. On shutdown (see
//! [`Ingest::stopping`]) every upload stream stops taking samples, answers the ones in flight once
//! they are durable, and ends with UNAVAILABLE, so the server can exit without cutting off an ack.
//! A stream whose next message cannot be read (over the size limit, a bogus length prefix,
//! undecodable) is answered the same way and ends with the real status, logged.
//!
//! `ListStored` and `GetStatus` read the store one page at a time (at most
//! [`IDS_PER_BATCH`] ids, or `max_ledger` ledger entries per edge), never for the whole store, and
//! are rate-limited per caller ([`CallLimiter`]; a refusal is answered once the caller may call again).

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mistnet_store::{EdgeTotals, IngestStore, Outcome};
use mistnet_proto::RETRY_AFTER_MS;
use mistnet_proto::pb::{
    self, feature_upload_server::FeatureUpload, front_distribution_server::FrontDistribution, ingest_status_server::IngestStatus,
    model_distribution_server::ModelDistribution,
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request, Response, Status, Streaming};

use crate::auth::Caller;
use crate::metrics::{Metrics, Reason};
use crate::received::ReceivedBytes;
use crate::model::ServedModel;
use crate::validate::{Expected, validate};

/// Samples of one upload stream being validated or written at once (bounds memory per stream).
const IN_FLIGHT_PER_STREAM: usize = 32;
/// Sample ids per `StoredBatch`.
const IDS_PER_BATCH: usize = 1000;
/// Ledger entries per edge in a `GetStatus` reply that does not say (`max_ledger` absent).
const DEFAULT_LEDGER_PAGE: usize = 1000;
/// Most ledger entries per edge in one `GetStatus` reply.
const MAX_LEDGER_PAGE: usize = 10_000;

/// Shared state of the services.
pub struct Ingest {
    pub store: IngestStore,
    pub front: pb::GetFrontResponse,
    /// The deployable model `GetModel` serves, if any.
    pub model: Option<ServedModel>,
    pub expected: Expected,
    pub epsilon_budget: Option<f64>,
    /// Turns true when the server starts shutting down.
    pub stopping: watch::Receiver<bool>,
    /// Rate limit of `GetStatus`, `ListStored` and `GetModel` calls.
    pub limiter: CallLimiter,
    /// Bytes of samples held between their arrival and their ack, over every stream.
    pub in_flight: InFlight,
    pub metrics: Arc<Metrics>,
}

impl Ingest {
    /// [`CallLimiter::admit`], counting a refusal.
    async fn admit(&self, caller: &Caller, call: &str) -> Result<(), Status> {
        self.limiter.admit(caller, call).await.inspect_err(|_| self.metrics.refused(Reason::RateLimit))
    }
}

/// The budget of sample bytes held at once over every upload stream, from before a sample is read
/// until its ack is sent: one budget for every edge, not a limit per stream times the number of
/// streams. A stream reserves room for its next message ([`Expected::typical_message_bytes`])
/// before reading it, so a burst from many edges at once is read as fast as the budget frees up,
/// and the rest of the edges' bytes wait, unread, in HTTP/2 flow control and at the edges. A stream that holds room and has received nothing of its next message
/// ([`crate::received`]) gives it back after [`HOLD_IDLE`] when other streams wait for room, and
/// queues again: idle edges cannot starve busy ones.
pub struct InFlight {
    budget: usize,
    permits: Arc<Semaphore>,
    /// Streams waiting for room now.
    waiting: AtomicUsize,
}

/// One stream counted in [`InFlight::waiting`] while it lives.
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Bytes before each gRPC message on the wire: a compression flag and a 4-byte length.
const GRPC_FRAME_HEADER: usize = 5;

/// How long a stream holding room for a message it has not received keeps it while others wait.
const HOLD_IDLE: Duration = Duration::from_millis(100);

impl InFlight {
    /// A budget of `bytes` (at least the largest message accepted, or that message would wait forever).
    pub fn new(bytes: usize) -> Self {
        let budget = bytes.clamp(1, Semaphore::MAX_PERMITS);
        Self { budget, permits: Arc::new(Semaphore::new(budget)), waiting: AtomicUsize::new(0) }
    }

    /// Bytes held now.
    pub fn held(&self) -> usize {
        self.budget - self.permits.available_permits()
    }

    /// Whether a stream waits for room now.
    fn contended(&self) -> bool {
        self.waiting.load(Ordering::Relaxed) > 0
    }

    /// Waits until `bytes` (at most the whole budget) fit, and holds them until the permit is dropped.
    async fn take(&self, bytes: usize) -> OwnedSemaphorePermit {
        let n = u32::try_from(bytes.clamp(1, self.budget)).unwrap_or(u32::MAX);
        if let Ok(permit) = Arc::clone(&self.permits).try_acquire_many_owned(n) {
            return permit;
        }
        self.waiting.fetch_add(1, Ordering::Relaxed);
        // Counted until acquired or given up (a waiting stream that shuts down drops this future).
        let _waiting = Waiting(&self.waiting);
        Arc::clone(&self.permits).acquire_many_owned(n).await.expect("the budget's semaphore is never closed")
    }

    /// `reserved` made to hold exactly `bytes`: the surplus given back at once, or, for a message
    /// larger than the room reserved for it, that room given back and `bytes` taken afresh (never
    /// waiting while holding, so streams cannot deadlock on each other's partial room).
    async fn resize(&self, mut reserved: OwnedSemaphorePermit, bytes: usize) -> OwnedSemaphorePermit {
        let want = bytes.clamp(1, self.budget);
        let held = reserved.num_permits();
        if want <= held {
            if want < held {
                drop(reserved.split(held - want));
            }
            return reserved;
        }
        drop(reserved);
        self.take(want).await
    }
}

/// A token bucket per caller (each edge, and the operator) over `GetStatus` and `ListStored`
/// calls: `burst` calls at once, refilled at `per_second`. Callers are authenticated before they
/// get here, so there is one bucket per configured edge at most, plus the operator's.
pub struct CallLimiter {
    per_second: f64,
    burst: f64,
    /// Per caller (`None`: the operator).
    buckets: Mutex<HashMap<Option<String>, Bucket>>,
}

/// One caller's bucket, and what its refusals have logged.
struct Bucket {
    tokens: f64,
    counted_at: Instant,
    /// When the last refusal was logged, and the refusals since (logged with the next line).
    logged_at: Option<Instant>,
    refused_unlogged: u64,
}

/// A caller that keeps being refused is logged once per this interval, with the count: a flood of
/// refused calls must not become a flood of log lines (each one costs CPU and disk).
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Longest a refused status/list call is held before its answer.
const MAX_REFUSAL_HOLD: Duration = Duration::from_secs(1);

impl Default for CallLimiter {
    /// 10 calls a second, 20 at once: a status page or a resume listing costs one call.
    fn default() -> Self {
        Self::new(10.0, 20.0)
    }
}

impl CallLimiter {
    pub fn new(per_second: f64, burst: f64) -> Self {
        Self { per_second, burst, buckets: Mutex::new(HashMap::new()) }
    }

    /// Takes one call of `caller`'s bucket, or refuses with RESOURCE_EXHAUSTED and the time until
    /// the next token in [`RETRY_AFTER_MS`]. A refusal is answered only after that time (at most
    /// [`MAX_REFUSAL_HOLD`]): a client that retries at once, in a loop, is slowed to the rate it is
    /// allowed instead of costing the server thousands of refusals a second.
    async fn admit(&self, caller: &Caller, call: &str) -> Result<(), Status> {
        let (status, wait) = match self.take(caller, call) {
            Ok(()) => return Ok(()),
            Err(refusal) => refusal,
        };
        tokio::time::sleep(wait.min(MAX_REFUSAL_HOLD)).await;
        Err(status)
    }

    /// One token of `caller`'s bucket, or the refusal and the time until its next token.
    fn take(&self, caller: &Caller, call: &str) -> Result<(), (Status, Duration)> {
        let key = match caller {
            Caller::Edge(edge) => Some(edge.clone()),
            Caller::Operator => None,
        };
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let b = buckets.entry(key).or_insert(Bucket { tokens: self.burst, counted_at: now, logged_at: None, refused_unlogged: 0 });
        b.tokens = (b.tokens + now.duration_since(b.counted_at).as_secs_f64() * self.per_second).min(self.burst);
        b.counted_at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            return Ok(());
        }
        let wait = Duration::from_secs_f64((1.0 - b.tokens) / self.per_second);
        b.refused_unlogged += 1;
        let log = b.logged_at.is_none_or(|at| now.duration_since(at) >= REFUSAL_LOG_INTERVAL);
        let refused = if log {
            b.logged_at = Some(now);
            std::mem::take(&mut b.refused_unlogged)
        } else {
            0
        };
        drop(buckets);
        let who = match caller {
            Caller::Edge(edge) => format!("edge {edge}"),
            Caller::Operator => "the operator".to_string(),
        };
        if log {
            tracing::warn!(caller = %who, call, refused, interval_s = REFUSAL_LOG_INTERVAL.as_secs(), "status/list calls rate-limited (refused since the last such line)");
        }
        let ms = wait.as_millis().max(1) as u64;
        let mut status = Status::resource_exhausted(format!(
            "{call}: {who} is over the limit of {} GetStatus/ListStored calls a second ({} at once); retry in {ms} ms",
            self.per_second, self.burst
        ));
        status.metadata_mut().insert(RETRY_AFTER_MS, ms.into());
        Err((status, wait))
    }
}

/// A page token is a sample id (the last one of the previous page).
fn check_page_token(token: &str, field: &str) -> Result<(), Status> {
    if token.is_empty() {
        return Ok(());
    }
    mistnet_proto::check_sample_id(token).map_err(|e| Status::invalid_argument(format!("{field} is not a page token: {e}")))
}

/// The status an upload stream ends with when its next message cannot be read: tonic's
/// "message length too large" (OUT_OF_RANGE, also for a bogus length prefix) is RESOURCE_EXHAUSTED
/// as gRPC specifies; an undecodable or truncated message (INTERNAL) is INVALID_ARGUMENT; any
/// other (the connection broke, the client cancelled) stays as it is. Also: whether to warn.
fn unreadable(status: Status) -> (Status, bool) {
    match status.code() {
        Code::OutOfRange | Code::ResourceExhausted => (Status::resource_exhausted(format!("upload message refused: {}", status.message())), true),
        Code::Internal => (Status::invalid_argument(format!("upload message unreadable: {}", status.message())), true),
        _ => (status, false),
    }
}

/// A handle the three services share.
#[derive(Clone)]
pub struct Services(pub Arc<Ingest>);

fn caller<T>(req: &Request<T>) -> Result<&Caller, Status> {
    req.extensions().get::<Caller>().ok_or_else(|| Status::unauthenticated("no authenticated caller"))
}

/// The calling edge; the operator token only serves `GetStatus`.
fn edge_of<T>(req: &Request<T>) -> Result<String, Status> {
    match caller(req)? {
        Caller::Edge(edge) => Ok(edge.clone()),
        Caller::Operator => Err(Status::permission_denied("the operator token may only call GetStatus; edges call with their own token")),
    }
}

#[tonic::async_trait]
impl FrontDistribution for Services {
    async fn get_front(&self, req: Request<pb::GetFrontRequest>) -> Result<Response<pb::GetFrontResponse>, Status> {
        edge_of(&req)?;
        let front = &self.0.front;
        if req.get_ref().cached_hash == front.front_hash {
            return Ok(Response::new(pb::GetFrontResponse { model_yaml: String::new(), weights: Vec::new(), ..front.clone() }));
        }
        Ok(Response::new(front.clone()))
    }
}

#[tonic::async_trait]
impl ModelDistribution for Services {
    type GetModelStream = BoxStream<pb::ModelChunk>;

    async fn get_model(&self, req: Request<pb::GetModelRequest>) -> Result<Response<Self::GetModelStream>, Status> {
        let edge = edge_of(&req)?;
        self.0.admit(caller(&req)?, "GetModel").await?;
        let Some(model) = &self.0.model else {
            return Err(Status::not_found("this server serves no model: `serve --front DIR` serves the model.safetensors export wrote there, or give --serve-model FILE"));
        };
        let Some(file) = model.current() else {
            return Err(Status::not_found(format!("no model yet: {} does not exist (training has not exported one)", model.path().display())));
        };
        let cached_hash = req.into_inner().cached_hash;
        tracing::info!(%edge, sha256 = %file.sha256, cached = cached_hash == file.sha256, bytes = file.bytes.len(), "GetModel");
        let chunks = file.chunks(&cached_hash);
        Ok(Response::new(Box::pin(tokio_stream::iter(chunks.into_iter().map(Ok)))))
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl FeatureUpload for Services {
    type ListStoredStream = BoxStream<pb::StoredBatch>;
    type UploadStream = BoxStream<pb::Ack>;

    async fn list_stored(&self, req: Request<pb::ListStoredRequest>) -> Result<Response<Self::ListStoredStream>, Status> {
        let edge = edge_of(&req)?;
        self.0.admit(caller(&req)?, "ListStored").await?;
        let pb::ListStoredRequest { page_token, max_ids } = req.into_inner();
        check_page_token(&page_token, "page_token")?;
        let ingest = Arc::clone(&self.0);
        // One batch at a time, each read under the lock on its own; the channel holds back the next one.
        let (tx, rx) = mpsc::channel(2);
        tokio::spawn(async move {
            let mut after = page_token;
            let mut left = if max_ids == 0 { usize::MAX } else { max_ids as usize };
            loop {
                let (sample_ids, more) = match ingest.store.sample_page(&edge, &after, IDS_PER_BATCH.min(left)).await {
                    Ok((page, more)) => (page.into_iter().map(|(id, _)| id).collect::<Vec<_>>(), more),
                    Err(e) => {
                        tracing::warn!(%edge, error = %e, "ListStored: the store cannot be read");
                        let _ = tx.send(Err(Status::unavailable(format!("the store cannot be read: {e}")))).await;
                        break;
                    }
                };
                let Some(last) = sample_ids.last().cloned() else { break };
                left -= sample_ids.len();
                let cut_short = more && left == 0;
                let next_page_token = if cut_short { last.clone() } else { String::new() };
                if tx.send(Ok(pb::StoredBatch { sample_ids, next_page_token })).await.is_err() || !more || cut_short {
                    break;
                }
                after = last;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn upload(&self, req: Request<Streaming<pb::Sample>>) -> Result<Response<Self::UploadStream>, Status> {
        let edge = edge_of(&req)?;
        // Served behind `CountReceived` (serve does): the bytes of this stream read so far.
        let received = req.extensions().get::<ReceivedBytes>().cloned();
        let mut incoming = req.into_inner();
        let (acks, rx) = mpsc::channel(IN_FLIGHT_PER_STREAM);
        let ingest = Arc::clone(&self.0);
        tokio::spawn(async move {
            let permits = Arc::new(Semaphore::new(IN_FLIGHT_PER_STREAM));
            let mut stopping = ingest.stopping.clone();
            let typical = ingest.expected.typical_message_bytes();
            // Answers what is in flight (each task holds a permit until its ack is sent), then ends the stream with `status`.
            let end = |status: Status| {
                let (permits, acks) = (Arc::clone(&permits), acks.clone());
                async move {
                    let _ = permits.acquire_many(IN_FLIGHT_PER_STREAM as u32).await;
                    let _ = acks.send(Err(status)).await;
                }
            };
            let shutting_down = || Status::unavailable("the server is shutting down; reconnect and resume");
            // Bytes of the messages taken from the stream so far, gRPC framing included.
            let mut taken = 0u64;
            loop {
                // A slot of this stream, then room in the global budget for the next message, before reading it.
                let next = async { (Arc::clone(&permits).acquire_owned().await, ingest.in_flight.take(typical).await) };
                let next = tokio::select! {
                    biased;
                    _ = stopping.wait_for(|stop| *stop) => None,
                    next = next => Some(next),
                };
                let Some((Ok(permit), mut room)) = next else {
                    tracing::debug!(%edge, "upload stream ended by shutdown");
                    end(shutting_down()).await;
                    break;
                };
                // Read holding the room; while nothing comes and other streams wait for room, give it back and queue
                // again (not while a message is partly received: its bytes are in the decoder, and it needs the room).
                let message = loop {
                    tokio::select! {
                        biased;
                        _ = stopping.wait_for(|stop| *stop) => break None,
                        message = incoming.message() => break Some((message, room)),
                        () = tokio::time::sleep(HOLD_IDLE) => {}
                    }
                    let partly_received = received.as_ref().is_some_and(|r| r.get() > taken);
                    if partly_received || !ingest.in_flight.contended() {
                        continue;
                    }
                    drop(room);
                    room = tokio::select! {
                        biased;
                        _ = stopping.wait_for(|stop| *stop) => break None,
                        room = ingest.in_flight.take(typical) => room,
                    };
                };
                let Some((message, room)) = message else {
                    drop(permit);
                    tracing::debug!(%edge, "upload stream ended by shutdown");
                    end(shutting_down()).await;
                    break;
                };
                let sample = match message {
                    Ok(Some(s)) => s,
                    Ok(None) => break,
                    Err(status) => {
                        // Answer what is in flight, then end the stream with the real status.
                        drop((permit, room));
                        let (status, warn) = unreadable(status);
                        if warn {
                            tracing::warn!(%edge, code = ?status.code(), reason = status.message(), "upload stream ended: a message could not be read");
                        } else {
                            tracing::debug!(%edge, %status, "upload stream ended");
                        }
                        end(status).await;
                        break;
                    }
                };
                let size = prost::Message::encoded_len(&sample);
                taken += (GRPC_FRAME_HEADER + size) as u64;
                // The room, made the sample's size; a sample larger than the room reserved waits for room of its size.
                let bytes = tokio::select! {
                    biased;
                    _ = stopping.wait_for(|stop| *stop) => None,
                    bytes = ingest.in_flight.resize(room, size) => Some(bytes),
                };
                let Some(bytes) = bytes else {
                    // Shutting down before this sample was taken: it is not answered, and the edge sends it again.
                    drop(permit);
                    end(shutting_down()).await;
                    break;
                };
                let (ingest, acks, edge) = (Arc::clone(&ingest), acks.clone(), edge.clone());
                tokio::spawn(async move {
                    let ack = store_one(&ingest, &edge, sample).await;
                    let _ = acks.send(Ok(ack)).await;
                    drop((permit, bytes));
                });
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// Validates and stores one sample; the ack says what happened, and the metrics count it.
async fn store_one(ingest: &Ingest, edge: &str, sample: pb::Sample) -> pb::Ack {
    let started = Instant::now();
    let ack = decide_one(ingest, edge, sample, started).await;
    ingest.metrics.acked(started.elapsed());
    ack
}

async fn decide_one(ingest: &Ingest, edge: &str, sample: pb::Sample, started: Instant) -> pb::Ack {
    let sample_id = sample.sample_id.clone();
    let ack = |code: Code, message: String, duplicate: bool| pb::Ack { sample_id: sample_id.clone(), code: code as i32, message, duplicate };
    let metrics = &ingest.metrics;
    let upload = match validate(edge, sample, &ingest.expected) {
        Ok(u) => u,
        Err(message) => {
            tracing::warn!(%edge, %message, "sample refused");
            metrics.refused(Reason::Invalid);
            return ack(Code::InvalidArgument, message, false);
        }
    };
    let validated = started.elapsed();
    let bytes = upload.features.len() as u64;
    let outcome = ingest.store.submit(upload).await;
    tracing::trace!(%edge, %sample_id, validate_us = validated.as_micros() as u64, store_us = (started.elapsed() - validated).as_micros() as u64, "sample answered");
    match outcome {
        Ok(Outcome::Stored) => {
            metrics.stored(edge, bytes);
            ack(Code::Ok, String::new(), false)
        }
        Ok(Outcome::Duplicate) => {
            metrics.duplicate(edge);
            ack(Code::Ok, String::new(), true)
        }
        Ok(Outcome::Refused(why)) => {
            metrics.refused(Reason::from(&why));
            ack(Code::ResourceExhausted, why.to_string(), false)
        }
        Err(e) => {
            metrics.refused(Reason::StoreUnavailable);
            ack(Code::Unavailable, format!("the store cannot write: {e}"), false)
        }
    }
}

#[tonic::async_trait]
impl IngestStatus for Services {
    /// The operator sees every edge and the store size; an edge sees only itself. Each edge's
    /// ledger comes as one page (`max_ledger`, after `ledger_page_token`).
    async fn get_status(&self, req: Request<pb::StatusRequest>) -> Result<Response<pb::StatusResponse>, Status> {
        let who = caller(&req)?.clone();
        self.0.admit(&who, "GetStatus").await?;
        let pb::StatusRequest { max_ledger, edge, ledger_page_token } = req.into_inner();
        let max_ledger = max_ledger.map_or(DEFAULT_LEDGER_PAGE, |n| (n as usize).min(MAX_LEDGER_PAGE));
        check_page_token(&ledger_page_token, "ledger_page_token")?;
        if !ledger_page_token.is_empty() && edge.is_empty() {
            return Err(Status::invalid_argument("ledger_page_token needs the edge it pages (StatusRequest.edge)"));
        }
        let operator = who == Caller::Operator;
        let only = match who {
            Caller::Edge(me) if !edge.is_empty() && edge != me => {
                return Err(Status::permission_denied(format!("edge {me} may only ask for its own status, not edge {edge}'s")));
            }
            Caller::Edge(me) => Some(me),
            Caller::Operator => (!edge.is_empty()).then_some(edge),
        };
        let unreadable = |e: mistnet_store::StoreError| Status::unavailable(format!("the store cannot be read: {e}"));
        let mut listed: Vec<(String, EdgeTotals)> = self.0.store.edges(only.as_deref()).await.map_err(unreadable)?.into_iter().collect();
        if let Some(edge) = &only
            && listed.is_empty()
        {
            if operator {
                return Err(Status::not_found(format!("edge {edge} has nothing stored")));
            }
            listed.push((edge.clone(), EdgeTotals::default()));
        }
        let mut edges = Vec::with_capacity(listed.len());
        for (edge, t) in listed {
            let (page, more) = self.0.store.sample_page(&edge, &ledger_page_token, max_ledger).await.map_err(unreadable)?;
            let ledger_next_page_token = match page.last() {
                Some((id, _)) if more => id.clone(),
                _ => String::new(),
            };
            edges.push(pb::EdgeStatus {
                edge,
                samples: t.samples,
                feature_bytes: t.feature_bytes,
                epsilon_total: t.epsilon_spent(),
                uploads_without_privacy: t.uploads_without_privacy,
                uploads: t.uploads,
                ledger: page.into_iter().map(|(id, eps)| pb::SampleLedger { sample_id: id, epsilon_total: eps.iter().sum(), epsilon: eps }).collect(),
                ledger_next_page_token,
            });
        }
        let store_bytes = if operator { self.0.store.seen().1 } else { 0 };
        Ok(Response::new(pb::StatusResponse {
            samples: edges.iter().map(|e| e.samples).sum(),
            edges,
            store_bytes,
            front_hash: self.0.front.front_hash.clone(),
            epsilon_budget: self.0.epsilon_budget,
            all_edges: operator && only.is_none(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_sample_that_does_not_fit_the_in_flight_budget_waits_until_bytes_are_given_back() {
        let budget = InFlight::new(1000);
        let first = budget.take(600).await;
        assert_eq!(budget.held(), 600);
        let second = budget.take(600);
        tokio::pin!(second);
        assert!(tokio::time::timeout(Duration::from_millis(50), &mut second).await.is_err(), "600 + 600 bytes fit a budget of 1000");
        drop(first);
        let second = tokio::time::timeout(Duration::from_secs(1), second).await.expect("fits once the first is answered");
        assert_eq!(budget.held(), 600);
        drop(second);
        assert_eq!(budget.held(), 0);
        // A message larger than the whole budget takes all of it instead of waiting forever.
        let all = budget.take(5000).await;
        assert_eq!(budget.held(), 1000);
        drop(all);
    }

    #[tokio::test]
    async fn room_reserved_before_a_read_is_fitted_to_the_message_and_a_waiting_stream_is_seen() {
        let budget = InFlight::new(1000);
        // Smaller than reserved: the surplus is given back at once.
        let room = budget.take(400).await;
        let fitted = budget.resize(room, 150).await;
        assert_eq!((fitted.num_permits(), budget.held()), (150, 150));
        // Larger: taken afresh, never waiting while holding.
        let grown = budget.resize(fitted, 700).await;
        assert_eq!((grown.num_permits(), budget.held()), (700, 700));
        // A stream waiting for room is seen while it waits, and no longer once it gives up.
        assert!(!budget.contended());
        {
            let waiting = budget.take(600);
            tokio::pin!(waiting);
            assert!(tokio::time::timeout(Duration::from_millis(20), &mut waiting).await.is_err());
            assert!(budget.contended(), "a stream waits for 600 bytes of the 300 left");
        }
        assert!(!budget.contended(), "the waiting stream gave up");
        drop(grown);
        assert_eq!(budget.held(), 0);
    }
}
