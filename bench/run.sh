#!/usr/bin/env bash
# The benchmarks, one command: builds release once, starts its own servers, prints one markdown
# table per group with each figure's conditions. Sizes can be lowered for a quick look, e.g.
# BENCH_ORDERS=20000 BENCH_THROTTLE_SECS=10 bash bench/run.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup
export PATH="/usr/sbin:$PATH"
cargo build --locked --release --bins --examples >&2
echo "# cdc-indexer benchmarks, $(date -u +%Y-%m-%d), $(nproc) cores, $(uname -m)"
echo
if [ -f bench/micro.sh ]; then
  bash bench/micro.sh
  echo
fi
target/release/examples/bench_pipeline
echo
# The operator jobs (against the in-memory stand-in, which bounds them: see each script).
bash bench/reindex.sh --rows "${BENCH_REINDEX_ROWS:-50000}"
echo
bash bench/check.sh --orders "${BENCH_CHECK_ORDERS:-20000}"
