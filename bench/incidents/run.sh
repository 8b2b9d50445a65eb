#!/usr/bin/env bash
# Runs each failure mode's scenario (and the clean one) against the release build and prints,
# per scenario, the fault injected, the incident Candor opened, how long after the fault's
# start it was named (sampled once a second), and when it resolved. Takes about 13 minutes in
# wall-clock time, or about 40 s with CANDOR_VIRTUAL=1 (every scenario in virtual time).
# Usage: [CANDOR_VIRTUAL=1] bash bench/incidents/run.sh [scenario.toml ...]
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release --locked --quiet
bin=target/release/candor
files=("$@")
if ((${#files[@]} == 0)); then
    files=(scenarios/deadlock.toml scenarios/slowdown.toml scenarios/kv_thrashing.toml
           scenarios/cascading_timeouts.toml scenarios/quality.toml scenarios/clean.toml)
fi
out=$(mktemp -d)
for f in "${files[@]}"; do
    echo "== $f" >&2
    "$bin" scenario run "$f" --json ${CANDOR_VIRTUAL:+--virtual} > "$out/$(basename "$f" .toml).json"
done
python3 - "$out"/*.json <<'PY'
import json, sys
print("| scenario | fault (target, window) | incidents opened (named after) | resolved |")
print("|---|---|---|---|")
for path in sys.argv[1:]:
    r = json.load(open(path))
    faults = r["faults"]
    fault = "; ".join(f'{f["kind"]} on {f["target"]}, {f["start_s"]:.0f}–{f["end_s"]:.0f} s' for f in faults) or "none"
    named, resolved = [], []
    for i in r["incidents"]:
        # Measured from the latest fault that had started when the incident opened.
        started = [f["start_s"] for f in faults if f["start_s"] <= i["opened_s"]]
        after = f' ({i["opened_s"] - max(started):.0f} s)' if started else ""
        named.append(f'{i["incident"]} at {i["opened_s"]:.0f} s{after}')
        resolved.append(f'{i["closed_s"]:.0f} s' if i["closed_s"] is not None else "open at end")
    print(f'| {r["name"]} | {fault} | {"<br>".join(named) or "none"} | {"<br>".join(resolved) or "–"} |')
PY
