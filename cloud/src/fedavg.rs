//! `mistnet-cloud fedavg`: federated averaging of the whole YOLOv5 over the edges' own raw
//! images, from the same public-pretrained model MistNet starts from: the baseline MistNet is
//! measured against, on the same shards. The loop, the aggregation rules and the accounting are
//! `mistnet_train::federated`; this command reads the data and the flags.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use candle_core::Device;
use mistnet::data::{BadDataPolicy, Dataset, Split};
use mistnet::model::deploy::{DeployMeta, Detector};
use mistnet_cli::image::parse_imgsz;
use mistnet_cli::{Argv, DeviceArgs, ToArgs};
use mistnet_train::federated::server::{self, ACCOUNTING_FILE, Edge, FedConfig};
use mistnet_train::federated::{Aggregation, State};
use mistnet_train::fit::images::ImageSet;
use mistnet_train::fit::{EvalSet, FitConfig, MODEL_FILE, RESULTS_FILE};
use mistnet_train::train::LrDecay;

use crate::edge_memory;
use crate::run_flags::StepFlags;

#[derive(clap::Args, Debug, Clone, PartialEq)]
#[command(after_help = "Each round, a sample of the edges (--fraction of them, at least one; drawn from --seed) each trains \
--local-epochs on its own raw images from the round's global model, with the training loop and augmentation of `pretrain` \
(HSV, flip, scale, translation; a fresh optimizer per round, the learning-rate schedule of rounds × local epochs), and the \
server aggregates the returned states, BatchNorm running statistics included:\n  \
fedavg   McMahan et al.'s FedAvg: the round's states averaged by the edges' sample counts\n  \
running  the seed Flask server's running average over every state it receives, (a·server + b·client)/(a + b), a the samples \
averaged in so far (never reset; the starting model counts 0)\n\
The clients run in this process, one after another; the bytes are counted as a client process would send them: the \
serialized global state (safetensors) down to each sampled edge, its trained state up, in f32 and, as a size only, f16.\n\
Edge compute: 3 forward passes (forward + backward) of the whole model per local sample, from the convolutions' shapes \
(2 × multiply-adds, as Ultralytics counts GFLOPs).\n\
--warmup-min-iters counts each edge's own iterations (its shard's batches × rounds × local epochs): with small shards \
the default (100) keeps the whole run in warmup; lower it so that warmup spans the same part of the run as in centralized \
training.\n\n\
Writes into --out: model.safetensors (the global model after the last round, deployable), results.csv (per round, round 0 \
the starting model: clients, mAP@.5, mAP@.5:.95, cumulative bytes per edge f32/f16, loss, time), accounting.json (bytes down \
and up per round per edge, GFLOPs per edge, payload sizes, and the peak RSS of one edge's training step measured in a child \
process, `edge_peak_rss_bytes`), map.png.\n\n\
Examples:\n  mistnet-cloud fedavg --data data/synth/private --val data/synth/private-val.yaml \
--weights runs/pretrain/model.safetensors --rounds 20 --out runs/fedavg\n  \
mistnet-cloud fedavg --data shards/edge-0.yaml --data shards/edge-1.yaml --val data/val.yaml --weights W.safetensors \
--rounds 10 --local-epochs 2 --fraction 0.5 --aggregation running --out runs/fedavg-running")]
pub struct Args {
    /// The edges' data: one dataset YAML per edge (repeat the flag; its train split is the edge's shard), or a directory
    /// of edge-<k>.yaml files (what `partition` and `synth` write), every one an edge.
    #[arg(long, value_name = "DATA.yaml|DIR", required = true)]
    pub data: Vec<PathBuf>,
    /// Held-out evaluation data after every round: a dataset YAML, its val split (its train split if it has none).
    #[arg(long, value_name = "DATA.yaml")]
    pub val: PathBuf,
    /// The starting model: a deployable model (`pretrain`'s model.safetensors), the same MistNet starts from. One that
    /// binarizes at a cut (binarization-aware `pretrain`) starts FedAvg too: every layer is trained on float features.
    #[arg(long)]
    pub weights: PathBuf,
    /// Rounds of federated training (with --until-map50: the most; the learning-rate schedule is always that of
    /// --rounds × --local-epochs epochs).
    #[arg(long, default_value_t = 20)]
    pub rounds: usize,
    /// Stop after the first round whose held-out mAP@.5 reaches this (FedAvg given as many rounds as it needs to reach
    /// a target, such as MistNet's mAP): the round and the bytes per edge it took are printed and in accounting.json
    /// (`reached`); if no round reaches it within --rounds, the run ends there and says so.
    #[arg(long, value_name = "MAP50")]
    pub until_map50: Option<f64>,
    /// Epochs each sampled edge trains on its own images per round.
    #[arg(long, default_value_t = 1)]
    pub local_epochs: usize,
    /// Fraction of the edges sampled each round, in (0, 1] (at least one edge).
    #[arg(long, default_value_t = 1.0)]
    pub fraction: f64,
    /// How the server aggregates the returned states.
    #[arg(long, default_value = "fedavg", value_parser = ["fedavg", "running"])]
    pub aggregation: String,
    /// Letterbox size in pixels (square; a multiple of 32). Default: the size the starting model was trained at.
    #[arg(long, value_name = "PX", value_parser = parse_imgsz)]
    pub imgsz: Option<u32>,
    // How every edge makes its steps (--warmup-min-iters: see below).
    #[command(flatten)]
    pub step: StepFlags,
    /// Seed of the edges' sampling, shuffling and augmentation (each edge draws its own from it).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[command(flatten)]
    pub device: DeviceArgs,
    /// Leave out bad samples (missing or unreadable image, malformed label) with a count instead of failing.
    #[arg(long)]
    pub skip_bad: bool,
    /// Run directory: model.safetensors, results.csv, accounting.json, map.png.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

impl ToArgs for Args {
    fn to_args(&self) -> Vec<OsString> {
        Argv::new()
            .each("--data", &self.data)
            .arg("--val", &self.val)
            .arg("--weights", &self.weights)
            .arg("--rounds", self.rounds.to_string())
            .opt("--until-map50", self.until_map50.map(|m| m.to_string()))
            .arg("--local-epochs", self.local_epochs.to_string())
            .arg("--fraction", self.fraction.to_string())
            .arg("--aggregation", &self.aggregation)
            .opt("--imgsz", self.imgsz.map(|px| px.to_string()))
            .group(&self.step)
            .arg("--seed", self.seed.to_string())
            .group(&self.device)
            .switch("--skip-bad", self.skip_bad)
            .arg("--out", &self.out)
            .build()
    }
}

pub fn run(args: Args) -> Result<()> {
    let aggregation: Aggregation = args.aggregation.parse().map_err(anyhow::Error::msg)?;
    ensure!(args.rounds >= 1 && args.local_epochs >= 1, "--rounds and --local-epochs must be at least 1");
    ensure!(args.fraction > 0.0 && args.fraction <= 1.0, "--fraction must be in (0, 1], got {}", args.fraction);
    let device = args.device.open()?;
    // Every tensor of the file must belong to the model it names.
    let detector = Detector::load(&args.weights, &Device::Cpu).with_context(|| format!("--weights {}", args.weights.display()))?;
    // FedAvg trains the whole model on images: a start that binarizes at a cut (binarization-aware
    // `pretrain`, or `train`'s Front + Back) holds every layer and is trained on float features.
    let meta = DeployMeta { imgsz: args.imgsz.unwrap_or(detector.meta().imgsz), binarized_cut: None, ..detector.meta().clone() };
    drop(detector);
    let start: State = candle_core::safetensors::load(&args.weights, &Device::Cpu)?.into_iter().collect::<BTreeMap<_, _>>();
    let policy = if args.skip_bad { BadDataPolicy::Skip } else { BadDataPolicy::Fail };
    let mut edges = Vec::new();
    for (name, yaml) in edge_datasets(&args.data)? {
        let dataset = Dataset::open(&yaml).with_context(|| format!("--data {}", yaml.display()))?;
        ensure!(dataset.names() == meta.names.as_slice(), "{}: classes {:?}, the model's {:?}", yaml.display(), dataset.names(), meta.names);
        let split = dataset.load(Split::Train, policy)?;
        tracing::info!(edge = %name, data = %yaml.display(), summary = %split.summary, "edge shard loaded");
        edges.push(Edge { name, images: ImageSet::load(&split.samples, meta.imgsz)? });
    }
    let val_data = Dataset::open(&args.val).with_context(|| format!("--val {}", args.val.display()))?;
    ensure!(val_data.names() == meta.names.as_slice(), "--val {}: classes {:?}, the model's {:?}", args.val.display(), val_data.names(), meta.names);
    let val_split = val_data.load(if val_data.has_split(Split::Val) { Split::Val } else { Split::Train }, policy)?;
    let val = EvalSet::load(&val_split.samples, &meta.names, meta.imgsz)?;
    let fit = FitConfig {
        epochs: args.rounds * args.local_epochs,
        batch_size: args.step.batch,
        nominal_batch: args.step.nbs,
        hyp: args.step.hyp()?,
        decay: LrDecay::Linear,
        seed: args.seed,
        augment: !args.step.no_augment,
        mosaic: args.step.mosaic.mosaic,
        close_mosaic: args.step.mosaic.close_mosaic,
        imgsz: meta.imgsz,
        device,
        out: args.out.clone(),
        stop_after: None,
    };
    if let Some(target) = args.until_map50 {
        ensure!((0.0..=1.0).contains(&target), "--until-map50 must be in [0, 1], got {target}");
    }
    let config = FedConfig { rounds: args.rounds, local_epochs: args.local_epochs, fraction: args.fraction, aggregation, until_map50: args.until_map50, fit };
    println!(
        "FedAvg ({aggregation}): {} edges ({} images), {} rounds × {} local epochs, fraction {}, clients in-process",
        edges.len(),
        edges.iter().map(|e| mistnet_train::fit::LabelledSource::len(&e.images)).sum::<usize>(),
        args.rounds,
        args.local_epochs,
        args.fraction
    );
    let first_edge = edge_datasets(&args.data)?.into_iter().next().map(|(_, yaml)| yaml).context("no edge")?;
    let (records, mut accounting) = server::run(start, &meta, &edges, &val, &config)?;
    drop(edges);
    // The edge's memory: one training step of the whole model in a process of its own.
    let memory = edge_memory::Args { mode: "train".into(), weights: args.weights.clone(), model: None, cut: None, data: first_edge, imgsz: meta.imgsz, batch: args.step.batch };
    let exe = std::env::current_exe().context("cannot find this binary")?;
    accounting.edge_peak_rss_bytes = Some(edge_memory::measure(&exe, &memory)?);
    server::write_accounting(&args.out, &accounting)?;
    let last = records.last().expect("round 0 is always recorded");
    println!(
        "after {} rounds: mAP@.5 {:.4}, mAP@[.5:.95] {:.4} (round 0: {:.4}); per edge {:.1} MB as f32 ({:.1} MB as f16), {:.1} GFLOPs of training, peak RSS of a training step {:.0} MB; {:.0} s",
        last.round,
        last.metrics.map50,
        last.metrics.map50_95,
        records[0].metrics.map50,
        accounting.bytes_per_edge.f32 as f64 / 1e6,
        accounting.bytes_per_edge.f16 as f64 / 1e6,
        accounting.gflops_per_edge,
        accounting.edge_peak_rss_bytes.unwrap_or(0) as f64 / 1e6,
        accounting.wall_seconds
    );
    if let Some(target) = args.until_map50 {
        match &accounting.reached {
            Some(r) => println!("reached mAP@.5 {target} at round {} (mAP@.5 {:.4}) after {:.1} MB per edge as f32 ({:.1} MB as f16)", r.round, r.map50, r.bytes_per_edge.f32 as f64 / 1e6, r.bytes_per_edge.f16 as f64 / 1e6),
            None => println!("did not reach mAP@.5 {target} within {} rounds (best {:.4})", args.rounds, records.iter().map(|r| r.metrics.map50).fold(0.0, f64::max)),
        }
    }
    let out = &args.out;
    println!("model in {}, per round in {}, accounting in {}", out.join(MODEL_FILE).display(), out.join(RESULTS_FILE).display(), out.join(ACCOUNTING_FILE).display());
    Ok(())
}

/// `(edge name, dataset YAML)` of every `--data`: a file is one edge named by its stem, a directory
/// every `edge-<k>.yaml` in it in the order of k.
fn edge_datasets(data: &[PathBuf]) -> Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    for path in data {
        if path.is_dir() {
            let mut found: Vec<(usize, PathBuf)> = std::fs::read_dir(path)
                .with_context(|| format!("cannot read {}", path.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter_map(|p| edge_index(&p).map(|k| (k, p)))
                .collect();
            found.sort();
            ensure!(!found.is_empty(), "--data {}: no edge-<k>.yaml in it", path.display());
            out.extend(found.into_iter().map(|(k, p)| (format!("edge-{k}"), p)));
        } else {
            let stem = path.file_stem().and_then(|s| s.to_str()).with_context(|| format!("--data {}: not a file name", path.display()))?;
            out.push((stem.to_string(), path.clone()));
        }
    }
    let mut names: Vec<&str> = out.iter().map(|(n, _)| n.as_str()).collect();
    names.sort_unstable();
    if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
        bail!("two --data edges are both named {}", w[0]);
    }
    Ok(out)
}

/// k of a file named `edge-<k>.yaml`.
fn edge_index(path: &Path) -> Option<usize> {
    let name = path.file_name()?.to_str()?;
    name.strip_prefix("edge-")?.strip_suffix(".yaml")?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use mistnet_cli::argv::reparse;
    use mistnet_cli::device::DeviceSpec;

    fn example() -> Args {
        Args {
            data: vec!["a/edge-0.yaml".into(), "a/edge-1.yaml".into()],
            val: "v.yaml".into(),
            weights: "w.safetensors".into(),
            rounds: 3,
            until_map50: Some(0.5),
            local_epochs: 2,
            fraction: 0.5,
            aggregation: "running".into(),
            imgsz: Some(96),
            step: StepFlags {
                batch: 4,
                nbs: 4,
                hyp: Some("h.yaml".into()),
                warmup_min_iters: Some(5),
                no_augment: true,
                mosaic: crate::run_flags::MosaicFlags { mosaic: 0.25, close_mosaic: 2 },
            },
            seed: 3,
            device: DeviceArgs { spec: DeviceSpec::Cpu },
            skip_bad: true,
            out: "runs/f".into(),
        }
    }

    #[test]
    fn fedavg_flags_parse_back() {
        let a = example();
        assert_eq!(reparse(&a).unwrap(), a);
        let plain = Args {
            imgsz: None,
            step: StepFlags { hyp: None, warmup_min_iters: None, no_augment: false, ..example().step },
            skip_bad: false,
            aggregation: "fedavg".into(),
            ..example()
        };
        assert_eq!(reparse(&plain).unwrap(), plain);
    }

    #[test]
    fn a_directory_gives_its_edges_in_order() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["edge-10.yaml", "edge-2.yaml", "edge-0.yaml", "notes.yaml", "edge-x.yaml"] {
            std::fs::write(dir.path().join(name), "").unwrap();
        }
        let edges = edge_datasets(&[dir.path().to_path_buf()]).unwrap();
        assert_eq!(edges.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(), ["edge-0", "edge-2", "edge-10"]);
        let err = edge_datasets(&[dir.path().join("edge-0.yaml"), dir.path().to_path_buf()]).unwrap_err().to_string();
        assert!(err.contains("both named edge-0"), "{err}");
        assert!(edge_datasets(&[dir.path().join("empty")]).is_ok(), "a missing file is for Dataset::open to name");
    }
}
