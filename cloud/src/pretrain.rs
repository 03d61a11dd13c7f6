//! `mistnet-cloud pretrain`: trains the whole YOLOv5 on cloud-side images, every module
//! trainable, with image augmentation. This is also the centralized ("no split") baseline. With
//! `--binarize-cut K` it trains binarization-aware ([`mistnet_train::fit::aware`]): the Back reads
//! the Front's output as the edges send it.

use std::ffi::OsString;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use mistnet::codec::{EPSILON_HELP, MECHANISM_HELP, Privacy};
use mistnet::model::batch_norm::BatchNormConfig;
use mistnet::model::deploy::{DeployMeta, specs_for};
use mistnet_cli::{Argv, LdpArgs, ModelArgs, ToArgs};
use mistnet::model::{ParamStore, Yolo};
use mistnet_train::fit::images::ImageSet;
use mistnet_train::fit::{self, Binarization, EvalSet, Trainee, checkpoint_path, initialize_detect_biases};

use crate::run_flags::RunFlags;

/// What `--mechanism` and `--epsilon` mean here (before the help they have everywhere).
const MECHANISM_USE: &str = "With --binarize-cut: the randomized response applied to the binarized features in training (default none: bits only).";
const EPSILON_USE: &str = "With --binarize-cut and a --mechanism other than none: its privacy parameter ε, 0 < ε <= 64.";

#[derive(clap::Args, Debug, Clone, PartialEq)]
#[command(mut_arg("mechanism", |a| a.default_value("none").help(MECHANISM_USE).long_help(format!("{MECHANISM_USE}\n{MECHANISM_HELP}"))))]
#[command(mut_arg("epsilon", |a| a.help(EPSILON_USE).long_help(format!("{EPSILON_USE}\n{EPSILON_HELP}"))))]
#[command(after_help = "Writes into --out: model.safetensors (deployable whole model; `export` cuts a Front from it), \
checkpoint.safetensors (for --resume), results.csv, loss.png, map.png.\n\
Augmentation (unless --no-augment): mosaic (--mosaic P, the last --close-mosaic epochs without), HSV, horizontal flip, \
random scale and translation.\n\n\
Binarization-aware pretraining (--binarize-cut K): the output of module K-1 is binarized as an edge does (x > 0 → 1, \
then --mechanism at --epsilon; default none: bits without noise) before the Back reads it; the gradient reaches the \
Front straight through (unchanged where |x| <= 1, zero beyond). The model still holds every layer, trained; its metadata \
says binarized_cut K, so `val` and `mistnet-edge detect` run Front → binarize → Back, `export` takes only --cut K, and \
`train` starts its Back from a Back that already reads bits. Without it the whole model trains on float features.\n\n\
Examples:\n  mistnet-cloud pretrain --data data/synth/public.yaml --model yolov5n --imgsz 128 --epochs 50 --out runs/pretrain\n  \
mistnet-cloud pretrain --data data/synth/public.yaml --imgsz 128 --epochs 50 --binarize-cut 4 --mechanism sue --epsilon 4 --out runs/pretrain-aware")]
pub struct Args {
    #[command(flatten)]
    pub run: RunFlags,
    // The model config; its nc is set from the dataset.
    #[command(flatten)]
    pub model: ModelArgs,
    /// Start from these weights (Ultralytics names, safetensors) instead of random initialisation.
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// Train binarization-aware at this cut: the Back reads the binarized (and --mechanism-randomized) output of
    /// module K-1, as from an edge; see below.
    #[arg(long, value_name = "K")]
    pub binarize_cut: Option<usize>,
    // The noise of binarization-aware training (default none).
    #[command(flatten)]
    pub privacy: LdpArgs,
}

impl Args {
    /// The binarization of `--binarize-cut` over `specs`, `None` without it; noise flags without it are refused.
    fn binarization(&self, specs: &[mistnet::model::LayerSpec]) -> Result<Option<Binarization>> {
        let privacy = self.privacy.privacy()?;
        match self.binarize_cut {
            Some(cut) => Ok(Some(Binarization::new(specs, cut, privacy).with_context(|| format!("--binarize-cut {cut}"))?)),
            None if privacy != Privacy::none() => bail!("--mechanism {} randomizes binarized features: it needs --binarize-cut", self.privacy.mechanism),
            None => Ok(None),
        }
    }
}

impl ToArgs for Args {
    fn to_args(&self) -> Vec<OsString> {
        Argv::new()
            .group(&self.run)
            .group(&self.model)
            .opt("--weights", self.weights.as_ref())
            .opt("--binarize-cut", self.binarize_cut.map(|k| k.to_string()))
            .group(&self.privacy)
            .build()
    }
}

pub fn run(args: Args) -> Result<()> {
    let config = args.run.fit_config()?;
    let (dataset, train, val) = args.run.load_data()?;
    let names = dataset.names().to_vec();
    let yaml = args.model.yaml()?;
    let specs = specs_for(&yaml, names.len())?;
    let binarization = args.binarization(&specs)?;
    let checkpoint = checkpoint_path(&config.out);
    let store = match (&args.weights, args.run.resume) {
        (_, true) => ParamStore::open(&[&checkpoint]).with_context(|| format!("--resume needs {}", checkpoint.display()))?,
        (Some(w), false) => ParamStore::open(&[w])?,
        (None, false) => ParamStore::fresh(config.seed),
    };
    let model = Yolo::load(store.var_builder(&config.device), &specs, 0, BatchNormConfig::default())?;
    if args.weights.is_none() && !args.run.resume {
        initialize_detect_biases(&store, &model)?;
    }
    let images = ImageSet::load(&train.samples, config.imgsz)?;
    let val = EvalSet::load(&val.samples, &names, config.imgsz)?;
    let meta = DeployMeta { model_yaml: yaml, names, imgsz: config.imgsz, binarized_cut: binarization.map(|b| b.cut()) };
    if let Some(b) = binarization {
        tracing::info!(cut = b.cut(), mechanism = b.privacy().mechanism().name(), epsilon = ?b.privacy().epsilon(), "binarization-aware pretraining");
    }
    let trainee = Trainee { model, store, fixed: Default::default(), meta, binarization };
    let records = fit::fit(&trainee, &images, &val, &config, args.run.resume)?;
    crate::train_cmd::print_summary(&records, &config.out);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use mistnet_cli::argv::reparse;

    use mistnet::codec::Mechanism;

    #[test]
    fn pretrain_flags_parse_back() {
        let run = reparse(&crate::run_flags::tests::example()).unwrap();
        let none = LdpArgs { mechanism: Mechanism::None, epsilon: None };
        for (weights, binarize_cut, privacy) in [(None, None, none), (Some("w.safetensors".into()), Some(4), LdpArgs { mechanism: Mechanism::Rr, epsilon: Some(2.0) })] {
            let a = Args { run: run.clone(), model: ModelArgs { name: "yolov5s".into() }, weights, binarize_cut, privacy };
            assert_eq!(reparse(&a).unwrap(), a);
        }
    }

    #[test]
    fn noise_needs_binarization_and_the_cut_must_be_valid() {
        let parse = |argv: &[&str]| {
            let command = <Args as clap::Args>::augment_args(clap::Command::new("pretrain").no_binary_name(true));
            <Args as clap::FromArgMatches>::from_arg_matches(&command.try_get_matches_from([&["--data", "d.yaml", "--out", "o"], argv].concat()).unwrap()).unwrap()
        };
        let specs = specs_for(&mistnet::model::deploy::model_yaml("yolov5n").unwrap(), 2).unwrap();
        assert_eq!(parse(&[]).privacy.mechanism, Mechanism::None, "binarization without noise by default");
        assert_eq!(parse(&[]).binarization(&specs).unwrap(), None);
        let aware = parse(&["--binarize-cut", "4", "--mechanism", "sue", "--epsilon", "4"]).binarization(&specs).unwrap().unwrap();
        assert_eq!((aware.cut(), aware.privacy()), (4, Privacy::new(Mechanism::Sue, Some(4.0)).unwrap()));
        let err = parse(&["--mechanism", "sue", "--epsilon", "4"]).binarization(&specs).unwrap_err().to_string();
        assert!(err.contains("needs --binarize-cut"), "{err}");
        let err = format!("{:#}", parse(&["--binarize-cut", "9"]).binarization(&specs).unwrap_err());
        assert!(err.contains("--binarize-cut 9") && err.contains("valid cuts"), "{err}");
        assert!(parse(&["--binarize-cut", "4", "--mechanism", "rr"]).binarization(&specs).unwrap_err().to_string().contains("needs --epsilon"));
    }
}
