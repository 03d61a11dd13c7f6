//! `mistnet-cloud privacy`: model-inversion attacks on the features edges send, SSIM/PSNR
//! against ε per cut, with a report (see [`mistnet_privacy`]).

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
use mistnet_privacy::{Attack, EvalConfig, evaluate};

/// The default image side of the sweep: small, so that the default run takes minutes.
const DEFAULT_IMGSZ: &str = "64";
const DEFAULT_SYNTHETIC: usize = 2;
const DEFAULT_AUX_IMAGES: usize = 64;

#[derive(clap::Args, Debug, Clone, PartialEq)]
#[command(mut_arg("imgsz", |a| a.default_value(DEFAULT_IMGSZ)))]
#[command(after_help = "\
The attacker is white-box: it knows the Front's weights, the mechanism and ε, and sees what the cloud sees — the
decoded bits of each wire message (binarize, randomized response, bit-pack, zstd, decode), or the raw float
features as the unprotected reference. Settings swept per cut: float, 1bit (no noise), then MECHANISM at each ε.
Attacks: `decoder` (an upsampling conv net trained with AdamW on auxiliary images encoded exactly as edges encode
them: public-domain synthetic images and crops of photos disjoint from the held-out set) and `optimization`
(Adam on an input image through the differentiable Front, sigmoid surrogate of the binarization, the exact
randomized-response likelihood of the observed bits, a total-variation prior and, for bits, a prior towards
mid-grey; He et al. 2019, as the MistNet paper).
Scored on held-out images no attack trained on (default: 4 embedded public-domain photos from scikit-image plus
--synthetic private-domain synthetic images): SSIM as scikit-image's structural_similarity(gaussian_weights=True,
sigma=1.5, use_sample_covariance=False, data_range=255), mean over RGB, and PSNR. Verdict: SSIM < 0.3, the
MistNet paper's threshold, is unrecognisable.

Utility: with --val DATA and --back MODEL (a MistNet model from `mistnet-cloud train`, trained at one of --cuts), each
bits setting also scores that model on DATA's val split as `mistnet-cloud val` does, its Front's features crossing
the codec under the setting's mechanism and ε: map50 and map50_95 (COCO) per row, and its mAP@.5 against ε in the
plot. Float rows and other cuts have none; the 1bit row equals `mistnet-cloud val`.

Writes to --out: report.csv and report.json (one row per cut, setting, attack: cut, setting, features,
mechanism, epsilon, attack, ssim, psnr, ssim_min, ssim_max, verdict, map50, map50_95), ssim_vs_epsilon.png,
grids/cut<k>-<setting>.png (top row originals, then one row per attack in --attacks order) and, with
--save-reconstructions, pairs/cut<k>-<setting>-<attack>/<name>_orig.png and <name>_recon.png.

Without --weights (or --back) the Front is randomly initialised from --seed: a random Front is not what MistNet deploys
(it uses a pretrained one), and the report says so.

The default (yolov5n, cuts 1 and 2, 64 px, 6 held-out images, 64 auxiliary ones) takes about 2 minutes on 2
busy CPU cores; real runs want more decoder steps, more auxiliary images and larger images.

Examples:
  mistnet-cloud privacy --out privacy-report
  mistnet-cloud privacy --mechanism rr --epsilons 2,1,0.5 --decoder-steps 200 --opt-steps 600 --out report
  mistnet-cloud privacy --model yolov5s --weights yolov5s.safetensors --cuts 1,2,4 --imgsz 128 --aux-images 256 \\
    --decoder-steps 1000 --opt-steps 1000 --threads 2 --out report
  mistnet-cloud privacy --back runs/mistnet/model.safetensors --val data/synth/private-val.yaml --cuts 4 --out report")]
pub struct Args {
    /// Directory for the report, plots and images (created if missing).
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub model: ModelArgs,
    /// Safetensors file(s) holding at least the Front's tensors (Ultralytics names). Default: --back if given,
    /// else a random init.
    #[arg(long, num_args = 1..)]
    pub weights: Vec<PathBuf>,
    /// Cuts to evaluate (see `mistnet-cloud cuts`).
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    pub cuts: Vec<usize>,
    /// Randomized-response mechanism swept over --epsilons: sue, rr, oue or none.
    #[arg(long, default_value_t = DEFAULT_MECHANISM, long_help = MECHANISM_HELP)]
    pub mechanism: Mechanism,
    /// Values of ε swept (per element, as the wire format's header carries it).
    #[arg(long, value_delimiter = ',', default_value = "8,4,2,1,0.5")]
    pub epsilons: Vec<f64>,
    /// Attacks to run: decoder, optimization.
    #[arg(long, value_delimiter = ',', default_value = "decoder,optimization")]
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
    /// Auxiliary images the decoder trains on (half synthetic, half crops of other photos).
    #[arg(long, default_value_t = DEFAULT_AUX_IMAGES)]
    pub aux_images: usize,
    /// Decoder training steps per (cut, setting).
    #[arg(long, default_value_t = DecoderConfig::default().steps)]
    pub decoder_steps: usize,
    /// Decoder minibatch size.
    #[arg(long, default_value_t = DecoderConfig::default().batch)]
    pub decoder_batch: usize,
    /// Decoder channels at the features' resolution (halved per upsampling, at least 16).
    #[arg(long, default_value_t = DecoderConfig::default().width)]
    pub decoder_width: usize,
    /// Decoder AdamW learning rate.
    #[arg(long, default_value_t = DecoderConfig::default().lr)]
    pub decoder_lr: f64,
    /// Adam steps of the optimization attack per (cut, setting).
    #[arg(long, default_value_t = OptimizeConfig::default().steps)]
    pub opt_steps: usize,
    /// Adam learning rate of the optimization attack (on the image's logits).
    #[arg(long, default_value_t = OptimizeConfig::default().lr)]
    pub opt_lr: f64,
    /// Weight of the total-variation prior of the optimization attack.
    #[arg(long, default_value_t = OptimizeConfig::default().tv_weight)]
    pub tv_weight: f64,
    /// Weight of the optimization attack's prior towards mid-grey, mean((image - 0.5)^2), on bits settings only:
    /// bits fix only the features' signs, and without it the image drifts to saturated colours.
    #[arg(long, default_value_t = OptimizeConfig::default().grey_weight)]
    pub grey_weight: f64,
    /// Slope k of the binarization surrogate sigmoid(k·x) of the optimization attack.
    #[arg(long, default_value_t = OptimizeConfig::default().sharpness)]
    pub sharpness: f64,
    /// Seed of everything random: a random-init Front, images, LDP noise, decoder init and batches.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// CPU threads (sets RAYON_NUM_THREADS). The sweep's tensors are small: on the shared 2-core box one
    /// thread ran the default sweep 4x faster than two (123 s against 528 s), whose workers mostly wait.
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
        let (decoder, optimize) = (DecoderConfig::default(), OptimizeConfig::default());
        Args {
            out,
            model: ModelArgs { name: mistnet_cli::model::DEFAULT_MODEL.to_string() },
            weights: Vec::new(),
            cuts: vec![1, 2],
            mechanism: DEFAULT_MECHANISM,
            epsilons: vec![8.0, 4.0, 2.0, 1.0, 0.5],
            attacks: Attack::ALL.to_vec(),
            imgsz: ImageSizeArgs { px: DEFAULT_IMGSZ.parse().expect("a number") },
            images: None,
            synthetic: DEFAULT_SYNTHETIC,
            aux_images: DEFAULT_AUX_IMAGES,
            decoder_steps: decoder.steps,
            decoder_batch: decoder.batch,
            decoder_width: decoder.width,
            decoder_lr: decoder.lr,
            opt_steps: optimize.steps,
            opt_lr: optimize.lr,
            tv_weight: optimize.tv_weight,
            grey_weight: optimize.grey_weight,
            sharpness: optimize.sharpness,
            seed: 0,
            threads: 1,
            save_reconstructions: false,
            val: None,
            back: None,
            device: DeviceArgs::default(),
        }
    }
}

impl ToArgs for Args {
    fn to_args(&self) -> Vec<OsString> {
        Argv::new()
            .arg("--out", &self.out)
            .group(&self.model)
            .each("--weights", &self.weights)
            .each("--cuts", self.cuts.iter().map(|c| c.to_string()))
            .arg("--mechanism", self.mechanism.name())
            .each("--epsilons", self.epsilons.iter().map(|e| e.to_string()))
            .each("--attacks", self.attacks.iter().map(|a| a.name()))
            .group(&self.imgsz)
            .opt("--images", self.images.as_ref())
            .arg("--synthetic", self.synthetic.to_string())
            .arg("--aux-images", self.aux_images.to_string())
            .arg("--decoder-steps", self.decoder_steps.to_string())
            .arg("--decoder-batch", self.decoder_batch.to_string())
            .arg("--decoder-width", self.decoder_width.to_string())
            .arg("--decoder-lr", self.decoder_lr.to_string())
            .arg("--opt-steps", self.opt_steps.to_string())
            .arg("--opt-lr", self.opt_lr.to_string())
            .arg("--tv-weight", self.tv_weight.to_string())
            .arg("--grey-weight", self.grey_weight.to_string())
            .arg("--sharpness", self.sharpness.to_string())
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
    let weights = match (&args.back, args.weights.is_empty()) {
        (_, false) => Weights::Files(args.weights),
        (Some(back), true) => Weights::Files(vec![back.clone()]),
        (None, true) => Weights::RandomInit(args.seed),
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
        aux_images: args.aux_images,
        decoder: DecoderConfig { width: args.decoder_width, steps: args.decoder_steps, batch: args.decoder_batch, lr: args.decoder_lr },
        optimize: OptimizeConfig { steps: args.opt_steps, lr: args.opt_lr, tv_weight: args.tv_weight, grey_weight: args.grey_weight, sharpness: args.sharpness },
        utility: args.val.zip(args.back).map(|(val, back)| UtilityConfig { val, back }),
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
            cuts: vec![4],
            mechanism: Mechanism::Oue,
            epsilons: vec![0.1 + 0.2],
            attacks: vec![Attack::Optimization],
            imgsz: ImageSizeArgs { px: 128 },
            images: Some("photos".into()),
            synthetic: 0,
            aux_images: 8,
            decoder_steps: 2,
            decoder_batch: 3,
            decoder_width: 16,
            decoder_lr: 1e-4,
            opt_steps: 5,
            opt_lr: 0.3,
            tv_weight: 0.0,
            grey_weight: 0.25,
            sharpness: 7.5,
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
