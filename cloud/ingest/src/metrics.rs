//! The ingest service's Prometheus metrics (`serve --metrics-listen`, text format 0.0.4): what the
//! services count as it happens (samples and feature bytes stored, duplicates, refusals by reason,
//! ack latency), since the process started, and what the store holds, read at each scrape (ε spent
//! per edge, store size, the writer's queue, the bytes of samples in flight, whether it can write).
//!
//! An `edge` label is only ever an authenticated edge id (or one already in the store), so there
//! are at most as many as the tokens file has lines: unauthenticated input never makes a series.

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use mistnet_store::{IngestStore, Refusal};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::prometheus_text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

pub use prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Why a sample or a call was refused: the `reason` label of `mistnet_refusals_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// A call without a valid token (or certificate) for its edge.
    Auth,
    /// A sample that failed validation (INVALID_ARGUMENT).
    Invalid,
    /// An edge's quota of stored samples.
    SampleQuota,
    /// An edge's quota of stored feature bytes.
    ByteQuota,
    /// An edge's ε budget.
    EpsilonBudget,
    /// A GetStatus/ListStored call over its caller's rate limit.
    RateLimit,
    /// The store could not write (UNAVAILABLE).
    StoreUnavailable,
}

impl Reason {
    const ALL: [Reason; 7] =
        [Reason::Auth, Reason::Invalid, Reason::SampleQuota, Reason::ByteQuota, Reason::EpsilonBudget, Reason::RateLimit, Reason::StoreUnavailable];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Auth => "auth",
            Reason::Invalid => "invalid",
            Reason::SampleQuota => "sample_quota",
            Reason::ByteQuota => "byte_quota",
            Reason::EpsilonBudget => "epsilon_budget",
            Reason::RateLimit => "rate_limit",
            Reason::StoreUnavailable => "store_unavailable",
        }
    }
}

impl From<&Refusal> for Reason {
    fn from(refusal: &Refusal) -> Self {
        match refusal {
            Refusal::EpsilonBudget { .. } => Reason::EpsilonBudget,
            Refusal::Quota { .. } => Reason::SampleQuota,
            Refusal::ByteQuota { .. } => Reason::ByteQuota,
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EdgeLabel {
    edge: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

/// The registry and every family in it.
pub struct Metrics {
    registry: Registry,
    samples: Family<EdgeLabel, Counter>,
    feature_bytes: Family<EdgeLabel, Counter>,
    duplicates: Family<EdgeLabel, Counter>,
    refusals: Family<ReasonLabel, Counter>,
    ack_latency: Histogram,
    epsilon: Family<EdgeLabel, Gauge<f64, AtomicU64>>,
    store_bytes: Gauge,
    queue_depth: Gauge,
    in_flight_bytes: Gauge,
    writable: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let samples = Family::default();
        registry.register("mistnet_samples_stored", "Samples stored (first uploads), per edge", samples.clone());
        let feature_bytes = Family::default();
        registry.register("mistnet_feature_bytes_stored", "Bytes of codec messages stored, per edge", feature_bytes.clone());
        let duplicates = Family::default();
        registry.register("mistnet_duplicates", "Re-uploads of a stored sample (acknowledged, only their ε recorded), per edge", duplicates.clone());
        let refusals = Family::<ReasonLabel, Counter>::default();
        for reason in Reason::ALL {
            let _ = refusals.get_or_create(&ReasonLabel { reason: reason.as_str() });
        }
        registry.register("mistnet_refusals", "Samples and calls refused, by reason", refusals.clone());
        // 0.5 ms to 16 s.
        let ack_latency = Histogram::new(exponential_buckets(0.0005, 2.0, 16));
        registry.register("mistnet_ack_latency_seconds", "From a sample's arrival to its ack (validation, queue, write and fsync)", ack_latency.clone());
        let epsilon = Family::default();
        registry.register("mistnet_epsilon_spent", "ε spent per edge (basic composition over every accepted upload; +Inf once one had no noise)", epsilon.clone());
        let store_bytes = Gauge::default();
        registry.register("mistnet_store_bytes", "Bytes of the store's segment files", store_bytes.clone());
        let queue_depth = Gauge::default();
        registry.register("mistnet_store_queue_depth", "Uploads waiting for the store's writer", queue_depth.clone());
        let in_flight_bytes = Gauge::default();
        registry.register(
            "mistnet_in_flight_bytes",
            "Bytes of samples held between their arrival and their ack, over every stream (serve --max-in-flight-bytes bounds it)",
            in_flight_bytes.clone(),
        );
        let writable = Gauge::default();
        registry.register("mistnet_store_writable", "1 while the store's last batch was durable, 0 after a failed write", writable.clone());
        Self { registry, samples, feature_bytes, duplicates, refusals, ack_latency, epsilon, store_bytes, queue_depth, in_flight_bytes, writable }
    }
}

impl Metrics {
    /// A sample of `edge` stored, of `bytes` feature bytes.
    pub fn stored(&self, edge: &str, bytes: u64) {
        let edge = EdgeLabel { edge: edge.to_string() };
        self.samples.get_or_create(&edge).inc();
        self.feature_bytes.get_or_create(&edge).inc_by(bytes);
    }

    /// A re-upload of a sample `edge` had stored.
    pub fn duplicate(&self, edge: &str) {
        self.duplicates.get_or_create(&EdgeLabel { edge: edge.to_string() }).inc();
    }

    pub fn refused(&self, reason: Reason) {
        self.refusals.get_or_create(&ReasonLabel { reason: reason.as_str() }).inc();
    }

    /// A sample answered `latency` after it arrived.
    pub fn acked(&self, latency: Duration) {
        self.ack_latency.observe(latency.as_secs_f64());
    }

    /// Every metric in the Prometheus text format, the store's and the in-flight bytes read now.
    pub fn render(&self, store: &IngestStore, in_flight_bytes: usize) -> String {
        let (edges, store_bytes) = store.seen();
        for (edge, totals) in edges {
            self.epsilon.get_or_create(&EdgeLabel { edge }).set(totals.epsilon_spent());
        }
        self.store_bytes.set(store_bytes as i64);
        self.queue_depth.set(store.queue_depth() as i64);
        self.in_flight_bytes.set(in_flight_bytes as i64);
        self.writable.set(i64::from(*store.writable().borrow()));
        let mut text = String::new();
        encode(&mut text, &self.registry).expect("writing to a String cannot fail");
        text
    }
}
