//! The gRPC services: Front distribution, feature upload and status. On shutdown (see
//! [`Ingest::stopping`]) every upload stream stops taking samples, answers the ones in flight once
//! they are durable, and ends with UNAVAILABLE, so the server can exit without cutting off an ack.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use mistnet_store::{EdgeLedger, Outcome, StoreWriter};
use mistnet_proto::pb::{self, feature_upload_server::FeatureUpload, front_distribution_server::FrontDistribution, ingest_status_server::IngestStatus};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request, Response, Status, Streaming};

use crate::auth::Caller;
use crate::validate::{Expected, validate};

/// Samples of one upload stream being validated or written at once (bounds memory per stream).
const IN_FLIGHT_PER_STREAM: usize = 32;
/// Sample ids per `StoredBatch`.
const IDS_PER_BATCH: usize = 1000;

/// Shared state of the services.
pub struct Ingest {
    pub store: StoreWriter,
    pub front: pb::GetFrontResponse,
    pub expected: Expected,
    pub epsilon_budget: Option<f64>,
    /// Turns true when the server starts shutting down.
    pub stopping: watch::Receiver<bool>,
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

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl FeatureUpload for Services {
    type ListStoredStream = BoxStream<pb::StoredBatch>;
    type UploadStream = BoxStream<pb::Ack>;

    async fn list_stored(&self, req: Request<pb::ListStoredRequest>) -> Result<Response<Self::ListStoredStream>, Status> {
        let edge = edge_of(&req)?;
        let ids: Vec<String> = self.0.store.index().edges.get(&edge).map(|l| l.per_sample.keys().cloned().collect()).unwrap_or_default();
        let batches: Vec<Result<pb::StoredBatch, Status>> =
            ids.chunks(IDS_PER_BATCH).map(|c| Ok(pb::StoredBatch { sample_ids: c.to_vec() })).collect();
        Ok(Response::new(Box::pin(tokio_stream::iter(batches))))
    }

    async fn upload(&self, req: Request<Streaming<pb::Sample>>) -> Result<Response<Self::UploadStream>, Status> {
        let edge = edge_of(&req)?;
        let mut incoming = req.into_inner();
        let (acks, rx) = mpsc::channel(IN_FLIGHT_PER_STREAM);
        let ingest = Arc::clone(&self.0);
        tokio::spawn(async move {
            let permits = Arc::new(Semaphore::new(IN_FLIGHT_PER_STREAM));
            let mut stopping = ingest.stopping.clone();
            loop {
                let next = async { (Arc::clone(&permits).acquire_owned().await, incoming.message().await) };
                let next = tokio::select! {
                    biased;
                    _ = stopping.wait_for(|stop| *stop) => None,
                    next = next => Some(next),
                };
                let Some((permit, message)) = next else {
                    // Shutting down: answer what is in flight (each task holds a permit until its ack is sent), then end the stream.
                    let _ = permits.acquire_many(IN_FLIGHT_PER_STREAM as u32).await;
                    tracing::debug!(%edge, "upload stream ended by shutdown");
                    let _ = acks.send(Err(Status::unavailable("the server is shutting down; reconnect and resume"))).await;
                    break;
                };
                let Ok(permit) = permit else { break };
                let sample = match message {
                    Ok(Some(s)) => s,
                    Ok(None) => break,
                    Err(status) => {
                        tracing::debug!(%edge, %status, "upload stream ended");
                        break;
                    }
                };
                let (ingest, acks, edge) = (Arc::clone(&ingest), acks.clone(), edge.clone());
                tokio::spawn(async move {
                    let ack = store_one(&ingest, &edge, sample).await;
                    let _ = acks.send(Ok(ack)).await;
                    drop(permit);
                });
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// Validates and stores one sample; the ack says what happened.
async fn store_one(ingest: &Ingest, edge: &str, sample: pb::Sample) -> pb::Ack {
    let started = Instant::now();
    let sample_id = sample.sample_id.clone();
    let ack = |code: Code, message: String, duplicate: bool| pb::Ack { sample_id: sample_id.clone(), code: code as i32, message, duplicate };
    let upload = match validate(edge, sample, &ingest.expected) {
        Ok(u) => u,
        Err(message) => {
            tracing::warn!(%edge, %message, "sample refused");
            return ack(Code::InvalidArgument, message, false);
        }
    };
    let validated = started.elapsed();
    let outcome = ingest.store.submit(upload).await;
    tracing::trace!(%edge, %sample_id, validate_us = validated.as_micros() as u64, store_us = (started.elapsed() - validated).as_micros() as u64, "sample answered");
    match outcome {
        Ok(Outcome::Stored) => ack(Code::Ok, String::new(), false),
        Ok(Outcome::Duplicate) => ack(Code::Ok, String::new(), true),
        Ok(Outcome::Refused(why)) => ack(Code::ResourceExhausted, why.to_string(), false),
        Err(e) => ack(Code::Unavailable, format!("the store cannot write: {e}"), false),
    }
}

#[tonic::async_trait]
impl IngestStatus for Services {
    /// The operator sees every edge and the store size; an edge sees only itself.
    async fn get_status(&self, req: Request<pb::StatusRequest>) -> Result<Response<pb::StatusResponse>, Status> {
        let only = match caller(&req)? {
            Caller::Operator => None,
            Caller::Edge(edge) => Some(edge.clone()),
        };
        let index = self.0.store.index();
        let empty = EdgeLedger::default();
        let listed: Vec<(&String, &EdgeLedger)> = match &only {
            None => index.edges.iter().collect(),
            Some(edge) => vec![(edge, index.edges.get(edge).unwrap_or(&empty))],
        };
        let edges: Vec<pb::EdgeStatus> = listed
            .into_iter()
            .map(|(edge, l)| pb::EdgeStatus {
                edge: edge.clone(),
                samples: l.samples,
                feature_bytes: l.feature_bytes,
                epsilon_total: l.epsilon_spent(),
                uploads_without_privacy: l.uploads_without_privacy,
                uploads: l.uploads,
                ledger: l
                    .per_sample
                    .iter()
                    .map(|(id, eps)| pb::SampleLedger { sample_id: id.clone(), epsilon: eps.clone(), epsilon_total: eps.iter().sum() })
                    .collect(),
            })
            .collect();
        Ok(Response::new(pb::StatusResponse {
            samples: edges.iter().map(|e| e.samples).sum(),
            edges,
            store_bytes: if only.is_none() { index.store_bytes } else { 0 },
            front_hash: self.0.front.front_hash.clone(),
            epsilon_budget: self.0.epsilon_budget,
            all_edges: only.is_none(),
        }))
    }
}
