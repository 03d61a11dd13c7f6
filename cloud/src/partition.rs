//! `mistnet-cloud partition`: cut a dataset's train split into per-edge shards (IID or
//! Dirichlet label skew), each written as a YOLO-format dataset (see `mistnet::data::partition`).

use std::path::PathBuf;

use anyhow::{Context, Result};
use mistnet::data::coco::CocoDataset;
use mistnet::data::partition::{Scheme, class_histogram, partition, write_shards};
use mistnet::data::yolo::SplitEntry;
use mistnet::data::{BadDataPolicy, Dataset, Split};

#[derive(clap::Args)]
#[command(after_help = "Writes, under DIR (which must be empty or absent), per edge k:\n  \
edge-<k>.yaml        an Ultralytics dataset YAML (train: the shard; val: the source's val split, or the shard \
if the source has none)\n  \
edge-<k>/train.txt   the shard's image list\n  \
edge-<k>/images/     hard links to the source images (copies where linking fails)\n  \
edge-<k>/labels/     the checked labels, in YOLO format\n\
and prints a table of each edge's images and objects per class.\n\n\
Examples:\n  mistnet-cloud partition data/coco128.yaml --edges 4 --out shards/\n  \
mistnet-cloud partition data/synth/private.yaml --edges 3 --dirichlet 0.3 --seed 1 --out shards/\n  \
mistnet-cloud partition instances_train.json --coco-images images/train --edges 2 --out shards/")]
pub struct Args {
    /// The dataset: an Ultralytics dataset YAML, a COCO instances JSON, or a directory with images/,
    /// labels/ and classes.txt. Its train split is partitioned.
    data: PathBuf,
    /// Number of edges (shards).
    #[arg(long)]
    edges: usize,
    /// Non-IID: split each class over the edges by Dirichlet(ALPHA) proportions, by each image's
    /// dominant class (0.1 = very skewed, 100 = nearly IID). Without it the split is IID.
    #[arg(long, value_name = "ALPHA")]
    dirichlet: Option<f64>,
    /// Random seed: the same seed gives the same shards.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output directory (created; must be empty).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Skip bad samples (missing or unreadable image, malformed label, coordinate outside [0, 1],
    /// unknown class) and report them, instead of stopping at the first.
    #[arg(long)]
    skip_bad: bool,
    /// For a COCO JSON: the directory its `file_name`s are relative to (default: the JSON's directory).
    #[arg(long, value_name = "DIR")]
    coco_images: Option<PathBuf>,
}

pub fn run(args: Args) -> Result<()> {
    let dataset = match &args.coco_images {
        Some(images) => Dataset::Coco(CocoDataset::open(&args.data, images)?),
        None => Dataset::open(&args.data)?,
    };
    let policy = if args.skip_bad { BadDataPolicy::Skip } else { BadDataPolicy::Fail };
    let loaded = dataset.load(Split::Train, policy)?;
    println!("{}: {}", args.data.display(), loaded.summary);
    let scheme = args.dirichlet.map_or(Scheme::Iid, |alpha| Scheme::Dirichlet { alpha });
    let shards = partition(&loaded.samples, args.edges, scheme, args.seed)?;
    let val = match &dataset {
        Dataset::Yolo(d) => d
            .sources(Split::Val)
            .map(|paths| {
                paths.iter().map(|p| std::path::absolute(p).map(|p| p.display().to_string())).collect::<Result<Vec<_>, _>>()
            })
            .transpose()
            .context("cannot resolve the val split's path")?
            .map(SplitEntry::Many),
        Dataset::Coco(_) => None,
    };
    let names = dataset.names();
    let files = write_shards(&loaded.samples, &shards, names, val, &args.out)?;
    let widths: Vec<usize> = names.iter().map(|n| n.len().max(5)).collect();
    let header: Vec<String> = names.iter().zip(&widths).map(|(n, w)| format!("{n:>w$}")).collect();
    println!("{:<8} {:>7}  {}  dataset", "edge", "images", header.join(" "));
    for (k, (shard, f)) in shards.iter().zip(&files).enumerate() {
        let hist = class_histogram(&loaded.samples, shard, names.len());
        let cells: Vec<String> = hist.iter().zip(&widths).map(|(n, w)| format!("{n:>w$}")).collect();
        println!("{:<8} {:>7}  {}  {}", format!("edge-{k}"), shard.len(), cells.join(" "), f.yaml.display());
    }
    Ok(())
}
