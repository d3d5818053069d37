#!/usr/bin/env bash
# Installs what stevedore's demo and tests need on Debian/Ubuntu, if it is missing:
# redis-server (the queue; tests start their own throwaway servers), FreeTDS's tsql and
# freebcp (package freetds-bin), which check the SQL Server tests' TDS test server independently,
# and node and npm, which run the Cosmos DB tests' test server (testkit/cosmos; the tests
# run `npm ci` there themselves, once, the first time they need it), and Debian's chromium,
# and chromium-driver, which render the status page in its tests and click its buttons
# (headless, as a person's browser would), and PostgreSQL's server and psql (package
# postgresql), from which the postgres sink's tests start throwaway servers, and MariaDB's server
# and client (package mariadb-server), from which the mysql sink's tests start theirs.
set -euo pipefail

missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
{ command -v tsql && command -v freebcp; } >/dev/null 2>&1 || missing+=(freetds-bin)
{ command -v node && command -v npm; } >/dev/null 2>&1 || missing+=(nodejs npm)
{ command -v chromium && command -v chromedriver; } >/dev/null 2>&1 || missing+=(chromium chromium-driver)
{ ls /usr/lib/postgresql/*/bin/initdb && command -v psql; } >/dev/null 2>&1 || missing+=(postgresql postgresql-client)
{ [ -x /usr/sbin/mariadbd ] && command -v mariadb-install-db && command -v mariadb; } >/dev/null 2>&1 || missing+=(mariadb-server mariadb-client)

if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}" >&2
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
