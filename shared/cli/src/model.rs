//! The model flags: `--model` (one default for every command), `--cut`, and the Front's
//! model + weights + cut together.

use std::path::PathBuf;

use anyhow::Result;
use candle_core::Device;
use mistnet::model::{DEFAULT_CUT, Front, ModelConfig, ParamStore};

use crate::argv::{Argv, ToArgs};

/// The model config every command defaults to.
pub const DEFAULT_MODEL: &str = "yolov5n";

#[derive(clap::Args, Debug, Clone, PartialEq)]
pub struct ModelArgs {
    /// Model config: one of yolov5n/s/m/l/x, or a YAML file in the Ultralytics format.
    #[arg(id = "model", long = "model", value_name = "NAME|YAML", default_value = DEFAULT_MODEL)]
    pub name: String,
}

impl ModelArgs {
    /// The parsed config.
    pub fn config(&self) -> Result<ModelConfig> {
        Ok(ModelConfig::load(&self.name)?)
    }

    /// The config's YAML text (a file's contents, or the embedded config of that name).
    pub fn yaml(&self) -> Result<String> {
        Ok(mistnet::model::deploy::model_yaml(&self.name)?)
    }
}

impl ToArgs for ModelArgs {
    fn to_args(&self) -> Vec<std::ffi::OsString> {
        Argv::new().arg("--model", &self.name).build()
    }
}

#[derive(clap::Args, Debug, Clone, PartialEq)]
pub struct CutArgs {
    /// Split point in Plato's convention: the edge runs modules 0..cut-1 and sends module cut-1's output
    /// (`mistnet-cloud cuts` lists a model's valid cuts).
    #[arg(id = "cut", long = "cut", value_name = "K", default_value_t = DEFAULT_CUT)]
    pub index: usize,
}

impl ToArgs for CutArgs {
    fn to_args(&self) -> Vec<std::ffi::OsString> {
        Argv::new().arg("--cut", self.index.to_string()).build()
    }
}

/// The Front: a model config, the weights holding at least its tensors, and the cut.
#[derive(clap::Args, Debug, Clone, PartialEq)]
pub struct FrontArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Weights in safetensors with Ultralytics key names; repeat for checkpoints split over several files.
    /// A file holding only the Front's tensors (`model.0.` … `model.{cut-1}.`) is enough.
    #[arg(long, required = true)]
    pub weights: Vec<PathBuf>,
    #[command(flatten)]
    pub cut: CutArgs,
}

impl FrontArgs {
    /// Loads the Front (checking the cut against the config and the weights against the layers).
    pub fn load(&self, device: &Device) -> Result<Front> {
        let specs = self.model.config()?.layers()?;
        let store = ParamStore::open(&self.weights)?;
        Ok(Front::load(&specs, self.cut.index, &store, device)?)
    }
}

impl ToArgs for FrontArgs {
    fn to_args(&self) -> Vec<std::ffi::OsString> {
        Argv::new().group(&self.model).each("--weights", &self.weights).group(&self.cut).build()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::argv::reparse;

    #[test]
    fn the_model_flags_parse_back_to_themselves() {
        let front = FrontArgs {
            model: ModelArgs { name: "models/my model.yaml".into() },
            weights: vec!["a.safetensors".into(), "b c.safetensors".into()],
            cut: CutArgs { index: 2 },
        };
        assert_eq!(reparse(&front).unwrap(), front);
        let m = ModelArgs { name: "yolov5s".into() };
        assert_eq!(reparse(&m).unwrap(), m);
    }

    #[test]
    fn defaults_are_yolov5n_at_the_default_cut() {
        let cmd = <FrontArgs as clap::Args>::augment_args(clap::Command::new("t").no_binary_name(true));
        let m = cmd.try_get_matches_from(["--weights", "w.safetensors"]).unwrap();
        let front = <FrontArgs as clap::FromArgMatches>::from_arg_matches(&m).unwrap();
        assert_eq!((front.model.name.as_str(), front.cut.index), ("yolov5n", DEFAULT_CUT));
    }
}
