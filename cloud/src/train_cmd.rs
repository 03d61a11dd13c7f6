//! `mistnet-cloud train`: trains the Back (layers cut..) on binarized, privatized Front features.
//!
//! The features come from the feature store that `serve` filled (`--store DIR`: what the edges
//! really sent, read by [`FeatureSet::from_store`]), or, without `--store`, from the simulation path: the edges are simulated on
//! `--data`'s train split (letterbox, Front, binarize, randomized response with
//! `--mechanism`/`--epsilon`, the real wire format, decode), as Plato's MistNet does. `--data`'s
//! val split is the evaluation set either way.

use std::ffi::OsString;
use std::path::PathBuf;

use anyhow::{Context, Result};
use candle_core::Device;
use indicatif::{ProgressBar, ProgressStyle};
use mistnet::data::BadDataPolicy;
use mistnet::encoder::{EdgeEncoder, WireSettings};
use mistnet::model::deploy::{DeployMeta, specs_for};
use mistnet::model::{Front, ParamStore, load_back};
use mistnet_cli::{Argv, CutArgs, LdpArgs, ModelArgs, ToArgs};
use mistnet_store::{FeatureStore, OnCorruption};
use mistnet_train::fit::{self, EvalSet, FeatureSet, LabelledSource, StoreExpect, Trainee, checkpoint_path, initialize_detect_biases};

use crate::run_flags::RunFlags;

#[derive(clap::Args, Debug, Clone, PartialEq)]
#[command(after_help = "Writes into --out: model.safetensors (deployable: the Front of --weights + the trained Back; \
its metadata says the Back expects binarized features, so `val` and `mistnet-edge detect` binarize after the Front), \
checkpoint.safetensors (for --resume), results.csv (per epoch: losses, mAP, learning rates, time_s, step_s: a training \
step's mean time, samples_per_s), metrics.prom (the last epoch, Prometheus text), loss.png, map.png.\n\
Without --store, the simulated edges' noise is --mechanism (default sue) at --epsilon; --mechanism none trains on \
noiseless bits.\n\n\
Example:\n  mistnet-cloud train --data data/synth/private.yaml --weights runs/pretrain/model.safetensors --cut 4 \
--imgsz 128 --mechanism sue --epsilon 2 --epochs 30 --out runs/mistnet")]
pub struct Args {
    #[command(flatten)]
    pub run: RunFlags,
    /// Weights holding the Front (and the Back's starting point): a deployable model from `pretrain`/`export`,
    /// or Ultralytics-named safetensors together with --model.
    #[arg(long)]
    pub weights: PathBuf,
    // The model config, used when --weights is not a deployable model (which carries its own).
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub cut: CutArgs,
    /// Start the Back from random weights (YOLOv5's initialisation) instead of --weights.
    #[arg(long)]
    pub fresh_back: bool,
    // The simulated edges' noise; with --store the stored messages carry their own and these are not used.
    #[command(flatten)]
    pub privacy: LdpArgs,
    /// Train on the samples in this feature store (the directory of `mistnet-cloud serve --store`) instead of
    /// simulating the edges on --data's train split with --mechanism/--epsilon. Boxes are placed in the --imgsz
    /// letterbox from each sample's original image size; a sample the trainer cannot use fails the run, naming it
    /// (or see --skip-bad).
    #[arg(long)]
    pub store: Option<PathBuf>,
    /// What reading --store does with corruption at rest (damage followed by valid records): refuse (stop, naming
    /// the file and byte) or quarantine (skip the damaged bytes with a warning and read every valid record).
    #[arg(long, value_name = "refuse|quarantine", default_value_t = OnCorruption::Refuse)]
    pub on_corruption: OnCorruption,
}

impl ToArgs for Args {
    fn to_args(&self) -> Vec<OsString> {
        Argv::new()
            .group(&self.run)
            .arg("--weights", &self.weights)
            .group(&self.model)
            .group(&self.cut)
            .switch("--fresh-back", self.fresh_back)
            .group(&self.privacy)
            .opt("--store", self.store.as_ref())
            .arg("--on-corruption", self.on_corruption.to_string())
            .build()
    }
}

pub fn run(args: Args) -> Result<()> {
    let config = args.run.fit_config()?;
    if args.store.is_none() {
        args.privacy.privacy()?; // refuse bad privacy flags of the simulation before loading anything
    }
    let (dataset, train, val) = args.run.load_data()?;
    let names = dataset.names().to_vec();
    let yaml = match DeployMeta::read(&args.weights) {
        Ok(meta) => meta.model_yaml,
        Err(_) => args.model.yaml()?,
    };
    let specs = specs_for(&yaml, names.len())?;
    let weights = ParamStore::open(&[&args.weights])?;
    let cut = args.cut.index;
    let front = Front::load(&specs, cut, &weights, &Device::Cpu)?;
    let front_tensors = weights.tensors();

    let checkpoint = checkpoint_path(&config.out);
    let (store, fresh) = if args.run.resume {
        (ParamStore::open(&[&checkpoint]).with_context(|| format!("--resume needs {}", checkpoint.display()))?, false)
    } else if args.fresh_back {
        (ParamStore::fresh(config.seed), true)
    } else {
        (ParamStore::open(&[&args.weights])?, false)
    };
    let back = load_back(&specs, cut, &store, &config.device)?;
    if fresh {
        initialize_detect_biases(&store, &back)?;
    }

    let features = match &args.store {
        Some(dir) => stored_features(dir, args.on_corruption, &front, config.imgsz, names.len(), args.run.bad_data_policy())?,
        None => {
            let privacy = args.privacy.privacy()?;
            let bar = ProgressBar::new(train.samples.len() as u64).with_style(
                ProgressStyle::with_template("extract [{bar:30}] {pos}/{len} {per_sec} eta {eta}")
                    .expect("valid template")
                    .progress_chars("=> "),
            );
            let encoder = EdgeEncoder::new(front.clone(), config.imgsz, WireSettings::packed(privacy))?;
            let features = FeatureSet::extract(&train.samples, &encoder, config.seed, || bar.inc(1))?;
            bar.finish_and_clear();
            tracing::info!(samples = train.samples.len(), cut, front = %front.hash(), mechanism = args.privacy.mechanism.name(), epsilon = ?args.privacy.epsilon, "features extracted");
            features
        }
    };

    let val = EvalSet::load(&val.samples, &names, config.imgsz)?;
    let meta = DeployMeta { model_yaml: yaml, names, imgsz: config.imgsz, binarized_cut: Some(cut) };
    let trainee = Trainee { model: back, store, fixed: front_tensors, meta };
    let records = fit::fit(&trainee, &features, &val, &config, args.run.resume)?;
    print_summary(&records, &config.out);
    Ok(())
}

/// Every usable sample of a feature store (see [`FeatureSet::from_store`]); with --skip-bad the
/// others are left out and counted.
fn stored_features(dir: &std::path::Path, on_corruption: OnCorruption, front: &Front, imgsz: u32, nc: usize, policy: BadDataPolicy) -> Result<FeatureSet> {
    let store = FeatureStore::open_with(dir, on_corruption)?;
    anyhow::ensure!(!store.is_empty(), "the feature store {} holds no samples", dir.display());
    let expect = StoreExpect::new(front, imgsz, nc)?;
    let (features, skipped) = FeatureSet::from_store(store.samples()?, &expect, policy).with_context(|| format!("feature store {}", dir.display()))?;
    if skipped > 0 {
        println!("skipped {skipped} of {} stored samples the trainer cannot use (--skip-bad; each is named in a warning)", store.len());
    }
    anyhow::ensure!(!features.is_empty(), "the feature store {} holds no usable samples ({skipped} skipped)", dir.display());
    tracing::info!(samples = features.len(), skipped, store = %dir.display(), "features read from the store");
    Ok(features)
}

/// The last epoch's metrics and where the results are.
pub fn print_summary(records: &[fit::EpochRecord], out: &std::path::Path) {
    if let Some(last) = records.last() {
        let m = last.metrics;
        println!(
            "epoch {}: mAP@.5 {:.4}  mAP@[.5:.95] {:.4}  (YOLOv5: {:.4} / {:.4})",
            last.epoch + 1,
            m.map50,
            m.map50_95,
            m.yolov5_map50,
            m.yolov5_map50_95
        );
    }
    println!("results in {}", out.display());
}

#[cfg(test)]
mod tests {
    use super::*;
    use mistnet::codec::Mechanism;
    use mistnet_cli::argv::reparse;

    #[test]
    fn train_flags_parse_back() {
        let a = Args {
            run: crate::run_flags::tests::example(),
            weights: "w.safetensors".into(),
            model: ModelArgs { name: "yolov5s".into() },
            cut: CutArgs { index: 3 },
            fresh_back: false,
            privacy: LdpArgs { mechanism: Mechanism::Rr, epsilon: Some(0.5) },
            store: None,
            on_corruption: OnCorruption::Refuse,
        };
        assert_eq!(reparse(&a).unwrap(), a);
        let b = Args { fresh_back: true, privacy: LdpArgs { mechanism: Mechanism::None, epsilon: None }, store: Some("store".into()), on_corruption: OnCorruption::Quarantine, ..a };
        assert_eq!(reparse(&b).unwrap(), b);
    }
}
