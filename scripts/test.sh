#!/usr/bin/env bash
# Runs the whole test suite: installs what the tests need, then cargo test.
# Extra arguments go to cargo test, e.g. `scripts/test.sh sqlite`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-deps.sh
exec cargo test "$@"
