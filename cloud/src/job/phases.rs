//! The job's phases in order, each a child process of the real binaries, with a progress line
//! per phase and the wall time of each recorded for the summary.
//!
//! Each child's command line is rendered ([`ToArgs`]) from the flag types that child parses, its
//! results come back through files it is told to write, and `serve` is ready when its gRPC health
//! service says so: nothing is read from a child's log but the lines quoted when it fails.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use indicatif::{ProgressBar, ProgressStyle};
use mistnet::data::synth::layout;
use mistnet::codec::{DEFAULT_ZSTD_LEVEL, Encoding};
use mistnet_cli::edge::{PrivacyArgs, RunArgs};
use mistnet::codec::Mechanism;
use mistnet_cli::{Argv, ClientArgs, LdpArgs, ToArgs};
use mistnet_proto::client::{Connection, TlsFiles};
use mistnet_proto::pb::feature_upload_server::SERVICE_NAME as FEATURE_UPLOAD;
use mistnet_store::{OnCorruption, segment};
use mistnet_train::fit::report::read_results;
use mistnet_train::fit::{MODEL_FILE, Metrics, RESULTS_FILE};
use rand::Rng;
use rand::distr::Alphanumeric;

use super::Args;
use super::summary::{Summary, Timing, Training};
use super::supervisor::{Handle, Supervisor, check, log_tail, sibling_binary};
use crate::run_flags::{RunFlags, StepFlags};
use crate::{export, pretrain, privacy_cmd, serve, synth, train_cmd, val};

// The FedAvg phase, in its own file (a child module: it uses the job's private helpers).
#[path = "fedavg_phase.rs"]
mod fedavg_phase;

/// How long `serve` may take to become ready, and to stop after SIGTERM.
const SERVE_START: Duration = Duration::from_secs(60);
const SERVE_STOP: Duration = Duration::from_secs(30);
/// `train --follow --wait-timeout` in the job: long, since the job watches the edges itself.
const FOLLOW_WAIT: Duration = Duration::from_secs(24 * 3600);
/// `pretrain`'s noise flags where it trains on float features.
const NO_NOISE: LdpArgs = LdpArgs { mechanism: Mechanism::None, epsilon: None };

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
    /// A job whose children are stopped on Ctrl-C (the process's one handler is installed here).
    pub fn new(config: Args) -> Result<Self> {
        Self::with_supervisor(config, Supervisor::with_signal_handler()?)
    }

    /// A job whose children `sup` tracks (`--seeds` runs every seed's job under one supervisor).
    pub fn with_supervisor(config: Args, sup: Supervisor) -> Result<Self> {
        let (cloud, edge) = (sibling_binary("mistnet-cloud")?, sibling_binary("mistnet-edge")?);
        std::fs::create_dir_all(config.out.join("logs")).with_context(|| format!("cannot create {}", config.out.display()))?;
        Ok(Job { config, cloud, edge, sup, timings: Vec::new(), started: Instant::now() })
    }

    fn dir(&self, name: &str) -> PathBuf {
        self.config.out.join(name)
    }

    fn log(&self, name: &str) -> PathBuf {
        self.config.out.join("logs").join(format!("{name}.log"))
    }

    /// `mistnet-cloud COMMAND` with the flags of `args` and the training threads (its logs follow `RUST_LOG`).
    fn cloud_cmd(&self, command: &str, args: &impl ToArgs) -> Command {
        let mut cmd = Command::new(&self.cloud);
        cmd.arg(command).args(args.to_args());
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
            "MistNet job: {} at {} px, cut {}, {} edges, {}, output in {}",
            c.model.name,
            c.imgsz.px,
            c.cut.index,
            c.edges,
            self.privacy_setting(),
            c.out.display()
        );
        let data = self.data()?;
        let pretrained = self.pretrain(&data)?;
        let export = self.export(&pretrained)?;
        let (serve, addr, tokens) = self.serve(&export)?;
        let (expected, mistnet, min_samples) = if self.config.no_follow {
            let stored = self.edges(&data, &addr, &tokens);
            let stopped = self.stop_serve(&serve);
            let expected = stored?;
            stopped?;
            (expected, self.train(&data, &export)?, None)
        } else {
            let (expected, mistnet, min) = self.edges_and_train(&data, &export, &serve, &addr, &tokens)?;
            (expected, mistnet, Some(min))
        };
        let centralized = self.centralized(&data, &pretrained)?;
        let fedavg = if self.config.skip_fedavg { None } else { Some(self.fedavg(&data, &pretrained)?) };
        let mut models = vec![("public-only", pretrained.as_path()), ("mistnet", &mistnet), ("centralized", &centralized)];
        models.extend(fedavg.as_deref().map(|m| ("fedavg", m)));
        let val = self.val(&data, &models)?;
        let privacy = if self.config.skip_privacy { None } else { Some(self.privacy(&data, &export, &mistnet)?) };

        let training = Training { results: self.dir("train").join(RESULTS_FILE), min_samples };
        let mut summary =
            Summary::collect(&self.config, &self.dir("store"), expected, &training, val, privacy.as_deref(), &self.timings, self.started.elapsed())?;
        if fedavg.is_some() {
            summary.comparison = Some(self.comparison(&data, &export, &summary)?);
        }
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
            let files = (0..self.config.edges).map(layout::edge_yaml).chain([layout::PUBLIC_YAML, layout::PRIVATE_YAML, layout::PRIVATE_VAL_YAML].map(String::from));
            for file in files {
                ensure!(dir.join(&file).exists(), "--data {}: {file} is missing (see `job --help` for the layout)", dir.display());
            }
            return Ok(dir);
        }
        let out = self.dir("data");
        let c = &self.config;
        let what = format!("generate {} images at {} px ({} private shards)", c.images, c.imgsz.px, c.edges);
        let args = synth::Args { out: out.clone(), images: c.images, imgsz: c.imgsz.px, seed: c.seed, edges: c.edges, private_size: None };
        self.phase("data", &what, |job| {
            let cmd = job.cloud_cmd("synth", &args);
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
        let c = &self.config;
        // With --aware-pretrain: binarization-aware at the job's cut with the edges' noise.
        let (binarize_cut, privacy) = if c.aware_pretrain { (Some(c.cut.index), c.privacy) } else { (None, NO_NOISE) };
        let args = pretrain::Args { run: self.run_flags(&data.join(layout::PUBLIC_YAML), &out, epochs), model: c.model.clone(), weights: None, binarize_cut, privacy };
        let what = match binarize_cut {
            Some(cut) => format!("whole {} on the public split, binarization-aware at cut {cut} ({}), {epochs} epochs", c.model.name, self.privacy_setting()),
            None => format!("whole {} on the public split (float features), {epochs} epochs", c.model.name),
        };
        self.phase("pretrain", &what, |job| job.train_child("pretrain", job.cloud_cmd("pretrain", &args), &out, epochs))?;
        Ok(out.join(MODEL_FILE))
    }

    fn export(&mut self, pretrained: &Path) -> Result<PathBuf> {
        let out = self.dir("export");
        let args = export::Args { weights: pretrained.to_path_buf(), cut: self.config.cut.clone(), imgsz: Some(self.config.imgsz.px), out: out.clone() };
        self.phase("export", &format!("the Front (modules 0..{}) for the edges", self.config.cut.index - 1), |job| {
            let cmd = job.cloud_cmd("export", &args);
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
            // A free port, taken from the kernel and released for serve to bind.
            let addr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
            let args = serve::Args::of_export(addr, job.dir("store"), export.to_path_buf(), tokens.join("tokens.txt"));
            let h = job.sup.spawn("serve", job.cloud_cmd("serve", &args), &job.log("serve"))?;
            let server = format!("http://{addr}");
            job.wait_serving(&h, &server)?;
            println!("    serving on {server}");
            Ok((h, server, tokens))
        })
    }

    /// Waits until `serve`'s health service reports the upload service SERVING.
    fn wait_serving(&self, h: &Handle, server: &str) -> Result<()> {
        let connection = Connection::new(server, &TlsFiles::default(), false)?;
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("cannot start the async runtime")?;
        let start = Instant::now();
        loop {
            // Refused connections are expected until serve has loaded the Front and bound the port.
            if runtime.block_on(connection.serving(FEATURE_UPLOAD)).unwrap_or(false) {
                return Ok(());
            }
            if let Some(status) = self.sup.try_wait(h)? {
                check(h, status)?;
                bail!("serve exited before serving; see {}", h.log.display());
            }
            if start.elapsed() > SERVE_START {
                bail!("serve was not serving within {SERVE_START:?}; last lines of {}:\n{}", h.log.display(), log_tail(&h.log, 15));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Samples in the edges' shards.
    fn expected_samples(&self, data: &Path) -> Result<usize> {
        (0..self.config.edges).map(|k| count_train_images(&data.join(layout::edge_yaml(k)))).sum()
    }

    /// Starts one `mistnet-edge run` per shard.
    fn spawn_edges(&self, data: &Path, server: &str, tokens: &Path) -> Result<Vec<Handle>> {
        let c = &self.config;
        let mut handles = Vec::new();
        for k in 0..c.edges {
            let name = format!("edge-{k}");
            let run = RunArgs {
                client: ClientArgs {
                    server: server.to_string(),
                    token_file: tokens.join(format!("{name}.token")),
                    ca_cert: None,
                    client_cert: None,
                    client_key: None,
                    insecure_plaintext: false,
                },
                edge: name.clone(),
                data: data.join(layout::edge_yaml(k)),
                // Seeded, so that a job repeats (`job --seed`).
                privacy: PrivacyArgs { ldp: c.privacy, zstd_level: DEFAULT_ZSTD_LEVEL, seed: Some(edge_noise_seed(c.seed, k)) },
                encoding: Encoding::Packed,
                cache: self.dir("edges").join(&name),
                max_attempts: 8,
                max_rate: None,
                skip_bad: false,
                precision: Default::default(),
            };
            let mut cmd = Command::new(&self.edge);
            cmd.args(Argv::new().word("run").group(&run).build());
            // The edges run side by side: one thread each keeps the cores from being oversubscribed.
            set_threads(&mut cmd, 1);
            handles.push(self.sup.spawn(&name, cmd, &self.log(&name))?);
        }
        Ok(handles)
    }

    /// Runs every edge to completion; returns how many samples their shards hold.
    fn edges(&mut self, data: &Path, server: &str, tokens: &Path) -> Result<usize> {
        let expected = self.expected_samples(data)?;
        let what = format!("{} edge processes stream {expected} samples ({})", self.config.edges, self.privacy_setting());
        self.phase("edges", &what, |job| {
            let c = &job.config;
            let handles = job.spawn_edges(data, server, tokens)?;
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

    fn stop_serve(&self, serve: &Handle) -> Result<()> {
        let status = self.sup.stop(serve, SERVE_STOP)?;
        check(serve, status).context("serve did not stop cleanly")
    }

    /// `train --store` into --out/train from the pretrained weights; with `follow`, `--follow
    /// --min-samples N`: while the edges upload.
    fn train_args(&self, data: &Path, export: &Path, follow: Option<usize>) -> train_cmd::Args {
        let c = &self.config;
        train_cmd::Args {
            run: self.run_flags(&data.join(layout::PRIVATE_VAL_YAML), &self.dir("train"), c.epochs),
            weights: export.join(MODEL_FILE),
            model: c.model.clone(),
            cut: c.cut.clone(),
            fresh_back: false,
            privacy: c.privacy,
            store: Some(self.dir("store").into()),
            on_corruption: OnCorruption::Refuse,
            follow: follow.is_some(),
            min_samples: follow,
            // The job itself watches the edges: a failed edge fails the job (and stops training).
            wait_timeout: follow.map(|_| FOLLOW_WAIT.as_secs_f64()),
        }
    }

    /// `train --store` after the edges (--no-follow): the Back on what the edges sent, starting from the pretrained weights.
    fn train(&mut self, data: &Path, export: &Path) -> Result<PathBuf> {
        let out = self.dir("train");
        let epochs = self.config.epochs;
        let args = self.train_args(data, export, None);
        self.phase("train", &format!("the Back on the stored features, {epochs} epochs"), |job| job.train_child("train", job.cloud_cmd("train", &args), &out, epochs))?;
        Ok(out.join(MODEL_FILE))
    }

    /// The edges and `train --follow` side by side: the edges start, then training, which begins
    /// once `min` samples are stored and takes in the rest before each epoch. `serve` is stopped
    /// once every edge has finished; training goes on reading the store it left. Records the
    /// `edges` phase (until the last edge finished) and the `train` phase (from its start);
    /// returns the samples of the shards, the trained model and `min`.
    fn edges_and_train(&mut self, data: &Path, export: &Path, serve: &Handle, server: &str, tokens: &Path) -> Result<(usize, PathBuf, usize)> {
        let expected = self.expected_samples(data)?;
        let c = &self.config;
        let min = match c.min_samples {
            Some(n) if n > expected => bail!("--min-samples {n} is more than the {expected} samples the edges' shards hold"),
            Some(n) => n,
            // Half of what the edges will send, at least a batch: the later epochs see every sample.
            None => expected.div_ceil(2).max(c.batch).min(expected),
        };
        let (edges, epochs) = (c.edges, c.epochs);
        let n = self.timings.len() + 1;
        println!("[{n}] edges: {edges} edge processes stream {expected} samples ({})", self.privacy_setting());
        let edges_start = Instant::now();
        let handles = self.spawn_edges(data, server, tokens).context("phase edges failed")?;
        println!("[{}] train: the Back while the edges upload, from {min} stored samples on, {epochs} epochs", n + 1);
        let out = self.dir("train");
        let args = self.train_args(data, export, Some(min));
        let train_start = Instant::now();
        let train = self.sup.spawn("train", self.cloud_cmd("train", &args), &self.log("train")).context("phase train failed")?;
        let bar = ProgressBar::new(epochs as u64).with_style(bar_style("train"));
        let (results, store) = (out.join(RESULTS_FILE), self.dir("store"));
        let mut pending: Vec<&Handle> = handles.iter().collect();
        let (mut edges_seconds, mut train_seconds) = (None, None);
        while edges_seconds.is_none() || train_seconds.is_none() {
            let mut still = Vec::new();
            for h in pending {
                match self.sup.try_wait(h)? {
                    Some(status) => check(h, status).context("phase edges failed")?,
                    None => still.push(h),
                }
            }
            pending = still;
            if pending.is_empty() && edges_seconds.is_none() {
                let seconds = edges_start.elapsed().as_secs_f64();
                bar.println(format!("    edges done in {seconds:.1} s"));
                edges_seconds = Some(seconds);
                // Every sample is stored: serve is done; training reads the store it leaves.
                self.stop_serve(serve)?;
            }
            if train_seconds.is_none()
                && let Some(status) = self.sup.try_wait(&train)?
            {
                check(&train, status).context("phase train failed")?;
                train_seconds = Some(train_start.elapsed().as_secs_f64());
            }
            let records = read_results(&results, usize::MAX).unwrap_or_default();
            bar.set_position(records.len() as u64);
            let last = records.last().map_or_else(String::new, |r| format!(", last epoch {} samples, mAP@.5 {:.3}", r.samples.unwrap_or(0), r.metrics.map50));
            bar.set_message(format!("{}/{edges} edges done, {:.1} MB stored{last}", edges - pending.len(), stored_bytes(&store) as f64 / 1e6));
            std::thread::sleep(Duration::from_millis(250));
        }
        bar.finish_and_clear();
        let (edges_seconds, train_seconds) = (edges_seconds.expect("set"), train_seconds.expect("set"));
        println!("    train done in {train_seconds:.1} s");
        self.timings.push(Timing { phase: "edges".into(), seconds: edges_seconds });
        self.timings.push(Timing { phase: "train".into(), seconds: train_seconds });
        Ok((expected, out.join(MODEL_FILE), min))
    }

    /// The centralized baseline: the whole pretrained model on the raw private images.
    fn centralized(&mut self, data: &Path, pretrained: &Path) -> Result<PathBuf> {
        let out = self.dir("centralized");
        let epochs = self.config.epochs;
        let args = pretrain::Args {
            run: self.run_flags(&data.join(layout::PRIVATE_YAML), &out, epochs),
            model: self.config.model.clone(),
            weights: Some(pretrained.to_path_buf()),
            binarize_cut: None,
            privacy: NO_NOISE,
        };
        let what = format!("the whole model on the raw private images (no split), {epochs} epochs");
        self.phase("centralized", &what, |job| job.train_child("centralized", job.cloud_cmd("pretrain", &args), &out, epochs))?;
        Ok(out.join(MODEL_FILE))
    }

    /// How every training phase (MistNet, centralized, FedAvg) makes a step: the job's batch, also
    /// the nominal batch (no accumulation), its warmup floor and its mosaic (pretraining's too).
    pub(super) fn step_flags(&self) -> StepFlags {
        let c = &self.config;
        StepFlags { batch: c.batch, nbs: c.batch, hyp: None, warmup_min_iters: c.warmup_min_iters, no_augment: false, mosaic: c.mosaic }
    }

    /// The flags every training phase shares: how a step is made ([`Self::step_flags`]), seed,
    /// size and device.
    fn run_flags(&self, data: &Path, out: &Path, epochs: usize) -> RunFlags {
        let c = &self.config;
        RunFlags {
            data: data.to_path_buf(),
            imgsz: c.imgsz,
            epochs,
            step: self.step_flags(),
            cos_lr: false,
            seed: c.seed,
            device: c.device,
            skip_bad: false,
            out: out.to_path_buf(),
            stop_after: None,
            resume: false,
        }
    }

    /// Runs a training child with a bar over epochs fed by its `results.csv`.
    fn train_child(&self, name: &str, cmd: Command, out: &Path, epochs: usize) -> Result<()> {
        let bar = ProgressBar::new(epochs as u64).with_style(bar_style(name));
        let results = out.join(RESULTS_FILE);
        self.run_child(name, cmd, bar, |bar| {
            if let Ok(records) = read_results(&results, usize::MAX)
                && let Some(last) = records.last()
            {
                bar.set_position(records.len() as u64);
                bar.set_message(format!("mAP@.5 {:.3}", last.metrics.map50));
            }
        })
    }

    fn val(&mut self, data: &Path, models: &[(&str, &Path)]) -> Result<Vec<(String, Metrics)>> {
        let out = self.dir("val");
        std::fs::create_dir_all(&out)?;
        let heldout = data.join(layout::PRIVATE_VAL_YAML);
        self.phase("val", "every model on the held-out private split", |job| {
            let mut all = Vec::new();
            for &(name, weights) in models {
                let json = out.join(format!("{name}.json"));
                let args = val::Args {
                    weights: weights.to_path_buf(),
                    data: heldout.clone(),
                    split: "val".into(),
                    imgsz: None,
                    batch: val::DEFAULT_BATCH,
                    device: job.config.device,
                    skip_bad: false,
                    save_json: None,
                    json: false,
                    save_metrics: Some(json.clone()),
                };
                let h = job.sup.spawn(&format!("val-{name}"), job.cloud_cmd("val", &args), &job.log(&format!("val-{name}")))?;
                job.sup.wait_ok(&h)?;
                let text = std::fs::read_to_string(&json).with_context(|| format!("val wrote no metrics; see {}", h.log.display()))?;
                let metrics: Metrics = serde_json::from_str(&text).with_context(|| format!("{}: malformed metrics", json.display()))?;
                all.push((name.to_string(), metrics));
            }
            Ok(all)
        })
    }

    /// The privacy–utility sweep: the attacks on the edges' Front at the job's cut, and the mAP of
    /// the MistNet model on the held-out private split, for float, 1-bit and each ε of the sweep.
    fn privacy(&mut self, data: &Path, export: &Path, mistnet: &Path) -> Result<PathBuf> {
        let out = self.dir("privacy");
        let c = &self.config;
        let epsilons = c.privacy_epsilons();
        // Your own data's public photos join the attacker's; the generated public split is drawn by
        // the same generator as the auxiliary set's synthetic half, so it would add nothing.
        let aux_photos = c.data.as_ref().map(|_| data.join(layout::PUBLIC_TRAIN_IMAGES)).filter(|p| p.is_dir());
        let args = privacy_cmd::Args {
            model: c.model.clone(),
            weights: vec![export.join(export::FRONT_FILE)],
            cuts: vec![c.cut.index],
            mechanism: c.privacy.mechanism,
            epsilons: epsilons.clone(),
            imgsz: c.imgsz,
            aux_photos,
            decoder_steps: c.decoder_steps,
            decoder_finetune_steps: c.decoder_finetune_steps,
            opt_steps: c.opt_steps,
            val: Some(data.join(layout::PRIVATE_VAL_YAML)),
            back: Some(mistnet.to_path_buf()),
            seed: c.seed,
            threads: c.threads,
            device: c.device,
            ..privacy_cmd::Args::defaults(out.clone())
        };
        let eps: Vec<String> = epsilons.iter().map(|e| e.to_string()).collect();
        let what = format!(
            "model-inversion attacks and the MistNet model's mAP at cut {}: float, 1-bit, {} ε = {}",
            c.cut.index,
            c.privacy.mechanism.name(),
            eps.join(", ")
        );
        self.phase("privacy", &what, |job| {
            let cmd = job.cloud_cmd("privacy", &args);
            job.run_child("privacy", cmd, spinner("privacy"), |_| {})
        })?;
        Ok(out)
    }

    /// The edges' mechanism and ε, for progress lines.
    fn privacy_setting(&self) -> String {
        let p = &self.config.privacy;
        format!("{} ε={}", p.mechanism.name(), p.epsilon.map_or_else(|| "∞".to_string(), |e| e.to_string()))
    }
}

/// The command line of `mistnet-edge run` for one edge.

/// Bytes in the store's segment files (0 while it has none).
fn stored_bytes(store: &Path) -> u64 {
    let segments = segment::list(store).unwrap_or_default();
    segments.iter().filter_map(|(_, p)| std::fs::metadata(p).ok()).map(|m| m.len()).sum()
}

/// Caps a child's compute threads (rayon's pool; candle's own pool stays inline, `runtime::init`).
fn set_threads(cmd: &mut Command, threads: usize) {
    cmd.env("RAYON_NUM_THREADS", threads.to_string());
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

/// The noise seed of the job's edge `k` (`job --seed`).
fn edge_noise_seed(seed: u64, k: usize) -> u64 {
    seed.wrapping_add(1000 + k as u64)
}
