//! Non-maximum suppression as Ultralytics YOLOv5 7.0 `utils.general.non_max_suppression`
//! (with `torchvision.ops.nms`) does it, in float32 like the reference.
//!
//! Per image, the input is the decoded Detect output: `N` rows of `5 + nc` values
//! `[xc, yc, w, h, obj, cls_0 .. cls_nc-1]` (box centre and size in pixels, sigmoid scores).
//! 1. rows with `obj > conf_thres` are candidates;
//! 2. class confidence = `obj × cls`; with `multi_label` (and `nc > 1`) every (box, class) pair
//!    with confidence `> conf_thres` becomes a candidate, otherwise only each box's best class;
//! 3. candidates are sorted by confidence (descending, stable) and cut to `max_nms`;
//! 4. greedy NMS per class through the class-offset trick: boxes are shifted by
//!    `class × max_wh` so boxes of different classes never overlap, then one class-agnostic
//!    pass suppresses every box whose IoU with a kept, higher-scoring box is `> iou_thres`
//!    (IoU without the "+1" pixel convention);
//! 5. at most `max_det` detections are kept, highest confidence first.
//!
//! `mistnet-cloud val` uses [`NmsConfig::default`], the settings of YOLOv5's `val.py`
//! (conf 0.001, IoU 0.6, `multi_label=True`, 300 detections); [`NmsConfig::detect`] gives
//! `detect.py`'s (conf 0.25, IoU 0.45, best class only). YOLOv5's wall-clock time limit is not
//! reproduced: results never depend on machine speed.

use std::collections::HashMap;

/// Errors from [`non_max_suppression`].
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum NmsError {
    #[error("predictions hold {len} values, not a multiple of the row length 5 + {num_classes} classes")]
    RowLength { len: usize, num_classes: usize },
    #[error("prediction row {row}, column {column} is not finite ({value})")]
    NonFinite { row: usize, column: usize, value: f32 },
    #[error("invalid NMS setting: {0}")]
    Config(String),
}

/// NMS settings, named as YOLOv5's `non_max_suppression` arguments.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NmsConfig {
    /// Minimum objectness and class confidence (strictly greater passes), in 0..=1.
    pub conf_thres: f32,
    /// IoU above which a lower-scoring box of the same class is suppressed, in 0..=1.
    pub iou_thres: f64,
    /// Every class above `conf_thres` per box (YOLOv5 `val.py`), rather than the best class only.
    /// Has no effect with a single class.
    pub multi_label: bool,
    /// Suppress across classes too.
    pub agnostic: bool,
    /// Maximum detections kept per image.
    pub max_det: usize,
    /// Maximum candidates that enter NMS (the highest-scoring ones).
    pub max_nms: usize,
    /// Class offset of the batched-NMS trick (pixels); larger than any box coordinate.
    pub max_wh: f32,
}

impl Default for NmsConfig {
    /// YOLOv5 `val.py`: conf 0.001, IoU 0.6, multi-label, at most 300 detections.
    fn default() -> Self {
        Self {
            conf_thres: 0.001,
            iou_thres: 0.6,
            multi_label: true,
            agnostic: false,
            max_det: 300,
            max_nms: 30000,
            max_wh: 7680.0,
        }
    }
}

impl NmsConfig {
    /// YOLOv5 `detect.py`: conf 0.25, IoU 0.45, best class only, at most 1000 detections.
    pub fn detect() -> Self {
        Self { conf_thres: 0.25, iou_thres: 0.45, multi_label: false, max_det: 1000, ..Self::default() }
    }

    fn validate(&self) -> Result<(), NmsError> {
        if !(0.0..=1.0).contains(&self.conf_thres) {
            return Err(NmsError::Config(format!("conf_thres must lie in 0..=1, got {}", self.conf_thres)));
        }
        if !(0.0..=1.0).contains(&self.iou_thres) {
            return Err(NmsError::Config(format!("iou_thres must lie in 0..=1, got {}", self.iou_thres)));
        }
        if !(self.max_wh.is_finite() && self.max_wh > 0.0) {
            return Err(NmsError::Config(format!("max_wh must be positive, got {}", self.max_wh)));
        }
        Ok(())
    }
}

/// One kept detection.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Detection {
    /// `[x1, y1, x2, y2]` in the pixels of the input rows.
    pub bbox: [f32; 4],
    /// `obj × cls` confidence.
    pub score: f32,
    /// Class index, 0-based.
    pub class: usize,
}

/// Runs NMS on one image's predictions, `rows × (5 + num_classes)` values row-major.
/// Returns the kept detections, highest confidence first.
pub fn non_max_suppression(
    predictions: &[f32],
    num_classes: usize,
    config: &NmsConfig,
) -> Result<Vec<Detection>, NmsError> {
    config.validate()?;
    let row_len = 5 + num_classes;
    if num_classes == 0 || !predictions.chunks_exact(row_len).remainder().is_empty() {
        return Err(NmsError::RowLength { len: predictions.len(), num_classes });
    }
    let multi_label = config.multi_label && num_classes > 1;
    let mut candidates = Vec::new();
    for (r, row) in predictions.chunks_exact(row_len).enumerate() {
        if let Some((column, &value)) = row.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            return Err(NmsError::NonFinite { row: r, column, value });
        }
        let obj = row[4];
        if obj <= config.conf_thres {
            continue;
        }
        let (xc, yc, w, h) = (row[0], row[1], row[2], row[3]);
        let bbox = [xc - w / 2.0, yc - h / 2.0, xc + w / 2.0, yc + h / 2.0];
        let confs = row[5..].iter().map(|&cls| cls * obj);
        if multi_label {
            for (class, score) in confs.enumerate() {
                if score > config.conf_thres {
                    candidates.push(Detection { bbox, score, class });
                }
            }
        } else {
            // torch.max returns the first index of the maximum.
            let (class, score) =
                confs.enumerate().fold((0, f32::NEG_INFINITY), |best, (c, s)| if s > best.1 { (c, s) } else { best });
            if score > config.conf_thres {
                candidates.push(Detection { bbox, score, class });
            }
        }
    }
    Ok(greedy_nms(&best_first(candidates, config.max_nms), config))
}

/// The `max_nms` highest-scoring candidates, in descending score order; equal scores keep their
/// input order (a stable sort), found by selection first so that an untrained model's hundreds of
/// thousands of candidates are not fully sorted.
fn best_first(candidates: Vec<Detection>, max_nms: usize) -> Vec<Detection> {
    // Scores are positive (above conf_thres >= 0), so their bit patterns order like their values:
    // sorting (inverted score bits, index) ascending is a stable sort by descending score.
    let mut keys: Vec<u64> =
        candidates.iter().enumerate().map(|(i, d)| (u64::from(!d.score.to_bits()) << 32) | i as u64).collect();
    if keys.len() > max_nms {
        if max_nms == 0 {
            return Vec::new();
        }
        keys.select_nth_unstable(max_nms - 1);
        keys.truncate(max_nms);
    }
    keys.sort_unstable();
    keys.into_iter().map(|k| candidates[(k & u64::from(u32::MAX)) as usize]).collect()
}

/// `torchvision.ops.nms` on class-offset boxes; `sorted` is in descending score order.
///
/// When all boxes span less than `max_wh` along x or y, the offsets make every IoU between
/// different classes exactly 0 (float rounding is monotone, and an IoU of 0 never exceeds the
/// threshold), so each kept box only needs to be compared with the later boxes of its own class:
/// the same result, without the cost quadratic in the number of candidates.
fn greedy_nms(sorted: &[Detection], config: &NmsConfig) -> Vec<Detection> {
    let offset_boxes: Vec<[f32; 4]> = sorted
        .iter()
        .map(|d| {
            let c = if config.agnostic { 0.0 } else { d.class as f32 * config.max_wh };
            d.bbox.map(|v| v + c)
        })
        .collect();
    let areas: Vec<f32> = offset_boxes.iter().map(|b| (b[2] - b[0]) * (b[3] - b[1])).collect();

    let span = |lo: usize, hi: usize| {
        let min = sorted.iter().map(|d| d.bbox[lo]).fold(f32::INFINITY, f32::min);
        let max = sorted.iter().map(|d| d.bbox[hi]).fold(f32::NEG_INFINITY, f32::max);
        f64::from(max) - f64::from(min)
    };
    // Offsets class·max_wh are exact integers in f32 below 2^24, so classes sit max_wh apart.
    let max_class = sorted.iter().map(|d| d.class).max().unwrap_or(0);
    let exact_offsets = (max_class as f64 + 1.0) * f64::from(config.max_wh) < f64::from(1u32 << 24);
    let max_wh = f64::from(config.max_wh);
    let classes_apart = !config.agnostic && exact_offsets && (span(0, 2) < max_wh || span(1, 3) < max_wh);
    // Candidates that may overlap, each group in score order, and each candidate's place in its group.
    let mut groups: Vec<Vec<usize>> = Vec::new();
    let mut group_of: HashMap<usize, usize> = HashMap::new();
    let mut place = Vec::with_capacity(sorted.len());
    for (i, d) in sorted.iter().enumerate() {
        let key = if classes_apart { d.class } else { 0 };
        let g = *group_of.entry(key).or_insert_with(|| {
            groups.push(Vec::new());
            groups.len() - 1
        });
        place.push((g, groups[g].len()));
        groups[g].push(i);
    }

    let mut suppressed = vec![false; sorted.len()];
    let mut keep = Vec::new();
    for i in 0..sorted.len() {
        if keep.len() == config.max_det {
            break;
        }
        if suppressed[i] {
            continue;
        }
        keep.push(sorted[i]);
        let bi = offset_boxes[i];
        let (g, at) = place[i];
        for &j in &groups[g][at + 1..] {
            if suppressed[j] {
                continue;
            }
            let bj = offset_boxes[j];
            let w = (bi[2].min(bj[2]) - bi[0].max(bj[0])).max(0.0);
            let h = (bi[3].min(bj[3]) - bi[1].max(bj[1])).max(0.0);
            let inter = w * h;
            let iou = inter / (areas[i] + areas[j] - inter);
            if f64::from(iou) > config.iou_thres {
                suppressed[j] = true;
            }
        }
    }
    keep
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One prediction row for `nc` classes: box centre/size, objectness, class scores.
    fn row(xywh: [f32; 4], obj: f32, cls: &[f32]) -> Vec<f32> {
        let mut r = xywh.to_vec();
        r.push(obj);
        r.extend_from_slice(cls);
        r
    }

    #[test]
    fn suppresses_overlaps_within_a_class_only() {
        let preds = [
            row([50.0, 50.0, 20.0, 20.0], 0.9, &[0.9, 0.0]), // conf 0.81, class 0
            row([51.0, 50.0, 20.0, 20.0], 0.8, &[0.9, 0.0]), // IoU 0.905 with the first: suppressed
            row([51.0, 50.0, 20.0, 20.0], 0.8, &[0.0, 0.5]), // class 1 at the same place: kept
            row([90.0, 90.0, 10.0, 10.0], 0.7, &[0.5, 0.0]), // no overlap: kept
        ]
        .concat();
        let cfg = NmsConfig { multi_label: false, ..NmsConfig::default() };
        let dets = non_max_suppression(&preds, 2, &cfg).unwrap();
        let summary: Vec<(usize, f32)> = dets.iter().map(|d| (d.class, d.score)).collect();
        assert_eq!(summary, vec![(0, 0.9 * 0.9), (1, 0.8 * 0.5), (0, 0.7 * 0.5)]);
        assert_eq!(dets[0].bbox, [40.0, 40.0, 60.0, 60.0]);
        let agnostic = non_max_suppression(&preds, 2, &NmsConfig { agnostic: true, ..cfg }).unwrap();
        assert_eq!(agnostic.len(), 2);
    }

    #[test]
    fn iou_threshold_is_strict_and_without_plus_one() {
        // Two 10x10 boxes shifted by 5 px horizontally: IoU = 50 / 150 = 1/3 exactly in f32 terms.
        let preds = [row([5.0, 5.0, 10.0, 10.0], 0.9, &[1.0]), row([10.0, 5.0, 10.0, 10.0], 0.8, &[1.0])].concat();
        let third = f64::from(50.0f32 / 150.0f32);
        let at = NmsConfig { iou_thres: third, ..NmsConfig::default() };
        assert_eq!(non_max_suppression(&preds, 1, &at).unwrap().len(), 2);
        let below = NmsConfig { iou_thres: third - 1e-6, ..NmsConfig::default() };
        assert_eq!(non_max_suppression(&preds, 1, &below).unwrap().len(), 1);
    }

    #[test]
    fn multi_label_emits_every_class_above_threshold() {
        let preds = row([50.0, 50.0, 20.0, 20.0], 0.5, &[0.6, 0.4, 0.001]);
        let multi = non_max_suppression(&preds, 3, &NmsConfig::default()).unwrap();
        assert_eq!(multi.iter().map(|d| d.class).collect::<Vec<_>>(), vec![0, 1]);
        let single = non_max_suppression(&preds, 3, &NmsConfig { multi_label: false, ..NmsConfig::default() }).unwrap();
        assert_eq!(single.iter().map(|d| d.class).collect::<Vec<_>>(), vec![0]);
    }

    #[test]
    fn objectness_filter_caps_and_limits() {
        // obj at the threshold is dropped before the class scores are looked at.
        let preds = row([5.0, 5.0, 2.0, 2.0], 0.001, &[1.0]);
        assert!(non_max_suppression(&preds, 1, &NmsConfig::default()).unwrap().is_empty());
        // 10 disjoint boxes; max_det 3 keeps the 3 best, max_nms 2 lets only 2 in.
        let preds: Vec<f32> =
            (0..10).flat_map(|i| row([i as f32 * 20.0, 5.0, 4.0, 4.0], 0.1 + i as f32 * 0.05, &[1.0])).collect();
        let three = non_max_suppression(&preds, 1, &NmsConfig { max_det: 3, ..NmsConfig::default() }).unwrap();
        assert_eq!(three.iter().map(|d| d.bbox[0]).collect::<Vec<_>>(), vec![178.0, 158.0, 138.0]);
        let two = non_max_suppression(&preds, 1, &NmsConfig { max_nms: 2, ..NmsConfig::default() }).unwrap();
        assert_eq!(two.len(), 2);
    }

    #[test]
    fn selection_of_the_best_equals_a_stable_sort() {
        let candidates: Vec<Detection> = (0..500)
            .map(|i| Detection { bbox: [i as f32, 0.0, 1.0, 1.0], score: ((i * 37) % 11) as f32 / 10.0, class: 0 })
            .collect();
        let mut stable = candidates.clone();
        stable.sort_by(|a, b| b.score.total_cmp(&a.score));
        for max_nms in [0, 1, 37, 499, 500, 600] {
            assert_eq!(
                best_first(candidates.clone(), max_nms),
                stable[..max_nms.min(500)].to_vec(),
                "max_nms {max_nms}"
            );
        }
    }

    #[test]
    fn per_class_shortcut_equals_the_all_pairs_pass() {
        // Random overlapping boxes of 3 classes: compare against the same pass with one group,
        // forced by boxes spanning more than max_wh (a box far away that overlaps nothing).
        let mut state = 7u64;
        let mut next = || {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (state >> 40) as f32 / (1u64 << 24) as f32
        };
        let mut preds: Vec<f32> = (0..400)
            .flat_map(|_| {
                let xywh = [next() * 100.0, next() * 100.0, 5.0 + next() * 40.0, 5.0 + next() * 40.0];
                row(xywh, 0.2 + next() * 0.8, &[next(), next(), next()])
            })
            .collect();
        let cfg = NmsConfig { iou_thres: 0.3, max_det: 10_000, ..NmsConfig::default() };
        let grouped = non_max_suppression(&preds, 3, &cfg).unwrap();
        preds.extend(row([9000.0, 9000.0, 1.0, 1.0], 0.0011, &[1.0, 0.0, 0.0]));
        let mut all_pairs = non_max_suppression(&preds, 3, &cfg).unwrap();
        let far = all_pairs.iter().position(|d| d.bbox[0] == 8999.5).expect("the far box is kept");
        all_pairs.remove(far);
        assert!(grouped.len() > 50 && grouped.len() < 1000, "{}", grouped.len());
        assert_eq!(grouped, all_pairs);
    }

    #[test]
    fn bad_inputs_are_errors() {
        assert_eq!(
            non_max_suppression(&[0.0; 7], 1, &NmsConfig::default()),
            Err(NmsError::RowLength { len: 7, num_classes: 1 })
        );
        let mut preds = row([5.0, 5.0, 2.0, 2.0], 0.5, &[1.0]);
        preds[2] = f32::NAN;
        assert!(matches!(
            non_max_suppression(&preds, 1, &NmsConfig::default()),
            Err(NmsError::NonFinite { row: 0, column: 2, .. })
        ));
        let bad = NmsConfig { iou_thres: 1.5, ..NmsConfig::default() };
        assert!(matches!(non_max_suppression(&preds, 1, &bad), Err(NmsError::Config(_))));
    }
}
