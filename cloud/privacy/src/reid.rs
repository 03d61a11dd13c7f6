//! Re-identification: can a reconstruction tell *which* held-out image it came from? For each
//! reconstructed image, every one of the N held-out originals is ranked by its similarity to the
//! reconstruction; a hit is the true original ranked first (top-1) or among the first five
//! (top-5). At chance a reconstruction names its original with probability 1/N (5/N), so the
//! hits of the M reconstructions against chance are a binomial test (M trials), reported as its
//! one-sided p-value.
//!
//! Similarity is the negative mean squared difference of 16×16 area-averaged copies: a blurred
//! reconstruction still carries an image's layout and colours, and the low-pass comparison does
//! not favour originals with little fine detail, as full-resolution errors would.

use image::RgbImage;
use serde::Serialize;

/// Side of the thumbnails that are compared.
const THUMBNAIL: u32 = 16;

/// How often reconstructions pick out their own original among all held-out originals.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Reidentification {
    /// Reconstructions ranked (the binomial test's trials).
    pub trials: usize,
    /// Held-out originals, the candidates of each ranking.
    pub images: usize,
    pub top1: usize,
    pub top5: usize,
    /// Hit rates at chance: 1/N and min(5, N)/N.
    pub chance_top1: f64,
    pub chance_top5: f64,
    /// P(at least `top1` hits) at chance, a one-sided binomial test.
    pub p_top1: f64,
    pub p_top5: f64,
}

/// The area-averaged `THUMBNAIL`² RGB copy of `img`, as floats.
fn thumbnail(img: &RgbImage) -> Vec<f32> {
    let (w, h) = img.dimensions();
    let mut sums = vec![0f32; (THUMBNAIL * THUMBNAIL * 3) as usize];
    let mut counts = vec![0f32; (THUMBNAIL * THUMBNAIL) as usize];
    for (x, y, p) in img.enumerate_pixels() {
        let cell = ((y * THUMBNAIL / h) * THUMBNAIL + x * THUMBNAIL / w) as usize;
        counts[cell] += 1.0;
        for c in 0..3 {
            sums[cell * 3 + c] += f32::from(p[c]);
        }
    }
    sums.iter().enumerate().map(|(i, s)| s / counts[i / 3].max(1.0)).collect()
}

fn distance(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum()
}

/// Ranks every original against each reconstruction: `reconstructions[k]` is of
/// `originals[of[k]]` (there may be fewer reconstructions than originals).
pub fn reidentify(originals: &[RgbImage], of: &[usize], reconstructions: &[RgbImage]) -> Reidentification {
    assert_eq!(of.len(), reconstructions.len(), "one original index per reconstruction");
    let (n, trials) = (originals.len(), reconstructions.len());
    let thumbs: Vec<Vec<f32>> = originals.iter().map(thumbnail).collect();
    let (mut top1, mut top5) = (0, 0);
    for (&i, recon) in of.iter().zip(reconstructions) {
        let r = thumbnail(recon);
        let own = distance(&r, &thumbs[i]);
        // Rank of the true original; ties count against the attacker.
        let rank = thumbs.iter().enumerate().filter(|&(j, t)| j != i && distance(&r, t) <= own).count();
        top1 += usize::from(rank == 0);
        top5 += usize::from(rank < 5);
    }
    let chance_top1 = 1.0 / n.max(1) as f64;
    let chance_top5 = n.min(5) as f64 / n.max(1) as f64;
    Reidentification {
        trials,
        images: n,
        top1,
        top5,
        chance_top1,
        chance_top5,
        p_top1: binomial_tail(trials, top1, chance_top1),
        p_top5: binomial_tail(trials, top5, chance_top5),
    }
}

/// P(X ≥ k) for X ~ Binomial(n, p).
pub fn binomial_tail(n: usize, k: usize, p: f64) -> f64 {
    if k == 0 {
        return 1.0;
    }
    if p >= 1.0 {
        return 1.0;
    }
    // Terms from the log of the binomial pmf, summed from k to n.
    let ln_choose = |n: usize, i: usize| -> f64 { (1..=i).map(|j| ((n - i + j) as f64 / j as f64).ln()).sum() };
    let tail: f64 = (k..=n).map(|i| (ln_choose(n, i) + i as f64 * p.ln() + (n - i) as f64 * (1.0 - p).ln()).exp()).sum();
    tail.min(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binomial_tail_matches_exact_values() {
        // P(X ≥ 1), n = 4, p = 1/2: 15/16.
        assert!((binomial_tail(4, 1, 0.5) - 15.0 / 16.0).abs() < 1e-12);
        // P(X ≥ 3), n = 32, p = 1/32: sum of comb(32, i)·p^i·(1 − p)^(32 − i) for i ≥ 3 = 0.077343.
        assert!((binomial_tail(32, 3, 1.0 / 32.0) - 0.077_343).abs() < 1e-6, "{}", binomial_tail(32, 3, 1.0 / 32.0));
        assert_eq!(binomial_tail(32, 0, 0.1), 1.0);
        assert!((binomial_tail(10, 10, 0.5) - 0.5f64.powi(10)).abs() < 1e-15);
    }

    fn flat(v: [u8; 3]) -> RgbImage {
        RgbImage::from_pixel(32, 32, image::Rgb(v))
    }

    #[test]
    fn exact_reconstructions_are_all_reidentified_and_a_constant_guess_is_not() {
        let originals: Vec<RgbImage> = (0..8u8).map(|i| flat([i * 30, 255 - i * 30, i * 10])).collect();
        let all: Vec<usize> = (0..8).collect();
        let exact = reidentify(&originals, &all, &originals);
        assert_eq!((exact.top1, exact.top5), (8, 8));
        assert!(exact.p_top1 < 1e-6 && exact.p_top5 < 0.05);
        // One grey guess for every image ranks each original only by chance; ties count as misses.
        let guess = vec![flat([128; 3]); 8];
        let blind = reidentify(&originals, &all, &guess);
        assert!(blind.top1 <= 1, "{blind:?}");
        assert!(blind.p_top1 > 0.05 && blind.p_top5 > 0.05, "{blind:?}");
        // Three exact reconstructions among eight candidates: 3 trials, all hits.
        let some = reidentify(&originals, &[6, 1, 4], &[originals[6].clone(), originals[1].clone(), originals[4].clone()]);
        assert_eq!((some.trials, some.images, some.top1), (3, 8, 3));
        assert!((some.p_top1 - (1.0f64 / 8.0).powi(3)).abs() < 1e-12);
    }
}
