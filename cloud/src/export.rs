//! `mistnet-cloud export`: the Front for edges and the full model for deployment, with a manifest.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::PathBuf;

use anyhow::{Context, Result};
use candle_core::Device;
use mistnet::model::deploy::{DeployMeta, save_deployable};
use mistnet::model::split::front_prefixes;
use mistnet::model::weights::{hash_tensors, save_tensors};
use mistnet::model::{Front, ParamStore, check_cut};
use mistnet_cli::{Argv, CutArgs, ToArgs};
use mistnet_train::fit::MODEL_FILE;
use serde::Serialize;

/// The Front's file in the output directory (the model's is [`MODEL_FILE`]).
pub const FRONT_FILE: &str = "front.safetensors";

#[derive(clap::Args, Debug, Clone, PartialEq)]
#[command(after_help = "Writes into --out:\n  \
front.safetensors   layers 0..cut-1 (Ultralytics names): what `mistnet-edge extract` and the edge agents load\n  \
model.safetensors   every layer, deployable (`mistnet-edge detect`, `mistnet-cloud val`)\n  \
manifest.json       model config, class names, imgsz, cut, whether the Back expects binarized features, SHA-256 hashes\n\
The Front hash is the one edges put in every feature message (SHA-256 over names, shapes and f32 values).\n\n\
Example:\n  mistnet-cloud export --weights runs/pretrain/model.safetensors --cut 4 --out deploy/")]
pub struct Args {
    /// A deployable model (model.safetensors of `pretrain` or `train`).
    #[arg(long)]
    pub weights: PathBuf,
    // The Front's cut; a model from `train` has its own, which this must match.
    #[command(flatten)]
    pub cut: CutArgs,
    /// Output directory (created if missing).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

impl ToArgs for Args {
    fn to_args(&self) -> Vec<OsString> {
        Argv::new().arg("--weights", &self.weights).group(&self.cut).arg("--out", &self.out).build()
    }
}

/// What `manifest.json` holds.
#[derive(Serialize)]
struct Manifest {
    model_yaml: String,
    names: Vec<String>,
    imgsz: u32,
    cut: usize,
    /// Whether the Back was trained on binarized Front features (MistNet) rather than on images.
    binarized_cut: Option<usize>,
    front: FileEntry,
    model: FileEntry,
}

#[derive(Serialize)]
struct FileEntry {
    file: String,
    /// SHA-256 of the file's tensors (names, shapes, f32 values), hex.
    sha256: String,
    tensors: usize,
}

pub fn run(args: Args) -> Result<()> {
    let meta = DeployMeta::read(&args.weights)?;
    let specs = meta.specs()?;
    check_cut(&specs, args.cut.index)?;
    if let Some(cut) = meta.binarized_cut.filter(|&c| c != args.cut.index) {
        anyhow::bail!("{} is a MistNet model trained at cut {cut}; --cut must be {cut}", args.weights.display());
    }
    let store = ParamStore::open(&[&args.weights])?;
    let front = Front::load(&specs, args.cut.index, &store, &Device::Cpu)?;
    // Handing out every tensor checks the file against the config.
    mistnet::model::deploy::Detector::load(&args.weights, &Device::Cpu)?;
    let all: BTreeMap<String, candle_core::Tensor> = candle_core::safetensors::load(&args.weights, &Device::Cpu)?.into_iter().collect();
    let prefixes = front_prefixes(args.cut.index);
    let front_tensors: BTreeMap<_, _> = all.iter().filter(|(k, _)| prefixes.iter().any(|p| k.starts_with(p.as_str()))).map(|(k, v)| (k.clone(), v.clone())).collect();
    std::fs::create_dir_all(&args.out).with_context(|| format!("cannot create {}", args.out.display()))?;
    save_tensors(&front_tensors, &args.out.join(FRONT_FILE))?;
    save_deployable(&all, &meta, &args.out.join(MODEL_FILE))?;
    let manifest = Manifest {
        model_yaml: meta.model_yaml.clone(),
        names: meta.names.clone(),
        imgsz: meta.imgsz,
        cut: args.cut.index,
        binarized_cut: meta.binarized_cut,
        front: FileEntry { file: FRONT_FILE.into(), sha256: front.hash().to_string(), tensors: front_tensors.len() },
        model: FileEntry { file: MODEL_FILE.into(), sha256: hash_tensors(all.iter())?.to_string(), tensors: all.len() },
    };
    let path = args.out.join("manifest.json");
    std::fs::write(&path, serde_json::to_string_pretty(&manifest)? + "\n").with_context(|| format!("cannot write {}", path.display()))?;
    println!("front  {} ({} tensors, sha256 {})", args.out.join(FRONT_FILE).display(), manifest.front.tensors, manifest.front.sha256);
    println!("model  {} ({} tensors, sha256 {})", args.out.join(MODEL_FILE).display(), manifest.model.tensors, manifest.model.sha256);
    println!("manifest {}", path.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn export_flags_parse_back() {
        let a = Args { weights: "m.safetensors".into(), cut: CutArgs { index: 2 }, out: "deploy".into() };
        assert_eq!(mistnet_cli::argv::reparse(&a).unwrap(), a);
    }
}
