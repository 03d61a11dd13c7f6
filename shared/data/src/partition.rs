//! Cutting a dataset into per-edge shards, as cross-silo federated benchmarks do: IID (shuffle and
//! deal evenly) or non-IID by label (a Dirichlet(α) draw over edges for each class, applied to the
//! images whose dominant class it is, with NIID-Bench's balancing rule), and writing each shard as a
//! self-contained YOLO-format dataset.
//!
//! A shard directory holds hard links to the source images (a copy where linking fails, e.g.
//! across file systems) and freshly written label files. This makes a shard one directory that
//! can be shipped to its edge, works for COCO sources (which have no label files), and guarantees
//! that the shard holds only the checked labels, never a skipped bad one; hard links cost no space.

use std::fs;
use std::path::{Path, PathBuf};

use rand::{Rng, SeedableRng};
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Gamma};

use super::error::DataError;
use super::label::Sample;
use super::yolo::{DatasetYaml, SplitEntry, write_labels};

/// How samples are spread over edges.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Scheme {
    /// Every edge gets a uniform random share of the same size (±1).
    Iid,
    /// Label-skewed: for each dominant class, the share of each edge is drawn from Dirichlet(α);
    /// small α (0.1) gives very skewed edges, large α (100) nearly IID ones.
    Dirichlet { alpha: f64 },
}

/// How many times a Dirichlet partition is redrawn before giving up on leaving no edge empty.
const MAX_DRAWS: usize = 1000;

/// Splits `samples` into `edges` shards of sample indices (each sorted), deterministically for `seed`.
/// Every sample lands in exactly one shard and no shard is empty.
pub fn partition(samples: &[Sample], edges: usize, scheme: Scheme, seed: u64) -> Result<Vec<Vec<usize>>, DataError> {
    if edges == 0 || samples.len() < edges {
        return Err(DataError::Partition(format!("cannot split {} images over {edges} edges", samples.len())));
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut shards = match scheme {
        Scheme::Iid => {
            let mut order: Vec<usize> = (0..samples.len()).collect();
            order.shuffle(&mut rng);
            let (base, extra) = (samples.len() / edges, samples.len() % edges);
            let mut rest = order.as_slice();
            (0..edges)
                .map(|k| {
                    let (head, tail) = rest.split_at(base + usize::from(k < extra));
                    rest = tail;
                    head.to_vec()
                })
                .collect()
        }
        Scheme::Dirichlet { alpha } => {
            let gamma = Gamma::new(alpha, 1.0)
                .ok()
                .filter(|_| alpha.is_finite())
                .ok_or_else(|| DataError::Partition(format!("the Dirichlet α must be a positive number, got {alpha}")))?;
            (0..MAX_DRAWS)
                .map(|_| dirichlet_draw(samples, edges, &gamma, &mut rng))
                .find(|shards| shards.iter().all(|s| !s.is_empty()))
                .ok_or_else(|| {
                    DataError::Partition(format!(
                        "{MAX_DRAWS} Dirichlet(α = {alpha}) draws all left an edge without images; use a larger α or fewer edges"
                    ))
                })?
        }
    };
    for shard in &mut shards {
        shard.sort_unstable();
    }
    Ok(shards)
}

/// One NIID-Bench "label-dir" draw: images grouped by dominant class (images without objects form
/// their own group); each group is shuffled and cut by Dirichlet proportions, where an edge that
/// already holds its fair share (`n / edges`) gets none of later groups.
fn dirichlet_draw(samples: &[Sample], edges: usize, gamma: &Gamma<f64>, rng: &mut ChaCha8Rng) -> Vec<Vec<usize>> {
    let groups = samples.iter().filter_map(Sample::dominant_class).max().map_or(0, |m| m + 1) + 1;
    let mut by_group: Vec<Vec<usize>> = vec![Vec::new(); groups];
    for (i, s) in samples.iter().enumerate() {
        by_group[s.dominant_class().unwrap_or(groups - 1)].push(i);
    }
    let fair = samples.len() as f64 / edges as f64;
    let mut shards: Vec<Vec<usize>> = vec![Vec::new(); edges];
    for mut group in by_group.into_iter().filter(|g| !g.is_empty()) {
        group.shuffle(rng);
        let drawn: Vec<f64> = (0..edges).map(|_| gamma.sample(rng)).collect();
        let open: Vec<f64> = drawn.iter().zip(&shards).map(|(p, s)| if (s.len() as f64) < fair { *p } else { 0.0 }).collect();
        let mut weights = if open.iter().sum::<f64>() > 0.0 { open } else { drawn };
        if weights.iter().sum::<f64>() <= 0.0 {
            // Tiny α can underflow every share to zero: the whole group goes to one edge.
            let lucky = rng.random_range(0..edges);
            weights = (0..edges).map(|k| if k == lucky { 1.0 } else { 0.0 }).collect();
        }
        let total: f64 = weights.iter().sum();
        let mut start = 0;
        let mut cumulative = 0.0;
        for (k, w) in weights.iter().enumerate() {
            cumulative += w;
            let end = if k + 1 == edges { group.len() } else { ((cumulative / total) * group.len() as f64).round() as usize };
            let end = end.clamp(start, group.len());
            shards[k].extend_from_slice(&group[start..end]);
            start = end;
        }
    }
    shards
}

/// Objects per class in the samples `indices` selects (`nc` classes).
pub fn class_histogram(samples: &[Sample], indices: &[usize], nc: usize) -> Vec<usize> {
    let mut hist = vec![0; nc];
    for &i in indices {
        for l in &samples[i].labels {
            hist[l.class] += 1;
        }
    }
    hist
}

/// What was written for one edge.
#[derive(Debug, Clone)]
pub struct ShardFiles {
    /// `DIR/edge-<k>.yaml`.
    pub yaml: PathBuf,
    /// `DIR/edge-<k>/train.txt`, the shard's image list.
    pub list: PathBuf,
}

/// Writes each shard as `out/edge-<k>/` (`images/` hard-linked or copied, `labels/` written,
/// `train.txt` listing `./images/...`) and `out/edge-<k>.yaml` with `train: train.txt` and `val`
/// as given (e.g. the source dataset's val split), or the shard itself when `val` is `None`.
/// `out` must not exist or be empty.
pub fn write_shards(
    samples: &[Sample],
    shards: &[Vec<usize>],
    names: &[String],
    val: Option<SplitEntry>,
    out: &Path,
) -> Result<Vec<ShardFiles>, DataError> {
    create_empty_dir(out)?;
    let out = fs::canonicalize(out).map_err(|e| DataError::io(out, e))?;
    let mut written = Vec::with_capacity(shards.len());
    for (k, shard) in shards.iter().enumerate() {
        let dir = out.join(format!("edge-{k}"));
        let (images, labels) = (dir.join("images"), dir.join("labels"));
        for d in [&images, &labels] {
            fs::create_dir_all(d).map_err(|e| DataError::io(d, e))?;
        }
        let mut list = String::new();
        for &i in shard {
            let sample = &samples[i];
            let name = shard_file_name(sample, i, &images);
            let target = images.join(&name);
            fs::hard_link(&sample.image_path, &target)
                .or_else(|_| fs::copy(&sample.image_path, &target).map(drop))
                .map_err(|e| DataError::io(&sample.image_path, e))?;
            write_labels(&labels.join(Path::new(&name).with_extension("txt")), &sample.labels)?;
            list.push_str(&format!("./images/{name}\n"));
        }
        let list_path = dir.join("train.txt");
        fs::write(&list_path, list).map_err(|e| DataError::io(&list_path, e))?;
        let yaml = out.join(format!("edge-{k}.yaml"));
        DatasetYaml {
            path: dir,
            train: SplitEntry::One("train.txt".into()),
            val: val.clone().unwrap_or_else(|| SplitEntry::One("train.txt".into())),
            nc: names.len(),
            names: names.to_vec(),
        }
        .write(&yaml)?;
        written.push(ShardFiles { yaml, list: list_path });
    }
    Ok(written)
}

/// The image's own file name, or `<index>_<name>` if a shard already holds one of that name.
fn shard_file_name(sample: &Sample, index: usize, images: &Path) -> String {
    let name = sample.image_path.file_name().map_or_else(|| format!("{index}"), |n| n.to_string_lossy().into_owned());
    if images.join(&name).exists() { format!("{index}_{name}") } else { name }
}

/// Creates `dir`, which must not exist or be an empty directory.
pub fn create_empty_dir(dir: &Path) -> Result<(), DataError> {
    fs::create_dir_all(dir).map_err(|e| DataError::io(dir, e))?;
    let mut entries = fs::read_dir(dir).map_err(|e| DataError::io(dir, e))?;
    if entries.next().is_some() {
        return Err(DataError::io(dir, std::io::Error::other("output directory is not empty")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::label::Label;

    /// `n` images per class for `nc` classes, each with one object of its class.
    fn samples(nc: usize, n: usize) -> Vec<Sample> {
        (0..nc * n)
            .map(|i| Sample {
                image_path: format!("{i}.png").into(),
                size: (8, 8),
                labels: vec![Label { class: i % nc, cx: 0.5, cy: 0.5, w: 0.5, h: 0.5 }],
                image_id: None,
            })
            .collect()
    }

    fn assert_exact_cover(shards: &[Vec<usize>], n: usize) {
        let mut all: Vec<usize> = shards.iter().flatten().copied().collect();
        all.sort_unstable();
        assert_eq!(all, (0..n).collect::<Vec<_>>(), "every sample in exactly one shard");
        assert!(shards.iter().all(|s| !s.is_empty()));
    }

    /// Mean total-variation distance between each edge's class mix and the global one.
    fn skew(s: &[Sample], shards: &[Vec<usize>], nc: usize) -> f64 {
        let all: Vec<usize> = (0..s.len()).collect();
        let g = class_histogram(s, &all, nc);
        let norm = |h: &[usize]| -> Vec<f64> {
            let t: usize = h.iter().sum();
            h.iter().map(|&c| c as f64 / t as f64).collect()
        };
        let g = norm(&g);
        shards
            .iter()
            .map(|sh| norm(&class_histogram(s, sh, nc)).iter().zip(&g).map(|(a, b)| (a - b).abs()).sum::<f64>() / 2.0)
            .sum::<f64>()
            / shards.len() as f64
    }

    #[test]
    fn iid_covers_everything_evenly_and_is_deterministic() {
        let s = samples(5, 41);
        let a = partition(&s, 4, Scheme::Iid, 7).unwrap();
        assert_exact_cover(&a, s.len());
        let sizes: Vec<usize> = a.iter().map(Vec::len).collect();
        assert_eq!(sizes, [52, 51, 51, 51]);
        assert_eq!(a, partition(&s, 4, Scheme::Iid, 7).unwrap());
        assert_ne!(a, partition(&s, 4, Scheme::Iid, 8).unwrap());
    }

    #[test]
    fn dirichlet_covers_everything_and_skews_classes() {
        let s = samples(5, 60);
        let skewed = partition(&s, 4, Scheme::Dirichlet { alpha: 0.1 }, 3).unwrap();
        assert_exact_cover(&skewed, s.len());
        assert_eq!(skewed, partition(&s, 4, Scheme::Dirichlet { alpha: 0.1 }, 3).unwrap());
        let iid = partition(&s, 4, Scheme::Iid, 3).unwrap();
        let near_iid = partition(&s, 4, Scheme::Dirichlet { alpha: 1000.0 }, 3).unwrap();
        assert_exact_cover(&near_iid, s.len());
        let (sk, ii, ni) = (skew(&s, &skewed, 5), skew(&s, &iid, 5), skew(&s, &near_iid, 5));
        assert!(sk > 0.4, "α = 0.1 should skew classes strongly: {sk}");
        assert!(ii < 0.15 && ni < 0.15, "IID and α = 1000 should be near the global mix: {ii} {ni}");
    }

    #[test]
    fn too_few_images_or_a_bad_alpha_is_an_error() {
        let s = samples(1, 3);
        assert!(partition(&s, 4, Scheme::Iid, 0).unwrap_err().to_string().contains("cannot split 3 images over 4 edges"));
        for alpha in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            let e = partition(&s, 2, Scheme::Dirichlet { alpha }, 0).unwrap_err();
            assert!(e.to_string().contains("must be a positive number"), "{e}");
        }
    }
}
