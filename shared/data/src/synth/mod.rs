//! The embedded default dataset: a labelled detection dataset in YOLO format drawn procedurally,
//! with no download, deterministic for a seed.
//!
//! Five classes ([`CLASSES`]: disc, square, triangle, ring, cross) of varied colour, size (the
//! object's length 12–50% of the image side, its box at most 60%), aspect and rotation, 1–4 per
//! image, overlapping (each object keeps at least 60% of its pixels visible), on textured
//! backgrounds. A *public* split (train + val) is the
//! cloud's pretraining data; *private* per-edge splits and a held-out private val split come from
//! another [`Domain`] (backgrounds, lighting) and another class mix, and each edge over-represents
//! one class. Every image is drawn from its own ChaCha8 stream (seed, split, index), so a split's
//! images do not depend on the sizes of the others.
//!
//! Layout under the output directory `DIR`:
//! - `public/{train,val}/{images,labels}/`, `public.yaml`
//! - `private/edge-<k>/{images,labels}/`, `private/edge-<k>.yaml` (val: the private val split)
//! - `private/val/{images,labels}/`, `private-val.yaml`
//! - `private.yaml` (all edges' images as train: the centralized baseline), `manifest.json`, `README.md`

pub mod canvas;
pub mod domain;
pub mod shapes;

use std::fs;
use std::path::{Path, PathBuf};

use image::RgbImage;
use rand::distr::Distribution;
use rand::distr::weighted::WeightedIndex;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use super::error::DataError;
use super::label::Label;
use super::partition::create_empty_dir;
use super::yolo::{DatasetYaml, SplitEntry, write_labels};
pub use canvas::Canvas;
pub use domain::Domain;
pub use shapes::{CLASSES, Object};

/// The dataset YAMLs of the layout, relative to the output directory (what `mistnet-cloud job --data` expects).
pub mod layout {
    /// The public train + val split.
    pub const PUBLIC_YAML: &str = "public.yaml";
    /// Every edge's private images as train (the centralized baseline), the private val split as val.
    pub const PRIVATE_YAML: &str = "private.yaml";
    /// The held-out private split.
    pub const PRIVATE_VAL_YAML: &str = "private-val.yaml";
    /// The images of the public train split (what an attacker of the features could also hold).
    pub const PUBLIC_TRAIN_IMAGES: &str = "public/train/images";

    /// Edge `k`'s private split.
    pub fn edge_yaml(k: usize) -> String {
        format!("private/edge-{k}.yaml")
    }
}

/// Settings of a generated dataset.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SynthConfig {
    /// Images in all splits together: 40% public train, 10% public val, 40% private train (over
    /// the edges), 10% private val.
    pub images: usize,
    /// Image side in pixels (square).
    pub imgsz: u32,
    pub seed: u64,
    /// Private per-edge splits.
    pub edges: usize,
    /// Width and height of the private splits' images (edges' and held-out), as cameras make them:
    /// each is drawn at `imgsz` square and resized to this size. Its labels, normalized to the
    /// image, stay exact. `None`: square `imgsz`.
    pub private_size: Option<(u32, u32)>,
}

impl Default for SynthConfig {
    fn default() -> Self {
        SynthConfig { images: 1000, imgsz: 160, seed: 0, edges: 2, private_size: None }
    }
}

/// The class mix of the private domain (public is uniform): more discs and triangles, fewer squares and rings.
const PRIVATE_MIX: [f64; 5] = [1.5, 0.6, 1.3, 0.6, 1.0];
/// How much more often an edge draws its own class (`k mod 5`) than the private mix says.
const EDGE_FAVOURITE: f64 = 3.0;
/// At most this many objects per image.
const MAX_OBJECTS: usize = 4;
/// An object may be hidden by later ones up to this fraction of its pixels.
const MAX_OCCLUDED: f32 = 0.4;

/// One generated image with its labels and the objects drawn, in drawing order.
#[derive(Debug, Clone)]
pub struct SynthImage {
    pub image: RgbImage,
    pub labels: Vec<Label>,
    pub objects: Vec<Object>,
}

/// Draws one image of `domain` with classes drawn from `mix` (relative weights per class,
/// non-negative, not all zero).
pub fn render(domain: Domain, mix: &[f64; 5], size: u32, rng: &mut ChaCha8Rng) -> Result<SynthImage, DataError> {
    let classes = WeightedIndex::new(mix).map_err(|e| DataError::Synth(format!("class mix {mix:?}: {e}")))?;
    let mut canvas = Canvas::filled(size, [0.0; 3]);
    domain.paint_background(&mut canvas, rng);
    let wanted = rng.random_range(1..=MAX_OBJECTS);
    let mut owner = vec![usize::MAX; (size * size) as usize];
    let (mut visible, mut full) = (Vec::new(), Vec::new());
    let mut placed = Vec::new();
    for _ in 0..wanted {
        let class = classes.sample(rng);
        for _attempt in 0..20 {
            let object = Object::random(class, size, rng);
            let cov = object.coverage(size);
            let solid: Vec<usize> = cov.solid_pixels(size).collect();
            let mut lost = vec![0usize; placed.len()];
            for &p in &solid {
                if owner[p] != usize::MAX {
                    lost[owner[p]] += 1;
                }
            }
            let hides_too_much = (0..placed.len()).any(|i| ((visible[i] - lost[i]) as f32) < (1.0 - MAX_OCCLUDED) * full[i] as f32);
            if solid.is_empty() || hides_too_much {
                continue;
            }
            for &p in &solid {
                if owner[p] != usize::MAX {
                    visible[owner[p]] -= 1;
                }
                owner[p] = placed.len();
            }
            visible.push(solid.len());
            full.push(solid.len());
            placed.push((object, cov));
            break;
        }
    }
    let mut labels = Vec::with_capacity(placed.len());
    for (object, cov) in &placed {
        object.draw(&mut canvas, cov);
        let b = cov.bbox().expect("placed objects cover pixels").map(|v| v as f32);
        labels.push(Label::from_pixels(object.shape.class(), b, (size, size)));
    }
    domain.apply_lighting(&mut canvas, rng);
    Ok(SynthImage { image: canvas.to_image(), labels, objects: placed.into_iter().map(|(o, _)| o).collect() })
}

/// One split to generate.
struct SplitPlan {
    name: String,
    /// Directory holding `images/` and `labels/`, relative to the output directory.
    dir: PathBuf,
    domain: Domain,
    mix: [f64; 5],
    count: usize,
}

/// What one generated split holds.
#[derive(Debug, Clone, Serialize)]
pub struct SplitSummary {
    pub name: String,
    /// Relative to the output directory.
    pub dir: PathBuf,
    pub domain: String,
    pub images: usize,
    /// Objects per class.
    pub objects: Vec<usize>,
}

/// `manifest.json`: what was generated, and how.
#[derive(Debug, Clone, Serialize)]
pub struct Manifest {
    pub generator: String,
    pub seed: u64,
    pub imgsz: u32,
    /// Width and height of the private splits' images, when not `imgsz` square.
    pub private_size: Option<(u32, u32)>,
    pub classes: Vec<String>,
    pub splits: Vec<SplitSummary>,
    /// The dataset YAMLs written, relative to the output directory.
    pub yamls: Vec<PathBuf>,
}

impl SynthConfig {
    fn plan(&self) -> Result<Vec<SplitPlan>, DataError> {
        let n = self.images;
        let (public_train, public_val, private_val) = (n * 2 / 5, n / 10, n / 10);
        let private_train = n - public_train - public_val - private_val;
        if self.edges == 0 || public_val == 0 || private_train < self.edges {
            return Err(DataError::Synth(format!(
                "--images {n} is too few for {} edges: need at least 10 and one private image per edge",
                self.edges
            )));
        }
        if !(32..=4096).contains(&self.imgsz) {
            return Err(DataError::Synth(format!("--imgsz must be in 32..=4096, got {}", self.imgsz)));
        }
        if let Some((w, h)) = self.private_size
            && !((8..=8192).contains(&w) && (8..=8192).contains(&h))
        {
            return Err(DataError::Synth(format!("--private-size must be within 8..=8192 on each side, got {w}x{h}")));
        }
        let plan = |name: &str, dir: &str, domain, mix, count| SplitPlan { name: name.into(), dir: dir.into(), domain, mix, count };
        let mut splits = vec![
            plan("public/train", "public/train", Domain::Public, [1.0; 5], public_train),
            plan("public/val", "public/val", Domain::Public, [1.0; 5], public_val),
            plan("private/val", "private/val", Domain::Private, PRIVATE_MIX, private_val),
        ];
        for k in 0..self.edges {
            let mut mix = PRIVATE_MIX;
            mix[k % CLASSES.len()] *= EDGE_FAVOURITE;
            let count = private_train / self.edges + usize::from(k < private_train % self.edges);
            let name = format!("private/edge-{k}");
            splits.push(plan(&name, &name, Domain::Private, mix, count));
        }
        Ok(splits)
    }
}

/// Generates the dataset into `out` (created; must be empty) and returns its manifest.
pub fn generate(cfg: &SynthConfig, out: &Path) -> Result<Manifest, DataError> {
    let plans = cfg.plan()?;
    create_empty_dir(out)?;
    let root = fs::canonicalize(out).map_err(|e| DataError::io(out, e))?;
    let mut splits = Vec::with_capacity(plans.len());
    for (stream, plan) in plans.iter().enumerate() {
        splits.push(generate_split(cfg, plan, stream as u64, &root)?);
    }
    let yamls = write_yamls(cfg, &root)?;
    let manifest = Manifest {
        generator: format!("mistnet synth {}", env!("CARGO_PKG_VERSION")),
        seed: cfg.seed,
        imgsz: cfg.imgsz,
        private_size: cfg.private_size,
        classes: CLASSES.map(String::from).to_vec(),
        splits,
        yamls,
    };
    let json = serde_json::to_string_pretty(&manifest).expect("the manifest serializes");
    let manifest_path = root.join("manifest.json");
    fs::write(&manifest_path, json + "\n").map_err(|e| DataError::io(&manifest_path, e))?;
    let readme = root.join("README.md");
    fs::write(&readme, readme_text(cfg, &manifest)).map_err(|e| DataError::io(&readme, e))?;
    Ok(manifest)
}

/// Draws and writes one split, on as many threads as the machine has.
fn generate_split(cfg: &SynthConfig, plan: &SplitPlan, stream: u64, root: &Path) -> Result<SplitSummary, DataError> {
    let (images, labels) = (root.join(&plan.dir).join("images"), root.join(&plan.dir).join("labels"));
    for d in [&images, &labels] {
        fs::create_dir_all(d).map_err(|e| DataError::io(d, e))?;
    }
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(plan.count.max(1));
    let per_thread: Vec<Result<Vec<usize>, DataError>> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let (images, labels) = (&images, &labels);
                scope.spawn(move || -> Result<Vec<usize>, DataError> {
                    let mut objects = vec![0; CLASSES.len()];
                    for i in (t..plan.count).step_by(threads) {
                        let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
                        rng.set_stream((stream << 32) | i as u64);
                        let mut img = render(plan.domain, &plan.mix, cfg.imgsz, &mut rng)?;
                        if let (Domain::Private, Some((w, h))) = (plan.domain, cfg.private_size) {
                            img.image = image::imageops::resize(&img.image, w, h, image::imageops::FilterType::Triangle);
                        }
                        let png = images.join(format!("{i:06}.png"));
                        img.image.save(&png).map_err(|e| DataError::io(&png, std::io::Error::other(e)))?;
                        write_labels(&labels.join(format!("{i:06}.txt")), &img.labels)?;
                        for l in &img.labels {
                            objects[l.class] += 1;
                        }
                    }
                    Ok(objects)
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().expect("generator threads do not panic")).collect()
    });
    let mut objects = vec![0; CLASSES.len()];
    for counts in per_thread {
        for (total, n) in objects.iter_mut().zip(counts?) {
            *total += n;
        }
    }
    let domain = format!("{:?}", plan.domain).to_lowercase();
    Ok(SplitSummary { name: plan.name.clone(), dir: plan.dir.clone(), domain, images: plan.count, objects })
}

fn write_yamls(cfg: &SynthConfig, root: &Path) -> Result<Vec<PathBuf>, DataError> {
    let names: Vec<String> = CLASSES.map(String::from).to_vec();
    let one = |s: &str| SplitEntry::One(s.into());
    let yaml = |path: PathBuf, train, val| DatasetYaml { path, train, val, nc: names.len(), names: names.clone() };
    let edges: Vec<String> = (0..cfg.edges).map(|k| format!("edge-{k}/images")).collect();
    let mut files = vec![
        (layout::PUBLIC_YAML.to_string(), yaml(root.join("public"), one(layout::PUBLIC_TRAIN_IMAGES.trim_start_matches("public/")), one("val/images"))),
        (layout::PRIVATE_VAL_YAML.to_string(), yaml(root.join("private/val"), one("images"), one("images"))),
        (layout::PRIVATE_YAML.to_string(), yaml(root.join("private"), SplitEntry::Many(edges), one("val/images"))),
    ];
    for k in 0..cfg.edges {
        let dir = root.join(format!("private/edge-{k}"));
        files.push((layout::edge_yaml(k), yaml(dir, one("images"), one("../val/images"))));
    }
    let mut written = Vec::with_capacity(files.len());
    for (name, y) in files {
        y.write(&root.join(&name))?;
        written.push(PathBuf::from(name));
    }
    Ok(written)
}

fn readme_text(cfg: &SynthConfig, m: &Manifest) -> String {
    let private_size = cfg.private_size.map_or(String::new(), |(w, h)| format!(" --private-size {w}x{h}"));
    let mut s = format!(
        "# MistNet synthetic detection dataset\n\nGenerated by `mistnet-cloud synth --images {} --imgsz {} --seed {} --edges {}{private_size}` \
         ({}). The same command writes the same bytes.\n\n\
         YOLO format: `images/NNNNNN.png` with `labels/NNNNNN.txt` beside them (`class cx cy w h`, normalized).\n\
         Classes: {}. Each image holds 1–{MAX_OBJECTS} objects of varied colour, size (length 12–50% of the image side, \
         box at most 60%), aspect and rotation; objects may overlap but keep at least {:.0}% of their pixels visible; boxes are tight around all \
         the pixels an object covers, including occluded parts.\n\n\
         - public: {}\n- private: {}\n\n\
         | split | domain | images | objects per class |\n|---|---|---|---|\n",
        cfg.images,
        cfg.imgsz,
        cfg.seed,
        cfg.edges,
        m.generator,
        CLASSES.join(", "),
        (1.0 - MAX_OCCLUDED) * 100.0,
        Domain::Public.describe(),
        Domain::Private.describe(),
    );
    for split in &m.splits {
        s += &format!("| `{}` | {} | {} | {:?} |\n", split.dir.display(), split.domain, split.images, split.objects);
    }
    s += "\nDataset YAMLs: `public.yaml` (the cloud's pretraining data), `private/edge-<k>.yaml` (edge k's data, \
          validated on the private val split), `private-val.yaml` (the held-out private split), `private.yaml` \
          (all edges' images together: the centralized baseline).\n";
    s
}
