//! A square floating-point RGB canvas (values 0..1) that the synthetic images are painted on.

use image::{Rgb, RgbImage};

/// A `size`×`size` RGB image with f32 channels in 0..1.
#[derive(Debug, Clone)]
pub struct Canvas {
    pub size: u32,
    pixels: Vec<[f32; 3]>,
}

impl Canvas {
    /// A canvas filled with `colour`.
    pub fn filled(size: u32, colour: [f32; 3]) -> Canvas {
        Canvas { size, pixels: vec![colour; (size * size) as usize] }
    }

    /// The pixel at `(x, y)`.
    pub fn pixel_mut(&mut self, x: u32, y: u32) -> &mut [f32; 3] {
        &mut self.pixels[(y * self.size + x) as usize]
    }

    /// Sets every pixel to `f(x, y)`.
    pub fn paint(&mut self, mut f: impl FnMut(u32, u32) -> [f32; 3]) {
        for (i, p) in self.pixels.iter_mut().enumerate() {
            *p = f(i as u32 % self.size, i as u32 / self.size);
        }
    }

    /// Replaces every pixel `p` at `(x, y)` with `f(x, y, p)`.
    pub fn map(&mut self, mut f: impl FnMut(u32, u32, [f32; 3]) -> [f32; 3]) {
        for (i, p) in self.pixels.iter_mut().enumerate() {
            *p = f(i as u32 % self.size, i as u32 / self.size, *p);
        }
    }

    /// The canvas as 8-bit RGB (rounded, clamped).
    pub fn to_image(&self) -> RgbImage {
        let mut img = RgbImage::new(self.size, self.size);
        for (dst, src) in img.pixels_mut().zip(&self.pixels) {
            *dst = Rgb(src.map(|c| (c.clamp(0.0, 1.0) * 255.0).round() as u8));
        }
        img
    }
}

/// RGB (0..1) of a hue in degrees, saturation and value in 0..1.
pub fn hsv(hue: f32, s: f32, v: f32) -> [f32; 3] {
    let h = hue.rem_euclid(360.0) / 60.0;
    let c = v * s;
    let x = c * (1.0 - (h % 2.0 - 1.0).abs());
    let (r, g, b) = match h as u32 {
        0 => (c, x, 0.0),
        1 => (x, c, 0.0),
        2 => (0.0, c, x),
        3 => (0.0, x, c),
        4 => (x, 0.0, c),
        _ => (c, 0.0, x),
    };
    let m = v - c;
    [r + m, g + m, b + m]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hsv_primaries() {
        assert_eq!(hsv(0.0, 1.0, 1.0), [1.0, 0.0, 0.0]);
        assert_eq!(hsv(120.0, 1.0, 1.0), [0.0, 1.0, 0.0]);
        assert_eq!(hsv(240.0, 1.0, 0.5), [0.0, 0.0, 0.5]);
        assert_eq!(hsv(-60.0, 0.0, 0.25), [0.25, 0.25, 0.25]);
    }
}
