#!/usr/bin/env bash
# Added latency of Candor against a direct hit on the same fast upstream and against nginx as
# a bare reverse proxy to it (the floor), side by side in one run: fixed offered loads (open
# loop, oha with latency correction), non-streaming and streaming, configurations alternated
# over several rounds, medians reported, with each proxy's CPU time per 1,000 requests and
# Candor's peak RSS.
#
# Usage: bench/overhead/run.sh [--rates "500 2000"] [--modes "json sse"] [--seconds 15] [--rounds 3]
# Needs: nginx (Debian nginx-light) as the upstream, oha (crates.io) as the load tool;
# both are installed when missing (oha is cached under ~/.cache/candor-ci/).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD

RATES="500 2000"
MODES="json sse"
SECONDS_EACH=15
ROUNDS=3
while (($#)); do
    case "$1" in
        --rates) RATES="$2"; shift 2 ;;
        --seconds) SECONDS_EACH="$2"; shift 2 ;;
        --rounds) ROUNDS="$2"; shift 2 ;;
        --modes) MODES="$2"; shift 2 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done

OHA_VERSION=1.16.0
OHA_ROOT="$HOME/.cache/candor-ci/oha-$OHA_VERSION"
OHA="$OHA_ROOT/bin/oha"
if ! command -v nginx >/dev/null 2>&1; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light >/dev/null
fi
if [[ ! -x "$OHA" ]]; then
    echo "== building oha $OHA_VERSION (once; cached in $OHA_ROOT)" >&2
    cargo install oha --version "$OHA_VERSION" --locked --root "$OHA_ROOT" >&2
fi
echo "== building candor (release)" >&2
cargo build --release --quiet
CANDOR="${CARGO_TARGET_DIR:-$ROOT/target}/release/candor"

WORK=$(mktemp -d)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    [[ -f "$WORK/nginx.pid" ]] && kill "$(cat "$WORK/nginx.pid")" 2>/dev/null || true
    [[ -f "$WORK/proxy/nginx.pid" ]] && kill "$(cat "$WORK/proxy/nginx.pid")" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT
# CPU seconds (user + system) a process has used so far.
cpu_s() { awk -v hz="$(getconf CLK_TCK)" '{print ($14 + $15) / hz}' "/proc/$1/stat"; }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
UP_JSON=$(free_port); UP_SSE=$(free_port); GW=$(free_port); PX=$(free_port)

# A realistic chat.completion body, and a 20-chunk stream with usage.
JSON_BODY='{"id":"chatcmpl-bench","object":"chat.completion","created":1700000000,"model":"bench-model","system_fingerprint":"fp_bench","choices":[{"index":0,"message":{"role":"assistant","content":"Continuous batching keeps the GPU busy by admitting new sequences at every decode step, so short requests are not stuck behind long ones."},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":42,"completion_tokens":28,"total_tokens":70}}'
python3 - "$WORK/stream.sse" <<'PY'
import json, sys
words = "Continuous batching keeps the GPU busy by admitting new sequences at every decode step so short requests finish".split()
out = []
base = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1700000000, "model": "bench-model"}
for i, w in enumerate(words[:19]):
    c = dict(base, choices=[{"index": 0, "delta": ({"role": "assistant", "content": w} if i == 0 else {"content": " " + w}), "finish_reason": None}], usage=None)
    out.append("data: " + json.dumps(c, separators=(",", ":")) + "\n\n")
out.append("data: " + json.dumps(dict(base, choices=[{"index": 0, "delta": {}, "finish_reason": "stop"}], usage=None), separators=(",", ":")) + "\n\n")
out.append("data: " + json.dumps(dict(base, choices=[], usage={"prompt_tokens": 42, "completion_tokens": 19, "total_tokens": 61}), separators=(",", ":")) + "\n\n")
out.append("data: [DONE]\n\n")
open(sys.argv[1], "w").write("".join(out))
PY
SSE_BODY=$(cat "$WORK/stream.sse")

cat > "$WORK/nginx.conf" <<NGINX
worker_processes 1;
pid $WORK/nginx.pid;
error_log $WORK/nginx-error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 1000000;
    server {
        listen 127.0.0.1:$UP_JSON;
        location / { default_type application/json; return 200 '$JSON_BODY'; }
    }
    server {
        listen 127.0.0.1:$UP_SSE;
        location / { default_type text/event-stream; return 200 '$SSE_BODY'; }
    }
}
NGINX
nginx -c "$WORK/nginx.conf" -p "$WORK"

# nginx as a bare reverse proxy (its own instance, one worker like the upstream): keep-alive
# to the upstream, no buffering so streams pass through as they come. The path picks the
# upstream, as the model does for Candor.
mkdir -p "$WORK/proxy"
cat > "$WORK/proxy/nginx.conf" <<NGINX
worker_processes 1;
pid $WORK/proxy/nginx.pid;
error_log $WORK/proxy/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 1000000;
    upstream up_json { server 127.0.0.1:$UP_JSON; keepalive 64; }
    upstream up_sse { server 127.0.0.1:$UP_SSE; keepalive 64; }
    server {
        listen 127.0.0.1:$PX;
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_buffering off;
        location /json/ { proxy_pass http://up_json/; }
        location /sse/ { proxy_pass http://up_sse/; }
    }
}
NGINX
nginx -c "$WORK/proxy/nginx.conf" -p "$WORK/proxy"

cat > "$WORK/candor.toml" <<TOML
[server]
listen = "127.0.0.1:$GW"
[health]
min_requests = 20
[request_log]
path = "$WORK/candor.db"
[[providers]]
id = "json-upstream"
base_url = "http://127.0.0.1:$UP_JSON/v1"
models = ["bench"]
price = { input_per_million = 0.15, output_per_million = 0.60 }
[[providers]]
id = "sse-upstream"
base_url = "http://127.0.0.1:$UP_SSE/v1"
models = ["bench-stream"]
price = { input_per_million = 0.15, output_per_million = 0.60 }
TOML
CANDOR_LOG=warn "$CANDOR" serve --config "$WORK/candor.toml" 2>"$WORK/candor.log" &
CANDOR_PID=$!
PIDS+=("$CANDOR_PID")
PROXY_WORKER=$(pgrep -P "$(cat "$WORK/proxy/nginx.pid")" | head -1)
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$GW/livez" >/dev/null 2>&1 && break; sleep 0.1; done

REQ_JSON='{"model":"bench","messages":[{"role":"user","content":"Explain continuous batching in one sentence."}],"max_tokens":64}'
REQ_SSE='{"model":"bench-stream","stream":true,"messages":[{"role":"user","content":"Explain continuous batching in one sentence."}],"max_tokens":64}'

run_oha() { # name url body rate -> json file
    local out="$WORK/$1.json"
    "$OHA" --no-tui --output-format json -z "${SECONDS_EACH}s" -q "$4" --latency-correction \
        -c 64 -m POST -H 'content-type: application/json' -d "$3" "$2" >"$out" 2>/dev/null || true
    echo "$out"
}

# Warm up both paths (connection pools, page cache).
run_oha warm "http://127.0.0.1:$GW/v1/chat/completions" "$REQ_JSON" 200 >/dev/null

RESULTS="$WORK/results.jsonl"
for round in $(seq "$ROUNDS"); do
    for mode in $MODES; do
        if [[ $mode == json ]]; then body=$REQ_JSON; up=$UP_JSON; else body=$REQ_SSE; up=$UP_SSE; fi
        for rate in $RATES; do
            for target in direct nginx candor; do
                case $target in
                    direct) url="http://127.0.0.1:$up/v1/chat/completions"; pid="" ;;
                    nginx) url="http://127.0.0.1:$PX/$mode/v1/chat/completions"; pid=$PROXY_WORKER ;;
                    candor) url="http://127.0.0.1:$GW/v1/chat/completions"; pid=$CANDOR_PID ;;
                esac
                before=$([[ -n $pid ]] && cpu_s "$pid" || echo 0)
                f=$(run_oha "r$round-$mode-$rate-$target" "$url" "$body" "$rate")
                after=$([[ -n $pid ]] && cpu_s "$pid" || echo 0)
                python3 - "$f" "$round" "$mode" "$rate" "$target" "$before" "$after" >>"$RESULTS" <<'PY'
import json, sys
f, rnd, mode, rate, target, before, after = sys.argv[1:]
try:
    d = json.load(open(f))
except Exception:
    d = {}
lp = d.get("latencyPercentiles", {})
codes = d.get("statusCodeDistribution", {})
ok = sum(v for k, v in codes.items() if k.startswith("2"))
total = sum(codes.values()) + sum(d.get("errorDistribution", {}).values())
print(json.dumps({"round": int(rnd), "mode": mode, "rate": int(rate), "target": target,
                  "p50_ms": (lp.get("p50") or 0) * 1000, "p99_ms": (lp.get("p99") or 0) * 1000,
                  "rps": d.get("summary", {}).get("requestsPerSec", 0), "ok": ok, "errors": total - ok,
                  "cpu_s_per_1000": (float(after) - float(before)) * 1000 / ok if ok else None,
                  "error_kinds": d.get("errorDistribution", {})}))
PY
                echo "   round $round $mode $rate req/s $target done" >&2
            done
        done
    done
done

RSS_MB=$(awk '/VmHWM/ {printf "%.1f", $2 / 1024}' "/proc/$CANDOR_PID/status")
python3 - "$RESULTS" "$(nproc)" "$(uname -r)" "$ROUNDS" "$SECONDS_EACH" "$RSS_MB" <<'PY'
import json, statistics, sys
path, cores, kernel, rounds, secs, rss = sys.argv[1:]
rows = [json.loads(l) for l in open(path)]
def med(xs): return statistics.median(xs) if xs else float("nan")
print(f"\nAdded latency against a direct hit on the upstream — {cores} cores, kernel {kernel}, {rounds} rounds x {secs}s per cell, medians")
print("upstream: nginx returning a fixed body (non-streaming: chat.completion JSON; streaming: 20-chunk SSE with usage)")
print("nginx: a bare reverse proxy (1 worker, keep-alive upstream, no buffering) — the floor")
print("candor: release build, request log (SQLite), metering, output descriptors, health windows, detectors, canaries and metrics all on\n")
print("| mode | offered req/s | direct P50 / P99 ms | nginx added P50 / P99 ms | candor added P50 / P99 ms | candor ÷ nginx added P99 | CPU s per 1,000 req (nginx / candor) | candor achieved req/s | errors (direct/nginx/candor) |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
summary = []
for mode in ("json", "sse"):
    for rate in sorted({r["rate"] for r in rows}):
        cell = lambda t, k: [r[k] for r in rows if r["mode"] == mode and r["rate"] == rate and r["target"] == t and r.get(k) is not None]
        if not cell("candor", "p50_ms"):
            continue
        def added(t, k):
            return med([x - d for x, d in zip(cell(t, k), cell("direct", k))])
        d50, d99 = med(cell("direct", "p50_ms")), med(cell("direct", "p99_ms"))
        n50, n99, c50, c99 = added("nginx", "p50_ms"), added("nginx", "p99_ms"), added("candor", "p50_ms"), added("candor", "p99_ms")
        ratio = f"{c99 / n99:.1f}x" if n99 > 0 else "n/a"
        ncpu, ccpu = med(cell("nginx", "cpu_s_per_1000")), med(cell("candor", "cpu_s_per_1000"))
        errs = "/".join(str(sum(cell(t, "errors"))) for t in ("direct", "nginx", "candor"))
        name = "non-streaming" if mode == "json" else "streaming"
        print(f"| {name} | {rate} | {d50:.3f} / {d99:.3f} | {n50:.3f} / {n99:.3f} | {c50:.3f} / {c99:.3f} | {ratio} | {ncpu:.3f} / {ccpu:.3f} | {med(cell('candor','rps')):.0f} | {errs} |")
        summary.append({"mode": name, "rate": rate, "direct_p50_ms": d50, "direct_p99_ms": d99,
                        "nginx_added_p50_ms": n50, "nginx_added_p99_ms": n99,
                        "candor_added_p50_ms": c50, "candor_added_p99_ms": c99,
                        "nginx_cpu_s_per_1000": ncpu, "candor_cpu_s_per_1000": ccpu})
kinds = {}
for r in rows:
    for k, v in (r.get("error_kinds") or {}).items():
        kinds[k] = kinds.get(k, 0) + v
if kinds:
    print("\nerrors by kind (all cells):", ", ".join(f"{k}: {v}" for k, v in sorted(kinds.items())))
print(f"\ncandor peak RSS over the run: {rss} MB")
print("\nJSON:", json.dumps({"cells": summary, "candor_peak_rss_mb": float(rss)}))
PY
