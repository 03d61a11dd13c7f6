//! What the training loop reads: a [`LabelledSource`] of inputs with labels.
//!
//! - [`FeatureSet`]: Front features as the cloud receives them (codec wire messages, decoded to
//!   0/1 bits as f32), with feature-space augmentation. [`FeatureSet::from_store`] reads what the
//!   edges sent (the feature store), placing each box in the letterboxed canvas the edge fed its
//!   Front; [`FeatureSet::from_messages`] takes any other source of messages with letterboxed
//!   labels; [`FeatureSet::extract`] simulates the edges on a local dataset (letterbox, Front,
//!   binarize, randomized response, wire format, decode).
//! - [`super::images::ImageSet`]: letterboxed images with image augmentation, for `pretrain`.

use candle_core::{Device, Tensor};
use mistnet::codec::{Bits, DecodeLimits, EncodeParams, Encoding, FrontHash, Privacy, decode, encode, seeded_rng};
use mistnet::data::letterbox::{Letterbox, image_to_tensor, letterbox, read_rgb};
use mistnet::data::{BadDataPolicy, Label, Sample};
use mistnet::model::Front;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::FitError;
use crate::store::StoredSample;

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

/// What a stored sample must match to be trained on: the Front that made it (hash and cut), the
/// map that Front makes of an `imgsz` letterboxed image, and `nc` classes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StoreExpect {
    pub front_hash: FrontHash,
    pub cut: usize,
    /// `[C, H, W]` of one feature map.
    pub shape: [usize; 3],
    /// Stride of the map relative to the letterboxed image.
    pub stride: usize,
    pub imgsz: u32,
    pub nc: usize,
}

impl StoreExpect {
    /// What `front` makes of `imgsz`×`imgsz` images, with labels of `nc` classes.
    pub fn new(front: &Front, imgsz: u32, nc: usize) -> Result<Self, FitError> {
        let stride = front.out_stride();
        if stride == 0 || imgsz as usize % stride != 0 {
            return Err(FitError::Config(format!("--imgsz {imgsz} is not a multiple of the Front's stride {stride}")));
        }
        let side = imgsz as usize / stride;
        Ok(Self { front_hash: front.hash().parse()?, cut: front.cut(), shape: [front.out_channels(), side, side], stride, imgsz, nc })
    }

    /// The message's bits with its labels placed in the letterboxed canvas, or why the sample
    /// cannot be trained on. The message is decoded once; its header is checked on that decode.
    fn check(&self, s: &StoredSample) -> Result<(Bits, Vec<Label>), String> {
        let [c, h, w] = self.shape;
        let limits = DecodeLimits { max_elements: (c * h * w) as u64 };
        let decoded = decode(&s.features, &limits).map_err(|e| format!("features: {e}"))?;
        let header = decoded.header;
        if header.front_hash != self.front_hash || usize::from(header.cut) != self.cut {
            return Err(format!(
                "made by another Front (cut {}, hash {}) than --weights at cut {} (hash {})",
                header.cut, header.front_hash, self.cut, self.front_hash
            ));
        }
        let [n, fc, fh, fw] = header.shape.dims();
        if [n, fc] != [1, c] {
            return Err(format!("feature shape {:?}, expected [1, {c}, {h}, {w}]", header.shape.0));
        }
        if [fh, fw] != [h, w] {
            return Err(format!(
                "feature map is {fh}×{fw}, --imgsz {} needs {h}×{w} (stride {}): the edge letterboxed to {}×{} px, train with the imgsz `serve` was given",
                self.imgsz,
                self.stride,
                fw * self.stride,
                fh * self.stride
            ));
        }
        let (width, height) = s.image_size;
        if width == 0 || height == 0 {
            return Err(format!("image size {width}x{height} must be at least 1x1"));
        }
        for (i, l) in s.labels.iter().enumerate() {
            if l.class >= self.nc {
                return Err(format!("label {i}: class {} is not below nc = {}", l.class, self.nc));
            }
            for (field, v, positive) in [("cx", l.cx, false), ("cy", l.cy, false), ("w", l.w, true), ("h", l.h, true)] {
                if !(v.is_finite() && v <= 1.0 && if positive { v > 0.0 } else { v >= 0.0 }) {
                    return Err(format!("label {i}: {field} = {v} is not in {}", if positive { "(0, 1]" } else { "[0, 1]" }));
                }
            }
        }
        let lb = Letterbox::fit(s.image_size, self.imgsz);
        Ok((decoded.bits, s.labels.iter().map(|l| l.to_letterboxed(&lb)).collect()))
    }
}

impl FeatureSet {
    /// Decodes codec wire messages (one feature map each, `[1, C, H, W]` or `[C, H, W]`) whose
    /// labels are already normalized to the letterboxed image; `what` names each message in
    /// errors. All maps must have the same shape.
    pub fn from_messages<I, S>(messages: I) -> Result<Self, FitError>
    where
        I: IntoIterator<Item = (S, Vec<u8>, Vec<Label>)>,
        S: std::fmt::Display,
    {
        let mut set = Self::default();
        for (what, bytes, labels) in messages {
            let decoded = decode(&bytes, &DecodeLimits::default()).map_err(|e| FitError::Sample(format!("{what}: {e}")))?;
            let [n, c, h, w] = decoded.header.shape.dims();
            if n != 1 {
                return Err(FitError::Sample(format!("{what}: a message must hold one feature map, it holds {n}")));
            }
            if let Some(first) = set.shape().filter(|&f| f != [c, h, w]) {
                return Err(FitError::Sample(format!("{what}: feature shape {:?} differs from the first sample's {first:?}", [c, h, w])));
            }
            set.push(decoded.bits, [c, h, w], labels)?;
        }
        Ok(set)
    }

    /// The samples of a feature store, as the edges sent them: each message decoded once and
    /// checked against `expect`, each box placed in the letterboxed canvas with
    /// [`Letterbox::fit`] of the sample's original image size (as the edge's letterbox placed
    /// the image). A sample that cannot be used fails the call, naming it, or with
    /// [`BadDataPolicy::Skip`] is left out with a warning and counted; returns the set and that
    /// count.
    pub fn from_store<I>(samples: I, expect: &StoreExpect, policy: BadDataPolicy) -> Result<(Self, usize), FitError>
    where
        I: IntoIterator<Item = StoredSample>,
    {
        let mut set = Self::default();
        let mut skipped = 0;
        for s in samples {
            match expect.check(&s) {
                Ok((bits, labels)) => set.push(bits, expect.shape, labels)?,
                Err(reason) if policy == BadDataPolicy::Skip => {
                    tracing::warn!(edge = %s.edge, sample = %s.sample_id, %reason, "skipping a stored sample the trainer cannot use");
                    skipped += 1;
                }
                Err(reason) => return Err(FitError::Sample(format!("{}/{} (stored): {reason}", s.edge, s.sample_id))),
            }
        }
        Ok((set, skipped))
    }

    /// `[C, H, W]` of every map, `None` while empty.
    pub fn shape(&self) -> Option<[usize; 3]> {
        self.samples.first().map(|s| s.input.dims().try_into().expect("[C, H, W]"))
    }

    fn push(&mut self, bits: Bits, shape: [usize; 3], labels: Vec<Label>) -> Result<(), FitError> {
        let input = Tensor::from_vec(bits.to_f32(), shape.to_vec(), &Device::Cpu)?;
        self.samples.push(LabelledInput { input, labels });
        Ok(())
    }

    /// The simulation path: letterbox each image to `imgsz`, run the Front, encode with
    /// `privacy` through the real codec (packed, zstd; noise from a generator seeded with
    /// `seed`), decode. `progress` is called after each image.
    pub fn extract(samples: &[Sample], front: &Front, imgsz: u32, privacy: Privacy, seed: u64, mut progress: impl FnMut()) -> Result<Self, FitError> {
        let params = EncodeParams {
            privacy,
            encoding: Encoding::Packed,
            zstd_level: Some(mistnet::codec::DEFAULT_ZSTD_LEVEL),
            cut: front.cut() as u16,
            front_hash: front.hash().parse::<FrontHash>()?,
        };
        let mut rng = seeded_rng(seed);
        let mut messages = Vec::with_capacity(samples.len());
        for s in samples {
            let img = read_rgb(&s.image_path).map_err(FitError::Sample)?;
            let (boxed, lb) = letterbox(&img, imgsz);
            let features = front.forward(&image_to_tensor(&boxed, &Device::Cpu)?)?;
            let values = features.flatten_all()?.to_vec1::<f32>()?;
            let msg = encode(&values, features.dims(), &params, &mut rng)?;
            let labels = s.labels.iter().map(|l| l.to_letterboxed(&lb)).collect();
            messages.push((s.image_path.display().to_string(), msg, labels));
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
