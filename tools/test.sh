#!/usr/bin/env bash
# The project's test command (README: "Run the tests"). Needs the Rust toolchain; for the object-store
# test it installs an S3-protocol server from PyPI (moto's, tests/s3/) into target/s3-venv.
set -euo pipefail
cd "$(dirname "$0")/.."
s3_python=target/s3-venv/bin/python
if ! "$s3_python" -c 'import moto.server' 2>/dev/null; then
    { python3 -m venv target/s3-venv && "$s3_python" -m pip install --quiet -r tests/s3/requirements.txt; } \
        || echo "warning: could not install the S3 test server (tests/s3/requirements.txt): the object-store test skips" >&2
fi
if "$s3_python" -c 'import moto.server' 2>/dev/null; then
    export MISTNET_REQUIRE_S3=1
fi
cargo test --workspace --locked "$@"
# The oracle tests again on the path a GPU takes: candle's ops instead of the CPU custom ops
# (deploy/gpu/README.md). Same features as above, so nothing is rebuilt.
MISTNET_CANDLE_OPS=1 cargo test --workspace --locked --test yolov5_parity --test loss_parity --test optimizer_golden "$@"
