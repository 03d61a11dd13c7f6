//! `mistnet-cloud job`: the whole MistNet job on one machine, through the real binaries.
//!
//! Generates the data (or takes a directory laid out the same way), pretrains the whole model on
//! the public split and exports the Front, serves the feature store on loopback, runs one
//! `mistnet-edge run` process per private shard, trains the Back on what is stored (while the edges
//! upload, from `--min-samples` stored samples on; after them with `--no-follow`), trains the
//! centralized baseline on the raw private images, evaluates all of them on the held-out private
//! split, attacks the features at the chosen ε, and writes a summary with plots. Every phase is a
//! child process with its log under `--out/logs`; Ctrl-C stops them all.

mod compare;
mod phases;
mod seeds;
mod summary;
mod supervisor;

use std::path::PathBuf;

use anyhow::{Result, bail};
use mistnet::codec::Mechanism;
use mistnet_cli::{CutArgs, DeviceArgs, ImageSizeArgs, LdpArgs, ModelArgs};

use crate::run_flags::MosaicFlags;

/// The job's defaults where they differ from the commands' own: small images and a stated ε, so that
/// `mistnet-cloud job` alone runs a private job in minutes.
const DEFAULT_IMGSZ: &str = "128";
const DEFAULT_EPSILON: &str = "4";
/// No mosaic by default: at the default sizes it raised the public-only model's mAP but not MistNet's, and lowered the
/// centralized baseline's (README, "What is not done yet").
const DEFAULT_MOSAIC: &str = "0";
const MOSAIC_HELP: &str = "Probability of a mosaic in every training phase (pretrain, MistNet, centralized, FedAvg; see \
`pretrain --help`). Off by default here: at the default sizes it raised the public-only model but not MistNet, and lowered \
the centralized baseline.";

#[derive(clap::Args, Debug, Clone)]
#[command(mut_arg("imgsz", |a| a.default_value(DEFAULT_IMGSZ).help("Letterbox size in pixels of every phase (square; a positive multiple of 32).")))]
#[command(mut_arg("epsilon", |a| a.default_value(DEFAULT_EPSILON).help("Privacy parameter ε of every edge, 0 < ε <= 64.")))]
#[command(mut_arg("mosaic", |a| a.default_value(DEFAULT_MOSAIC).help(MOSAIC_HELP)))]
#[command(after_help = "Phases, each a child process with its log in --out/logs/<phase>.log:\n\
1. data: `synth` writes the public split, one private shard per edge and a held-out private split (skipped with --data).\n\
2. pretrain: `pretrain` trains the whole model on the public split (skipped with --weights); with --aware-pretrain, \
binarization-aware (`pretrain --binarize-cut`): the Back reads the Front's output binarized at --cut and randomized with \
--mechanism at --epsilon, as the edges will send it.\n\
3. export: `export` writes the Front at --cut and --imgsz with its manifest.\n\
4. serve: `serve --front` serves the export on 127.0.0.1 (a free port) with a fresh token per edge; the store is --out/store. \
The job waits until its gRPC health service reports the upload service SERVING.\n\
5. edges: one `mistnet-edge run` per shard fetches the Front, extracts, privatizes and streams over gRPC.\n\
6. train: `train --store --follow` trains the Back on the stored features, from the pretrained weights, while the edges \
upload: it starts once --min-samples are stored and takes in the samples stored since before every epoch (serve stops \
when the last edge is done; the train phase's time runs from its start, alongside the edges, waiting included). \
With --no-follow it starts after every edge has finished.\n\
7. centralized: `pretrain` trains the whole model on the raw private images (no split, no noise), same start and epochs.\n\
8. fedavg: `fedavg` trains the whole model federated on the same shards from the same start: --epochs / --fedavg-local-epochs \
rounds, every edge each round, FedAvg by sample count, clients in-process (skipped with --skip-fedavg).\n\
9. val: `val` scores the public-only, MistNet, centralized and FedAvg models on the held-out private split (--out/val/<model>.json).\n\
10. privacy: `privacy` attacks the edges' Front at --cut (float, 1-bit, and --mechanism at each --privacy-epsilons and \
--epsilon; with --data, the public split's images join the attacker's auxiliary photos) and scores the MistNet model on the held-out \
private split under each: the privacy–utility table and plot (privacy/privacy_utility.png).\n\n\
The summary says how many samples each training epoch saw and how many were stored in the end.\n\n\
Writes into --out: summary.json, summary.md (also printed), map.png (MistNet against centralized per epoch), \
fedavg.png (mAP@.5 against cumulative bytes per edge, MistNet and FedAvg, centralized as a line), \
and the directories data, pretrain, export, store, edges, train, centralized, fedavg, val, privacy and logs. \
With --seeds N, each seed's run is in --out/seed-<s> and --out holds seeds.json and seeds.md (also printed): \
the mean ± sd of each model's mAP over the seeds.\n\n\
The defaults (yolov5n, 128 px, 600 images, 2 edges, 20 epochs) finish within about 15 minutes on 2 CPU cores; \
the FedAvg phase takes about as long as the centralized one. \
For real runs raise --imgsz, --images, --epochs and --pretrain-epochs, pick --model, and give training more --threads \
on a machine with cores to spare.\n\n\
Examples:\n  mistnet-cloud job --out runs/job\n  \
mistnet-cloud job --out runs/big --model yolov5s --imgsz 320 --images 4000 --edges 4 --pretrain-epochs 100 --epochs 100 --epsilon 2 --threads 8")]
pub struct Args {
    /// Run directory (created; must be empty or absent).
    #[arg(long, default_value = "runs/job")]
    pub out: PathBuf,
    /// Use this dataset directory instead of generating one. It must be laid out as `synth` writes it:
    /// public.yaml, private/edge-<k>.yaml for k = 0..edges-1, private.yaml and private-val.yaml.
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// Images to generate over all splits (see `mistnet-cloud synth --help`).
    #[arg(long, default_value_t = 600)]
    pub images: usize,
    #[command(flatten)]
    pub imgsz: ImageSizeArgs,
    /// Edge agents, one process each, one private shard each.
    #[arg(long, default_value_t = 2)]
    pub edges: usize,
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub cut: CutArgs,
    /// A pretrained deployable model (`pretrain`'s model.safetensors) to use instead of pretraining.
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// Epochs of pretraining on the public split.
    #[arg(long, default_value_t = 20)]
    pub pretrain_epochs: usize,
    /// Pretrain binarization-aware at --cut with the edges' --mechanism and --epsilon (`pretrain --binarize-cut`), so
    /// that MistNet starts from a Back that already reads the edges' bits, instead of on float features. Off by default:
    /// at the default sizes MistNet's first epoch then scores at least the public-only model, but on the noiseless bits
    /// `val` scores its later epochs fall well below those of MistNet from a float-pretrained model, though on noisy
    /// bits they score above them (README, "What is not done yet").
    #[arg(long, conflicts_with = "weights")]
    pub aware_pretrain: bool,
    /// Epochs of MistNet training and of the centralized baseline (the same for both).
    #[arg(long, default_value_t = 20)]
    pub epochs: usize,
    /// Batch size of every training phase (also the nominal batch: no accumulation).
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    /// The fewest warmup iterations of every training phase (default: YOLOv5's 100); lower it for tiny runs.
    #[arg(long, value_name = "N")]
    pub warmup_min_iters: Option<usize>,
    // The mosaic augmentation of every training phase (pretrain, MistNet's train, centralized, FedAvg).
    #[command(flatten)]
    pub mosaic: MosaicFlags,
    // The edges' randomized response (not none: the job demonstrates a private setting).
    #[command(flatten)]
    pub privacy: LdpArgs,
    /// The ε swept by the privacy phase (the attacks and the MistNet model's mAP at each); --epsilon is added
    /// when missing.
    #[arg(long, value_delimiter = ',', default_value = "8,4,2,1,0.5")]
    pub privacy_epsilons: Vec<f64>,
    /// Decoder-attack training steps of the privacy phase (default: `privacy`'s).
    #[arg(long)]
    pub decoder_steps: Option<usize>,
    /// Decoder fine-tune steps per ε of the privacy phase (default: `privacy`'s).
    #[arg(long)]
    pub decoder_finetune_steps: Option<usize>,
    /// Optimization-attack steps of the privacy phase (default: `privacy`'s).
    #[arg(long)]
    pub opt_steps: Option<usize>,
    /// Train only once every edge has finished uploading (the sequence before `train --follow`), instead of
    /// while they upload.
    #[arg(long)]
    pub no_follow: bool,
    /// Stored samples that training waits for before its first epoch while the edges upload (default: half of
    /// the edges' samples, at least --batch).
    #[arg(long, value_name = "N", conflicts_with = "no_follow")]
    pub min_samples: Option<usize>,
    /// Skip the privacy phase.
    #[arg(long)]
    pub skip_privacy: bool,
    /// Skip the FedAvg phase (the federated baseline on the same shards).
    #[arg(long)]
    pub skip_fedavg: bool,
    /// Local epochs per FedAvg round; the rounds are --epochs / this, so that every method trains the same total epochs.
    #[arg(long, default_value_t = 1)]
    pub fedavg_local_epochs: usize,
    /// Seed of the generated data, of training and of the edges' randomized-response noise (edge k draws
    /// from seed + 1000 + k), so that a run repeats. The job's edges run beside the cloud on this machine,
    /// a simulation; a real edge (`mistnet-edge run` without --seed) draws its noise from the OS.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Run the whole job once per seed (--seed, --seed + 1, ...), each into --out/seed-<s>, and report the mean ±
    /// sample sd (min–max) of every model's mAP and of MistNet/centralized over them (--out/seeds.json, seeds.md).
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub seeds: usize,
    /// CPU threads (rayon's pool) of each training phase; each edge process uses one. The default
    /// suits a machine shared with other work; on idle cores, give training the cores it has.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    // The device of training, evaluation and the privacy attacks.
    #[command(flatten)]
    pub device: DeviceArgs,
}

impl Args {
    /// The ε of the privacy sweep: --privacy-epsilons, with --epsilon added when missing, largest first.
    pub fn privacy_epsilons(&self) -> Vec<f64> {
        let mut all = self.privacy_epsilons.clone();
        all.extend(self.privacy.epsilon.filter(|e| !self.privacy_epsilons.contains(e)));
        all.sort_by(|a, b| b.total_cmp(a));
        all
    }

    /// Checks the flags before anything starts.
    fn validate(&self) -> Result<()> {
        if self.edges == 0 {
            bail!("--edges must be at least 1");
        }
        if self.batch < 2 {
            bail!("--batch must be at least 2 (BatchNorm uses batch statistics)");
        }
        if self.epochs == 0 || (self.weights.is_none() && self.pretrain_epochs == 0) {
            bail!("--epochs and --pretrain-epochs must be at least 1");
        }
        if self.privacy.mechanism == Mechanism::None {
            bail!("--mechanism none sends features without privacy; the job demonstrates a private setting (use sue, rr or oue)");
        }
        self.privacy.privacy()?;
        if let Some(e) = self.privacy_epsilons.iter().find(|e| !(e.is_finite() && **e > 0.0)) {
            bail!("--privacy-epsilons: every ε must be a positive number, got {e}");
        }
        if std::fs::read_dir(&self.out).is_ok_and(|mut d| d.next().is_some()) {
            bail!("--out {} is not empty: choose a new directory", self.out.display());
        }
        if self.fedavg_local_epochs == 0 || !self.epochs.is_multiple_of(self.fedavg_local_epochs) {
            bail!("--fedavg-local-epochs must divide --epochs ({}): FedAvg trains rounds × local epochs = --epochs", self.epochs);
        }
        if self.threads == 0 {
            bail!("--threads must be at least 1");
        }
        if self.seeds == 0 {
            bail!("--seeds must be at least 1");
        }
        if let Some(n) = self.min_samples
            && n < 2
        {
            bail!("--min-samples must be at least 2 (BatchNorm uses batch statistics), got {n}");
        }
        Ok(())
    }
}

pub fn run(args: Args) -> Result<()> {
    args.validate()?;
    if args.seeds > 1 { seeds::run(args) } else { phases::Job::new(args)?.run() }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(argv: &[&str]) -> Result<Args, clap::Error> {
        let command = <Args as clap::Args>::augment_args(clap::Command::new("job").no_binary_name(true));
        <Args as clap::FromArgMatches>::from_arg_matches(&command.try_get_matches_from(argv)?)
    }

    #[test]
    fn the_job_defaults_to_small_images_and_a_stated_epsilon() {
        let args = parse(&[]).unwrap();
        assert_eq!((args.imgsz.px, args.privacy.mechanism, args.privacy.epsilon), (128, Mechanism::Sue, Some(4.0)));
        assert_eq!(args.model.name, mistnet_cli::model::DEFAULT_MODEL);
        assert!(parse(&["--imgsz", "100"]).unwrap_err().to_string().contains("multiple of 32"));
        let none = parse(&["--mechanism", "none", "--out", "/nonexistent/job"]).unwrap();
        assert!(none.validate().unwrap_err().to_string().contains("without privacy"));
        assert!(!args.no_follow && args.min_samples.is_none(), "the job trains while the edges upload by default");
        let one = parse(&["--min-samples", "1", "--out", "/nonexistent/job"]).unwrap();
        assert!(one.validate().unwrap_err().to_string().contains("--min-samples must be at least 2"));
        assert!(parse(&["--no-follow", "--min-samples", "10"]).is_err(), "--min-samples without following");
        assert!(!args.aware_pretrain, "the job pretrains on float features by default");
        assert_eq!((args.mosaic.mosaic, args.mosaic.close_mosaic), (0.0, 0), "no mosaic by default in the job");
        assert!(parse(&["--mosaic", "1.5"]).unwrap_err().to_string().contains("0..=1"));
        assert!(parse(&["--aware-pretrain"]).unwrap().aware_pretrain);
        assert!(parse(&["--aware-pretrain", "--weights", "w.safetensors"]).is_err(), "--aware-pretrain with pretrained weights");
    }
}
