//! The FedAvg server: `rounds` rounds from a starting model; in each, a sample of the edges
//! (`fraction` of them, at least one) each trains `local_epochs` on its own images from the
//! round's global state ([`super::client`]), the [`Strategy`] aggregates what they return, and
//! the new global model is evaluated. The clients run **in process, one after another**, on the
//! server's device; what would cross the network is counted as the serialized payloads
//! ([`super::wire`]) a process-per-client deployment would send: the global state down to each
//! sampled edge, its trained state up.
//!
//! Writes into the run directory, after every round:
//! - `model.safetensors`: the global model, deployable (as `pretrain` writes it);
//! - `results.csv`: per round (round 0 is the starting model) the clients, mAP, the mean
//!   cumulative bytes per edge (f32 and f16) and the time;
//! - `accounting.json`: [`Accounting`], bytes down and up per round per edge and compute;
//! - `map.png`: mAP against rounds.

use std::path::Path;
use std::time::Instant;

use mistnet::model::deploy::{DeployMeta, Detector, save_deployable};
use mistnet::model::flops::forward_macs;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::wire::PayloadBytes;
use super::{Aggregation, ClientUpdate, State, client};
use crate::fit::images::ImageSet;
use crate::fit::source::LabelledSource;
use crate::fit::{EvalSet, FitConfig, FitError, MODEL_FILE, Metrics, RESULTS_FILE};
use crate::plot::{LinePlot, Series};

/// The accounting file of a run directory.
pub const ACCOUNTING_FILE: &str = "accounting.json";
/// A training step (forward and backward) costs this many forward passes: the backward computes
/// the gradients of the inputs and of the weights, each about one forward's multiply-adds.
pub const TRAIN_STEP_FORWARDS: f64 = 3.0;
/// How the clients run, as the accounting states it.
pub const CLIENTS: &str = "in-process, one after another; bytes counted as the serialized states a client process would download and upload";

const HEADER: &str = "round,clients,metrics/mAP_0.5,metrics/mAP_0.5:0.95,metrics/yolov5_mAP_0.5,metrics/yolov5_mAP_0.5:0.95,bytes_per_edge_f32,bytes_per_edge_f16,train/total_loss,time_s";

/// Settings of a federated run.
#[derive(Debug, Clone)]
pub struct FedConfig {
    pub rounds: usize,
    pub local_epochs: usize,
    /// Fraction of the edges sampled each round (at least one edge).
    pub fraction: f64,
    pub aggregation: Aggregation,
    /// Stop after the first round whose held-out mAP@.5 reaches this.
    pub until_map50: Option<f64>,
    /// Every client's training settings (batch, hyper-parameters, augmentation, device) and the
    /// run directory (`out`) and seed. Its `epochs` is replaced by `rounds × local_epochs`, the
    /// length of the schedule the clients share.
    pub fit: FitConfig,
}

/// One edge: its name and its own images (its shard's train split).
pub struct Edge {
    pub name: String,
    pub images: ImageSet,
}

/// One row of `results.csv`.
#[derive(Debug, Clone, PartialEq)]
pub struct RoundRecord {
    /// 0: the starting model, before any round.
    pub round: usize,
    /// Edges that trained in this round.
    pub clients: usize,
    pub metrics: Metrics,
    /// Mean over all edges of the bytes each has sent and received so far.
    pub bytes_per_edge: PayloadBytes,
    /// Mean over the round's clients of their last local epoch's total loss (NaN at round 0).
    pub train_loss: f64,
    pub seconds: f64,
}

/// An edge's traffic in one round it took part in.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EdgeRound {
    pub round: usize,
    /// The global state, as the server would send it.
    pub bytes_down: PayloadBytes,
    /// The edge's trained state, as it would post it.
    pub bytes_up: PayloadBytes,
}

/// One edge's totals.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EdgeAccount {
    pub edge: String,
    /// Images in its shard.
    pub samples: usize,
    pub rounds: Vec<EdgeRound>,
    pub bytes_down: PayloadBytes,
    pub bytes_up: PayloadBytes,
    /// Down + up.
    pub bytes: PayloadBytes,
    /// Samples it trained on: shard × local epochs × rounds taken part in.
    pub samples_trained: u64,
    /// Its training compute, forward and backward: `samples_trained × train_gflops_per_sample`.
    pub gflops: f64,
}

/// `accounting.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Accounting {
    pub aggregation: String,
    pub rounds: usize,
    pub local_epochs: usize,
    pub fraction: f64,
    pub clients: String,
    pub imgsz: u32,
    /// Tensors and elements of the state sent each way.
    pub tensors: usize,
    pub elements: u64,
    /// One state serialized (what each transfer costs).
    pub payload_bytes: PayloadBytes,
    /// One image through the whole model (2 × multiply-adds of the convolutions).
    pub forward_gflops_per_image: f64,
    /// One training sample: [`TRAIN_STEP_FORWARDS`] forwards.
    pub train_gflops_per_sample: f64,
    pub edges: Vec<EdgeAccount>,
    /// Means over the edges.
    pub bytes_per_edge: PayloadBytes,
    pub gflops_per_edge: f64,
    pub wall_seconds: f64,
    /// Peak resident memory of one edge's training step, measured in a process of its own
    /// (`mistnet-cloud edge-memory --mode train`); None until measured.
    #[serde(default)]
    pub edge_peak_rss_bytes: Option<u64>,
    /// The target mAP@.5 the run stops at (`--until-map50`), if any.
    #[serde(default)]
    pub until_map50: Option<f64>,
    /// The first round that reached it, where the run stopped.
    #[serde(default)]
    pub reached: Option<Reached>,
}

/// The round a run stopped at because its mAP@.5 reached the target.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Reached {
    pub round: usize,
    pub map50: f64,
    /// Mean bytes per edge sent and received up to and including that round.
    pub bytes_per_edge: PayloadBytes,
}

/// Runs the rounds from `start` (a whole model's state, `meta` says which) and evaluates the
/// global model on `val` after each.
pub fn run(start: State, meta: &DeployMeta, edges: &[Edge], val: &EvalSet, config: &FedConfig) -> Result<(Vec<RoundRecord>, Accounting), FitError> {
    if edges.is_empty() {
        return Err(FitError::Config("federated training needs at least one edge".into()));
    }
    if config.rounds == 0 || config.local_epochs == 0 {
        return Err(FitError::Config("--rounds and --local-epochs must be at least 1".into()));
    }
    if !(config.fraction > 0.0 && config.fraction <= 1.0) {
        return Err(FitError::Config(format!("--fraction must be in (0, 1], got {}", config.fraction)));
    }
    if meta.binarized_cut.is_some() {
        return Err(FitError::Config("FedAvg trains a whole model: the starting weights are a MistNet (Front + Back) model; give a `pretrain` model".into()));
    }
    let t0 = Instant::now();
    let fit = FitConfig { epochs: config.rounds * config.local_epochs, ..config.fit.clone() };
    let out = &fit.out;
    std::fs::create_dir_all(out).map_err(|source| FitError::Io { path: out.clone(), source })?;
    let specs = meta.specs()?;
    let forward = 2.0 * forward_macs(&specs, fit.imgsz as usize, 0..specs.len())? as f64 / 1e9;
    let payload = PayloadBytes::of(&start)?;
    let mut accounting = Accounting {
        aggregation: config.aggregation.name().into(),
        rounds: config.rounds,
        local_epochs: config.local_epochs,
        fraction: config.fraction,
        clients: CLIENTS.into(),
        imgsz: fit.imgsz,
        tensors: start.len(),
        elements: start.values().map(|t| t.elem_count() as u64).sum(),
        payload_bytes: payload,
        forward_gflops_per_image: forward,
        train_gflops_per_sample: TRAIN_STEP_FORWARDS * forward,
        edges: edges
            .iter()
            .map(|e| EdgeAccount { edge: e.name.clone(), samples: e.images.len(), rounds: Vec::new(), bytes_down: zero(), bytes_up: zero(), bytes: zero(), samples_trained: 0, gflops: 0.0 })
            .collect(),
        bytes_per_edge: zero(),
        gflops_per_edge: 0.0,
        wall_seconds: 0.0,
        edge_peak_rss_bytes: None,
        until_map50: config.until_map50,
        reached: None,
    };
    let per_round = ((config.fraction * edges.len() as f64).round() as usize).clamp(1, edges.len());
    let mut strategy = config.aggregation.strategy();
    let mut global = start;
    let first = evaluate(&global, meta, val, &fit)?;
    let mut records = vec![RoundRecord { round: 0, clients: 0, metrics: first, bytes_per_edge: zero(), train_loss: f64::NAN, seconds: t0.elapsed().as_secs_f64() }];
    write_round(out, &records, &accounting)?;
    tracing::info!(map50 = first.map50, map50_95 = first.map50_95, "round 0: the starting model");
    for round in 1..=config.rounds {
        let tr = Instant::now();
        let chosen = sample_edges(edges.len(), per_round, fit.seed, round);
        let down = PayloadBytes::of(&global)?;
        let epochs = (round - 1) * config.local_epochs..round * config.local_epochs;
        let mut updates = Vec::with_capacity(chosen.len());
        let mut losses = Vec::with_capacity(chosen.len());
        for &k in &chosen {
            let edge = &edges[k];
            let client_fit = FitConfig { seed: client_seed(fit.seed, k), ..fit.clone() };
            let label = format!("round {round}/{} {}", config.rounds, edge.name);
            let (state, epoch_losses) = client::train_locally(&global, &specs, meta, &edge.images, &client_fit, epochs.clone(), &label)?;
            let up = PayloadBytes::of(&state)?;
            let account = &mut accounting.edges[k];
            account.rounds.push(EdgeRound { round, bytes_down: down, bytes_up: up });
            account.bytes_down = add(account.bytes_down, down);
            account.bytes_up = add(account.bytes_up, up);
            account.bytes = add(account.bytes_down, account.bytes_up);
            account.samples_trained += (edge.images.len() * config.local_epochs) as u64;
            account.gflops = account.samples_trained as f64 * accounting.train_gflops_per_sample;
            let loss = epoch_losses.last().map_or(f64::NAN, |l| l.total_loss);
            tracing::info!(round, edge = %edge.name, samples = edge.images.len(), loss, bytes_down = down.f32, bytes_up = up.f32, "client trained");
            losses.push(loss);
            updates.push(ClientUpdate { client: edge.name.clone(), samples: edge.images.len(), state });
        }
        global = strategy.aggregate(&global, &updates)?;
        drop(updates);
        let metrics = evaluate(&global, meta, val, &fit)?;
        let n = accounting.edges.len() as f64;
        accounting.bytes_per_edge = PayloadBytes {
            f32: (accounting.edges.iter().map(|e| e.bytes.f32).sum::<u64>() as f64 / n).round() as u64,
            f16: (accounting.edges.iter().map(|e| e.bytes.f16).sum::<u64>() as f64 / n).round() as u64,
        };
        accounting.gflops_per_edge = accounting.edges.iter().map(|e| e.gflops).sum::<f64>() / n;
        accounting.wall_seconds = t0.elapsed().as_secs_f64();
        let train_loss = losses.iter().sum::<f64>() / losses.len() as f64;
        let seconds = tr.elapsed().as_secs_f64();
        records.push(RoundRecord { round, clients: chosen.len(), metrics, bytes_per_edge: accounting.bytes_per_edge, train_loss, seconds });
        write_round(out, &records, &accounting)?;
        tracing::info!(round, clients = chosen.len(), map50 = metrics.map50, map50_95 = metrics.map50_95, bytes_per_edge = accounting.bytes_per_edge.f32, seconds, "round done");
        if let Some(target) = config.until_map50
            && metrics.map50 >= target
        {
            accounting.reached = Some(Reached { round, map50: metrics.map50, bytes_per_edge: accounting.bytes_per_edge });
            tracing::info!(round, map50 = metrics.map50, target, bytes_per_edge = accounting.bytes_per_edge.f32, "target mAP@.5 reached: stopping");
            break;
        }
    }
    Ok((records, accounting))
}

fn zero() -> PayloadBytes {
    PayloadBytes { f32: 0, f16: 0 }
}

fn add(a: PayloadBytes, b: PayloadBytes) -> PayloadBytes {
    PayloadBytes { f32: a.f32 + b.f32, f16: a.f16 + b.f16 }
}

/// The edges of `round`: `m` of `n`, drawn from the seed on the round's stream, in index order.
pub fn sample_edges(n: usize, m: usize, seed: u64, round: usize) -> Vec<usize> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream((1 << 32) + round as u64);
    let mut all: Vec<usize> = (0..n).collect();
    all.shuffle(&mut rng);
    let mut chosen = all[..m.min(n)].to_vec();
    chosen.sort_unstable();
    chosen
}

/// Edge `k`'s seed of shuffling and augmentation: its own, derived from the run's.
fn client_seed(seed: u64, k: usize) -> u64 {
    seed ^ ((k as u64 + 1) << 40)
}

/// Writes `state` as the run's deployable model and scores it on `val`.
fn evaluate(state: &State, meta: &DeployMeta, val: &EvalSet, fit: &FitConfig) -> Result<Metrics, FitError> {
    let path = fit.out.join(MODEL_FILE);
    save_deployable(state, meta, &path)?;
    Ok(val.evaluate(&Detector::load(&path, &fit.device)?, fit.batch_size, &fit.device)?.metrics())
}

fn write_round(out: &Path, records: &[RoundRecord], accounting: &Accounting) -> Result<(), FitError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| FitError::Io { path, source }
    };
    let mut text = format!("{HEADER}\n");
    for r in records {
        let m = &r.metrics;
        text += &format!(
            "{},{},{:.6},{:.6},{:.6},{:.6},{},{},{:.6},{:.2}\n",
            r.round, r.clients, m.map50, m.map50_95, m.yolov5_map50, m.yolov5_map50_95, r.bytes_per_edge.f32, r.bytes_per_edge.f16, r.train_loss, r.seconds
        );
    }
    let csv = out.join(RESULTS_FILE);
    let tmp = csv.with_extension("csv.tmp");
    std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, &csv)).map_err(io(&csv))?;
    write_accounting(out, accounting)?;
    let series = |name: &str, f: fn(&Metrics) -> f64| Series { name: name.into(), points: records.iter().map(|r| (r.round as f64, f(&r.metrics))).collect() };
    LinePlot {
        title: format!("FedAvg ({}): held-out mAP per round", accounting.aggregation),
        x_label: "round".into(),
        y_label: "mAP".into(),
        series: vec![series("mAP@.5", |m| m.map50), series("mAP@[.5:.95]", |m| m.map50_95)],
        hlines: Vec::new(),
    }
    .save_png(&out.join("map.png"), 800, 500)?;
    Ok(())
}

/// Writes `accounting.json` into the run directory `out`, atomically.
pub fn write_accounting(out: &Path, accounting: &Accounting) -> Result<(), FitError> {
    let json = out.join(ACCOUNTING_FILE);
    let tmp = json.with_extension("json.tmp");
    let body = serde_json::to_string_pretty(accounting).map_err(|e| FitError::Config(format!("cannot serialize the accounting: {e}")))? + "\n";
    std::fs::write(&tmp, body).and_then(|()| std::fs::rename(&tmp, &json)).map_err(|source| FitError::Io { path: json.clone(), source })
}

/// Reads a federated run's `results.csv` (rows it cannot parse are an error).
pub fn read_rounds(path: &Path) -> Result<Vec<RoundRecord>, FitError> {
    let bad = |reason: String| FitError::Checkpoint { path: path.to_path_buf(), reason };
    let text = std::fs::read_to_string(path).map_err(|e| bad(format!("cannot read: {e}")))?;
    let mut lines = text.lines();
    if lines.next() != Some(HEADER) {
        return Err(bad("not the results.csv of a federated run".into()));
    }
    lines
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let v: Vec<f64> = line.split(',').map(|f| f.trim().parse::<f64>()).collect::<Result<_, _>>().map_err(|e| bad(format!("row {line:?}: {e}")))?;
            if v.len() != 10 {
                return Err(bad(format!("row {line:?} has {} fields, not 10", v.len())));
            }
            Ok(RoundRecord {
                round: v[0] as usize,
                clients: v[1] as usize,
                metrics: Metrics { map50: v[2], map50_95: v[3], yolov5_map50: v[4], yolov5_map50_95: v[5] },
                bytes_per_edge: PayloadBytes { f32: v[6] as u64, f16: v[7] as u64 },
                train_loss: v[8],
                seconds: v[9],
            })
        })
        .collect()
}

/// Reads a federated run's `accounting.json`.
pub fn read_accounting(path: &Path) -> Result<Accounting, FitError> {
    let bad = |reason: String| FitError::Checkpoint { path: path.to_path_buf(), reason };
    let text = std::fs::read_to_string(path).map_err(|e| bad(format!("cannot read: {e}")))?;
    serde_json::from_str(&text).map_err(|e| bad(format!("malformed: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edges_are_sampled_per_round_reproducibly() {
        let all: Vec<Vec<usize>> = (1..=20).map(|r| sample_edges(10, 3, 0, r)).collect();
        for c in &all {
            assert_eq!(c.len(), 3);
            assert!(c.windows(2).all(|w| w[0] < w[1]) && c.iter().all(|&k| k < 10), "{c:?}");
        }
        assert_eq!(all[0], sample_edges(10, 3, 0, 1));
        assert!(all.iter().any(|c| c != &all[0]), "every round drew the same edges");
        assert_eq!(sample_edges(4, 4, 9, 3), [0, 1, 2, 3]);
    }
}
