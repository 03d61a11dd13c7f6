//! MistNet, FedAvg and centralized training side by side, on the same shards from the same
//! pretrained model with the same total epochs: held-out mAP, bytes per edge, edge compute and
//! wall time (the `comparison` of `summary.json` and its table), and `fedavg.png`.
//!
//! What each figure counts, per edge (means over the edges):
//! - MistNet: bytes = the Front downloaded once (its safetensors file) + the wire messages the
//!   edge uploaded (the store's; labels and gRPC framing not counted); compute = one Front forward
//!   per image (its convolutions' multiply-adds × 2).
//! - FedAvg: bytes and compute from the run's `accounting.json` (the whole state down and up per
//!   round; 3 forwards of the whole model per local sample).
//! - centralized: bytes = the edge's raw image files, uploaded once (labels not counted); no
//!   compute on the edge.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use mistnet::data::{BadDataPolicy, Dataset, Split};
use mistnet::model::deploy::DeployMeta;
use mistnet::model::flops::forward_macs;
use mistnet_store::FeatureStore;
use mistnet_train::federated::server::{ACCOUNTING_FILE, read_accounting, read_rounds};
use mistnet_train::fit::RESULTS_FILE;
use mistnet_train::plot::{LinePlot, Series};
use serde::Serialize;

use super::summary::{Score, Timing};

/// One method's row.
#[derive(Debug, Clone, Serialize)]
pub struct Method {
    /// `mistnet`, `fedavg` or `centralized`.
    pub method: String,
    pub map50: f64,
    pub map50_95: f64,
    /// Mean over the edges of the bytes each sent and received.
    pub bytes_per_edge: f64,
    /// The same with FedAvg's states sent as f16 (FedAvg only).
    pub bytes_per_edge_f16: Option<f64>,
    /// Mean over the edges of the compute each did, GFLOPs.
    pub edge_gflops: f64,
    /// Wall time of the job's phases that made this model (MistNet: edges + train).
    pub wall_seconds: f64,
    /// Peak resident memory of what the edge runs, measured in a process of its own: MistNet the
    /// Front pipeline, FedAvg one training step of the whole model; None for centralized (nothing runs).
    pub edge_peak_rss_bytes: Option<u64>,
}

/// When FedAvg's held-out mAP@.5 first reached MistNet's.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Reach {
    pub round: usize,
    pub bytes_per_edge: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    /// Total epochs of every method (FedAvg: rounds × local epochs).
    pub epochs: usize,
    pub fedavg_rounds: usize,
    pub fedavg_local_epochs: usize,
    pub fedavg_aggregation: String,
    /// How FedAvg's clients ran.
    pub fedavg_clients: String,
    pub methods: Vec<Method>,
    /// The first FedAvg round at or above MistNet's held-out mAP@.5 (None: not within the rounds run).
    pub fedavg_reaches_mistnet: Option<Reach>,
}

/// Where the figures come from.
pub struct Inputs<'a> {
    pub store: &'a Path,
    /// The export directory: the Front the edges downloaded and the model it was cut from.
    pub front: &'a Path,
    pub model: &'a Path,
    pub cut: usize,
    pub imgsz: u32,
    /// Each edge's dataset YAML, by edge name.
    pub edges: Vec<(String, PathBuf)>,
    pub fedavg: &'a Path,
    pub epochs: usize,
    pub map: &'a [Score],
    pub timings: &'a [Timing],
    /// Peak RSS of MistNet's edge pipeline (measured by the caller).
    pub mistnet_peak_rss_bytes: u64,
}

impl Comparison {
    pub fn collect(i: &Inputs) -> Result<Self> {
        let score = |name: &str| i.map.iter().find(|s| s.model == name).map(|s| s.metrics).with_context(|| format!("no {name} score"));
        let phase = |name: &str| i.timings.iter().filter(|t| t.phase == name).map(|t| t.seconds).sum::<f64>();
        let n = i.edges.len() as f64;

        // MistNet: the Front down once, the stored wire messages up.
        let front_bytes = std::fs::metadata(i.front).with_context(|| format!("cannot read {}", i.front.display()))?.len() as f64;
        let mut up: BTreeMap<String, (f64, usize)> = i.edges.iter().map(|(e, _)| (e.clone(), (0.0, 0))).collect();
        for s in FeatureStore::open(i.store)?.samples()? {
            let e = up.entry(s.edge).or_default();
            e.0 += s.features.len() as f64;
            e.1 += 1;
        }
        let meta = DeployMeta::read(i.model)?;
        let specs = meta.specs()?;
        let front_gflops = 2.0 * forward_macs(&specs, i.imgsz as usize, 0..i.cut)? as f64 / 1e9;
        let m = score("mistnet")?;
        let mistnet = Method {
            method: "mistnet".into(),
            map50: m.map50,
            map50_95: m.map50_95,
            bytes_per_edge: up.values().map(|(b, _)| front_bytes + b).sum::<f64>() / up.len() as f64,
            bytes_per_edge_f16: None,
            edge_gflops: up.values().map(|(_, images)| *images as f64 * front_gflops).sum::<f64>() / up.len() as f64,
            wall_seconds: phase("edges") + phase("train"),
            edge_peak_rss_bytes: Some(i.mistnet_peak_rss_bytes),
        };

        // Centralized: each edge's raw image files, once.
        let mut raw = 0.0;
        for (_, yaml) in &i.edges {
            let split = Dataset::open(yaml)?.load(Split::Train, BadDataPolicy::Fail)?;
            for s in &split.samples {
                raw += std::fs::metadata(&s.image_path).with_context(|| format!("cannot read {}", s.image_path.display()))?.len() as f64;
            }
        }
        let c = score("centralized")?;
        let centralized = Method { method: "centralized".into(), map50: c.map50, map50_95: c.map50_95, bytes_per_edge: raw / n, bytes_per_edge_f16: None, edge_gflops: 0.0, wall_seconds: phase("centralized"), edge_peak_rss_bytes: None };

        let acc = read_accounting(&i.fedavg.join(ACCOUNTING_FILE))?;
        let f = score("fedavg")?;
        let fedavg = Method {
            method: "fedavg".into(),
            map50: f.map50,
            map50_95: f.map50_95,
            bytes_per_edge: acc.bytes_per_edge.f32 as f64,
            bytes_per_edge_f16: Some(acc.bytes_per_edge.f16 as f64),
            edge_gflops: acc.gflops_per_edge,
            wall_seconds: phase("fedavg"),
            edge_peak_rss_bytes: acc.edge_peak_rss_bytes,
        };
        let rounds = read_rounds(&i.fedavg.join(RESULTS_FILE))?;
        let reach = rounds.iter().find(|r| r.round > 0 && r.metrics.map50 >= mistnet.map50).map(|r| Reach { round: r.round, bytes_per_edge: r.bytes_per_edge.f32 });
        Ok(Comparison {
            epochs: i.epochs,
            fedavg_rounds: acc.rounds,
            fedavg_local_epochs: acc.local_epochs,
            fedavg_aggregation: acc.aggregation,
            fedavg_clients: acc.clients,
            methods: vec![mistnet, fedavg, centralized],
            fedavg_reaches_mistnet: reach,
        })
    }

    fn method(&self, name: &str) -> Option<&Method> {
        self.methods.iter().find(|m| m.method == name)
    }

    /// `fedavg.png`: held-out mAP@.5 against cumulative bytes per edge (log x), FedAvg per round
    /// and MistNet's one point (all its bytes cross before training), centralized and the
    /// public-only model as lines.
    pub fn plot(&self, out: &Path, fedavg: &Path, public_only: Option<f64>) -> Result<()> {
        let rounds = read_rounds(&fedavg.join(RESULTS_FILE))?;
        let mut series = vec![Series {
            name: format!("FedAvg ({} rounds × {} local epochs)", self.fedavg_rounds, self.fedavg_local_epochs),
            points: rounds.iter().filter(|r| r.round > 0).map(|r| (r.bytes_per_edge.f32 as f64, r.metrics.map50)).collect(),
        }];
        if let Some(m) = self.method("mistnet") {
            series.push(Series { name: "MistNet".into(), points: vec![(m.bytes_per_edge, m.map50)] });
        }
        let mut hlines: Vec<(f64, String)> = self.method("centralized").map(|c| (c.map50, "centralized (raw images)".to_string())).into_iter().collect();
        hlines.extend(public_only.map(|p| (p, "public-only (start)".to_string())));
        LinePlot {
            title: format!("Held-out mAP@.5 against bytes per edge, {} epochs in all", self.epochs),
            x_label: "cumulative bytes per edge (sent + received, f32), log scale".into(),
            y_label: "mAP@.5".into(),
            series,
            hlines,
        }
        .save_png_log_x(&out.join("fedavg.png"), 900, 500)?;
        Ok(())
    }

    /// The side-by-side table of the summary.
    pub fn table(&self) -> String {
        let mut s = format!(
            "\n| same shards, same start, {} epochs each | mAP@.5 | mAP@[.5:.95] | bytes per edge | edge GFLOPs | edge peak RSS | wall s |\n|---|---|---|---|---|---|---|\n",
            self.epochs
        );
        for m in &self.methods {
            let what = match m.method.as_str() {
                "mistnet" => "MistNet (Front down once, features up once)".to_string(),
                "fedavg" => format!("FedAvg ({} rounds × {} local epochs, the whole model down and up each round)", self.fedavg_rounds, self.fedavg_local_epochs),
                _ => "centralized (raw images up once)".to_string(),
            };
            let bytes = match m.bytes_per_edge_f16 {
                Some(h) => format!("{} ({} as f16)", mb(m.bytes_per_edge), mb(h)),
                None => mb(m.bytes_per_edge),
            };
            let rss = m.edge_peak_rss_bytes.map_or_else(|| "–".to_string(), |b| mb(b as f64));
            s += &format!("| {what} | {:.4} | {:.4} | {bytes} | {:.1} | {rss} | {:.1} |\n", m.map50, m.map50_95, m.edge_gflops, m.wall_seconds);
        }
        if let (Some(m), Some(f)) = (self.method("mistnet"), self.method("fedavg")) {
            s += &format!(
                "\nFedAvg against MistNet per edge: {:.1}× the bytes, {:.1}× the compute; held-out mAP@.5 {:+.4}. ",
                f.bytes_per_edge / m.bytes_per_edge,
                f.edge_gflops / m.edge_gflops,
                f.map50 - m.map50
            );
            s += &match self.fedavg_reaches_mistnet {
                Some(r) => format!("FedAvg reached MistNet's mAP@.5 at round {} with {} per edge.\n", r.round, mb(r.bytes_per_edge as f64)),
                None => format!("FedAvg did not reach MistNet's mAP@.5 within its {} rounds.\n", self.fedavg_rounds),
            };
            if let (Some(a), Some(b)) = (m.edge_peak_rss_bytes, f.edge_peak_rss_bytes) {
                s += &format!("Edge peak memory: FedAvg's training step {:.1}× MistNet's Front pipeline. ", b as f64 / a as f64);
            }
            s += &format!("FedAvg's clients: {}.\n", self.fedavg_clients);
        }
        s
    }
}

fn mb(bytes: f64) -> String {
    format!("{:.2} MB", bytes / 1e6)
}
