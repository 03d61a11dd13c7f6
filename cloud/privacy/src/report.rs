//! The evaluation's outputs: the table on stdout, `report.csv`, `report.json`, one PNG grid of
//! originals against reconstructions per (cut, setting), the SSIM-against-ε plot with the 0.3
//! line, and optionally every original/reconstruction pair under `pairs/<setting>/`.

use std::fmt::Write as _;
use std::path::Path;

use image::RgbImage;
use serde::Serialize;

use super::observe::{Setting, Weights};
use super::sweep::{EvalConfig, Evaluation};
use super::{Attack, PrivacyError, SSIM_UNRECOGNISABLE};
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
    pub verdict: String,
    /// COCO mAP@.5 of the trained model (`--back`) on `--val` under this setting, at the
    /// model's cut; `None` for other cuts, float features or without `--back`.
    pub map50: Option<f64>,
    /// COCO mAP@[.5:.95], as `map50`.
    pub map50_95: Option<f64>,
}

/// The verdict on a mean SSIM, by the MistNet paper's threshold.
pub fn verdict(ssim: f64) -> &'static str {
    if ssim < SSIM_UNRECOGNISABLE { "unrecognisable" } else { "recognisable" }
}

impl Row {
    pub fn new(cut: usize, setting: &Setting, attack: Attack, ssims: &[f64], psnrs: &[f64]) -> Self {
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
            verdict: verdict(ssim).into(),
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
    /// The MistNet paper's threshold for an unrecognisable reconstruction.
    pub ssim_threshold: f64,
    /// Mean SSIM of a fixed guess (the mean auxiliary image), ignoring the features.
    pub baseline_ssim: Option<f64>,
    /// The trained model whose mAP the rows carry (`--back`), and its labelled data (`--val`).
    pub back: Option<String>,
    pub val: Option<String>,
    pub rows: Vec<Row>,
}

/// Column names of `report.csv`, in order.
pub const CSV_COLUMNS: [&str; 13] = [
    "cut", "setting", "features", "mechanism", "epsilon", "attack", "ssim", "psnr", "ssim_min", "ssim_max", "verdict", "map50", "map50_95",
];

impl Report {
    pub fn new(cfg: &EvalConfig, heldout: &[String], baseline_ssim: Option<f64>, rows: Vec<Row>) -> Self {
        Report {
            model: cfg.model.clone(),
            weights: cfg.weights.to_string(),
            random_init: matches!(cfg.weights, Weights::RandomInit(_)),
            imgsz: cfg.imgsz,
            seed: cfg.seed,
            mechanism: cfg.mechanism.to_string(),
            heldout: heldout.to_vec(),
            aux_images: cfg.aux_images,
            ssim_threshold: SSIM_UNRECOGNISABLE,
            baseline_ssim,
            back: cfg.utility.as_ref().map(|u| u.back.display().to_string()),
            val: cfg.utility.as_ref().map(|u| u.val.display().to_string()),
            rows,
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
                "{},{},{},{},{eps},{},{:.6},{:.4},{:.6},{:.6},{},{},{}",
                r.cut,
                r.setting,
                r.features,
                r.mechanism,
                r.attack,
                r.ssim,
                r.psnr,
                r.ssim_min,
                r.ssim_max,
                r.verdict,
                opt(r.map50),
                opt(r.map50_95)
            );
        }
        out
    }

    /// The table printed on stdout.
    pub fn table(&self) -> String {
        let mut out = String::new();
        if self.random_init {
            let _ = writeln!(out, "WARNING: the Front is RANDOMLY INITIALISED ({}); MistNet uses a pretrained Front, give --weights.", self.weights);
        }
        let _ = writeln!(out, "model {}, {} px, held-out images: {}", self.model, self.imgsz, self.heldout.join(", "));
        if let Some(b) = self.baseline_ssim {
            let _ = writeln!(out, "blind guess (mean auxiliary image, features ignored): SSIM {b:.3}");
        }
        if let (Some(back), Some(val)) = (&self.back, &self.val) {
            let _ = writeln!(out, "utility: mAP of {back} on the val split of {val}, features through each setting");
        }
        let utility = self.back.is_some();
        let map_head = if utility { format!("{:>7} {:>9}  ", "mAP@.5", "mAP@.5:.95") } else { String::new() };
        let _ = writeln!(
            out,
            "{:>3}  {:<14} {:<13} {:>6} {:>8}  {:>13}  {map_head}verdict (SSIM < {} = unrecognisable)",
            "cut", "setting", "attack", "SSIM", "PSNR dB", "SSIM min-max", self.ssim_threshold
        );
        for r in &self.rows {
            let map = match (utility, r.map50, r.map50_95) {
                (false, _, _) => String::new(),
                (true, Some(a), Some(b)) => format!("{a:>7.4} {b:>10.4}  "),
                (true, _, _) => format!("{:>7} {:>10}  ", "-", "-"),
            };
            let _ = writeln!(
                out,
                "{:>3}  {:<14} {:<13} {:>6.3} {:>8.2}  {:>5.3} - {:>5.3}  {map}{}",
                r.cut, r.setting, r.attack, r.ssim, r.psnr, r.ssim_min, r.ssim_max, r.verdict
            );
        }
        out
    }

    /// SSIM against ε: one curve per (cut, attack), with the 0.3 line; with a trained model
    /// also its mAP@.5 against ε (utility) and, dashed, its mAP@.5 without noise.
    pub fn plot(&self) -> LinePlot {
        let mut series: Vec<Series> = Vec::new();
        let mut add = |name: String, point: (f64, f64)| match series.iter_mut().find(|s| s.name == name) {
            Some(s) => s.points.push(point),
            None => series.push(Series { name, points: vec![point] }),
        };
        for r in &self.rows {
            if let Some(eps) = r.epsilon {
                add(format!("cut {} {} SSIM", r.cut, r.attack), (eps, r.ssim));
            }
        }
        let mut hlines = vec![(self.ssim_threshold, format!("SSIM {} (unrecognisable below)", self.ssim_threshold))];
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
        let y_label = if self.back.is_some() { "SSIM of reconstruction / mAP@.5" } else { "SSIM of reconstruction" };
        LinePlot {
            title: format!("Model inversion against {} features ({})", self.mechanism, self.model),
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

/// Originals on the top row, then one row of reconstructions per attack.
fn grid(originals: &[RgbImage], rows: &[&[RgbImage]]) -> RgbImage {
    let (w, h) = originals[0].dimensions();
    let gap = 2;
    let cols = originals.len() as u32;
    let mut out = RgbImage::from_pixel(cols * (w + gap) - gap, (rows.len() as u32 + 1) * (h + gap) - gap, image::Rgb([255; 3]));
    for (r, images) in std::iter::once(originals).chain(rows.iter().copied()).enumerate() {
        for (c, img) in images.iter().enumerate() {
            image::imageops::replace(&mut out, img, (c as u32 * (w + gap)) as i64, (r as u32 * (h + gap)) as i64);
        }
    }
    out
}

/// The report's JSON file in the output directory (what `job` reads).
pub const REPORT_JSON: &str = "report.json";

/// Writes everything into `out` (created if missing); `pairs` also writes each pair's PNGs.
pub fn write_outputs(eval: &Evaluation, out: &Path, pairs: bool) -> Result<(), PrivacyError> {
    std::fs::create_dir_all(out).map_err(|e| write_err(out, e))?;
    let report = &eval.report;
    let csv = out.join("report.csv");
    std::fs::write(&csv, report.csv()).map_err(|e| write_err(&csv, e))?;
    let json = out.join(REPORT_JSON);
    let text = serde_json::to_string_pretty(report).map_err(|e| write_err(&json, e))?;
    std::fs::write(&json, text + "\n").map_err(|e| write_err(&json, e))?;
    report.plot().save_png(&out.join("ssim_vs_epsilon.png"), 900, 560)?;

    let grids = out.join("grids");
    std::fs::create_dir_all(&grids).map_err(|e| write_err(&grids, e))?;
    let mut done: Vec<(usize, String)> = Vec::new();
    for o in &eval.outcomes {
        let id = (o.row.cut, o.row.setting.clone());
        if done.contains(&id) {
            continue;
        }
        let attacks: Vec<&[RgbImage]> = eval
            .outcomes
            .iter()
            .filter(|p| p.row.cut == id.0 && p.row.setting == id.1)
            .map(|p| p.reconstructions.as_slice())
            .collect();
        save_png(&grid(&eval.heldout.images, &attacks), &grids.join(format!("cut{}-{}.png", id.0, id.1)))?;
        done.push(id);
    }
    if pairs {
        for o in &eval.outcomes {
            let dir = out.join("pairs").join(o.row.key());
            std::fs::create_dir_all(&dir).map_err(|e| write_err(&dir, e))?;
            for ((name, original), recon) in eval.heldout.names.iter().zip(&eval.heldout.images).zip(&o.reconstructions) {
                save_png(original, &dir.join(format!("{name}_orig.png")))?;
                save_png(recon, &dir.join(format!("{name}_recon.png")))?;
            }
        }
    }
    Ok(())
}
