//! COCO instances JSON (`images`, `annotations` with `bbox` `[x, y, w, h]` in pixels,
//! `categories`) read into YOLO-convention [`Sample`]s.
//!
//! Categories are sorted by `id` and numbered 0.. in that order (COCO's 80 categories have ids
//! 1..90 with gaps; classes here are contiguous); [`CocoDataset::category_ids`] maps them back, and
//! each [`Sample`] keeps its image's `id`, so results can be written with the file's own ids. Annotations with `iscrowd: 1` are left out and
//! counted, as Ultralytics' COCO-to-YOLO conversion does. A bad annotation makes its whole image a
//! bad sample; an annotation whose `image_id` is not in `images` is a bad sample of its own.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::dataset::{BadDataPolicy, LoadSummary, LoadedSplit, image_size};
use super::error::{BadSample, DataError, Location};
use super::label::{Label, Sample};

#[derive(Debug, Clone, Deserialize)]
struct CocoFile {
    images: Vec<CocoImage>,
    #[serde(default)]
    annotations: Vec<CocoAnnotation>,
    categories: Vec<CocoCategory>,
}

#[derive(Debug, Clone, Deserialize)]
struct CocoImage {
    id: u64,
    file_name: String,
    width: u32,
    height: u32,
}

#[derive(Debug, Clone, Deserialize)]
struct CocoAnnotation {
    id: u64,
    image_id: u64,
    category_id: u64,
    bbox: Vec<f64>,
    #[serde(default)]
    iscrowd: u8,
}

#[derive(Debug, Clone, Deserialize)]
struct CocoCategory {
    id: u64,
    name: String,
}

/// A COCO instances file and the directory its `file_name`s are relative to.
#[derive(Debug, Clone)]
pub struct CocoDataset {
    /// The JSON file.
    pub source: PathBuf,
    /// The directory image `file_name`s are resolved against.
    pub images_dir: PathBuf,
    /// Category names in class order (categories sorted by id).
    pub names: Vec<String>,
    /// Category ids in class order (ascending).
    category_ids: Vec<u64>,
    file: CocoFile,
    class_of: HashMap<u64, usize>,
}

impl CocoDataset {
    /// Reads and checks the structure of `json`; images are looked up under `images_dir`.
    pub fn open(json: &Path, images_dir: &Path) -> Result<Self, DataError> {
        let bad = |reason: String| DataError::Coco { path: json.to_path_buf(), reason };
        let text = std::fs::read_to_string(json).map_err(|e| DataError::io(json, e))?;
        let file: CocoFile = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
        let mut categories: Vec<&CocoCategory> = file.categories.iter().collect();
        categories.sort_by_key(|c| c.id);
        if categories.is_empty() {
            return Err(bad("`categories` is empty".into()));
        }
        if let Some(w) = categories.windows(2).find(|w| w[0].id == w[1].id) {
            return Err(bad(format!("category id {} appears twice", w[0].id)));
        }
        let mut image_ids: Vec<u64> = file.images.iter().map(|i| i.id).collect();
        image_ids.sort_unstable();
        if let Some(w) = image_ids.windows(2).find(|w| w[0] == w[1]) {
            return Err(bad(format!("image id {} appears twice", w[0])));
        }
        let names = categories.iter().map(|c| c.name.clone()).collect();
        let category_ids = categories.iter().map(|c| c.id).collect();
        let class_of = categories.iter().enumerate().map(|(i, c)| (c.id, i)).collect();
        Ok(CocoDataset { source: json.to_path_buf(), images_dir: images_dir.to_path_buf(), names, category_ids, file, class_of })
    }

    /// The category id of each class: `category_ids()[class]`.
    pub fn category_ids(&self) -> &[u64] {
        &self.category_ids
    }

    /// Loads every image with its (non-crowd) annotations, checking each.
    pub fn load(&self, policy: BadDataPolicy) -> Result<LoadedSplit, DataError> {
        let mut summary = LoadSummary::default();
        let mut by_image: BTreeMap<u64, Vec<&CocoAnnotation>> = BTreeMap::new();
        for ann in &self.file.annotations {
            if ann.iscrowd != 0 {
                summary.crowd_ignored += 1;
            } else {
                by_image.entry(ann.image_id).or_default().push(ann);
            }
        }
        let mut samples = Vec::with_capacity(self.file.images.len());
        for image in &self.file.images {
            let anns = by_image.remove(&image.id).unwrap_or_default();
            if let Some(sample) = policy.apply(self.load_one(image, &anns), &mut summary)? {
                samples.push(sample);
            }
        }
        for ann in by_image.into_values().flatten() {
            let reason = format!("image_id {} is not in `images`", ann.image_id);
            let orphan = BadSample::MalformedLabel { file: self.source.clone(), at: Location::Annotation(ann.id), reason };
            policy.apply::<()>(Err(orphan.into()), &mut summary)?;
        }
        summary.loaded = samples.len();
        Ok(LoadedSplit { samples, summary })
    }

    fn load_one(&self, image: &CocoImage, anns: &[&CocoAnnotation]) -> Result<Sample, DataError> {
        let path = self.images_dir.join(&image.file_name);
        let at = Location::Image(image.id);
        if !path.is_file() {
            return Err(BadSample::MissingImage { image: path, file: self.source.clone(), at }.into());
        }
        let size = image_size(&path)?;
        if size != (image.width, image.height) {
            let reason = format!("`width`x`height` is {}x{} but {} is {}x{}", image.width, image.height, path.display(), size.0, size.1);
            return Err(BadSample::MalformedLabel { file: self.source.clone(), at, reason }.into());
        }
        let labels = anns.iter().map(|a| self.label(a, size)).collect::<Result<_, _>>()?;
        Ok(Sample { image_path: path, size, labels, image_id: Some(image.id) })
    }

    fn label(&self, ann: &CocoAnnotation, (w, h): (u32, u32)) -> Result<Label, BadSample> {
        let at = Location::Annotation(ann.id);
        let file = &self.source;
        let &[x, y, bw, bh] = ann.bbox.as_slice() else {
            let reason = format!("`bbox` has {} numbers, expected [x, y, w, h]", ann.bbox.len());
            return Err(BadSample::MalformedLabel { file: file.clone(), at, reason });
        };
        let Some(&class) = self.class_of.get(&ann.category_id) else {
            let mut ids: Vec<u64> = self.class_of.keys().copied().collect();
            ids.sort_unstable();
            let known = format!("category ids are {ids:?}");
            return Err(BadSample::UnknownClass { file: file.clone(), at, class: ann.category_id, known });
        };
        let (w, h) = (w as f64, h as f64);
        Label::checked(class as u64, [(x + bw / 2.0) / w, (y + bh / 2.0) / h, bw / w, bh / h], self.names.len(), file, at)
    }
}
