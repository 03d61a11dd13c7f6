//! The model's input: an RGB image as planar f32 values in 0..1, as YOLOv5 feeds it.

use candle_core::{Device, Tensor};
use image::RgbImage;

/// An RGB image as a `[1, 3, H, W]` f32 tensor with values in 0..1.
pub fn image_to_tensor(img: &RgbImage, device: &Device) -> candle_core::Result<Tensor> {
    let (w, h) = img.dimensions();
    let (w, h) = (w as usize, h as usize);
    let mut planar = vec![0f32; 3 * h * w];
    for (i, px) in img.pixels().enumerate() {
        for c in 0..3 {
            planar[c * h * w + i] = px.0[c] as f32 / 255.0;
        }
    }
    Tensor::from_vec(planar, (1, 3, h, w), device)
}
