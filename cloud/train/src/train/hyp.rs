//! Training hyper-parameters: YOLOv5's `data/hyps/hyp.scratch-low.yaml` (the values that concern
//! the loss and the optimizer; image augmentations do not apply to stored features) and the
//! scaling `train.py` applies to the loss gains.

use serde::{Deserialize, Serialize};

use super::TrainError;

/// The loss and optimizer entries of a YOLOv5 hyp file. Unknown keys (augmentations) are ignored
/// when deserialising, so an Ultralytics hyp YAML loads as is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hyp {
    /// Initial learning rate.
    pub lr0: f64,
    /// Final learning rate as a fraction of `lr0`.
    pub lrf: f64,
    /// SGD momentum.
    pub momentum: f64,
    /// Weight decay at the nominal batch size (64).
    pub weight_decay: f64,
    /// Warmup length in epochs (fractions allowed); at least `warmup_min_iters` iterations are used.
    pub warmup_epochs: f64,
    /// The fewest warmup iterations (`train.py` hard-codes 100). Not a YOLOv5 hyp key: lower it
    /// only for runs so short that 100 iterations would be most of them.
    #[serde(default = "default_warmup_min_iters")]
    pub warmup_min_iters: usize,
    /// Momentum at the start of warmup.
    pub warmup_momentum: f64,
    /// Learning rate of the bias group at the start of warmup.
    pub warmup_bias_lr: f64,
    /// Box (CIoU) loss gain, before `train.py`'s scaling.
    #[serde(rename = "box")]
    pub box_gain: f64,
    /// Class loss gain, before scaling.
    pub cls: f64,
    /// Positive weight of the class BCE.
    pub cls_pw: f64,
    /// Objectness loss gain, before scaling.
    pub obj: f64,
    /// Positive weight of the objectness BCE.
    pub obj_pw: f64,
    /// A target matches an anchor when both width and height ratios are below this.
    pub anchor_t: f64,
    /// Focal loss gamma; only 0 (plain BCE, YOLOv5's default) is supported.
    #[serde(default)]
    pub fl_gamma: f64,
    /// Class label smoothing epsilon (`train.py --label-smoothing`, default 0).
    #[serde(default)]
    pub label_smoothing: f64,
}

fn default_warmup_min_iters() -> usize {
    100
}

impl Default for Hyp {
    /// `hyp.scratch-low.yaml`.
    fn default() -> Self {
        Self {
            lr0: 0.01,
            lrf: 0.01,
            momentum: 0.937,
            weight_decay: 0.0005,
            warmup_epochs: 3.0,
            warmup_min_iters: default_warmup_min_iters(),
            warmup_momentum: 0.8,
            warmup_bias_lr: 0.1,
            box_gain: 0.05,
            cls: 0.5,
            cls_pw: 1.0,
            obj: 1.0,
            obj_pw: 1.0,
            anchor_t: 4.0,
            fl_gamma: 0.0,
            label_smoothing: 0.0,
        }
    }
}

/// What `ComputeLoss` reads, with `train.py`'s scaling already applied.
#[derive(Debug, Clone, PartialEq)]
pub struct LossConfig {
    pub box_gain: f64,
    pub obj_gain: f64,
    pub cls_gain: f64,
    pub cls_pw: f64,
    pub obj_pw: f64,
    pub anchor_t: f64,
    pub label_smoothing: f64,
    /// Objectness target = `(1 − gr) + gr · IoU`; YOLOv5 uses 1.
    pub gr: f64,
    /// Objectness weight per level: `[4, 1, 0.4]` for three levels.
    pub balance: Vec<f64>,
}

impl LossConfig {
    /// The loss configuration `train.py` builds for `nl` detection levels, `nc` classes and
    /// square images of `imgsz` pixels:
    /// `box *= 3/nl`, `cls *= nc/80 · 3/nl`, `obj *= (imgsz/640)² · 3/nl`.
    pub fn from_hyp(hyp: &Hyp, nl: usize, nc: usize, imgsz: usize) -> Result<Self, TrainError> {
        if hyp.fl_gamma != 0.0 {
            return Err(TrainError::Hyp { name: "fl_gamma", reason: format!("focal loss is not implemented (got {}, use 0)", hyp.fl_gamma) });
        }
        if !(0.0..1.0).contains(&hyp.label_smoothing) {
            return Err(TrainError::Hyp { name: "label_smoothing", reason: format!("must be in [0, 1), got {}", hyp.label_smoothing) });
        }
        if hyp.anchor_t <= 1.0 {
            return Err(TrainError::Hyp { name: "anchor_t", reason: format!("must be above 1, got {}", hyp.anchor_t) });
        }
        let balance = if nl == 3 { vec![4.0, 1.0, 0.4] } else { vec![4.0, 1.0, 0.25, 0.06, 0.02] };
        if nl == 0 || nl > balance.len() {
            return Err(TrainError::Hyp { name: "balance", reason: format!("YOLOv5 defines level weights for 1..=5 levels, the model has {nl}") });
        }
        let layers = 3.0 / nl as f64;
        Ok(Self {
            box_gain: hyp.box_gain * layers,
            obj_gain: hyp.obj * (imgsz as f64 / 640.0).powi(2) * layers,
            cls_gain: hyp.cls * nc as f64 / 80.0 * layers,
            cls_pw: hyp.cls_pw,
            obj_pw: hyp.obj_pw,
            anchor_t: hyp.anchor_t,
            label_smoothing: hyp.label_smoothing,
            gr: 1.0,
            balance: balance[..nl].to_vec(),
        })
    }

    /// `smooth_BCE`: class targets for the positive and the negative classes.
    pub fn class_targets(&self) -> (f64, f64) {
        (1.0 - 0.5 * self.label_smoothing, 0.5 * self.label_smoothing)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn train_py_scaling() {
        let c = LossConfig::from_hyp(&Hyp::default(), 3, 80, 640).unwrap();
        assert_eq!((c.box_gain, c.obj_gain, c.cls_gain), (0.05, 1.0, 0.5));
        let c = LossConfig::from_hyp(&Hyp::default(), 3, 20, 320).unwrap();
        assert_eq!((c.obj_gain, c.cls_gain), (0.25, 0.125));
        assert_eq!(c.balance, vec![4.0, 1.0, 0.4]);
    }

    #[test]
    fn unsupported_values_are_refused_by_name() {
        let hyp = Hyp { fl_gamma: 1.5, ..Hyp::default() };
        let err = LossConfig::from_hyp(&hyp, 3, 80, 640).unwrap_err().to_string();
        assert!(err.contains("fl_gamma"), "{err}");
        assert!(LossConfig::from_hyp(&Hyp::default(), 6, 80, 640).is_err());
    }
}
