#!/usr/bin/env bash
# The mssql sink's consumer path against a bare tiberius bulk_insert loop, in one run against
# the same TDS test server (release build). Usage: bench/mssql.sh [ROWS] [UNIT] [CONCURRENCY]
# Prints rows/s of both per round and the median ratio (target: at least 0.9).
set -euo pipefail
cd "$(dirname "$0")/.."
export BENCH_ROWS="${1:-200000}" BENCH_UNIT="${2:-1000}" BENCH_CONCURRENCY="${3:-4}"
exec cargo bench --bench mssql_sink
