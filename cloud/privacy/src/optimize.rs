//! The optimization attack (He et al. 2019, as the MistNet paper runs it): gradient descent
//! (Adam) on an input image so that the differentiable Front's features explain the observed
//! ones, plus a total-variation prior and, for bits, a prior towards mid-grey.
//!
//! The image is `sigmoid(z)` (so it stays in 0..1), starting from grey (`z = 0`) or, in the
//! combined attack, from the decoder's reconstruction, which then also replaces mid-grey as the
//! anchor of the prior (a learned prior refined by the likelihood). Float features
//! are matched by mean squared error relative to the observed features' mean square (so one
//! prior weight fits every cut and set of weights). For bits, the binarization `x > 0` is replaced by its
//! surrogate `σ(k·x)` and the loss is the exact negative log-likelihood of the observed bits
//! under the mechanism: a bit is 1 with probability `q = p₀ + (p₁ − p₀)·σ(k·x)`, where `p₁`,
//! `p₀` are the probabilities that an input 1 / 0 comes out as 1 (the attacker knows ε); the
//! priors are weighted by 1/(p₁ − p₀)², as the likelihood's curvature shrinks with the noise.

use candle_core::{Tensor, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use indicatif::ProgressBar;
use mistnet::model::UnfoldedFront;

use super::PrivacyError;
use super::observe::Setting;

/// Optimization schedule and prior.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OptimizeConfig {
    pub steps: usize,
    pub lr: f64,
    /// Weight of the total-variation prior.
    pub tv_weight: f64,
    /// Weight of the prior pulling pixels towards mid-grey (or the starting reconstruction),
    /// `mean((image − anchor)²)`, for bits only: they fix only the signs of the features, float
    /// features pin the image down.
    pub grey_weight: f64,
    /// Slope `k` of the binarization surrogate `σ(k·x)`.
    pub sharpness: f64,
}

impl Default for OptimizeConfig {
    fn default() -> Self {
        Self { steps: 100, lr: 0.1, tv_weight: 0.15, grey_weight: 1.0, sharpness: 10.0 }
    }
}

/// Mean absolute difference between neighbouring pixels, horizontally plus vertically.
fn total_variation(x: &Tensor) -> candle_core::Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    let dx = (x.narrow(3, 1, w - 1)? - x.narrow(3, 0, w - 1)?)?.abs()?.mean_all()?;
    let dy = (x.narrow(2, 1, h - 1)? - x.narrow(2, 0, h - 1)?)?.abs()?.mean_all()?;
    dx + dy
}

/// How far the Front's features `f` are from the `observed` ones under `setting`; `scale` is
/// the observed features' mean square.
fn feature_loss(f: &Tensor, observed: &Tensor, setting: &Setting, sharpness: f64, scale: f64) -> candle_core::Result<Tensor> {
    match setting {
        Setting::Float => (f - observed)?.sqr()?.mean_all()? / scale,
        Setting::Bits(privacy) => {
            let (p1, p0) = (privacy.prob_one(true), privacy.prob_one(false));
            let soft = candle_nn::ops::sigmoid(&(f * sharpness)?)?;
            let q = soft.affine(p1 - p0, p0)?.clamp(1e-6, 1.0 - 1e-6)?;
            let nll = ((observed * q.log()?)? + (observed.affine(-1.0, 1.0)? * q.affine(-1.0, 1.0)?.log()?)?)?;
            nll.mean_all()?.neg()
        }
    }
}

/// Reconstructs `[N, 3, H, W]` images (0..1) whose features explain `observed`, starting from
/// grey or from `start` (`[N, 3, H, W]` in 0..1, e.g. the decoder's reconstructions).
pub fn invert(
    front: &UnfoldedFront,
    observed: &Tensor,
    setting: &Setting,
    image_dims: (usize, usize, usize, usize),
    start: Option<&Tensor>,
    cfg: &OptimizeConfig,
    progress: &ProgressBar,
) -> Result<Tensor, PrivacyError> {
    let z = match start {
        None => Var::zeros(image_dims, candle_core::DType::F32, observed.device())?,
        Some(s) => {
            // The logit of the start, clamped so that no pixel starts saturated.
            let s = s.clamp(0.02, 0.98)?;
            Var::from_tensor(&(s.log()? - s.affine(-1.0, 1.0)?.log()?)?)?
        }
    };
    let anchor = match start {
        None => Tensor::full(0.5f32, image_dims, observed.device())?,
        Some(s) => s.detach(),
    };
    let mut opt = AdamW::new(vec![z.clone()], ParamsAdamW { lr: cfg.lr, weight_decay: 0.0, ..Default::default() })?;
    let scale = f64::from(observed.sqr()?.mean_all()?.to_scalar::<f32>()?).max(1e-12);
    // Randomized response shrinks what each bit says about its feature: the likelihood's curvature
    // falls by (p₁ − p₀)², so the priors are weighted up by its inverse (1 without noise).
    let prior_scale = match setting {
        Setting::Float => 1.0,
        Setting::Bits(p) => 1.0 / (p.prob_one(true) - p.prob_one(false)).powi(2).max(1e-4),
    };
    for _ in 0..cfg.steps {
        let image = candle_nn::ops::sigmoid(z.as_tensor())?;
        let f = front.forward(&image)?;
        let mut prior = (total_variation(&image)? * cfg.tv_weight)?;
        if let Setting::Bits(_) = setting {
            prior = (prior + ((&image - &anchor)?.sqr()?.mean_all()? * cfg.grey_weight)?)?;
        }
        let loss = (feature_loss(&f, observed, setting, cfg.sharpness, scale)? + (prior * prior_scale)?)?;
        opt.backward_step(&loss)?;
        progress.inc(1);
    }
    Ok(candle_nn::ops::sigmoid(z.as_tensor())?.detach())
}
