//! Mean squared error and PSNR as scikit-image's `mean_squared_error` and
//! `peak_signal_noise_ratio(a, b, data_range=...)` compute them (float64).

use super::image::{ImageF32, ImageQualityError, check_same_shape};

/// The mean over all samples (pixels and channels) of `(a - b)²`.
pub fn mse(a: &ImageF32, b: &ImageF32) -> Result<f64, ImageQualityError> {
    check_same_shape(a, b)?;
    let total: f64 = a.data().iter().zip(b.data()).map(|(&p, &q)| (f64::from(p) - f64::from(q)).powi(2)).sum();
    Ok(total / a.data().len() as f64)
}

/// `10 · log10(data_range² / MSE)` in dB; `f64::INFINITY` for identical images.
pub fn psnr(a: &ImageF32, b: &ImageF32, data_range: f64) -> Result<f64, ImageQualityError> {
    if !(data_range.is_finite() && data_range > 0.0) {
        return Err(ImageQualityError::Config(format!("data_range must be positive, got {data_range}")));
    }
    let err = mse(a, b)?;
    Ok(10.0 * (data_range * data_range / err).log10())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn psnr_of_a_known_error() {
        let a = ImageF32::from_u8(2, 1, 1, &[0, 0]).unwrap();
        let b = ImageF32::from_u8(2, 1, 1, &[10, 0]).unwrap();
        assert_eq!(mse(&a, &b).unwrap(), 50.0);
        let expected = 10.0 * (255.0f64 * 255.0 / 50.0).log10();
        assert_eq!(psnr(&a, &b, 255.0).unwrap(), expected);
        assert_eq!(psnr(&a, &a, 255.0).unwrap(), f64::INFINITY);
        assert!(psnr(&a, &b, 0.0).is_err());
    }
}
