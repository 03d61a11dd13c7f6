//! SSIM exactly as scikit-image 0.26 `skimage.metrics.structural_similarity` computes it.
//!
//! [`SsimConfig::default`] is the setting, Wang et al. (2004):
//! `structural_similarity(a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
//! data_range=255)` — an 11×11 Gaussian window (σ 1.5, truncated at 3.5σ: radius 5), population
//! covariance, K1 = 0.01, K2 = 0.03. [`SsimConfig::skimage_default`] is the call with no options on
//! 8-bit images: a 7×7 uniform window with sample covariance (49/48).
//!
//! scikit-image filters the whole image with reflect padding and then averages the SSIM map over
//! the interior only (a border of the window radius is cropped), so padding never reaches the
//! result: this module filters the valid window positions only, with a separable filter.
//! Multi-channel images give the plain mean of the per-channel SSIMs (`channel_axis=-1`).
//! All arithmetic is float64, as scikit-image does for 8-bit inputs.

use super::image::{ImageF32, ImageQualityError, check_same_shape};

/// The sliding window SSIM averages over.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SsimWindow {
    /// `gaussian_weights=True`: a Gaussian of standard deviation `sigma`, truncated at 3.5σ
    /// (scikit-image's choice), i.e. radius `int(3.5 * sigma + 0.5)`.
    Gaussian { sigma: f64 },
    /// `gaussian_weights=False`: a `size`×`size` box (odd size).
    Uniform { size: usize },
}

/// SSIM settings, named after scikit-image's arguments.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SsimConfig {
    pub window: SsimWindow,
    /// `use_sample_covariance`: scale (co)variances by N/(N-1), N the window's pixel count.
    pub sample_covariance: bool,
    /// The value range of the images (255 for 8-bit samples).
    pub data_range: f64,
    pub k1: f64,
    pub k2: f64,
}

/// scikit-image's truncation of the Gaussian window when `gaussian_weights=True`.
const GAUSSIAN_TRUNCATE: f64 = 3.5;

impl Default for SsimConfig {
    /// Wang et al. (2004): 11×11 Gaussian window, σ 1.5, population covariance, data range 255.
    fn default() -> Self {
        Self {
            window: SsimWindow::Gaussian { sigma: 1.5 },
            sample_covariance: false,
            data_range: 255.0,
            k1: 0.01,
            k2: 0.03,
        }
    }
}

impl SsimConfig {
    /// `structural_similarity(a, b)` with no options on 8-bit images: 7×7 uniform window,
    /// sample covariance, data range 255.
    pub fn skimage_default() -> Self {
        Self { window: SsimWindow::Uniform { size: 7 }, sample_covariance: true, ..Self::default() }
    }

    /// The 1-D filter taps (the 2-D window is their outer product).
    pub fn taps(&self) -> Result<Vec<f64>, ImageQualityError> {
        match self.window {
            SsimWindow::Gaussian { sigma } => {
                if !(sigma.is_finite() && sigma > 0.0) {
                    return Err(ImageQualityError::Config(format!("Gaussian sigma must be positive, got {sigma}")));
                }
                // scipy.ndimage._gaussian_kernel1d
                let radius = (GAUSSIAN_TRUNCATE * sigma + 0.5) as i64;
                let phi: Vec<f64> =
                    (-radius..=radius).map(|x| (-0.5 / (sigma * sigma) * (x * x) as f64).exp()).collect();
                let total: f64 = phi.iter().sum();
                Ok(phi.iter().map(|p| p / total).collect())
            }
            SsimWindow::Uniform { size } => {
                if size == 0 || size % 2 == 0 {
                    return Err(ImageQualityError::Config(format!("uniform window size must be odd, got {size}")));
                }
                Ok(vec![1.0 / size as f64; size])
            }
        }
    }
}

/// The SSIM of every valid window position of one channel (row-major, `width` × `height`).
#[derive(Debug, Clone, PartialEq)]
pub struct SsimMap {
    pub width: usize,
    pub height: usize,
    pub values: Vec<f64>,
}

impl SsimMap {
    /// The mean SSIM of this channel.
    pub fn mean(&self) -> f64 {
        self.values.iter().sum::<f64>() / self.values.len() as f64
    }
}

/// Mean SSIM of two images of the same shape: the mean over channels of each channel's mean SSIM.
pub fn ssim(a: &ImageF32, b: &ImageF32, config: &SsimConfig) -> Result<f64, ImageQualityError> {
    let per_channel = ssim_per_channel(a, b, config)?;
    Ok(per_channel.iter().sum::<f64>() / per_channel.len() as f64)
}

/// Mean SSIM of each channel.
pub fn ssim_per_channel(a: &ImageF32, b: &ImageF32, config: &SsimConfig) -> Result<Vec<f64>, ImageQualityError> {
    Ok(ssim_maps(a, b, config)?.iter().map(SsimMap::mean).collect())
}

/// The SSIM map over the valid window positions, one per channel.
pub fn ssim_maps(a: &ImageF32, b: &ImageF32, config: &SsimConfig) -> Result<Vec<SsimMap>, ImageQualityError> {
    check_same_shape(a, b)?;
    if !(config.data_range.is_finite() && config.data_range > 0.0) {
        return Err(ImageQualityError::Config(format!("data_range must be positive, got {}", config.data_range)));
    }
    let taps = config.taps()?;
    let (width, height, channels) = a.shape();
    if taps.len() > width || taps.len() > height {
        return Err(ImageQualityError::WindowTooLarge { window: taps.len(), width, height });
    }
    Ok((0..channels).map(|c| channel_map(&a.plane_f64(c), &b.plane_f64(c), width, height, &taps, config)).collect())
}

fn channel_map(x: &[f64], y: &[f64], width: usize, height: usize, taps: &[f64], config: &SsimConfig) -> SsimMap {
    let filter = |plane: &[f64]| filter_valid(plane, width, height, taps);
    let product = |p: &[f64], q: &[f64]| -> Vec<f64> { p.iter().zip(q).map(|(a, b)| a * b).collect() };
    let ux = filter(x);
    let uy = filter(y);
    let uxx = filter(&product(x, x));
    let uyy = filter(&product(y, y));
    let uxy = filter(&product(x, y));

    let np = (taps.len() * taps.len()) as f64;
    let cov_norm = if config.sample_covariance { np / (np - 1.0) } else { 1.0 };
    let c1 = (config.k1 * config.data_range).powi(2);
    let c2 = (config.k2 * config.data_range).powi(2);
    let values = (0..ux.len())
        .map(|i| {
            let (ux, uy) = (ux[i], uy[i]);
            let vx = cov_norm * (uxx[i] - ux * ux);
            let vy = cov_norm * (uyy[i] - uy * uy);
            let vxy = cov_norm * (uxy[i] - ux * uy);
            let a1 = 2.0 * ux * uy + c1;
            let a2 = 2.0 * vxy + c2;
            let b1 = ux * ux + uy * uy + c1;
            let b2 = vx + vy + c2;
            (a1 * a2) / (b1 * b2)
        })
        .collect();
    let k = taps.len() - 1;
    SsimMap { width: width - k, height: height - k, values }
}

/// Correlates a plane with the separable window `taps` ⊗ `taps` at the valid positions only:
/// the output is (width - k + 1) × (height - k + 1) for k taps.
fn filter_valid(plane: &[f64], width: usize, height: usize, taps: &[f64]) -> Vec<f64> {
    let k = taps.len();
    let (out_w, out_h) = (width - k + 1, height - k + 1);
    // Vertical pass first (scipy filters axis 0, then axis 1).
    let mut vertical = vec![0.0; out_h * width];
    for oy in 0..out_h {
        let row = &mut vertical[oy * width..(oy + 1) * width];
        for (t, &w) in taps.iter().enumerate() {
            let src = &plane[(oy + t) * width..(oy + t + 1) * width];
            for (acc, &v) in row.iter_mut().zip(src) {
                *acc += w * v;
            }
        }
    }
    let mut out = vec![0.0; out_h * out_w];
    for oy in 0..out_h {
        let src = &vertical[oy * width..(oy + 1) * width];
        for (ox, acc) in out[oy * out_w..(oy + 1) * out_w].iter_mut().enumerate() {
            *acc = taps.iter().zip(&src[ox..ox + k]).map(|(w, v)| w * v).sum();
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gray(width: usize, height: usize, f: impl Fn(usize, usize) -> f32) -> ImageF32 {
        let data = (0..height).flat_map(|y| (0..width).map(move |x| (x, y))).map(|(x, y)| f(x, y)).collect();
        ImageF32::new(width, height, 1, data).unwrap()
    }

    #[test]
    fn gaussian_taps_are_scipys_11_tap_kernel() {
        let taps = SsimConfig::default().taps().unwrap();
        assert_eq!(taps.len(), 11);
        assert!((taps.iter().sum::<f64>() - 1.0).abs() < 1e-15);
        // x = np.arange(-5, 6); p = np.exp(-0.5 / 1.5**2 * x**2); (p / p.sum())[5]
        assert!((taps[5] - 0.26601172486179436).abs() < 1e-15, "{}", taps[5]);
    }

    #[test]
    fn identical_images_score_one_and_constant_offset_scores_below() {
        let a = gray(20, 13, |x, y| ((x * 37 + y * 11) % 256) as f32);
        assert!((ssim(&a, &a, &SsimConfig::default()).unwrap() - 1.0).abs() < 1e-12);
        let b = gray(20, 13, |x, y| ((x * 37 + y * 11) % 256) as f32 * 0.5 + 40.0);
        let s = ssim(&a, &b, &SsimConfig::default()).unwrap();
        assert!(s < 0.99 && s > 0.0, "{s}");
    }

    #[test]
    fn map_covers_valid_positions_only() {
        let a = gray(16, 12, |x, y| (x * y) as f32);
        let maps = ssim_maps(&a, &a, &SsimConfig::default()).unwrap();
        assert_eq!((maps[0].width, maps[0].height), (6, 2));
        let maps = ssim_maps(&a, &a, &SsimConfig::skimage_default()).unwrap();
        assert_eq!((maps[0].width, maps[0].height), (10, 6));
    }

    #[test]
    fn bad_inputs_are_errors() {
        let a = gray(10, 20, |_, _| 1.0);
        let b = gray(20, 10, |_, _| 1.0);
        assert!(matches!(ssim(&a, &b, &SsimConfig::default()), Err(ImageQualityError::ShapeMismatch { .. })));
        assert_eq!(
            ssim(&a, &a, &SsimConfig::default()),
            Err(ImageQualityError::WindowTooLarge { window: 11, width: 10, height: 20 })
        );
        let even = SsimConfig { window: SsimWindow::Uniform { size: 4 }, ..SsimConfig::default() };
        assert!(matches!(ssim(&b, &b, &even), Err(ImageQualityError::Config(_))));
    }
}
