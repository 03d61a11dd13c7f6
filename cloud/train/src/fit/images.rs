//! Letterboxed images as a [`LabelledSource`], with YOLOv5's image augmentation for `pretrain`
//! (values of `hyp.scratch-low`): with the [`Augment`]'s probability a [`mosaic`] of the image and
//! three others (`load_mosaic`: a 2s×2s canvas), then a random affine of scale 1 ± 0.5 and
//! translation ± 0.1 to s×s (grey 114 border, boxes transformed and filtered as
//! `box_candidates`; of a mosaic it keeps the canvas's middle, as YOLOv5's `border = -s/2`), HSV
//! gains (h 0.015, s 0.7, v 0.4) and a horizontal flip with probability 0.5.

use candle_core::Device;
use image::{Rgb, RgbImage};
use mistnet::data::letterbox::{PAD_VALUE, letterbox, read_rgb};
use mistnet::model::image_to_tensor;
use mistnet::data::{Label, Sample};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::FitError;
use super::source::{Augment, LabelledInput, LabelledSource};

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

    fn get(&self, index: usize, augment: Option<&mut Augment<'_>>) -> Result<LabelledInput, FitError> {
        let (img, labels) = &self.images[index];
        let (img, labels) = match augment {
            Some(augment) => match augment.mosaic_partners(self.len()) {
                Some([a, b, c]) => {
                    let tiles = [index, a, b, c].map(|i| (&self.images[i].0, self.images[i].1.as_slice()));
                    let (canvas, labels) = mosaic(tiles, augment.rng)?;
                    augment_image(&canvas, &labels, img.width(), augment.rng)
                }
                None => augment_image(img, labels, img.width(), augment.rng),
            },
            None => (img.clone(), labels.clone()),
        };
        Ok(LabelledInput { input: image_to_tensor(&img, &Device::Cpu)?.squeeze(0)?, labels })
    }
}

/// YOLOv5's `load_mosaic` of four s×s images: a grey 2s×2s canvas, a centre `(xc, yc)` drawn
/// uniformly from `[s/2, 3s/2]²`, `tiles[0]` placed with its bottom-right corner there, `tiles[1]`
/// its bottom-left, `tiles[2]` its top-right, `tiles[3]` its top-left, each cut by the canvas;
/// boxes moved with their image, clipped to the canvas and normalized to it (those clipped to
/// nothing dropped).
pub fn mosaic(tiles: [(&RgbImage, &[Label]); 4], rng: &mut ChaCha8Rng) -> Result<(RgbImage, Vec<Label>), FitError> {
    let s = tiles[0].0.width();
    if let Some((img, _)) = tiles.iter().find(|(img, _)| img.dimensions() != (s, s)) {
        return Err(FitError::Sample(format!("mosaic of images {:?} and {s}×{s}: the tiles must be square and alike", img.dimensions())));
    }
    let centre = (rng.random_range(s / 2..=s * 3 / 2), rng.random_range(s / 2..=s * 3 / 2));
    Ok(mosaic_at(tiles, centre))
}

/// [`mosaic`] around the centre `(xc, yc)` of the canvas.
fn mosaic_at(tiles: [(&RgbImage, &[Label]); 4], (xc, yc): (u32, u32)) -> (RgbImage, Vec<Label>) {
    let s = tiles[0].0.width();
    let side = 2 * s;
    let mut canvas = RgbImage::from_pixel(side, side, Rgb([PAD_VALUE; 3]));
    let mut out = Vec::new();
    for (i, (img, labels)) in tiles.into_iter().enumerate() {
        // The tile's top-left corner in the canvas (may lie outside it).
        let ox = if i % 2 == 0 { i64::from(xc) - i64::from(s) } else { i64::from(xc) };
        let oy = if i / 2 == 0 { i64::from(yc) - i64::from(s) } else { i64::from(yc) };
        for (x, y, px) in img.enumerate_pixels() {
            let (cx, cy) = (i64::from(x) + ox, i64::from(y) + oy);
            if (0..i64::from(side)).contains(&cx) && (0..i64::from(side)).contains(&cy) {
                canvas.put_pixel(cx as u32, cy as u32, *px);
            }
        }
        let (oxf, oyf, sidef) = (ox as f32, oy as f32, side as f32);
        out.extend(labels.iter().filter_map(|l| {
            let [x1, y1, x2, y2] = l.to_pixels((s, s));
            let b = [(x1 + oxf).clamp(0.0, sidef), (y1 + oyf).clamp(0.0, sidef), (x2 + oxf).clamp(0.0, sidef), (y2 + oyf).clamp(0.0, sidef)];
            (b[2] > b[0] && b[3] > b[1]).then(|| Label::from_pixels(l.class, b, (side, side)))
        }));
    }
    (canvas, out)
}

/// Random affine (scale, translate) of a square image to `out`×`out` about both centres, HSV
/// gains and a horizontal flip, with its labels.
pub fn augment_image(img: &RgbImage, labels: &[Label], out: u32, rng: &mut ChaCha8Rng) -> (RgbImage, Vec<Label>) {
    let (w, h) = img.dimensions();
    let (wf, hf, of) = (w as f32, h as f32, out as f32);
    let scale = rng.random_range(1.0 - SCALE..=1.0 + SCALE);
    let (tx, ty) = (rng.random_range(-TRANSLATE..=TRANSLATE) * of, rng.random_range(-TRANSLATE..=TRANSLATE) * of);
    let flip = rng.random_bool(FLIP_P);
    let gains: [f32; 3] = std::array::from_fn(|i| rng.random_range(-1.0..=1.0) * HSV_GAINS[i] + 1.0);
    // Output pixel p comes from source (p − o − t)/scale + c, c the source's centre and o the
    // output's; then the flip.
    let (cx, cy, co) = (wf / 2.0, hf / 2.0, of / 2.0);
    let mut img_out = RgbImage::from_pixel(out, out, Rgb([PAD_VALUE; 3]));
    for y in 0..out {
        for x in 0..out {
            let xo = if flip { out - 1 - x } else { x };
            let sx = ((xo as f32 + 0.5 - co - tx) / scale + cx).floor();
            let sy = ((y as f32 + 0.5 - co - ty) / scale + cy).floor();
            if sx >= 0.0 && sy >= 0.0 && sx < wf && sy < hf {
                img_out.put_pixel(x, y, hsv_gain(*img.get_pixel(sx as u32, sy as u32), gains));
            }
        }
    }
    let labels = labels
        .iter()
        .filter_map(|l| {
            let [x1, y1, x2, y2] = l.to_pixels((w, h));
            let map_x = |v: f32| (v - cx) * scale + co + tx;
            let map_y = |v: f32| (v - cy) * scale + co + ty;
            let (mut a, mut b) = (map_x(x1).clamp(0.0, of), map_x(x2).clamp(0.0, of));
            let (c, d) = (map_y(y1).clamp(0.0, of), map_y(y2).clamp(0.0, of));
            if flip {
                (a, b) = (of - b, of - a);
            }
            let (nw, nh) = (b - a, d - c);
            let area0 = (x2 - x1) * (y2 - y1) * scale * scale;
            (nw > MIN_SIDE_PX && nh > MIN_SIDE_PX && nw * nh > MIN_AREA_RATIO * area0).then(|| Label::from_pixels(l.class, [a, c, b, d], (out, out)))
        })
        .collect();
    (img_out, labels)
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
    fn a_mosaic_places_four_images_and_their_boxes_around_its_centre() {
        // Four 8×8 tiles, each pixel naming its tile and position; the centre (6, 10) of a 16×16 canvas.
        let tile = |i: u8| RgbImage::from_fn(8, 8, |x, y| Rgb([i, x as u8, y as u8]));
        let images: Vec<RgbImage> = (0..4).map(tile).collect();
        let label = |class, b: [f32; 4]| Label::from_pixels(class, b, (8, 8));
        let labels = [
            vec![label(0, [2.0, 0.0, 6.0, 4.0]), label(1, [0.0, 0.0, 4.0, 4.0])],
            vec![label(2, [4.0, 4.0, 8.0, 8.0])],
            vec![label(3, [0.0, 4.0, 2.0, 8.0])],
            vec![label(4, [0.0, 0.0, 8.0, 8.0])],
        ];
        let tiles: [(&RgbImage, &[Label]); 4] = std::array::from_fn(|i| (&images[i], labels[i].as_slice()));
        let (canvas, boxes) = mosaic_at(tiles, (6, 10));
        assert_eq!(canvas.dimensions(), (16, 16));
        for (x, y, px) in canvas.enumerate_pixels() {
            let (right, bottom) = (x >= 6, y >= 10);
            let (ox, oy) = (if right { 6 } else { -2 }, if bottom { 10 } else { 2 });
            let (sx, sy) = (x as i32 - ox, y as i32 - oy);
            let want = if (0..8).contains(&sx) && (0..8).contains(&sy) { Rgb([u8::from(right) + 2 * u8::from(bottom), sx as u8, sy as u8]) } else { Rgb([PAD_VALUE; 3]) };
            assert_eq!(*px, want, "canvas pixel ({x}, {y})");
        }
        let canvas_label = |class, b: [f32; 4]| Label::from_pixels(class, b, (16, 16));
        // Tile 0 moves by (−2, 2): its second box is clipped at the left edge. Tile 2's box falls
        // off the left edge entirely; tile 3's is clipped at the bottom.
        assert_eq!(
            boxes,
            [canvas_label(0, [0.0, 2.0, 4.0, 6.0]), canvas_label(1, [0.0, 2.0, 2.0, 6.0]), canvas_label(2, [10.0, 6.0, 14.0, 10.0]), canvas_label(4, [6.0, 10.0, 14.0, 16.0])]
        );
        let mut rng = <ChaCha8Rng as rand::SeedableRng>::seed_from_u64(1);
        for _ in 0..20 {
            let (canvas, labels) = mosaic(tiles, &mut rng).unwrap();
            let (img, labels) = augment_image(&canvas, &labels, 8, &mut rng);
            assert_eq!(img.dimensions(), (8, 8));
            assert!(labels.iter().all(|l| l.w > 0.0 && l.h > 0.0 && l.cx >= 0.0 && l.cx <= 1.0 && l.cy >= 0.0 && l.cy <= 1.0), "{labels:?}");
        }
        let small = RgbImage::new(4, 4);
        let odd: [(&RgbImage, &[Label]); 4] = [tiles[0], tiles[1], (&small, &[]), tiles[3]];
        assert!(mosaic(odd, &mut rng).unwrap_err().to_string().contains("must be square and alike"));
    }

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
