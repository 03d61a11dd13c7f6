//! The sweep: for every cut and [`Setting`], encode the auxiliary and held-out images as edges
//! do, run each attack, and score its reconstructions of the held-out images (SSIM, PSNR and
//! re-identification).

use std::path::PathBuf;

use candle_core::{Device, Tensor};
use image::RgbImage;
use indicatif::ProgressBar;
use mistnet::codec::{Mechanism, seeded_rng};
use mistnet::metrics::{ImageF32, SsimConfig, psnr, ssim};
use mistnet::model::ModelConfig;
use rand::Rng;

use super::decoder::{self, DecoderConfig};
use super::images::{self, ImageSet};
use super::init::stream;
use super::observe::{CutModel, Setting, Weights, load_fronts};
use super::optimize::{self, OptimizeConfig};
use super::reid;
use super::report::{Report, Row};
use super::utility::{Utility, UtilityConfig};
use super::verdict::Criteria;
use super::{Attack, PrivacyError};

/// What to evaluate.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalConfig {
    /// A model config name (yolov5n/s/m/l/x) or YAML file.
    pub model: String,
    pub weights: Weights,
    pub cuts: Vec<usize>,
    pub mechanism: Mechanism,
    pub epsilons: Vec<f64>,
    pub attacks: Vec<Attack>,
    pub imgsz: u32,
    /// Held-out images; `None`: the embedded photos.
    pub images: Option<PathBuf>,
    /// Private-domain synthetic images added to the held-out set.
    pub synthetic: usize,
    /// Auxiliary images the decoder trains on.
    pub aux_images: usize,
    /// A directory of photos whose random crops join the embedded auxiliary photos'.
    pub aux_photos: Option<PathBuf>,
    pub decoder: DecoderConfig,
    pub optimize: OptimizeConfig,
    /// Held-out images the optimization and combined attacks reconstruct (evenly spaced over the
    /// set; 0: all); every held-out image stays a candidate in re-identification.
    pub opt_images: usize,
    /// A trained model and labelled data: adds the mAP of each setting at the model's cut.
    pub utility: Option<UtilityConfig>,
    /// The thresholds of the verdicts.
    pub criteria: Criteria,
    pub seed: u64,
}

/// One scored (cut, setting, attack) with its reconstructions of held-out images.
pub struct Outcome {
    pub row: Row,
    /// The held-out images reconstructed (indices into the set), and their reconstructions.
    pub of: Vec<usize>,
    pub reconstructions: Vec<RgbImage>,
}

/// `m` indices spread evenly over `0..n` (all of them when `m` is 0 or at least `n`).
pub fn spread(n: usize, m: usize) -> Vec<usize> {
    if m == 0 || m >= n { (0..n).collect() } else { (0..m).map(|k| k * n / m).collect() }
}

/// Everything an evaluation produced.
pub struct Evaluation {
    pub report: Report,
    pub heldout: ImageSet,
    pub outcomes: Vec<Outcome>,
}

impl EvalConfig {
    /// Progress units of the whole sweep: one per training or optimization step (the decoder
    /// is trained once per (cut, setting) for both attacks that use it: from scratch for float
    /// and 1-bit features, fine-tuned from the previous setting's for each ε).
    pub fn total_steps(&self) -> u64 {
        let settings = 2 + self.epsilons.len();
        let decoder = if self.attacks.iter().any(|a| a.uses_decoder()) {
            2 * self.decoder.steps + self.epsilons.len() * self.decoder.finetune_steps
        } else {
            0
        };
        let optimize = self.attacks.iter().filter(|a| **a != Attack::Decoder).count() * self.optimize.steps * settings;
        (self.cuts.len() * (decoder + optimize)) as u64
    }
}

/// Runs the sweep on `device`, reporting progress on `progress`.
pub fn evaluate(cfg: &EvalConfig, device: &Device, progress: &ProgressBar) -> Result<Evaluation, PrivacyError> {
    if cfg.cuts.is_empty() || cfg.attacks.is_empty() {
        return Err(PrivacyError::Config("give at least one cut and one attack".into()));
    }
    if cfg.imgsz < 32 || !cfg.imgsz.is_multiple_of(32) {
        return Err(PrivacyError::Config(format!("--imgsz must be a multiple of 32 (the model's largest stride), got {}", cfg.imgsz)));
    }
    let specs = ModelConfig::load(&cfg.model)?.layers()?;
    let settings = Setting::sweep(cfg.mechanism, &cfg.epsilons)?;
    let fronts = load_fronts(&specs, &cfg.cuts, &cfg.weights, device)?;
    let utility = match &cfg.utility {
        Some(u) => Some(load_utility(u, &cfg.model, &fronts, device)?),
        None => None,
    };
    let heldout = images::heldout(cfg.images.as_deref(), cfg.synthetic, cfg.imgsz, cfg.seed)?;
    let aux = images::auxiliary(cfg.aux_images, cfg.aux_photos.as_deref(), cfg.imgsz, cfg.seed)?;
    let heldout_t = heldout.tensor(device)?;
    let aux_t = if aux.is_empty() { None } else { Some(aux.tensor(device)?) };
    if cfg.attacks.iter().any(|a| a.uses_decoder()) && aux_t.is_none() {
        return Err(PrivacyError::Config("the decoder and combined attacks need --aux-images > 0".into()));
    }
    let baseline_ssim = match &aux_t {
        Some(t) => Some(blind_guess_ssim(&t.mean_keepdim(0)?, &heldout)?),
        None => None,
    };

    // The utility evaluation: every bits setting once, over the val split.
    let utility_units = utility.as_ref().map_or(0, |u| (settings.len() - 1) * u.len());
    progress.set_length(cfg.total_steps() + utility_units as u64);
    // The held-out images each attack reconstructs: all for the decoder, a spread for the others.
    let everyone: Vec<usize> = (0..heldout.len()).collect();
    let subset = spread(heldout.len(), cfg.opt_images);
    let picked = Tensor::from_vec(subset.iter().map(|&i| i as u32).collect::<Vec<_>>(), subset.len(), device)?;
    let (_, c, h, w) = heldout_t.dims4()?;
    let dims = (subset.len(), c, h, w);
    let mut outcomes = Vec::new();
    for front in &fronts {
        // The last bits setting's decoder, which the next ε's fine-tunes.
        let mut previous: Option<decoder::InversionDecoder> = None;
        for setting in &settings {
            let name = setting.name();
            progress.set_message(format!("cut {} {name}", front.cut));
            let metrics = match (&utility, setting) {
                (Some(u), Setting::Bits(privacy)) if u.front().cut() == front.cut => {
                    Some(u.measure(*privacy, &mut noise_rng(cfg.seed, front.cut, &name, "utility"), progress)?)
                }
                _ => None,
            };
            let observed = front.observe(&heldout_t, setting, &mut noise_rng(cfg.seed, front.cut, &name, "heldout"))?;
            let decoded = if cfg.attacks.iter().any(|a| a.uses_decoder()) {
                let aux_t = aux_t.as_ref().expect("checked above");
                let mut rng = noise_rng(cfg.seed, front.cut, &name, "aux");
                let seed = stream(cfg.seed, &format!("decoder-{}-{name}", front.cut)).random();
                let observe = |images: &Tensor| front.observe(images, setting, &mut rng);
                let start = if setting.epsilon().is_some() { previous.as_ref() } else { None };
                let model = decoder::train(aux_t, observe, front.edge.out_stride(), &cfg.decoder, start, seed, progress)?;
                let out = model.forward(&observed)?;
                if let Setting::Bits(_) = setting {
                    previous = Some(model);
                }
                Some(out)
            } else {
                None
            };
            let observed_subset = observed.index_select(&picked, 0)?;
            for &attack in &cfg.attacks {
                let (of, recon) = match attack {
                    Attack::Decoder => (&everyone, decoded.clone().expect("trained above")),
                    Attack::Optimization => {
                        (&subset, optimize::invert(&front.attacker, &observed_subset, setting, dims, None, &cfg.optimize, progress)?)
                    }
                    Attack::Combined => {
                        let start = decoded.as_ref().expect("trained above").index_select(&picked, 0)?;
                        (&subset, optimize::invert(&front.attacker, &observed_subset, setting, dims, Some(&start), &cfg.optimize, progress)?)
                    }
                };
                let mut outcome = score(front, setting, attack, of, &recon, &heldout)?;
                outcome.row.set_utility(metrics.as_ref());
                outcomes.push(outcome);
            }
        }
    }
    progress.finish_with_message("done");
    let report = Report::new(cfg, &heldout.names, baseline_ssim, outcomes.iter().map(|o| o.row.clone()).collect());
    Ok(Evaluation { report, heldout, outcomes })
}

/// Loads the trained model of `cfg`; its Front must be the attacked one at its cut.
fn load_utility(cfg: &UtilityConfig, model: &str, fronts: &[CutModel], device: &Device) -> Result<Utility, PrivacyError> {
    let utility = Utility::load(cfg, device)?;
    let cut = utility.front().cut();
    let attacked = fronts.iter().find(|f| f.cut == cut).ok_or_else(|| {
        PrivacyError::Config(format!("--back {} was trained at cut {cut}: add {cut} to --cuts", cfg.back.display()))
    })?;
    if attacked.edge.hash() != utility.front().hash() {
        return Err(PrivacyError::Config(format!(
            "the attacked Front (--model {model}, --weights) is not the Front of --back {}: give the --model the Back was trained with and the same weights (--weights defaults to --back)",
            cfg.back.display()
        )));
    }
    Ok(utility)
}

fn noise_rng(seed: u64, cut: usize, setting: &str, purpose: &str) -> mistnet::codec::CodecRng {
    seeded_rng(stream(seed, &format!("noise-{cut}-{setting}-{purpose}")).random())
}

/// `[N, 3, H, W]` in 0..1 to 8-bit images.
pub fn to_images(t: &Tensor) -> Result<Vec<RgbImage>, PrivacyError> {
    let (n, _, h, w) = t.dims4()?;
    let bytes = (t.clamp(0.0, 1.0)? * 255.0)?.round()?.to_dtype(candle_core::DType::U8)?.to_device(&Device::Cpu)?;
    (0..n)
        .map(|i| {
            let planes = bytes.get(i)?.flatten_all()?.to_vec1::<u8>()?;
            Ok(RgbImage::from_fn(w as u32, h as u32, |x, y| {
                let p = y as usize * w + x as usize;
                image::Rgb([planes[p], planes[h * w + p], planes[2 * h * w + p]])
            }))
        })
        .collect()
}

/// SSIM (the scikit-image settings: Gaussian σ 1.5, population covariance, range 255,
/// mean over channels) and PSNR of each reconstruction against its original.
pub fn similarity(original: &RgbImage, recon: &RgbImage) -> Result<(f64, f64), PrivacyError> {
    let (a, b) = (ImageF32::from_rgb(original), ImageF32::from_rgb(recon));
    Ok((ssim(&a, &b, &SsimConfig::default())?, psnr(&a, &b, 255.0)?))
}

/// Mean SSIM of one fixed guess (the mean auxiliary image) against every held-out image: what
/// an attacker gets without looking at the features.
fn blind_guess_ssim(guess: &Tensor, heldout: &ImageSet) -> Result<f64, PrivacyError> {
    let guess = to_images(guess)?.remove(0);
    let mut total = 0.0;
    for original in &heldout.images {
        total += similarity(original, &guess)?.0;
    }
    Ok(total / heldout.len() as f64)
}

/// Scores the reconstructions `recon` of the held-out images `of`.
fn score(front: &CutModel, setting: &Setting, attack: Attack, of: &[usize], recon: &Tensor, heldout: &ImageSet) -> Result<Outcome, PrivacyError> {
    let reconstructions = to_images(recon)?;
    let (mut ssims, mut psnrs) = (Vec::new(), Vec::new());
    for (&i, r) in of.iter().zip(&reconstructions) {
        let (s, p) = similarity(&heldout.images[i], r)?;
        ssims.push(s);
        psnrs.push(p);
    }
    let reid = reid::reidentify(&heldout.images, of, &reconstructions);
    Ok(Outcome { row: Row::new(front.cut, setting, attack, &ssims, &psnrs, reid), of: of.to_vec(), reconstructions })
}
