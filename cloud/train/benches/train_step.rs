//! One training step of the YOLOv5 Back: forward (BatchNorm in train mode), loss, backward and
//! optimizer, timed per phase (on a GPU, each phase up to a device synchronisation).
//!
//! `cargo bench -p mistnet-train --bench train_step` (or `--profile dev`, whose dependencies are
//! optimised too, to skip a release build of candle). Settings by environment:
//! `MISTNET_BENCH_MODEL` (yolov5s), `MISTNET_BENCH_CUT` (4), `MISTNET_BENCH_IMGSZ` (640),
//! `MISTNET_BENCH_BATCH` (8), `MISTNET_BENCH_ITERS` (3 timed steps after one warm-up step),
//! `MISTNET_BENCH_DEVICE` (cpu, or cuda:N in a `--features cuda` build: deploy/gpu/).

use std::time::{Duration, Instant};

use anyhow::Result;
use candle_core::{DType, Tensor};
use mistnet::model::{ModelConfig, ParamStore, load_back};
use mistnet_train::train::{Hyp, LossConfig, LrDecay, Optimizer, OptimizerConfig, Target, YoloLoss};

fn env(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn main() -> Result<()> {
    mistnet::runtime::init();
    let model = std::env::var("MISTNET_BENCH_MODEL").unwrap_or_else(|_| "yolov5s".into());
    let (cut, imgsz, bs, iters) = (env("MISTNET_BENCH_CUT", 4), env("MISTNET_BENCH_IMGSZ", 640), env("MISTNET_BENCH_BATCH", 8), env("MISTNET_BENCH_ITERS", 3));
    let device = mistnet::runtime::device_from_env("MISTNET_BENCH_DEVICE")?;
    let specs = ModelConfig::load(&model)?.layers()?;
    let store = ParamStore::fresh(0);
    let back = load_back(&specs, cut, &store, &device)?;
    let input = &specs[cut - 1];
    let hw = imgsz / input.stride;
    let features = Tensor::rand(0f32, 1.0, (bs, input.c_out, hw, hw), &device)?;
    // Five boxes per image, spread over sizes so that every level gets targets.
    let targets: Vec<Target> = (0..bs)
        .flat_map(|b| {
            (0..5).map(move |k| {
                let f = (b * 5 + k) as f32;
                Target { image: b, class: (b * 7 + k * 13) % 80, x: 0.1 + 0.16 * k as f32, y: 0.2 + 0.07 * (b % 8) as f32, w: 0.03 + 0.12 * (f % 6.0), h: 0.04 + 0.1 * (f % 5.0) }
            })
        })
        .collect();
    let detect = back.detect();
    let loss_fn = YoloLoss::new(detect, LossConfig::from_hyp(&Hyp::default(), detect.strides.len(), detect.nc, imgsz)?)?;
    let config = OptimizerConfig { hyp: Hyp::default(), batch_size: bs, nominal_batch: bs, epochs: 1, batches_per_epoch: 1000, decay: LrDecay::Linear };
    let mut optimizer = Optimizer::new(store.trainable(), &config)?;
    println!("{model} Back at cut {cut} on {:?}: features [{bs}, {}, {hw}, {hw}], {imgsz} px, {} parameters", device.location(), input.c_out, store.trainable().len());

    let mut totals = [Duration::ZERO; 4];
    for it in 0..=iters {
        device.synchronize()?;
        let t0 = Instant::now();
        let out = back.forward_t(&features, true)?;
        device.synchronize()?;
        let t1 = Instant::now();
        let loss = loss_fn.compute(&out.raw, &targets)?;
        device.synchronize()?;
        let t2 = Instant::now();
        let grads = loss.total.backward()?;
        device.synchronize()?;
        let t3 = Instant::now();
        drop(grads);
        // The SGD update timed on its own: `backward_step` on a loss (the sum of all parameters)
        // whose backward pass is trivial.
        let mut probe = Tensor::zeros((), DType::F32, &device)?;
        for (_, v) in store.trainable() {
            probe = (probe + v.as_tensor().sum_all()?)?;
        }
        device.synchronize()?;
        let t4 = Instant::now();
        optimizer.backward_step(&probe, 0, 200 + it)?;
        device.synchronize()?;
        let t5 = Instant::now();
        let phases = [t1 - t0, t2 - t1, t3 - t2, t5 - t4];
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        println!(
            "step {it}{}: forward {:.0} ms, loss {:.1} ms, backward {:.0} ms, optimizer {:.0} ms, total {:.0} ms (loss {:.4})",
            if it == 0 { " (warm-up)" } else { "" },
            ms(phases[0]),
            ms(phases[1]),
            ms(phases[2]),
            ms(phases[3]),
            ms(phases.iter().sum()),
            loss.total.to_scalar::<f32>()?
        );
        if it > 0 {
            for (t, p) in totals.iter_mut().zip(phases) {
                *t += p;
            }
        }
    }
    let n = iters.max(1) as f64;
    let mean = |d: Duration| d.as_secs_f64() * 1e3 / n;
    println!(
        "mean of {iters}: forward {:.0} ms, loss {:.1} ms, backward {:.0} ms, optimizer {:.0} ms, step {:.0} ms",
        mean(totals[0]),
        mean(totals[1]),
        mean(totals[2]),
        mean(totals[3]),
        mean(totals.iter().sum())
    );
    Ok(())
}
