//! `mistnet-cloud train`: trains the Back (layers cut..) on binarized, privatized Front features.
//!
//! The features come from the feature store that `serve` filled (`--store DIR`: what the edges
//! really sent, read by [`FeatureSet::from_store`]), or, without `--store`, from the simulation path: the edges are simulated on
//! `--data`'s train split (letterbox, Front, binarize, randomized response with
//! `--mechanism`/`--epsilon`, the real wire format, decode), as Plato's MistNet does. `--data`'s
//! val split is the evaluation set either way.

use std::path::PathBuf;

use anyhow::{Context, Result};
use candle_core::Device;
use indicatif::{ProgressBar, ProgressStyle};
use mistnet::codec::{EPSILON_HELP, MECHANISM_HELP, Mechanism, Privacy};
use mistnet::data::BadDataPolicy;
use mistnet::model::deploy::{DeployMeta, model_yaml, specs_for};
use mistnet::model::{DEFAULT_CUT, Front, ParamStore, load_back};
use mistnet_cloud::fit::{self, EvalSet, FeatureSet, LabelledSource, StoreExpect, Trainee, checkpoint_path, initialize_detect_biases};
use mistnet_cloud::store::FeatureStore;

use crate::run_flags::RunFlags;

#[derive(clap::Args)]
#[command(after_help = "Writes into --out: model.safetensors (deployable: the Front of --weights + the trained Back; \
its metadata says the Back expects binarized features, so `val` and `mistnet-edge detect` binarize after the Front), \
checkpoint.safetensors (for --resume), results.csv, loss.png, map.png.\n\n\
Example:\n  mistnet-cloud train --data data/synth/private.yaml --weights runs/pretrain/model.safetensors --cut 4 \
--imgsz 128 --mechanism sue --epsilon 2 --epochs 30 --out runs/mistnet")]
pub struct Args {
    #[command(flatten)]
    run: RunFlags,
    /// Weights holding the Front (and the Back's starting point): a deployable model from `pretrain`/`export`,
    /// or Ultralytics-named safetensors together with --model.
    #[arg(long)]
    weights: PathBuf,
    /// Model config (YAML file or yolov5n/s/m/l/x) when --weights is not a deployable model.
    #[arg(long, default_value = "yolov5n")]
    model: String,
    /// Split point in Plato's convention: the edge runs modules 0..cut-1 and sends module cut-1's output.
    #[arg(long, default_value_t = DEFAULT_CUT)]
    cut: usize,
    /// Start the Back from random weights (YOLOv5's initialisation) instead of --weights.
    #[arg(long)]
    fresh_back: bool,
    #[arg(long, default_value = "none", long_help = MECHANISM_HELP)]
    mechanism: Mechanism,
    #[arg(long, long_help = EPSILON_HELP)]
    epsilon: Option<f64>,
    /// Train on the samples in this feature store (the directory of `mistnet-cloud serve --store`) instead of
    /// simulating the edges on --data's train split; --mechanism/--epsilon are then what the edges chose. Boxes are
    /// placed in the --imgsz letterbox from each sample's original image size; a sample the trainer cannot use
    /// fails the run, naming it (or see --skip-bad).
    #[arg(long)]
    store: Option<PathBuf>,
}

pub fn run(args: Args) -> Result<()> {
    let config = args.run.fit_config()?;
    let privacy = Privacy::new(args.mechanism, args.epsilon)?;
    let (dataset, train, val) = args.run.load_data()?;
    let names = dataset.names().to_vec();
    let yaml = match DeployMeta::read(&args.weights) {
        Ok(meta) => meta.model_yaml,
        Err(_) => model_yaml(&args.model)?,
    };
    let specs = specs_for(&yaml, names.len())?;
    let weights = ParamStore::open(&[&args.weights])?;
    let front = Front::load(&specs, args.cut, &weights, &Device::Cpu)?;
    let front_tensors = weights.tensors();

    let checkpoint = checkpoint_path(&config.out);
    let (store, fresh) = if args.run.resume {
        (ParamStore::open(&[&checkpoint]).with_context(|| format!("--resume needs {}", checkpoint.display()))?, false)
    } else if args.fresh_back {
        (ParamStore::fresh(config.seed), true)
    } else {
        (ParamStore::open(&[&args.weights])?, false)
    };
    let back = load_back(&specs, args.cut, &store, &config.device)?;
    if fresh {
        initialize_detect_biases(&store, &back)?;
    }

    let features = match &args.store {
        Some(dir) => stored_features(dir, &front, config.imgsz, names.len(), args.run.bad_data_policy())?,
        None => {
            let bar = ProgressBar::new(train.samples.len() as u64).with_style(
                ProgressStyle::with_template("extract [{bar:30}] {pos}/{len} {per_sec} eta {eta}")
                    .expect("valid template")
                    .progress_chars("=> "),
            );
            let features = FeatureSet::extract(&train.samples, &front, config.imgsz, privacy, config.seed, || bar.inc(1))?;
            bar.finish_and_clear();
            tracing::info!(samples = train.samples.len(), cut = args.cut, front = %front.hash(), mechanism = args.mechanism.name(), epsilon = ?args.epsilon, "features extracted");
            features
        }
    };

    let val = EvalSet::load(&val.samples, &names, config.imgsz)?;
    let meta = DeployMeta { model_yaml: yaml, names, imgsz: config.imgsz, binarized_cut: Some(args.cut) };
    let trainee = Trainee { model: back, store, fixed: front_tensors, meta };
    let records = fit::fit(&trainee, &features, &val, &config, args.run.resume)?;
    print_summary(&records, &config.out);
    Ok(())
}

/// Every usable sample of a feature store (see [`FeatureSet::from_store`]); with --skip-bad the
/// others are left out and counted.
fn stored_features(dir: &std::path::Path, front: &Front, imgsz: u32, nc: usize, policy: BadDataPolicy) -> Result<FeatureSet> {
    let store = FeatureStore::open(dir)?;
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
