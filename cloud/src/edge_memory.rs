//! `mistnet-cloud edge-memory` (not listed in `--help`): the peak memory of what an edge runs,
//! measured in a process of its own, as the Front bench does: the process loads only what that
//! edge needs, runs it, and prints its peak resident set (`VmHWM` of `/proc/self/status`).
//!
//! - `--mode train` (FedAvg's edge): the whole deployable model, then one training step
//!   (forward in train mode, loss, backward, SGD) on a batch of the edge's first images;
//! - `--mode front` (MistNet's edge): the Front-only file, then the edge pipeline (letterbox,
//!   Front, binarize, randomized response, pack, zstd) over the edge's first images, one at a time.
//!
//! [`measure`] runs it as a child of the current binary and reads the figure back.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail, ensure};
use candle_core::Device;
use mistnet::codec::{Mechanism, Privacy, seeded_rng};
use mistnet::data::{BadDataPolicy, Dataset, Split};
use mistnet::encoder::{EdgeEncoder, WireSettings};
use mistnet::model::batch_norm::BatchNormConfig;
use mistnet::model::deploy::DeployMeta;
use mistnet::model::{Front, ParamStore, Yolo};
use mistnet_cli::{Argv, ToArgs};
use mistnet_train::fit::images::ImageSet;
use mistnet_train::fit::{FitConfig, Session, Trainee};
use mistnet_train::train::{Hyp, LrDecay};
use serde::{Deserialize, Serialize};

#[derive(clap::Args, Debug, Clone, PartialEq)]
pub struct Args {
    /// train: one whole-model training step (FedAvg's edge); front: the edge pipeline through the Front (MistNet's edge).
    #[arg(long, value_parser = ["train", "front"])]
    pub mode: String,
    /// train: a deployable whole model; front: the Front-only file (`export`'s front.safetensors).
    #[arg(long)]
    pub weights: PathBuf,
    /// front: the deployable model the Front was cut from (its config and classes).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// front: the cut.
    #[arg(long)]
    pub cut: Option<usize>,
    /// The edge's dataset YAML: its first images are the input.
    #[arg(long, value_name = "DATA.yaml")]
    pub data: PathBuf,
    #[arg(long, value_name = "PX")]
    pub imgsz: u32,
    /// train: the batch of the step; front: images encoded one after another.
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
}

impl ToArgs for Args {
    fn to_args(&self) -> Vec<OsString> {
        Argv::new()
            .arg("--mode", &self.mode)
            .arg("--weights", &self.weights)
            .opt("--model", self.model.as_ref())
            .opt("--cut", self.cut.map(|c| c.to_string()))
            .arg("--data", &self.data)
            .arg("--imgsz", self.imgsz.to_string())
            .arg("--batch", self.batch.to_string())
            .build()
    }
}

/// What the child prints.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PeakMemory {
    pub peak_rss_bytes: u64,
}

pub fn run(args: Args) -> Result<()> {
    let dataset = Dataset::open(&args.data)?;
    let split = dataset.load(Split::Train, BadDataPolicy::Fail)?;
    ensure!(split.samples.len() >= 2, "{}: at least 2 images needed", args.data.display());
    let samples = &split.samples[..args.batch.clamp(2, split.samples.len())];
    match args.mode.as_str() {
        "train" => {
            let meta = DeployMeta::read(&args.weights)?;
            let store = ParamStore::open(&[&args.weights])?;
            let model = Yolo::load(store.var_builder(&Device::Cpu), &meta.specs()?, 0, BatchNormConfig::default())?;
            let images = ImageSet::load(samples, args.imgsz)?;
            let config = FitConfig {
                epochs: 1,
                batch_size: samples.len(),
                nominal_batch: samples.len(),
                hyp: Hyp::default(),
                decay: LrDecay::Linear,
                seed: 0,
                augment: true,
                mosaic: crate::run_flags::DEFAULT_MOSAIC,
                close_mosaic: 0,
                imgsz: args.imgsz,
                device: Device::Cpu,
                out: PathBuf::new(),
                stop_after: None,
            };
            let trainee = Trainee { model, store, fixed: Default::default(), meta, binarization: None };
            // One epoch over exactly one batch: one training step.
            Session::new(&trainee, &images, &config)?.train_epoch(&trainee, &images, &config, 0, "edge-memory step")?;
        }
        "front" => {
            let meta = DeployMeta::read(args.model.as_deref().context("--mode front needs --model")?)?;
            let cut = args.cut.context("--mode front needs --cut")?;
            let front = Front::load(&meta.specs()?, cut, &ParamStore::open(&[&args.weights])?, &Device::Cpu)?;
            let encoder = EdgeEncoder::new(front, args.imgsz, WireSettings::packed(Privacy::new(Mechanism::Sue, Some(4.0))?))?;
            let mut rng = seeded_rng(0);
            for s in samples {
                encoder.encode_sample(s, &mut rng)?;
            }
        }
        other => bail!("unknown --mode {other}"),
    }
    println!("{}", serde_json::to_string(&PeakMemory { peak_rss_bytes: peak_rss_bytes()? })?);
    Ok(())
}

/// `VmHWM` of this process.
fn peak_rss_bytes() -> Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status").context("cannot read /proc/self/status")?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).context("no VmHWM in /proc/self/status")?;
    let kb: u64 = line.split_whitespace().nth(1).and_then(|v| v.parse().ok()).context("malformed VmHWM")?;
    Ok(kb * 1024)
}

/// Runs `args` in a child of `binary` (one compute thread, as the job's edges) and returns its peak RSS.
pub fn measure(binary: &Path, args: &Args) -> Result<u64> {
    let out = Command::new(binary).arg("edge-memory").args(args.to_args()).env("RAYON_NUM_THREADS", "1").env("RUST_LOG", "warn").output().context("cannot start edge-memory")?;
    ensure!(out.status.success(), "edge-memory --mode {} failed: {}", args.mode, String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().last().context("edge-memory printed nothing")?;
    Ok(serde_json::from_str::<PeakMemory>(line).with_context(|| format!("edge-memory printed {line:?}"))?.peak_rss_bytes)
}
