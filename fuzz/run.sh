#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 30) on its corpus in fuzz/corpus/<target>,
# keeping what it finds there. A crash stops the run, prints the fuzzer's report and leaves
# the input in fuzz/artifacts/<target>/. Needs cargo-fuzz and the nightly toolchain.
# Usage: bash fuzz/run.sh [SECONDS [TARGET...]]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-30}
shift || true
targets=("$@")
cargo +nightly fuzz build --fuzz-dir fuzz --release
((${#targets[@]})) || mapfile -t targets < <(cargo +nightly fuzz list --fuzz-dir fuzz)
log=$(mktemp)
for target in "${targets[@]}"; do
    mkdir -p "fuzz/corpus/$target"
    if ! cargo +nightly fuzz run --fuzz-dir fuzz --release "$target" "fuzz/corpus/$target" -- \
        -max_total_time="$seconds" -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1; then
        tail -n 60 "$log"
        echo "fuzz target $target failed" >&2
        exit 1
    fi
    runs=$(awk '/stat::number_of_executed_units/ {print $NF}' "$log")
    echo "-- $target: $runs inputs in ${seconds} s, corpus $(ls "fuzz/corpus/$target" | wc -l) files"
done
