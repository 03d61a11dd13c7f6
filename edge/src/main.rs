//! `mistnet-edge`: the MistNet edge agent. It runs the frozen YOLOv5 Front as pure inference;
//! no training code is linked into it. Each subcommand lives in its own module.

use anyhow::Result;
use clap::{Parser, Subcommand};

mod cache;
mod detect;
mod extract;
mod model_cache;
mod prefetch;
mod run;

#[derive(Parser)]
#[command(name = "mistnet-edge", version, about = "MistNet edge agent: runs the frozen YOLOv5 Front on local images; images never leave the device")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the Front on images and write its features to files (the offline path for an air-gapped edge).
    Extract(extract::Args),
    /// Fetch the Front from the cloud, extract and encode the local dataset once, and stream it until every sample is acknowledged.
    Run(run::Args),
    /// Run a trained detector (a local file, or the cloud's, fetched and cached) on local images: boxes as JSON and annotated PNGs.
    Detect(detect::Args),
}

fn main() -> Result<()> {
    mistnet::runtime::init();
    mistnet_cli::logging::init();
    match Cli::parse().command {
        Command::Extract(args) => extract::run(args),
        Command::Run(args) => run::run(args),
        Command::Detect(args) => detect::run(args),
    }
}
