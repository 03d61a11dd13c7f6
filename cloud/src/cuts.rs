//! `mistnet-cloud cuts`: the valid split points of a model config and the tensor each sends.

use anyhow::Result;
use mistnet::model::valid_cuts;
use mistnet_cli::{ImageSizeArgs, ModelArgs};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    imgsz: ImageSizeArgs,
}

pub fn run(args: Args) -> Result<()> {
    let specs = args.model.config()?.layers()?;
    println!("cut  last edge module  sends [C, H, W]        elements");
    for cut in valid_cuts(&specs) {
        let s = &specs[cut - 1];
        let hw = args.imgsz.px as usize / s.stride;
        println!("{cut:>3}  {:>3} {:<12}  [{}, {hw}, {hw}]{:>14}", cut - 1, s.kind.name(), s.c_out, s.c_out * hw * hw);
    }
    Ok(())
}
