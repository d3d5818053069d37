#!/usr/bin/env bash
# End-to-end throughput of `stevedore run`: a generator source into the blackhole sink,
# measuring records/s from the run summary and the peak RSS (VmHWM) of every worker process.
#
#   bench/throughput.sh [RECORDS] [PRODUCERS] [CONSUMERS] [UNIT_RECORDS]
#   defaults:           1000000   2           2           500
set -euo pipefail
cd "$(dirname "$0")/.."
records=${1:-1000000}; producers=${2:-2}; consumers=${3:-2}; unit=${4:-500}
scripts/ensure-deps.sh
cargo build --release --quiet
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
cat > "$work/job.toml" <<TOML
[job]
name = "throughput"
data_dir = "$work/var"
[redis]
url = "managed"
data_dir = "$work/redis"
[workers]
producers = $producers
consumers = $consumers
[queue]
unit_records = $unit
[[source]]
name = "synthetic"
kind = "generator"
count = $records
[[sink]]
name = "nowhere"
kind = "blackhole"
TOML
target/release/stevedore run --config "$work/job.toml" --summary-json "$work/summary.json" > "$work/out.txt" &
run=$!
declare -A peak
while kill -0 "$run" 2>/dev/null; do
  for pid in $(pgrep -P "$run" -f "stevedore worker" || true); do
    # The worker may exit between pgrep and here: then there is nothing to read.
    name=$({ tr '\0' ' ' < "/proc/$pid/cmdline"; } 2>/dev/null | awk '{print $3"-"$5}' || true)
    kb=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)
    [ -n "$name" ] && [ "${kb:-0}" -gt "${peak[$name]:-0}" ] && peak[$name]=$kb
  done
  sleep 0.1
done
wait "$run" || true
cat "$work/out.txt"
python3 - "$work/summary.json" <<PY
import json, sys
s = json.load(open(sys.argv[1]))
print(f"records/s: {s['records_read'] / s['duration_s']:.0f}  ({s['records_read']} records in {s['duration_s']:.2f} s, status {s['status']})")
PY
for name in "${!peak[@]}"; do echo "peak RSS $name: $(( ${peak[$name]} / 1024 )) MiB"; done | sort
