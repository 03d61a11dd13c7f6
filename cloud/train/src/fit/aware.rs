//! Binarization-aware training of a whole model (`pretrain --binarize-cut`): the output of layer
//! `cut − 1` goes through the edge's binarization ([`mistnet::codec::binarize`], `x > 0 → 1`, the
//! op [`mistnet::encoder::EdgeEncoder`] applies) and, optionally, its randomized response before
//! the Back reads it, so the Back learns on what edges send. Forward: the (noisy) bits exactly;
//! backward: a straight-through estimator into the Front, the gradient passed unchanged where
//! |x| ≤ 1 and zero elsewhere (the clipped identity of binarized networks). The noise is in the
//! forward only.

use candle_core::Tensor;
use mistnet::codec::{self, CodecRng, Privacy};
use mistnet::model::{LayerSpec, check_cut};

use super::FitError;

/// |x| beyond which the straight-through gradient is zero.
const STE_CLIP: f32 = 1.0;

/// Where the Front's output is binarized, and the randomized response applied to the bits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Binarization {
    cut: usize,
    privacy: Privacy,
}

impl Binarization {
    /// Binarization after layer `cut − 1` of `specs` (a valid cut), then `privacy`'s noise.
    pub fn new(specs: &[LayerSpec], cut: usize, privacy: Privacy) -> Result<Self, FitError> {
        check_cut(specs, cut)?;
        Ok(Self { cut, privacy })
    }

    pub fn cut(&self) -> usize {
        self.cut
    }

    pub fn privacy(&self) -> Privacy {
        self.privacy
    }

    /// What the Back reads for the Front's output `features`: its bits (`x > 0`, then randomized
    /// response with noise from `rng`) as 0/1, with the straight-through gradient into `features`.
    pub fn apply(&self, features: &Tensor, rng: &mut CodecRng) -> candle_core::Result<Tensor> {
        let values = features.flatten_all()?.to_vec1::<f32>()?;
        let mut bits = codec::binarize(&values).map_err(candle_core::Error::wrap)?;
        self.privacy.randomize(&mut bits, rng);
        let bits = Tensor::from_vec(bits.to_f32(), features.dims(), features.device())?;
        let pass = features.abs()?.le(STE_CLIP)?.to_dtype(features.dtype())?;
        // x − x is exactly 0 for finite x, so the value is the bits exactly; the gradient is `pass`.
        bits + (features - features.detach())?.mul(&pass)?
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};
    use mistnet::codec::{DecodeLimits, Mechanism, decode, seeded_rng};
    use mistnet::encoder::{EdgeEncoder, WireSettings};
    use mistnet::model::batch_norm::BatchNormConfig;
    use mistnet::model::{Front, ModelConfig, ParamStore, Yolo};

    use super::*;

    #[test]
    fn the_back_reads_the_encoders_bits_and_the_front_gets_straight_through_gradients() {
        let specs = ModelConfig::load("yolov5n").unwrap().layers().unwrap();
        let dev = Device::Cpu;
        let store = ParamStore::fresh(3);
        let model = Yolo::load(store.var_builder(&dev), &specs, 0, BatchNormConfig::default()).unwrap();
        let image = Tensor::rand(0f32, 1.0, (1, 3, 32, 32), &dev).unwrap();
        for privacy in [Privacy::none(), Privacy::new(Mechanism::Sue, Some(1.0)).unwrap()] {
            let aware = Binarization::new(&specs, 4, privacy).unwrap();
            // Eval mode: the Front computes what the folded edge Front computes.
            let mut seen = None;
            let out = model
                .forward_mapped(&image, false, 3, &mut |x| {
                    let y = aware.apply(&x, &mut seeded_rng(5))?;
                    seen = Some(y.clone());
                    Ok(y)
                })
                .unwrap();
            let back_input = seen.expect("layer 3's output was mapped").flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert!(back_input.iter().all(|&v| v == 0.0 || v == 1.0));
            let front = Front::load(&specs, 4, &store, &dev).unwrap();
            let encoder = EdgeEncoder::new(front.clone(), 32, WireSettings::packed(privacy)).unwrap();
            let message = encoder.encode_features(&front.forward(&image).unwrap(), &mut seeded_rng(5)).unwrap();
            let sent = decode(&message, &DecodeLimits::default()).unwrap().bits.to_f32();
            let differing = back_input.iter().zip(&sent).filter(|(a, b)| a != b).count();
            // The folded Front differs from the unfolded one by rounding: a value within it of 0 may flip.
            assert!(differing <= back_input.len() / 1000, "{differing} of {} bits differ from the encoder's ({privacy:?})", sent.len());
            if privacy == Privacy::none() {
                assert!(back_input.iter().any(|&v| v == 1.0) && back_input.iter().any(|&v| v == 0.0));
            }
            // Gradients reach the Front's first convolution through the binarization.
            let loss = out.raw.iter().map(|t| t.sqr().unwrap().sum_all().unwrap()).reduce(|a, b| (a + b).unwrap()).unwrap();
            let grads = loss.backward().unwrap();
            let stem = store.trainable().into_iter().find(|(name, _)| name == "model.0.conv.weight").unwrap().1;
            let g = grads.get(stem.as_tensor()).expect("the Front's stem has a gradient");
            assert!(g.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap() > 0.0);
        }
    }

    #[test]
    fn the_straight_through_gradient_is_the_clipped_identity() {
        let x = Var::from_vec(vec![-2.0f32, -0.5, 0.0, 0.25, 0.9, 1.5], 6, &Device::Cpu).unwrap();
        let specs = ModelConfig::load("yolov5n").unwrap().layers().unwrap();
        let aware = Binarization::new(&specs, 4, Privacy::none()).unwrap();
        let y = aware.apply(x.as_tensor(), &mut seeded_rng(0)).unwrap();
        assert_eq!(y.to_vec1::<f32>().unwrap(), [0.0, 0.0, 0.0, 1.0, 1.0, 1.0]);
        let weights = Tensor::new(&[1f32, 2., 3., 4., 5., 6.], &Device::Cpu).unwrap();
        let grads = (y * weights).unwrap().sum_all().unwrap().backward().unwrap();
        assert_eq!(grads.get(x.as_tensor()).unwrap().to_vec1::<f32>().unwrap(), [0.0, 2., 3., 4., 5., 0.0]);
        assert!(Binarization::new(&specs, 7, Privacy::none()).unwrap_err().to_string().contains("valid cuts"));
    }
}
