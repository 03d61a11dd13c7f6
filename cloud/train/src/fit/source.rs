//! What the training loop reads: a [`LabelledSource`] of inputs with labels.
//!
//! - [`FeatureSet`]: Front features as the cloud receives them (codec wire messages, decoded to
//!   0/1 bits as f32), with feature-space augmentation. [`FeatureSet::from_messages`] is the
//!   plug for any store of received messages; [`FeatureSet::extract`] simulates the edges on a
//!   local dataset through the one edge pipeline ([`EdgeEncoder`]), then decodes.
//! - [`super::images::ImageSet`]: letterboxed images with image augmentation, for `pretrain`.

use candle_core::{Device, Tensor};
use mistnet::codec::{DecodeLimits, decode, seeded_rng};
use mistnet::data::{Label, Sample};
use mistnet::encoder::EdgeEncoder;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::FitError;

/// One training input and its labels, normalized to the input's width and height.
#[derive(Debug, Clone)]
pub struct LabelledInput {
    /// `[C, H, W]`, f32.
    pub input: Tensor,
    pub labels: Vec<Label>,
}

/// A labelled sample source. `rng` is `Some` when the sample should be augmented.
pub trait LabelledSource {
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    fn get(&self, index: usize, rng: Option<&mut ChaCha8Rng>) -> Result<LabelledInput, FitError>;
}

/// Feature maps (0/1 as f32) with labels normalized to the letterboxed image they came from.
#[derive(Debug, Clone, Default)]
pub struct FeatureSet {
    samples: Vec<LabelledInput>,
}

impl FeatureSet {
    /// Decodes codec wire messages (one feature map each, `[1, C, H, W]` or `[C, H, W]`); `what`
    /// names each message in errors. All maps must have the same shape.
    pub fn from_messages<I, S>(messages: I) -> Result<Self, FitError>
    where
        I: IntoIterator<Item = (S, Vec<u8>, Vec<Label>)>,
        S: std::fmt::Display,
    {
        let mut samples: Vec<LabelledInput> = Vec::new();
        for (what, bytes, labels) in messages {
            let decoded = decode(&bytes, &DecodeLimits::default()).map_err(|e| FitError::Sample(format!("{what}: {e}")))?;
            let [n, c, h, w] = decoded.header.shape.dims();
            if n != 1 {
                return Err(FitError::Sample(format!("{what}: a message must hold one feature map, it holds {n}")));
            }
            let input = Tensor::from_vec(decoded.bits.to_f32(), (c, h, w), &Device::Cpu)?;
            if let Some(first) = samples.first().filter(|f| f.input.dims() != input.dims()) {
                return Err(FitError::Sample(format!("{what}: feature shape {:?} differs from the first sample's {:?}", input.dims(), first.input.dims())));
            }
            samples.push(LabelledInput { input, labels });
        }
        Ok(Self { samples })
    }

    /// The simulation path: every sample through the edge pipeline (`encoder`: letterbox, Front,
    /// binarize, randomized response, wire format; noise from a generator seeded with `seed`),
    /// decoded as the cloud decodes it, with the labels placed on the letterboxed canvas.
    /// `progress` is called after each image.
    pub fn extract(samples: &[Sample], encoder: &EdgeEncoder, seed: u64, mut progress: impl FnMut()) -> Result<Self, FitError> {
        let mut rng = seeded_rng(seed);
        let mut messages = Vec::with_capacity(samples.len());
        for s in samples {
            let encoded = encoder.encode_sample(s, &mut rng)?;
            let labels = encoded.letterboxed_labels();
            messages.push((s.image_path.display().to_string(), encoded.message, labels));
            progress();
        }
        Self::from_messages(messages)
    }
}

impl LabelledSource for FeatureSet {
    fn len(&self) -> usize {
        self.samples.len()
    }

    fn get(&self, index: usize, rng: Option<&mut ChaCha8Rng>) -> Result<LabelledInput, FitError> {
        let sample = self.samples[index].clone();
        match rng {
            Some(rng) => augment_features(sample, rng),
            None => Ok(sample),
        }
    }
}

/// Probability of each feature-space augmentation.
const FLIP_P: f64 = 0.5;
const CROP_P: f64 = 0.5;
/// Smallest crop side as a fraction of the map's.
const CROP_MIN: f64 = 0.7;
/// A cropped box is kept when at least this fraction of its area stays in the window.
const KEEP_AREA: f32 = 0.25;

/// Horizontal flip (features and boxes) and a random crop: a window of 70–100% of each side is
/// kept at the top-left corner, the rest zeroed; boxes are clipped to it and those that keep
/// less than a quarter of their area are dropped.
pub fn augment_features(mut s: LabelledInput, rng: &mut ChaCha8Rng) -> Result<LabelledInput, FitError> {
    let (_, h, w) = s.input.dims3()?;
    if rng.random_bool(FLIP_P) {
        let rev = Tensor::from_vec((0..w as u32).rev().collect::<Vec<_>>(), w, s.input.device())?;
        s.input = s.input.index_select(&rev, 2)?;
        for l in &mut s.labels {
            l.cx = 1.0 - l.cx;
        }
    }
    if rng.random_bool(CROP_P) {
        let ch = ((h as f64 * rng.random_range(CROP_MIN..=1.0)).round() as usize).clamp(1, h);
        let cw = ((w as f64 * rng.random_range(CROP_MIN..=1.0)).round() as usize).clamp(1, w);
        let (y0, x0) = (rng.random_range(0..=h - ch), rng.random_range(0..=w - cw));
        let window = s.input.narrow(1, y0, ch)?.narrow(2, x0, cw)?;
        s.input = window.pad_with_zeros(1, 0, h - ch)?.pad_with_zeros(2, 0, w - cw)?;
        s.labels = crop_labels(&s.labels, (w, h), (x0, y0, cw, ch));
    }
    Ok(s)
}

/// Labels of a `size` map after keeping the window `(x0, y0, w, h)` at the top-left corner.
fn crop_labels(labels: &[Label], size: (usize, usize), (x0, y0, cw, ch): (usize, usize, usize, usize)) -> Vec<Label> {
    let dims = (size.0 as u32, size.1 as u32);
    labels
        .iter()
        .filter_map(|l| {
            let [x1, y1, x2, y2] = l.to_pixels(dims);
            let clip = |v: f32, o: usize, n: usize| (v - o as f32).clamp(0.0, n as f32);
            let b = [clip(x1, x0, cw), clip(y1, y0, ch), clip(x2, x0, cw), clip(y2, y0, ch)];
            let area = (b[2] - b[0]) * (b[3] - b[1]);
            (area > 0.0 && area >= KEEP_AREA * (x2 - x1) * (y2 - y1)).then(|| Label::from_pixels(l.class, b, dims))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    #[test]
    fn flip_and_crop_move_the_boxes_with_the_features() {
        // One "object": ones on rows 2..4, columns 1..3 of an 8×8 map; its label covers exactly that.
        let mut data = vec![0f32; 64];
        for y in 2..4 {
            for x in 1..3 {
                data[y * 8 + x] = 1.0;
            }
        }
        let input = Tensor::from_vec(data, (1, 8, 8), &Device::Cpu).unwrap();
        let label = Label { class: 2, cx: 2.0 / 8.0, cy: 3.0 / 8.0, w: 2.0 / 8.0, h: 2.0 / 8.0 };
        for seed in 0..40 {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let out = augment_features(LabelledInput { input: input.clone(), labels: vec![label] }, &mut rng).unwrap();
            let map = out.input.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            for l in &out.labels {
                // Every cell inside the box holds a one, and the ones left are all inside it.
                let [x1, y1, x2, y2] = l.to_pixels((8, 8)).map(|v| v.round() as usize);
                let inside: f32 = (y1..y2).flat_map(|y| (x1..x2).map(move |x| y * 8 + x)).map(|i| map[i]).sum();
                assert_eq!(inside as usize, (x2 - x1) * (y2 - y1), "seed {seed}: {l:?}");
                assert_eq!(map.iter().sum::<f32>(), inside, "seed {seed}");
            }
            if out.labels.is_empty() {
                assert!(map.iter().sum::<f32>() <= 1.0, "seed {seed}: a dropped box keeps under a quarter of its cells");
            }
        }
    }
}
