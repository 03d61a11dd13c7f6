//! Flags shared by the training commands: [`StepFlags`] (batch, accumulation, hyper-parameters,
//! warmup, augmentation with its [`MosaicFlags`]: `train`, `pretrain` and `fedavg`; the job sets
//! the mosaic of all its training phases with the same flags) and [`RunFlags`] (`train` and
//! `pretrain`: data, schedule, seed, device and the run directory).

use std::ffi::OsString;
use std::path::PathBuf;

use anyhow::{Context, Result};
use mistnet::data::{BadDataPolicy, Dataset, LoadedSplit, Split};
use mistnet_cli::{Argv, DeviceArgs, ImageSizeArgs, ToArgs};
use mistnet_train::fit::FitConfig;
use mistnet_train::train::{Hyp, LrDecay, optimizer::NOMINAL_BATCH};

/// How each training step is made: batch, gradient accumulation, hyper-parameters, warmup floor
/// and augmentation (`train`, `pretrain`, `fedavg`).
#[derive(clap::Args, Debug, Clone, PartialEq)]
pub struct StepFlags {
    /// Batch size (at least 2: BatchNorm uses batch statistics).
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    /// Nominal batch size: gradients are accumulated over batches up to it before each optimizer step (YOLOv5: 64).
    #[arg(long, default_value_t = NOMINAL_BATCH)]
    pub nbs: usize,
    /// Hyper-parameters: a YOLOv5 hyp YAML (loss, optimizer and warmup keys; the rest is ignored). Default: hyp.scratch-low.
    #[arg(long, value_name = "HYP.yaml")]
    pub hyp: Option<PathBuf>,
    /// The fewest warmup iterations (YOLOv5's train.py: 100), counted over the run's own schedule. Lower it for runs
    /// so short that 100 iterations would be most of them. Overrides `warmup_min_iters` of --hyp.
    #[arg(long, value_name = "N")]
    pub warmup_min_iters: Option<usize>,
    /// Turn augmentation off (mosaic included).
    #[arg(long)]
    pub no_augment: bool,
    #[command(flatten)]
    pub mosaic: MosaicFlags,
}

/// The mosaic augmentation: four training samples tiled into one (YOLOv5's `load_mosaic` on
/// images; on stored features, four maps tiled 2×2 and cropped back at a random centre).
#[derive(clap::Args, Debug, Clone, Copy, PartialEq)]
pub struct MosaicFlags {
    /// Probability that a training sample is a mosaic of itself and three random others (images: tiled around a random
    /// centre in a 2s×2s canvas, then the random affine crops it back to s; features: four maps tiled 2×2, a map-sized
    /// window cut at a random centre; boxes move with their tile, are clipped, and those mostly cut off are dropped).
    /// 0 turns it off; YOLOv5's hyp.scratch-low uses 1.
    #[arg(long, value_name = "P", default_value_t = DEFAULT_MOSAIC, value_parser = parse_probability)]
    pub mosaic: f64,
    /// Train the last N epochs without mosaics (Ultralytics' close_mosaic), so that the model ends on whole samples.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_CLOSE_MOSAIC)]
    pub close_mosaic: usize,
}

/// `--mosaic`'s and `--close-mosaic`'s defaults.
pub const DEFAULT_MOSAIC: f64 = 1.0;
pub const DEFAULT_CLOSE_MOSAIC: usize = 0;

/// A probability in 0..=1.
fn parse_probability(text: &str) -> Result<f64, String> {
    let p: f64 = text.parse().map_err(|_| format!("`{text}` is not a number"))?;
    if (0.0..=1.0).contains(&p) { Ok(p) } else { Err(format!("{p} is not a probability: it must be in 0..=1")) }
}

impl ToArgs for MosaicFlags {
    fn to_args(&self) -> Vec<OsString> {
        Argv::new().arg("--mosaic", self.mosaic.to_string()).arg("--close-mosaic", self.close_mosaic.to_string()).build()
    }
}

impl StepFlags {
    /// The hyper-parameters: --hyp's (default hyp.scratch-low) with --warmup-min-iters over them.
    pub fn hyp(&self) -> Result<Hyp> {
        let mut hyp = match &self.hyp {
            Some(path) => {
                let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
                serde_norway::from_str::<Hyp>(&text).with_context(|| format!("{}: not a YOLOv5 hyp file", path.display()))?
            }
            None => Hyp::default(),
        };
        if let Some(n) = self.warmup_min_iters {
            hyp.warmup_min_iters = n;
        }
        Ok(hyp)
    }
}

impl ToArgs for StepFlags {
    fn to_args(&self) -> Vec<OsString> {
        Argv::new()
            .arg("--batch", self.batch.to_string())
            .arg("--nbs", self.nbs.to_string())
            .opt("--hyp", self.hyp.as_ref())
            .opt("--warmup-min-iters", self.warmup_min_iters.map(|n| n.to_string()))
            .switch("--no-augment", self.no_augment)
            .group(&self.mosaic)
            .build()
    }
}

#[derive(clap::Args, Debug, Clone, PartialEq)]
pub struct RunFlags {
    /// Dataset: an Ultralytics dataset YAML (train split to learn from, val split to evaluate on each epoch), a COCO JSON or a YOLO directory.
    #[arg(long, value_name = "DATA.yaml")]
    pub data: PathBuf,
    #[command(flatten)]
    pub imgsz: ImageSizeArgs,
    /// Epochs to train.
    #[arg(long, default_value_t = 100)]
    pub epochs: usize,
    #[command(flatten)]
    pub step: StepFlags,
    /// Cosine learning-rate decay to lrf (default: linear).
    #[arg(long)]
    pub cos_lr: bool,
    /// Seed of shuffling, augmentation (and, for `train`, of the simulated edges' noise).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[command(flatten)]
    pub device: DeviceArgs,
    /// Leave out bad samples (missing or unreadable image, malformed label) with a count instead of failing. With
    /// `train --store`, also stored samples the trainer cannot use (undecodable message, wrong feature shape, label out
    /// of range, zero image size, another Front): each is named in a warning and the count is printed.
    #[arg(long)]
    pub skip_bad: bool,
    /// Run directory: checkpoint.safetensors, model.safetensors, results.csv, metrics.prom, loss.png, map.png.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Stop after this many epochs of this invocation, leaving the checkpoint to continue with --resume (training in slices).
    #[arg(long, value_name = "N")]
    pub stop_after: Option<usize>,
    /// Continue the run in --out from its checkpoint.safetensors (same flags as the interrupted run).
    #[arg(long)]
    pub resume: bool,
}

impl RunFlags {
    pub fn fit_config(&self) -> Result<FitConfig> {
        Ok(FitConfig {
            epochs: self.epochs,
            batch_size: self.step.batch,
            nominal_batch: self.step.nbs,
            hyp: self.step.hyp()?,
            decay: if self.cos_lr { LrDecay::Cosine } else { LrDecay::Linear },
            seed: self.seed,
            augment: !self.step.no_augment,
            mosaic: self.step.mosaic.mosaic,
            close_mosaic: self.step.mosaic.close_mosaic,
            imgsz: self.imgsz.px,
            device: self.device.open()?,
            out: self.out.clone(),
            stop_after: self.stop_after,
        })
    }

    /// What to do with a bad sample: --skip-bad's policy.
    pub fn bad_data_policy(&self) -> BadDataPolicy {
        if self.skip_bad { BadDataPolicy::Skip } else { BadDataPolicy::Fail }
    }

    /// The dataset with its train and val splits loaded.
    pub fn load_data(&self) -> Result<(Dataset, LoadedSplit, LoadedSplit)> {
        let dataset = Dataset::open(&self.data)?;
        let policy = self.bad_data_policy();
        let train = dataset.load(Split::Train, policy)?;
        let val_split = if dataset.has_split(Split::Val) { Split::Val } else { Split::Train };
        let val = dataset.load(val_split, policy)?;
        tracing::info!(train = %train.summary, val = %val.summary, "dataset loaded");
        Ok((dataset, train, val))
    }
}

impl ToArgs for RunFlags {
    fn to_args(&self) -> Vec<OsString> {
        Argv::new()
            .arg("--data", &self.data)
            .group(&self.imgsz)
            .arg("--epochs", self.epochs.to_string())
            .group(&self.step)
            .switch("--cos-lr", self.cos_lr)
            .arg("--seed", self.seed.to_string())
            .group(&self.device)
            .switch("--skip-bad", self.skip_bad)
            .arg("--out", &self.out)
            .opt("--stop-after", self.stop_after.map(|n| n.to_string()))
            .switch("--resume", self.resume)
            .build()
    }
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use mistnet_cli::argv::reparse;
    use mistnet_cli::device::DeviceSpec;

    /// Run flags with every optional flag set, for the commands' round-trip tests.
    pub fn example() -> RunFlags {
        let plain = plain();
        RunFlags {
            step: StepFlags {
                hyp: Some("hyp.yaml".into()),
                warmup_min_iters: Some(20),
                no_augment: true,
                mosaic: MosaicFlags { mosaic: 0.1 + 0.2, close_mosaic: 5 },
                ..plain.step.clone()
            },
            cos_lr: true,
            seed: 7,
            device: DeviceArgs { spec: DeviceSpec::Cuda(1) },
            skip_bad: true,
            stop_after: Some(1),
            resume: true,
            ..plain
        }
    }

    fn plain() -> RunFlags {
        RunFlags {
            data: "data/public.yaml".into(),
            imgsz: ImageSizeArgs { px: 128 },
            epochs: 3,
            step: StepFlags {
                batch: 8,
                nbs: 8,
                hyp: None,
                warmup_min_iters: None,
                no_augment: false,
                mosaic: MosaicFlags { mosaic: DEFAULT_MOSAIC, close_mosaic: DEFAULT_CLOSE_MOSAIC },
            },
            cos_lr: false,
            seed: 0,
            device: DeviceArgs { spec: DeviceSpec::Cpu },
            skip_bad: false,
            out: "runs/x".into(),
            stop_after: None,
            resume: false,
        }
    }

    #[test]
    fn run_flags_parse_back_to_themselves() {
        for flags in [plain(), example()] {
            assert_eq!(reparse(&flags).unwrap(), flags);
        }
    }

    #[test]
    fn the_mosaic_probability_must_be_in_0_to_1() {
        let parse = |p: &str| {
            let command = <MosaicFlags as clap::Args>::augment_args(clap::Command::new("m").no_binary_name(true));
            command.try_get_matches_from([format!("--mosaic={p}")]).map(|m| <MosaicFlags as clap::FromArgMatches>::from_arg_matches(&m).unwrap().mosaic)
        };
        assert_eq!((parse("0").unwrap(), parse("0.5").unwrap(), parse("1").unwrap()), (0.0, 0.5, 1.0));
        for bad in ["1.5", "-0.1", "NaN", "half"] {
            let err = parse(bad).unwrap_err().to_string();
            assert!(err.contains("0..=1") || err.contains("not a number"), "{bad}: {err}");
        }
    }
}
