//! `mistnet-cloud privacy`: model-inversion and re-identification attacks on the features edges
//! send, a verdict per cut and ε, and optionally the mAP each ε leaves (see [`mistnet_privacy`]).

use std::ffi::OsString;
use std::path::PathBuf;

use anyhow::Result;
use indicatif::{ProgressBar, ProgressStyle};
use mistnet::codec::{MECHANISM_HELP, Mechanism};
use mistnet_cli::ldp::DEFAULT_MECHANISM;
use mistnet_cli::{Argv, DeviceArgs, ImageSizeArgs, ModelArgs, ToArgs};
use mistnet_privacy::decoder::DecoderConfig;
use mistnet_privacy::observe::Weights;
use mistnet_privacy::optimize::OptimizeConfig;
use mistnet_privacy::report::write_outputs;
use mistnet_privacy::utility::UtilityConfig;
use mistnet_privacy::verdict::Criteria;
use mistnet::model::DEFAULT_CUT;
use mistnet_privacy::{Attack, EvalConfig, evaluate};

/// The default image side of the sweep: the job's.
const DEFAULT_IMGSZ: &str = "128";
const DEFAULT_SYNTHETIC: usize = 0;
const DEFAULT_AUX_IMAGES: usize = 256;
const DEFAULT_OPT_IMAGES: usize = 8;
/// What `--thorough` raises the schedule to (each flag given explicitly still wins).
const THOROUGH_AUX_IMAGES: usize = 1024;
const THOROUGH_DECODER_STEPS: usize = 3000;
const THOROUGH_FINETUNE_STEPS: usize = 1000;
const THOROUGH_OPT_STEPS: usize = 500;

#[derive(clap::Args, Debug, Clone, PartialEq)]
#[command(mut_arg("imgsz", |a| a.default_value(DEFAULT_IMGSZ)))]
#[command(after_help = "\
The attacker is white-box: it knows the Front's weights, the mechanism and ε, and sees what the cloud sees — the
decoded bits of each wire message (binarize, randomized response, bit-pack, zstd, decode), or the raw float
features as the unprotected reference. Settings swept per cut: float, 1bit (no noise), then MECHANISM at each ε.
Attacks: `decoder` (an upsampling conv net with residual blocks, trained with AdamW and a cosine schedule on
auxiliary images encoded exactly as edges encode them, each batch flipped at random and encoded afresh, loss MSE
+ (1 − SSIM); auxiliary images: public-domain synthetic images and crops of photos disjoint from the held-out
set, plus --aux-photos), `optimization` (Adam on an input image through the differentiable Front, sigmoid
surrogate of the binarization, the exact randomized-response likelihood of the observed bits, a total-variation
prior and, for bits, a prior towards mid-grey; He et al. 2019, as the MistNet paper) and `combined` (the
optimization started from, and anchored to, the decoder's reconstruction).

Scored on held-out images no attack trained on (default: 33 embedded real photos — scikit-image, matplotlib,
scikit-learn and deepforest aerial photos — plus --synthetic private-domain synthetic images): SSIM as
scikit-image's structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
data_range=255), mean over RGB, PSNR, and re-identification: each reconstruction ranks all held-out originals
by similarity (mean squared difference of 16x16 thumbnails); top-1/top-5 hits against chance (1/N, 5/N) with a
one-sided binomial p-value.

Verdict per (cut, setting), over every attack: `unrecognisable` only when every attack's SSIM is below
--ssim-threshold (0.3, the MistNet paper's), no more than --baseline-margin above the blind guess (the mean
auxiliary image, features ignored), and re-identification is at chance (p ≥ --alpha); else `recognisable`
(SSIM), `re-identifiable` or `above blind guess`, naming every failed test. Calibration: on float features at
the same cut the strongest attack must reach --calibration-ssim and re-identify above chance; where it does not,
a setting that passes every test reads `attack too weak to judge`.

Utility: with --val DATA and --back MODEL (a MistNet model from `mistnet-cloud train`, trained at one of --cuts), each
bits setting also scores that model on DATA's val split as `mistnet-cloud val` does, its Front's features crossing
the codec under the setting's mechanism and ε: map50 and map50_95 (COCO) per row, and its mAP@.5 against ε in the
plot. Float rows and other cuts have none; the 1bit row equals `mistnet-cloud val`.

Writes to --out: report.csv (one row per cut, setting, attack: cut, setting, features, mechanism, epsilon,
attack, ssim, psnr, ssim_min, ssim_max, reid_top1, reid_top5, reid_p_top1, reid_p_top5, verdict, map50,
map50_95), report.json (the same rows, plus criteria, baseline_ssim, calibration and verdicts),
privacy_utility.png (per cut against ε: the strongest attack's SSIM, the top-1 re-identification rate and the
mAP@.5, with the thresholds and the noiseless values dashed), grids/cut<k>-<setting>.png (top row originals,
then one row per attack in --attacks order) and, with --save-reconstructions,
pairs/cut<k>-<setting>-<attack>/<name>_orig.png and <name>_recon.png.

The Front attacked is the one the edges run: --weights, or --back's. A randomly initialised Front is attacked only
with --random-init (it is not what MistNet deploys, and the report says so).

The default (cut 4, 128 px, 33 held-out photos, 256 auxiliary images, decoder and combined attacks) takes a few
minutes on 2 CPU cores in a release build; --thorough spends what a convincing answer takes (about fifteen times
longer).

Examples:
  mistnet-cloud privacy --weights runs/job/export/front.safetensors --out privacy-report
  mistnet-cloud privacy --weights front.safetensors --cuts 1,2,4 --thorough --threads 2 --out report
  mistnet-cloud privacy --back runs/job/train/model.safetensors --val runs/job/data/private.yaml --epsilons 8,4,2,1,0.5 --out report
  mistnet-cloud privacy --random-init --mechanism rr --cuts 1,2 --epsilons 2,1,0.5 --out report")]
pub struct Args {
    /// Directory for the report, plots and images (created if missing).
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub model: ModelArgs,
    /// Safetensors file(s) holding at least the Front's tensors (Ultralytics names): the Front the edges run
    /// (the job's is export/front.safetensors). Default: --back if given.
    #[arg(long, num_args = 1..)]
    pub weights: Vec<PathBuf>,
    /// Attack a randomly initialised Front (from --seed) instead of --weights: not what MistNet deploys.
    #[arg(long, conflicts_with_all = ["weights", "back"])]
    pub random_init: bool,
    /// Cuts to evaluate (see `mistnet-cloud cuts`). Default: the edges' default cut.
    #[arg(long, value_delimiter = ',', default_values_t = [DEFAULT_CUT])]
    pub cuts: Vec<usize>,
    /// Randomized-response mechanism swept over --epsilons: sue, rr, oue or none.
    #[arg(long, default_value_t = DEFAULT_MECHANISM, long_help = MECHANISM_HELP)]
    pub mechanism: Mechanism,
    /// Values of ε swept (per element, as the wire format's header carries it).
    #[arg(long, value_delimiter = ',', default_value = "8,4,2,1,0.5")]
    pub epsilons: Vec<f64>,
    /// Attacks to run: decoder, optimization, combined. The optimization attack from grey needs far more steps
    /// than the combined one (which starts from the decoder's reconstruction) to reach as far.
    #[arg(long, value_delimiter = ',', default_value = "decoder,combined")]
    pub attacks: Vec<Attack>,
    // Images are letterboxed to --imgsz as edges do.
    #[command(flatten)]
    pub imgsz: ImageSizeArgs,
    /// Directory of held-out images to attack instead of the embedded photos.
    #[arg(long)]
    pub images: Option<PathBuf>,
    /// Private-domain synthetic images added to the held-out set.
    #[arg(long, default_value_t = DEFAULT_SYNTHETIC)]
    pub synthetic: usize,
    /// Auxiliary images the decoder trains on (half synthetic, half crops of photos). Default: 256, 1024 with
    /// --thorough.
    #[arg(long)]
    pub aux_images: Option<usize>,
    /// Directory of photos the attacker also holds (e.g. the cloud's public split): their random crops join
    /// the embedded auxiliary photos'. Must not hold the held-out images.
    #[arg(long, value_name = "DIR")]
    pub aux_photos: Option<PathBuf>,
    /// Decoder training steps from scratch, for float and for 1-bit features at each cut. Default: 200, 3000 with
    /// --thorough.
    #[arg(long)]
    pub decoder_steps: Option<usize>,
    /// Decoder steps for each ε, fine-tuning the previous bits setting's decoder (1-bit's for the first ε).
    /// Default: 60, 1000 with --thorough.
    #[arg(long)]
    pub decoder_finetune_steps: Option<usize>,
    /// Decoder minibatch size.
    #[arg(long, default_value_t = DecoderConfig::default().batch)]
    pub decoder_batch: usize,
    /// Decoder channels at the features' resolution at stride 8 (cut 4 of YOLOv5), scaled with the Front's stride
    /// (half at stride 4, a quarter at stride 2); halved per upsampling, at least 16.
    #[arg(long, default_value_t = DecoderConfig::default().width)]
    pub decoder_width: usize,
    /// Decoder residual blocks at the features' resolution.
    #[arg(long, default_value_t = DecoderConfig::default().blocks)]
    pub decoder_blocks: usize,
    /// Decoder AdamW peak learning rate (cosine-decayed to 5% of it).
    #[arg(long, default_value_t = DecoderConfig::default().lr)]
    pub decoder_lr: f64,
    /// Weight of the decoder loss's (1 − SSIM) term beside its mean squared error (0: MSE only).
    #[arg(long, default_value_t = DecoderConfig::default().ssim_weight)]
    pub decoder_ssim_weight: f64,
    /// Adam steps of the optimization and combined attacks per (cut, setting). Default: 100, 500 with --thorough.
    #[arg(long)]
    pub opt_steps: Option<usize>,
    /// Held-out images the optimization and combined attacks reconstruct, evenly spaced over the set (0: all);
    /// each is re-identified among every held-out image. The decoder reconstructs them all.
    #[arg(long, default_value_t = DEFAULT_OPT_IMAGES)]
    pub opt_images: usize,
    /// Adam learning rate of the optimization attack (on the image's logits).
    #[arg(long, default_value_t = OptimizeConfig::default().lr)]
    pub opt_lr: f64,
    /// Weight of the total-variation prior of the optimization attack.
    #[arg(long, default_value_t = OptimizeConfig::default().tv_weight)]
    pub tv_weight: f64,
    /// Weight of the optimization attack's prior towards mid-grey (the combined attack: towards the decoder's
    /// reconstruction), mean((image - anchor)^2), on bits settings only: bits fix only the features' signs, and
    /// without it the image drifts to saturated colours.
    #[arg(long, default_value_t = OptimizeConfig::default().grey_weight)]
    pub grey_weight: f64,
    /// Slope k of the binarization surrogate sigmoid(k·x) of the optimization attack.
    #[arg(long, default_value_t = OptimizeConfig::default().sharpness)]
    pub sharpness: f64,
    /// Spend what a convincing answer takes: raises the defaults of --aux-images, --decoder-steps and --opt-steps.
    #[arg(long)]
    pub thorough: bool,
    /// SSIM below which a reconstruction is unrecognisable (the MistNet paper's threshold).
    #[arg(long, default_value_t = Criteria::default().ssim)]
    pub ssim_threshold: f64,
    /// How far above the blind guess's SSIM an attack may score and still count as seeing nothing.
    #[arg(long, default_value_t = Criteria::default().baseline_margin)]
    pub baseline_margin: f64,
    /// Significance level of the re-identification tests.
    #[arg(long, default_value_t = Criteria::default().alpha)]
    pub alpha: f64,
    /// SSIM the strongest attack must reach on float features at a cut before that cut's verdicts count.
    #[arg(long, default_value_t = Criteria::default().calibration_ssim)]
    pub calibration_ssim: f64,
    /// Seed of everything random: a random-init Front, images, LDP noise, decoder init and batches.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// CPU threads (sets RAYON_NUM_THREADS).
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Also write every original/reconstruction pair as PNGs under pairs/.
    #[arg(long)]
    pub save_reconstructions: bool,
    /// Labelled dataset (Ultralytics YAML, COCO JSON or YOLO directory) whose val split scores
    /// --back under every setting: adds the mAP cost of each ε (needs --back).
    #[arg(long, value_name = "DATA", requires = "back")]
    pub val: Option<PathBuf>,
    /// A deployable MistNet model from `mistnet-cloud train` (a Back trained on binarized features
    /// at one of --cuts) evaluated on --val; its Front must be the attacked one (--weights defaults to it).
    #[arg(long, value_name = "MODEL", requires = "val")]
    pub back: Option<PathBuf>,
    #[command(flatten)]
    pub device: DeviceArgs,
}

impl Args {
    /// The sweep `privacy --out OUT` runs: every other flag at its default.
    pub fn defaults(out: PathBuf) -> Self {
        let (decoder, optimize, criteria) = (DecoderConfig::default(), OptimizeConfig::default(), Criteria::default());
        Args {
            out,
            model: ModelArgs { name: mistnet_cli::model::DEFAULT_MODEL.to_string() },
            weights: Vec::new(),
            random_init: false,
            cuts: vec![DEFAULT_CUT],
            mechanism: DEFAULT_MECHANISM,
            epsilons: vec![8.0, 4.0, 2.0, 1.0, 0.5],
            attacks: vec![Attack::Decoder, Attack::Combined],
            imgsz: ImageSizeArgs { px: DEFAULT_IMGSZ.parse().expect("a number") },
            images: None,
            synthetic: DEFAULT_SYNTHETIC,
            aux_images: None,
            aux_photos: None,
            decoder_steps: None,
            decoder_finetune_steps: None,
            decoder_batch: decoder.batch,
            decoder_width: decoder.width,
            decoder_blocks: decoder.blocks,
            decoder_lr: decoder.lr,
            decoder_ssim_weight: decoder.ssim_weight,
            opt_steps: None,
            opt_images: DEFAULT_OPT_IMAGES,
            opt_lr: optimize.lr,
            tv_weight: optimize.tv_weight,
            grey_weight: optimize.grey_weight,
            sharpness: optimize.sharpness,
            thorough: false,
            ssim_threshold: criteria.ssim,
            baseline_margin: criteria.baseline_margin,
            alpha: criteria.alpha,
            calibration_ssim: criteria.calibration_ssim,
            seed: 0,
            threads: 1,
            save_reconstructions: false,
            val: None,
            back: None,
            device: DeviceArgs::default(),
        }
    }

    /// The schedule (auxiliary images, decoder steps, fine-tune steps, optimization steps):
    /// explicit flags, else `--thorough`'s or the default values.
    fn schedule(&self) -> (usize, usize, usize, usize) {
        let (aux, dec, fine, opt) = if self.thorough {
            (THOROUGH_AUX_IMAGES, THOROUGH_DECODER_STEPS, THOROUGH_FINETUNE_STEPS, THOROUGH_OPT_STEPS)
        } else {
            let d = DecoderConfig::default();
            (DEFAULT_AUX_IMAGES, d.steps, d.finetune_steps, OptimizeConfig::default().steps)
        };
        (
            self.aux_images.unwrap_or(aux),
            self.decoder_steps.unwrap_or(dec),
            self.decoder_finetune_steps.unwrap_or(fine),
            self.opt_steps.unwrap_or(opt),
        )
    }
}

impl ToArgs for Args {
    fn to_args(&self) -> Vec<OsString> {
        Argv::new()
            .arg("--out", &self.out)
            .group(&self.model)
            .each("--weights", &self.weights)
            .switch("--random-init", self.random_init)
            .each("--cuts", self.cuts.iter().map(|c| c.to_string()))
            .arg("--mechanism", self.mechanism.name())
            .each("--epsilons", self.epsilons.iter().map(|e| e.to_string()))
            .each("--attacks", self.attacks.iter().map(|a| a.name()))
            .group(&self.imgsz)
            .opt("--images", self.images.as_ref())
            .arg("--synthetic", self.synthetic.to_string())
            .opt("--aux-images", self.aux_images.map(|n| n.to_string()))
            .opt("--aux-photos", self.aux_photos.as_ref())
            .opt("--decoder-steps", self.decoder_steps.map(|n| n.to_string()))
            .opt("--decoder-finetune-steps", self.decoder_finetune_steps.map(|n| n.to_string()))
            .arg("--decoder-batch", self.decoder_batch.to_string())
            .arg("--decoder-width", self.decoder_width.to_string())
            .arg("--decoder-blocks", self.decoder_blocks.to_string())
            .arg("--decoder-lr", self.decoder_lr.to_string())
            .arg("--decoder-ssim-weight", self.decoder_ssim_weight.to_string())
            .opt("--opt-steps", self.opt_steps.map(|n| n.to_string()))
            .arg("--opt-images", self.opt_images.to_string())
            .arg("--opt-lr", self.opt_lr.to_string())
            .arg("--tv-weight", self.tv_weight.to_string())
            .arg("--grey-weight", self.grey_weight.to_string())
            .arg("--sharpness", self.sharpness.to_string())
            .switch("--thorough", self.thorough)
            .arg("--ssim-threshold", self.ssim_threshold.to_string())
            .arg("--baseline-margin", self.baseline_margin.to_string())
            .arg("--alpha", self.alpha.to_string())
            .arg("--calibration-ssim", self.calibration_ssim.to_string())
            .arg("--seed", self.seed.to_string())
            .arg("--threads", self.threads.to_string())
            .switch("--save-reconstructions", self.save_reconstructions)
            .opt("--val", self.val.as_ref())
            .opt("--back", self.back.as_ref())
            .group(&self.device)
            .build()
    }
}

pub fn run(args: Args) -> Result<()> {
    if args.threads == 0 {
        anyhow::bail!("--threads must be at least 1");
    }
    // rayon's pool and candle's GEMM both size themselves from RAYON_NUM_THREADS (candle reads it
    // at every matmul, so a local rayon pool alone leaves its GEMM splitting work for 2 threads).
    // SAFETY: nothing else runs yet: no thread has been started and nothing reads the environment.
    unsafe { std::env::set_var("RAYON_NUM_THREADS", args.threads.to_string()) };
    let (aux_images, decoder_steps, finetune_steps, opt_steps) = args.schedule();
    let weights = match (&args.back, args.weights.is_empty(), args.random_init) {
        (_, _, true) => Weights::RandomInit(args.seed),
        (_, false, false) => Weights::Files(args.weights),
        (Some(back), true, false) => Weights::Files(vec![back.clone()]),
        (None, true, false) => anyhow::bail!(
            "give --weights FRONT (the Front the edges run: the job writes it to <job>/export/front.safetensors) or --back MODEL; --random-init attacks a random Front, which MistNet never deploys"
        ),
    };
    if let Weights::RandomInit(seed) = weights {
        tracing::warn!(seed, "no --weights: attacking a RANDOMLY INITIALISED Front; MistNet uses a pretrained Front, so these numbers are not MistNet's");
    }
    let cfg = EvalConfig {
        model: args.model.name,
        weights,
        cuts: args.cuts,
        mechanism: args.mechanism,
        epsilons: args.epsilons,
        attacks: args.attacks,
        imgsz: args.imgsz.px,
        images: args.images,
        synthetic: args.synthetic,
        aux_images,
        aux_photos: args.aux_photos,
        decoder: DecoderConfig {
            width: args.decoder_width,
            blocks: args.decoder_blocks,
            steps: decoder_steps,
            finetune_steps,
            batch: args.decoder_batch,
            lr: args.decoder_lr,
            ssim_weight: args.decoder_ssim_weight,
        },
        opt_images: args.opt_images,
        optimize: OptimizeConfig { steps: opt_steps, lr: args.opt_lr, tv_weight: args.tv_weight, grey_weight: args.grey_weight, sharpness: args.sharpness },
        utility: args.val.zip(args.back).map(|(val, back)| UtilityConfig { val, back }),
        criteria: Criteria {
            ssim: args.ssim_threshold,
            baseline_margin: args.baseline_margin,
            alpha: args.alpha,
            calibration_ssim: args.calibration_ssim,
        },
        seed: args.seed,
    };
    let device = args.device.open()?;
    let progress = ProgressBar::new(cfg.total_steps());
    progress.set_style(
        ProgressStyle::with_template("{spinner} {msg:<18} [{bar:40}] {pos}/{len} steps, {elapsed} (eta {eta})")
            .expect("valid template")
            .progress_chars("=> "),
    );
    let eval = evaluate(&cfg, &device, &progress)?;
    write_outputs(&eval, &args.out, args.save_reconstructions)?;
    print!("{}", eval.report.table());
    println!("wrote {}", args.out.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use mistnet_cli::argv::reparse;
    use mistnet_cli::device::DeviceSpec;

    #[test]
    fn the_defaults_are_what_parsing_out_alone_gives() {
        let command = <Args as clap::Args>::augment_args(clap::Command::new("privacy").no_binary_name(true));
        let parsed = <Args as clap::FromArgMatches>::from_arg_matches(&command.try_get_matches_from(["--out", "r"]).unwrap()).unwrap();
        assert_eq!(parsed, Args::defaults("r".into()));
    }

    #[test]
    fn privacy_flags_parse_back() {
        let a = Args::defaults("r".into());
        assert_eq!(reparse(&a).unwrap(), a);
        let b = Args {
            model: ModelArgs { name: "yolov5s".into() },
            weights: vec!["a.safetensors".into(), "b.safetensors".into()],
            cuts: vec![1, 2],
            mechanism: Mechanism::Oue,
            epsilons: vec![0.1 + 0.2],
            attacks: vec![Attack::Optimization],
            imgsz: ImageSizeArgs { px: 128 },
            images: Some("photos".into()),
            synthetic: 3,
            aux_images: Some(8),
            aux_photos: Some("public".into()),
            decoder_steps: Some(2),
            decoder_finetune_steps: Some(1),
            decoder_batch: 3,
            decoder_width: 16,
            decoder_blocks: 0,
            decoder_lr: 1e-4,
            decoder_ssim_weight: 0.5,
            opt_steps: Some(5),
            opt_images: 0,
            opt_lr: 0.3,
            tv_weight: 0.0,
            grey_weight: 0.25,
            sharpness: 7.5,
            thorough: true,
            ssim_threshold: 0.25,
            baseline_margin: 0.1,
            alpha: 0.01,
            calibration_ssim: 0.7,
            seed: 9,
            threads: 2,
            save_reconstructions: true,
            val: Some("v.yaml".into()),
            back: Some("m.safetensors".into()),
            device: DeviceArgs { spec: DeviceSpec::Cuda(1) },
            ..a
        };
        assert_eq!(reparse(&b).unwrap(), b);
    }
}
