#!/usr/bin/env bash
# stevedore against the limit of its own design: `stevedore run` and the bare loop
# (benches/bare_loop.rs: the same generated records, the same unit encoding byte for byte,
# batched send / receive / delete, nothing else) run alternately on one Redis with
# `appendfsync always`, a generator source into the blackhole sink, start-up and shutdown
# included in both. Prints each run, then the medians, their ratio and the CPU per record of
# each role (producers and consumers from their own rusage, redis-server from /proc).
#
#   bench/yardstick.sh [RECORDS] [PRODUCERS] [CONSUMERS] [ROUNDS]
#   defaults:          1000000   2           2           3
#   STEVEDORE=path/to/binary compares another build of stevedore (default: target/release).
#
# Then one more run of each with WRITES_RECORDS (default 100000) records under Redis MONITOR
# counts the write transactions per unit: a MULTI/EXEC or a script with at least one write
# command in it, or a write command on its own (each is one AOF write, fsynced with
# `appendfsync always`). WRITES_RECORDS=0 skips it.
set -euo pipefail
cd "$(dirname "$0")/.."
records=${1:-1000000}; producers=${2:-2}; consumers=${3:-2}; rounds=${4:-3}
scripts/ensure-deps.sh
cargo build --release --quiet
bare=$(cargo bench --bench bare_loop --no-run 2>&1 | sed -n 's/.*Executable .*(\(.*\)).*/\1/p' | tail -1)
[ -x "$bare" ] || { echo "cannot find the bare_loop bench binary" >&2; exit 1; }
stevedore=${STEVEDORE:-target/release/stevedore}
work=$(mktemp -d)
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
redis-server --port "$port" --bind 127.0.0.1 --dir "$work" --appendonly yes --appendfsync always \
  --save "" --daemonize yes --pidfile "$work/redis.pid" --logfile "$work/redis.log"
trap 'redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
until redis-cli -p "$port" ping >/dev/null 2>&1; do sleep 0.1; done
redis_pid=$(cat "$work/redis.pid")
url="redis://127.0.0.1:$port"
# CPU seconds redis-server has used so far (utime + stime, in clock ticks).
redis_cpu() { awk -v hz="$(getconf CLK_TCK)" '{printf "%.3f", ($14 + $15) / hz}' "/proc/$redis_pid/stat"; }

run_bare() {
  redis-cli -p "$port" flushall >/dev/null
  local before; before=$(redis_cpu)
  local line; line=$("$bare" run --redis "$url" --records "$records" --producers "$producers" --consumers "$consumers")
  python3 - "$line" "$before" "$(redis_cpu)" >> "$work/results" <<'PY'
import json, sys
r = json.loads(sys.argv[1])
print(json.dumps({"who": "bare", "rate": r["records_per_s"], "producers": r["producer_cpu_s"],
                  "consumers": r["consumer_cpu_s"], "redis": float(sys.argv[3]) - float(sys.argv[2])}))
PY
}

run_stevedore() {
  redis-cli -p "$port" flushall >/dev/null
  rm -rf "$work/var"
  cat > "$work/job.toml" <<TOML
[job]
name = "yardstick"
data_dir = "$work/var"
[redis]
url = "$url"
[workers]
producers = $producers
consumers = $consumers
[[source]]
name = "synthetic"
kind = "generator"
count = $records
[[sink]]
name = "nowhere"
kind = "blackhole"
TOML
  local before; before=$(redis_cpu)
  "$stevedore" run --config "$work/job.toml" --summary-json "$work/summary.json" > /dev/null 2> "$work/run.err"
  python3 - "$work/summary.json" "$work/var/logs" "$before" "$(redis_cpu)" >> "$work/results" <<'PY'
import glob, json, re, sys
s = json.load(open(sys.argv[1]))
cpu = {"producer": 0.0, "consumer": 0.0}
for path in glob.glob(f"{sys.argv[2]}/*/*.log"):
    role = "producer" if "/producer-" in path else "consumer"
    for line in open(path):
        m = re.search(r"work done.*cpu_s=([0-9.]+)", line)
        if m:
            cpu[role] += float(m.group(1))
print(json.dumps({"who": "stevedore", "rate": s["records_read"] / s["duration_s"],
                  "producers": cpu["producer"], "consumers": cpu["consumer"],
                  "redis": float(sys.argv[4]) - float(sys.argv[3])}))
PY
}

for round in $(seq "$rounds"); do
  run_bare; tail -1 "$work/results"
  run_stevedore; tail -1 "$work/results"
done
writes_records=${WRITES_RECORDS:-100000}
count_writes() {
  # $1: the run to watch (run_bare or run_stevedore) with $records set to $writes_records.
  redis-cli -p "$port" command list filterby aclcat write > "$work/write-commands"
  redis-cli -p "$port" monitor > "$work/monitor" &
  local monitor=$!
  sleep 0.5
  local saved=$records; records=$writes_records
  "$1" > /dev/null
  records=$saved
  sleep 0.5; kill "$monitor"; wait "$monitor" 2>/dev/null || true
  python3 - "$work/monitor" "$work/write-commands" "$writes_records" <<'PY'
import re, sys
writes = {line.strip().lower() for line in open(sys.argv[2]) if line.strip()}
line_re = re.compile(r'^[0-9.]+ \[\d+ ([^\]]+)\] "([^"]+)"')
transactions, multi, script = 0, {}, None
def close_script():
    global script, transactions
    if script:
        transactions += 1
    script = None
for line in open(sys.argv[1], errors="replace"):
    m = line_re.match(line)
    if not m:
        continue
    client, command = m.group(1), m.group(2).lower()
    if client == "lua":
        if script is not None and command in writes:
            script = True
        continue
    close_script()
    if command in ("eval", "evalsha", "eval_ro", "evalsha_ro", "fcall"):
        script = False
    elif command == "multi":
        multi[client] = False
    elif command == "exec":
        transactions += 1 if multi.pop(client, False) else 0
    elif client in multi:
        multi[client] = multi[client] or command in writes
    elif command in writes:
        transactions += 1
close_script()
units = int(sys.argv[3]) / 500
print(f"{transactions / units:.2f}")
PY
}
if [ "$writes_records" -gt 0 ]; then
  rm -f "$work/results.keep"; cp "$work/results" "$work/results.keep"
  bare_writes=$(count_writes run_bare)
  stevedore_writes=$(count_writes run_stevedore)
  cp "$work/results.keep" "$work/results"
  echo "write transactions per unit ($writes_records records under MONITOR): stevedore $stevedore_writes, bare $bare_writes"
fi
python3 - "$work/results" "$records" <<'PY'
import json, statistics, sys
runs = [json.loads(line) for line in open(sys.argv[1])]
records = int(sys.argv[2])
print()
print("| | records/s (median) | CPU per record: producers | consumers | redis-server |")
print("|---|---|---|---|---|")
medians = {}
for who in ("stevedore", "bare"):
    mine = [r for r in runs if r["who"] == who]
    medians[who] = statistics.median(r["rate"] for r in mine)
    cpu = {k: statistics.median(r[k] for r in mine) / records * 1e6 for k in ("producers", "consumers", "redis")}
    print(f"| {who} | {medians[who]:,.0f} | {cpu['producers']:.2f} us | {cpu['consumers']:.2f} us | {cpu['redis']:.2f} us |")
print()
print(f"ratio stevedore / bare: {medians['stevedore'] / medians['bare']:.2f} (rates: "
      + ", ".join(f"{r['who']} {r['rate']:,.0f}" for r in runs) + ")")
PY
