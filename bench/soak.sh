#!/usr/bin/env bash
# Soak of `stevedore supervise`: one daemon with a cyclic schedule (`every`, default 5 s) on a
# throwaway redis-server, for DURATION seconds (default 3600). Prints the daemon's resident
# memory (VmRSS) and open file descriptors at the start, every INTERVAL seconds, and at the end,
# plus the passes it ran, so a leak shows as a trend.
#
#   STEVEDORE=target/release/stevedore DURATION=3600 bench/soak.sh
set -euo pipefail
STEVEDORE=${STEVEDORE:-target/release/stevedore}
STEVEDORE=$(realpath "$STEVEDORE")
DURATION=${DURATION:-3600}
INTERVAL=${INTERVAL:-300}
EVERY=${EVERY:-5s}
RECORDS=${RECORDS:-10000}
dir=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --dir "$dir" >"$dir/redis.log" 2>&1 &
redis_pid=$!
trap 'kill $daemon_pid $redis_pid 2>/dev/null || true; rm -rf "$dir"' EXIT
until redis-cli -p "$port" ping >/dev/null 2>&1; do sleep 0.1; done
cat >"$dir/job.toml" <<TOML
[job]
name = "soak"
data_dir = "$dir/var"
[redis]
url = "redis://127.0.0.1:$port/0"
[[source]]
name = "synthetic"
kind = "generator"
count = $RECORDS
[[sink]]
name = "local"
kind = "sqlite"
path = "$dir/out.db"
table = "soak"
mode = "upsert"
key = ["id"]
TOML
cat >"$dir/supervise.toml" <<TOML
[supervise]
name = "soak"
data_dir = "$dir/supervise"
[redis]
url = "redis://127.0.0.1:$port/0"
[[schedule]]
name = "soak"
job = "$dir/job.toml"
every = "$EVERY"
TOML
"$STEVEDORE" supervise --config "$dir/supervise.toml" >"$dir/daemon.log" 2>&1 &
daemon_pid=$!
sample() {
  local rss fds passes
  rss=$(awk '/VmRSS/ {print $2}' "/proc/$daemon_pid/status")
  fds=$(ls "/proc/$daemon_pid/fd" | wc -l)
  passes=$(redis-cli -p "$port" hget stevedore:supervise:soak:schedule:soak passes)
  printf '%s  t=%5ss  rss_kib=%6s  fds=%3s  passes=%s\n' "$(date -u +%H:%M:%S)" "$1" "$rss" "$fds" "${passes:-0}"
}
until [ "$(redis-cli -p "$port" hget stevedore:supervise:soak:schedule:soak last_outcome)" = ok ]; do sleep 0.2; done
start=$SECONDS
sample 0
while [ $((SECONDS - start)) -lt "$DURATION" ]; do
  sleep "$INTERVAL"
  sample $((SECONDS - start))
done
echo "outcomes of the last 50 passes:"
redis-cli -p "$port" lrange stevedore:supervise:soak:schedule:soak:recent 0 -1 | grep -o '"outcome":"[a-z_]*"' | sort | uniq -c
kill -TERM "$daemon_pid"; wait "$daemon_pid" || true
echo "daemon exit: $?; pass dirs kept: $(ls "$dir/supervise/soak" | wc -l)"
