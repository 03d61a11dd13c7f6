//! The learned inversion attack: an upsampling convolutional decoder from features back to
//! images, trained with AdamW (cosine learning-rate decay) on the attacker's auxiliary images
//! encoded exactly as edges encode them. Every step draws a batch, flips each image
//! horizontally with probability ½ and encodes it afresh (new randomized-response noise each
//! time), so the decoder never sees the same features twice. A decoder can start from another
//! one's weights (the sweep fine-tunes each ε's decoder from the previous bits setting's).
//!
//! Architecture: a 3×3 conv at the features' resolution, `blocks` residual blocks there (two 3×3
//! convs each), then per factor of 2 of the Front's stride a nearest ×2 upsampling and a 3×3
//! conv (channels halving down to 16), all SiLU, and a 3×3 conv to RGB through a sigmoid. The
//! width at the features' resolution grows with the stride, as their channels do.
//! Loss: mean squared error plus `ssim_weight`·(1 − SSIM), SSIM with the report's window
//! ([`ssim_loss`]), so the decoder is trained for the score it is judged by.

use candle_core::{DType, Device, Tensor};
use candle_nn::{AdamW, Optimizer, ParamsAdamW, VarBuilder, VarMap};
use indicatif::ProgressBar;
use mistnet::metrics::SsimConfig;
use mistnet::model::conv::ConvShape;
use mistnet::model::gemm_conv;
use mistnet::model::upsample::upsample_nearest;
use rand::Rng;

use super::PrivacyError;
use super::init::{stream, uniform_fan_in};

/// Decoder size and training schedule.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DecoderConfig {
    /// Channels at the features' resolution for a Front of stride 8 (cut 4), scaled with the
    /// stride (half at stride 4, a quarter at stride 2) so that every cut costs about the same;
    /// halved after each upsampling; at least 16.
    pub width: usize,
    /// Residual blocks at the features' resolution.
    pub blocks: usize,
    pub steps: usize,
    /// Steps of a decoder that starts from another's weights (a fine-tune).
    pub finetune_steps: usize,
    pub batch: usize,
    /// Peak learning rate (decayed to 5% of it by a cosine schedule).
    pub lr: f64,
    /// Weight of the (1 − SSIM) term of the loss, beside the mean squared error.
    pub ssim_weight: f64,
}

impl Default for DecoderConfig {
    fn default() -> Self {
        Self { width: 64, blocks: 2, steps: 200, finetune_steps: 60, batch: 8, lr: 2e-3, ssim_weight: 1.0 }
    }
}

/// A 3×3 convolution with bias, through the project's im2col + GEMM convolution (whose CPU
/// backward is much faster than candle's).
struct Conv3x3 {
    weight: Tensor,
    bias: Tensor,
    shape: ConvShape,
}

impl Conv3x3 {
    fn new(vb: VarBuilder, c1: usize, c2: usize) -> candle_core::Result<Self> {
        let shape = ConvShape::same(c1, c2, 3, 1);
        Ok(Self { weight: vb.get((c2, c1, 3, 3), "weight")?, bias: vb.get((1, c2, 1, 1), "bias")?, shape })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        gemm_conv::conv2d(x, &self.weight, self.shape)?.broadcast_add(&self.bias)
    }
}

/// `x + conv(silu(conv(x)))`, then SiLU.
struct Residual {
    a: Conv3x3,
    b: Conv3x3,
}

impl Residual {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        (x + self.b.forward(&self.a.forward(x)?.silu()?)?)?.silu()
    }
}

/// A trained inversion decoder.
pub struct InversionDecoder {
    stem: Conv3x3,
    blocks: Vec<Residual>,
    ups: Vec<Conv3x3>,
    head: Conv3x3,
    /// Standardisation of the input features, from the first training batch: `(x − mean) / std`.
    mean: f64,
    std: f64,
    /// The weights, by name (what a fine-tune starts from).
    varmap: VarMap,
}

impl InversionDecoder {
    fn build(vb: &VarBuilder, in_channels: usize, stride: usize, cfg: &DecoderConfig) -> Result<Self, PrivacyError> {
        if !stride.is_power_of_two() || stride < 2 {
            return Err(PrivacyError::Config(format!("the decoder needs a power-of-two Front stride, got {stride}")));
        }
        if cfg.width == 0 {
            return Err(PrivacyError::Config("--decoder-width must be at least 1".into()));
        }
        let w = (cfg.width * stride / 8).max(16);
        let stem = Conv3x3::new(vb.pp("stem"), in_channels, w)?;
        let blocks = (0..cfg.blocks)
            .map(|i| Ok(Residual { a: Conv3x3::new(vb.pp(format!("block{i}.a")), w, w)?, b: Conv3x3::new(vb.pp(format!("block{i}.b")), w, w)? }))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let mut ups = Vec::new();
        let mut c = w;
        for i in 0..stride.trailing_zeros() {
            let next = (c / 2).max(16);
            ups.push(Conv3x3::new(vb.pp(format!("up{i}")), c, next)?);
            c = next;
        }
        let head = Conv3x3::new(vb.pp("head"), c, 3)?;
        Ok(Self { stem, blocks, ups, head, mean: 0.0, std: 1.0, varmap: VarMap::new() })
    }

    /// Reconstructions `[N, 3, H, W]` in 0..1 from features `[N, C, H/stride, W/stride]`.
    pub fn forward(&self, features: &Tensor) -> Result<Tensor, PrivacyError> {
        let mut x = self.stem.forward(&features.affine(1.0 / self.std, -self.mean / self.std)?)?.silu()?;
        for block in &self.blocks {
            x = block.forward(&x)?;
        }
        for up in &self.ups {
            x = up.forward(&upsample_nearest(&x, 2)?)?.silu()?;
        }
        Ok(candle_nn::ops::sigmoid(&self.head.forward(&x)?)?)
    }
}

/// Trains a decoder mapping features back to `images` (`[N, 3, H, W]` in 0..1). `observe` encodes
/// a batch of images as the edges do and returns what the cloud receives (`[B, C, H/stride,
/// W/stride]`). From scratch it trains `cfg.steps` steps; from `start`'s weights (same
/// architecture), `cfg.finetune_steps`. Weights, batches and flips are drawn from `seed`.
pub fn train(
    images: &Tensor,
    mut observe: impl FnMut(&Tensor) -> Result<Tensor, PrivacyError>,
    stride: usize,
    cfg: &DecoderConfig,
    start: Option<&InversionDecoder>,
    seed: u64,
    progress: &ProgressBar,
) -> Result<InversionDecoder, PrivacyError> {
    let n = images.dim(0)?;
    if n == 0 || cfg.batch == 0 {
        return Err(PrivacyError::Config("the decoder needs at least one auxiliary image and a batch of at least 1".into()));
    }
    let device = images.device();
    let mut rng = stream(seed, "decoder");
    let batch = cfg.batch.min(n);
    let mut draw = |rng: &mut rand_chacha::ChaCha8Rng| -> Result<(Tensor, Tensor), PrivacyError> {
        let idx: Vec<u32> = (0..batch).map(|_| rng.random_range(0..n as u32)).collect();
        let flips: Vec<bool> = (0..batch).map(|_| rng.random_bool(0.5)).collect();
        let picked = images.index_select(&Tensor::from_vec(idx, batch, device)?, 0)?;
        let rows = (0..batch)
            .map(|i| {
                let row = picked.narrow(0, i, 1)?;
                if flips[i] { row.flip(&[3]) } else { Ok(row) }
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        let target = Tensor::cat(&rows, 0)?;
        Ok((observe(&target)?, target))
    };

    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, device);
    let (first_features, first_target) = draw(&mut rng)?;
    let mut decoder = InversionDecoder::build(&vb, first_features.dim(1)?, stride, cfg)?;
    let mut named: Vec<_> = varmap.data().lock().expect("varmap lock").iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    let steps = match start {
        None => {
            for (name, var) in &named {
                // Biases start at zero (U(±1/√fan_in) of their conv would need the weight's shape).
                if name.ends_with(".weight") { uniform_fan_in(var, &mut rng)? } else { var.set(&var.zeros_like()?)? }
            }
            cfg.steps
        }
        Some(start) => {
            let from = start.varmap.data().lock().expect("varmap lock");
            for (name, var) in &named {
                let source = from.get(name).filter(|v| v.dims() == var.dims()).ok_or_else(|| {
                    PrivacyError::Config(format!("cannot fine-tune: the starting decoder has no {name} of shape {:?}", var.dims()))
                })?;
                var.set(source.as_tensor())?;
            }
            cfg.finetune_steps
        }
    };
    decoder.varmap = varmap.clone();
    decoder.mean = f64::from(first_features.mean_all()?.to_scalar::<f32>()?);
    decoder.std = f64::from(first_features.affine(1.0, -decoder.mean)?.sqr()?.mean_all()?.to_scalar::<f32>()?).sqrt().max(1e-6);
    let ssim = SsimLoss::new(images.dim(2)?, images.dim(3)?, device)?;
    let mut opt = AdamW::new(varmap.all_vars(), ParamsAdamW { lr: cfg.lr, weight_decay: 1e-4, ..Default::default() })?;
    let mut next = Some((first_features, first_target));
    for step in 0..steps {
        let (features, target) = match next.take() {
            Some(b) => b,
            None => draw(&mut rng)?,
        };
        let progress_frac = step as f64 / steps.max(1) as f64;
        opt.set_learning_rate(cfg.lr * (0.05 + 0.95 * 0.5 * (1.0 + (std::f64::consts::PI * progress_frac).cos())));
        let out = decoder.forward(&features)?;
        let mut loss = (&out - &target)?.sqr()?.mean_all()?;
        if cfg.ssim_weight > 0.0 {
            loss = (loss + (ssim.mean(&out, &target)?.affine(-1.0, 1.0)? * cfg.ssim_weight)?)?;
        }
        opt.backward_step(&loss)?;
        progress.inc(1);
    }
    Ok(decoder)
}

/// Mean SSIM of two `[N, C, H, W]` batches in 0..1, differentiable: the report's metric (Gaussian
/// window σ 1.5, population covariance, valid window positions only, mean over channels) with
/// the window applied as two matrix products.
pub struct SsimLoss {
    /// `[W, W − taps + 1]` and `[H, H − taps + 1]`: one column per valid window position.
    along_w: Tensor,
    along_h: Tensor,
}

impl SsimLoss {
    pub fn new(height: usize, width: usize, device: &Device) -> Result<Self, PrivacyError> {
        let taps = SsimConfig::default().taps()?;
        let band = |len: usize| -> Result<Tensor, PrivacyError> {
            if len < taps.len() {
                return Err(PrivacyError::Config(format!("images of side {len} are smaller than the SSIM window ({})", taps.len())));
            }
            let valid = len - taps.len() + 1;
            let mut m = vec![0f32; len * valid];
            for col in 0..valid {
                for (t, &v) in taps.iter().enumerate() {
                    m[(col + t) * valid + col] = v as f32;
                }
            }
            Ok(Tensor::from_vec(m, (len, valid), device)?)
        };
        Ok(Self { along_w: band(width)?, along_h: band(height)? })
    }

    fn blur(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        x.broadcast_matmul(&self.along_w)?.transpose(2, 3)?.broadcast_matmul(&self.along_h)
    }

    pub fn mean(&self, a: &Tensor, b: &Tensor) -> candle_core::Result<Tensor> {
        let (c1, c2) = (0.01f64.powi(2), 0.03f64.powi(2));
        let (ma, mb) = (self.blur(a)?, self.blur(b)?);
        let va = (self.blur(&a.sqr()?)? - ma.sqr()?)?;
        let vb = (self.blur(&b.sqr()?)? - mb.sqr()?)?;
        let cov = (self.blur(&(a * b)?)? - (&ma * &mb)?)?;
        let num = ((&ma * &mb)?.affine(2.0, c1)? * cov.affine(2.0, c2)?)?;
        let den = ((ma.sqr()? + mb.sqr()?)?.affine(1.0, c1)? * (va + vb)?.affine(1.0, c2)?)?;
        (num / den)?.mean_all()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mistnet::metrics::{ImageF32, ssim};

    #[test]
    fn a_fine_tune_starts_from_the_given_decoders_weights_and_needs_its_architecture() {
        let images = Tensor::arange(0f32, (4 * 3 * 16 * 16) as f32, &Device::Cpu).unwrap().affine(1.0 / 3072.0, 0.0).unwrap();
        let images = images.reshape((4, 3, 16, 16)).unwrap();
        let observe = |x: &Tensor| -> Result<Tensor, PrivacyError> { Ok(x.avg_pool2d(2)?) };
        let cfg = DecoderConfig { width: 16, blocks: 1, steps: 3, finetune_steps: 0, batch: 2, ..DecoderConfig::default() };
        let hidden = ProgressBar::hidden();
        let first = train(&images, observe, 2, &cfg, None, 1, &hidden).unwrap();
        let tuned = train(&images, observe, 2, &cfg, Some(&first), 2, &hidden).unwrap();
        let weight = |d: &InversionDecoder| d.varmap.data().lock().unwrap()["stem.weight"].as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(weight(&first), weight(&tuned), "no fine-tune steps: the starting weights");
        let fresh = train(&images, observe, 2, &cfg, None, 2, &hidden).unwrap();
        assert_ne!(weight(&first), weight(&fresh), "another seed, other initial weights");
        let wider = DecoderConfig { width: 256, ..cfg };
        let err = train(&images, observe, 2, &wider, Some(&first), 2, &hidden).err().expect("a different architecture").to_string();
        assert!(err.contains("cannot fine-tune"), "{err}");
    }

    #[test]
    fn the_differentiable_ssim_is_the_reports_ssim() {
        let (h, w) = (24, 20);
        let pixel = |i: usize, k: u32| ((i as u32 * 37 + k * 101) % 251) as f32 / 250.0;
        let a: Vec<f32> = (0..3 * h * w).map(|i| pixel(i, 1)).collect();
        let b: Vec<f32> = a.iter().enumerate().map(|(i, v)| (v * 0.7 + 0.3 * pixel(i, 7)).clamp(0.0, 1.0)).collect();
        let to_image = |v: &[f32]| {
            let img = image::RgbImage::from_fn(w as u32, h as u32, |x, y| {
                let p = y as usize * w + x as usize;
                image::Rgb([0, 1, 2].map(|c| (v[c * h * w + p] * 255.0).round() as u8))
            });
            ImageF32::from_rgb(&img)
        };
        let quantised = |v: &[f32]| v.iter().map(|x| (x * 255.0).round() / 255.0).collect::<Vec<f32>>();
        let (qa, qb) = (quantised(&a), quantised(&b));
        let expected = ssim(&to_image(&a), &to_image(&b), &SsimConfig::default()).unwrap();
        let t = |v: Vec<f32>| Tensor::from_vec(v, (1, 3, h, w), &Device::Cpu).unwrap();
        let got = SsimLoss::new(h, w, &Device::Cpu).unwrap().mean(&t(qa), &t(qb)).unwrap().to_scalar::<f32>().unwrap();
        assert!((f64::from(got) - expected).abs() < 1e-4, "differentiable {got} against the metric's {expected}");
    }
}
