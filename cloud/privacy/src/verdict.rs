//! Verdicts from evidence. A setting is `unrecognisable` only when no attack fails any test:
//! - SSIM below the MistNet paper's 0.3;
//! - SSIM not above the blind guess (the mean auxiliary image, features ignored) by more than a
//!   stated margin;
//! - re-identification at chance (one-sided binomial p ≥ α for top-1 and top-5);
//!
//! and only when the attacks are strong enough to judge with: on *float* features at the same
//! cut, the strongest attack must reach a stated SSIM and re-identify above chance (the
//! calibration). A failed test names itself in the verdict; an uncalibrated cut's passing
//! settings read "attack too weak to judge". Each attack is tested, so a leak shown by any one
//! counts (which makes false alarms a little likelier than α, never missed leaks).

use serde::Serialize;

use super::SSIM_UNRECOGNISABLE;
use super::report::Row;

/// The verdict labels, most severe first.
pub const RECOGNISABLE: &str = "recognisable";
pub const REIDENTIFIABLE: &str = "re-identifiable";
pub const ABOVE_BLIND_GUESS: &str = "above blind guess";
pub const TOO_WEAK: &str = "attack too weak to judge";
pub const UNRECOGNISABLE: &str = "unrecognisable";

/// The stated thresholds of a verdict.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Criteria {
    /// SSIM below which a reconstruction is unrecognisable (the MistNet paper's 0.3).
    pub ssim: f64,
    /// How far above the blind guess's SSIM an attack may score and still count as seeing nothing.
    pub baseline_margin: f64,
    /// Significance level of the re-identification tests.
    pub alpha: f64,
    /// SSIM the strongest attack must reach on float features at a cut for that cut's verdicts to count.
    pub calibration_ssim: f64,
}

impl Default for Criteria {
    fn default() -> Self {
        Self { ssim: SSIM_UNRECOGNISABLE, baseline_margin: 0.05, alpha: 0.05, calibration_ssim: 0.5 }
    }
}

/// The tests one attack's evidence fails, each with its label and a sentence.
fn failures(row: &Row, baseline: Option<f64>, c: &Criteria) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    if row.ssim >= c.ssim {
        out.push((RECOGNISABLE, format!("{} SSIM {:.3} ≥ {}", row.attack, row.ssim, c.ssim)));
    }
    let r = &row.reid;
    if r.p_top1 < c.alpha {
        out.push((REIDENTIFIABLE, format!("{} re-identifies {}/{} top-1 among {} (p {:.1e})", row.attack, r.top1, r.trials, r.images, r.p_top1)));
    } else if r.p_top5 < c.alpha {
        out.push((REIDENTIFIABLE, format!("{} re-identifies {}/{} top-5 among {} (p {:.1e})", row.attack, r.top5, r.trials, r.images, r.p_top5)));
    }
    if let Some(b) = baseline.filter(|b| row.ssim > b + c.baseline_margin) {
        out.push((ABOVE_BLIND_GUESS, format!("{} SSIM {:.3} > blind guess {b:.3} + {}", row.attack, row.ssim, c.baseline_margin)));
    }
    out
}

/// Whether the strongest attack on float features at one cut is strong enough to judge with.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Calibration {
    pub cut: usize,
    /// The attack with the highest SSIM on float features.
    pub attack: String,
    pub ssim: f64,
    pub reid_top1: usize,
    pub reid_p_top1: f64,
    /// Reconstructions ranked.
    pub trials: usize,
    pub required_ssim: f64,
    pub met: bool,
}

/// The verdict on one (cut, setting), over every attack.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SettingVerdict {
    pub cut: usize,
    pub setting: String,
    pub epsilon: Option<f64>,
    /// The attack with the highest SSIM, and that SSIM.
    pub strongest_attack: String,
    pub ssim: f64,
    /// The best top-1 re-identification of any attack (of `trials` reconstructions), and its p-value.
    pub reid_top1: usize,
    pub reid_p_top1: f64,
    pub trials: usize,
    pub verdict: String,
    /// Every failed test (empty for `unrecognisable` and `attack too weak to judge`).
    pub failed: Vec<String>,
    /// Set when the verdict is withheld: why the cut's calibration was not met.
    pub uncalibrated: Option<String>,
    /// The verdict with its reasons, for tables: `recognisable (decoder: SSIM 0.41 ≥ 0.3; ...)`.
    pub explained: String,
}

/// The label of a set of failures (most severe first), or `None` when nothing failed.
fn label(failed: &[(&'static str, String)]) -> Option<&'static str> {
    [RECOGNISABLE, REIDENTIFIABLE, ABOVE_BLIND_GUESS].into_iter().find(|l| failed.iter().any(|(f, _)| f == l))
}

fn strongest<'a>(rows: impl Iterator<Item = &'a Row>) -> Option<&'a Row> {
    rows.max_by(|a, b| a.ssim.total_cmp(&b.ssim))
}

/// Each cut's calibration (from its `float` rows), in the order the cuts first appear.
pub fn calibrate(rows: &[Row], c: &Criteria) -> Vec<Calibration> {
    let mut cuts: Vec<usize> = rows.iter().map(|r| r.cut).collect();
    cuts.dedup();
    cuts.into_iter()
        .filter_map(|cut| {
            let float = || rows.iter().filter(move |r| r.cut == cut && r.features == "float");
            let best = strongest(float())?;
            let reid = float().map(|r| r.reid).min_by(|a, b| a.p_top1.total_cmp(&b.p_top1))?;
            Some(Calibration {
                cut,
                attack: best.attack.clone(),
                ssim: best.ssim,
                reid_top1: reid.top1,
                reid_p_top1: reid.p_top1,
                trials: reid.trials,
                required_ssim: c.calibration_ssim,
                met: best.ssim >= c.calibration_ssim && reid.p_top1 < c.alpha,
            })
        })
        .collect()
}

/// The per-row verdict of one attack's evidence (calibration as in `calibrations`).
pub fn row_verdict(row: &Row, baseline: Option<f64>, calibrations: &[Calibration], c: &Criteria) -> &'static str {
    let failed = failures(row, baseline, c);
    match label(&failed) {
        Some(l) => l,
        None if row.features == "float" || calibrations.iter().any(|k| k.cut == row.cut && k.met) => UNRECOGNISABLE,
        None => TOO_WEAK,
    }
}

/// One verdict per (cut, setting) over all its attacks' rows, in row order.
pub fn judge(rows: &[Row], baseline: Option<f64>, calibrations: &[Calibration], c: &Criteria) -> Vec<SettingVerdict> {
    let mut keys: Vec<(usize, String)> = Vec::new();
    for r in rows {
        if !keys.iter().any(|(cut, s)| *cut == r.cut && *s == r.setting) {
            keys.push((r.cut, r.setting.clone()));
        }
    }
    keys.into_iter()
        .filter_map(|(cut, setting)| {
            let group = || rows.iter().filter(|r| r.cut == cut && r.setting == setting);
            let best = strongest(group())?;
            let reid = group().map(|r| r.reid).min_by(|a, b| a.p_top1.total_cmp(&b.p_top1))?;
            let failed: Vec<_> = group().flat_map(|r| failures(r, baseline, c)).collect();
            let calibration = calibrations.iter().find(|k| k.cut == cut);
            let uncalibrated = match calibration {
                Some(k) if k.met => None,
                Some(k) => Some(format!(
                    "calibration not met: on float features at cut {cut} the strongest attack ({}) reaches SSIM {:.3} (needs {}), top-1 {}/{} (p {:.1e})",
                    k.attack, k.ssim, k.required_ssim, k.reid_top1, k.trials, k.reid_p_top1
                )),
                None => Some(format!("no float row at cut {cut} to calibrate with")),
            }
            .filter(|_| best.features != "float");
            let verdict = match (label(&failed), &uncalibrated) {
                (Some(l), _) => l,
                (None, Some(_)) => TOO_WEAK,
                (None, None) => UNRECOGNISABLE,
            };
            let uncalibrated = if verdict == TOO_WEAK { uncalibrated } else { None };
            let failed: Vec<String> = failed.into_iter().map(|(_, s)| s).collect();
            let explained = match (&uncalibrated, failed.is_empty()) {
                (_, false) => format!("{verdict} ({})", failed.join("; ")),
                (Some(why), true) => format!("{verdict} ({why})"),
                (None, true) => verdict.to_string(),
            };
            Some(SettingVerdict {
                cut,
                epsilon: best.epsilon,
                strongest_attack: best.attack.clone(),
                ssim: best.ssim,
                reid_top1: reid.top1,
                reid_p_top1: reid.p_top1,
                trials: reid.trials,
                verdict: verdict.to_string(),
                failed,
                uncalibrated,
                explained,
                setting,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reid::{Reidentification, binomial_tail};

    fn reid(top1: usize) -> Reidentification {
        let n = 32;
        Reidentification {
            trials: n,
            images: n,
            top1,
            top5: top1.max(5).min(n),
            chance_top1: 1.0 / 32.0,
            chance_top5: 5.0 / 32.0,
            p_top1: binomial_tail(n, top1, 1.0 / 32.0),
            p_top5: binomial_tail(n, top1.max(5), 5.0 / 32.0),
        }
    }

    fn row(setting: &str, attack: &str, ssim: f64, top1: usize) -> Row {
        Row {
            cut: 4,
            setting: setting.into(),
            features: if setting == "float" { "float".into() } else { "1bit".into() },
            mechanism: "sue".into(),
            epsilon: None,
            attack: attack.into(),
            ssim,
            psnr: 10.0,
            ssim_min: ssim,
            ssim_max: ssim,
            reid: reid(top1),
            verdict: String::new(),
            map50: None,
            map50_95: None,
        }
    }

    #[test]
    fn each_test_is_named_and_a_weak_calibration_withholds_the_verdict() {
        let c = Criteria::default();
        let strong_float = row("float", "decoder", 0.7, 20);
        let cal = calibrate(&[strong_float.clone()], &c);
        assert!(cal[0].met);
        // Low SSIM, near the blind guess, re-identification at chance: unrecognisable.
        let safe = [strong_float.clone(), row("sue-eps1", "decoder", 0.22, 1), row("sue-eps1", "combined", 0.24, 2)];
        let v = judge(&safe, Some(0.21), &cal, &c);
        assert_eq!((v[1].verdict.as_str(), v[1].strongest_attack.as_str()), (UNRECOGNISABLE, "combined"));
        assert_eq!(v[0].verdict, RECOGNISABLE, "float features are the unprotected reference");
        // One attack re-identifying is enough, even with a low SSIM.
        let reid_leak = [strong_float.clone(), row("1bit", "decoder", 0.22, 1), row("1bit", "optimization", 0.2, 9)];
        let v = judge(&reid_leak, Some(0.21), &cal, &c);
        assert_eq!(v[1].verdict, REIDENTIFIABLE);
        assert!(v[1].explained.contains("optimization re-identifies 9/32 top-1 among 32"), "{}", v[1].explained);
        // SSIM below 0.3 but well above the blind guess.
        let v = judge(&[strong_float.clone(), row("1bit", "decoder", 0.29, 1)], Some(0.2), &cal, &c);
        assert_eq!(v[1].verdict, ABOVE_BLIND_GUESS);
        // SSIM ≥ 0.3 outranks everything.
        let v = judge(&[strong_float, row("1bit", "decoder", 0.31, 9)], Some(0.2), &cal, &c);
        assert_eq!(v[1].verdict, RECOGNISABLE);
        assert_eq!(v[1].failed.len(), 3);
        // An attack that cannot invert float features says nothing when it fails on bits.
        let weak = [row("float", "decoder", 0.4, 20), row("sue-eps1", "decoder", 0.2, 1)];
        let cal = calibrate(&weak, &c);
        assert!(!cal[0].met);
        let v = judge(&weak, Some(0.2), &cal, &c);
        assert_eq!(v[1].verdict, TOO_WEAK);
        assert!(v[1].explained.contains("reaches SSIM 0.400 (needs 0.5)"), "{}", v[1].explained);
        assert_eq!(row_verdict(&weak[1], Some(0.2), &cal, &c), TOO_WEAK);
    }
}
