//! `mistnet-cloud train`: trains the Back (layers cut..) on binarized, privatized Front features.
//!
//! The features come from the feature store that `serve` filled (`--store DIR`: what the edges
//! really sent, read by [`FeatureSet::from_store`]), or, without `--store`, from the simulation path: the edges are simulated on
//! `--data`'s train split (letterbox, Front, binarize, randomized response with
//! `--mechanism`/`--epsilon`, the real wire format, decode), as Plato's MistNet does. `--data`'s
//! val split is the evaluation set either way.
//!
//! With `--follow`, the store is read while `serve` appends to it ([`FollowedStore`]): training
//! starts once `--min-samples` usable samples are stored (or fails after `--wait-timeout`), and the
//! samples stored since are taken in before every epoch, so an edge that is slow or gone never
//! holds training back.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use candle_core::Device;
use indicatif::{ProgressBar, ProgressStyle};
use mistnet::data::BadDataPolicy;
use mistnet::encoder::{EdgeEncoder, WireSettings};
use mistnet::model::deploy::{DeployMeta, specs_for};
use mistnet::model::{Front, ParamStore, load_back};
use mistnet_cli::{Argv, CutArgs, LdpArgs, ModelArgs, ToArgs};
use mistnet_store::{FeatureStore, OnCorruption, StoreFollower, StoreUrl};
use mistnet_train::fit::{self, EvalSet, FeatureSet, FollowedStore, LabelledSource, StoreExpect, Trainee, checkpoint_path, initialize_detect_biases};

use crate::run_flags::RunFlags;

#[derive(clap::Args, Debug, Clone, PartialEq)]
#[command(after_help = "Writes into --out: model.safetensors (deployable: the Front of --weights + the trained Back; \
its metadata says the Back expects binarized features, so `val` and `mistnet-edge detect` binarize after the Front), \
checkpoint.safetensors (for --resume), results.csv (per epoch: losses, mAP, learning rates, time_s, step_s: a training \
step's mean time, samples_per_s, samples: the samples the epoch trained on), metrics.prom (the last epoch, Prometheus text), loss.png, map.png.\n\
Without --store, the simulated edges' noise is --mechanism (default sue) at --epsilon; --mechanism none trains on \
noiseless bits.\n\n\
With --store DIR --follow, training runs while the edges upload: DIR is read as `serve` appends to it (never written; \
a record still being appended is not yet stored, never an error). Training starts once --min-samples usable samples \
are stored (a line every 5 s says how many are; after --wait-timeout seconds without them it fails), and before every \
epoch the samples stored since the last read are decoded and taken in: each epoch trains on everything stored when it \
starts, so a straggling or vanished edge never blocks it. results.csv's samples column and each `epoch done` log line \
say how many samples an epoch saw; at the end, the samples stored after the last epoch started are counted. With \
--store s3://BUCKET/PREFIX, each read lists the bucket's samples and reads those not read before.\n\n\
Examples:\n  mistnet-cloud train --data data/synth/private.yaml --weights runs/pretrain/model.safetensors --cut 4 \
--imgsz 128 --mechanism sue --epsilon 2 --epochs 30 --out runs/mistnet\n  \
mistnet-cloud train --data data/synth/private-val.yaml --store runs/store --follow --min-samples 100 \
--weights runs/export/model.safetensors --cut 4 --imgsz 128 --epochs 30 --out runs/mistnet\n  \
AWS_ENDPOINT=http://10.0.0.5:9000 AWS_ALLOW_HTTP=true mistnet-cloud train --data data/synth/private-val.yaml \
--store s3://features/job-1 --weights runs/export/model.safetensors --cut 4 --imgsz 128 --epochs 30 --out runs/mistnet")]
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
    /// Train on the samples in this feature store (what `mistnet-cloud serve --store` names: a directory, or
    /// s3://BUCKET/PREFIX with the AWS_* environment serve uses) instead of simulating the edges on --data's train
    /// split with --mechanism/--epsilon. Boxes are placed in the --imgsz letterbox from each sample's original image
    /// size; a sample the trainer cannot use fails the run, naming it (or see --skip-bad).
    #[arg(long, value_name = "DIR|URL")]
    pub store: Option<StoreUrl>,
    /// What reading --store does with corruption at rest (damage followed by valid records): refuse (stop, naming
    /// the file and byte) or quarantine (skip the damaged bytes with a warning and read every valid record).
    #[arg(long, value_name = "refuse|quarantine", default_value_t = OnCorruption::Refuse)]
    pub on_corruption: OnCorruption,
    /// Train while the edges upload: read --store as `serve` appends to it, start once --min-samples usable samples
    /// are stored, and take in the samples stored since before every epoch (each epoch trains on what is stored when it
    /// starts; a straggling or vanished edge never blocks it).
    #[arg(long, requires = "store")]
    pub follow: bool,
    /// With --follow: usable samples to wait for before the first epoch (default: --batch; at least 2).
    #[arg(long, value_name = "N", requires = "follow")]
    pub min_samples: Option<usize>,
    /// With --follow: fail if --min-samples usable samples are not stored within this many seconds [default: 600].
    #[arg(long, value_name = "SECONDS", requires = "follow")]
    pub wait_timeout: Option<f64>,
}

/// `--wait-timeout`'s default, in seconds.
const DEFAULT_WAIT_TIMEOUT: f64 = 600.0;
/// How often `--follow` looks for new samples while it waits for `--min-samples`.
const WAIT_POLL: Duration = Duration::from_millis(250);
/// How often the wait says how many samples are stored.
const WAIT_REPORT: Duration = Duration::from_secs(5);

impl Args {
    /// `--follow`'s settings: the samples to wait for and for how long; `None` without --follow.
    fn follow_settings(&self) -> Result<Option<(usize, Duration)>> {
        if !self.follow {
            return Ok(None);
        }
        let min = self.min_samples.unwrap_or(self.run.step.batch.max(2));
        if min < 2 {
            bail!("--min-samples must be at least 2 (BatchNorm batch statistics), got {min}");
        }
        let timeout = self.wait_timeout.unwrap_or(DEFAULT_WAIT_TIMEOUT);
        if !(timeout.is_finite() && timeout >= 0.0) {
            bail!("--wait-timeout must be a number of seconds, at least 0, got {timeout}");
        }
        Ok(Some((min, Duration::from_secs_f64(timeout))))
    }
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
            .opt("--store", self.store.as_ref().map(ToString::to_string))
            .arg("--on-corruption", self.on_corruption.to_string())
            .switch("--follow", self.follow)
            .opt("--min-samples", self.min_samples.map(|n| n.to_string()))
            .opt("--wait-timeout", self.wait_timeout.map(|t| t.to_string()))
            .build()
    }
}

pub fn run(args: Args) -> Result<()> {
    let config = args.run.fit_config()?;
    let follow = args.follow_settings()?;
    if args.store.is_none() {
        args.privacy.privacy()?; // refuse bad privacy flags of the simulation before loading anything
    }
    let (dataset, train, val) = args.run.load_data()?;
    let names = dataset.names().to_vec();
    let yaml = match DeployMeta::read(&args.weights) {
        Ok(meta) => {
            if let Some(k) = meta.binarized_cut.filter(|&k| k != args.cut.index) {
                bail!("--weights {} binarizes at cut {k} (its Back reads those bits); --cut must be {k}", args.weights.display());
            }
            meta.model_yaml
        }
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

    let mut features = match &args.store {
        Some(dir) => match follow {
            Some((min, timeout)) => {
                let expect = StoreExpect::new(&front, config.imgsz, names.len())?;
                let follower = StoreFollower::new(dir.clone(), args.on_corruption).with_context(|| format!("--follow: the feature store {dir} (start `serve --store` first)"))?;
                let mut followed = FollowedStore::new(follower, expect, args.run.bad_data_policy());
                wait_for_samples(&mut followed, dir, min, timeout)?;
                Features::Followed(followed)
            }
            None => Features::Fixed(stored_features(dir, args.on_corruption, &front, config.imgsz, names.len(), args.run.bad_data_policy())?),
        },
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
            Features::Fixed(features)
        }
    };

    let val = EvalSet::load(&val.samples, &names, config.imgsz)?;
    let meta = DeployMeta { model_yaml: yaml, names, imgsz: config.imgsz, binarized_cut: Some(cut) };
    let trainee = Trainee { model: back, store, fixed: front_tensors, meta, binarization: None };
    let records = match &mut features {
        Features::Fixed(set) => fit::fit(&trainee, set, &val, &config, args.run.resume)?,
        Features::Followed(followed) => {
            let dir = args.store.as_ref().expect("--follow requires --store");
            let records = fit::fit_growing(&trainee, followed, &val, &config, args.run.resume).with_context(|| format!("feature store {dir}"))?;
            report_followed(followed, &records, dir)?;
            records
        }
    };
    print_summary(&records, &config.out);
    Ok(())
}

/// What `train` trains on: a fixed set, or a store that is still being filled (`--follow`).
enum Features {
    Fixed(FeatureSet),
    Followed(FollowedStore),
}

/// Reads `followed` until it holds `min` usable samples, saying every [`WAIT_REPORT`] how many it
/// holds; fails after `timeout`.
fn wait_for_samples(followed: &mut FollowedStore, dir: &StoreUrl, min: usize, timeout: Duration) -> Result<()> {
    let start = Instant::now();
    let mut reported: Option<Instant> = None;
    loop {
        followed.take_in().with_context(|| format!("feature store {dir}"))?;
        let held = followed.len();
        if held >= min {
            println!("{held} samples stored in {} (--min-samples {min}): training starts, taking in new samples before every epoch", dir);
            tracing::info!(samples = held, min_samples = min, waited_s = start.elapsed().as_secs_f64(), store = %dir, "enough samples stored: training starts");
            return Ok(());
        }
        let waited = start.elapsed();
        if waited >= timeout {
            bail!(
                "--follow: {held} usable samples stored in {} after {:.0} s, fewer than --min-samples {min} (--wait-timeout {:.0} s): are the edges uploading to this store?{}",
                dir,
                waited.as_secs_f64(),
                timeout.as_secs_f64(),
                skipped_note(followed)
            );
        }
        if reported.is_none_or(|t| t.elapsed() >= WAIT_REPORT) {
            println!("waiting for {min} samples in {}: {held} stored so far ({:.0} of {:.0} s)", dir, waited.as_secs_f64(), timeout.as_secs_f64());
            tracing::info!(samples = held, min_samples = min, waited_s = waited.as_secs_f64(), "waiting for samples");
            reported = Some(Instant::now());
        }
        std::thread::sleep(WAIT_POLL.min(timeout - waited));
    }
}

fn skipped_note(followed: &FollowedStore) -> String {
    match followed.skipped() {
        0 => String::new(),
        n => format!(" ({n} skipped as unusable, --skip-bad)"),
    }
}

/// After a `--follow` run: how many samples each epoch saw, and those stored after the last epoch started.
fn report_followed(followed: &mut FollowedStore, records: &[fit::EpochRecord], dir: &StoreUrl) -> Result<()> {
    let trained = followed.len();
    let late = followed.take_in().with_context(|| format!("feature store {dir}"))?;
    let per_epoch: Vec<String> = records.iter().map(|r| r.samples.map_or_else(|| "?".to_string(), |n| n.to_string())).collect();
    println!("samples per epoch: {}", per_epoch.join(", "));
    if late > 0 {
        println!("{late} usable samples were stored after the last epoch started (not trained on); {} in all", trained + late);
    }
    if followed.skipped() > 0 {
        println!("skipped {} of {} stored samples the trainer cannot use (--skip-bad; each is named in a warning)", followed.skipped(), followed.read());
    }
    Ok(())
}

/// Every usable sample of a feature store (see [`FeatureSet::from_store`]); with --skip-bad the
/// others are left out and counted.
fn stored_features(dir: &StoreUrl, on_corruption: OnCorruption, front: &Front, imgsz: u32, nc: usize, policy: BadDataPolicy) -> Result<FeatureSet> {
    let store = FeatureStore::open_url(dir, on_corruption)?;
    anyhow::ensure!(!store.is_empty(), "the feature store {} holds no samples", dir);
    let expect = StoreExpect::new(front, imgsz, nc)?;
    let (features, skipped) = FeatureSet::from_store(store.samples()?, &expect, policy).with_context(|| format!("feature store {dir}"))?;
    if skipped > 0 {
        println!("skipped {skipped} of {} stored samples the trainer cannot use (--skip-bad; each is named in a warning)", store.len());
    }
    anyhow::ensure!(!features.is_empty(), "the feature store {} holds no usable samples ({skipped} skipped)", dir);
    tracing::info!(samples = features.len(), skipped, store = %dir, "features read from the store");
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
            follow: false,
            min_samples: None,
            wait_timeout: None,
        };
        assert_eq!(reparse(&a).unwrap(), a);
        let b = Args { fresh_back: true, privacy: LdpArgs { mechanism: Mechanism::None, epsilon: None }, store: Some("store".parse().unwrap()), on_corruption: OnCorruption::Quarantine, ..a.clone() };
        assert_eq!(reparse(&b).unwrap(), b);
        let c = Args { follow: true, min_samples: Some(40), wait_timeout: Some(2.5), ..b.clone() };
        assert_eq!(reparse(&c).unwrap(), c);
        assert_eq!(c.follow_settings().unwrap(), Some((40, Duration::from_millis(2500))));
        assert_eq!(Args { min_samples: None, wait_timeout: None, ..c.clone() }.follow_settings().unwrap(), Some((a.run.step.batch.max(2), Duration::from_secs(600))));
        assert_eq!(b.follow_settings().unwrap(), None);
        for (bad, why) in [(Args { min_samples: Some(1), ..c.clone() }, "--min-samples must be at least 2"), (Args { wait_timeout: Some(-1.0), ..c.clone() }, "--wait-timeout must be")] {
            assert!(bad.follow_settings().unwrap_err().to_string().contains(why), "{why}");
        }
    }

    #[test]
    fn follow_needs_store_and_its_flags_need_follow() {
        let parse = |argv: &[&str]| {
            let command = <Args as clap::Args>::augment_args(clap::Command::new("train").no_binary_name(true));
            command.try_get_matches_from(argv).map(|_| ())
        };
        let base = ["--data", "d.yaml", "--weights", "w.safetensors", "--out", "o"];
        let with = |extra: &[&'static str]| [base.as_slice(), extra].concat();
        assert!(parse(&with(&["--store", "s", "--follow", "--min-samples", "4", "--wait-timeout", "30"])).is_ok());
        for bad in [&["--follow"][..], &["--store", "s", "--min-samples", "4"], &["--store", "s", "--wait-timeout", "3"]] {
            assert!(parse(&with(bad)).is_err(), "{bad:?} parsed");
        }
    }
}
