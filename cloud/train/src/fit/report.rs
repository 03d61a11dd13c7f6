//! Per-epoch results: `results.csv` (one row per epoch, rewritten after each) and the PNG plots
//! `loss.png` (box, objectness, class and total training loss) and `map.png` (validation mAP).

use std::path::Path;

use super::FitError;
use super::eval::Metrics;
use crate::plot::{LinePlot, Series};

const HEADER: &str = "epoch,train/box_loss,train/obj_loss,train/cls_loss,train/total_loss,metrics/mAP_0.5,metrics/mAP_0.5:0.95,metrics/yolov5_mAP_0.5,metrics/yolov5_mAP_0.5:0.95,x/lr0,x/lr1,x/lr2,time_s";

/// One epoch's mean training losses, validation metrics and learning rates.
#[derive(Debug, Clone, PartialEq)]
pub struct EpochRecord {
    /// 0-based.
    pub epoch: usize,
    pub box_loss: f64,
    pub obj_loss: f64,
    pub cls_loss: f64,
    pub total_loss: f64,
    pub metrics: Metrics,
    /// Learning rates of the three groups (BatchNorm weights, weights, biases) at the epoch's last step.
    pub lr: [f64; 3],
    pub seconds: f64,
}

impl EpochRecord {
    fn to_row(&self) -> String {
        let m = &self.metrics;
        format!(
            "{},{:.6},{:.6},{:.6},{:.6},{:.6},{:.6},{:.6},{:.6},{:.8},{:.8},{:.8},{:.2}",
            self.epoch, self.box_loss, self.obj_loss, self.cls_loss, self.total_loss, m.map50, m.map50_95, m.yolov5_map50, m.yolov5_map50_95, self.lr[0], self.lr[1], self.lr[2], self.seconds
        )
    }

    fn from_row(row: &str) -> Option<Self> {
        let v: Vec<f64> = row.split(',').map(|f| f.trim().parse().ok()).collect::<Option<_>>()?;
        (v.len() == 13 && v[0] >= 0.0).then(|| EpochRecord {
            epoch: v[0] as usize,
            box_loss: v[1],
            obj_loss: v[2],
            cls_loss: v[3],
            total_loss: v[4],
            metrics: Metrics { map50: v[5], map50_95: v[6], yolov5_map50: v[7], yolov5_map50_95: v[8] },
            lr: [v[9], v[10], v[11]],
            seconds: v[12],
        })
    }
}

/// Writes `results.csv`, `loss.png` and `map.png` into `dir`.
pub fn write(dir: &Path, records: &[EpochRecord]) -> Result<(), FitError> {
    let csv = dir.join(super::RESULTS_FILE);
    let mut text = format!("{HEADER}\n");
    for r in records {
        text += &r.to_row();
        text.push('\n');
    }
    let tmp = csv.with_extension("csv.tmp");
    std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, &csv)).map_err(|source| FitError::Io { path: csv.clone(), source })?;
    let series = |name: &str, f: fn(&EpochRecord) -> f64| Series { name: name.into(), points: records.iter().map(|r| ((r.epoch + 1) as f64, f(r))).collect() };
    LinePlot {
        title: "Training loss".into(),
        x_label: "epoch".into(),
        y_label: "loss".into(),
        series: vec![series("box", |r| r.box_loss), series("obj", |r| r.obj_loss), series("cls", |r| r.cls_loss), series("total", |r| r.total_loss)],
        hlines: Vec::new(),
    }
    .save_png(&dir.join("loss.png"), 800, 500)?;
    LinePlot {
        title: "Validation mAP".into(),
        x_label: "epoch".into(),
        y_label: "mAP".into(),
        series: vec![series("mAP@.5", |r| r.metrics.map50), series("mAP@[.5:.95]", |r| r.metrics.map50_95)],
        hlines: Vec::new(),
    }
    .save_png(&dir.join("map.png"), 800, 500)?;
    Ok(())
}

/// The records of epochs before `next_epoch` from an existing `results.csv` (resuming).
pub fn read_results(path: &Path, next_epoch: usize) -> Result<Vec<EpochRecord>, FitError> {
    let text = std::fs::read_to_string(path).map_err(|e| FitError::Checkpoint { path: path.to_path_buf(), reason: format!("cannot read: {e}") })?;
    let mut records = Vec::new();
    for (line, row) in text.lines().enumerate().skip(1) {
        let r = EpochRecord::from_row(row).ok_or_else(|| FitError::Checkpoint { path: path.to_path_buf(), reason: format!("line {}: malformed row `{row}`", line + 1) })?;
        if r.epoch < next_epoch {
            records.push(r);
        }
    }
    Ok(records)
}
