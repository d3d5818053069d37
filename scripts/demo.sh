#!/usr/bin/env bash
# Runs the demo job (config/demo.toml): finds or installs redis-server, builds stevedore,
# loads 103,000 records into SQLite (var/demo.db) and a blackhole sink, prints the summary.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-deps.sh
cargo build --release --quiet
# --summary-json needs its directory (run checks it before anything starts); on a fresh clone
# var/ does not exist yet.
mkdir -p var
exec target/release/stevedore run --config config/demo.toml --summary-json var/demo-summary.json
