//! The evaluation's outputs: the table on stdout (rows, calibration, verdicts), `report.csv`,
//! `report.json`, one PNG grid of originals against reconstructions per (cut, setting), the
//! privacy–utility plot (strongest SSIM, re-identification and, with a trained model, mAP
//! against ε), and optionally every original/reconstruction pair under `pairs/<setting>/`.

use std::fmt::Write as _;
use std::path::Path;

use image::RgbImage;
use serde::Serialize;

use super::observe::{Setting, Weights};
use super::reid::Reidentification;
use super::sweep::{EvalConfig, Evaluation, Outcome};
use super::verdict::{self, Calibration, Criteria, SettingVerdict};
use super::{Attack, PrivacyError};
use mistnet_train::fit::Metrics;
use mistnet_train::plot::{LinePlot, Series};

/// One scored (cut, setting, attack): means over the held-out images.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Row {
    pub cut: usize,
    /// `float`, `1bit` or `<mechanism>-eps<ε>`.
    pub setting: String,
    /// `float` or `1bit`.
    pub features: String,
    pub mechanism: String,
    /// `None` for float and noiseless 1-bit features.
    pub epsilon: Option<f64>,
    pub attack: String,
    pub ssim: f64,
    pub psnr: f64,
    pub ssim_min: f64,
    pub ssim_max: f64,
    /// Re-identification of the held-out images from this attack's reconstructions.
    pub reid: Reidentification,
    /// This attack's evidence alone, judged as [`verdict`] does.
    pub verdict: String,
    /// COCO mAP@.5 of the trained model (`--back`) on `--val` under this setting, at the
    /// model's cut; `None` for other cuts, float features or without `--back`.
    pub map50: Option<f64>,
    /// COCO mAP@[.5:.95], as `map50`.
    pub map50_95: Option<f64>,
}

impl Row {
    /// The row of one attack's scores; its verdict is set by [`Report::new`], which sees every row.
    pub fn new(cut: usize, setting: &Setting, attack: Attack, ssims: &[f64], psnrs: &[f64], reid: Reidentification) -> Self {
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
        let ssim = mean(ssims);
        Row {
            cut,
            setting: setting.name(),
            features: setting.features().into(),
            mechanism: setting.mechanism().to_string(),
            epsilon: setting.epsilon(),
            attack: attack.to_string(),
            ssim,
            psnr: mean(psnrs),
            ssim_min: ssims.iter().copied().fold(f64::INFINITY, f64::min),
            ssim_max: ssims.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            reid,
            verdict: String::new(),
            map50: None,
            map50_95: None,
        }
    }

    /// Records the trained model's mAP under this row's setting.
    pub fn set_utility(&mut self, metrics: Option<&Metrics>) {
        self.map50 = metrics.map(|m| m.map50);
        self.map50_95 = metrics.map(|m| m.map50_95);
    }

    /// `cut<k>-<setting>-<attack>`: the row's directory and file-name key.
    pub fn key(&self) -> String {
        format!("cut{}-{}-{}", self.cut, self.setting, self.attack)
    }
}

/// `report.json`: the settings of the run and its rows.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub model: String,
    pub weights: String,
    /// True when the Front was randomly initialised (MistNet uses a pretrained one).
    pub random_init: bool,
    pub imgsz: u32,
    pub seed: u64,
    pub mechanism: String,
    pub heldout: Vec<String>,
    pub aux_images: usize,
    /// The thresholds the verdicts are judged by (`ssim` is the MistNet paper's 0.3).
    pub criteria: Criteria,
    /// Mean SSIM of a fixed guess (the mean auxiliary image), ignoring the features.
    pub baseline_ssim: Option<f64>,
    /// The trained model whose mAP the rows carry (`--back`), and its labelled data (`--val`).
    pub back: Option<String>,
    pub val: Option<String>,
    pub rows: Vec<Row>,
    /// Per cut: is the strongest attack strong enough on float features to judge with?
    pub calibration: Vec<Calibration>,
    /// Per (cut, setting): the verdict over all attacks.
    pub verdicts: Vec<SettingVerdict>,
}

/// Column names of `report.csv`, in order.
pub const CSV_COLUMNS: [&str; 17] = [
    "cut", "setting", "features", "mechanism", "epsilon", "attack", "ssim", "psnr", "ssim_min", "ssim_max", "reid_top1", "reid_top5",
    "reid_p_top1", "reid_p_top5", "verdict", "map50", "map50_95",
];

impl Report {
    /// The report of `rows`, with each row's verdict, the calibration and the verdicts set.
    pub fn new(cfg: &EvalConfig, heldout: &[String], baseline_ssim: Option<f64>, mut rows: Vec<Row>) -> Self {
        let calibration = verdict::calibrate(&rows, &cfg.criteria);
        for r in &mut rows {
            r.verdict = verdict::row_verdict(r, baseline_ssim, &calibration, &cfg.criteria).to_string();
        }
        let verdicts = verdict::judge(&rows, baseline_ssim, &calibration, &cfg.criteria);
        Report {
            model: cfg.model.clone(),
            weights: cfg.weights.to_string(),
            random_init: matches!(cfg.weights, Weights::RandomInit(_)),
            imgsz: cfg.imgsz,
            seed: cfg.seed,
            mechanism: cfg.mechanism.to_string(),
            heldout: heldout.to_vec(),
            aux_images: cfg.aux_images,
            criteria: cfg.criteria,
            baseline_ssim,
            back: cfg.utility.as_ref().map(|u| u.back.display().to_string()),
            val: cfg.utility.as_ref().map(|u| u.val.display().to_string()),
            rows,
            calibration,
            verdicts,
        }
    }

    /// The CSV text: a header of [`CSV_COLUMNS`], one line per row (ε and mAP empty when there is none).
    pub fn csv(&self) -> String {
        let mut out = CSV_COLUMNS.join(",") + "\n";
        let opt = |v: Option<f64>| v.map(|v| format!("{v:.6}")).unwrap_or_default();
        for r in &self.rows {
            let eps = r.epsilon.map(|e| e.to_string()).unwrap_or_default();
            let _ = writeln!(
                out,
                "{},{},{},{},{eps},{},{:.6},{:.4},{:.6},{:.6},{},{},{:.6e},{:.6e},{},{},{}",
                r.cut,
                r.setting,
                r.features,
                r.mechanism,
                r.attack,
                r.ssim,
                r.psnr,
                r.ssim_min,
                r.ssim_max,
                r.reid.top1,
                r.reid.top5,
                r.reid.p_top1,
                r.reid.p_top5,
                r.verdict,
                opt(r.map50),
                opt(r.map50_95)
            );
        }
        out
    }

    /// The table printed on stdout: one line per (cut, setting, attack), then each cut's
    /// calibration, then the verdict per (cut, setting) with the tests it failed.
    pub fn table(&self) -> String {
        let mut out = String::new();
        if self.random_init {
            let _ = writeln!(out, "WARNING: the Front is RANDOMLY INITIALISED ({}); MistNet uses a pretrained Front, give --weights.", self.weights);
        }
        let names = if self.heldout.len() > 6 { format!("{}, ...", self.heldout[..6].join(", ")) } else { self.heldout.join(", ") };
        let _ = writeln!(out, "model {}, {} px, Front {}, {} held-out images ({names})", self.model, self.imgsz, self.weights, self.heldout.len());
        if let Some(b) = self.baseline_ssim {
            let _ = writeln!(out, "blind guess (mean auxiliary image, features ignored): SSIM {b:.3}");
        }
        if let (Some(back), Some(val)) = (&self.back, &self.val) {
            let _ = writeln!(out, "utility: mAP of {back} on the val split of {val}, features through each setting");
        }
        let c = &self.criteria;
        let _ = writeln!(
            out,
            "unrecognisable = every attack's SSIM < {} and ≤ blind guess + {}, re-identification at chance (p ≥ {}); \
counts only where the strongest attack reaches SSIM ≥ {} on float features at that cut",
            c.ssim, c.baseline_margin, c.alpha, c.calibration_ssim
        );
        let utility = self.back.is_some();
        let map_head = if utility { format!("{:>7} {:>9}  ", "mAP@.5", "mAP@.5:.95") } else { String::new() };
        let _ = writeln!(
            out,
            "\n{:>3}  {:<14} {:<13} {:>6} {:>8}  {:>13}  {:>6} {:>6}  {map_head}verdict of this attack",
            "cut", "setting", "attack", "SSIM", "PSNR dB", "SSIM min-max", "top-1", "top-5"
        );
        for r in &self.rows {
            let map = match (utility, r.map50, r.map50_95) {
                (false, _, _) => String::new(),
                (true, Some(a), Some(b)) => format!("{a:>7.4} {b:>10.4}  "),
                (true, _, _) => format!("{:>7} {:>10}  ", "-", "-"),
            };
            let _ = writeln!(
                out,
                "{:>3}  {:<14} {:<13} {:>6.3} {:>8.2}  {:>5.3} - {:>5.3}  {:>6} {:>6}  {map}{}",
                r.cut,
                r.setting,
                r.attack,
                r.ssim,
                r.psnr,
                r.ssim_min,
                r.ssim_max,
                format!("{}/{}", r.reid.top1, r.reid.trials),
                format!("{}/{}", r.reid.top5, r.reid.trials),
                r.verdict
            );
        }
        let _ = writeln!(out, "\ncalibration (the strongest attack on float features):");
        for k in &self.calibration {
            let status = if k.met { "met".to_string() } else { format!("NOT met: verdicts at cut {} that pass every test read \"attack too weak to judge\"", k.cut) };
            let _ = writeln!(
                out,
                "  cut {}: {} SSIM {:.3} (required {}), top-1 {}/{} (p = {:.2e}): {status}",
                k.cut, k.attack, k.ssim, k.required_ssim, k.reid_top1, k.trials, k.reid_p_top1
            );
        }
        let _ = writeln!(out, "\nverdicts (strongest attack per setting):");
        for v in &self.verdicts {
            let _ = writeln!(
                out,
                "  cut {} {:<14} {:<13} SSIM {:.3}, top-1 {}/{}: {}",
                v.cut, v.setting, v.strongest_attack, v.ssim, v.reid_top1, v.trials, v.explained
            );
        }
        out
    }

    /// The privacy–utility plot against ε, per cut: the strongest attack's SSIM, the best top-1
    /// re-identification rate and, with a trained model, its mAP@.5; dashed: the 0.3 threshold,
    /// the blind guess, and the noiseless 1-bit values.
    pub fn plot(&self) -> LinePlot {
        let mut series: Vec<Series> = Vec::new();
        let mut add = |name: String, point: (f64, f64)| match series.iter_mut().find(|s| s.name == name) {
            Some(s) => s.points.push(point),
            None => series.push(Series { name, points: vec![point] }),
        };
        let mut hlines = vec![(self.criteria.ssim, format!("SSIM {} (unrecognisable below)", self.criteria.ssim))];
        if let Some(b) = self.baseline_ssim {
            hlines.push((b, format!("blind guess SSIM {b:.3}")));
        }
        for v in &self.verdicts {
            let rate = v.reid_top1 as f64 / v.trials.max(1) as f64;
            match v.epsilon {
                Some(eps) => {
                    add(format!("cut {} strongest-attack SSIM", v.cut), (eps, v.ssim));
                    add(format!("cut {} re-identified (top-1 rate)", v.cut), (eps, rate));
                }
                None if v.setting == "1bit" => hlines.push((v.ssim, format!("cut {} 1-bit without noise: SSIM {:.3}", v.cut, v.ssim))),
                None => {}
            }
        }
        // mAP is per setting, the same on each attack's row: take the first attack's.
        let first_attack = self.rows.first().map(|r| r.attack.clone());
        for r in self.rows.iter().filter(|r| Some(&r.attack) == first_attack.as_ref()) {
            match (r.epsilon, r.map50) {
                (Some(eps), Some(map)) => add(format!("cut {} mAP@.5 (utility)", r.cut), (eps, map)),
                (None, Some(map)) => hlines.push((map, format!("cut {} mAP@.5 without noise: {map:.3}", r.cut))),
                _ => {}
            }
        }
        for s in &mut series {
            s.points.sort_by(|a, b| a.0.total_cmp(&b.0));
        }
        let y_label = if self.back.is_some() { "SSIM / re-identification rate / mAP@.5" } else { "SSIM / re-identification rate" };
        LinePlot {
            title: format!("Privacy against utility, {} features ({})", self.mechanism, self.model),
            x_label: "ε".into(),
            y_label: y_label.into(),
            series,
            hlines,
        }
    }
}

fn write_err(path: &Path, e: impl std::fmt::Display) -> PrivacyError {
    PrivacyError::Write { path: path.display().to_string(), message: e.to_string() }
}

fn save_png(img: &RgbImage, path: &Path) -> Result<(), PrivacyError> {
    img.save(path).map_err(|e| write_err(path, e))
}

/// The originals every attack of `group` reconstructed on the top row, then one row of
/// reconstructions per attack.
fn grid(originals: &[RgbImage], group: &[&Outcome]) -> RgbImage {
    let columns: Vec<usize> = (0..originals.len()).filter(|i| group.iter().all(|o| o.of.contains(i))).collect();
    let (w, h) = originals[0].dimensions();
    let gap = 2;
    let cols = columns.len().max(1) as u32;
    let mut out = RgbImage::from_pixel(cols * (w + gap) - gap, (group.len() as u32 + 1) * (h + gap) - gap, image::Rgb([255; 3]));
    let mut put = |img: &RgbImage, r: usize, c: usize| {
        image::imageops::replace(&mut out, img, (c as u32 * (w + gap)) as i64, (r as u32 * (h + gap)) as i64)
    };
    for (c, &i) in columns.iter().enumerate() {
        put(&originals[i], 0, c);
        for (r, o) in group.iter().enumerate() {
            let k = o.of.iter().position(|&j| j == i).expect("every attack reconstructed this column");
            put(&o.reconstructions[k], r + 1, c);
        }
    }
    out
}

/// The report's JSON file in the output directory (what `job` reads).
pub const REPORT_JSON: &str = "report.json";
/// The privacy–utility plot in the output directory.
pub const PLOT_PNG: &str = "privacy_utility.png";

/// Writes everything into `out` (created if missing); `pairs` also writes each pair's PNGs.
pub fn write_outputs(eval: &Evaluation, out: &Path, pairs: bool) -> Result<(), PrivacyError> {
    std::fs::create_dir_all(out).map_err(|e| write_err(out, e))?;
    let report = &eval.report;
    let csv = out.join("report.csv");
    std::fs::write(&csv, report.csv()).map_err(|e| write_err(&csv, e))?;
    let json = out.join(REPORT_JSON);
    let text = serde_json::to_string_pretty(report).map_err(|e| write_err(&json, e))?;
    std::fs::write(&json, text + "\n").map_err(|e| write_err(&json, e))?;
    report.plot().save_png(&out.join(PLOT_PNG), 900, 560)?;

    let grids = out.join("grids");
    std::fs::create_dir_all(&grids).map_err(|e| write_err(&grids, e))?;
    let mut done: Vec<(usize, String)> = Vec::new();
    for o in &eval.outcomes {
        let id = (o.row.cut, o.row.setting.clone());
        if done.contains(&id) {
            continue;
        }
        let group: Vec<&Outcome> = eval.outcomes.iter().filter(|p| p.row.cut == id.0 && p.row.setting == id.1).collect();
        save_png(&grid(&eval.heldout.images, &group), &grids.join(format!("cut{}-{}.png", id.0, id.1)))?;
        done.push(id);
    }
    if pairs {
        for o in &eval.outcomes {
            let dir = out.join("pairs").join(o.row.key());
            std::fs::create_dir_all(&dir).map_err(|e| write_err(&dir, e))?;
            for (&i, recon) in o.of.iter().zip(&o.reconstructions) {
                let name = &eval.heldout.names[i];
                save_png(&eval.heldout.images[i], &dir.join(format!("{name}_orig.png")))?;
                save_png(recon, &dir.join(format!("{name}_recon.png")))?;
            }
        }
    }
    Ok(())
}
