//! COCO ground truth (`{"images", "annotations", "categories"}`) and COCO results
//! (`[{"image_id", "category_id", "bbox": [x, y, w, h], "score"}]`) read with serde and checked
//! once, so the evaluators can index them without further checks.
//!
//! Checks beyond the JSON shape: unique image and category ids (0 included: COCO files may use
//! image id 0), unique positive annotation ids (pycocotools keeps annotations in a dict by id, and
//! uses id 0 as "unmatched"), finite non-negative box sizes and areas, `iscrowd` 0 or 1,
//! annotations and detections that name a known image and category, finite scores.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::CocoError;

/// One image of the ground truth; only `id` is used by the evaluation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CocoImage {
    pub id: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub width: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub height: Option<u32>,
}

/// One ground-truth object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CocoAnnotation {
    pub id: i64,
    pub image_id: i64,
    pub category_id: i64,
    /// `[x, y, width, height]` in pixels, (x, y) the top-left corner.
    pub bbox: [f64; 4],
    /// The area used for the small/medium/large ranges (COCOeval uses this field, not w·h).
    pub area: f64,
    /// 1 for a crowd region: matching it is neither a true nor a false positive.
    pub iscrowd: u8,
}

/// One category of the ground truth.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CocoCategory {
    pub id: i64,
    #[serde(default)]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub supercategory: Option<String>,
}

/// One detection in COCO results format (what `mistnet-cloud val --save-json` writes).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CocoDetection {
    pub image_id: i64,
    pub category_id: i64,
    /// `[x, y, width, height]` in original-image pixels.
    pub bbox: [f64; 4],
    pub score: f64,
}

#[derive(Deserialize)]
struct GroundTruthFile {
    images: Vec<CocoImage>,
    annotations: Vec<CocoAnnotation>,
    categories: Vec<CocoCategory>,
}

/// A checked COCO ground truth.
#[derive(Debug, Clone)]
pub struct CocoGroundTruth {
    origin: String,
    images: Vec<CocoImage>,
    annotations: Vec<CocoAnnotation>,
    categories: Vec<CocoCategory>,
    image_ids: HashSet<i64>,
    category_ids: HashSet<i64>,
}

impl CocoGroundTruth {
    /// Checks in-memory ground truth; `origin` names it in error messages.
    pub fn new(
        origin: impl Into<String>,
        images: Vec<CocoImage>,
        annotations: Vec<CocoAnnotation>,
        categories: Vec<CocoCategory>,
    ) -> Result<Self, CocoError> {
        let origin = origin.into();
        let invalid = |what: String| CocoError::Invalid { origin: origin.clone(), what };
        let image_ids = unique_ids(images.iter().map(|i| i.id), "images", 0).map_err(&invalid)?;
        let category_ids = unique_ids(categories.iter().map(|c| c.id), "categories", 0).map_err(&invalid)?;
        unique_ids(annotations.iter().map(|a| a.id), "annotations", 1).map_err(&invalid)?;
        for (index, a) in annotations.iter().enumerate() {
            let at = format!("annotations[{index}] (id {})", a.id);
            check_box(&a.bbox).map_err(|e| invalid(format!("{at}: {e}")))?;
            if !(a.area.is_finite() && a.area >= 0.0) {
                return Err(invalid(format!("{at}: area {} is not a finite non-negative number", a.area)));
            }
            if a.iscrowd > 1 {
                return Err(invalid(format!("{at}: iscrowd must be 0 or 1, got {}", a.iscrowd)));
            }
            if !image_ids.contains(&a.image_id) {
                return Err(CocoError::UnknownImage { origin: origin.clone(), what: at, image_id: a.image_id });
            }
            if !category_ids.contains(&a.category_id) {
                return Err(CocoError::UnknownCategory {
                    origin: origin.clone(),
                    what: at,
                    category_id: a.category_id,
                });
            }
        }
        Ok(Self { origin, images, annotations, categories, image_ids, category_ids })
    }

    /// Parses COCO ground-truth JSON; `origin` names it in error messages.
    pub fn from_json(origin: impl Into<String>, json: &str) -> Result<Self, CocoError> {
        let origin = origin.into();
        let file: GroundTruthFile =
            serde_json::from_str(json).map_err(|source| CocoError::Json { origin: origin.clone(), source })?;
        Self::new(origin, file.images, file.annotations, file.categories)
    }

    /// Reads a COCO ground-truth JSON file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, CocoError> {
        let path = path.as_ref();
        let json = read(path)?;
        Self::from_json(path.display().to_string(), &json)
    }

    /// Where this ground truth came from (a path or a caller-given name).
    pub fn origin(&self) -> &str {
        &self.origin
    }

    pub fn images(&self) -> &[CocoImage] {
        &self.images
    }

    pub fn annotations(&self) -> &[CocoAnnotation] {
        &self.annotations
    }

    pub fn categories(&self) -> &[CocoCategory] {
        &self.categories
    }

    /// Checks detections against this ground truth: every detection names a known image and
    /// category. pycocotools refuses unknown images too ("Results do not correspond to current
    /// coco set") but silently drops unknown categories, which hides a class-id mapping bug.
    pub(crate) fn check_detections(&self, dets: &CocoDetections) -> Result<(), CocoError> {
        for (index, d) in dets.detections.iter().enumerate() {
            let what = format!("detection {index}");
            if !self.image_ids.contains(&d.image_id) {
                return Err(CocoError::UnknownImage { origin: dets.origin.clone(), what, image_id: d.image_id });
            }
            if !self.category_ids.contains(&d.category_id) {
                return Err(CocoError::UnknownCategory {
                    origin: dets.origin.clone(),
                    what,
                    category_id: d.category_id,
                });
            }
        }
        Ok(())
    }
}

/// Checked detections in COCO results format.
#[derive(Debug, Clone)]
pub struct CocoDetections {
    origin: String,
    detections: Vec<CocoDetection>,
}

impl CocoDetections {
    /// Checks in-memory detections; `origin` names them in error messages.
    pub fn new(origin: impl Into<String>, detections: Vec<CocoDetection>) -> Result<Self, CocoError> {
        let origin = origin.into();
        for (index, d) in detections.iter().enumerate() {
            let what = match check_box(&d.bbox) {
                Err(e) => Some(e),
                Ok(()) if !d.score.is_finite() => Some(format!("score {} is not finite", d.score)),
                Ok(()) => None,
            };
            if let Some(what) = what {
                return Err(CocoError::Invalid { origin, what: format!("detection {index}: {what}") });
            }
        }
        Ok(Self { origin, detections })
    }

    /// Parses a COCO results JSON list; `origin` names it in error messages.
    pub fn from_json(origin: impl Into<String>, json: &str) -> Result<Self, CocoError> {
        let origin = origin.into();
        let detections: Vec<CocoDetection> =
            serde_json::from_str(json).map_err(|source| CocoError::Json { origin: origin.clone(), source })?;
        Self::new(origin, detections)
    }

    /// Reads a COCO results JSON file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, CocoError> {
        let path = path.as_ref();
        let json = read(path)?;
        Self::from_json(path.display().to_string(), &json)
    }

    pub fn detections(&self) -> &[CocoDetection] {
        &self.detections
    }
}

fn read(path: &Path) -> Result<String, CocoError> {
    std::fs::read_to_string(path).map_err(|source| CocoError::Io { path: path.to_path_buf(), source })
}

/// The ids of `list`, each unique and at least `min`.
fn unique_ids(ids: impl Iterator<Item = i64>, list: &str, min: i64) -> Result<HashSet<i64>, String> {
    let mut seen = HashSet::new();
    for (index, id) in ids.enumerate() {
        if id < min {
            let must = if min == 1 { "be positive".to_string() } else { format!("be at least {min}") };
            return Err(format!("{list}[{index}]: id {id} must {must}"));
        }
        if !seen.insert(id) {
            return Err(format!("{list}[{index}]: id {id} appears twice"));
        }
    }
    Ok(seen)
}

fn check_box(bbox: &[f64; 4]) -> Result<(), String> {
    if bbox.iter().any(|v| !v.is_finite()) {
        return Err(format!("bbox {bbox:?} has a non-finite value"));
    }
    if bbox[2] < 0.0 || bbox[3] < 0.0 {
        return Err(format!("bbox {bbox:?} has a negative width or height"));
    }
    Ok(())
}

/// Groups item indices by (image id, category id), keeping their order in the input.
pub(crate) fn group_by_image_and_category(keys: impl Iterator<Item = (i64, i64)>) -> HashMap<(i64, i64), Vec<usize>> {
    let mut groups: HashMap<(i64, i64), Vec<usize>> = HashMap::new();
    for (index, key) in keys.enumerate() {
        groups.entry(key).or_default().push(index);
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    const GT: &str = r#"{"images": [{"id": 1}, {"id": 2}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [1, 2, 3, 4], "area": 12, "iscrowd": 0}],
        "categories": [{"id": 3, "name": "car"}]}"#;

    #[test]
    fn parses_ground_truth_and_detections() {
        let gt = CocoGroundTruth::from_json("gt", GT).unwrap();
        assert_eq!(gt.annotations()[0].bbox, [1.0, 2.0, 3.0, 4.0]);
        let dets = CocoDetections::from_json(
            "dt",
            r#"[{"image_id": 2, "category_id": 3, "bbox": [0, 0, 1, 1], "score": 0.5}]"#,
        )
        .unwrap();
        gt.check_detections(&dets).unwrap();
    }

    #[test]
    fn malformed_json_names_origin_line_and_column() {
        let err = CocoGroundTruth::from_json("gt.json", "{\"images\": [\n{\"id\": \"x\"}]}").unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("gt.json: ") && msg.contains("line 2"), "{msg}");
        let err = CocoDetections::from_json(
            "dt.json",
            r#"[{"image_id": 1, "category_id": 3, "bbox": [0, 0, 1], "score": 0.5}]"#,
        )
        .unwrap_err();
        assert!(matches!(err, CocoError::Json { .. }), "{err}");
    }

    #[test]
    fn unknown_ids_and_bad_values_are_errors() {
        let gt = CocoGroundTruth::from_json("gt", GT).unwrap();
        let det =
            |image_id, category_id, score| CocoDetection { image_id, category_id, bbox: [0.0, 0.0, 1.0, 1.0], score };
        let dets = CocoDetections::new("dt", vec![det(1, 3, 0.5), det(7, 3, 0.5)]).unwrap();
        assert_eq!(
            gt.check_detections(&dets).unwrap_err().to_string(),
            "dt: detection 1: image_id 7 is not in the ground truth"
        );
        let dets = CocoDetections::new("dt", vec![det(1, 0, 0.5)]).unwrap();
        assert!(matches!(gt.check_detections(&dets), Err(CocoError::UnknownCategory { category_id: 0, .. })));
        assert!(CocoDetections::new("dt", vec![det(1, 3, f64::NAN)]).is_err());

        let bad_crowd = GT.replace("\"iscrowd\": 0", "\"iscrowd\": 2");
        assert!(
            CocoGroundTruth::from_json("gt", &bad_crowd)
                .unwrap_err()
                .to_string()
                .contains("annotations[0] (id 1): iscrowd")
        );
        let zero_id = GT.replace("{\"id\": 1, \"image_id\"", "{\"id\": 0, \"image_id\"");
        assert!(CocoGroundTruth::from_json("gt", &zero_id).unwrap_err().to_string().contains("must be positive"));
        // Image and category id 0 are legal COCO ids; negative ones are not.
        let zero_image = GT.replace("{\"id\": 1}", "{\"id\": 0}").replace("\"image_id\": 1", "\"image_id\": 0");
        let zero_ids = zero_image.replace("\"id\": 3", "\"id\": 0").replace("\"category_id\": 3", "\"category_id\": 0");
        let gt = CocoGroundTruth::from_json("gt", &zero_ids).unwrap();
        assert_eq!((gt.annotations()[0].image_id, gt.annotations()[0].category_id), (0, 0));
        let negative_image = GT.replace("{\"id\": 2}", "{\"id\": -2}");
        assert!(CocoGroundTruth::from_json("gt", &negative_image).unwrap_err().to_string().contains("must be at least 0"));
        let unknown_image = GT.replace("\"image_id\": 1", "\"image_id\": 9");
        assert!(matches!(
            CocoGroundTruth::from_json("gt", &unknown_image),
            Err(CocoError::UnknownImage { image_id: 9, .. })
        ));
        let negative = GT.replace("[1, 2, 3, 4]", "[1, 2, -3, 4]");
        assert!(CocoGroundTruth::from_json("gt", &negative).unwrap_err().to_string().contains("negative width"));
    }
}
