#!/usr/bin/env bash
# Reindex throughput (rows/s) per backfill chunk size. Starts its own MariaDB and the
# Elasticsearch stand-in unless CDC_MYSQL_URL / ES_URL point at servers of your own.
#   bench/reindex.sh [--rows 50000] [--chunks 1000,5000]
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck disable=SC1091
source scripts/setup >/dev/null
export PATH=/usr/sbin:$PATH
exec cargo run --locked --release --quiet --example bench_reindex -- "$@"
