#!/usr/bin/env bash
# Micro-benchmarks of the CPU stages (issue #7), release build:
#   * binlog decode rows/s, ours and as a ratio to mariadb-binlog on the same files;
#   * transform changes/s on one thread (masking + jieba + pinyin, example config mappings);
#   * the parallel transform stage with 1 and 2 workers (scaling).
# Prints one markdown table (header + rows) on stdout; build output and progress go to stderr.
# Needs mariadbd and mariadb-binlog (scripts/setup installs them).
# Usage: bench/micro.sh [--rows N] [--working-set N] [--passes N] [--reps N] [--no-header]
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="/usr/sbin:$PATH"
cargo build --locked --release --example bench_micro >&2
exe="$(cargo metadata --locked --format-version 1 --no-deps \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/release/examples/bench_micro"
exec "$exe" "$@"
