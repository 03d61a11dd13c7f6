//! `mistnet-cloud synth`: generate the embedded default dataset (see `mistnet::data::synth`).

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use mistnet::data::synth::{SynthConfig, generate};
use mistnet_cli::{Argv, ToArgs};

#[derive(clap::Args, Debug, Clone, PartialEq)]
#[command(after_help = "Writes, under DIR (which must be empty or absent):\n  \
public.yaml             public train + val split (the cloud's pretraining data)\n  \
private/edge-<k>.yaml   edge k's private split (another domain: backgrounds, lighting, class mix)\n  \
private-val.yaml        the held-out private split, for evaluation\n  \
private.yaml            all edges' private images together (the centralized baseline)\n  \
manifest.json, README.md  what was generated\n\
Images are PNG in YOLO layout (images/NNNNNN.png, labels/NNNNNN.txt). The same flags give the same bytes.\n\n\
Example:\n  mistnet-cloud synth --out data/synth --images 600 --imgsz 128 --edges 3 --seed 7")]
pub struct Args {
    /// Output directory (created; must be empty).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Images in all splits together: 40% public train, 10% public val, 40% private (over the edges), 10% private val.
    #[arg(long, default_value_t = SynthConfig::default().images)]
    pub images: usize,
    /// Image side in pixels (square).
    #[arg(long, default_value_t = SynthConfig::default().imgsz)]
    pub imgsz: u32,
    /// Random seed: the same seed gives the same dataset, byte for byte.
    #[arg(long, default_value_t = SynthConfig::default().seed)]
    pub seed: u64,
    /// Number of private per-edge splits.
    #[arg(long, default_value_t = SynthConfig::default().edges)]
    pub edges: usize,
    /// Size of the private splits' images (the edges' and the held-out split) as WIDTHxHEIGHT, e.g. 224x128:
    /// drawn at --imgsz square, then resized, as non-square camera photos. Default: --imgsz square.
    #[arg(long, value_name = "WxH", value_parser = parse_size)]
    pub private_size: Option<(u32, u32)>,
}

/// `WIDTHxHEIGHT` in pixels.
fn parse_size(s: &str) -> Result<(u32, u32), String> {
    let (w, h) = s.split_once('x').ok_or_else(|| format!("expected WIDTHxHEIGHT, e.g. 224x128, got {s:?}"))?;
    let side = |v: &str| v.parse::<u32>().map_err(|_| format!("{v:?} is not a pixel count in {s:?}"));
    Ok((side(w)?, side(h)?))
}

impl ToArgs for Args {
    fn to_args(&self) -> Vec<OsString> {
        Argv::new()
            .arg("--out", &self.out)
            .arg("--images", self.images.to_string())
            .arg("--imgsz", self.imgsz.to_string())
            .arg("--seed", self.seed.to_string())
            .arg("--edges", self.edges.to_string())
            .opt("--private-size", self.private_size.map(|(w, h)| format!("{w}x{h}")))
            .build()
    }
}

pub fn run(args: Args) -> Result<()> {
    let cfg = SynthConfig { images: args.images, imgsz: args.imgsz, seed: args.seed, edges: args.edges, private_size: args.private_size };
    let start = Instant::now();
    let manifest = generate(&cfg, &args.out)?;
    println!("{:<16} {:<8} {:>6}  objects per class ({})", "split", "domain", "images", manifest.classes.join(", "));
    for s in &manifest.splits {
        println!("{:<16} {:<8} {:>6}  {:?}", s.name, s.domain, s.images, s.objects);
    }
    println!("wrote {} images to {} in {:.1} s", cfg.images, args.out.display(), start.elapsed().as_secs_f64());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synth_flags_parse_back() {
        let a = Args { out: "data/x".into(), images: 300, imgsz: 96, seed: 3, edges: 4, private_size: None };
        assert_eq!(mistnet_cli::argv::reparse(&a).unwrap(), a);
        let wide = Args { private_size: Some((224, 128)), ..a };
        assert_eq!(mistnet_cli::argv::reparse(&wide).unwrap(), wide);
    }
}
