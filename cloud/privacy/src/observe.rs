//! What the attacker observes: the Front of each cut (the edge's folded one and the attacker's
//! differentiable copy of the same weights) and, per [`Setting`], the features of an image as
//! the cloud receives them — through the edge pipeline's codec step ([`EdgeEncoder`]: binarize,
//! randomized response, wire bytes), one message per image as edges send them, then decoded.

use std::path::PathBuf;

use candle_core::{Device, Tensor};
use mistnet::codec::{self, CodecRng, DecodeLimits, Mechanism, Privacy};
use mistnet::encoder::{EdgeEncoder, WireSettings};
use mistnet::model::{Front, LayerSpec, ParamStore, UnfoldedFront};

use super::PrivacyError;

/// What crosses the network in one evaluated setting.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Setting {
    /// The Front's float output, unprotected: the reference of what the features reveal.
    Float,
    /// Binarized features under a mechanism (`none`: 1-bit without noise).
    Bits(Privacy),
}

impl Setting {
    /// The sweep: float, 1-bit without noise, then `mechanism` at each ε.
    pub fn sweep(mechanism: Mechanism, epsilons: &[f64]) -> Result<Vec<Setting>, PrivacyError> {
        if mechanism == Mechanism::None && !epsilons.is_empty() {
            return Err(PrivacyError::Config("mechanism none takes no ε: give --epsilons '' or another mechanism".into()));
        }
        let mut out = vec![Setting::Float, Setting::Bits(Privacy::none())];
        for &e in epsilons {
            out.push(Setting::Bits(Privacy::new(mechanism, Some(e))?));
        }
        Ok(out)
    }

    /// `float`, `1bit`, or `<mechanism>-eps<ε>` (e.g. `sue-eps0.5`).
    pub fn name(&self) -> String {
        match self {
            Setting::Float => "float".into(),
            Setting::Bits(p) => match p.epsilon() {
                None => "1bit".into(),
                Some(e) => format!("{}-eps{e}", p.mechanism()),
            },
        }
    }

    /// The mechanism's name; `none` for float and noiseless 1-bit features.
    pub fn mechanism(&self) -> Mechanism {
        match self {
            Setting::Float => Mechanism::None,
            Setting::Bits(p) => p.mechanism(),
        }
    }

    pub fn epsilon(&self) -> Option<f64> {
        match self {
            Setting::Float => None,
            Setting::Bits(p) => p.epsilon(),
        }
    }

    /// `float` or `1bit`: what the features are before noise.
    pub fn features(&self) -> &'static str {
        match self {
            Setting::Float => "float",
            Setting::Bits(_) => "1bit",
        }
    }
}

/// Where the Front's weights come from.
#[derive(Debug, Clone, PartialEq)]
pub enum Weights {
    /// Safetensors files holding (at least) the Front's tensors.
    Files(Vec<PathBuf>),
    /// Random initialisation drawn from this seed: NOT what MistNet deploys (it uses a pretrained Front).
    RandomInit(u64),
}

impl std::fmt::Display for Weights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Weights::Files(paths) => {
                let names: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
                f.write_str(&names.join(", "))
            }
            Weights::RandomInit(seed) => write!(f, "random-init Front (seed {seed}), not pretrained"),
        }
    }
}

/// The Front of one cut, as the edge runs it and as the attacker differentiates it.
pub struct CutModel {
    pub cut: usize,
    pub edge: Front,
    pub attacker: UnfoldedFront,
}

/// Loads the Fronts of `cuts` from one store, so every cut shares the same weights.
pub fn load_fronts(specs: &[LayerSpec], cuts: &[usize], weights: &Weights, device: &Device) -> Result<Vec<CutModel>, PrivacyError> {
    let store = match weights {
        Weights::Files(paths) => ParamStore::open(paths)?,
        Weights::RandomInit(seed) => ParamStore::fresh(*seed),
    };
    let attackers = cuts
        .iter()
        .map(|&cut| UnfoldedFront::load(specs, cut, &store, device))
        .collect::<Result<Vec<_>, _>>()?;
    cuts.iter()
        .zip(attackers)
        .map(|(&cut, attacker)| {
            Ok(CutModel { cut, edge: Front::load(specs, cut, &store, device)?, attacker })
        })
        .collect()
}

impl CutModel {
    /// The features the cloud holds for `images` (`[N, 3, H, W]`, letterboxed as edges do) under
    /// `setting`, as a `[N, C, h, w]` f32 tensor (0/1 for bits). Noise is drawn from `rng`.
    pub fn observe(&self, images: &Tensor, setting: &Setting, rng: &mut CodecRng) -> Result<Tensor, PrivacyError> {
        let features = self.edge.forward(images)?;
        match setting {
            Setting::Float => Ok(features),
            Setting::Bits(privacy) => {
                let imgsz = u32::try_from(images.dim(2)?).map_err(|_| PrivacyError::Config("image too large".into()))?;
                through_codec(&EdgeEncoder::new(self.edge.clone(), imgsz, WireSettings::packed(*privacy))?, &features, rng)
            }
        }
    }
}

/// What the cloud decodes from the Front's float `features` (`[N, C, h, w]`) when `encoder`
/// sends them: one wire message per image as edges send them (noise from `rng`), then decoded
/// to 0/1 as f32, on the features' device.
pub fn through_codec(encoder: &EdgeEncoder, features: &Tensor, rng: &mut CodecRng) -> Result<Tensor, PrivacyError> {
    let (n, c, h, w) = features.dims4()?;
    let mut received = Vec::with_capacity(n * c * h * w);
    for i in 0..n {
        let message = encoder.encode_features(&features.get(i)?.unsqueeze(0)?, rng)?;
        received.extend(codec::decode(&message, &DecodeLimits::default())?.bits.to_f32());
    }
    Ok(Tensor::from_vec(received, (n, c, h, w), features.device())?)
}
