//! Per-epoch results: `results.csv` (one row per epoch, rewritten after each: losses, mAP, learning
//! rates, the epoch's time, the mean training step's time, training samples a second and the samples
//! the epoch trained on: fewer in the first epochs of `train --follow`) and the PNG
//! plots `loss.png` (box, objectness, class and total training loss) and `map.png` (validation mAP);
//! the last epoch also as Prometheus text ([`super::exposition`]).

use std::path::Path;

use super::FitError;
use super::eval::Metrics;
use crate::plot::{LinePlot, Series};

const HEADER: &str = "epoch,train/box_loss,train/obj_loss,train/cls_loss,train/total_loss,metrics/mAP_0.5,metrics/mAP_0.5:0.95,metrics/yolov5_mAP_0.5,metrics/yolov5_mAP_0.5:0.95,x/lr0,x/lr1,x/lr2,time_s,step_s,samples_per_s,samples";

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
    /// The whole epoch: training, saving, evaluating.
    pub seconds: f64,
    /// Mean time of a training step (batch, forward, loss, backward, optimizer step); NaN in rows
    /// of older runs, which did not record it.
    pub step_seconds: f64,
    /// Training samples a second over the epoch's steps; NaN in rows of older runs.
    pub samples_per_second: f64,
    /// Samples the epoch trained on (all that were held when it started); `None` in rows of older
    /// runs (column `samples`, written `NaN` then).
    pub samples: Option<usize>,
}

impl EpochRecord {
    fn to_row(&self) -> String {
        let m = &self.metrics;
        format!(
            "{},{:.6},{:.6},{:.6},{:.6},{:.6},{:.6},{:.6},{:.6},{:.8},{:.8},{:.8},{:.2},{:.4},{:.2},{}",
            self.epoch,
            self.box_loss,
            self.obj_loss,
            self.cls_loss,
            self.total_loss,
            m.map50,
            m.map50_95,
            m.yolov5_map50,
            m.yolov5_map50_95,
            self.lr[0],
            self.lr[1],
            self.lr[2],
            self.seconds,
            self.step_seconds,
            self.samples_per_second,
            self.samples.map_or_else(|| "NaN".to_string(), |n| n.to_string())
        )
    }

    fn from_row(row: &str) -> Option<Self> {
        let v: Vec<f64> = row.split(',').map(|f| f.trim().parse().ok()).collect::<Option<_>>()?;
        // 13 columns: a row of a run from before step_s and samples_per_s; 15: from before samples.
        let samples = match v.get(15) {
            Some(&n) if n.is_nan() => None,
            Some(&n) if n >= 0.0 && n.fract() == 0.0 => Some(n as usize),
            Some(_) => return None,
            None => None,
        };
        ((v.len() == 13 || v.len() == 15 || v.len() == 16) && v[0] >= 0.0).then(|| EpochRecord {
            epoch: v[0] as usize,
            box_loss: v[1],
            obj_loss: v[2],
            cls_loss: v[3],
            total_loss: v[4],
            metrics: Metrics { map50: v[5], map50_95: v[6], yolov5_map50: v[7], yolov5_map50_95: v[8] },
            lr: [v[9], v[10], v[11]],
            seconds: v[12],
            step_seconds: v.get(13).copied().unwrap_or(f64::NAN),
            samples_per_second: v.get(14).copied().unwrap_or(f64::NAN),
            samples,
        })
    }
}

/// Writes `results.csv`, `metrics.prom` (the last epoch), `loss.png` and `map.png` into `dir`.
pub fn write(dir: &Path, records: &[EpochRecord]) -> Result<(), FitError> {
    let csv = dir.join(super::RESULTS_FILE);
    let mut text = format!("{HEADER}\n");
    for r in records {
        text += &r.to_row();
        text.push('\n');
    }
    let tmp = csv.with_extension("csv.tmp");
    std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, &csv)).map_err(|source| FitError::Io { path: csv.clone(), source })?;
    if let Some(last) = records.last() {
        let prom = dir.join(super::METRICS_FILE);
        let tmp = prom.with_extension("prom.tmp");
        std::fs::write(&tmp, super::exposition::text(last)).and_then(|()| std::fs::rename(&tmp, &prom)).map_err(|source| FitError::Io { path: prom.clone(), source })?;
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_reads_back_and_an_older_row_lacks_only_the_step_columns() {
        let record = EpochRecord {
            epoch: 3,
            box_loss: 0.05,
            obj_loss: 0.02,
            cls_loss: 0.01,
            total_loss: 0.08,
            metrics: Metrics { map50: 0.5, map50_95: 0.25, yolov5_map50: 0.5, yolov5_map50_95: 0.25 },
            lr: [0.01, 0.01, 0.01],
            seconds: 12.5,
            step_seconds: 0.75,
            samples_per_second: 21.25,
            samples: Some(120),
        };
        let row = record.to_row();
        assert!(row.ends_with(",21.25,120"), "{row}");
        assert_eq!(row.split(',').count(), HEADER.split(',').count());
        assert_eq!(EpochRecord::from_row(&row), Some(record.clone()));
        let before_samples = row.rsplit_once(',').unwrap().0;
        assert_eq!(EpochRecord::from_row(before_samples), Some(EpochRecord { samples: None, ..record.clone() }));
        let older = row.rsplitn(4, ',').nth(3).unwrap();
        let read = EpochRecord::from_row(older).unwrap();
        assert!(read.step_seconds.is_nan() && read.samples_per_second.is_nan() && read.samples.is_none());
        assert_eq!(EpochRecord { step_seconds: 0.75, samples_per_second: 21.25, samples: Some(120), ..read }, record);
        let unknown = EpochRecord { samples: None, ..record.clone() };
        assert_eq!(EpochRecord::from_row(&unknown.to_row()), Some(unknown));
        assert_eq!(EpochRecord::from_row(&format!("{before_samples},1.5")), None);
        assert_eq!(EpochRecord::from_row(&format!("{row},1")), None);
    }
}
