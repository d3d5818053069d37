#!/usr/bin/env bash
# End-to-end throughput of `stevedore run`: a generator source into the blackhole sink,
# measuring records/s from the run summary and the peak RSS (VmHWM) of every worker process.
#
#   bench/throughput.sh [RECORDS] [PRODUCERS] [CONSUMERS] [UNIT_RECORDS]
#   defaults:           1000000   2           2           500
#
# SOURCE=jsonl or SOURCE=csv reads the same number of records from 8 files written first (the
# files source's parsing path) instead of the generator. STEVEDORE=path/to/binary measures that
# binary instead of building this tree (to compare two builds on the same input). SCRAPE=0.1
# serves /metrics (`run --metrics-addr`) and scrapes it every 0.1 s while the run lasts, to
# measure what scraping costs a run.
set -euo pipefail
cd "$(dirname "$0")/.."
records=${1:-1000000}; producers=${2:-2}; consumers=${3:-2}; unit=${4:-500}
source_kind=${SOURCE:-generator}
scripts/ensure-deps.sh
if [ -z "${STEVEDORE:-}" ]; then
  cargo build --release --quiet
  STEVEDORE=target/release/stevedore
fi
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
case "$source_kind" in
  generator) source_toml="kind = \"generator\"
count = $records" ;;
  jsonl|csv)
    mkdir -p "$work/data"
    python3 - "$work/data" "$records" "$source_kind" <<'PY'
import csv, json, sys
directory, records, kind = sys.argv[1], int(sys.argv[2]), sys.argv[3]
files = 8
for part in range(files):
    with open(f"{directory}/part-{part}.{kind}", "w", newline="") as out:
        rows = range(part * records // files + 1, (part + 1) * records // files + 1)
        if kind == "csv":
            writer = csv.writer(out)
            writer.writerow(["id", "customer", "amount", "note"])
            for n in rows:
                writer.writerow([n, f"customer-{n % 977}", f"{n * 1.25:.2f}", "plain, \"quoted\" text"])
        else:
            for n in rows:
                out.write(json.dumps({"id": n, "customer": f"customer-{n % 977}",
                                      "amount": n * 1.25, "note": "plain \"quoted\" text"}) + "\n")
PY
    source_toml="kind = \"files\"
path = \"$work/data/*.$source_kind\"
format = \"$source_kind\"" ;;
  *) echo "SOURCE must be generator, jsonl or csv" >&2; exit 2 ;;
esac
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
$source_toml
[[sink]]
name = "nowhere"
kind = "blackhole"
TOML
metrics_args=()
if [ -n "${SCRAPE:-}" ]; then
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  metrics_args=(--metrics-addr "127.0.0.1:$port")
fi
# CPU seconds of the run with its workers and managed Redis (all its children), a steadier
# measure than wall time on a shared machine (GNU time when installed).
timer=()
[ -x /usr/bin/time ] && timer=(/usr/bin/time -o "$work/cpu" -f "%U %S")
"${timer[@]}" "$STEVEDORE" run --config "$work/job.toml" --summary-json "$work/summary.json" "${metrics_args[@]}" > "$work/out.txt" &
run=$!
if [ -n "${SCRAPE:-}" ]; then
  (
    scrapes=0
    while kill -0 "$run" 2>/dev/null; do
      curl -sf -o /dev/null "http://127.0.0.1:$port/metrics" && scrapes=$((scrapes + 1))
      sleep "$SCRAPE"
    done
    echo "$scrapes" > "$work/scrapes"
  ) &
  scraper=$!
fi
declare -A peak
while kill -0 "$run" 2>/dev/null; do
  # Workers are children of the supervisor, which is a child of `time` when it is used.
  for pid in $(for parent in "$run" $(pgrep -P "$run" || true); do pgrep -P "$parent" -f "stevedore worker" || true; done); do
    # The worker may exit between pgrep and here: then there is nothing to read.
    name=$({ tr '\0' ' ' < "/proc/$pid/cmdline"; } 2>/dev/null | awk '{print $3"-"$5}' || true)
    kb=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)
    [ -n "$name" ] && [ "${kb:-0}" -gt "${peak[$name]:-0}" ] && peak[$name]=$kb
  done
  sleep 0.1
done
wait "$run" || true
if [ -n "${SCRAPE:-}" ]; then
  wait "$scraper" || true
  echo "scrapes of /metrics during the run (every ${SCRAPE} s): $(cat "$work/scrapes")"
fi
cat "$work/out.txt"
python3 - "$work/summary.json" <<PY
import json, sys
s = json.load(open(sys.argv[1]))
print(f"records/s: {s['records_read'] / s['duration_s']:.0f}  ({s['records_read']} records in {s['duration_s']:.2f} s, status {s['status']})")
PY
if [ -s "$work/cpu" ]; then
  awk '{printf "CPU: %.2f s user + sys (the run, its workers and Redis)\n", $1 + $2}' "$work/cpu"
fi
for name in "${!peak[@]}"; do echo "peak RSS $name: $(( ${peak[$name]} / 1024 )) MiB"; done | sort
