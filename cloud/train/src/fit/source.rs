//! What the training loop reads: a [`LabelledSource`] of inputs with labels.
//!
//! - [`FeatureSet`]: Front features as the cloud receives them (codec wire messages, decoded and
//!   held as packed bits, unpacked to 0/1 f32 maps one sample at a time by
//!   [`LabelledSource::get`]), with feature-space augmentation. [`FeatureSet::from_store`] reads
//!   what the edges sent (the feature store), placing each box in the letterboxed canvas the
//!   edge fed its Front; [`FeatureSet::from_messages`] takes any other source of messages with
//!   letterboxed labels; [`FeatureSet::extract`] simulates the edges on a local dataset through
//!   the one edge pipeline ([`EdgeEncoder`]), then decodes. Augmented, a sample may first become
//!   a [`feature_mosaic`] of four.
//! - [`FollowedStore`]: a feature store the edges are still uploading to (`train --follow`): each
//!   [`FollowedStore::take_in`] decodes only the samples stored since the last and adds them to
//!   the bits already held.
//! - [`super::images::ImageSet`]: letterboxed images with image augmentation, for `pretrain`.

use candle_core::{Device, Tensor};
use mistnet::codec::{Bits, DecodeLimits, FrontHash, decode, seeded_rng};
use mistnet::data::letterbox::Letterbox;
use mistnet::data::{BadDataPolicy, Label, Sample};
use mistnet::encoder::EdgeEncoder;
use mistnet::model::Front;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::{FitError, GrowingSource};
use mistnet_store::{StoreFollower, StoredSample};

/// One training input and its labels, normalized to the input's width and height.
#[derive(Debug, Clone)]
pub struct LabelledInput {
    /// `[C, H, W]`, f32.
    pub input: Tensor,
    pub labels: Vec<Label>,
}

/// How a training sample is augmented: the epoch's generator, and the probability that the
/// sample is a mosaic of itself and three others drawn from the source.
#[derive(Debug)]
pub struct Augment<'a> {
    pub rng: &'a mut ChaCha8Rng,
    /// In 0..=1; 0 draws nothing from `rng` for it.
    pub mosaic: f64,
}

impl Augment<'_> {
    /// Draws whether this sample is a mosaic, and if so the other three samples of it, out of `len`.
    pub fn mosaic_partners(&mut self, len: usize) -> Option<[usize; 3]> {
        (self.mosaic > 0.0 && self.rng.random_bool(self.mosaic)).then(|| std::array::from_fn(|_| self.rng.random_range(0..len)))
    }
}

/// A labelled sample source. `augment` is `Some` when the sample should be augmented.
pub trait LabelledSource {
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    fn get(&self, index: usize, augment: Option<&mut Augment<'_>>) -> Result<LabelledInput, FitError>;
}

/// Feature maps with labels normalized to the letterboxed image they came from. The maps are held
/// as packed bits (yolov5s cut 4 at 640 px: 100 KB a sample, against 3.2 MB as f32) and unpacked
/// to 0/1 f32 by [`LabelledSource::get`].
#[derive(Debug, Clone, Default)]
pub struct FeatureSet {
    /// `[C, H, W]` of every map.
    shape: [usize; 3],
    samples: Vec<HeldSample>,
}

#[derive(Debug, Clone)]
struct HeldSample {
    bits: Bits,
    labels: Vec<Label>,
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
        if stride == 0 || !(imgsz as usize).is_multiple_of(stride) {
            return Err(FitError::Config(format!("--imgsz {imgsz} is not a multiple of the Front's stride {stride}")));
        }
        let side = imgsz as usize / stride;
        Ok(Self { front_hash: front.hash(), cut: front.cut(), shape: [front.out_channels(), side, side], stride, imgsz, nc })
    }

    /// The message's bits with its labels placed in the letterboxed canvas, or why the sample
    /// cannot be trained on. The message is decoded once; its header is checked on that decode.
    fn check(&self, s: &StoredSample) -> Result<(Bits, Vec<Label>), String> {
        let [c, h, w] = self.shape;
        let decoded = decode(&s.features, &DecodeLimits::default()).map_err(|e| format!("features: {e}"))?;
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
            set.push(decoded.bits, [c, h, w], labels);
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
                Ok((bits, labels)) => set.push(bits, expect.shape, labels),
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
        (!self.samples.is_empty()).then_some(self.shape)
    }

    /// Moves the samples of `other` to the end of this set (indices of samples already held stay).
    pub fn append(&mut self, other: FeatureSet) -> Result<(), FitError> {
        if let (Some(mine), Some(theirs)) = (self.shape(), other.shape())
            && mine != theirs
        {
            return Err(FitError::Sample(format!("feature shape {theirs:?} differs from the held samples' {mine:?}")));
        }
        if other.shape().is_some() {
            self.shape = other.shape;
        }
        self.samples.extend(other.samples);
        Ok(())
    }

    /// Adds a map of `shape` (the callers have checked it against the set's).
    fn push(&mut self, bits: Bits, shape: [usize; 3], labels: Vec<Label>) {
        debug_assert_eq!(bits.len(), shape.iter().product::<usize>());
        self.shape = shape;
        self.samples.push(HeldSample { bits, labels });
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

    /// The sample's bits unpacked to a `[C, H, W]` map of 0/1 f32, augmented when `augment` is
    /// given: first, with its probability, a [`feature_mosaic`] with three other samples.
    fn get(&self, index: usize, augment: Option<&mut Augment<'_>>) -> Result<LabelledInput, FitError> {
        let Some(augment) = augment else { return self.unpacked(index) };
        let sample = match augment.mosaic_partners(self.len()) {
            Some([a, b, c]) => {
                let tiles = [index, a, b, c].map(|i| self.unpacked(i));
                let [t0, t1, t2, t3] = tiles;
                feature_mosaic([t0?, t1?, t2?, t3?], augment.rng)?
            }
            None => self.unpacked(index)?,
        };
        augment_features(sample, augment.rng)
    }
}

impl FeatureSet {
    fn unpacked(&self, index: usize) -> Result<LabelledInput, FitError> {
        let held = &self.samples[index];
        Ok(LabelledInput { input: Tensor::from_vec(held.bits.to_f32(), self.shape.to_vec(), &Device::Cpu)?, labels: held.labels.clone() })
    }
}

/// The usable samples of a feature store that a writer (`serve`) may still be appending to, read
/// a poll at a time through [`StoreFollower`]: each [`take_in`](Self::take_in) decodes and checks
/// (as [`FeatureSet::from_store`]) only the samples whose records were completed since the last,
/// and adds their bits to those already held. A [`GrowingSource`]: `fit_growing` takes in new
/// samples before every epoch.
#[derive(Debug)]
pub struct FollowedStore {
    follower: StoreFollower,
    expect: StoreExpect,
    policy: BadDataPolicy,
    set: FeatureSet,
    skipped: usize,
}

impl FollowedStore {
    /// Nothing is read until the first [`take_in`](Self::take_in).
    pub fn new(follower: StoreFollower, expect: StoreExpect, policy: BadDataPolicy) -> Self {
        Self { follower, expect, policy, set: FeatureSet::default(), skipped: 0 }
    }

    /// Reads the samples stored since the last call and keeps the usable ones; returns how many
    /// were kept. A sample that cannot be used fails the call, naming it, unless `policy` is
    /// [`BadDataPolicy::Skip`] (then it is counted in [`skipped`](Self::skipped)).
    pub fn take_in(&mut self) -> Result<usize, FitError> {
        let new = self.follower.poll()?;
        if new.is_empty() {
            return Ok(0);
        }
        let (more, skipped) = FeatureSet::from_store(new, &self.expect, self.policy)?;
        self.skipped += skipped;
        let added = more.len();
        self.set.append(more)?;
        Ok(added)
    }

    /// Samples read from the store so far, usable or not.
    pub fn read(&self) -> usize {
        self.follower.returned()
    }

    /// Samples read and left out as unusable ([`BadDataPolicy::Skip`]).
    pub fn skipped(&self) -> usize {
        self.skipped
    }
}

impl LabelledSource for FollowedStore {
    fn len(&self) -> usize {
        self.set.len()
    }

    fn get(&self, index: usize, augment: Option<&mut Augment<'_>>) -> Result<LabelledInput, FitError> {
        self.set.get(index, augment)
    }
}

impl GrowingSource for FollowedStore {
    fn refresh(&mut self) -> Result<usize, FitError> {
        self.take_in()
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
fn crop_labels(labels: &[Label], size: (usize, usize), window: (usize, usize, usize, usize)) -> Vec<Label> {
    let dims = (size.0 as u32, size.1 as u32);
    window_boxes(labels.iter().map(|l| (l.class, l.to_pixels(dims))), window, dims)
}

/// Boxes `(class, [x1, y1, x2, y2])` in cells, clipped to the window `(x0, y0, w, h)` and
/// normalized to a map of `out` cells whose top-left corner the window's is; a box keeping less
/// than [`KEEP_AREA`] of its area is dropped.
fn window_boxes(boxes: impl Iterator<Item = (usize, [f32; 4])>, (x0, y0, cw, ch): (usize, usize, usize, usize), out: (u32, u32)) -> Vec<Label> {
    boxes
        .filter_map(|(class, [x1, y1, x2, y2])| {
            let clip = |v: f32, o: usize, n: usize| (v - o as f32).clamp(0.0, n as f32);
            let b = [clip(x1, x0, cw), clip(y1, y0, ch), clip(x2, x0, cw), clip(y2, y0, ch)];
            let area = (b[2] - b[0]) * (b[3] - b[1]);
            (area > 0.0 && area >= KEEP_AREA * (x2 - x1) * (y2 - y1)).then(|| Label::from_pixels(class, b, out))
        })
        .collect()
}

/// The feature-space mosaic: four `[C, H, W]` maps tiled 2×2 (`tiles[0]` top-left, then
/// top-right, bottom-left, bottom-right) and a window of one map's size cut from the `2H×2W` grid
/// around a random centre in its middle half (`(x0, y0)`, its top-left corner, uniform in
/// `0..=W × 0..=H`), as YOLOv5's `load_mosaic` tiles images around a random centre and crops
/// back. Boxes move with their map, are clipped to the window, and those keeping less than a
/// quarter of their area are dropped.
pub fn feature_mosaic(tiles: [LabelledInput; 4], rng: &mut ChaCha8Rng) -> Result<LabelledInput, FitError> {
    let (_, h, w) = tiles[0].input.dims3()?;
    if let Some(t) = tiles.iter().find(|t| t.input.dims() != tiles[0].input.dims()) {
        return Err(FitError::Sample(format!("mosaic of feature maps {:?} and {:?}", tiles[0].input.dims(), t.input.dims())));
    }
    let (x0, y0) = (rng.random_range(0..=w), rng.random_range(0..=h));
    Ok(mosaic_window(&tiles, (x0, y0))?)
}

/// [`feature_mosaic`] with the window's top-left corner at `(x0, y0)` of the grid.
fn mosaic_window(tiles: &[LabelledInput; 4], (x0, y0): (usize, usize)) -> candle_core::Result<LabelledInput> {
    let (_, h, w) = tiles[0].input.dims3()?;
    let top = Tensor::cat(&[&tiles[0].input, &tiles[1].input], 2)?;
    let bottom = Tensor::cat(&[&tiles[2].input, &tiles[3].input], 2)?;
    let input = Tensor::cat(&[top, bottom], 1)?.narrow(1, y0, h)?.narrow(2, x0, w)?.contiguous()?;
    let dims = (w as u32, h as u32);
    let boxes = tiles.iter().enumerate().flat_map(|(i, t)| {
        let (ox, oy) = ((i % 2 * w) as f32, (i / 2 * h) as f32);
        t.labels.iter().map(move |l| {
            let [x1, y1, x2, y2] = l.to_pixels(dims);
            (l.class, [x1 + ox, y1 + oy, x2 + ox, y2 + oy])
        })
    });
    Ok(LabelledInput { input, labels: window_boxes(boxes, (x0, y0, w, h), dims) })
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    use mistnet::codec::{EncodeParams, Encoding, Mechanism, Privacy, encode};

    const HASH: FrontHash = FrontHash([7; 32]);

    fn expect() -> StoreExpect {
        StoreExpect { front_hash: HASH, cut: 4, shape: [4, 8, 8], stride: 8, imgsz: 64, nc: 3 }
    }

    /// Structured values of `dims`: rectangles of positives on negatives, different per `seed`.
    fn values(dims: &[usize], seed: usize) -> Vec<f32> {
        let (h, w) = (dims[dims.len() - 2], dims[dims.len() - 1]);
        (0..dims.iter().product::<usize>())
            .map(|i| {
                let (p, y, x) = (i / (h * w), i / w % h, i % w);
                if (y + p + seed) % 5 < 2 && (x + 2 * seed) % 7 > 2 { 0.7 } else { -0.3 }
            })
            .collect()
    }

    fn message(values: &[f32], dims: &[usize], front_hash: FrontHash, cut: u16) -> Vec<u8> {
        let params = EncodeParams { privacy: Privacy::none(), encoding: Encoding::Packed, zstd_level: Some(3), cut, front_hash };
        encode(values, dims, &params, &mut seeded_rng(0)).unwrap()
    }

    fn stored(id: &str, features: Vec<u8>, labels: Vec<Label>, image_size: (u32, u32)) -> StoredSample {
        StoredSample { edge: "edge-1".into(), sample_id: id.into(), features, labels, image_size }
    }

    fn good(id: &str, seed: usize) -> StoredSample {
        let label = Label { class: 1, cx: 0.5, cy: 0.5, w: 0.5, h: 0.5 };
        stored(id, message(&values(&[1, 4, 8, 8], seed), &[1, 4, 8, 8], HASH, 4), vec![label], (128, 64))
    }

    #[test]
    fn bit_held_samples_give_the_dense_path_tensors_with_and_without_augmentation() {
        // The dense path as it was: every map kept as a 0/1 f32 tensor (x > 0), augmented with
        // `augment_features`. The bit-held set must hand out exactly those tensors and labels.
        let dims = [1, 4, 8, 8];
        let labels = |i: usize| vec![Label { class: i % 3, cx: 0.3 + 0.1 * i as f32, cy: 0.5, w: 0.4, h: 0.3 }];
        let maps: Vec<Vec<f32>> = (0..5).map(|i| values(&dims, i)).collect();
        let set = FeatureSet::from_messages(maps.iter().enumerate().map(|(i, v)| (i, message(v, &dims, HASH, 4), labels(i)))).unwrap();
        assert_eq!((set.len(), set.shape()), (5, Some([4, 8, 8])));
        for (i, v) in maps.iter().enumerate() {
            let dense = LabelledInput { input: Tensor::from_vec(v.iter().map(|&x| f32::from(u8::from(x > 0.0))).collect(), (4, 8, 8), &Device::Cpu).unwrap(), labels: labels(i) };
            let plain = set.get(i, None).unwrap();
            assert_eq!(plain.input.flatten_all().unwrap().to_vec1::<f32>().unwrap(), dense.input.flatten_all().unwrap().to_vec1::<f32>().unwrap());
            assert_eq!(plain.labels, dense.labels);
            for seed in 0..12 {
                let expected = augment_features(dense.clone(), &mut ChaCha8Rng::seed_from_u64(seed)).unwrap();
                let got = set.get(i, Some(&mut Augment { rng: &mut ChaCha8Rng::seed_from_u64(seed), mosaic: 0.0 })).unwrap();
                assert_eq!(got.input.dims(), [4, 8, 8]);
                assert_eq!(got.input.flatten_all().unwrap().to_vec1::<f32>().unwrap(), expected.input.flatten_all().unwrap().to_vec1::<f32>().unwrap(), "sample {i}, seed {seed}");
                assert_eq!(got.labels, expected.labels, "sample {i}, seed {seed}");
                // Always a mosaic: still one map of bits, with boxes inside it.
                let mosaic = set.get(i, Some(&mut Augment { rng: &mut ChaCha8Rng::seed_from_u64(seed), mosaic: 1.0 })).unwrap();
                assert_eq!(mosaic.input.dims(), [4, 8, 8]);
                assert!(mosaic.input.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().all(|&v| v == 0.0 || v == 1.0));
                assert!(mosaic.labels.iter().all(|l| l.w > 0.0 && l.h > 0.0 && (0.0..=1.0).contains(&l.cx) && (0.0..=1.0).contains(&l.cy)));
            }
        }
    }

    #[test]
    fn stored_boxes_are_placed_in_the_letterboxed_canvas() {
        // A 128×64 image in a 64 px canvas: scaled by 1/2 to 64×32, 16 px of padding above and below.
        // The box (centre, half the width and height) covers x 16..48, y 24..40 of the canvas.
        let (set, skipped) = FeatureSet::from_store([good("a", 0)], &expect(), BadDataPolicy::Fail).unwrap();
        assert_eq!(skipped, 0);
        let l = set.get(0, None).unwrap().labels[0];
        assert_eq!(l.class, 1);
        for (got, want) in [(l.cx, 0.5), (l.cy, 0.5), (l.w, 0.5), (l.h, 0.25)] {
            assert!((got - want).abs() < 1e-6, "{l:?}");
        }
        assert_eq!(set.get(0, None).unwrap().input.flatten_all().unwrap().to_vec1::<f32>().unwrap(), values(&[1, 4, 8, 8], 0).iter().map(|&x| f32::from(u8::from(x > 0.0))).collect::<Vec<_>>());
    }

    #[test]
    fn unusable_stored_samples_fail_naming_them_or_are_skipped_and_counted() {
        let dims = [1, 4, 8, 8];
        let v = values(&dims, 1);
        let ok_label = Label { class: 0, cx: 0.5, cy: 0.5, w: 0.2, h: 0.2 };
        let mut truncated = message(&v, &dims, HASH, 4);
        truncated.truncate(truncated.len() - 1);
        let bad = [
            (stored("truncated", truncated, vec![ok_label], (64, 64)), "truncated message"),
            (stored("other-front", message(&v, &dims, FrontHash([8; 32]), 4), vec![ok_label], (64, 64)), "another Front"),
            (stored("other-cut", message(&v, &dims, HASH, 3), vec![ok_label], (64, 64)), "another Front (cut 3"),
            (stored("big-map", message(&values(&[1, 4, 16, 16], 0), &[1, 4, 16, 16], HASH, 4), vec![ok_label], (64, 64)), "feature map is 16×16, --imgsz 64 needs 8×8 (stride 8): the edge letterboxed to 128×128 px"),
            (stored("channels", message(&values(&[1, 5, 8, 8], 0), &[1, 5, 8, 8], HASH, 4), vec![ok_label], (64, 64)), "feature shape [1, 5, 8, 8], expected [1, 4, 8, 8]"),
            (stored("two-maps", message(&values(&[2, 4, 8, 8], 0), &[2, 4, 8, 8], HASH, 4), vec![ok_label], (64, 64)), "feature shape [2, 4, 8, 8]"),
            (stored("zero-size", message(&v, &dims, HASH, 4), vec![ok_label], (0, 64)), "image size 0x64"),
            (stored("class", message(&v, &dims, HASH, 4), vec![ok_label, Label { class: 3, ..ok_label }], (64, 64)), "label 1: class 3 is not below nc = 3"),
            (stored("cx", message(&v, &dims, HASH, 4), vec![Label { cx: 1.5, ..ok_label }], (64, 64)), "label 0: cx = 1.5 is not in [0, 1]"),
            (stored("h", message(&v, &dims, HASH, 4), vec![Label { h: 0.0, ..ok_label }], (64, 64)), "label 0: h = 0 is not in (0, 1]"),
            (stored("nan", message(&v, &dims, HASH, 4), vec![Label { w: f32::NAN, ..ok_label }], (64, 64)), "label 0: w = NaN"),
        ];
        for (sample, reason) in &bad {
            let err = FeatureSet::from_store([good("g", 0), sample.clone()], &expect(), BadDataPolicy::Fail).unwrap_err().to_string();
            assert!(err.contains(&format!("edge-1/{} (stored)", sample.sample_id)) && err.contains(reason), "{err}");
        }
        let all = [good("g0", 0)].into_iter().chain(bad.iter().map(|(s, _)| s.clone())).chain([good("g1", 1)]);
        let (set, skipped) = FeatureSet::from_store(all, &expect(), BadDataPolicy::Skip).unwrap();
        assert_eq!((set.len(), skipped), (2, bad.len()));
        assert_eq!(set.get(1, None).unwrap().input.flatten_all().unwrap().to_vec1::<f32>().unwrap(), values(&dims, 1).iter().map(|&x| f32::from(u8::from(x > 0.0))).collect::<Vec<_>>());
        // Mechanism and ε are what the edges chose: a noisy message is as usable as a plain one.
        let params = EncodeParams { privacy: Privacy::new(Mechanism::Sue, Some(2.0)).unwrap(), encoding: Encoding::Packed, zstd_level: Some(3), cut: 4, front_hash: HASH };
        let noisy = stored("noisy", encode(&v, &dims, &params, &mut seeded_rng(3)).unwrap(), vec![ok_label], (64, 64));
        assert_eq!(FeatureSet::from_store([noisy], &expect(), BadDataPolicy::Fail).unwrap().0.len(), 1);
    }

    #[test]
    fn a_followed_store_takes_in_only_what_was_completed_since_the_last_read() {
        use mistnet_store::OnCorruption;
        use mistnet_store::record::{Record, RecordKind};
        use mistnet_store::segment::{SEGMENT_MAGIC, segment_name};
        use std::io::Write;

        let frame = |s: &StoredSample| {
            Record {
                kind: RecordKind::Sample,
                edge: s.edge.clone(),
                sample_id: s.sample_id.clone(),
                epsilon: 2.0,
                labels: s.labels.clone(),
                image_size: s.image_size,
                features: s.features.clone(),
            }
            .to_frame()
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(segment_name(1));
        let append = |bytes: &[u8]| std::fs::OpenOptions::new().create(true).append(true).open(&path).unwrap().write_all(bytes).unwrap();
        append(&[SEGMENT_MAGIC.as_slice(), &frame(&good("a", 0)), &frame(&good("b", 1))].concat());
        let mut bad = good("other", 2);
        bad.features = message(&values(&[1, 4, 8, 8], 2), &[1, 4, 8, 8], FrontHash([8; 32]), 4);
        let follower = StoreFollower::new(dir.path(), OnCorruption::Refuse).unwrap();
        let mut set = FollowedStore::new(follower, expect(), BadDataPolicy::Skip);
        assert_eq!((set.refresh().unwrap(), set.len(), set.read()), (2, 2, 2));
        let first = set.get(1, None).unwrap().input.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        // A record half written: not taken in; once whole, it is, after those already held.
        let c = frame(&good("c", 3));
        append(&[frame(&bad).as_slice(), &c[..c.len() / 2]].concat());
        assert_eq!((set.take_in().unwrap(), set.len(), set.read(), set.skipped()), (0, 2, 3, 1));
        append(&c[c.len() / 2..]);
        assert_eq!((set.take_in().unwrap(), set.len(), set.read()), (1, 3, 4));
        assert_eq!(set.take_in().unwrap(), 0);
        assert_eq!(set.get(1, None).unwrap().input.flatten_all().unwrap().to_vec1::<f32>().unwrap(), first);
        assert_eq!(set.get(2, None).unwrap().input.flatten_all().unwrap().to_vec1::<f32>().unwrap(), values(&[1, 4, 8, 8], 3).iter().map(|&x| f32::from(u8::from(x > 0.0))).collect::<Vec<_>>());
        // Without --skip-bad, an unusable sample fails the read, naming it.
        let follower = StoreFollower::new(dir.path(), OnCorruption::Refuse).unwrap();
        let err = FollowedStore::new(follower, expect(), BadDataPolicy::Fail).take_in().unwrap_err().to_string();
        assert!(err.contains("edge-1/other (stored)") && err.contains("another Front"), "{err}");
    }

    #[test]
    fn a_feature_mosaic_tiles_four_maps_and_moves_their_boxes_into_the_window() {
        // Tile i is filled with i + 1; the window's top-left corner is (3, 2) of the 16×16 grid.
        let tile = |i: usize, labels: Vec<Label>| LabelledInput { input: Tensor::full(i as f32 + 1.0, (1, 8, 8), &Device::Cpu).unwrap(), labels };
        let label = |class, b: [f32; 4]| Label::from_pixels(class, b, (8, 8));
        let tiles = [
            tile(0, vec![label(0, [4.0, 4.0, 8.0, 6.0])]),
            tile(1, vec![label(1, [0.0, 0.0, 2.0, 8.0])]),
            tile(2, vec![label(2, [0.0, 6.0, 2.0, 8.0])]),
            tile(3, vec![label(3, [2.0, 0.0, 6.0, 4.0]), label(4, [0.0, 0.0, 2.0, 2.0])]),
        ];
        let out = mosaic_window(&tiles, (3, 2)).unwrap();
        let map = out.input.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for (i, v) in map.iter().enumerate() {
            let (x, y) = (i % 8 + 3, i / 8 + 2);
            assert_eq!(*v, 1.0 + f32::from(u8::from(x >= 8)) + 2.0 * f32::from(u8::from(y >= 8)), "cell ({}, {})", i % 8, i / 8);
        }
        // Tile 0's box is whole in the window; tile 1's keeps 12 of its 16 cells; tile 2's falls out
        // of it; tile 3's first keeps 2 of 16 cells (under a quarter: dropped), its second is whole.
        assert_eq!(out.labels, [label(0, [1.0, 2.0, 5.0, 4.0]), label(1, [5.0, 0.0, 7.0, 6.0]), label(4, [5.0, 6.0, 7.0, 8.0])]);
        // Drawn at random, the window stays inside the grid, and the map keeps its shape through the
        // rest of the augmentation.
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        for _ in 0..20 {
            let out = augment_features(feature_mosaic(tiles.clone(), &mut rng).unwrap(), &mut rng).unwrap();
            assert_eq!(out.input.dims(), [1, 8, 8]);
        }
        let mut odd = tiles.clone();
        odd[2].input = Tensor::zeros((1, 4, 8), candle_core::DType::F32, &Device::Cpu).unwrap();
        assert!(feature_mosaic(odd, &mut rng).unwrap_err().to_string().contains("mosaic of feature maps"));
    }

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
