//! `mistnet-cloud pretrain`: trains the whole YOLOv5 on cloud-side images, every module
//! trainable, with image augmentation. This is also the centralized ("no split") baseline.

use std::ffi::OsString;
use std::path::PathBuf;

use anyhow::{Context, Result};
use mistnet::model::batch_norm::BatchNormConfig;
use mistnet::model::deploy::{DeployMeta, specs_for};
use mistnet_cli::{Argv, ModelArgs, ToArgs};
use mistnet::model::{ParamStore, Yolo};
use mistnet_train::fit::images::ImageSet;
use mistnet_train::fit::{self, EvalSet, Trainee, checkpoint_path, initialize_detect_biases};

use crate::run_flags::RunFlags;

#[derive(clap::Args, Debug, Clone, PartialEq)]
#[command(after_help = "Writes into --out: model.safetensors (deployable whole model; `export` cuts a Front from it), \
checkpoint.safetensors (for --resume), results.csv, loss.png, map.png.\n\
Augmentation (unless --no-augment): HSV, horizontal flip, random scale and translation (no mosaic).\n\n\
Example:\n  mistnet-cloud pretrain --data data/synth/public.yaml --model yolov5n --imgsz 128 --epochs 50 --out runs/pretrain")]
pub struct Args {
    #[command(flatten)]
    pub run: RunFlags,
    // The model config; its nc is set from the dataset.
    #[command(flatten)]
    pub model: ModelArgs,
    /// Start from these weights (Ultralytics names, safetensors) instead of random initialisation.
    #[arg(long)]
    pub weights: Option<PathBuf>,
}

impl ToArgs for Args {
    fn to_args(&self) -> Vec<OsString> {
        Argv::new().group(&self.run).group(&self.model).opt("--weights", self.weights.as_ref()).build()
    }
}

pub fn run(args: Args) -> Result<()> {
    let config = args.run.fit_config()?;
    let (dataset, train, val) = args.run.load_data()?;
    let names = dataset.names().to_vec();
    let yaml = args.model.yaml()?;
    let specs = specs_for(&yaml, names.len())?;
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
    let meta = DeployMeta { model_yaml: yaml, names, imgsz: config.imgsz, binarized_cut: None };
    let trainee = Trainee { model, store, fixed: Default::default(), meta };
    let records = fit::fit(&trainee, &images, &val, &config, args.run.resume)?;
    crate::train_cmd::print_summary(&records, &config.out);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use mistnet_cli::argv::reparse;

    #[test]
    fn pretrain_flags_parse_back() {
        let run = reparse(&crate::run_flags::tests::example()).unwrap();
        for weights in [None, Some("w.safetensors".into())] {
            let a = Args { run: run.clone(), model: ModelArgs { name: "yolov5s".into() }, weights };
            assert_eq!(reparse(&a).unwrap(), a);
        }
    }
}
