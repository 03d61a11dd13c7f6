#!/usr/bin/env bash
# The project's test command (README: "Run the tests"). Needs only the Rust toolchain.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --workspace --locked "$@"
