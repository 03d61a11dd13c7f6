#!/usr/bin/env bash
# The project's test command (README: "Run the tests"). Needs only the Rust toolchain.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --workspace --locked "$@"
# The oracle tests again on the path a GPU takes: candle's ops instead of the CPU custom ops
# (deploy/gpu/README.md). Same features as above, so nothing is rebuilt.
MISTNET_CANDLE_OPS=1 cargo test --workspace --locked --test yolov5_parity --test loss_parity --test optimizer_golden "$@"
