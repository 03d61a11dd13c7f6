//! `mistnet-ingest`: the ingest service's gRPC side, with no model code in it. It serves a
//! [`manifest::ServedFront`] (what `mistnet-cloud export` wrote, or the same computed from weights
//! by the `serve` command) and the deployable model file ([`model`]), authenticates every call
//! ([`auth`]), validates each uploaded sample against the served manifest ([`validate`]) and hands
//! it to the feature store, exactly once per (edge, sample id), within quotas and the ε budget
//! ([`service`]), counting what it does ([`metrics`]) and the bytes each upload has received ([`received`]).
//!
//! The command that listens (`mistnet-cloud serve`: flags, TLS, signals) lives in the cloud binary.

pub mod auth;
pub mod manifest;
pub mod metrics;
pub mod model;
pub mod received;
pub mod service;
pub mod validate;
