#!/usr/bin/env bash
# Times `cdc-indexer check` (full, sampling, full with repair) on a generated data set and
# prints a table. Usage: bench/check.sh [--orders N]   (default 20000 orders + their events)
# Starts its own MariaDB and osmem-server unless CDC_MYSQL_URL / ES_URL point elsewhere.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup
export PATH="/usr/sbin:$PATH"
cargo run --locked --release --example bench_check -- "$@"
