//! The two image sets of an evaluation: the held-out images the attacks are scored on
//! (embedded photos or a directory, plus private-domain synthetic images) and the attacker's
//! auxiliary images (public-domain synthetic images and random crops of other photos), disjoint
//! by construction. Every image is brought to `imgsz × imgsz` by letterboxing, as edges do.

use std::path::Path;

use candle_core::{Device, Tensor};
use image::RgbImage;
use image::imageops::FilterType;
use mistnet::data::letterbox::{is_image, letterbox, read_rgb};
use mistnet::model::image_to_tensor;
use mistnet::data::synth::{self, Domain};
use rand::Rng;

use super::PrivacyError;
use super::init::stream;
use super::photos;

/// Named images, all `imgsz × imgsz`.
#[derive(Debug, Clone)]
pub struct ImageSet {
    pub names: Vec<String>,
    pub images: Vec<RgbImage>,
}

impl ImageSet {
    pub fn len(&self) -> usize {
        self.images.len()
    }

    pub fn is_empty(&self) -> bool {
        self.images.is_empty()
    }

    /// The images as one `[N, 3, imgsz, imgsz]` tensor in 0..1.
    pub fn tensor(&self, device: &Device) -> Result<Tensor, PrivacyError> {
        let parts = self.images.iter().map(|i| image_to_tensor(i, device)).collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Tensor::cat(&parts, 0)?)
    }

    fn push(&mut self, name: String, image: RgbImage) {
        self.names.push(name);
        self.images.push(image);
    }
}

fn decode_embedded(name: &str, bytes: &[u8]) -> Result<RgbImage, PrivacyError> {
    image::load_from_memory(bytes)
        .map(|i| i.to_rgb8())
        .map_err(|e| PrivacyError::Image { path: format!("embedded photo {name}"), message: e.to_string() })
}

/// The held-out set: the images in `dir` (sorted by name) or, without one, the embedded
/// held-out photos; then `synthetic` private-domain synthetic images.
pub fn heldout(dir: Option<&Path>, synthetic: usize, imgsz: u32, seed: u64) -> Result<ImageSet, PrivacyError> {
    let mut set = ImageSet { names: Vec::new(), images: Vec::new() };
    match dir {
        Some(dir) => {
            for (name, img) in read_dir_images(dir)? {
                set.push(name, letterbox(&img, imgsz).0);
            }
        }
        None => {
            for (name, bytes) in photos::HELDOUT {
                set.push(name.to_string(), letterbox(&decode_embedded(name, bytes)?, imgsz).0);
            }
        }
    }
    let mut rng = stream(seed, "heldout-synthetic");
    for i in 0..synthetic {
        let drawn = synth::render(Domain::Private, &[1.0; 5], imgsz, &mut rng)
            .map_err(|e| PrivacyError::Config(e.to_string()))?;
        set.push(format!("synthetic-{i}"), drawn.image);
    }
    if set.is_empty() {
        return Err(PrivacyError::Config("no held-out images: give --images DIR or --synthetic N > 0".into()));
    }
    Ok(set)
}

/// The images of `dir`, sorted by name, with their file stems.
fn read_dir_images(dir: &Path) -> Result<Vec<(String, RgbImage)>, PrivacyError> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| PrivacyError::Image { path: dir.display().to_string(), message: format!("cannot list: {e}") })?;
    let mut paths: Vec<_> = entries.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| is_image(p)).collect();
    paths.sort();
    if paths.is_empty() {
        return Err(PrivacyError::Image { path: dir.display().to_string(), message: "holds no images".into() });
    }
    paths
        .into_iter()
        .map(|p| {
            let img = read_rgb(&p).map_err(|message| PrivacyError::Image { path: p.display().to_string(), message })?;
            Ok((p.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default(), img))
        })
        .collect()
}

/// The attacker's auxiliary set: `count` images, alternately a public-domain synthetic image and
/// a random square crop (a quarter to all of the short side, flipped half the time) of a photo:
/// one of the embedded auxiliary photos or, every other crop when `extra` is given, one of the
/// photos there (e.g. the cloud's public split), so that however many `extra` holds, the
/// embedded photos keep half the crops.
pub fn auxiliary(count: usize, extra: Option<&Path>, imgsz: u32, seed: u64) -> Result<ImageSet, PrivacyError> {
    let embedded = photos::AUX.iter().map(|(n, b)| Ok((n.to_string(), decode_embedded(n, b)?))).collect::<Result<Vec<_>, PrivacyError>>()?;
    let extra = match extra {
        Some(dir) => read_dir_images(dir)?,
        None => Vec::new(),
    };
    let mut rng = stream(seed, "auxiliary");
    let mut set = ImageSet { names: Vec::new(), images: Vec::new() };
    for i in 0..count {
        if i % 2 == 0 {
            let drawn = synth::render(Domain::Public, &[1.0; 5], imgsz, &mut rng).map_err(|e| PrivacyError::Config(e.to_string()))?;
            set.push(format!("aux-synthetic-{i}"), drawn.image);
        } else {
            let photos = if !extra.is_empty() && i % 4 == 3 { &extra } else { &embedded };
            let (name, photo) = &photos[rng.random_range(0..photos.len())];
            let side = photo.width().min(photo.height());
            let crop = rng.random_range(side / 4..=side);
            let (x, y) = (rng.random_range(0..=photo.width() - crop), rng.random_range(0..=photo.height() - crop));
            let cropped = image::imageops::crop_imm(photo, x, y, crop, crop).to_image();
            let mut img = image::imageops::resize(&cropped, imgsz, imgsz, FilterType::Triangle);
            if rng.random_bool(0.5) {
                image::imageops::flip_horizontal_in_place(&mut img);
            }
            set.push(format!("aux-{name}-{i}"), img);
        }
    }
    Ok(set)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extra_photos_take_every_other_crop_and_the_embedded_ones_keep_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        for k in 0..20 {
            RgbImage::from_pixel(40, 30, image::Rgb([k * 10, 0, 0])).save(dir.path().join(format!("public-{k:02}.png"))).unwrap();
        }
        let set = auxiliary(16, Some(dir.path()), 32, 0).unwrap();
        for (i, name) in set.names.iter().enumerate() {
            let want = match i % 4 {
                0 | 2 => "aux-synthetic-",
                1 => "aux-",
                _ => "aux-public-",
            };
            assert!(name.starts_with(want), "image {i} is {name}");
            if i % 4 == 1 {
                assert!(!name.starts_with("aux-public-"), "image {i} is {name}: an embedded photo's crop");
            }
            assert_eq!(set.images[i].dimensions(), (32, 32));
        }
        let empty = tempfile::tempdir().unwrap();
        assert!(auxiliary(4, Some(empty.path()), 32, 0).unwrap_err().to_string().contains("holds no images"));
    }
}
