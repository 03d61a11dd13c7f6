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
    /// Split a dataset's train split into per-edge shards (IID or Dirichlet non-IID), one dataset YAML per edge.
    Partition(partition::Args),
    /// Generate the embedded default dataset: public and private per-edge splits in YOLO format, no download.
    Synth(synth::Args),
    /// Print the header and statistics of a feature message (.mnf): shape, mechanism, ε, bytes, fraction of ones.
    Inspect(inspect::Args),
    /// Decode a feature message (.mnf) to a safetensors file holding its bits (u8 0/1, [N, C, H, W]).
    Decode(decode::Args),
    /// Receive features from edges over gRPC into the durable feature store (TLS, per-edge tokens, ε budget).
    Serve(serve::Args),
    /// Show per-edge counts and the ε ledger of a running `serve`: every edge and the store size with the operator token, one edge with its own token.
    Status(status::Args),
    /// Train the Back (layers cut..) on binarized, privatized Front features as YOLOv5 trains.
    Train(train_cmd::Args),
    /// Train the whole YOLOv5 on images (every module trainable): the Front's pretraining and the centralized baseline.
    Pretrain(pretrain::Args),
    /// Federated averaging (FedAvg) of the whole YOLOv5 over the edges' raw images, from the same pretrained model: MistNet's baseline, with bytes and compute per edge.
    Fedavg(fedavg::Args),
    /// Peak memory of what an edge runs (one training step, or the Front pipeline), in this process: `fedavg` and `job` run it as a child.
    #[command(hide = true)]
    EdgeMemory(edge_memory::Args),
    /// Evaluate a model on a labelled dataset: COCO and YOLOv5 mAP, optional COCO-format detections.
    Val(val::Args),
    /// Write the Front (for edges) and the full model (for deployment) with a manifest.
    Export(export::Args),
    /// Model-inversion and re-identification attacks on the features edges send, a verdict per cut and ε, and the mAP each ε leaves.
    Privacy(privacy_cmd::Args),
    /// The whole MistNet job on this machine: data, pretraining, cloud service, edge processes, training, centralized baseline, privacy attacks, summary.
    Job(job::Args),
    /// Ask a running `serve` whether it is SERVING (gRPC health service): exit 0 if so, 1 if not. The container HEALTHCHECK.
    Health(health::Args),
}

mod cuts;
mod decode;
mod edge_memory;
mod export;
mod fedavg;
mod health;
mod inspect;
mod job;
mod partition;
mod serve;
mod status;
mod pretrain;
mod run_flags;
mod privacy_cmd;
mod synth;
mod train_cmd;
mod val;

fn main() -> Result<std::process::ExitCode> {
    mistnet::runtime::init();
    mistnet_cli::logging::init();
    match Cli::parse().command {
        Command::Health(args) => return health::run(args),
        Command::Cuts(args) => cuts::run(args),
        Command::Partition(args) => partition::run(args),
        Command::Synth(args) => synth::run(args),
        Command::Inspect(args) => inspect::run(args),
        Command::Decode(args) => decode::run(args),
        Command::Serve(args) => serve::run(args),
        Command::Status(args) => status::run(args),
        Command::Train(args) => train_cmd::run(args),
        Command::Pretrain(args) => pretrain::run(args),
        Command::Fedavg(args) => fedavg::run(args),
        Command::EdgeMemory(args) => edge_memory::run(args),
        Command::Val(args) => val::run(args),
        Command::Export(args) => export::run(args),
        Command::Privacy(args) => privacy_cmd::run(args),
        Command::Job(args) => job::run(args),
    }
    .map(|()| std::process::ExitCode::SUCCESS)
}
