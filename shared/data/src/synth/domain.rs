//! The two visual domains of the synthetic dataset. Public images (the cloud's pretraining data)
//! have smooth value-noise or gradient backgrounds in muted colours under even lighting; private
//! images (the edges' data) have stripe or checker backgrounds in cool colours, dimmer and
//! lower-contrast lighting with a colour cast, and more sensor noise.

use std::f32::consts::TAU;

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::canvas::{Canvas, hsv};

/// Which side of the MistNet split an image is made for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Domain {
    Public,
    Private,
}

impl Domain {
    /// A short description for the dataset README.
    pub fn describe(self) -> &'static str {
        match self {
            Domain::Public => "value-noise or gradient backgrounds in muted colours, even lighting",
            Domain::Private => "stripe or checker backgrounds in cool colours, dimmer low-contrast lighting with a colour cast, more noise",
        }
    }

    /// Paints a textured background over the whole canvas.
    pub fn paint_background(self, canvas: &mut Canvas, rng: &mut ChaCha8Rng) {
        let (c0, c1) = (self.background_colour(rng), self.background_colour(rng));
        let size = canvas.size as f32;
        let mix = |t: f32| -> [f32; 3] { std::array::from_fn(|c| c0[c] + (c1[c] - c0[c]) * t.clamp(0.0, 1.0)) };
        let angle = rng.random_range(0.0..TAU);
        let (sin, cos) = angle.sin_cos();
        match (self, rng.random_bool(0.5)) {
            (Domain::Public, true) => {
                let coarse = ValueNoise::new(5, rng);
                let fine = ValueNoise::new(20, rng);
                canvas.paint(|x, y| {
                    let (u, v) = (x as f32 / size, y as f32 / size);
                    mix(0.65 * coarse.at(u, v) + 0.35 * fine.at(u, v))
                });
            }
            (Domain::Public, false) => {
                let fine = ValueNoise::new(24, rng);
                canvas.paint(|x, y| {
                    let t = ((x as f32 * cos + y as f32 * sin) / size + 1.0) / 2.0;
                    mix(0.8 * t + 0.2 * fine.at(x as f32 / size, y as f32 / size))
                });
            }
            (Domain::Private, true) => {
                let period = rng.random_range(0.06..0.2) * size;
                let phase = rng.random_range(0.0..TAU);
                canvas.paint(|x, y| {
                    let d = x as f32 * cos + y as f32 * sin;
                    mix(0.5 + 0.5 * (TAU * d / period + phase).sin())
                });
            }
            (Domain::Private, false) => {
                let cell = rng.random_range(0.08..0.2) * size;
                canvas.paint(|x, y| {
                    let (x, y) = (x as f32, y as f32);
                    let (u, v) = ((x * cos + y * sin) / cell, (-x * sin + y * cos) / cell);
                    mix(if (u.floor() + v.floor()) as i64 % 2 == 0 { 0.15 } else { 0.85 })
                });
            }
        }
    }

    /// Applies the domain's lighting (gain, contrast, colour cast) and sensor noise to the finished image.
    pub fn apply_lighting(self, canvas: &mut Canvas, rng: &mut ChaCha8Rng) {
        let (gain, contrast, cast, noise) = match self {
            Domain::Public => (rng.random_range(0.92..1.08), rng.random_range(0.92..1.08), [1.0; 3], 0.02),
            Domain::Private => (
                rng.random_range(0.6..0.9),
                rng.random_range(0.65..0.9),
                [rng.random_range(0.95..1.1), rng.random_range(0.9..1.0), rng.random_range(0.8..0.95)],
                0.045,
            ),
        };
        canvas.map(|_, _, p| {
            std::array::from_fn(|c| ((p[c] - 0.5) * contrast + 0.5) * gain * cast[c] + rng.random_range(-noise..=noise))
        });
    }

    fn background_colour(self, rng: &mut ChaCha8Rng) -> [f32; 3] {
        match self {
            Domain::Public => hsv(rng.random_range(0.0..360.0), rng.random_range(0.0..0.3), rng.random_range(0.35..0.85)),
            Domain::Private => hsv(rng.random_range(170.0..260.0), rng.random_range(0.1..0.35), rng.random_range(0.25..0.8)),
        }
    }
}

/// Smooth random noise: random values on a `cells`×`cells` lattice over the unit square,
/// interpolated with smoothstep.
struct ValueNoise {
    cells: usize,
    lattice: Vec<f32>,
}

impl ValueNoise {
    fn new(cells: usize, rng: &mut ChaCha8Rng) -> Self {
        let lattice = (0..(cells + 1) * (cells + 1)).map(|_| rng.random::<f32>()).collect();
        ValueNoise { cells, lattice }
    }

    /// The noise at `(u, v)` in the unit square, in 0..1.
    fn at(&self, u: f32, v: f32) -> f32 {
        let n = self.cells;
        let (x, y) = (u.clamp(0.0, 1.0) * n as f32, v.clamp(0.0, 1.0) * n as f32);
        let (i, j) = ((x as usize).min(n - 1), (y as usize).min(n - 1));
        let smooth = |t: f32| t * t * (3.0 - 2.0 * t);
        let (tx, ty) = (smooth(x - i as f32), smooth(y - j as f32));
        let at = |i: usize, j: usize| self.lattice[j * (n + 1) + i];
        let top = at(i, j) + (at(i + 1, j) - at(i, j)) * tx;
        let bottom = at(i, j + 1) + (at(i + 1, j + 1) - at(i, j + 1)) * tx;
        top + (bottom - top) * ty
    }
}
