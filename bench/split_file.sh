#!/usr/bin/env bash
# One big JSONL file read by 1 producer and by 2: the files source cuts a file bigger than
# `split_bytes` (default 64 MiB) into byte ranges that producers share. `stevedore run` reads
# the file into the blackhole sink (no [sink.map]: consumers do not parse records), with 1 and
# 2 producers in turns, on one Redis with `appendfsync always` (as a managed one), start-up,
# planning (the scan for record starts) and shutdown included. Prints the time `check` takes
# to plan, each run, the medians, the speed-up, the CPU seconds of producers and consumers
# (their own rusage) and Redis, and how deep the sink queue was.
#
#   bench/split_file.sh [MEGABYTES] [ROUNDS] [CONSUMERS] [SPLIT_BYTES]
#   defaults:           500         3        2           67108864
#
# STEVEDORE=path/to/binary measures that binary instead of building this tree. To find what
# holds a run back: WATERMARK=N sets queue.high_watermark (default 200), FSYNC=everysec runs
# Redis without an fsync per write. The file is written under a temporary directory and
# deleted at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
megabytes=${1:-500}; rounds=${2:-3}; consumers=${3:-2}; split_bytes=${4:-67108864}
scripts/ensure-deps.sh
work=$(mktemp -d)
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
trap 'redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
if [ -z "${STEVEDORE:-}" ]; then
  cargo build --release --quiet
  # A copy: a build of another tree into the same target directory cannot swap it mid-run.
  cp "${CARGO_TARGET_DIR:-target}/release/stevedore" "$work/stevedore"
  STEVEDORE=$work/stevedore
fi
python3 - "$work/big.jsonl" "$megabytes" <<'PY'
import sys
path, size = sys.argv[1], int(sys.argv[2]) << 20
with open(path, "w") as out:
    n, written, lines = 0, 0, []
    while written < size:
        n += 1
        line = (f'{{"id":{n},"customer":"customer-{n % 977}","amount":{n * 1.25},'
                f'"note":"plain \\"quoted\\" text","tags":["a","b"]}}\n')
        lines.append(line)
        written += len(line)
        if len(lines) == 10000:
            out.write("".join(lines)); lines = []
    out.write("".join(lines))
print(f"wrote {written / 1e6:.0f} MB, {n} records", file=sys.stderr)
PY
redis-server --port "$port" --bind 127.0.0.1 --dir "$work" --appendonly yes --appendfsync "${FSYNC:-always}" \
  --save "" --daemonize yes --pidfile "$work/redis.pid" --logfile "$work/redis.log"
until redis-cli -p "$port" ping >/dev/null 2>&1; do sleep 0.1; done
redis_pid=$(cat "$work/redis.pid")
# CPU seconds redis-server has used so far (utime + stime, in clock ticks).
redis_cpu() { awk -v hz="$(getconf CLK_TCK)" '{printf "%.3f", ($14 + $15) / hz}' "/proc/$redis_pid/stat"; }

write_job() {
  local producers=$1 split=$2
  cat > "$work/job.toml" <<TOML
[job]
name = "split"
data_dir = "$work/var"
[redis]
url = "redis://127.0.0.1:$port"
[workers]
producers = $producers
consumers = $consumers
[queue]
unit_records = 500
high_watermark = ${WATERMARK:-200}
[[source]]
name = "big"
kind = "files"
path = "$work/big.jsonl"
format = "jsonl"
split_bytes = $split
[[sink]]
name = "nowhere"
kind = "blackhole"
TOML
}

# Planning alone, file in the page cache: `stevedore check` lists the work items (and reaches
# Redis and the sink), with the scan for cuts and without (split_bytes = 0).
check_seconds() {
  write_job 1 "$1"
  local start; start=$(date +%s.%N)
  "$STEVEDORE" check --config "$work/job.toml" > "$work/check.out"
  python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.2f} s')" "$start" "$(date +%s.%N)"
}
cat "$work/big.jsonl" > /dev/null
echo "stevedore check: $(check_seconds "$split_bytes") with split_bytes = $split_bytes ($(grep -o '[0-9]* work item(s)' "$work/check.out")), $(check_seconds 0) without"

run() {
  local producers=$1
  redis-cli -p "$port" flushall >/dev/null
  rm -rf "$work/var"
  write_job "$producers" "$split_bytes"
  local before; before=$(redis_cpu)
  "$STEVEDORE" run --config "$work/job.toml" --summary-json "$work/summary.json" > /dev/null 2> "$work/run.err" &
  local pid=$!
  # The sink queue's depth 5 times a second: at the high watermark, producers wait for the
  # consumers.
  : > "$work/depths"
  while kill -0 "$pid" 2>/dev/null; do
    redis-cli -p "$port" zcard rsmq:split-nowhere >> "$work/depths" 2>/dev/null || true
    sleep 0.2
  done
  wait "$pid" || { cat "$work/run.err" >&2; exit 1; }
  python3 - "$work/summary.json" "$work/var/logs" "$producers" "$before" "$(redis_cpu)" "$work/depths" "${WATERMARK:-200}" >> "$work/results" <<'PY'
import glob, json, re, sys
s = json.load(open(sys.argv[1]))
depths = [int(line) for line in open(sys.argv[6]) if line.strip().isdigit()]
assert s["status"] == "ok", s
cpu = {"producer": 0.0, "consumer": 0.0}
items = 0
for path in glob.glob(f"{sys.argv[2]}/*/*.log"):
    role = "producer" if "/producer-" in path else "consumer"
    for line in open(path):
        m = re.search(r"work done.*cpu_s=([0-9.]+)", line)
        if m:
            cpu[role] += float(m.group(1))
        items += "work item done" in line
print(json.dumps({"producers": int(sys.argv[3]), "rate": s["records_read"] / s["duration_s"],
                  "records": s["records_read"], "seconds": s["duration_s"], "items": items,
                  "producer_cpu": cpu["producer"], "consumer_cpu": cpu["consumer"],
                  "redis_cpu": float(sys.argv[5]) - float(sys.argv[4]),
                  "mean_depth": sum(depths) / max(len(depths), 1),
                  "at_watermark": sum(d >= int(sys.argv[7]) for d in depths) / max(len(depths), 1)}))
PY
  tail -1 "$work/results"
}

for round in $(seq "$rounds"); do
  run 1
  run 2
done
python3 - "$work/results" <<'PY'
import json, statistics, sys
runs = [json.loads(line) for line in open(sys.argv[1])]
print()
print("| producers | records/s (median) | runs | CPU s: producers | consumers | redis-server | queue depth: mean | at watermark |")
print("|---|---|---|---|---|---|---|---|")
medians = {}
for producers in (1, 2):
    mine = [r for r in runs if r["producers"] == producers]
    medians[producers] = statistics.median(r["rate"] for r in mine)
    m = {k: statistics.median(r[k] for r in mine)
         for k in ("producer_cpu", "consumer_cpu", "redis_cpu", "mean_depth", "at_watermark")}
    print(f"| {producers} | {medians[producers]:,.0f} | " + " / ".join(f"{r['rate']:,.0f}" for r in mine)
          + f" | {m['producer_cpu']:.1f} | {m['consumer_cpu']:.1f} | {m['redis_cpu']:.1f}"
          + f" | {m['mean_depth']:.0f} | {m['at_watermark']:.0%} |")
print()
print(f"{runs[0]['records']:,} records in {runs[0]['items']} work items; "
      f"speed-up with 2 producers: {medians[2] / medians[1]:.2f}x "
      f"(per round: " + ", ".join(f"{b['rate'] / a['rate']:.2f}" for a, b in zip(runs[0::2], runs[1::2])) + ")")
PY
