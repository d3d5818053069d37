#!/usr/bin/env bash
# Instructions per record of the two hot paths (benches/hot_path.rs) under callgrind: the
# producer's generate + unit record + encode, and the consumer's decode + pass-through map.
# Wall times on this machine move by up to 4x between days; instruction counts do not, so
# before/after comparisons of hot-path changes are made with this.
#
#   bench/instructions.sh [UNITS]      (default 40 units of 500 records; 10 more for the delta)
#
# BENCH_DIR=path runs the hot_path bench of another checkout (to count a commit before and
# after a change in one sitting).
set -euo pipefail
cd "$(dirname "$0")/.."
units=${1:-40}
command -v valgrind >/dev/null || { echo "valgrind is needed (apt-get install valgrind)" >&2; exit 1; }
binary=$(cd "${BENCH_DIR:-.}" && cargo bench --bench hot_path --no-run 2>&1 | sed -n 's/.*Executable .*(\(.*\)).*/\1/p' | tail -1)
[ -x "$binary" ] || { echo "cannot find the hot_path bench binary" >&2; exit 1; }
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
# Total instructions (Ir) of one run of the binary.
count() {
  valgrind --tool=callgrind --callgrind-out-file="$work/out" "$binary" "$1" "$2" >/dev/null 2>&1
  awk '/^summary:/ {print $2}' "$work/out"
}
small=10; large=$((small + units))
p1=$(count producer "$small"); p2=$(count producer "$large")
c1=$(count consumer "$small"); c2=$(count consumer "$large")
# JSONL files of the two sizes, records like bench/split_file.sh writes.
for size in "$small" "$large"; do
  python3 - "$work/$size.jsonl" "$((size * 500))" <<'PY'
import sys
with open(sys.argv[1], "w") as out:
    for n in range(1, int(sys.argv[2]) + 1):
        out.write(f'{{"id":{n},"customer":"customer-{n % 977}","amount":{n * 1.25},'
                  f'"note":"plain \\"quoted\\" text","tags":["a","b"]}}\n')
PY
done
j1=$(count jsonl "$work/$small.jsonl"); j2=$(count jsonl "$work/$large.jsonl")
python3 - "$p1" "$p2" "$c1" "$c2" "$j1" "$j2" "$units" <<'PY'
import sys
p1, p2, c1, c2, j1, j2, units = map(int, sys.argv[1:])
records = units * 500
producer = (p2 - p1) / records
consumer = (c2 - c1) / records - producer
print(f"instructions per record ({records} records, callgrind Ir):")
print(f"  producer (generate, unit record, encode with zstd): {producer:,.0f}")
print(f"  consumer (decode, pass-through map):                {consumer:,.0f}")
print(f"  producer reading JSONL (read, check, unit, encode): {(j2 - j1) / records:,.0f}")
PY
