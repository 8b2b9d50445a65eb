#!/usr/bin/env bash
# Soak: the release gateway (`candor serve`, its own process) in front of three simulated
# providers whose faults switch on and off, under mixed traffic — a replay of the Azure
# conversation trace (streaming) looped, and a steady trickle of non-streamed requests —
# for SOAK_MINUTES (default 30). Once a minute it prints the gateway's RSS, open file
# descriptors and CPU, and at the end every client-visible error by kind, beside the
# faults that were on. Not a CI test: run it by hand, then put the table in
# docs/benchmarks.md.
# At the default speed-up (2) the replay overloads the four 16-slot providers most of the
# time; SOAK_SPEEDUP=1 keeps it near their capacity.
# Usage: [SOAK_MINUTES=30] [SOAK_SPEEDUP=2] bash bench/soak/run.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
minutes=${SOAK_MINUTES:-30}
cargo build --release --locked --quiet
bin=$PWD/target/release/candor
work=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT

# Faults repeat every 10 minutes, each on for two: errors, a slowdown, broken streams and a
# hang, on different providers at different times.
engine='engine = { slots = 16, kv_capacity_tokens = 60000, prefill_tokens_per_s = 12000.0, decode_step = "12ms", decode_step_per_seq = "300us" }'
faults_for() {
    local kind=$1 offset=$2 extra=$3 out="" m
    for ((m = offset; m < minutes; m += 10)); do
        out+="{ at = \"${m}m\", duration = \"2m\", kind = \"$kind\"$extra },"
    done
    echo "faults = [${out%,}]"
}
profile() { printf 'model = "sim-llama-8b"\n%s\n%s\n' "$engine" "$1" > "$work/$2.toml"; }
profile "$(faults_for errors 2 ', rate = 0.3, status = 500')" p0
profile "$(faults_for slowdown 4 ', factor = 0.5')" p1
profile "$(faults_for reset 6 ', rate = 0.2')" p2
profile "$(faults_for deadlock 8 '')" p3
port=18700
for i in 0 1 2 3; do
    "$bin" sim --port $((port + i)) --workers 1 --profile "$work/p$i.toml" > "$work/sim$i.log" 2>&1 &
    pids+=($!)
done
{
    printf '[server]\nlisten = "127.0.0.1:%s"\n[request_log]\npath = "%s/log.db"\n' $((port + 10)) "$work"
    for i in 0 1 2 3; do
        printf '[[providers]]\nid = "p%s"\nbase_url = "http://127.0.0.1:%s/v1"\nmodels = ["llama-3.1-8b"]\nmodel_map = { "llama-3.1-8b" = "sim-llama-8b" }\nmetrics_url = "http://127.0.0.1:%s/metrics"\n' \
            "$i" $((port + i)) $((port + i))
    done
} > "$work/candor.toml"
"$bin" serve --config "$work/candor.toml" > "$work/gateway.log" 2>&1 &
gw=$!
pids+=($gw)
url=http://127.0.0.1:$((port + 10))
for _ in $(seq 100); do curl -sf "$url/livez" >/dev/null && break; sleep 0.1; done
end=$((SECONDS + minutes * 60))

# Streaming: the trace replay, looped until the end.
( while ((SECONDS < end)); do
      "$bin" load --url "$url" --trace azure-conv --speedup "${SOAK_SPEEDUP:-2}" --workers 1 --json >> "$work/load.jsonl" 2>/dev/null || true
  done ) &
pids+=($!)
# Non-streamed: two requests a second, each outcome counted by status.
( while ((SECONDS < end)); do
      curl -s -o /dev/null -w '%{http_code}\n' -m 60 "$url/v1/chat/completions" \
          -H 'content-type: application/json' \
          -d '{"model":"llama-3.1-8b","messages":[{"role":"user","content":"hello"}],"max_tokens":32}' \
          >> "$work/plain.txt" || echo 000 >> "$work/plain.txt"
      sleep 0.5
  done ) &
pids+=($!)

ticks=$(getconf CLK_TCK)
printf '| minute | RSS MiB | open fds | CPU %% (last minute) | faults on |\n|---|---|---|---|---|\n'
last_cpu=0
for ((minute = 1; minute <= minutes; minute++)); do
    sleep 60
    rss=$(awk '/VmRSS/ {printf "%.1f", $2 / 1024}' "/proc/$gw/status")
    fds=$(ls "/proc/$gw/fd" | wc -l)
    cpu=$(awk '{print $14 + $15}' "/proc/$gw/stat")
    pct=$(awk -v a="$cpu" -v b="$last_cpu" -v t="$ticks" 'BEGIN {printf "%.1f", (a - b) / t / 60 * 100}')
    last_cpu=$cpu
    on=()
    m=$(((minute - 1) % 10))
    ((m >= 2 && m < 4)) && on+=("p0 30% 500")
    ((m >= 4 && m < 6)) && on+=("p1 0.5x")
    ((m >= 6 && m < 8)) && on+=("p2 20% resets")
    ((m >= 8)) && on+=("p3 hang")
    printf '| %s | %s | %s | %s | %s |\n' "$minute" "$rss" "$fds" "$pct" "${on[*]:-none}"
done
echo
echo "non-streamed requests by status:"
sort "$work/plain.txt" | uniq -c | sed 's/^/  /'
echo "trace replays (streamed): requests, ok, within targets, errors by kind:"
python3 - "$work/load.jsonl" <<'PY'
import json, sys, collections
text = open(sys.argv[1]).read()
runs, i, dec = [], 0, json.JSONDecoder()
while i < len(text):  # one pretty-printed report per replay, back to back
    while i < len(text) and text[i].isspace():
        i += 1
    if i < len(text):
        report, i = dec.raw_decode(text, i)
        runs.append(report)
total = collections.Counter()
errors = collections.Counter()
for r in runs:
    for k in ("requests", "ok", "within_targets"):
        v = r.get(k)
        total[k] += v if isinstance(v, int) else 0
    for k, v in (r.get("errors") or {}).items():
        errors[k] += v
print(f"  {len(runs)} replays: {dict(total)}; errors {dict(errors) or 'none'}")
PY
echo "incidents opened (gateway log):"
sed 's/\x1b\[[0-9;]*m//g' "$work/gateway.log" | grep -o 'event="opened" mode=[a-z_]* subject=[a-z0-9.-]*' | sort | uniq -c | sed 's/^/  /' || true
echo "work files: $work"
