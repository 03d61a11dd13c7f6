//! The YOLO (Ultralytics) dataset format: a dataset YAML (`path`, `train`, `val`, optional `test`,
//! `names` as a list or an `{id: name}` map, optional `nc`), images found through directories, `.txt`
//! image lists or lists of either, and one label file per image at the same place under `labels/`
//! (`.../images/a/x.jpg` → `.../labels/a/x.txt`) holding `class cx cy w h` lines, normalized.
//!
//! Differences from Ultralytics, all in the direction of fewer surprises: a relative `path` is
//! resolved against the YAML's own directory (Ultralytics uses its datasets directory), and a
//! relative line of an image list against the list's directory (Ultralytics: `./` lines only).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::dataset::{BadDataPolicy, LoadSummary, LoadedSplit, Split, image_size};
use super::error::{BadSample, DataError, Location};
use super::label::{Label, Sample};
use super::letterbox::is_image;

/// A YOLO-format dataset: class names and, per split, where its images are.
#[derive(Debug, Clone)]
pub struct YoloDataset {
    /// The dataset YAML, or the directory for a bare YOLO-format directory.
    pub source: PathBuf,
    pub names: Vec<String>,
    splits: BTreeMap<Split, Vec<PathBuf>>,
}

/// A split entry of a dataset YAML: one path or a list.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(untagged)]
pub enum SplitEntry {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Names {
    List(Vec<String>),
    Map(BTreeMap<usize, String>),
}

#[derive(Deserialize)]
struct RawYaml {
    path: Option<String>,
    train: Option<SplitEntry>,
    val: Option<SplitEntry>,
    test: Option<SplitEntry>,
    names: Option<Names>,
    nc: Option<usize>,
}

/// The dataset YAML this project writes (Ultralytics-compatible: absolute `path`, the rest relative to it).
#[derive(Debug, Serialize)]
pub struct DatasetYaml {
    pub path: PathBuf,
    pub train: SplitEntry,
    pub val: SplitEntry,
    pub nc: usize,
    pub names: Vec<String>,
}

impl DatasetYaml {
    /// Writes the YAML to `file`.
    pub fn write(&self, file: &Path) -> Result<(), DataError> {
        let text = serde_norway::to_string(self)
            .map_err(|e| DataError::Yaml { path: file.to_path_buf(), reason: e.to_string() })?;
        fs::write(file, text).map_err(|e| DataError::io(file, e))
    }
}

/// Where the label file of `image` lives: the last `images` component of its path becomes
/// `labels` and the extension `.txt` (the Ultralytics `img2label_paths` rule).
pub fn label_path(image: &Path) -> PathBuf {
    let parts: Vec<Component> = image.components().collect();
    let last_images = parts[..parts.len().saturating_sub(1)].iter().rposition(|c| c.as_os_str() == "images");
    let mut out: PathBuf = parts
        .iter()
        .enumerate()
        .map(|(i, c)| if Some(i) == last_images { Component::Normal("labels".as_ref()) } else { *c })
        .collect();
    out.set_extension("txt");
    out
}

/// Reads a YOLO label file. A missing file means an image without objects. A line of 5 numbers is
/// `class cx cy w h`; a longer odd-length line is an Ultralytics segment (`class x1 y1 x2 y2 ...`,
/// at least 3 points) and becomes its bounding box. Blank lines are ignored.
pub fn read_labels(file: &Path, nc: usize) -> Result<Vec<Label>, DataError> {
    let text = match fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(DataError::io(file, e)),
    };
    let mut labels = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let at = Location::Line(i + 1);
        let malformed = |reason: String| BadSample::MalformedLabel { file: file.to_path_buf(), at, reason };
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.is_empty() {
            continue;
        }
        let class = parse_class(fields[0]).ok_or_else(|| malformed(format!("class `{}` is not a non-negative integer", fields[0])))?;
        let mut values = Vec::with_capacity(fields.len() - 1);
        for f in &fields[1..] {
            values.push(f.parse::<f64>().map_err(|_| malformed(format!("`{f}` is not a number")))?);
        }
        let xywh = match values.len() {
            4 => [values[0], values[1], values[2], values[3]],
            n if n >= 6 && n % 2 == 0 => segment_box(&values),
            n => return Err(malformed(format!("expected `class cx cy w h` (5 fields) or a segment, got {} fields", n + 1)).into()),
        };
        labels.push(Label::checked(class, xywh, nc, file, at)?);
    }
    Ok(labels)
}

/// Writes labels as a YOLO label file.
pub fn write_labels(file: &Path, labels: &[Label]) -> Result<(), DataError> {
    let text: String = labels.iter().map(|l| l.to_yolo_line() + "\n").collect();
    fs::write(file, text).map_err(|e| DataError::io(file, e))
}

fn parse_class(s: &str) -> Option<u64> {
    s.parse::<u64>().ok().or_else(|| {
        let v = s.parse::<f64>().ok()?;
        (v >= 0.0 && v.fract() == 0.0 && v < u64::MAX as f64).then_some(v as u64)
    })
}

/// The bounding box `[cx, cy, w, h]` of a polygon given as `x1 y1 x2 y2 ...`.
fn segment_box(xy: &[f64]) -> [f64; 4] {
    let (xs, ys) = (xy.iter().step_by(2), xy.iter().skip(1).step_by(2));
    let (x0, x1) = xs.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| (a.min(v), b.max(v)));
    let (y0, y1) = ys.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| (a.min(v), b.max(v)));
    [(x0 + x1) / 2.0, (y0 + y1) / 2.0, x1 - x0, y1 - y0]
}

/// An image to load and, if an image list named it, the list file and line.
struct ImageRef {
    path: PathBuf,
    listed_at: Option<(PathBuf, usize)>,
}

impl YoloDataset {
    /// Reads an Ultralytics dataset YAML.
    pub fn from_yaml(yaml: &Path) -> Result<Self, DataError> {
        let bad = |reason: String| DataError::Yaml { path: yaml.to_path_buf(), reason };
        let text = fs::read_to_string(yaml).map_err(|e| DataError::io(yaml, e))?;
        let raw: RawYaml = serde_norway::from_str(&text).map_err(|e| bad(e.to_string()))?;
        let yaml_dir = yaml.parent().unwrap_or(Path::new("."));
        let root = match &raw.path {
            Some(p) if !p.is_empty() => yaml_dir.join(p),
            _ => yaml_dir.to_path_buf(),
        };
        let names = match (raw.names, raw.nc) {
            (Some(Names::List(list)), _) => list,
            (Some(Names::Map(map)), _) => {
                if let Some((pos, (&id, _))) = map.iter().enumerate().find(|(i, (id, _))| i != *id) {
                    return Err(bad(format!("`names` ids must be 0..{} without gaps; id {pos} is missing (next is {id})", map.len())));
                }
                map.into_values().collect()
            }
            (None, Some(nc)) => (0..nc).map(|i| format!("class{i}")).collect(),
            (None, None) => return Err(bad("neither `names` nor `nc` is given".into())),
        };
        if names.is_empty() {
            return Err(bad("`names` is empty".into()));
        }
        if let Some(nc) = raw.nc.filter(|&nc| nc != names.len()) {
            return Err(bad(format!("`nc` is {nc} but `names` has {} entries", names.len())));
        }
        let mut splits = BTreeMap::new();
        for (split, entry) in [(Split::Train, raw.train), (Split::Val, raw.val), (Split::Test, raw.test)] {
            let entries = match entry {
                Some(SplitEntry::One(s)) => vec![s],
                Some(SplitEntry::Many(v)) => v,
                None if split == Split::Test => continue,
                None => return Err(bad(format!("`{}` is missing", split.name()))),
            };
            splits.insert(split, entries.iter().map(|e| root.join(e)).collect());
        }
        Ok(YoloDataset { source: yaml.to_path_buf(), names, splits })
    }

    /// A bare YOLO-format directory: `DIR/images/` (searched recursively), labels under `DIR/labels/`,
    /// class names in `DIR/classes.txt`, one per line. Its images form the train split.
    pub fn from_dir(dir: &Path) -> Result<Self, DataError> {
        let classes = dir.join("classes.txt");
        if !dir.join("images").is_dir() || !classes.is_file() {
            return Err(DataError::UnknownFormat { path: dir.to_path_buf() });
        }
        let text = fs::read_to_string(&classes).map_err(|e| DataError::io(&classes, e))?;
        let names: Vec<String> = text.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect();
        if names.is_empty() {
            return Err(DataError::Yaml { path: classes, reason: "no class names".into() });
        }
        let splits = BTreeMap::from([(Split::Train, vec![dir.join("images")])]);
        Ok(YoloDataset { source: dir.to_path_buf(), names, splits })
    }

    /// The resolved paths a split's entry names (directories, image lists or images), if it has the split.
    pub fn sources(&self, split: Split) -> Option<&[PathBuf]> {
        self.splits.get(&split).map(Vec::as_slice)
    }

    /// Loads every image of `split` with its labels, checking each.
    pub fn load(&self, split: Split, policy: BadDataPolicy) -> Result<LoadedSplit, DataError> {
        let sources = self.sources(split).ok_or(DataError::NoSplit { path: self.source.clone(), split: split.name() })?;
        let mut images = Vec::new();
        for source in sources {
            images.extend(list_images(source)?);
        }
        let mut summary = LoadSummary::default();
        let mut samples = Vec::with_capacity(images.len());
        for image in images {
            if let Some(sample) = policy.apply(self.load_one(image), &mut summary)? {
                samples.push(sample);
            }
        }
        summary.loaded = samples.len();
        Ok(LoadedSplit { samples, summary })
    }

    fn load_one(&self, image: ImageRef) -> Result<Sample, DataError> {
        if let Some((file, line)) = image.listed_at.filter(|_| !image.path.is_file()) {
            return Err(BadSample::MissingImage { image: image.path, file, at: Location::Line(line) }.into());
        }
        let size = image_size(&image.path)?;
        let labels = read_labels(&label_path(&image.path), self.names.len())?;
        Ok(Sample { image_path: image.path, size, labels, image_id: None })
    }
}

/// The images a split entry names: every image under a directory (recursively, sorted), every line
/// of a `.txt` list, or a single image file.
fn list_images(source: &Path) -> Result<Vec<ImageRef>, DataError> {
    if source.is_dir() {
        let mut paths = Vec::new();
        for entry in walkdir::WalkDir::new(source).follow_links(true) {
            let entry = entry.map_err(|e| DataError::io(source, e.into()))?;
            if entry.file_type().is_file() && is_image(entry.path()) {
                paths.push(entry.into_path());
            }
        }
        paths.sort();
        return Ok(paths.into_iter().map(|path| ImageRef { path, listed_at: None }).collect());
    }
    if source.extension().is_some_and(|e| e == "txt") {
        let text = fs::read_to_string(source).map_err(|e| DataError::io(source, e))?;
        let dir = source.parent().unwrap_or(Path::new("."));
        return Ok(text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, l)| ImageRef { path: dir.join(l.trim()), listed_at: Some((source.to_path_buf(), i + 1)) })
            .collect());
    }
    if source.is_file() && is_image(source) {
        return Ok(vec![ImageRef { path: source.to_path_buf(), listed_at: None }]);
    }
    Err(DataError::io(source, std::io::Error::new(std::io::ErrorKind::NotFound, "no such image directory, image list or image")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_path_replaces_the_last_images_component() {
        assert_eq!(label_path(Path::new("/d/images/train/x.jpg")), Path::new("/d/labels/train/x.txt"));
        assert_eq!(label_path(Path::new("/images/d/images/x.png")), Path::new("/images/d/labels/x.txt"));
        // A file called `images` is not a directory component.
        assert_eq!(label_path(Path::new("/d/a/images")), Path::new("/d/a/images.txt"));
    }

    #[test]
    fn segment_lines_become_their_bounding_box() {
        let b = segment_box(&[0.1, 0.2, 0.5, 0.2, 0.3, 0.6]);
        for (got, want) in b.iter().zip([0.3, 0.4, 0.4, 0.4]) {
            assert!((got - want).abs() < 1e-12, "{b:?}");
        }
    }

    #[test]
    fn classes_may_be_written_as_integral_floats() {
        assert_eq!(parse_class("3"), Some(3));
        assert_eq!(parse_class("3.0"), Some(3));
        assert_eq!(parse_class("3.5"), None);
        assert_eq!(parse_class("-1"), None);
        assert_eq!(parse_class("car"), None);
    }
}
