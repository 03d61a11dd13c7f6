//! Letterboxing as YOLOv5 does it: resize keeping the aspect ratio, pad with grey 114 to the
//! target size. Boxes map between original and letterboxed pixels; the model's input (0..1 floats)
//! is made by `mistnet::model::image_to_tensor`.

use std::path::Path;

use image::{Rgb, RgbImage};

/// The grey YOLOv5 pads with.
pub const PAD_VALUE: u8 = 114;

/// How an image was placed into the letterboxed canvas.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Letterbox {
    /// Scale from original to letterboxed pixels.
    pub ratio: f32,
    /// Left and top padding in letterboxed pixels.
    pub pad: (f32, f32),
    /// Original width and height.
    pub original: (u32, u32),
    /// Letterboxed width and height.
    pub size: (u32, u32),
}

impl Letterbox {
    /// Maps an `[x1, y1, x2, y2]` box in letterboxed pixels back to original pixels, clipped.
    pub fn to_original(&self, b: [f32; 4]) -> [f32; 4] {
        let (w, h) = (self.original.0 as f32, self.original.1 as f32);
        let x = |v: f32| ((v - self.pad.0) / self.ratio).clamp(0.0, w);
        let y = |v: f32| ((v - self.pad.1) / self.ratio).clamp(0.0, h);
        [x(b[0]), y(b[1]), x(b[2]), y(b[3])]
    }

    /// Maps an `[x1, y1, x2, y2]` box in original pixels into letterboxed pixels.
    pub fn to_letterboxed(&self, b: [f32; 4]) -> [f32; 4] {
        [
            b[0] * self.ratio + self.pad.0,
            b[1] * self.ratio + self.pad.1,
            b[2] * self.ratio + self.pad.0,
            b[3] * self.ratio + self.pad.1,
        ]
    }
}

impl Letterbox {
    /// The geometry [`letterbox`] uses for an image of `original` (width, height) pixels in a
    /// `size`×`size` canvas. It depends on the two sizes alone, so whoever knows an image's size
    /// (the trainer reading the feature store) places its boxes exactly as the edge did.
    /// `original` must be at least 1×1.
    pub fn fit(original: (u32, u32), size: u32) -> Letterbox {
        let (w0, h0) = original;
        let ratio = (size as f32 / w0 as f32).min(size as f32 / h0 as f32);
        let new_w = ((w0 as f32 * ratio).round() as u32).clamp(1, size);
        let new_h = ((h0 as f32 * ratio).round() as u32).clamp(1, size);
        let dw = (size - new_w) as f32 / 2.0;
        let dh = (size - new_h) as f32 / 2.0;
        let left = (dw - 0.1).round();
        let top = (dh - 0.1).round();
        Letterbox { ratio, pad: (left, top), original, size: (size, size) }
    }

    /// Width and height of the resized image inside the canvas.
    pub fn content(&self) -> (u32, u32) {
        let (w0, h0) = self.original;
        let (size_w, size_h) = self.size;
        (((w0 as f32 * self.ratio).round() as u32).clamp(1, size_w), ((h0 as f32 * self.ratio).round() as u32).clamp(1, size_h))
    }
}

/// Resizes `img` into a `size`×`size` canvas keeping its aspect ratio, padding evenly with 114
/// (YOLOv5's `letterbox(..., auto=False)`; the odd pixel of padding goes right/bottom).
pub fn letterbox(img: &RgbImage, size: u32) -> (RgbImage, Letterbox) {
    let info = Letterbox::fit(img.dimensions(), size);
    let (new_w, new_h) = info.content();
    let resized = if (new_w, new_h) == img.dimensions() {
        img.clone()
    } else {
        crate::resize::resize_triangle(img, new_w, new_h)
    };
    let mut canvas = RgbImage::from_pixel(size, size, Rgb([PAD_VALUE; 3]));
    image::imageops::replace(&mut canvas, &resized, info.pad.0 as i64, info.pad.1 as i64);
    (canvas, info)
}

/// Reads an image file as RGB, with the path in the error.
pub fn read_rgb(path: &Path) -> Result<RgbImage, String> {
    image::open(path).map(|i| i.to_rgb8()).map_err(|e| format!("cannot read image {}: {e}", path.display()))
}

/// File extensions read as images.
pub const IMAGE_EXTENSIONS: [&str; 6] = ["jpg", "jpeg", "png", "bmp", "webp", "jpe"];

/// Whether `path` has an image extension.
pub fn is_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}
