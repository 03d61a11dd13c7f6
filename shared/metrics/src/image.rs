//! Images as the image-quality metrics ([`super::ssim`], [`super::psnr`]) take them: interleaved
//! height × width × channels samples on the scale of the metric's `data_range` (0..255 for
//! 8-bit images), and the errors those metrics report.

use image::{GrayImage, RgbImage};

/// Errors from the image-quality metrics.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ImageQualityError {
    #[error("image {width}x{height}x{channels} needs {expected} samples, got {got}")]
    SampleCount { width: usize, height: usize, channels: usize, expected: usize, got: usize },
    #[error("image has an empty dimension: {width}x{height}x{channels}")]
    Empty { width: usize, height: usize, channels: usize },
    #[error("images differ in shape: {a:?} vs {b:?} (width, height, channels)")]
    ShapeMismatch { a: (usize, usize, usize), b: (usize, usize, usize) },
    #[error("SSIM window {window}x{window} exceeds the image extent {width}x{height}")]
    WindowTooLarge { window: usize, width: usize, height: usize },
    #[error("invalid SSIM/PSNR setting: {0}")]
    Config(String),
}

/// An image as `f32` samples, row-major, channels interleaved (`data[(y * width + x) * channels + c]`).
#[derive(Debug, Clone, PartialEq)]
pub struct ImageF32 {
    width: usize,
    height: usize,
    channels: usize,
    data: Vec<f32>,
}

impl ImageF32 {
    /// Wraps samples laid out as height × width × channels.
    pub fn new(width: usize, height: usize, channels: usize, data: Vec<f32>) -> Result<Self, ImageQualityError> {
        if width == 0 || height == 0 || channels == 0 {
            return Err(ImageQualityError::Empty { width, height, channels });
        }
        let expected = width * height * channels;
        if data.len() != expected {
            return Err(ImageQualityError::SampleCount { width, height, channels, expected, got: data.len() });
        }
        Ok(Self { width, height, channels, data })
    }

    /// Converts 8-bit samples laid out as height × width × channels (values stay on 0..255).
    pub fn from_u8(width: usize, height: usize, channels: usize, data: &[u8]) -> Result<Self, ImageQualityError> {
        Self::new(width, height, channels, data.iter().map(|&v| f32::from(v)).collect())
    }

    /// An RGB image, values on 0..255.
    pub fn from_rgb(img: &RgbImage) -> Self {
        Self::from_u8(img.width() as usize, img.height() as usize, 3, img.as_raw())
            .expect("an RgbImage always holds width*height*3 samples")
    }

    /// A greyscale image, values on 0..255.
    pub fn from_gray(img: &GrayImage) -> Self {
        Self::from_u8(img.width() as usize, img.height() as usize, 1, img.as_raw())
            .expect("a GrayImage always holds width*height samples")
    }

    pub fn width(&self) -> usize {
        self.width
    }

    pub fn height(&self) -> usize {
        self.height
    }

    pub fn channels(&self) -> usize {
        self.channels
    }

    /// The interleaved samples.
    pub fn data(&self) -> &[f32] {
        &self.data
    }

    /// (width, height, channels).
    pub fn shape(&self) -> (usize, usize, usize) {
        (self.width, self.height, self.channels)
    }

    /// Channel `c` as a float64 plane (row-major, width × height).
    pub(crate) fn plane_f64(&self, c: usize) -> Vec<f64> {
        self.data.iter().skip(c).step_by(self.channels).map(|&v| f64::from(v)).collect()
    }
}

/// Checks that two images can be compared sample by sample.
pub(crate) fn check_same_shape(a: &ImageF32, b: &ImageF32) -> Result<(), ImageQualityError> {
    if a.shape() != b.shape() {
        return Err(ImageQualityError::ShapeMismatch { a: a.shape(), b: b.shape() });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_wrong_sample_count_and_empty_images() {
        assert_eq!(
            ImageF32::new(2, 2, 3, vec![0.0; 11]),
            Err(ImageQualityError::SampleCount { width: 2, height: 2, channels: 3, expected: 12, got: 11 })
        );
        assert!(matches!(ImageF32::new(0, 2, 1, vec![]), Err(ImageQualityError::Empty { .. })));
    }

    #[test]
    fn planes_deinterleave_channels() {
        let img = ImageF32::from_u8(2, 1, 3, &[1, 2, 3, 4, 5, 6]).unwrap();
        assert_eq!(img.plane_f64(1), vec![2.0, 5.0]);
        let rgb = RgbImage::from_raw(2, 1, vec![1, 2, 3, 4, 5, 6]).unwrap();
        assert_eq!(ImageF32::from_rgb(&rgb), img);
    }
}
