//! `mistnet-cloud`: the MistNet cloud side. Each subcommand lives in its own module; this file
//! parses flags and dispatches.

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "mistnet-cloud", version, about = "MistNet cloud: receives privatized features from edges, trains the YOLOv5 Back, evaluates")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List the cuts a model config allows and what crosses the network at each.
    Cuts(cuts::Args),
}

mod cuts;

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Cuts(args) => cuts::run(args),
    }
}
