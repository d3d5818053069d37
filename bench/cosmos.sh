#!/usr/bin/env bash
# The cosmos sink's consumer path against a bare azure_data_cosmos upsert_item loop, in one run
# against the same local Cosmos DB REST server (release build; needs node, see
# scripts/ensure-deps.sh). Usage: bench/cosmos.sh [DOCS] [UNIT] [CONCURRENCY]
# Prints docs/s of both per round and shape, and the median ratio (target: at least 0.95 on the
# `spread` shape, where both send one upsert per document). BENCH_ROUNDS, BENCH_SHAPES as in
# benches/cosmos_sink.rs.
set -euo pipefail
cd "$(dirname "$0")/.."
# Library errors capture no backtraces, as in the stevedore binary (src/bin/stevedore.rs).
export RUST_LIB_BACKTRACE="${RUST_LIB_BACKTRACE:-0}"
export BENCH_DOCS="${1:-20000}" BENCH_UNIT="${2:-1000}" BENCH_CONCURRENCY="${3:-16}"
exec cargo bench --bench cosmos_sink
