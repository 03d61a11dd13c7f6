//! The training loop shared by `mistnet-cloud train` (the Back on received features) and
//! `pretrain` (the whole model on images): shuffled batches from a [`LabelledSource`], YOLOv5's
//! loss, optimizer and EMA ([`crate::train`]), an evaluation of the EMA model after every epoch,
//! and in the run directory:
//!
//! - `checkpoint.safetensors`: model state, optimizer state, EMA, the next epoch and the seed,
//!   written atomically after every epoch; [`fit`] continues from it with `resume`;
//! - `model.safetensors`: the deployable EMA model ([`mistnet::model::deploy`]);
//! - `results.csv`, `loss.png`, `map.png`: per-epoch losses, mAP, step time and samples a second;
//! - `metrics.prom`: the last epoch's, in the Prometheus text format ([`exposition`]).
//!
//! A [`Trainee`] with a [`Binarization`] trains the whole model binarization-aware ([`aware`]).
//!
//! [`fit_growing`] trains on a source that may grow between epochs (`train --follow`: samples
//! still being stored); every epoch's `results.csv` row says how many samples it saw.
//!
//! Randomness (shuffling, augmentation) is drawn from a ChaCha8 generator seeded with the seed
//! on stream `epoch` (the binarization's noise from ChaCha20, the same seed and stream), so a
//! resumed run repeats exactly what an uninterrupted one does.

pub mod aware;
pub mod checkpoint;
pub mod eval;
pub mod exposition;
pub mod images;
pub mod report;
pub mod source;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{Device, Tensor};
use indicatif::{ProgressBar, ProgressStyle};
use mistnet::model::deploy::{DeployMeta, Detector, save_deployable};
use mistnet::codec::{CodecRng, seeded_rng};
use mistnet::model::{ParamStore, Yolo, YoloOutput};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use crate::plot::PlotError;
use crate::train::{Hyp, LossConfig, LrDecay, ModelEma, Optimizer, OptimizerConfig, Target, TrainError, YoloLoss};
pub use aware::Binarization;
pub use eval::{EvalSet, Evaluation, Metrics};
pub use report::EpochRecord;
pub use source::{Augment, FeatureSet, FollowedStore, LabelledInput, LabelledSource, StoreExpect};

/// File names in the run directory.
pub const CHECKPOINT_FILE: &str = "checkpoint.safetensors";
pub const MODEL_FILE: &str = "model.safetensors";
pub const RESULTS_FILE: &str = "results.csv";
/// The last epoch's results in the Prometheus text format ([`exposition`]).
pub const METRICS_FILE: &str = "metrics.prom";

/// Errors of training and evaluation runs.
#[derive(Debug, thiserror::Error)]
pub enum FitError {
    #[error(transparent)]
    Train(#[from] TrainError),
    #[error(transparent)]
    Model(#[from] mistnet::model::ModelError),
    #[error(transparent)]
    Data(#[from] mistnet::data::DataError),
    #[error(transparent)]
    Codec(#[from] mistnet::codec::CodecError),
    #[error(transparent)]
    Coco(#[from] mistnet::metrics::map::CocoError),
    #[error(transparent)]
    Nms(#[from] mistnet::metrics::NmsError),
    #[error(transparent)]
    Plot(#[from] PlotError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error(transparent)]
    Encoder(#[from] mistnet::encoder::EncoderError),
    #[error(transparent)]
    Store(#[from] mistnet_store::StoreError),
    /// A sample that cannot be used (unreadable image, malformed message, wrong shape).
    #[error("sample {0}")]
    Sample(String),
    /// Settings that do not fit together.
    #[error("{0}")]
    Config(String),
    /// A checkpoint or results file that cannot be read back.
    #[error("checkpoint {path}: {reason}")]
    Checkpoint { path: PathBuf, reason: String },
    #[error("cannot write {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

/// Settings of a run.
#[derive(Debug, Clone)]
pub struct FitConfig {
    pub epochs: usize,
    pub batch_size: usize,
    /// Nominal batch size: gradients are accumulated to it (YOLOv5: 64).
    pub nominal_batch: usize,
    pub hyp: Hyp,
    pub decay: LrDecay,
    pub seed: u64,
    /// Augment training samples (the source decides how).
    pub augment: bool,
    /// Probability that an augmented sample is a mosaic of four (YOLOv5's hyp.scratch-low: 1).
    pub mosaic: f64,
    /// No mosaics in the last this many epochs of the schedule (Ultralytics' `close_mosaic`).
    pub close_mosaic: usize,
    /// Letterbox size of the images the inputs come from (scales the objectness gain).
    pub imgsz: u32,
    pub device: Device,
    /// The run directory.
    pub out: PathBuf,
    /// Stop after this many epochs of this call (the checkpoint lets a later call resume).
    pub stop_after: Option<usize>,
}

impl FitConfig {
    /// The mosaic probability of epoch `epoch`: [`FitConfig::mosaic`], 0 in the last
    /// [`FitConfig::close_mosaic`] epochs.
    pub fn mosaic_at(&self, epoch: usize) -> f64 {
        if epoch + self.close_mosaic >= self.epochs { 0.0 } else { self.mosaic }
    }
}

/// What is trained: `model` (whose parameters live in `store`) and what makes it deployable.
pub struct Trainee {
    pub model: Yolo,
    pub store: ParamStore,
    /// Tensors written into the deployable file besides the model's (the Front's, for a Back).
    pub fixed: BTreeMap<String, Tensor>,
    pub meta: DeployMeta,
    /// Binarize the output of layer `cut − 1` in training (a whole model's; [`aware`]).
    pub binarization: Option<Binarization>,
}

impl Trainee {
    /// The training forward pass (BatchNorm batch statistics), binarization-aware with noise
    /// from `noise` when the trainee has a [`Binarization`].
    fn forward_train(&self, input: &Tensor, noise: &mut CodecRng) -> Result<YoloOutput, FitError> {
        Ok(match &self.binarization {
            Some(b) if self.model.first() == 0 => self.model.forward_mapped(input, true, b.cut() - 1, &mut |x| b.apply(&x, noise))?,
            Some(_) => return Err(FitError::Config("binarization-aware training needs the whole model, not a Back".into())),
            None => self.model.forward_t(input, true)?,
        })
    }
}

/// A [`LabelledSource`] that may grow between epochs: [`fit_growing`] calls
/// [`refresh`](Self::refresh) before every epoch. Indices of samples already held stay valid.
pub trait GrowingSource: LabelledSource {
    /// Takes in the samples that became available since the last call; returns how many.
    fn refresh(&mut self) -> Result<usize, FitError>;
}

/// A source that never grows.
struct Fixed<'a>(&'a dyn LabelledSource);

impl LabelledSource for Fixed<'_> {
    fn len(&self) -> usize {
        self.0.len()
    }

    fn get(&self, index: usize, augment: Option<&mut Augment<'_>>) -> Result<LabelledInput, FitError> {
        self.0.get(index, augment)
    }
}

impl GrowingSource for Fixed<'_> {
    fn refresh(&mut self) -> Result<usize, FitError> {
        Ok(0)
    }
}

/// Trains `trainee` on `source` for the configured epochs, evaluating on `val` after each one.
/// With `resume`, continues from the run directory's checkpoint: the caller has built the model
/// from that file ([`checkpoint_path`]), and `fit` restores the optimizer, EMA and epoch.
pub fn fit(trainee: &Trainee, source: &dyn LabelledSource, val: &EvalSet, config: &FitConfig, resume: bool) -> Result<Vec<EpochRecord>, FitError> {
    fit_growing(trainee, &mut Fixed(source), val, config, resume)
}

/// [`fit`] on a source that may grow: before every epoch, [`GrowingSource::refresh`] takes in
/// what became available, and the epoch shuffles and trains on every sample held by then. The
/// warmup length (YOLOv5: `warmup_epochs` × batches an epoch, at least `warmup_min_iters`) is
/// set from the samples held at the start; the learning rate decays by epoch as in [`fit`]; the
/// schedule's iteration counts the batches of every epoch as they were.
pub fn fit_growing(trainee: &Trainee, source: &mut dyn GrowingSource, val: &EvalSet, config: &FitConfig, resume: bool) -> Result<Vec<EpochRecord>, FitError> {
    let n = source.len();
    let mut session = Session::new(trainee, &*source, config)?;
    std::fs::create_dir_all(&config.out).map_err(|source| FitError::Io { path: config.out.clone(), source })?;
    let checkpoint = config.out.join(CHECKPOINT_FILE);
    let (start, mut records) = if resume {
        let state = checkpoint::load(&checkpoint, &mut session.optimizer, &mut session.ema, config.seed)?;
        (state, report::read_results(&config.out.join(RESULTS_FILE), state)?)
    } else {
        (0, Vec::new())
    };
    if start >= config.epochs {
        tracing::info!(epochs = config.epochs, "the checkpoint has finished all epochs; nothing to do");
    }
    let end = config.stop_after.map_or(config.epochs, |k| (start + k).min(config.epochs));
    // The schedule's iteration: the batches of every earlier epoch, from the samples each saw
    // (rows of runs from before the `samples` column: this run's count, as they all had it).
    let mut iteration: usize = records.iter().map(|r| batches_of(r.samples.unwrap_or(n), config.batch_size)).sum();
    for epoch in start..end {
        let t0 = Instant::now();
        let added = source.refresh()?;
        let n = source.len();
        if added > 0 {
            tracing::info!(epoch, added, samples = n, "took in newly available samples");
        }
        let losses = session.train_epoch_at(trainee, &*source, config, epoch, iteration, &format!("epoch {}/{}", epoch + 1, config.epochs))?;
        iteration += losses.batches;
        let model_path = config.out.join(MODEL_FILE);
        let mut deploy = trainee.fixed.clone();
        deploy.extend(session.ema.tensors().iter().map(|(k, v)| (k.clone(), v.clone())));
        save_deployable(&deploy, &trainee.meta, &model_path)?;
        let metrics = val.evaluate(&Detector::load(&model_path, &config.device)?, config.batch_size, &config.device)?.metrics();
        checkpoint::save(&checkpoint, &trainee.store, &session.optimizer, &session.ema, epoch + 1, config.seed)?;
        let lr = session.optimizer.settings().lr;
        let seconds = t0.elapsed().as_secs_f64();
        let EpochLosses { box_loss, obj_loss, cls_loss, total_loss, step_seconds, samples_per_second, .. } = losses;
        records.push(EpochRecord {
            epoch,
            box_loss,
            obj_loss,
            cls_loss,
            total_loss,
            metrics,
            lr,
            seconds,
            step_seconds,
            samples_per_second,
            samples: Some(n),
        });
        report::write(&config.out, &records)?;
        tracing::info!(epoch, map50 = metrics.map50, map50_95 = metrics.map50_95, loss = total_loss, seconds, step_seconds, samples_per_second, samples = n, "epoch done");
    }
    Ok(records)
}

/// Batches of an epoch over `n` samples: at least `batch_size` each (the last takes the
/// remainder), so none has one sample.
fn batches_of(n: usize, batch_size: usize) -> usize {
    (n / batch_size).max(1)
}

/// Mean losses and timing of one epoch of [`Session::train_epoch`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EpochLosses {
    pub box_loss: f64,
    pub obj_loss: f64,
    pub cls_loss: f64,
    pub total_loss: f64,
    /// Wall time of the epoch's training steps.
    pub seconds: f64,
    pub step_seconds: f64,
    pub samples_per_second: f64,
    /// Batches (steps of the schedule) the epoch took.
    pub batches: usize,
}

/// One training run's loss, optimizer and EMA over a source, stepped an epoch at a time: what
/// [`fit`] runs, and what a federated client runs for its local epochs. The learning-rate
/// schedule is a function of the epoch index within `config.epochs`, so a caller may start at
/// any epoch (a federated round's place in the whole run).
pub struct Session {
    loss_fn: YoloLoss,
    pub optimizer: Optimizer,
    pub ema: ModelEma,
    batches: usize,
}

impl Session {
    /// A fresh optimizer (no momentum yet) and EMA over `trainee`'s current weights.
    pub fn new(trainee: &Trainee, source: &dyn LabelledSource, config: &FitConfig) -> Result<Self, FitError> {
        let n = source.len();
        if n < 2 {
            return Err(FitError::Config(format!("training needs at least 2 samples (BatchNorm batch statistics), got {n}")));
        }
        if config.batch_size < 2 {
            return Err(FitError::Config(format!("--batch must be at least 2 (BatchNorm batch statistics), got {}", config.batch_size)));
        }
        let batches = batches_of(n, config.batch_size);
        let detect = trainee.model.detect();
        let loss_fn = YoloLoss::new(detect, LossConfig::from_hyp(&config.hyp, detect.strides.len(), detect.nc, config.imgsz as usize)?)?;
        let opt_config = OptimizerConfig {
            hyp: config.hyp.clone(),
            batch_size: config.batch_size,
            nominal_batch: config.nominal_batch,
            epochs: config.epochs,
            batches_per_epoch: batches,
            decay: config.decay,
        };
        let optimizer = Optimizer::new(trainee.store.trainable(), &opt_config)?;
        let ema = ModelEma::new(&trainee.store.tensors())?;
        Ok(Self { loss_fn, optimizer, ema, batches })
    }

    /// Batches per epoch over the samples held at the start.
    pub fn batches(&self) -> usize {
        self.batches
    }

    /// One epoch (number `epoch` of the schedule) over `source`, whose size has not changed since
    /// [`Session::new`]: [`Session::train_epoch_at`] with every earlier epoch as long as this one.
    pub fn train_epoch(&mut self, trainee: &Trainee, source: &dyn LabelledSource, config: &FitConfig, epoch: usize, label: &str) -> Result<EpochLosses, FitError> {
        self.train_epoch_at(trainee, source, config, epoch, epoch * self.batches, label)
    }

    /// One epoch (number `epoch` of the schedule) over every sample `source` holds now, its first
    /// batch at the schedule's global iteration `iteration`: shuffled with the seed on stream
    /// `epoch`, augmented if configured, a progress bar prefixed with `label`.
    pub fn train_epoch_at(
        &mut self,
        trainee: &Trainee,
        source: &dyn LabelledSource,
        config: &FitConfig,
        epoch: usize,
        iteration: usize,
        label: &str,
    ) -> Result<EpochLosses, FitError> {
        let n = source.len();
        let batches = batches_of(n, config.batch_size);
        let t0 = Instant::now();
        let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
        rng.set_stream(epoch as u64);
        let mut order: Vec<usize> = (0..n).collect();
        order.shuffle(&mut rng);
        let mosaic = config.mosaic_at(epoch);
        // The randomized response of binarization-aware training, on its own stream per epoch.
        let mut noise = seeded_rng(config.seed);
        noise.set_stream(epoch as u64);
        let bar = ProgressBar::new(batches as u64).with_style(
            ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {per_sec} eta {eta} {msg}").expect("valid template").progress_chars("=> "),
        );
        bar.set_prefix(label.to_string());
        let mut sums = [0f64; 4];
        for i in 0..batches {
            let end = if i + 1 == batches { n } else { (i + 1) * config.batch_size };
            let mut augment = config.augment.then_some(Augment { rng: &mut rng, mosaic });
            let (inputs, targets) = make_batch(source, &order[i * config.batch_size..end], augment.as_mut())?;
            let out = trainee.forward_train(&inputs.to_device(&config.device)?, &mut noise)?;
            let loss = self.loss_fn.compute(&out.raw, &targets)?;
            if self.optimizer.backward_step_at(&loss.total, epoch, iteration + i)? {
                self.ema.update(&trainee.store.tensors())?;
            }
            let total = loss.lbox + loss.lobj + loss.lcls;
            if !total.is_finite() {
                return Err(FitError::Config(format!("the loss became {total} at epoch {epoch}, batch {i}: lower lr0")));
            }
            for (s, v) in sums.iter_mut().zip([loss.lbox, loss.lobj, loss.lcls, total]) {
                *s += f64::from(v);
            }
            tracing::info!(epoch, step = i, box_loss = loss.lbox, obj_loss = loss.lobj, cls_loss = loss.lcls, total_loss = total, "train step");
            bar.set_message(format!("box {:.4} obj {:.4} cls {:.4}", loss.lbox, loss.lobj, loss.lcls));
            bar.inc(1);
        }
        bar.finish_and_clear();
        let seconds = t0.elapsed().as_secs_f64();
        let mean = sums.map(|s| s / batches as f64);
        Ok(EpochLosses {
            box_loss: mean[0],
            obj_loss: mean[1],
            cls_loss: mean[2],
            total_loss: mean[3],
            seconds,
            step_seconds: seconds / batches as f64,
            samples_per_second: n as f64 / seconds,
            batches,
        })
    }
}

/// Stacks the samples at `indices` into `[B, C, H, W]` and YOLOv5 targets
/// `(image, class, x, y, w, h)` normalized to the input.
pub fn make_batch(source: &dyn LabelledSource, indices: &[usize], mut augment: Option<&mut Augment<'_>>) -> Result<(Tensor, Vec<Target>), FitError> {
    let mut inputs = Vec::with_capacity(indices.len());
    let mut targets = Vec::new();
    for (image, &index) in indices.iter().enumerate() {
        let s = source.get(index, augment.as_deref_mut())?;
        if let Some(first) = inputs.first().map(Tensor::dims).filter(|&d| d != s.input.dims()) {
            return Err(FitError::Sample(format!("{index}: input shape {:?} differs from the batch's {first:?}", s.input.dims())));
        }
        targets.extend(s.labels.iter().map(|l| Target { image, class: l.class, x: l.cx, y: l.cy, w: l.w, h: l.h }));
        inputs.push(s.input);
    }
    Ok((Tensor::stack(&inputs, 0)?, targets))
}

/// YOLOv5's `_initialize_biases` for a freshly initialised Detect head: objectness bias
/// `+= ln(8 / (640/s)²)` (about 8 objects per 640 px image), class biases `+= ln(0.6 / (nc − 0.99))`.
pub fn initialize_detect_biases(store: &ParamStore, model: &Yolo) -> Result<(), FitError> {
    let detect = model.detect();
    let head = model.specs().len() - 1;
    let params: BTreeMap<String, candle_core::Var> = store.trainable().into_iter().collect();
    let no = detect.nc + 5;
    for (level, &stride) in detect.strides.iter().enumerate() {
        let name = format!("model.{head}.m.{level}.bias");
        let var = params.get(&name).ok_or_else(|| FitError::Config(format!("the model has no {name}")))?;
        let mut b = var.as_tensor().to_device(&Device::Cpu)?.to_vec1::<f32>()?;
        for a in 0..detect.na {
            b[a * no + 4] += (8.0 / (640.0 / stride as f64).powi(2)).ln() as f32;
            for c in 0..detect.nc {
                b[a * no + 5 + c] += (0.6 / (detect.nc as f64 - 0.99999)).ln() as f32;
            }
        }
        var.set(&Tensor::from_vec(b, var.dims(), var.device())?)?;
    }
    Ok(())
}

/// Writes to `out` a deployable model holding the Front (modules 0..cut-1) of the deployable model
/// `weights` and a freshly initialised Back, as `train --fresh-back` starts: the untrained
/// reference that a Back trained on binarized features is measured against.
pub fn save_untrained_back(weights: &Path, cut: usize, out: &Path) -> Result<(), FitError> {
    let meta = DeployMeta::read(weights)?;
    let store = ParamStore::fresh(0);
    let back = mistnet::model::load_back(&meta.specs()?, cut, &store, &Device::Cpu)?;
    initialize_detect_biases(&store, &back)?;
    let mut all = store.tensors();
    let prefixes = mistnet::model::split::front_prefixes(cut);
    let front = candle_core::safetensors::load(weights, &Device::Cpu)?;
    all.extend(front.into_iter().filter(|(k, _)| prefixes.iter().any(|p| k.starts_with(p.as_str()))));
    save_deployable(&all, &DeployMeta { binarized_cut: Some(cut), ..meta }, out)?;
    Ok(())
}

/// The checkpoint path of a run directory.
pub fn checkpoint_path(out: &Path) -> PathBuf {
    out.join(CHECKPOINT_FILE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_mosaic_turns_the_mosaic_off_for_the_last_epochs() {
        let config = |mosaic, close_mosaic| FitConfig {
            epochs: 5,
            batch_size: 2,
            nominal_batch: 2,
            hyp: Hyp::default(),
            decay: LrDecay::Linear,
            seed: 0,
            augment: true,
            mosaic,
            close_mosaic,
            imgsz: 32,
            device: Device::Cpu,
            out: PathBuf::new(),
            stop_after: None,
        };
        let per_epoch = |c: &FitConfig| (0..5).map(|e| c.mosaic_at(e)).collect::<Vec<_>>();
        assert_eq!(per_epoch(&config(0.5, 2)), [0.5, 0.5, 0.5, 0.0, 0.0]);
        assert_eq!(per_epoch(&config(1.0, 0)), [1.0; 5]);
        assert_eq!(per_epoch(&config(1.0, 9)), [0.0; 5]);
    }
}
