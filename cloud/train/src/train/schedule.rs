//! Learning rate, momentum and gradient accumulation per iteration, as YOLOv5's `train.py`:
//!
//! - epoch factor `lf(e)`: linear `(1 − e/E)·(1 − lrf) + lrf`, or cosine `one_cycle(1, lrf, E)`;
//!   a group's rate after warmup is `lr0 · lf(epoch)` (LambdaLR stepped once per epoch);
//! - warmup over `nw = max(round(warmup_epochs · nb), warmup_min_iters)` iterations (YOLOv5: 100): `np.interp` from
//!   `warmup_bias_lr` (bias group) or 0 (other groups) to `lr0 · lf(epoch)`, momentum from
//!   `warmup_momentum` to `momentum`, accumulation from 1 to `nbs / batch_size` batches;
//! - afterwards the optimizer steps every `max(round(nbs / batch_size), 1)` batches.
//!
//! Rounding is Python's (half to even), so boundary iterations agree with `train.py`.

use std::f64::consts::PI;

use super::sgd::GroupKind;
use super::{Hyp, TrainError};

/// How the learning rate decays over the epochs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LrDecay {
    /// `train.py` default.
    Linear,
    /// `train.py --cos-lr`.
    Cosine,
}

/// What the optimizer uses at one iteration.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepSettings {
    /// Learning rate per group, indexed by [`GroupKind::index`].
    pub lr: [f64; 3],
    pub momentum: f64,
    /// Batches whose gradients are summed before an optimizer step.
    pub accumulate: usize,
}

/// The per-iteration schedule of one training run.
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    lr0: f64,
    lrf: f64,
    epochs: usize,
    decay: LrDecay,
    warmup_iters: usize,
    warmup_bias_lr: f64,
    warmup_momentum: f64,
    momentum: f64,
    /// `nbs / batch_size`.
    nominal_batches: f64,
}

impl Schedule {
    /// The schedule for `epochs` epochs of `batches_per_epoch` batches of `batch_size`, with a
    /// nominal batch size `nbs` (YOLOv5: 64).
    pub fn new(hyp: &Hyp, epochs: usize, batches_per_epoch: usize, batch_size: usize, nbs: usize, decay: LrDecay) -> Result<Self, TrainError> {
        let positive = |name: &'static str, v: usize| {
            if v == 0 { Err(TrainError::Hyp { name, reason: "must be at least 1".into() }) } else { Ok(()) }
        };
        positive("epochs", epochs)?;
        positive("batches_per_epoch", batches_per_epoch)?;
        positive("batch_size", batch_size)?;
        positive("nbs", nbs)?;
        if hyp.warmup_epochs.is_nan() || hyp.warmup_epochs < 0.0 {
            return Err(TrainError::Hyp { name: "warmup_epochs", reason: format!("must be non-negative, got {}", hyp.warmup_epochs) });
        }
        let warmup_iters = ((hyp.warmup_epochs * batches_per_epoch as f64).round_ties_even() as usize).max(hyp.warmup_min_iters);
        Ok(Self {
            lr0: hyp.lr0,
            lrf: hyp.lrf,
            epochs,
            decay,
            warmup_iters,
            warmup_bias_lr: hyp.warmup_bias_lr,
            warmup_momentum: hyp.warmup_momentum,
            momentum: hyp.momentum,
            nominal_batches: nbs as f64 / batch_size as f64,
        })
    }

    pub fn warmup_iters(&self) -> usize {
        self.warmup_iters
    }

    /// Batches per optimizer step after warmup; `train.py` scales weight decay by it.
    pub fn nominal_accumulate(&self) -> usize {
        (self.nominal_batches.round_ties_even() as usize).max(1)
    }

    /// The epoch factor `lf(epoch)`.
    pub fn lr_factor(&self, epoch: usize) -> f64 {
        let (x, e) = (epoch as f64, self.epochs as f64);
        match self.decay {
            LrDecay::Linear => (1.0 - x / e) * (1.0 - self.lrf) + self.lrf,
            LrDecay::Cosine => ((1.0 - (x * PI / e).cos()) / 2.0) * (self.lrf - 1.0) + 1.0,
        }
    }

    /// Settings at global iteration `ni` (batch index counted from the start of training) in `epoch`.
    pub fn at(&self, ni: usize, epoch: usize) -> StepSettings {
        let target = self.lr0 * self.lr_factor(epoch);
        if ni > self.warmup_iters {
            return StepSettings { lr: [target; 3], momentum: self.momentum, accumulate: self.nominal_accumulate() };
        }
        let interp = |from: f64, to: f64| interp(ni as f64, self.warmup_iters as f64, from, to);
        let lr = GroupKind::ALL.map(|k| interp(if k == GroupKind::Bias { self.warmup_bias_lr } else { 0.0 }, target));
        let accumulate = (interp(1.0, self.nominal_batches).round_ties_even() as usize).max(1);
        StepSettings { lr, momentum: interp(self.warmup_momentum, self.momentum), accumulate }
    }
}

/// `np.interp(x, [0, x1], [f0, f1])`.
fn interp(x: f64, x1: f64, f0: f64, f1: f64) -> f64 {
    if x >= x1 {
        f1
    } else if x <= 0.0 {
        f0
    } else {
        (f1 - f0) / x1 * x + f0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_is_at_least_100_iterations_and_rounds_half_to_even() {
        let s = Schedule::new(&Hyp::default(), 10, 20, 16, 64, LrDecay::Linear).unwrap();
        assert_eq!(s.warmup_iters(), 100);
        let s = Schedule::new(&Hyp { warmup_epochs: 2.5, ..Hyp::default() }, 10, 101, 16, 64, LrDecay::Linear).unwrap();
        assert_eq!(s.warmup_iters(), 252); // round(252.5) = 252
        // 64 / 128 = 0.5 rounds to 0, then max(·, 1).
        assert_eq!(Schedule::new(&Hyp::default(), 1, 1, 128, 64, LrDecay::Linear).unwrap().nominal_accumulate(), 1);
        assert_eq!(Schedule::new(&Hyp::default(), 1, 1, 24, 64, LrDecay::Linear).unwrap().nominal_accumulate(), 3);
    }

    #[test]
    fn starts_and_ends_warmup_at_the_hyp_values_and_decays_to_lrf() {
        let hyp = Hyp::default();
        let s = Schedule::new(&hyp, 300, 1000, 16, 64, LrDecay::Cosine).unwrap();
        let first = s.at(0, 0);
        assert_eq!(first.lr, [0.1, 0.0, 0.0]);
        assert_eq!((first.momentum, first.accumulate), (0.8, 1));
        let end = s.at(3000, 2);
        assert_eq!(end.lr, [0.01 * s.lr_factor(2); 3]);
        assert_eq!((end.momentum, end.accumulate), (0.937, 4));
        assert!((s.lr_factor(300) - hyp.lrf).abs() < 1e-15);
        let lin = Schedule::new(&hyp, 300, 1000, 16, 64, LrDecay::Linear).unwrap();
        assert!((lin.lr_factor(150) - (0.5 * 0.99 + 0.01)).abs() < 1e-15);
    }

    #[test]
    fn zero_sizes_are_refused() {
        assert!(Schedule::new(&Hyp::default(), 0, 1, 1, 64, LrDecay::Linear).unwrap_err().to_string().contains("epochs"));
    }
}
