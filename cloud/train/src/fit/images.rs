//! Letterboxed images as a [`LabelledSource`], with YOLOv5's image augmentation for `pretrain`
//! (values of `hyp.scratch-low`): HSV gains (h 0.015, s 0.7, v 0.4), a random affine of scale
//! 1 ± 0.5 and translation ± 0.1 (grey 114 border, boxes transformed and filtered as
//! `box_candidates`), and a horizontal flip with probability 0.5. Mosaic is not implemented.

use candle_core::Device;
use image::{Rgb, RgbImage};
use mistnet::data::letterbox::{PAD_VALUE, letterbox, read_rgb};
use mistnet::model::image_to_tensor;
use mistnet::data::{Label, Sample};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::FitError;
use super::source::{LabelledInput, LabelledSource};

const HSV_GAINS: [f32; 3] = [0.015, 0.7, 0.4];
const SCALE: f32 = 0.5;
const TRANSLATE: f32 = 0.1;
const FLIP_P: f64 = 0.5;
/// `box_candidates`: boxes keep at least 2 px sides and 10% of their area.
const MIN_SIDE_PX: f32 = 2.0;
const MIN_AREA_RATIO: f32 = 0.1;

/// Letterboxed images (held in memory) with labels normalized to the letterboxed canvas.
#[derive(Debug, Clone)]
pub struct ImageSet {
    images: Vec<(RgbImage, Vec<Label>)>,
}

impl ImageSet {
    /// Reads and letterboxes every sample to `imgsz`.
    pub fn load(samples: &[Sample], imgsz: u32) -> Result<Self, FitError> {
        let images = samples
            .iter()
            .map(|s| {
                let img = read_rgb(&s.image_path).map_err(FitError::Sample)?;
                let (boxed, lb) = letterbox(&img, imgsz);
                Ok((boxed, s.labels.iter().map(|l| l.to_letterboxed(&lb)).collect()))
            })
            .collect::<Result<_, FitError>>()?;
        Ok(Self { images })
    }
}

impl LabelledSource for ImageSet {
    fn len(&self) -> usize {
        self.images.len()
    }

    fn get(&self, index: usize, rng: Option<&mut ChaCha8Rng>) -> Result<LabelledInput, FitError> {
        let (img, labels) = &self.images[index];
        let (img, labels) = match rng {
            Some(rng) => augment_image(img, labels, rng),
            None => (img.clone(), labels.clone()),
        };
        Ok(LabelledInput { input: image_to_tensor(&img, &Device::Cpu)?.squeeze(0)?, labels })
    }
}

/// HSV, random affine (scale, translate) and horizontal flip of a square image and its labels.
pub fn augment_image(img: &RgbImage, labels: &[Label], rng: &mut ChaCha8Rng) -> (RgbImage, Vec<Label>) {
    let (w, h) = img.dimensions();
    let (wf, hf) = (w as f32, h as f32);
    let scale = rng.random_range(1.0 - SCALE..=1.0 + SCALE);
    let (tx, ty) = (rng.random_range(-TRANSLATE..=TRANSLATE) * wf, rng.random_range(-TRANSLATE..=TRANSLATE) * hf);
    let flip = rng.random_bool(FLIP_P);
    let gains: [f32; 3] = std::array::from_fn(|i| rng.random_range(-1.0..=1.0) * HSV_GAINS[i] + 1.0);
    // Output pixel p comes from source (p − c − t)/scale + c, c the centre; then the flip.
    let (cx, cy) = (wf / 2.0, hf / 2.0);
    let mut out = RgbImage::from_pixel(w, h, Rgb([PAD_VALUE; 3]));
    for y in 0..h {
        for x in 0..w {
            let xo = if flip { w - 1 - x } else { x };
            let sx = ((xo as f32 + 0.5 - cx - tx) / scale + cx).floor();
            let sy = ((y as f32 + 0.5 - cy - ty) / scale + cy).floor();
            if sx >= 0.0 && sy >= 0.0 && sx < wf && sy < hf {
                out.put_pixel(x, y, hsv_gain(*img.get_pixel(sx as u32, sy as u32), gains));
            }
        }
    }
    let labels = labels
        .iter()
        .filter_map(|l| {
            let [x1, y1, x2, y2] = l.to_pixels((w, h));
            let map_x = |v: f32| (v - cx) * scale + cx + tx;
            let map_y = |v: f32| (v - cy) * scale + cy + ty;
            let (mut a, mut b) = (map_x(x1).clamp(0.0, wf), map_x(x2).clamp(0.0, wf));
            let (c, d) = (map_y(y1).clamp(0.0, hf), map_y(y2).clamp(0.0, hf));
            if flip {
                (a, b) = (wf - b, wf - a);
            }
            let (nw, nh) = (b - a, d - c);
            let area0 = (x2 - x1) * (y2 - y1) * scale * scale;
            (nw > MIN_SIDE_PX && nh > MIN_SIDE_PX && nw * nh > MIN_AREA_RATIO * area0).then(|| Label::from_pixels(l.class, [a, c, b, d], (w, h)))
        })
        .collect();
    (out, labels)
}

/// Multiplies hue, saturation and value by `gains` (hue wraps around).
fn hsv_gain(Rgb([r, g, b]): Rgb<u8>, gains: [f32; 3]) -> Rgb<u8> {
    let (r, g, b) = (r as f32 / 255.0, g as f32 / 255.0, b as f32 / 255.0);
    let max = r.max(g).max(b);
    let min = r.min(g).min(b);
    let delta = max - min;
    let hue = if delta == 0.0 {
        0.0
    } else if max == r {
        ((g - b) / delta).rem_euclid(6.0)
    } else if max == g {
        (b - r) / delta + 2.0
    } else {
        (r - g) / delta + 4.0
    };
    let sat = if max == 0.0 { 0.0 } else { delta / max };
    let hue = (hue * gains[0]).rem_euclid(6.0);
    let sat = (sat * gains[1]).clamp(0.0, 1.0);
    let val = (max * gains[2]).clamp(0.0, 1.0);
    let to_u8 = |v: f32| (v * 255.0).round().clamp(0.0, 255.0) as u8;
    let [r, g, b] = mistnet::data::synth::canvas::hsv(hue * 60.0, sat, val);
    Rgb([to_u8(r), to_u8(g), to_u8(b)])
}

#[cfg(test)]
mod tests {
    #[test]
    fn unit_hsv_gains_keep_every_colour() {
        for (r, g, b) in [(0u8, 0u8, 0u8), (255, 255, 255), (200, 30, 90), (12, 240, 130), (70, 70, 250), (255, 128, 0)] {
            let out = super::hsv_gain(image::Rgb([r, g, b]), [1.0, 1.0, 1.0]).0;
            for (a, b) in out.iter().zip([r, g, b]) {
                assert!((*a as i32 - b as i32).abs() <= 1, "{:?} became {out:?}", (r, g, b));
            }
        }
    }

    use super::*;

    #[test]
    fn unit_hsv_gains_keep_the_colour() {
        for px in [[0u8, 0, 0], [255, 255, 255], [200, 30, 90], [12, 250, 130], [114, 114, 114]] {
            let out = hsv_gain(Rgb(px), [1.0, 1.0, 1.0]).0;
            for c in 0..3 {
                assert!((out[c] as i32 - px[c] as i32).abs() <= 1, "{px:?} → {out:?}");
            }
        }
    }
}
