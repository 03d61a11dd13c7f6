//! The object classes of the synthetic dataset and how one object is drawn: a shape in local
//! coordinates `u, v ∈ [-1, 1]`, scaled to half-sizes `a, b`, rotated, rasterized by 4×4
//! supersampling into a per-pixel coverage whose non-zero pixels give the label's tight box.

use std::f32::consts::TAU;

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::canvas::{Canvas, hsv};

/// Class names, index = class.
pub const CLASSES: [&str; 5] = ["disc", "square", "triangle", "ring", "cross"];

/// Base hue (degrees) of each class: distinct colours make the classes learnable in minutes.
const HUES: [f32; 5] = [0.0, 215.0, 120.0, 50.0, 290.0];

/// Sub-samples per pixel side when rasterizing.
const SUPERSAMPLE: u32 = 4;

/// The shapes, with their per-object parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Shape {
    Disc,
    Square,
    Triangle,
    /// An annulus; `inner` is the inner radius relative to the outer one.
    Ring { inner: f32 },
    /// Two crossing bars; `arm` is the bars' half-thickness relative to their half-length.
    Cross { arm: f32 },
}

impl Shape {
    /// The class index of this shape.
    pub fn class(&self) -> usize {
        match self {
            Shape::Disc => 0,
            Shape::Square => 1,
            Shape::Triangle => 2,
            Shape::Ring { .. } => 3,
            Shape::Cross { .. } => 4,
        }
    }

    /// Whether local point `(u, v)` is inside the shape.
    fn contains(&self, u: f32, v: f32) -> bool {
        if u.abs() > 1.0 || v.abs() > 1.0 {
            return false;
        }
        let r2 = u * u + v * v;
        match *self {
            Shape::Disc => r2 <= 1.0,
            Shape::Square => true,
            Shape::Triangle => u.abs() <= (v + 1.0) / 2.0,
            Shape::Ring { inner } => r2 <= 1.0 && r2 >= inner * inner,
            Shape::Cross { arm } => u.abs() <= arm || v.abs() <= arm,
        }
    }
}

/// One object placed in an image.
#[derive(Debug, Clone, PartialEq)]
pub struct Object {
    pub shape: Shape,
    /// Centre in pixels.
    pub centre: (f32, f32),
    /// Half-sizes along the shape's own axes, in pixels.
    pub half: (f32, f32),
    /// Rotation in radians.
    pub angle: f32,
    /// Fill colour, RGB in 0..1.
    pub colour: [f32; 3],
    /// Brightness change across the object along its `u` axis (a simple shading).
    pub shade: f32,
}

/// Per-pixel coverage (0..1) of one object over a window of the image.
#[derive(Debug, Clone)]
pub struct Coverage {
    pub x0: u32,
    pub y0: u32,
    pub width: u32,
    pub height: u32,
    pub alpha: Vec<f32>,
}

impl Object {
    /// A random object of class `class` in a `size`×`size` image: its length is 12–50% of the image
    /// side (log-uniform), its box after rotation at most 60%, and it lies fully inside the image.
    pub fn random(class: usize, size: u32, rng: &mut ChaCha8Rng) -> Object {
        let s = size as f32;
        let shape = match class {
            0 => Shape::Disc,
            1 => Shape::Square,
            2 => Shape::Triangle,
            3 => Shape::Ring { inner: rng.random_range(0.45..0.65) },
            _ => Shape::Cross { arm: rng.random_range(0.22..0.36) },
        };
        let aspect: f32 = match shape {
            Shape::Square => rng.random_range(0.5..1.0),
            Shape::Cross { .. } => rng.random_range(0.8..1.0),
            _ => rng.random_range(0.65..1.0),
        };
        let angle = rng.random_range(0.0..TAU);
        let long = (rng.random_range(0.12f32.ln()..0.5f32.ln())).exp() * s / 2.0;
        let (mut a, mut b) = if rng.random_bool(0.5) { (long, long * aspect) } else { (long * aspect, long) };
        let (ex, ey) = rotated_extent(a, b, angle);
        let fit = (0.3 * s / ex.max(ey)).min(1.0);
        (a, b) = (a * fit, b * fit);
        let (ex, ey) = rotated_extent(a, b, angle);
        let centre = (rng.random_range(ex..=s - ex), rng.random_range(ey..=s - ey));
        let hue = HUES[class] + rng.random_range(-12.0..12.0);
        let colour = hsv(hue, rng.random_range(0.7..1.0), rng.random_range(0.65..1.0));
        Object { shape, centre, half: (a, b), angle, colour, shade: rng.random_range(-0.15..0.15) }
    }

    /// Rasterizes the object in a `size`×`size` image.
    pub fn coverage(&self, size: u32) -> Coverage {
        let (ex, ey) = rotated_extent(self.half.0, self.half.1, self.angle);
        let (cx, cy) = self.centre;
        let clip = |v: f32| (v.max(0.0) as u32).min(size);
        let (x0, y0) = (clip((cx - ex).floor()), clip((cy - ey).floor()));
        let (x1, y1) = (clip((cx + ex).ceil() + 1.0), clip((cy + ey).ceil() + 1.0));
        let (width, height) = (x1 - x0, y1 - y0);
        let (sin, cos) = self.angle.sin_cos();
        let step = 1.0 / SUPERSAMPLE as f32;
        let mut alpha = vec![0f32; (width * height) as usize];
        for py in 0..height {
            for px in 0..width {
                let mut hits = 0;
                for sy in 0..SUPERSAMPLE {
                    for sx in 0..SUPERSAMPLE {
                        let x = (x0 + px) as f32 + (sx as f32 + 0.5) * step;
                        let y = (y0 + py) as f32 + (sy as f32 + 0.5) * step;
                        let (u, v) = self.local(x, y, sin, cos);
                        hits += u32::from(self.shape.contains(u, v));
                    }
                }
                alpha[(py * width + px) as usize] = hits as f32 / (SUPERSAMPLE * SUPERSAMPLE) as f32;
            }
        }
        Coverage { x0, y0, width, height, alpha }
    }

    /// Blends the object into `canvas` with its coverage.
    pub fn draw(&self, canvas: &mut Canvas, cov: &Coverage) {
        let (sin, cos) = self.angle.sin_cos();
        for py in 0..cov.height {
            for px in 0..cov.width {
                let a = cov.alpha[(py * cov.width + px) as usize];
                if a == 0.0 {
                    continue;
                }
                let (x, y) = (cov.x0 + px, cov.y0 + py);
                let (u, _) = self.local(x as f32 + 0.5, y as f32 + 0.5, sin, cos);
                let light = 1.0 + self.shade * u.clamp(-1.0, 1.0);
                let fill = self.colour.map(|c| (c * light).clamp(0.0, 1.0));
                let p = canvas.pixel_mut(x, y);
                for c in 0..3 {
                    p[c] = p[c] * (1.0 - a) + fill[c] * a;
                }
            }
        }
    }

    fn local(&self, x: f32, y: f32, sin: f32, cos: f32) -> (f32, f32) {
        let (dx, dy) = (x - self.centre.0, y - self.centre.1);
        ((dx * cos + dy * sin) / self.half.0, (-dx * sin + dy * cos) / self.half.1)
    }
}

impl Coverage {
    /// The tight pixel box `[x1, y1, x2, y2]` (exclusive right/bottom edges) of the covered pixels.
    pub fn bbox(&self) -> Option<[u32; 4]> {
        let mut b: Option<[u32; 4]> = None;
        for (i, &a) in self.alpha.iter().enumerate() {
            if a > 0.0 {
                let (x, y) = (self.x0 + i as u32 % self.width, self.y0 + i as u32 / self.width);
                b = Some(match b {
                    None => [x, y, x + 1, y + 1],
                    Some([x1, y1, x2, y2]) => [x1.min(x), y1.min(y), x2.max(x + 1), y2.max(y + 1)],
                });
            }
        }
        b
    }

    /// The image pixels (as `y * size + x`) this object covers at least half of.
    pub fn solid_pixels(&self, size: u32) -> impl Iterator<Item = usize> + '_ {
        self.alpha.iter().enumerate().filter(|(_, a)| **a >= 0.5).map(move |(i, _)| {
            let (x, y) = (self.x0 + i as u32 % self.width, self.y0 + i as u32 / self.width);
            (y * size + x) as usize
        })
    }
}

/// Half-width and half-height of the axis-aligned box around a rotated `2a × 2b` rectangle.
fn rotated_extent(a: f32, b: f32, angle: f32) -> (f32, f32) {
    let (sin, cos) = angle.sin_cos();
    ((a * cos).abs() + (b * sin).abs(), (a * sin).abs() + (b * cos).abs())
}
