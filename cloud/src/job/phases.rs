//! The job's phases in order, each a child process of the real binaries, with a progress line
//! per phase and the wall time of each recorded for the summary.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use indicatif::{ProgressBar, ProgressStyle};
use mistnet_cloud::fit::Metrics;
use mistnet_cloud::fit::report::read_results;
use mistnet_cloud::store::segment;
use rand::Rng;
use rand::distr::Alphanumeric;

use super::Args;
use super::summary::{Summary, Timing};
use super::supervisor::{Handle, Supervisor, check, log_tail, sibling_binary};

/// How long `serve` may take to start listening, and to stop after SIGTERM.
const SERVE_START: Duration = Duration::from_secs(60);
const SERVE_STOP: Duration = Duration::from_secs(30);

/// One run of the job: its settings, the two binaries, the children and the phase timings.
pub struct Job {
    config: Args,
    cloud: PathBuf,
    edge: PathBuf,
    sup: Supervisor,
    timings: Vec<Timing>,
    started: Instant,
}

impl Job {
    pub fn new(config: Args) -> Result<Self> {
        let (cloud, edge) = (sibling_binary("mistnet-cloud")?, sibling_binary("mistnet-edge")?);
        std::fs::create_dir_all(config.out.join("logs")).with_context(|| format!("cannot create {}", config.out.display()))?;
        Ok(Job { config, cloud, edge, sup: Supervisor::with_signal_handler()?, timings: Vec::new(), started: Instant::now() })
    }

    fn dir(&self, name: &str) -> PathBuf {
        self.config.out.join(name)
    }

    fn log(&self, name: &str) -> PathBuf {
        self.config.out.join("logs").join(format!("{name}.log"))
    }

    /// `mistnet-cloud` with `args` and the training threads (its logs follow `RUST_LOG`).
    fn cloud_cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.cloud);
        cmd.args(args);
        set_threads(&mut cmd, self.config.threads);
        cmd
    }

    pub fn run(mut self) -> Result<()> {
        let result = self.phases();
        // Whatever happened, nothing the job started outlives it.
        self.sup.kill_all();
        result
    }

    fn phases(&mut self) -> Result<()> {
        let c = &self.config;
        println!(
            "MistNet job: {} at {} px, cut {}, {} edges, {} ε={}, output in {}",
            c.model,
            c.imgsz,
            c.cut,
            c.edges,
            c.mechanism.name(),
            c.epsilon,
            c.out.display()
        );
        let data = self.data()?;
        let pretrained = self.pretrain(&data)?;
        let export = self.export(&pretrained)?;
        let (serve, addr, tokens) = self.serve(&export)?;
        let stored = self.edges(&data, &addr, &tokens);
        let stopped = self.stop_serve(&serve);
        let expected = stored?;
        stopped?;
        let mistnet = self.train(&data, &export)?;
        let centralized = self.centralized(&data, &pretrained)?;
        let val = self.val(&data, [("public-only", &pretrained), ("mistnet", &mistnet), ("centralized", &centralized)])?;
        let privacy = if self.config.skip_privacy { None } else { Some(self.privacy(&export)?) };

        let summary = Summary::collect(&self.config, &self.dir("store"), expected, val, privacy.as_deref(), &self.timings, self.started.elapsed())?;
        summary.write(&self.config.out, &self.dir("train"), &self.dir("centralized"))?;
        print!("{}", summary.table());
        println!("summary in {}", self.config.out.join("summary.md").display());
        Ok(())
    }

    /// Runs a phase: prints its header, times it, and records the time.
    fn phase<T>(&mut self, name: &str, what: &str, f: impl FnOnce(&mut Self) -> Result<T>) -> Result<T> {
        let n = self.timings.len() + 1;
        println!("[{n}] {name}: {what}");
        let start = Instant::now();
        let out = f(self).with_context(|| format!("phase {name} failed"))?;
        let seconds = start.elapsed().as_secs_f64();
        println!("    {name} done in {seconds:.1} s");
        self.timings.push(Timing { phase: name.to_string(), seconds });
        Ok(out)
    }

    /// Runs one child to completion while a spinner (or `progress`) shows how far it is.
    fn run_child(&self, name: &str, cmd: Command, bar: ProgressBar, progress: impl Fn(&ProgressBar)) -> Result<()> {
        let h = self.sup.spawn(name, cmd, &self.log(name))?;
        let result = self.watch(&h, &bar, progress);
        bar.finish_and_clear();
        result
    }

    fn watch(&self, h: &Handle, bar: &ProgressBar, progress: impl Fn(&ProgressBar)) -> Result<()> {
        loop {
            if let Some(status) = self.sup.try_wait(h)? {
                return check(h, status);
            }
            progress(bar);
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    fn data(&mut self) -> Result<PathBuf> {
        if let Some(dir) = self.config.data.clone() {
            for k in 0..self.config.edges {
                let shard = dir.join(format!("private/edge-{k}.yaml"));
                ensure!(shard.exists(), "--data {}: {} is missing (see `job --help` for the layout)", dir.display(), shard.display());
            }
            for file in ["public.yaml", "private.yaml", "private-val.yaml"] {
                ensure!(dir.join(file).exists(), "--data {}: {file} is missing (see `job --help` for the layout)", dir.display());
            }
            return Ok(dir);
        }
        let out = self.dir("data");
        let c = &self.config;
        let what = format!("generate {} images at {} px ({} private shards)", c.images, c.imgsz, c.edges);
        let args = ["synth", "--out", path(&out)?, "--images", &c.images.to_string(), "--imgsz", &c.imgsz.to_string(), "--seed", &c.seed.to_string(), "--edges", &c.edges.to_string()].map(String::from);
        self.phase("data", &what, |job| {
            let cmd = job.cloud_cmd(&args.iter().map(String::as_str).collect::<Vec<_>>());
            job.run_child("data", cmd, spinner("data"), |_| {})
        })?;
        Ok(out)
    }

    fn pretrain(&mut self, data: &Path) -> Result<PathBuf> {
        if let Some(weights) = self.config.weights.clone() {
            println!("    pretrain skipped: using {}", weights.display());
            return Ok(weights);
        }
        let out = self.dir("pretrain");
        let epochs = self.config.pretrain_epochs;
        let args = self.training_args("pretrain", &data.join("public.yaml"), &out, epochs)?;
        let extra = ["--model".to_string(), self.config.model.clone()];
        self.phase("pretrain", &format!("whole {} on the public split, {epochs} epochs", self.config.model), |job| job.train_child("pretrain", args.into_iter().chain(extra).collect(), &out, epochs))?;
        Ok(out.join("model.safetensors"))
    }

    fn export(&mut self, pretrained: &Path) -> Result<PathBuf> {
        let out = self.dir("export");
        let (cut, imgsz) = (self.config.cut.to_string(), self.config.imgsz.to_string());
        let args = ["export", "--weights", path(pretrained)?, "--cut", &cut, "--imgsz", &imgsz, "--out", path(&out)?].map(String::from);
        self.phase("export", &format!("the Front (modules 0..{}) for the edges", self.config.cut - 1), |job| {
            let cmd = job.cloud_cmd(&args.iter().map(String::as_str).collect::<Vec<_>>());
            job.run_child("export", cmd, spinner("export"), |_| {})
        })?;
        Ok(out)
    }

    /// Starts `serve` with a fresh token per edge; returns it with its address and token files.
    fn serve(&mut self, export: &Path) -> Result<(Handle, String, PathBuf)> {
        self.phase("serve", "start the cloud service on loopback", |job| {
            let tokens = job.dir("tokens");
            std::fs::create_dir_all(&tokens)?;
            let mut lines = String::new();
            for k in 0..job.config.edges {
                let token: String = rand::rng().sample_iter(Alphanumeric).take(32).map(char::from).collect();
                std::fs::write(tokens.join(format!("edge-{k}.token")), format!("{token}\n"))?;
                lines += &format!("edge-{k} {token}\n");
            }
            std::fs::write(tokens.join("tokens.txt"), lines)?;
            let cmd = job.cloud_cmd(&[
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--store",
                path(&job.dir("store"))?,
                "--front",
                path(export)?,
                "--tokens",
                path(&tokens.join("tokens.txt"))?,
            ]);
            let h = job.sup.spawn("serve", cmd, &job.log("serve"))?;
            let addr = job.wait_listening(&h)?;
            println!("    listening on {addr}");
            Ok((h, addr, tokens))
        })
    }

    /// Waits for `serve` to print `listening on ADDR` in its log.
    fn wait_listening(&self, h: &Handle) -> Result<String> {
        let start = Instant::now();
        loop {
            let log = std::fs::read_to_string(&h.log).unwrap_or_default();
            if let Some(addr) = log.lines().find_map(|l| l.strip_prefix("listening on ")) {
                return Ok(addr.trim().to_string());
            }
            if let Some(status) = self.sup.try_wait(h)? {
                check(h, status)?;
                bail!("serve exited before listening; see {}", h.log.display());
            }
            if start.elapsed() > SERVE_START {
                bail!("serve did not start listening within {SERVE_START:?}; last lines of {}:\n{}", h.log.display(), log_tail(&h.log, 15));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Runs every edge to completion; returns how many samples their shards hold.
    fn edges(&mut self, data: &Path, addr: &str, tokens: &Path) -> Result<usize> {
        let expected = (0..self.config.edges).map(|k| count_train_images(&data.join(format!("private/edge-{k}.yaml")))).sum::<Result<usize>>()?;
        let what = format!("{} edge processes stream {expected} samples ({} ε={})", self.config.edges, self.config.mechanism.name(), self.config.epsilon);
        self.phase("edges", &what, |job| {
            let c = &job.config;
            let mut handles = Vec::new();
            for k in 0..c.edges {
                let name = format!("edge-{k}");
                let mut cmd = Command::new(&job.edge);
                cmd.args([
                    "run",
                    "--server",
                    &format!("http://{addr}"),
                    "--edge",
                    &name,
                    "--token-file",
                    path(&tokens.join(format!("{name}.token")))?,
                    "--data",
                    path(&data.join(format!("private/{name}.yaml")))?,
                    "--mechanism",
                    c.mechanism.name(),
                    "--epsilon",
                    &c.epsilon.to_string(),
                    "--cache",
                    path(&job.dir("edges").join(&name))?,
                ]);
                // The edges run side by side: one thread each keeps the cores from being oversubscribed.
                set_threads(&mut cmd, 1);
                handles.push(job.sup.spawn(&name, cmd, &job.log(&name))?);
            }
            // Progress without re-reading the store: edges finished, and the bytes its segments hold.
            let bar = ProgressBar::new(c.edges as u64).with_style(bar_style("edges done"));
            let store = job.dir("store");
            let mut pending: Vec<&Handle> = handles.iter().collect();
            while !pending.is_empty() {
                let mut still = Vec::new();
                for h in pending {
                    match job.sup.try_wait(h)? {
                        Some(status) => check(h, status)?,
                        None => still.push(h),
                    }
                }
                pending = still;
                bar.set_position((c.edges - pending.len()) as u64);
                bar.set_message(format!("{:.1} MB stored", stored_bytes(&store) as f64 / 1e6));
                std::thread::sleep(Duration::from_millis(250));
            }
            bar.finish_and_clear();
            Ok(expected)
        })
    }

    fn stop_serve(&mut self, serve: &Handle) -> Result<()> {
        let status = self.sup.stop(serve, SERVE_STOP)?;
        check(serve, status).context("serve did not stop cleanly")
    }

    /// `train --store`: the Back on what the edges sent, starting from the pretrained weights.
    fn train(&mut self, data: &Path, export: &Path) -> Result<PathBuf> {
        let out = self.dir("train");
        let epochs = self.config.epochs;
        let c = &self.config;
        let mut args = self.training_args("train", &data.join("private-val.yaml"), &out, epochs)?;
        args.extend(
            ["--weights", path(&export.join("model.safetensors"))?, "--cut", &c.cut.to_string(), "--store", path(&self.dir("store"))?, "--mechanism", c.mechanism.name()]
                .map(String::from),
        );
        args.extend(["--epsilon".to_string(), c.epsilon.to_string()]);
        self.phase("train", &format!("the Back on the stored features, {epochs} epochs"), |job| job.train_child("train", args, &out, epochs))?;
        Ok(out.join("model.safetensors"))
    }

    /// The centralized baseline: the whole pretrained model on the raw private images.
    fn centralized(&mut self, data: &Path, pretrained: &Path) -> Result<PathBuf> {
        let out = self.dir("centralized");
        let epochs = self.config.epochs;
        let mut args = self.training_args("pretrain", &data.join("private.yaml"), &out, epochs)?;
        args.extend(["--weights".to_string(), path(pretrained)?.to_string(), "--model".to_string(), self.config.model.clone()]);
        self.phase("centralized", &format!("the whole model on the raw private images (no split), {epochs} epochs"), |job| job.train_child("centralized", args, &out, epochs))?;
        Ok(out.join("model.safetensors"))
    }

    /// The flags every training phase shares.
    fn training_args(&self, command: &str, data: &Path, out: &Path, epochs: usize) -> Result<Vec<String>> {
        let c = &self.config;
        let batch = c.batch.to_string();
        let mut args = [command, "--data", path(data)?, "--imgsz", &c.imgsz.to_string(), "--epochs", &epochs.to_string(), "--batch", &batch, "--nbs", &batch, "--seed", &c.seed.to_string(), "--device", &c.device, "--out", path(out)?]
            .map(String::from)
            .to_vec();
        if let Some(n) = c.warmup_min_iters {
            args.extend(["--warmup-min-iters".to_string(), n.to_string()]);
        }
        Ok(args)
    }

    /// Runs a training child with a bar over epochs fed by its `results.csv`.
    fn train_child(&self, name: &str, args: Vec<String>, out: &Path, epochs: usize) -> Result<()> {
        let cmd = self.cloud_cmd(&args.iter().map(String::as_str).collect::<Vec<_>>());
        let bar = ProgressBar::new(epochs as u64).with_style(bar_style(name));
        let results = out.join("results.csv");
        self.run_child(name, cmd, bar, |bar| {
            if let Ok(records) = read_results(&results, usize::MAX)
                && let Some(last) = records.last()
            {
                bar.set_position(records.len() as u64);
                bar.set_message(format!("mAP@.5 {:.3}", last.metrics.map50));
            }
        })
    }

    fn val(&mut self, data: &Path, models: [(&str, &Path); 3]) -> Result<Vec<(String, Metrics)>> {
        let out = self.dir("val");
        std::fs::create_dir_all(&out)?;
        let heldout = data.join("private-val.yaml");
        self.phase("val", "every model on the held-out private split", |job| {
            let mut all = Vec::new();
            for (name, weights) in models {
                let json = out.join(format!("{name}.json"));
                let cmd = job.cloud_cmd(&["val", "--weights", path(weights)?, "--data", path(&heldout)?, "--json"]);
                let log = job.log(&format!("val-{name}"));
                let h = job.sup.spawn(&format!("val-{name}"), cmd, &log)?;
                job.sup.wait_ok(&h)?;
                let text = std::fs::read_to_string(&log)?;
                let line = text.lines().rev().find(|l| l.trim_start().starts_with('{')).with_context(|| format!("val printed no JSON; see {}", log.display()))?;
                let metrics: Metrics = serde_json::from_str(line).with_context(|| format!("val printed malformed JSON: {line}"))?;
                std::fs::write(&json, format!("{line}\n"))?;
                all.push((name.to_string(), metrics));
            }
            Ok(all)
        })
    }

    fn privacy(&mut self, export: &Path) -> Result<PathBuf> {
        let out = self.dir("privacy");
        let c = &self.config;
        let args = [
            "privacy",
            "--out",
            path(&out)?,
            "--model",
            &c.model,
            "--weights",
            path(&export.join("front.safetensors"))?,
            "--cuts",
            &c.cut.to_string(),
            "--mechanism",
            c.mechanism.name(),
            "--epsilons",
            &c.epsilon.to_string(),
            "--imgsz",
            &c.imgsz.to_string(),
            "--seed",
            &c.seed.to_string(),
        ]
        .map(String::from)
        .to_vec();
        let steps = [("--decoder-steps", c.decoder_steps), ("--opt-steps", c.opt_steps)];
        let args: Vec<String> = args.into_iter().chain(steps.into_iter().filter_map(|(flag, n)| Some([flag.to_string(), n?.to_string()])).flatten()).collect();
        self.phase("privacy", &format!("model-inversion attacks at cut {}: float, 1-bit, ε={}", c.cut, c.epsilon), |job| {
            let cmd = job.cloud_cmd(&args.iter().map(String::as_str).collect::<Vec<_>>());
            job.run_child("privacy", cmd, spinner("privacy"), |_| {})
        })?;
        Ok(out)
    }
}

/// Bytes in the store's segment files (0 while it has none).
fn stored_bytes(store: &Path) -> u64 {
    let segments = segment::list(store).unwrap_or_default();
    segments.iter().filter_map(|(_, p)| std::fs::metadata(p).ok()).map(|m| m.len()).sum()
}

/// Caps a child's compute threads (rayon's pool; candle's own pool stays inline, `runtime::init`).
fn set_threads(cmd: &mut Command, threads: usize) {
    cmd.env("RAYON_NUM_THREADS", threads.to_string());
}

fn path(p: &Path) -> Result<&str> {
    p.to_str().with_context(|| format!("path {} is not UTF-8", p.display()))
}

fn spinner(name: &str) -> ProgressBar {
    let bar = ProgressBar::new_spinner().with_style(ProgressStyle::with_template("    {spinner} {prefix} {elapsed}").expect("valid template"));
    bar.set_prefix(name.to_string());
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

fn bar_style(name: &str) -> ProgressStyle {
    ProgressStyle::with_template(&format!("    {name} [{{bar:30}}] {{pos}}/{{len}} {{msg}} {{elapsed}}")).expect("valid template").progress_chars("=> ")
}

/// Images in the train split of a dataset YAML.
fn count_train_images(yaml: &Path) -> Result<usize> {
    use mistnet::data::{BadDataPolicy, Dataset, Split};
    let dataset = Dataset::open(yaml).with_context(|| format!("cannot read {}", yaml.display()))?;
    Ok(dataset.load(Split::Train, BadDataPolicy::Fail)?.samples.len())
}
