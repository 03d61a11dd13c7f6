//! The in-memory form every dataset format loads into: a [`Sample`] is an image path, its size and
//! its [`Label`]s, boxes in the YOLO convention (class, normalized centre and size).

use std::path::{Path, PathBuf};

use super::error::{BadSample, Location};
use super::letterbox::Letterbox;

/// One object: a class index and a box in the YOLO convention, normalized to the image size
/// (centre `cx, cy` and size `w, h`, all in `[0, 1]`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Label {
    pub class: usize,
    pub cx: f32,
    pub cy: f32,
    pub w: f32,
    pub h: f32,
}

/// One image and its objects.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub image_path: PathBuf,
    /// Width and height of the image file in pixels.
    pub size: (u32, u32),
    pub labels: Vec<Label>,
    /// The image's id in its dataset file: COCO `images[].id`; `None` for YOLO-format data.
    pub image_id: Option<u64>,
}

impl Label {
    /// Checks and builds a label: `class < nc`, every coordinate in `[0, 1]` (the check Ultralytics
    /// applies to label files) and a non-empty box. `file`/`at` name the place for the error.
    pub fn checked(class: u64, xywh: [f64; 4], nc: usize, file: &Path, at: Location) -> Result<Label, BadSample> {
        const FIELDS: [&str; 4] = ["cx", "cy", "w", "h"];
        for (i, (&value, field)) in xywh.iter().zip(FIELDS).enumerate() {
            let (ok, range) = if i < 2 { ((0.0..=1.0).contains(&value), "[0, 1]") } else { (value > 0.0 && value <= 1.0, "(0, 1]") };
            if !ok {
                return Err(BadSample::OutOfRange { file: file.to_path_buf(), at, field, value, range });
            }
        }
        if class >= nc as u64 {
            let known = format!("the dataset has {nc} classes, 0..{nc}");
            return Err(BadSample::UnknownClass { file: file.to_path_buf(), at, class, known });
        }
        let [cx, cy, w, h] = xywh.map(|v| v as f32);
        Ok(Label { class: class as usize, cx, cy, w, h })
    }

    /// The box as `[x1, y1, x2, y2]` in pixels of a `width`×`height` image.
    pub fn to_pixels(&self, (width, height): (u32, u32)) -> [f32; 4] {
        let (w, h) = (width as f32, height as f32);
        [(self.cx - self.w / 2.0) * w, (self.cy - self.h / 2.0) * h, (self.cx + self.w / 2.0) * w, (self.cy + self.h / 2.0) * h]
    }

    /// The label from an `[x1, y1, x2, y2]` pixel box of a `width`×`height` image.
    pub fn from_pixels(class: usize, b: [f32; 4], (width, height): (u32, u32)) -> Label {
        let (w, h) = (width as f32, height as f32);
        Label { class, cx: (b[0] + b[2]) / 2.0 / w, cy: (b[1] + b[3]) / 2.0 / h, w: (b[2] - b[0]) / w, h: (b[3] - b[1]) / h }
    }

    /// This label of the original image, normalized to the letterboxed canvas `lb` describes
    /// (what the model sees after [`letterbox`](super::letterbox::letterbox)).
    pub fn to_letterboxed(&self, lb: &Letterbox) -> Label {
        Label::from_pixels(self.class, lb.to_letterboxed(self.to_pixels(lb.original)), lb.size)
    }

    /// The label as a YOLO label-file line: `class cx cy w h`.
    pub fn to_yolo_line(&self) -> String {
        format!("{} {:.6} {:.6} {:.6} {:.6}", self.class, self.cx, self.cy, self.w, self.h)
    }
}

impl Sample {
    /// The class with the most objects in this image (ties go to the smaller class index), or
    /// `None` for an image without objects.
    pub fn dominant_class(&self) -> Option<usize> {
        let mut counts: Vec<usize> = Vec::new();
        for l in &self.labels {
            if counts.len() <= l.class {
                counts.resize(l.class + 1, 0);
            }
            counts[l.class] += 1;
        }
        let best = *counts.iter().max()?;
        counts.iter().position(|&c| c == best)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::letterbox::letterbox;
    use image::RgbImage;

    fn at() -> (PathBuf, Location) {
        (PathBuf::from("l.txt"), Location::Line(3))
    }

    #[test]
    fn checked_accepts_valid_and_names_the_bad_field() {
        let (f, at) = at();
        let l = Label::checked(2, [0.5, 0.25, 1.0, 0.1], 3, &f, at).unwrap();
        assert_eq!(l, Label { class: 2, cx: 0.5, cy: 0.25, w: 1.0, h: 0.1 });
        let e = Label::checked(0, [0.5, 1.2, 0.1, 0.1], 3, &f, at).unwrap_err();
        assert_eq!(e.to_string(), "l.txt, line 3: cy = 1.2 is outside [0, 1]");
        let e = Label::checked(0, [0.5, 0.5, 0.0, 0.1], 3, &f, at).unwrap_err();
        assert_eq!(e.to_string(), "l.txt, line 3: w = 0 is outside (0, 1]");
        assert!(matches!(Label::checked(0, [f64::NAN, 0.5, 0.1, 0.1], 3, &f, at), Err(BadSample::OutOfRange { field: "cx", .. })));
        let e = Label::checked(3, [0.5, 0.5, 0.1, 0.1], 3, &f, at).unwrap_err();
        assert_eq!(e.to_string(), "l.txt, line 3: unknown class 3 (the dataset has 3 classes, 0..3)");
    }

    #[test]
    fn letterboxed_label_follows_the_letterbox() {
        // 200x100 into 128: ratio 0.64, content 128x64, 32 px of padding on top.
        let (_, lb) = letterbox(&RgbImage::new(200, 100), 128);
        let l = Label { class: 1, cx: 0.25, cy: 0.5, w: 0.5, h: 1.0 }.to_letterboxed(&lb);
        assert_eq!(l.class, 1);
        for (got, want) in [(l.cx, 0.25), (l.cy, 0.5), (l.w, 0.5), (l.h, 0.5)] {
            assert!((got - want).abs() < 1e-6, "{l:?}");
        }
        // The box's top-left corner sits at the padding.
        let b = l.to_pixels(lb.size);
        assert!((b[1] - 32.0).abs() < 1e-4 && b[0].abs() < 1e-4, "{b:?}");
    }

    #[test]
    fn dominant_class_counts_objects_and_breaks_ties_low() {
        let lab = |class| Label { class, cx: 0.5, cy: 0.5, w: 0.1, h: 0.1 };
        let s = |labels| Sample { image_path: "x.png".into(), size: (10, 10), labels, image_id: None };
        assert_eq!(s(vec![lab(3), lab(1), lab(3)]).dominant_class(), Some(3));
        assert_eq!(s(vec![lab(4), lab(2)]).dominant_class(), Some(2));
        assert_eq!(s(vec![]).dominant_class(), None);
    }
}
