//! The in-memory index of a store: which (edge, sample id) are stored, per-edge counts, and the
//! ε ledger (basic composition: every accepted upload of a sample spends its ε, re-uploads included).

use std::collections::BTreeMap;

use super::record::{Record, RecordKind};

/// Per-edge counts and ε ledger.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EdgeLedger {
    /// Samples stored (first uploads).
    pub samples: u64,
    /// Bytes of codec messages stored.
    pub feature_bytes: u64,
    /// Accepted uploads, re-uploads of stored samples included.
    pub uploads: u64,
    /// Sum of the finite ε of every accepted upload; [`EdgeLedger::epsilon_spent`] is the total
    /// that counts an upload without noise as +inf (what the budget and `GetStatus` use).
    pub epsilon_total: f64,
    /// Accepted uploads without noise (mechanism none), whose ε is unbounded.
    pub uploads_without_privacy: u64,
    /// ε of each accepted upload, per sample id (`+inf` for mechanism none).
    pub per_sample: BTreeMap<String, Vec<f64>>,
}

impl EdgeLedger {
    /// Whether `sample_id` is stored for this edge.
    pub fn contains(&self, sample_id: &str) -> bool {
        self.per_sample.contains_key(sample_id)
    }

    /// ε spent so far under basic composition (`+inf` once any upload had no noise).
    pub fn epsilon_spent(&self) -> f64 {
        self.totals().epsilon_spent()
    }

    /// Its counts and ε, without the per-sample detail.
    pub fn totals(&self) -> EdgeTotals {
        EdgeTotals { samples: self.samples, feature_bytes: self.feature_bytes, uploads: self.uploads, epsilon_total: self.epsilon_total, uploads_without_privacy: self.uploads_without_privacy }
    }
}

/// An edge's counts and ε ledger, without the per-sample detail: what `GetStatus` reports of an
/// edge, and what a bucket store keeps per edge ([`crate::bucket`]). Fields as in [`EdgeLedger`].
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct EdgeTotals {
    pub samples: u64,
    pub feature_bytes: u64,
    pub uploads: u64,
    pub epsilon_total: f64,
    pub uploads_without_privacy: u64,
}

impl EdgeTotals {
    /// ε spent so far under basic composition (`+inf` once any upload had no noise).
    pub fn epsilon_spent(&self) -> f64 {
        if self.uploads_without_privacy > 0 { f64::INFINITY } else { self.epsilon_total }
    }
}

/// The index of the whole store.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Index {
    pub edges: BTreeMap<String, EdgeLedger>,
    /// Bytes of all segment files.
    pub store_bytes: u64,
}

impl Index {
    /// Total samples stored.
    pub fn samples(&self) -> u64 {
        self.edges.values().map(|e| e.samples).sum()
    }

    /// Accounts for a record that is durably on disk.
    pub fn apply(&mut self, rec: &Record) {
        let edge = self.edges.entry(rec.edge.clone()).or_default();
        edge.uploads += 1;
        if rec.epsilon.is_finite() {
            edge.epsilon_total += rec.epsilon;
        } else {
            edge.uploads_without_privacy += 1;
        }
        edge.per_sample.entry(rec.sample_id.clone()).or_default().push(rec.epsilon);
        if rec.kind == RecordKind::Sample {
            edge.samples += 1;
            edge.feature_bytes += rec.features.len() as u64;
        }
    }
}
