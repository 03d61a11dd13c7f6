//! The learned inversion attack: an upsampling convolutional decoder from features back to
//! images, trained with AdamW on the attacker's auxiliary images encoded exactly as edges encode
//! them. Architecture: a 3×3 conv at the features' resolution, then per factor of 2 of the
//! Front's stride a nearest ×2 upsampling and a 3×3 conv (channels halving down to 16), all
//! SiLU, and a 3×3 conv to RGB through a sigmoid.

use candle_core::{DType, Tensor};
use candle_nn::{AdamW, Optimizer, ParamsAdamW, VarBuilder, VarMap};
use indicatif::ProgressBar;
use mistnet::model::conv::ConvShape;
use mistnet::model::gemm_conv;
use mistnet::model::upsample::upsample_nearest;
use rand::Rng;

use super::PrivacyError;
use super::init::{stream, uniform_fan_in};

/// Decoder size and training schedule.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DecoderConfig {
    /// Channels of the first conv (halved after each upsampling, at least 16).
    pub width: usize,
    pub steps: usize,
    pub batch: usize,
    pub lr: f64,
}

impl Default for DecoderConfig {
    fn default() -> Self {
        Self { width: 32, steps: 60, batch: 8, lr: 3e-3 }
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

/// A trained inversion decoder.
pub struct InversionDecoder {
    convs: Vec<Conv3x3>,
    /// Standardisation of the input features, from the training set: `(x − mean) / std`.
    mean: f64,
    std: f64,
}

impl InversionDecoder {
    fn build(vb: &VarBuilder, in_channels: usize, stride: usize, width: usize) -> Result<Vec<Conv3x3>, PrivacyError> {
        if !stride.is_power_of_two() || stride < 2 {
            return Err(PrivacyError::Config(format!("the decoder needs a power-of-two Front stride, got {stride}")));
        }
        let mut convs = vec![Conv3x3::new(vb.pp("stem"), in_channels, width)?];
        let mut c = width;
        for i in 0..stride.trailing_zeros() {
            let next = (c / 2).max(16);
            convs.push(Conv3x3::new(vb.pp(format!("up{i}")), c, next)?);
            c = next;
        }
        convs.push(Conv3x3::new(vb.pp("head"), c, 3)?);
        Ok(convs)
    }

    /// Reconstructions `[N, 3, H, W]` in 0..1 from features `[N, C, H/stride, W/stride]`.
    pub fn forward(&self, features: &Tensor) -> Result<Tensor, PrivacyError> {
        let mut x = features.affine(1.0 / self.std, -self.mean / self.std)?;
        let last = self.convs.len() - 1;
        for (i, conv) in self.convs.iter().enumerate() {
            if i > 0 && i < last {
                x = upsample_nearest(&x, 2)?;
            }
            x = conv.forward(&x)?;
            x = if i < last { x.silu()? } else { candle_nn::ops::sigmoid(&x)? };
        }
        Ok(x)
    }
}

/// Trains a decoder mapping `features` (`[N, C, h, w]`) to `images` (`[N, 3, H, W]`, H = h·stride)
/// with a mean-squared-error loss; weights and batches are drawn from `seed`.
pub fn train(
    features: &Tensor,
    images: &Tensor,
    stride: usize,
    cfg: &DecoderConfig,
    seed: u64,
    progress: &ProgressBar,
) -> Result<InversionDecoder, PrivacyError> {
    let n = features.dim(0)?;
    if n == 0 || cfg.batch == 0 {
        return Err(PrivacyError::Config("the decoder needs at least one auxiliary image and a batch of at least 1".into()));
    }
    let device = features.device();
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, device);
    let convs = InversionDecoder::build(&vb, features.dim(1)?, stride, cfg.width)?;
    let mut rng = stream(seed, "decoder");
    let mut named: Vec<_> = varmap.data().lock().expect("varmap lock").iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, var) in &named {
        // Biases start at zero (U(±1/√fan_in) of their conv would need the weight's shape).
        if name.ends_with(".weight") { uniform_fan_in(var, &mut rng)? } else { var.set(&var.zeros_like()?)? }
    }
    let mean = features.mean_all()?.to_scalar::<f32>()? as f64;
    let std = (features.affine(1.0, -mean)?.sqr()?.mean_all()?.to_scalar::<f32>()? as f64).sqrt().max(1e-6);
    let decoder = InversionDecoder { convs, mean, std };
    let mut opt = AdamW::new(varmap.all_vars(), ParamsAdamW { lr: cfg.lr, weight_decay: 1e-4, ..Default::default() })?;
    let batch = cfg.batch.min(n);
    for _ in 0..cfg.steps {
        let idx: Vec<u32> = (0..batch).map(|_| rng.random_range(0..n as u32)).collect();
        let idx = Tensor::from_vec(idx, batch, device)?;
        let out = decoder.forward(&features.index_select(&idx, 0)?)?;
        let loss = (out - images.index_select(&idx, 0)?)?.sqr()?.mean_all()?;
        opt.backward_step(&loss)?;
        progress.inc(1);
    }
    Ok(decoder)
}
