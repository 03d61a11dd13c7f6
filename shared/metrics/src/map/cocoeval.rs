//! pycocotools 2.0.11 `COCOeval` for bounding boxes: `evaluate()`, `accumulate()` and
//! `summarize()` with the default `Params`, following the Python code step by step.

use super::CocoError;
use super::coco_json::{CocoAnnotation, CocoDetection, CocoDetections, CocoGroundTruth, group_by_image_and_category};
use crate::numpy_compat;

/// The names of [`CocoStats::stats`], as `COCOeval.summarize()` prints them.
pub const STAT_NAMES: [&str; 12] = [
    "AP @[IoU=0.50:0.95 | area=all | maxDets=100]",
    "AP @[IoU=0.50 | area=all | maxDets=100]",
    "AP @[IoU=0.75 | area=all | maxDets=100]",
    "AP @[IoU=0.50:0.95 | area=small | maxDets=100]",
    "AP @[IoU=0.50:0.95 | area=medium | maxDets=100]",
    "AP @[IoU=0.50:0.95 | area=large | maxDets=100]",
    "AR @[IoU=0.50:0.95 | area=all | maxDets=1]",
    "AR @[IoU=0.50:0.95 | area=all | maxDets=10]",
    "AR @[IoU=0.50:0.95 | area=all | maxDets=100]",
    "AR @[IoU=0.50:0.95 | area=small | maxDets=100]",
    "AR @[IoU=0.50:0.95 | area=medium | maxDets=100]",
    "AR @[IoU=0.50:0.95 | area=large | maxDets=100]",
];

/// `Params.maxDets`.
const MAX_DETS: [usize; 3] = [1, 10, 100];
/// `Params.areaRng` (all, small, medium, large) and `areaRngLbl`.
const AREA_RANGES: [(f64, f64); 4] = [(0.0, 1e10), (0.0, 1024.0), (1024.0, 9216.0), (9216.0, 1e10)];
const AREA_LABELS: [&str; 4] = ["all", "small", "medium", "large"];
/// `np.spacing(1)`, the precision denominator's guard.
const SPACING_1: f64 = f64::EPSILON;

/// AP of one category (area all, maxDets 100); -1 where the category has no ground truth.
#[derive(Debug, Clone, PartialEq)]
pub struct CategoryAp {
    pub category_id: i64,
    pub name: String,
    /// AP@[.5:.95].
    pub ap: f64,
    /// AP@.5.
    pub ap50: f64,
}

/// The result of [`coco_eval`].
#[derive(Debug, Clone, PartialEq)]
pub struct CocoStats {
    /// `COCOeval.stats`: see [`STAT_NAMES`]; -1 where an area range has no ground truth.
    pub stats: [f64; 12],
    /// Per category, in ascending category id.
    pub per_category: Vec<CategoryAp>,
}

impl CocoStats {
    /// AP@[.5:.95] (area all, maxDets 100).
    pub fn map50_95(&self) -> f64 {
        self.stats[0]
    }

    /// AP@.5 (area all, maxDets 100).
    pub fn map50(&self) -> f64 {
        self.stats[1]
    }

    /// The twelve lines `COCOeval.summarize()` prints.
    pub fn summary_lines(&self) -> Vec<String> {
        let rows: [(bool, Option<f64>, usize, usize); 12] = [
            (true, None, 0, 100),
            (true, Some(0.5), 0, 100),
            (true, Some(0.75), 0, 100),
            (true, None, 1, 100),
            (true, None, 2, 100),
            (true, None, 3, 100),
            (false, None, 0, 1),
            (false, None, 0, 10),
            (false, None, 0, 100),
            (false, None, 1, 100),
            (false, None, 2, 100),
            (false, None, 3, 100),
        ];
        rows.iter()
            .zip(self.stats)
            .map(|(&(ap, iou, area, max_dets), value)| {
                let (title, kind) = if ap { ("Average Precision", "(AP)") } else { ("Average Recall", "(AR)") };
                let iou = iou.map_or_else(|| "0.50:0.95".to_string(), |t| format!("{t:.2}"));
                format!(
                    " {title:<18} {kind} @[ IoU={iou:<9} | area={:>6} | maxDets={max_dets:>3} ] = {value:.3}",
                    AREA_LABELS[area]
                )
            })
            .collect()
    }
}

/// One image × category × area range after matching (`COCOeval.evaluateImg`), detections in
/// descending score order, at most 100.
struct EvalImg {
    dt_scores: Vec<f64>,
    /// `[threshold][detection]`: matched to a ground-truth object.
    dt_matched: Vec<Vec<bool>>,
    /// `[threshold][detection]`: matched to an ignored object, or unmatched and outside the area range.
    dt_ignore: Vec<Vec<bool>>,
    gt_ignore: Vec<bool>,
}

/// Evaluates detections against ground truth as pycocotools' `COCOeval` (bbox) does.
pub fn coco_eval(gt: &CocoGroundTruth, dets: &CocoDetections) -> Result<CocoStats, CocoError> {
    gt.check_detections(dets)?;
    let iou_thresholds = numpy_compat::linspace(0.5, 0.95, 10);
    let recall_thresholds = numpy_compat::linspace(0.0, 1.0, 101);
    let (nt, nr, na, nm) = (iou_thresholds.len(), recall_thresholds.len(), AREA_RANGES.len(), MAX_DETS.len());

    let mut image_ids: Vec<i64> = gt.images().iter().map(|i| i.id).collect();
    image_ids.sort_unstable();
    let mut categories: Vec<_> = gt.categories().iter().collect();
    categories.sort_by_key(|c| c.id);
    let nk = categories.len();

    let annotations = gt.annotations();
    let detections = dets.detections();
    let gt_groups = group_by_image_and_category(annotations.iter().map(|a| (a.image_id, a.category_id)));
    let dt_groups = group_by_image_and_category(detections.iter().map(|d| (d.image_id, d.category_id)));

    let mut precision = vec![-1.0; nt * nr * nk * na * nm];
    let mut recall = vec![-1.0; nt * nk * na * nm];
    let p_index = |t: usize, r: usize, k: usize, a: usize, m: usize| (((t * nr + r) * nk + k) * na + a) * nm + m;
    let r_index = |t: usize, k: usize, a: usize, m: usize| ((t * nk + k) * na + a) * nm + m;

    let max_det = MAX_DETS[MAX_DETS.len() - 1];
    for (k, category) in categories.iter().enumerate() {
        // evals[a]: the images (ascending id) that have ground truth or detections of this category.
        let mut evals: Vec<Vec<EvalImg>> = (0..na).map(|_| Vec::new()).collect();
        for &image_id in &image_ids {
            let key = (image_id, category.id);
            let g: Vec<&CocoAnnotation> =
                gt_groups.get(&key).map_or_else(Vec::new, |ix| ix.iter().map(|&i| &annotations[i]).collect());
            let mut d: Vec<&CocoDetection> =
                dt_groups.get(&key).map_or_else(Vec::new, |ix| ix.iter().map(|&i| &detections[i]).collect());
            if g.is_empty() && d.is_empty() {
                continue;
            }
            d.sort_by(|x, y| y.score.total_cmp(&x.score));
            d.truncate(max_det);
            let ious = box_ious(&d, &g);
            for (a, &range) in AREA_RANGES.iter().enumerate() {
                evals[a].push(evaluate_img(&g, &d, &ious, range, &iou_thresholds));
            }
        }
        for (a, images) in evals.iter().enumerate() {
            if images.is_empty() {
                continue;
            }
            for (m, &max_det) in MAX_DETS.iter().enumerate() {
                let curves = accumulate(images, max_det, nt, &recall_thresholds);
                let Some(curves) = curves else { continue };
                for (t, (q, rc)) in curves.into_iter().enumerate() {
                    recall[r_index(t, k, a, m)] = rc;
                    for (r, v) in q.into_iter().enumerate() {
                        precision[p_index(t, r, k, a, m)] = v;
                    }
                }
            }
        }
    }

    let mean_of_valid = |values: Vec<f64>| {
        let valid: Vec<f64> = values.into_iter().filter(|&v| v > -1.0).collect();
        if valid.is_empty() { -1.0 } else { numpy_compat::mean(&valid) }
    };
    let thresholds_matching =
        |iou: Option<f64>| -> Vec<usize> { (0..nt).filter(|&t| iou.is_none_or(|v| iou_thresholds[t] == v)).collect() };
    let summarize_ap = |iou: Option<f64>, a: usize, m: usize| {
        let mut values = Vec::new();
        for t in thresholds_matching(iou) {
            for r in 0..nr {
                for k in 0..nk {
                    values.push(precision[p_index(t, r, k, a, m)]);
                }
            }
        }
        mean_of_valid(values)
    };
    let summarize_ar = |a: usize, m: usize| {
        let mut values = Vec::new();
        for t in 0..nt {
            for k in 0..nk {
                values.push(recall[r_index(t, k, a, m)]);
            }
        }
        mean_of_valid(values)
    };
    let stats = [
        summarize_ap(None, 0, 2),
        summarize_ap(Some(0.5), 0, 2),
        summarize_ap(Some(0.75), 0, 2),
        summarize_ap(None, 1, 2),
        summarize_ap(None, 2, 2),
        summarize_ap(None, 3, 2),
        summarize_ar(0, 0),
        summarize_ar(0, 1),
        summarize_ar(0, 2),
        summarize_ar(1, 2),
        summarize_ar(2, 2),
        summarize_ar(3, 2),
    ];
    let per_category = categories
        .iter()
        .enumerate()
        .map(|(k, c)| {
            let all: Vec<f64> = (0..nt)
                .flat_map(|t| (0..nr).map(move |r| (t, r)))
                .map(|(t, r)| precision[p_index(t, r, k, 0, 2)])
                .collect();
            let at50: Vec<f64> = (0..nr).map(|r| precision[p_index(0, r, k, 0, 2)]).collect();
            CategoryAp { category_id: c.id, name: c.name.clone(), ap: mean_of_valid(all), ap50: mean_of_valid(at50) }
        })
        .collect();
    Ok(CocoStats { stats, per_category })
}

/// `maskUtils.iou(dt, gt, iscrowd)` for boxes: `[detection][ground truth]`; for a crowd region the
/// union is the detection's own area.
fn box_ious(dts: &[&CocoDetection], gts: &[&CocoAnnotation]) -> Vec<Vec<f64>> {
    dts.iter()
        .map(|d| {
            let db = d.bbox;
            let da = db[2] * db[3];
            gts.iter()
                .map(|g| {
                    let gb = g.bbox;
                    let ga = gb[2] * gb[3];
                    let w = (db[2] + db[0]).min(gb[2] + gb[0]) - db[0].max(gb[0]);
                    if w <= 0.0 {
                        return 0.0;
                    }
                    let h = (db[3] + db[1]).min(gb[3] + gb[1]) - db[1].max(gb[1]);
                    if h <= 0.0 {
                        return 0.0;
                    }
                    let inter = w * h;
                    let union = if g.iscrowd == 1 { da } else { da + ga - inter };
                    inter / union
                })
                .collect()
        })
        .collect()
}

/// `COCOeval.evaluateImg` for one area range; `dts` sorted by score and capped at 100,
/// `ious[detection][ground truth]` in the input order of `gts`.
fn evaluate_img(
    gts: &[&CocoAnnotation],
    dts: &[&CocoDetection],
    ious: &[Vec<f64>],
    range: (f64, f64),
    iou_thresholds: &[f64],
) -> EvalImg {
    let outside = |area: f64| area < range.0 || area > range.1;
    // Ground truth sorted with the ignored ones last (stable).
    let mut order: Vec<usize> = (0..gts.len()).collect();
    let ignored: Vec<bool> = gts.iter().map(|g| g.iscrowd == 1 || outside(g.area)).collect();
    order.sort_by_key(|&g| ignored[g]);
    let gt_ignore: Vec<bool> = order.iter().map(|&g| ignored[g]).collect();
    let crowd: Vec<bool> = order.iter().map(|&g| gts[g].iscrowd == 1).collect();

    let mut dt_matched = Vec::with_capacity(iou_thresholds.len());
    let mut dt_ignore = Vec::with_capacity(iou_thresholds.len());
    for &t in iou_thresholds {
        let mut gt_matched = vec![false; gts.len()];
        let mut matched = vec![false; dts.len()];
        let mut ignore = vec![false; dts.len()];
        for d in 0..dts.len() {
            let mut best_iou = t.min(1.0 - 1e-10);
            let mut best: Option<usize> = None;
            for g in 0..gts.len() {
                if gt_matched[g] && !crowd[g] {
                    continue;
                }
                // Once matched to a regular object, stop at the ignored ones (sorted last).
                if best.is_some_and(|m| !gt_ignore[m] && gt_ignore[g]) {
                    break;
                }
                let iou = ious[d][order[g]];
                if iou < best_iou {
                    continue;
                }
                best_iou = iou;
                best = Some(g);
            }
            if let Some(m) = best {
                ignore[d] = gt_ignore[m];
                matched[d] = true;
                gt_matched[m] = true;
            }
        }
        for (d, det) in dts.iter().enumerate() {
            ignore[d] |= !matched[d] && outside(det.bbox[2] * det.bbox[3]);
        }
        dt_matched.push(matched);
        dt_ignore.push(ignore);
    }
    EvalImg { dt_scores: dts.iter().map(|d| d.score).collect(), dt_matched, dt_ignore, gt_ignore }
}

/// `COCOeval.accumulate` for one category, area range and maxDets: per IoU threshold the
/// precision at the 101 recall points and the final recall; `None` without non-ignored ground truth.
fn accumulate(
    images: &[EvalImg],
    max_det: usize,
    nt: usize,
    recall_thresholds: &[f64],
) -> Option<Vec<(Vec<f64>, f64)>> {
    let npig = images.iter().flat_map(|e| &e.gt_ignore).filter(|&&ig| !ig).count();
    if npig == 0 {
        return None;
    }
    // (score, image, detection) of the first max_det detections of each image, sorted stably by score.
    let mut entries: Vec<(f64, usize, usize)> = images
        .iter()
        .enumerate()
        .flat_map(|(i, e)| e.dt_scores.iter().take(max_det).enumerate().map(move |(d, &s)| (s, i, d)))
        .collect();
    entries.sort_by(|x, y| y.0.total_cmp(&x.0));
    let nd = entries.len();
    let mut curves = Vec::with_capacity(nt);
    for t in 0..nt {
        let (mut tp, mut fp) = (0.0f64, 0.0f64);
        let mut rc = Vec::with_capacity(nd);
        let mut pr = Vec::with_capacity(nd);
        for &(_, i, d) in &entries {
            let e = &images[i];
            if !e.dt_ignore[t][d] {
                if e.dt_matched[t][d] {
                    tp += 1.0;
                } else {
                    fp += 1.0;
                }
            }
            rc.push(tp / npig as f64);
            pr.push(tp / (fp + tp + SPACING_1));
        }
        let final_recall = rc.last().copied().unwrap_or(0.0);
        for i in (1..nd).rev() {
            if pr[i] > pr[i - 1] {
                pr[i - 1] = pr[i];
            }
        }
        let mut q = vec![0.0; recall_thresholds.len()];
        for (r, &threshold) in recall_thresholds.iter().enumerate() {
            let pi = numpy_compat::searchsorted_left(&rc, threshold);
            if pi >= nd {
                break;
            }
            q[r] = pr[pi];
        }
        curves.push((q, final_recall));
    }
    Some(curves)
}
