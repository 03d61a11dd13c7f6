//! `mistnet-cloud cuts`: the valid split points of a model config and the tensor each sends.

use anyhow::Result;
use mistnet::model::{ModelConfig, valid_cuts};

#[derive(clap::Args)]
pub struct Args {
    /// Model config: a YAML file in the Ultralytics format, or yolov5n/s/m/l/x.
    #[arg(long, default_value = "yolov5s")]
    model: String,
    /// Input image size in pixels (square), to report the sent tensor's shape.
    #[arg(long, default_value_t = 640)]
    imgsz: usize,
}

pub fn run(args: Args) -> Result<()> {
    let specs = ModelConfig::load(&args.model)?.layers()?;
    println!("cut  last edge module  sends [C, H, W]        elements");
    for cut in valid_cuts(&specs) {
        let s = &specs[cut - 1];
        let hw = args.imgsz / s.stride;
        println!("{cut:>3}  {:>3} {:<12}  [{}, {hw}, {hw}]{:>14}", cut - 1, s.kind.name(), s.c_out, s.c_out * hw * hw);
    }
    Ok(())
}
