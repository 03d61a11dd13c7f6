//! `image::imageops::resize(img, w, h, FilterType::Triangle)` for RGB images, computed the same way
//! (the same weights, the same f32 sums in the same order, the same rounding: the same bytes) but
//! on rows of plain values instead of through image's per-pixel generic access, which made it a
//! third of the edge's per-image time (BENCHMARKS.md). The letterbox of every image goes through it,
//! at the edge and in the cloud.

use image::RgbImage;

/// For each output index along one axis: the first source index and the normalised weights.
fn taps(src: u32, dst: u32) -> Vec<(usize, Vec<f32>)> {
    let ratio = src as f32 / dst as f32;
    let sratio = if ratio < 1.0 { 1.0 } else { ratio };
    let support = sratio; // the triangle filter's support is 1
    (0..dst)
        .map(|out| {
            let input = (out as f32 + 0.5) * ratio;
            let left = ((input - support).floor() as i64).clamp(0, src as i64 - 1);
            let right = ((input + support).ceil() as i64).clamp(left + 1, src as i64);
            let input = input - 0.5;
            let mut ws: Vec<f32> = (left..right).map(|i| triangle((i as f32 - input) / sratio)).collect();
            let sum = ws.iter().fold(0.0f32, |s, &w| s + w);
            ws.iter_mut().for_each(|w| *w /= sum);
            (left as usize, ws)
        })
        .collect()
}

/// `v.round() as u8` for `v` in 0..=255 (half away from zero), without the call to `roundf` that
/// `round` is on baseline x86-64. `v − ⌊v⌋` is exact here.
fn round_byte(v: f32) -> u8 {
    let whole = v as u32;
    (whole + (v - whole as f32 >= 0.5) as u32) as u8
}

fn triangle(x: f32) -> f32 {
    if x.abs() < 1.0 { 1.0 - x.abs() } else { 0.0 }
}

/// `img` resized to `w × h` with the triangle (bilinear) filter, antialiased when shrinking.
pub fn resize_triangle(img: &RgbImage, w: u32, h: u32) -> RgbImage {
    let (sw, sh) = img.dimensions();
    if (sw, sh) == (w, h) || sw == 0 || sh == 0 {
        return image::imageops::resize(img, w, h, image::imageops::FilterType::Triangle);
    }
    let src = img.as_raw();
    let row = sw as usize * 3;
    // Vertical pass first, as image does: output rows of f32 over the source width.
    let mut tall = vec![0f32; h as usize * row];
    for ((left, ws), dst) in taps(sh, h).iter().zip(tall.chunks_mut(row)) {
        for (i, &wt) in ws.iter().enumerate() {
            let line = &src[(left + i) * row..(left + i + 1) * row];
            for (d, &s) in dst.iter_mut().zip(line) {
                *d += s as f32 * wt;
            }
        }
    }
    // Horizontal pass, rounded to bytes.
    let columns = taps(sw, w);
    let mut out = vec![0u8; h as usize * w as usize * 3];
    for (line, dst) in tall.chunks(row).zip(out.chunks_mut(w as usize * 3)) {
        for ((left, ws), px) in columns.iter().zip(dst.chunks_mut(3)) {
            let mut t = [0f32; 3];
            for (i, &wt) in ws.iter().enumerate() {
                let p = &line[(left + i) * 3..(left + i) * 3 + 3];
                t[0] += p[0] * wt;
                t[1] += p[1] * wt;
                t[2] += p[2] * wt;
            }
            for (c, v) in px.iter_mut().zip(t) {
                *c = round_byte(v.clamp(0.0, 255.0));
            }
        }
    }
    RgbImage::from_raw(w, h, out).expect("w × h × 3 bytes")
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn bytes_round_half_away_from_zero() {
        let edges = [0.0, 0.5, 1.5, 2.5, 254.5, 255.0, 0.499_999_97, 127.499_99, 127.500_01];
        for v in (0..=2_550_000).map(|i| i as f32 / 10_000.0).chain(edges) {
            assert_eq!(round_byte(v), v.round() as u8, "{v}");
        }
    }

    /// Byte for byte what image computes, shrinking and enlarging, at odd sizes.
    #[test]
    fn resize_is_images_triangle_resize() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        for (sw, sh, w, h) in [(1024, 768, 640, 480), (480, 640, 240, 320), (37, 53, 128, 96), (300, 200, 299, 201), (5, 3, 1, 1), (1, 1, 7, 4)] {
            let img = RgbImage::from_fn(sw, sh, |_, _| image::Rgb([rng.random(), rng.random(), rng.random()]));
            let want = image::imageops::resize(&img, w, h, image::imageops::FilterType::Triangle);
            assert!(resize_triangle(&img, w, h) == want, "{sw}×{sh} → {w}×{h}");
        }
    }
}
