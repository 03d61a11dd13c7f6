//! `job --seeds N`: the whole job once per seed (`--seed`, `--seed` + 1, ...), each in
//! `--out/seed-<s>` with everything a single job writes, then the mean ± sample standard
//! deviation over the runs of every model's mAP on the held-out private split and of
//! MistNet/centralized (`seeds.json`, `seeds.md`, printed): numbers that repeat, not one run.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;

use super::Args;
use super::phases::Job;
use super::supervisor::Supervisor;

/// Mean, sample standard deviation (n − 1; 0 for one run), min and max of one figure over the runs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Spread {
    pub mean: f64,
    pub sd: f64,
    pub min: f64,
    pub max: f64,
    /// One value per seed, in seed order.
    pub values: Vec<f64>,
}

impl Spread {
    pub fn of(values: Vec<f64>) -> Self {
        let n = values.len().max(1) as f64;
        let mean = values.iter().sum::<f64>() / n;
        let sd = if values.len() > 1 { (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt() } else { 0.0 };
        let min = values.iter().copied().fold(f64::INFINITY, f64::min);
        let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        Spread { mean, sd, min, max, values }
    }

    fn cell(&self) -> String {
        format!("{:.3} ± {:.3} ({:.3}–{:.3})", self.mean, self.sd, self.min, self.max)
    }
}

/// One model's mAP over the runs.
#[derive(Debug, Clone, Serialize)]
pub struct ModelSpread {
    pub model: String,
    pub map50: Spread,
    pub map50_95: Spread,
}

/// `seeds.json`.
#[derive(Debug, Clone, Serialize)]
pub struct Seeds {
    pub seeds: Vec<u64>,
    pub models: Vec<ModelSpread>,
    pub mistnet_over_centralized: Option<Spread>,
}

impl Seeds {
    /// The markdown table written to `seeds.md` and printed.
    pub fn table(&self) -> String {
        let seeds: Vec<String> = self.seeds.iter().map(|s| s.to_string()).collect();
        let mut s = format!("\nOver {} seeds ({}): mean ± sd (min–max)\n\n", self.seeds.len(), seeds.join(", "));
        s += "| model (held-out private split) | mAP@.5 | mAP@[.5:.95] |\n|---|---|---|\n";
        for m in &self.models {
            let _ = writeln!(s, "| {} | {} | {} |", m.model, m.map50.cell(), m.map50_95.cell());
        }
        if let Some(r) = &self.mistnet_over_centralized {
            let _ = writeln!(s, "\nMistNet / centralized mAP@.5: {}", r.cell());
        }
        s
    }
}

/// Reads what one run's `summary.json` says of every model, and MistNet/centralized.
fn read_summary(dir: &Path) -> Result<(Vec<(String, f64, f64)>, Option<f64>)> {
    let path = dir.join("summary.json");
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let summary: serde_json::Value = serde_json::from_str(&text).with_context(|| format!("{}: malformed", path.display()))?;
    let models = summary["map"]
        .as_array()
        .with_context(|| format!("{}: no map", path.display()))?
        .iter()
        .map(|m| {
            let model = m["model"].as_str().with_context(|| format!("{}: a map entry without model", path.display()))?;
            let num = |k: &str| m[k].as_f64().with_context(|| format!("{}: {model} without {k}", path.display()));
            Ok((model.to_string(), num("map50")?, num("map50_95")?))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((models, summary["mistnet_over_centralized"].as_f64()))
}

/// Runs the job for each of `args.seeds` seeds and writes the spread over them.
pub fn run(args: Args) -> Result<()> {
    let seeds: Vec<u64> = (0..args.seeds as u64).map(|k| args.seed + k).collect();
    std::fs::create_dir_all(&args.out).with_context(|| format!("cannot create {}", args.out.display()))?;
    // One Ctrl-C handler for the process, stopping whichever seed's job is running.
    let sup = Supervisor::with_signal_handler()?;
    let mut dirs = Vec::new();
    for &seed in &seeds {
        let out = args.out.join(format!("seed-{seed}"));
        println!("=== seed {seed} of {}: {}", seeds.len(), out.display());
        Job::with_supervisor(Args { seed, seeds: 1, out: out.clone(), ..args.clone() }, sup.clone())?.run()?;
        dirs.push(out);
    }
    let result = aggregate(seeds, &dirs)?;
    let json = args.out.join("seeds.json");
    std::fs::write(&json, serde_json::to_string_pretty(&result)? + "\n").with_context(|| format!("cannot write {}", json.display()))?;
    let table = result.table();
    std::fs::write(args.out.join("seeds.md"), &table).with_context(|| format!("cannot write {}", args.out.join("seeds.md").display()))?;
    print!("{table}");
    println!("spread over seeds in {}", json.display());
    Ok(())
}

/// The spread over the runs in `dirs` (one per seed, each holding its `summary.json`).
fn aggregate(seeds: Vec<u64>, dirs: &[std::path::PathBuf]) -> Result<Seeds> {
    let runs = dirs.iter().map(|d| read_summary(d)).collect::<Result<Vec<_>>>()?;
    let first = &runs.first().context("no runs")?.0;
    let models = first
        .iter()
        .map(|(model, _, _)| {
            let pick = |i: usize| -> Result<Vec<f64>> {
                runs.iter()
                    .map(|(ms, _)| {
                        ms.iter().find(|m| &m.0 == model).map(|m| if i == 0 { m.1 } else { m.2 }).context("a run lacks a model")
                    })
                    .collect()
            };
            Ok(ModelSpread { model: model.clone(), map50: Spread::of(pick(0)?), map50_95: Spread::of(pick(1)?) })
        })
        .collect::<Result<Vec<_>>>()?;
    let ratios: Option<Vec<f64>> = runs.iter().map(|(_, r)| *r).collect();
    Ok(Seeds { seeds, models, mistnet_over_centralized: ratios.map(Spread::of) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spread_is_the_mean_and_the_sample_standard_deviation() {
        let s = Spread::of(vec![0.5, 0.7, 0.6]);
        assert!((s.mean - 0.6).abs() < 1e-12);
        assert!((s.sd - 0.1).abs() < 1e-12, "{}", s.sd);
        assert_eq!((s.min, s.max), (0.5, 0.7));
        assert_eq!(Spread::of(vec![0.4]).sd, 0.0);
        assert_eq!(s.cell(), "0.600 ± 0.100 (0.500–0.700)");
    }

    #[test]
    fn the_runs_summaries_are_aggregated_per_model_and_a_missing_one_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, mistnet: f64, centralized: f64| {
            let d = dir.path().join(name);
            std::fs::create_dir_all(&d).unwrap();
            let summary = serde_json::json!({
                "map": [
                    {"model": "mistnet", "map50": mistnet, "map50_95": mistnet / 2.0},
                    {"model": "centralized", "map50": centralized, "map50_95": centralized / 2.0},
                ],
                "mistnet_over_centralized": mistnet / centralized,
            });
            std::fs::write(d.join("summary.json"), summary.to_string()).unwrap();
            d
        };
        let dirs = [write("seed-3", 0.4, 0.8), write("seed-4", 0.6, 0.8)];
        let seeds = aggregate(vec![3, 4], &dirs).unwrap();
        assert_eq!(seeds.models[0].model, "mistnet");
        assert_eq!(seeds.models[0].map50.values, [0.4, 0.6]);
        assert!((seeds.models[1].map50_95.mean - 0.4).abs() < 1e-12);
        assert!((seeds.mistnet_over_centralized.as_ref().unwrap().mean - 0.625).abs() < 1e-12);
        assert!(seeds.table().contains("| mistnet | 0.500 ± 0.141 (0.400–0.600) |"), "{}", seeds.table());
        let missing = aggregate(vec![3, 5], &[dirs[0].clone(), dir.path().join("seed-5")]).unwrap_err();
        assert!(format!("{missing:#}").contains("seed-5/summary.json"), "{missing:#}");
    }
}
