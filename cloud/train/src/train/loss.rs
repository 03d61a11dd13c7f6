//! The YOLOv5 loss, as `utils/loss.py` `ComputeLoss` of YOLOv5 7.0:
//!
//! per level `i`, for the assigned predictions (see [`super::targets`]):
//! - box: `mean(1 − CIoU)` of `xy = 2σ(t) − 0.5`, `wh = (2σ(t))²·anchor` against the target box;
//! - objectness: BCE of every cell's objectness logit against `(1 − gr) + gr·clamp(CIoU, 0)`
//!   (detached) at assigned cells and 0 elsewhere, weighted by the level's `balance`;
//! - class: BCE of the assigned class logits against `cp` / `cn` (only when `nc > 1`);
//!
//! then `loss = (box·Σbox + obj·Σobj + cls·Σcls) · batch size`.

use candle_core::{DType, Device, Tensor};
use candle_nn::ops::sigmoid;
use mistnet::model::detect::Detect;

use super::bce::bce_with_logits_mean;
use super::ciou::bbox_ciou;
use super::targets::{Assignment, Target, assign};
use super::{LossConfig, TrainError};

/// The loss of one batch.
#[derive(Debug, Clone)]
pub struct LossOutput {
    /// `(lbox + lobj + lcls) · bs`, a scalar to call `backward` on.
    pub total: Tensor,
    /// The gained box, objectness and class terms (YOLOv5's `loss_items`), for logging.
    pub lbox: f32,
    pub lobj: f32,
    pub lcls: f32,
}

/// `ComputeLoss` for one Detect head.
#[derive(Debug, Clone)]
pub struct YoloLoss {
    config: LossConfig,
    /// Anchors per level in grid units.
    anchors: Vec<Vec<[f32; 2]>>,
    nc: usize,
}

impl YoloLoss {
    pub fn new(detect: &Detect, config: LossConfig) -> Result<Self, TrainError> {
        let anchors: Vec<Vec<[f32; 2]>> = detect
            .anchors
            .to_dtype(DType::F32)?
            .to_vec3::<f32>()?
            .into_iter()
            .map(|level| level.into_iter().map(|a| [a[0], a[1]]).collect())
            .collect();
        if config.balance.len() != anchors.len() {
            return Err(TrainError::Hyp {
                name: "balance",
                reason: format!("{} level weights for a head with {} levels", config.balance.len(), anchors.len()),
            });
        }
        Ok(Self { config, anchors, nc: detect.nc })
    }

    /// The loss of raw head outputs `[bs, na, ny, nx, nc+5]` per level against `targets`.
    pub fn compute(&self, raw: &[Tensor], targets: &[Target]) -> Result<LossOutput, TrainError> {
        if raw.len() != self.anchors.len() {
            return Err(TrainError::Predictions(format!("{} levels given, the head has {}", raw.len(), self.anchors.len())));
        }
        let bs = raw[0].dim(0)?;
        for (i, t) in targets.iter().enumerate() {
            t.validate(i, bs, self.nc)?;
        }
        let device = raw[0].device().clone();
        let zero = || Tensor::zeros((), DType::F32, &device);
        let (mut lbox, mut lobj, mut lcls) = (zero()?, zero()?, zero()?);
        for (level, p) in raw.iter().enumerate() {
            let (pbs, na, ny, nx, no) = p.dims5().map_err(|_| TrainError::Predictions(format!("level {level} must be [bs, na, ny, nx, nc+5], got {:?}", p.dims())))?;
            if pbs != bs || na != self.anchors[level].len() || no != self.nc + 5 {
                return Err(TrainError::Predictions(format!(
                    "level {level} has shape {:?}, expected [{bs}, {}, ny, nx, {}]",
                    p.dims(),
                    self.anchors[level].len(),
                    self.nc + 5
                )));
            }
            let p = p.to_dtype(DType::F32)?;
            let assigned = assign(targets, &self.anchors[level], ny, nx, self.config.anchor_t as f32);
            let mut tobj = vec![0f32; bs * na * ny * nx];
            if !assigned.is_empty() {
                let cell = |a: &Assignment| ((a.image * na + a.anchor) * ny + a.gj) * nx + a.gi;
                let rows: Vec<u32> = assigned.iter().map(|a| cell(a) as u32).collect();
                let n = rows.len();
                let ps = p.reshape((bs * na * ny * nx, no))?.index_select(&Tensor::from_vec(rows, n, &device)?, 0)?;
                let ciou = self.box_iou(&ps, &assigned, &device)?;
                lbox = (lbox + (1.0 - &ciou)?.mean_all()?)?;

                let gr = self.config.gr;
                for (a, iou) in assigned.iter().zip(ciou.detach().to_vec1::<f32>()?) {
                    // Later assignments overwrite earlier ones, as PyTorch's index_put does.
                    tobj[cell(a)] = ((1.0 - gr) + gr * iou.max(0.0) as f64) as f32;
                }
                if self.nc > 1 {
                    let (cp, cn) = self.config.class_targets();
                    let mut t = vec![cn as f32; n * self.nc];
                    for (r, a) in assigned.iter().enumerate() {
                        t[r * self.nc + a.class] = cp as f32;
                    }
                    let t = Tensor::from_vec(t, (n, self.nc), &device)?;
                    lcls = (lcls + bce_with_logits_mean(&ps.narrow(1, 5, self.nc)?, &t, self.config.cls_pw)?)?;
                }
            }
            let tobj = Tensor::from_vec(tobj, (bs, na, ny, nx), &device)?;
            let obji = bce_with_logits_mean(&p.narrow(4, 4, 1)?.squeeze(4)?, &tobj, self.config.obj_pw)?;
            lobj = (lobj + (obji * self.config.balance[level])?)?;
        }
        let lbox = (lbox * self.config.box_gain)?;
        let lobj = (lobj * self.config.obj_gain)?;
        let lcls = (lcls * self.config.cls_gain)?;
        let total = (((&lbox + &lobj)? + &lcls)? * bs as f64)?;
        let item = |t: &Tensor| t.to_scalar::<f32>();
        Ok(LossOutput { lbox: item(&lbox)?, lobj: item(&lobj)?, lcls: item(&lcls)?, total })
    }

    /// CIoU of the assigned predictions `ps` `[n, no]` with their targets.
    fn box_iou(&self, ps: &Tensor, assigned: &[Assignment], device: &Device) -> Result<Tensor, TrainError> {
        let n = assigned.len();
        let pxy = ((sigmoid(&ps.narrow(1, 0, 2)?)? * 2.0)? - 0.5)?;
        let anchor_wh: Vec<f32> = assigned.iter().flat_map(|a| a.anchor_wh).collect();
        let anchor_wh = Tensor::from_vec(anchor_wh, (n, 2), device)?;
        let pwh = (sigmoid(&ps.narrow(1, 2, 2)?)? * 2.0)?.sqr()?.mul(&anchor_wh)?;
        let pbox = Tensor::cat(&[pxy, pwh], 1)?;
        let tbox: Vec<f32> = assigned.iter().flat_map(|a| a.tbox).collect();
        let tbox = Tensor::from_vec(tbox, (n, 4), device)?;
        Ok(bbox_ciou(&pbox, &tbox)?)
    }
}
