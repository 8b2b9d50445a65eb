#!/usr/bin/env bash
# Request-log ingestion, SQLite against PostgreSQL on this machine: starts a throwaway
# PostgreSQL (Debian's `postgresql`; as the `postgres` user when run as root) on loopback in
# a temporary directory, runs `cargo bench --bench request_log` against it, and removes it.
# Usage: bash bench/request_log/run.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
bindir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
[ -x "$bindir/initdb" ] || { echo "install Debian's postgresql first (apt-get install postgresql)" >&2; exit 1; }
dir=$(mktemp -d)
as=()
if [ "$(id -u)" -eq 0 ]; then
    chown postgres:postgres "$dir"
    as=(runuser -u postgres --)
fi
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"${as[@]}" "$bindir/initdb" -D "$dir/data" -U candor --auth=trust -E UTF8 >/dev/null
"${as[@]}" "$bindir/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w \
    -o "-p $port -k $dir -c listen_addresses=127.0.0.1" start >/dev/null
trap '"${as[@]}" "$bindir/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null; rm -rf "$dir"' EXIT
CANDOR_BENCH_PG_URL="postgresql://candor@127.0.0.1:$port/postgres" \
    cargo bench --locked --bench request_log
