//! The job's FedAvg phase: `mistnet-cloud fedavg` on the same private shards as the edges, from the
//! same pretrained model, with as many epochs in all as MistNet and the centralized baseline
//! (rounds × local epochs = --epochs); then the side-by-side comparison and `fedavg.png`.

use std::path::{Path, PathBuf};

use anyhow::Result;
use indicatif::ProgressBar;
use mistnet::data::synth::layout;
use mistnet_train::federated::server::read_rounds;
use mistnet_train::fit::{MODEL_FILE, RESULTS_FILE};

use super::super::compare::{Comparison, Inputs};
use super::super::summary::Summary;
use super::{Job, bar_style};
use crate::{edge_memory, export, fedavg};

impl Job {
    /// FedAvg over every edge's shard, every edge each round; returns the final global model.
    pub(super) fn fedavg(&mut self, data: &Path, pretrained: &Path) -> Result<PathBuf> {
        let out = self.dir("fedavg");
        let c = &self.config;
        let local_epochs = c.fedavg_local_epochs;
        let rounds = c.epochs / local_epochs;
        let args = fedavg::Args {
            data: (0..c.edges).map(|k| data.join(layout::edge_yaml(k))).collect(),
            val: data.join(layout::PRIVATE_VAL_YAML),
            weights: pretrained.to_path_buf(),
            rounds,
            until_map50: None,
            local_epochs,
            fraction: 1.0,
            aggregation: "fedavg".into(),
            imgsz: Some(c.imgsz.px),
            step: self.step_flags(),
            seed: c.seed,
            device: c.device,
            skip_bad: false,
            out: out.clone(),
        };
        let what = format!("the whole model federated over the {} edges' raw images, {rounds} rounds × {local_epochs} local epochs (clients in-process)", c.edges);
        self.phase("fedavg", &what, |job| {
            let bar = ProgressBar::new(rounds as u64).with_style(bar_style("fedavg rounds"));
            let results = out.join(RESULTS_FILE);
            job.run_child("fedavg", job.cloud_cmd("fedavg", &args), bar, |bar| {
                if let Ok(rows) = read_rounds(&results)
                    && let Some(last) = rows.last()
                {
                    bar.set_position(last.round as u64);
                    bar.set_message(format!("mAP@.5 {:.3}, {:.1} MB per edge", last.metrics.map50, last.bytes_per_edge.f32 as f64 / 1e6));
                }
            })
        })?;
        Ok(out.join(MODEL_FILE))
    }

    /// MistNet, FedAvg and centralized side by side, and `fedavg.png`.
    pub(super) fn comparison(&self, data: &Path, export_dir: &Path, summary: &Summary) -> Result<Comparison> {
        let c = &self.config;
        let fedavg_dir = self.dir("fedavg");
        // MistNet's edge: the Front pipeline over a batch of its images, in a process of its own.
        let memory = edge_memory::Args {
            mode: "front".into(),
            weights: export_dir.join(export::FRONT_FILE),
            model: Some(export_dir.join(MODEL_FILE)),
            cut: Some(c.cut.index),
            data: data.join(layout::edge_yaml(0)),
            imgsz: c.imgsz.px,
            batch: c.batch,
        };
        let mistnet_peak_rss_bytes = edge_memory::measure(&self.cloud, &memory)?;
        let inputs = Inputs {
            store: &self.dir("store"),
            front: &export_dir.join(export::FRONT_FILE),
            model: &export_dir.join(MODEL_FILE),
            cut: c.cut.index,
            imgsz: c.imgsz.px,
            edges: (0..c.edges).map(|k| (format!("edge-{k}"), data.join(layout::edge_yaml(k)))).collect(),
            fedavg: &fedavg_dir,
            epochs: c.epochs,
            map: &summary.map,
            timings: &self.timings,
            mistnet_peak_rss_bytes,
        };
        let comparison = Comparison::collect(&inputs)?;
        let public = summary.map.iter().find(|s| s.model == "public-only").map(|s| s.metrics.map50);
        comparison.plot(&c.out, &fedavg_dir, public)?;
        Ok(comparison)
    }
}
