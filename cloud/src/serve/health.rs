//! The gRPC health service (`grpc.health.v1.Health`, no token needed) with a bound on Watch
//! streams, and the status it reports: SERVING while the store can write, NOT_SERVING after a
//! failed write until a batch is durable again (so an orchestrator restarts a server that stays
//! broken), and NOT_SERVING for good once shutdown begins.

use std::sync::Arc;

use mistnet_proto::pb::{
    feature_upload_server::FeatureUploadServer, front_distribution_server::FrontDistributionServer, ingest_status_server::IngestStatusServer,
    model_distribution_server::ModelDistributionServer,
};
use mistnet_ingest::service::Services;
use tokio::sync::{Semaphore, watch};
use tokio_stream::{Stream, StreamExt};
use tonic::server::NamedService;
use tonic::{Request, Response, Status};
use tonic_health::ServingStatus;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};
use tonic_health::server::{HealthReporter, HealthService};

/// Health.Watch streams open at once, over every connection; more are refused (RESOURCE_EXHAUSTED).
pub const MAX_WATCH_STREAMS: usize = 256;

/// The services whose status is reported, with the overall status (service "").
const SERVICES: [&str; 5] = [
    "",
    <FeatureUploadServer<Services> as NamedService>::NAME,
    <FrontDistributionServer<Services> as NamedService>::NAME,
    <ModelDistributionServer<Services> as NamedService>::NAME,
    <IngestStatusServer<Services> as NamedService>::NAME,
];

/// A new health service (every service SERVING) and the handle that sets its status.
pub fn service() -> (HealthReporter, HealthServer<BoundedHealth>) {
    let reporter = HealthReporter::new();
    let inner = HealthService::from_health_reporter(reporter.clone());
    (reporter, HealthServer::new(BoundedHealth { inner, watchers: Arc::new(Semaphore::new(MAX_WATCH_STREAMS)) }))
}

/// Sets every reported service to SERVING or NOT_SERVING.
pub async fn set(reporter: &HealthReporter, serving: bool) {
    let status = if serving { ServingStatus::Serving } else { ServingStatus::NotServing };
    for name in SERVICES {
        reporter.set_service_status(name, status).await;
    }
}

/// Follows the store's `writable` flag until shutdown: abort the returned task before setting
/// the shutdown status, so that it cannot turn SERVING again. The flag's sender lives as long as
/// the store's writer thread, which outlives the server: if it goes away first, the writer died,
/// nothing can be stored any more, and the status turns NOT_SERVING for good.
pub fn follow_store(reporter: HealthReporter, mut writable: watch::Receiver<bool>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while writable.changed().await.is_ok() {
            let ok = *writable.borrow_and_update();
            if ok {
                tracing::info!("the store writes again: SERVING");
            } else {
                tracing::error!("the store cannot write: NOT_SERVING until a write succeeds");
            }
            set(&reporter, ok).await;
        }
        tracing::error!("the store's writer thread has stopped: NOT_SERVING until restarted");
        set(&reporter, false).await;
    })
}

/// tonic-health's service, with at most [`MAX_WATCH_STREAMS`] Watch streams at once.
pub struct BoundedHealth {
    inner: HealthService,
    watchers: Arc<Semaphore>,
}

type WatchStream = std::pin::Pin<Box<dyn Stream<Item = Result<HealthCheckResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Health for BoundedHealth {
    async fn check(&self, req: Request<HealthCheckRequest>) -> Result<Response<HealthCheckResponse>, Status> {
        self.inner.check(req).await
    }

    type WatchStream = WatchStream;

    async fn watch(&self, req: Request<HealthCheckRequest>) -> Result<Response<WatchStream>, Status> {
        let Ok(permit) = Arc::clone(&self.watchers).try_acquire_owned() else {
            return Err(Status::resource_exhausted(format!("too many Health.Watch streams (at most {MAX_WATCH_STREAMS}); use Check or retry later")));
        };
        let stream = self.inner.watch(req).await?.into_inner();
        // The permit goes with the stream: released when the client cancels it or the connection ends.
        Ok(Response::new(Box::pin(stream.map(move |item| {
            let _held = &permit;
            item
        }))))
    }
}
