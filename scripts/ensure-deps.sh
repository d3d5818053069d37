#!/usr/bin/env bash
# Installs what stevedore's demo and tests need on Debian/Ubuntu, if it is missing:
# redis-server (the queue; tests start their own throwaway servers), and FreeTDS's tsql and
# freebcp (package freetds-bin), which check the SQL Server tests' TDS test server independently.
set -euo pipefail

missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
{ command -v tsql && command -v freebcp; } >/dev/null 2>&1 || missing+=(freetds-bin)

if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}" >&2
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
