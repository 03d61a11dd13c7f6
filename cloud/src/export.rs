//! `mistnet-cloud export`: the Front for edges and the full model for deployment, with a manifest.
//! [`export_front`] computes the Front and its [`FrontManifest`]: `export` writes them, and
//! `serve --weights` serves them without an export directory (one function, two callers).

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use candle_core::{Device, Tensor};
use mistnet::model::deploy::{DeployMeta, META_KEY, model_yaml, save_deployable, specs_for};
use mistnet::model::split::front_prefixes;
use mistnet::model::weights::{hash_tensors, save_tensors};
use mistnet::model::{Front, LayerKind, ModelConfig, ParamStore};
use mistnet_cli::image::parse_imgsz;
use mistnet_cli::{Argv, CutArgs, ToArgs};
use mistnet_train::fit::MODEL_FILE;

use mistnet_ingest::manifest::{ExportManifest, FileEntry, FrontManifest, MANIFEST_FILE};

/// The Front's file in the output directory (the model's is [`MODEL_FILE`]).
pub const FRONT_FILE: &str = "front.safetensors";

#[derive(clap::Args, Debug, Clone, PartialEq)]
#[command(after_help = "Writes into --out:\n  \
front.safetensors   layers 0..cut-1 (Ultralytics names, f32): what `mistnet-edge extract` and the edge agents load\n  \
model.safetensors   every layer, deployable (`mistnet-edge detect`, `mistnet-cloud val`)\n  \
manifest.json       everything `mistnet-cloud serve --front DIR` needs (model config, class names nc/names, imgsz, cut, \
stride, feature shape, the Front's SHA-256), whether the Back expects binarized features, the model's SHA-256\n\
The Front hash is the one edges put in every feature message (SHA-256 over names, shapes and f32 values; \
docs/wire-format.md).\n\n\
Example:\n  mistnet-cloud export --weights runs/pretrain/model.safetensors --cut 4 --out deploy/")]
pub struct Args {
    /// A deployable model (model.safetensors of `pretrain` or `train`).
    #[arg(long)]
    pub weights: PathBuf,
    // The Front's cut; a model from `train` has its own, which this must match.
    #[command(flatten)]
    pub cut: CutArgs,
    /// Letterbox size edges must use (a multiple of 32; default: the size the model was trained at).
    #[arg(long, value_parser = parse_imgsz)]
    pub imgsz: Option<u32>,
    /// Output directory (created if missing).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

impl ToArgs for Args {
    fn to_args(&self) -> Vec<OsString> {
        Argv::new()
            .arg("--weights", &self.weights)
            .group(&self.cut)
            .opt("--imgsz", self.imgsz.map(|px| px.to_string()))
            .arg("--out", &self.out)
            .build()
    }
}

/// The Front of a model and its manifest.
pub struct ExportedFront {
    pub manifest: FrontManifest,
    /// Exactly the tensors the Front loads (layers `0..cut-1`, f32): the ones its hash covers.
    pub tensors: BTreeMap<String, Tensor>,
}

/// Builds the Front of `model_yaml` with classes `names` at `cut` from `weights` and the manifest
/// ingest serves it with, edges letterboxing to `imgsz`.
pub fn export_front(model_yaml: &str, names: Vec<String>, imgsz: u32, cut: usize, weights: &[PathBuf]) -> Result<ExportedFront> {
    if imgsz == 0 || !imgsz.is_multiple_of(32) {
        bail!("imgsz must be a positive multiple of 32, got {imgsz}");
    }
    let specs = specs_for(model_yaml, names.len())?;
    let store = ParamStore::open(weights)?;
    let front = Front::load(&specs, cut, &store, &Device::Cpu)?;
    let prefixes = front_prefixes(cut);
    let tensors: BTreeMap<String, Tensor> = store.tensors().into_iter().filter(|(name, _)| prefixes.iter().any(|p| name.starts_with(p.as_str()))).collect();
    let (stride, side) = (front.out_stride(), imgsz as usize / front.out_stride());
    let manifest = FrontManifest {
        model_yaml: model_yaml.to_string(),
        nc: names.len(),
        names,
        imgsz,
        cut,
        stride,
        feature_shape: [1, front.out_channels(), side, side],
        front: FileEntry { file: FRONT_FILE.into(), sha256: front.hash().to_string(), tensors: tensors.len() },
    };
    manifest.check()?;
    Ok(ExportedFront { manifest, tensors })
}

/// The model config and class names of `weights`: a deployable model's own (its `mistnet`
/// metadata). Weights without that metadata (e.g. converted from Ultralytics) are read with the
/// config `model` (a YAML file or yolov5n/s/m/l/x) and have as many classes as their Detect head
/// outputs, named "0", "1", … as YOLOv5 names them by default.
pub fn model_and_classes(model: &str, weights: &[PathBuf]) -> Result<(String, Vec<String>)> {
    let headers = weights.iter().map(|p| Ok((p, read_header(p)?))).collect::<Result<Vec<_>>>()?;
    for (path, header) in &headers {
        if let Some(json) = header.get("__metadata__").and_then(|m| m.get(META_KEY)).and_then(|v| v.as_str()) {
            let meta: DeployMeta = serde_json::from_str(json).with_context(|| format!("{}: metadata `{META_KEY}` is malformed", path.display()))?;
            return Ok((meta.model_yaml, meta.names));
        }
    }
    let yaml = model_yaml(model)?;
    let specs = ModelConfig::from_yaml(&yaml)?.layers()?;
    let Some(LayerKind::Detect { anchors, .. }) = specs.last().map(|s| &s.kind) else { bail!("model {model} has no Detect layer") };
    let name = format!("model.{}.m.0.weight", specs.len() - 1);
    let Some(rows) = headers.iter().find_map(|(_, h)| h.get(&name)?.get("shape")?.get(0)?.as_u64()) else {
        bail!(
            "{} hold neither class names (the `{META_KEY}` metadata of a deployable model) nor the Detect head ({name}): \
             the model's classes are unknown. Serve the output directory of `mistnet-cloud export` with --front, or give the whole model",
            weights.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
        )
    };
    let na = anchors[0].len() as u64;
    ensure!(rows % na == 0 && rows / na > 5, "{name} has {rows} rows: not {na} anchors × (nc + 5) for any nc ≥ 1");
    Ok((yaml, (0..rows / na - 5).map(|c| c.to_string()).collect()))
}

/// The JSON header of a safetensors file (tensor names, dtypes, shapes, `__metadata__`).
fn read_header(path: &Path) -> Result<serde_json::Map<String, serde_json::Value>> {
    use std::io::Read;
    let mut file = std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut len = [0u8; 8];
    file.read_exact(&mut len).with_context(|| format!("{} is not a safetensors file", path.display()))?;
    let len = u64::from_le_bytes(len);
    ensure!(len <= 100 << 20, "{} is not a safetensors file (header of {len} bytes)", path.display());
    let mut header = vec![0u8; len as usize];
    file.read_exact(&mut header).with_context(|| format!("{} is not a safetensors file", path.display()))?;
    serde_json::from_slice(&header).with_context(|| format!("{} is not a safetensors file", path.display()))
}

pub fn run(args: Args) -> Result<()> {
    let meta = DeployMeta::read(&args.weights)?;
    if let Some(cut) = meta.binarized_cut.filter(|&c| c != args.cut.index) {
        bail!("{} is a MistNet model trained at cut {cut}; --cut must be {cut}", args.weights.display());
    }
    let front = export_front(&meta.model_yaml, meta.names.clone(), args.imgsz.unwrap_or(meta.imgsz), args.cut.index, std::slice::from_ref(&args.weights))?;
    // Handing out every tensor checks the file against the config.
    mistnet::model::deploy::Detector::load(&args.weights, &Device::Cpu)?;
    let all: BTreeMap<String, Tensor> = candle_core::safetensors::load(&args.weights, &Device::Cpu)?.into_iter().collect();
    std::fs::create_dir_all(&args.out).with_context(|| format!("cannot create {}", args.out.display()))?;
    save_tensors(&front.tensors, &args.out.join(FRONT_FILE))?;
    save_deployable(&all, &meta, &args.out.join(MODEL_FILE))?;
    let manifest = ExportManifest {
        ingest: front.manifest,
        binarized_cut: meta.binarized_cut,
        model: FileEntry { file: MODEL_FILE.into(), sha256: hash_tensors(all.iter())?.to_string(), tensors: all.len() },
    };
    let path = args.out.join(MANIFEST_FILE);
    std::fs::write(&path, serde_json::to_string_pretty(&manifest)? + "\n").with_context(|| format!("cannot write {}", path.display()))?;
    let front = &manifest.ingest.front;
    println!("front  {} ({} tensors, sha256 {})", args.out.join(FRONT_FILE).display(), front.tensors, front.sha256);
    println!("model  {} ({} tensors, sha256 {})", args.out.join(MODEL_FILE).display(), manifest.model.tensors, manifest.model.sha256);
    println!("manifest {}", path.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn export_flags_parse_back() {
        let a = Args { weights: "m.safetensors".into(), cut: CutArgs { index: 2 }, imgsz: None, out: "deploy".into() };
        assert_eq!(mistnet_cli::argv::reparse(&a).unwrap(), a);
        let b = Args { imgsz: Some(320), ..a };
        assert_eq!(mistnet_cli::argv::reparse(&b).unwrap(), b);
    }
}
