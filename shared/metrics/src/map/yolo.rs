//! mAP as Ultralytics YOLOv5 7.0 `val.py` computes it: `process_batch` per image, then
//! `utils.metrics.ap_per_class` over the whole set.

use std::collections::HashMap;

use super::CocoError;
use super::coco_json::{CocoDetections, CocoGroundTruth, group_by_image_and_category};
use crate::numpy_compat;

/// The `box_iou` guard added to the union.
const IOU_EPS: f64 = 1e-7;
/// The `ap_per_class` guard added to the label count.
const RECALL_EPS: f64 = 1e-16;

/// The result of [`yolo_map`]; classes are the categories with (non-crowd) ground truth.
#[derive(Debug, Clone, PartialEq)]
pub struct YoloMap {
    /// mAP@.5: mean over classes of AP at IoU 0.5.
    pub map50: f64,
    /// mAP@.5:.95: mean over classes of the mean AP over the 10 IoU thresholds.
    pub map50_95: f64,
    /// Category ids, ascending.
    pub classes: Vec<i64>,
    pub ap50_per_class: Vec<f64>,
    pub ap_per_class: Vec<f64>,
}

/// `iouv = torch.linspace(0.5, 0.95, 10)`: float32, computed as ATen's CPU kernel does
/// (the first half from the start, the second half back from the end), compared in float64.
fn iou_thresholds() -> [f64; 10] {
    let (start, end, steps) = (0.5f32, 0.95f32, 10usize);
    let step = (end - start) / (steps - 1) as f32;
    std::array::from_fn(|i| {
        f64::from(if i < steps / 2 { start + step * i as f32 } else { end - step * (steps - i - 1) as f32 })
    })
}

/// One detection's row in the concatenated `stats` of val.py.
struct Prediction {
    correct: [bool; 10],
    conf: f64,
    class: i64,
}

/// Evaluates detections against ground truth as YOLOv5 7.0 `val.py` does (crowd objects dropped).
pub fn yolo_map(gt: &CocoGroundTruth, dets: &CocoDetections) -> Result<YoloMap, CocoError> {
    gt.check_detections(dets)?;
    let thresholds = iou_thresholds();
    let annotations = gt.annotations();
    let detections = dets.detections();
    let labels_of = group_by_image_and_category(annotations.iter().map(|a| (a.image_id, 0)));
    let dets_of = group_by_image_and_category(detections.iter().map(|d| (d.image_id, 0)));
    let xyxy = |b: [f64; 4]| [b[0], b[1], b[0] + b[2], b[1] + b[3]];

    let mut predictions = Vec::new();
    let mut target_classes = Vec::new();
    for image in gt.images() {
        let labels: Vec<(i64, [f64; 4])> = labels_of
            .get(&(image.id, 0))
            .into_iter()
            .flatten()
            .map(|&i| &annotations[i])
            .filter(|a| a.iscrowd == 0)
            .map(|a| (a.category_id, xyxy(a.bbox)))
            .collect();
        let image_dets: Vec<(i64, [f64; 4], f64)> = dets_of
            .get(&(image.id, 0))
            .into_iter()
            .flatten()
            .map(|&i| &detections[i])
            .map(|d| (d.category_id, xyxy(d.bbox), d.score))
            .collect();
        target_classes.extend(labels.iter().map(|l| l.0));
        let correct = process_batch(&image_dets, &labels, &thresholds);
        predictions.extend(image_dets.iter().zip(correct).map(|(&(class, _, conf), correct)| Prediction {
            correct,
            conf,
            class,
        }));
    }
    Ok(ap_per_class(predictions, target_classes))
}

/// `val.process_batch`: which detections are true positives at each IoU threshold.
/// `dets` are (class, xyxy, conf), `labels` (class, xyxy).
fn process_batch(dets: &[(i64, [f64; 4], f64)], labels: &[(i64, [f64; 4])], thresholds: &[f64; 10]) -> Vec<[bool; 10]> {
    let mut correct = vec![[false; 10]; dets.len()];
    // iou[label][detection], `utils.metrics.box_iou` with its 1e-7 guard.
    let iou: Vec<Vec<f64>> = labels
        .iter()
        .map(|(_, a)| {
            dets.iter()
                .map(|(_, b, _)| {
                    let w = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
                    let h = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
                    let inter = w * h;
                    let area_a = (a[2] - a[0]) * (a[3] - a[1]);
                    let area_b = (b[2] - b[0]) * (b[3] - b[1]);
                    inter / (area_a + area_b - inter + IOU_EPS)
                })
                .collect()
        })
        .collect();
    for (ti, &threshold) in thresholds.iter().enumerate() {
        // (label, detection, iou) in torch.where's row-major order.
        let mut matches: Vec<(usize, usize, f64)> = Vec::new();
        for (l, (label_class, _)) in labels.iter().enumerate() {
            for (d, (det_class, _, _)) in dets.iter().enumerate() {
                if iou[l][d] >= threshold && label_class == det_class {
                    matches.push((l, d, iou[l][d]));
                }
            }
        }
        if matches.len() > 1 {
            // matches[matches[:, 2].argsort()[::-1]]: descending IoU, ties latest first.
            matches.sort_by(|x, y| x.2.total_cmp(&y.2));
            matches.reverse();
            // np.unique(..., return_index=True) keeps the first occurrence and sorts by value:
            // one match per detection, then one per label (in detection order, as YOLOv5 does).
            matches = first_per_key(matches, dets.len(), |m| m.1);
            matches = first_per_key(matches, labels.len(), |m| m.0);
        }
        for (_, d, _) in matches {
            correct[d][ti] = true;
        }
    }
    correct
}

/// `a[np.unique(key(a), return_index=True)[1]]`: the first element of each key, ordered by key;
/// keys are below `n_keys`.
fn first_per_key(
    items: Vec<(usize, usize, f64)>,
    n_keys: usize,
    key: impl Fn(&(usize, usize, f64)) -> usize,
) -> Vec<(usize, usize, f64)> {
    let mut seen = vec![false; n_keys];
    let mut firsts: Vec<(usize, usize, f64)> =
        items.into_iter().filter(|m| !std::mem::replace(&mut seen[key(m)], true)).collect();
    firsts.sort_by_key(|m| key(m));
    firsts
}

/// `utils.metrics.ap_per_class`: AP per class with GT at each IoU threshold, then the means.
fn ap_per_class(mut predictions: Vec<Prediction>, mut target_classes: Vec<i64>) -> YoloMap {
    predictions.sort_by(|a, b| b.conf.total_cmp(&a.conf));
    target_classes.sort_unstable();
    let mut classes: Vec<(i64, usize)> = Vec::new();
    for c in target_classes {
        match classes.last_mut() {
            Some((last, n)) if *last == c => *n += 1,
            _ => classes.push((c, 1)),
        }
    }
    if classes.is_empty() {
        return YoloMap {
            map50: 0.0,
            map50_95: 0.0,
            classes: Vec::new(),
            ap50_per_class: Vec::new(),
            ap_per_class: Vec::new(),
        };
    }
    let mut by_class: HashMap<i64, Vec<&Prediction>> = HashMap::new();
    for p in &predictions {
        by_class.entry(p.class).or_default().push(p);
    }
    let mut ap = vec![[0.0f64; 10]; classes.len()];
    for (ci, &(class, n_labels)) in classes.iter().enumerate() {
        let Some(preds) = by_class.get(&class) else { continue };
        for (j, ap_j) in ap[ci].iter_mut().enumerate() {
            let (mut tpc, mut fpc) = (0.0f64, 0.0f64);
            let mut recall = Vec::with_capacity(preds.len());
            let mut precision = Vec::with_capacity(preds.len());
            for p in preds {
                if p.correct[j] {
                    tpc += 1.0;
                } else {
                    fpc += 1.0;
                }
                recall.push(tpc / (n_labels as f64 + RECALL_EPS));
                precision.push(tpc / (tpc + fpc));
            }
            *ap_j = compute_ap(&recall, &precision);
        }
    }
    let ap50_per_class: Vec<f64> = ap.iter().map(|a| a[0]).collect();
    let ap_per_class: Vec<f64> = ap.iter().map(|a| numpy_compat::mean(a)).collect();
    YoloMap {
        map50: numpy_compat::mean(&ap50_per_class),
        map50_95: numpy_compat::mean(&ap_per_class),
        classes: classes.iter().map(|c| c.0).collect(),
        ap50_per_class,
        ap_per_class,
    }
}

/// `utils.metrics.compute_ap`: the precision envelope sampled at 101 recall points, integrated
/// with the trapezoid rule.
fn compute_ap(recall: &[f64], precision: &[f64]) -> f64 {
    let mrec: Vec<f64> = std::iter::once(0.0).chain(recall.iter().copied()).chain(std::iter::once(1.0)).collect();
    let mut mpre: Vec<f64> =
        std::iter::once(1.0).chain(precision.iter().copied()).chain(std::iter::once(0.0)).collect();
    for i in (0..mpre.len() - 1).rev() {
        mpre[i] = mpre[i].max(mpre[i + 1]);
    }
    let x = numpy_compat::linspace(0.0, 1.0, 101);
    let y: Vec<f64> = x.iter().map(|&xi| numpy_compat::interp(xi, &mrec, &mpre)).collect();
    numpy_compat::trapezoid(&y, &x)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_are_float32_linspace() {
        let t = iou_thresholds();
        assert_eq!(t[0], 0.5);
        assert_eq!(t[1], f64::from(0.55f32));
        assert_eq!(t[9], f64::from(0.95f32));
    }

    #[test]
    fn perfect_detector_scores_0995() {
        let ap = compute_ap(&[0.5, 1.0], &[1.0, 1.0]);
        assert!((ap - 0.995).abs() < 1e-15, "{ap}");
    }

    #[test]
    fn label_goes_to_the_first_detection_in_index_order_not_the_best() {
        // YOLOv5's quirk (its re-sort by IoU is commented out): after one match per detection,
        // the label keeps the match of the lowest detection index, here the 0.9-IoU one.
        let labels = [(1, [0.0, 0.0, 10.0, 10.0])];
        let dets = [(1, [0.0, 0.0, 10.0, 9.0], 0.5), (1, [0.0, 0.0, 10.0, 10.0], 0.9)];
        let correct = process_batch(&dets, &labels, &iou_thresholds());
        // 90 / (100 + 1e-7) passes the float32 0.9 threshold (0.89999998), not 0.95.
        assert_eq!(correct[0], [true, true, true, true, true, true, true, true, true, false]);
        assert_eq!(correct[1], [false, false, false, false, false, false, false, false, false, true]);
    }
}
