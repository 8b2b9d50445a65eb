#!/usr/bin/env python3
"""Candor's overhead, side by side in one run: direct to a fast upstream, through nginx (a
bare reverse proxy, the floor), through Candor with everything on, and through LiteLLM.

Started by bench/overhead/run.sh, which installs the tools; see docs/benchmarks.md.
Phases (configurations alternated inside every round, medians over rounds):
  fixed    non-streaming and streaming (a static 20-chunk SSE body) at fixed offered loads,
           open loop (oha -q with latency correction, waiting for every request)
  litellm  the highest load LiteLLM sustains without errors (a ladder), then Candor and
           LiteLLM side by side at that load
  max      maximum throughput, closed loop, 64 connections
  streams  200 concurrent streams from a timestamping upstream (a chunk every 40 ms):
           time to first chunk and per-chunk delay (examples/sseload)
  hold     1,000 concurrent streams open through a fresh Candor: its peak RSS
  overload 512 connections, closed loop, against a Candor limited to 64 requests in flight:
           what it does beyond capacity (503 with retry-after at once, nothing hangs)
"""

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
REQ_JSON = {"model": "bench", "max_tokens": 64,
            "messages": [{"role": "user", "content": "Explain continuous batching in one sentence."}]}
REQ_SSE = dict(REQ_JSON, model="bench-stream", stream=True)
JSON_BODY = ('{"id":"chatcmpl-bench","object":"chat.completion","created":1700000000,"model":"bench-model",'
             '"system_fingerprint":"fp_bench","choices":[{"index":0,"message":{"role":"assistant","content":'
             '"Continuous batching keeps the GPU busy by admitting new sequences at every decode step, so '
             'short requests are not stuck behind long ones."},"logprobs":null,"finish_reason":"stop"}],'
             '"usage":{"prompt_tokens":42,"completion_tokens":28,"total_tokens":70}}')
TARGETS = ("direct", "nginx", "candor", "litellm")


def log(*a):
    print("==", *a, file=sys.stderr, flush=True)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def sse_body():
    words = ("Continuous batching keeps the GPU busy by admitting new sequences at every decode "
             "step so short requests finish").split()
    base = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1700000000, "model": "bench-model"}
    out = []
    for i, w in enumerate(words[:19]):
        delta = {"role": "assistant", "content": w} if i == 0 else {"content": " " + w}
        out.append(dict(base, choices=[{"index": 0, "delta": delta, "finish_reason": None}]))
    out.append(dict(base, choices=[{"index": 0, "delta": {}, "finish_reason": "stop"}]))
    out.append(dict(base, choices=[], usage={"prompt_tokens": 42, "completion_tokens": 19, "total_tokens": 61}))
    text = "".join("data: " + json.dumps(c, separators=(",", ":")) + "\n\n" for c in out)
    return text + "data: [DONE]\n\n"


def cpu_s(pids):
    """User + system CPU seconds of these processes (and their children) so far."""
    hz = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        for p in [pid] + children(pid):
            try:
                f = open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()
                total += (int(f[11]) + int(f[12])) / hz
            except (OSError, IndexError):
                pass
    return total


def children(pid):
    out = []
    try:
        for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
            out += [int(c)] + children(int(c))
    except OSError:
        pass
    return out


def rss_mb(pid, field="VmHWM"):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def wait_http(url, timeout=60):
    import urllib.request
    end = time.time() + timeout
    while time.time() < end:
        try:
            urllib.request.urlopen(url, timeout=1)
            return True
        except Exception as e:  # noqa: BLE001 — any answer (even 4xx) means it is up
            if hasattr(e, "code"):
                return True
            time.sleep(0.2)
    return False


def pct(lp, key):
    v = lp.get(key)
    return None if v is None else v * 1000


class Bench:
    def __init__(self, a):
        self.a = a
        self.work = Path(tempfile.mkdtemp(prefix="candor-overhead-"))
        self.procs = []
        self.rows = []
        self.key = "sk-" + os.urandom(24).hex()
        self.ports = {k: free_port() for k in ("json", "sse", "timed", "slow", "proxy", "candor", "litellm")}

    # ---- services -------------------------------------------------------------------------
    def spawn(self, args, name, env=None):
        out = open(self.work / f"{name}.log", "w")
        p = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        self.procs.append(p)
        return p

    def stop(self):
        for p in self.procs:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except OSError:
                pass
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
        for pidfile in self.work.glob("*/nginx.pid"):
            try:
                os.kill(int(pidfile.read_text()), signal.SIGTERM)
            except (OSError, ValueError):
                pass

    def nginx(self, name, servers, upstreams=""):
        d = self.work / name
        d.mkdir()
        (d / "nginx.conf").write_text(f"""worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
worker_rlimit_nofile 16384;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    {upstreams}
    {servers}
}}
""")
        subprocess.run(["nginx", "-c", str(d / "nginx.conf"), "-p", str(d)], check=True)
        for _ in range(50):
            if (d / "nginx.pid").exists():
                break
            time.sleep(0.1)
        master = int((d / "nginx.pid").read_text())
        return int(children(master)[0])

    def start(self):
        p = self.ports
        body = sse_body().replace("'", "\\'")
        self.nginx("upstream", f"""
    server {{ listen 127.0.0.1:{p['json']}; location / {{ default_type application/json; return 200 '{JSON_BODY}'; }} }}
    server {{ listen 127.0.0.1:{p['sse']}; location / {{ default_type text/event-stream; return 200 '{body}'; }} }}""")
        sseload = str(self.a.sseload)
        self.spawn([sseload, "upstream", "--listen", f"127.0.0.1:{p['timed']}", "--chunks", "20", "--gap-ms", "40"], "timed")
        self.spawn([sseload, "upstream", "--listen", f"127.0.0.1:{p['slow']}", "--chunks", "20", "--gap-ms", "1000"], "slow")
        ups = "".join(f"upstream up_{k} {{ server 127.0.0.1:{p[k]}; keepalive 256; }}\n    "
                      for k in ("json", "sse", "timed", "slow"))
        locs = "".join(f"location /{k}/ {{ proxy_pass http://up_{k}/; }}\n        " for k in ("json", "sse", "timed", "slow"))
        self.nginx_worker = self.nginx("proxy", f"""
    server {{
        listen 127.0.0.1:{p['proxy']};
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_buffering off;
        {locs}
    }}""", ups)
        self.candor = self.start_candor("candor")
        if not self.a.no_litellm:
            self.start_litellm()
        for port in (p["timed"], p["slow"]):
            wait_http(f"http://127.0.0.1:{port}/")

    def start_candor(self, name, server_extra=""):
        p = self.ports
        cfg = self.work / f"{name}.toml"
        db = self.work / f"{name}.db"
        providers = "".join(f"""
[[providers]]
id = "{k}-upstream"
base_url = "http://127.0.0.1:{p[k]}/v1"
models = ["{model}"]
price = {{ input_per_million = 0.15, output_per_million = 0.60 }}
""" for k, model in (("json", "bench"), ("sse", "bench-stream"), ("timed", "bench-timed"), ("slow", "bench-slow")))
        cfg.write_text(f"""[server]
listen = "127.0.0.1:{p['candor']}"
{server_extra}
[health]
min_requests = 20
[request_log]
path = "{db}"
{providers}""")
        env = dict(os.environ, CANDOR_LOG="warn")
        proc = self.spawn([str(self.a.candor), "serve", "--workers", str(self.a.candor_workers),
                           "--config", str(cfg)], name, env)
        if not wait_http(f"http://127.0.0.1:{p['candor']}/livez"):
            sys.exit(f"candor did not start: {(self.work / f'{name}.log').read_text()}")
        return proc

    def restart_candor(self, name, server_extra=""):
        """A fresh Candor process (its peak RSS starts over) on the same port."""
        os.killpg(self.candor.pid, signal.SIGTERM)
        self.candor.wait(timeout=30)
        self.candor = self.start_candor(name, server_extra)

    def start_litellm(self):
        p = self.ports
        cfg = self.work / "litellm.yaml"
        models = "".join(f"""  - model_name: {m}
    litellm_params:
      model: openai/bench-model
      api_base: http://127.0.0.1:{p[k]}/v1
      api_key: sk-bench
""" for k, m in (("json", "bench"), ("sse", "bench-stream"), ("timed", "bench-timed")))
        cfg.write_text(f"model_list:\n{models}litellm_settings:\n  telemetry: false\n  drop_params: true\n")
        env = dict(os.environ, LITELLM_LOG="ERROR", LITELLM_TELEMETRY="False", NO_DOCS="True",
                   LITELLM_MASTER_KEY=self.key)
        self.litellm = self.spawn([str(self.a.litellm), "--config", str(cfg), "--host", "127.0.0.1",
                                   "--port", str(p["litellm"]), "--num_workers", "1"], "litellm", env)
        if not wait_http(f"http://127.0.0.1:{p['litellm']}/health/liveliness", timeout=180):
            sys.exit(f"LiteLLM did not start: {(self.work / 'litellm.log').read_text()[-3000:]}")

    def url(self, target, mode):
        p = self.ports
        # Each mode has its own upstream port and nginx location, named after it.
        return {
            "direct": f"http://127.0.0.1:{p[mode]}/v1/chat/completions",
            "nginx": f"http://127.0.0.1:{p['proxy']}/{mode}/v1/chat/completions",
            "candor": f"http://127.0.0.1:{p['candor']}/v1/chat/completions",
            "litellm": f"http://127.0.0.1:{p['litellm']}/v1/chat/completions",
        }[target]

    def pids(self, target):
        return {"direct": [], "nginx": [self.nginx_worker], "candor": [self.candor.pid],
                "litellm": [self.litellm.pid] if not self.a.no_litellm else []}[target]

    def targets(self):
        return [t for t in TARGETS if not (t == "litellm" and self.a.no_litellm)]

    # ---- load -----------------------------------------------------------------------------
    def oha(self, target, mode, rate, seconds, conns=64, timeout_s=None):
        body = REQ_JSON if mode == "json" else REQ_SSE
        args = [str(self.a.oha), "--no-tui", "--output-format", "json", "-z", f"{seconds}s", "-c", str(conns),
                "-w", "-m", "POST", "-H", "content-type: application/json", "-H", f"authorization: Bearer {self.key}",
                "-d", json.dumps(body), self.url(target, mode)]
        if rate:
            args[1:1] = ["-q", str(rate), "--latency-correction"]
        if timeout_s:
            args[1:1] = ["-t", f"{timeout_s}s"]
        before = cpu_s(self.pids(target))
        out = subprocess.run(args, capture_output=True, text=True, timeout=seconds * 20 + 120)
        after = cpu_s(self.pids(target))
        try:
            d = json.loads(out.stdout)
        except json.JSONDecodeError:
            d = {}
        lp = d.get("latencyPercentiles", {})
        codes = {str(k): v for k, v in d.get("statusCodeDistribution", {}).items()}
        ok = sum(v for k, v in codes.items() if k.startswith("2"))
        errors = dict(d.get("errorDistribution", {}))
        errors.update({f"status {k}": v for k, v in codes.items() if not k.startswith("2")})
        return {"target": target, "mode": mode, "rate": rate or "max", "ok": ok,
                "errors": sum(errors.values()), "error_kinds": errors,
                "p50_ms": pct(lp, "p50"), "p99_ms": pct(lp, "p99"), "p999_ms": pct(lp, "p99.9"),
                "rps": d.get("summary", {}).get("requestsPerSec", 0),
                "cpu_s_per_1000": (after - before) * 1000 / ok if ok and self.pids(target) else None}

    def sseload(self, target, mode, streams, seconds):
        model = {"timed": "bench-timed", "slow": "bench-slow"}[mode]
        before = cpu_s(self.pids(target))
        out = subprocess.run([str(self.a.sseload), "run", "--url", self.url(target, mode), "--streams", str(streams),
                              "--seconds", str(seconds), "--model", model, "--bearer", self.key],
                             capture_output=True, text=True, timeout=seconds * 10 + 120)
        after = cpu_s(self.pids(target))
        try:
            d = json.loads(out.stdout)
        except json.JSONDecodeError:
            d = {"errors": {"sseload failed": 1}, "streams": 0, "stderr": out.stderr[-500:]}
        d.update(target=target, cpu_s_per_1000=(after - before) * 1000 / d["streams"] if d.get("streams") and self.pids(target) else None)
        return d

    # ---- phases ---------------------------------------------------------------------------
    def phase_fixed(self):
        res = []
        for rnd in range(self.a.rounds):
            for mode in ("json", "sse"):
                for rate in self.a.rates:
                    for t in self.targets():
                        r = self.oha(t, mode, rate, self.a.seconds)
                        r["round"] = rnd
                        res.append(r)
                        log(f"fixed round {rnd + 1} {mode} {rate}/s {t}: P50 {r['p50_ms']} P99 {r['p99_ms']} ms, errors {r['errors']}")
        return res

    def phase_litellm(self):
        if self.a.no_litellm:
            return None
        best = None
        ladder = []
        for rate in self.a.litellm_ladder:
            r = self.oha("litellm", "json", rate, 10)
            ladder.append(r)
            log(f"litellm ladder {rate}/s: achieved {r['rps']:.0f}, errors {r['errors']}, P99 {r['p99_ms']}")
            if r["errors"] == 0 and r["rps"] >= 0.97 * rate and (r["p99_ms"] or 1e9) < 1000:
                best = rate
            else:
                break
        if best is None:
            return {"ladder": ladder, "rate": None, "cells": []}
        cells = []
        for rnd in range(self.a.rounds):
            for t in ("direct", "candor", "litellm"):
                r = self.oha(t, "json", best, self.a.seconds)
                r["round"] = rnd
                cells.append(r)
                log(f"at LiteLLM's load {best}/s round {rnd + 1} {t}: P99 {r['p99_ms']} ms")
        return {"ladder": ladder, "rate": best, "cells": cells}

    def phase_max(self):
        res = []
        for rnd in range(self.a.rounds):
            for t in self.targets():
                r = self.oha(t, "json", None, 10)
                r["round"] = rnd
                res.append(r)
                log(f"max round {rnd + 1} {t}: {r['rps']:.0f} req/s, errors {r['errors']}")
        return res

    def phase_streams(self):
        res = []
        for rnd in range(self.a.rounds):
            for t in self.targets():
                r = self.sseload(t, "timed", self.a.streams, self.a.seconds)
                r["round"] = rnd
                res.append(r)
                log(f"streams round {rnd + 1} {t}: TTFC {r.get('ttfc_us')} chunk {r.get('chunk_delay_us')} errors {r.get('errors')}")
        return res

    def phase_hold(self):
        self.restart_candor("candor-hold")
        base = rss_mb(self.candor.pid, "VmRSS")
        r = self.sseload("candor", "slow", self.a.hold_streams, 25)
        peak = rss_mb(self.candor.pid)
        log(f"hold {self.a.hold_streams} streams: candor peak RSS {peak:.1f} MB (idle {base:.1f} MB), {r.get('streams')} streams, errors {r.get('errors')}")
        return {"streams": self.a.hold_streams, "idle_rss_mb": base, "peak_rss_mb": peak, "load": r}

    def phase_overload(self):
        self.restart_candor("candor-overload", "max_in_flight = 64")
        r = self.oha("candor", "json", None, 10, conns=512, timeout_s=10)
        log(f"overload: {r['ok']} answered, {r['error_kinds']}, P99 {r['p99_ms']} ms")
        return r


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def fmt(x, digits=3):
    return "—" if x is None else f"{x:.{digits}f}"


def report(a, fixed, lite, mx, streams, hold, over, rss_main, machine):
    out = []
    w = out.append
    w(f"Machine: {machine}. Rounds: {a.rounds}, {a.seconds} s per fixed-load and streaming cell; medians over rounds; "
      f"added = through the proxy minus direct in the same round. Candor: `--workers {a.candor_workers}`, request log, "
      "metering, descriptors, health windows, detectors, canaries, metrics all on; nginx: 1 worker, keep-alive upstream, "
      "no buffering; LiteLLM: 1 worker, no database.\n")
    targets = [t for t in TARGETS if any(r["target"] == t for r in fixed + mx + streams)]
    checks = []

    def cell(rows, mode, rate, t, k):
        return [r[k] for r in rows if r["mode"] == mode and r["rate"] == rate and r["target"] == t]

    def added(rows, mode, rate, t, k):
        d = {r["round"]: r[k] for r in rows if r["mode"] == mode and r["rate"] == rate and r["target"] == "direct"}
        return med([r[k] - d[r["round"]] for r in rows if r["mode"] == mode and r["rate"] == rate
                    and r["target"] == t and r[k] is not None and d.get(r["round"]) is not None])

    w("### Fixed offered load (open loop)\n")
    w("| mode | req/s | target | P50 ms | P99 ms | P99.9 ms | added P50 ms | added P99 ms | added P99.9 ms | achieved req/s | CPU s / 1,000 req | errors |")
    w("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    summary = []
    for mode in ("json", "sse"):
        for rate in a.rates:
            for t in targets:
                row = {"mode": mode, "rate": rate, "target": t,
                       "p50_ms": med(cell(fixed, mode, rate, t, "p50_ms")), "p99_ms": med(cell(fixed, mode, rate, t, "p99_ms")),
                       "p999_ms": med(cell(fixed, mode, rate, t, "p999_ms")),
                       "added_p50_ms": added(fixed, mode, rate, t, "p50_ms") if t != "direct" else None,
                       "added_p99_ms": added(fixed, mode, rate, t, "p99_ms") if t != "direct" else None,
                       "added_p999_ms": added(fixed, mode, rate, t, "p999_ms") if t != "direct" else None,
                       "rps": med(cell(fixed, mode, rate, t, "rps")), "cpu_s_per_1000": med(cell(fixed, mode, rate, t, "cpu_s_per_1000")),
                       "errors": sum(cell(fixed, mode, rate, t, "errors"))}
                summary.append(row)
                name = "non-streaming" if mode == "json" else "streaming"
                w(f"| {name} | {rate} | {t} | {fmt(row['p50_ms'])} | {fmt(row['p99_ms'])} | {fmt(row['p999_ms'])} | "
                  f"{fmt(row['added_p50_ms'])} | {fmt(row['added_p99_ms'])} | {fmt(row['added_p999_ms'])} | {fmt(row['rps'], 0)} | "
                  f"{fmt(row['cpu_s_per_1000'])} | {row['errors']} |")
            c = next((r for r in summary if r["mode"] == mode and r["rate"] == rate and r["target"] == "candor"), None)
            n = next((r for r in summary if r["mode"] == mode and r["rate"] == rate and r["target"] == "nginx"), None)
            if not (c and n and fixed):
                continue
            if c["added_p99_ms"] is not None and n["added_p99_ms"]:
                ratio = c["added_p99_ms"] / max(n["added_p99_ms"], 0.001)
                checks.append((f"{'non-streaming' if mode == 'json' else 'streaming'} {rate} req/s: Candor's added P99 ≤ 1.5× nginx's",
                               ratio <= 1.5, f"{c['added_p99_ms']:.3f} ms vs nginx {n['added_p99_ms']:.3f} ms = {ratio:.1f}×"))
            checks.append((f"{'non-streaming' if mode == 'json' else 'streaming'} {rate} req/s: no request lost through Candor",
                           c["errors"] == 0, f"{c['errors']} errors over {a.rounds} rounds"))

    if lite is not None:
        w("\n### Against LiteLLM at the highest load it sustains without errors\n")
        w("Ladder (10 s each, non-streaming): " + ", ".join(
            f"{r['rate']}/s → {r['rps']:.0f} achieved, {r['errors']} errors, P99 {fmt(r['p99_ms'], 1)} ms" for r in lite["ladder"]) + "\n")
        if lite["rate"]:
            rate = lite["rate"]
            rows = lite["cells"]
            w(f"| target at {rate} req/s | P50 ms | P99 ms | P99.9 ms | added P99 ms | CPU s / 1,000 req | errors |")
            w("|---|---:|---:|---:|---:|---:|---:|")
            for t in ("direct", "candor", "litellm"):
                w(f"| {t} | {fmt(med(cell(rows, 'json', rate, t, 'p50_ms')))} | {fmt(med(cell(rows, 'json', rate, t, 'p99_ms')))} | "
                  f"{fmt(med(cell(rows, 'json', rate, t, 'p999_ms')))} | {fmt(added(rows, 'json', rate, t, 'p99_ms')) if t != 'direct' else '—'} | "
                  f"{fmt(med(cell(rows, 'json', rate, t, 'cpu_s_per_1000')))} | {sum(cell(rows, 'json', rate, t, 'errors'))} |")
            ca, la = added(rows, "json", rate, "candor", "p99_ms"), added(rows, "json", rate, "litellm", "p99_ms")
            if ca is not None and la is not None:
                ratio = la / max(ca, 0.001)
                checks.append((f"at {rate} req/s (LiteLLM's highest clean load): Candor's added P99 ≥ 10× lower than LiteLLM's",
                               ratio >= 10, f"Candor {ca:.3f} ms vs LiteLLM {la:.3f} ms = {ratio:.0f}× lower"))
        else:
            w("LiteLLM failed at the lowest rung; no side-by-side cell.\n")

    w("\n### Maximum throughput (closed loop, 64 connections, 10 s, non-streaming)\n")
    w("| target | req/s | P50 ms | P99 ms | CPU s / 1,000 req | errors |")
    w("|---|---:|---:|---:|---:|---:|")
    for t in targets:
        w(f"| {t} | {fmt(med(cell(mx, 'json', 'max', t, 'rps')), 0)} | {fmt(med(cell(mx, 'json', 'max', t, 'p50_ms')))} | "
          f"{fmt(med(cell(mx, 'json', 'max', t, 'p99_ms')))} | {fmt(med(cell(mx, 'json', 'max', t, 'cpu_s_per_1000')))} | "
          f"{sum(cell(mx, 'json', 'max', t, 'errors'))} |")
    cmax = [r for r in mx if r["target"] == "candor"]
    if cmax:
        checks.append(("maximum throughput: no request lost through Candor", sum(r["errors"] for r in cmax) == 0,
                   f"{sum(r['errors'] for r in cmax)} errors"))

    w(f"\n### {a.streams} concurrent streams (20 chunks, one every 40 ms; closed loop)\n")
    w("| target | streams/s | TTFC P50 / P99 / P99.9 ms | chunk delay P50 / P99 / P99.9 µs | added TTFC P50 / P99 ms | added per chunk P50 / P99 µs | CPU s / 1,000 streams | errors |")
    w("|---|---:|---:|---:|---:|---:|---:|---:|")
    sdirect = {r["round"]: r for r in streams if r["target"] == "direct"}

    def sadd(t, key, q):
        return med([r[key][q] - sdirect[r["round"]][key][q] for r in streams if r["target"] == t
                    and r.get(key) and sdirect.get(r["round"], {}).get(key)])
    stream_rows = []
    for t in targets:
        rs = [r for r in streams if r["target"] == t]
        g = lambda key, q: med([r[key][q] for r in rs if r.get(key)])  # noqa: E731
        row = {"target": t, "streams_per_s": med([r.get("streams_per_s") for r in rs]),
               "ttfc_us": {q: g("ttfc_us", q) for q in ("p50", "p99", "p999")},
               "chunk_delay_us": {q: g("chunk_delay_us", q) for q in ("p50", "p99", "p999")},
               "added_ttfc_us": {q: sadd(t, "ttfc_us", q) for q in ("p50", "p99")} if t != "direct" else None,
               "added_chunk_us": {q: sadd(t, "chunk_delay_us", q) for q in ("p50", "p99")} if t != "direct" else None,
               "cpu_s_per_1000": med([r.get("cpu_s_per_1000") for r in rs]),
               "errors": sum(sum((r.get("errors") or {}).values()) for r in rs)}
        stream_rows.append(row)
        ms = lambda v: fmt(None if v is None else v / 1000, 2)  # noqa: E731
        at, ac = row["added_ttfc_us"] or {}, row["added_chunk_us"] or {}
        w(f"| {t} | {fmt(row['streams_per_s'], 0)} | {ms(row['ttfc_us']['p50'])} / {ms(row['ttfc_us']['p99'])} / {ms(row['ttfc_us']['p999'])} | "
          f"{fmt(row['chunk_delay_us']['p50'], 0)} / {fmt(row['chunk_delay_us']['p99'], 0)} / {fmt(row['chunk_delay_us']['p999'], 0)} | "
          f"{ms(at.get('p50'))} / {ms(at.get('p99'))} | {fmt(ac.get('p50'), 0)} / {fmt(ac.get('p99'), 0)} | {fmt(row['cpu_s_per_1000'])} | {row['errors']} |")
    c = next((r for r in stream_rows if r["target"] == "candor"), None)
    if streams and c and c["added_chunk_us"] and c["added_chunk_us"]["p99"] is not None:
        checks.append(("streaming: per-chunk added latency P99 ≤ 50 µs", c["added_chunk_us"]["p99"] <= 50,
                       f"{c['added_chunk_us']['p99']:.0f} µs (nginx: {next(r for r in stream_rows if r['target'] == 'nginx')['added_chunk_us']['p99']:.0f} µs)"))

    if hold:
        w(f"\n### {hold['streams']} streams open at once through a fresh Candor (a chunk every second, 20 s streams)\n")
        ld = hold["load"]
        w(f"Candor's peak RSS: **{hold['peak_rss_mb']:.1f} MB** (idle after start: {hold['idle_rss_mb']:.1f} MB); "
          f"{ld.get('streams', 0)} streams completed, errors: {ld.get('errors') or 'none'}.\n")
        checks.append((f"peak RSS ≤ 64 MB with {hold['streams']} concurrent streams", hold["peak_rss_mb"] <= 64,
                       f"{hold['peak_rss_mb']:.1f} MB"))
        checks.append((f"{hold['streams']} concurrent streams: none lost", not ld.get("errors"), f"errors {ld.get('errors') or 0}"))
    if over:
        kinds = over["error_kinds"]
        shed = kinds.get("status 503", 0)
        other = {k: v for k, v in kinds.items() if k != "status 503"}
        w("\n### Beyond capacity: 512 connections against a Candor limited to 64 in flight (10 s, closed loop)\n")
        w(f"{over['ok']} answered 200, {shed} shed with 503 + `retry-after`, other outcomes: {other or 'none'}; "
          f"{over['rps']:.0f} answers/s, P50 {fmt(over['p50_ms'])} ms, P99 {fmt(over['p99_ms'])} ms "
          f"(every answer, shed ones included), nothing still waiting when the run ended.\n")
        checks.append(("beyond capacity: sheds with 503, nothing lost or hanging", not other,
                       f"{shed} shed, other outcomes {other or 'none'}"))
    w(f"\nCandor's peak RSS over the latency phases: {rss_main:.1f} MB.\n")
    w("### Targets (issue 9)\n")
    w("| target | met? | measured |")
    w("|---|---|---|")
    for name, ok, detail in checks:
        w(f"| {name} | {'met' if ok else '**missed**'} | {detail} |")
    data = {"machine": machine, "settings": vars(a) | {"candor": str(a.candor), "sseload": str(a.sseload), "oha": str(a.oha), "litellm": str(a.litellm)},
            "fixed": summary, "litellm": lite, "max": mx, "streams": stream_rows, "hold": hold, "overload": over,
            "candor_peak_rss_mb": rss_main, "targets": [{"target": n, "met": ok, "measured": d} for n, ok, d in checks],
            "raw": {"fixed": fixed, "streams": streams}}
    return "\n".join(out) + "\n", data


def machine():
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    mem = next((int(l.split()[1]) // 1024 // 1024 for l in open("/proc/meminfo") if l.startswith("MemTotal")), 0)
    os_name = next((l.split("=", 1)[1].strip().strip('"') for l in open("/etc/os-release") if l.startswith("PRETTY_NAME")), "?")
    return f"{os.cpu_count()} cores ({cpu}), {mem} GiB, {os_name}, Linux {os.uname().release}; load generator, upstreams and proxies share the cores"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--candor", type=Path, required=True)
    ap.add_argument("--sseload", type=Path, required=True)
    ap.add_argument("--oha", type=Path, required=True)
    ap.add_argument("--litellm", type=Path)
    ap.add_argument("--no-litellm", action="store_true")
    ap.add_argument("--rates", type=lambda s: [int(x) for x in s.split()], default=[500, 2000])
    ap.add_argument("--seconds", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--streams", type=int, default=200)
    ap.add_argument("--hold-streams", type=int, default=1000)
    ap.add_argument("--litellm-ladder", type=lambda s: [int(x) for x in s.split()], default=[25, 50, 100, 200, 300, 500])
    ap.add_argument("--candor-workers", type=int, default=1)
    ap.add_argument("--phases", default="fixed litellm max streams hold overload")
    ap.add_argument("--out", type=Path, default=ROOT / "target" / "overhead")
    a = ap.parse_args()
    a.no_litellm = a.no_litellm or a.litellm is None
    phases = a.phases.split()
    b = Bench(a)
    try:
        b.start()
        b.oha("candor", "json", 200, 3)  # warm the pools
        fixed = b.phase_fixed() if "fixed" in phases else []
        lite = b.phase_litellm() if "litellm" in phases else None
        mx = b.phase_max() if "max" in phases else []
        streams = b.phase_streams() if "streams" in phases else []
        rss_main = rss_mb(b.candor.pid)
        hold = b.phase_hold() if "hold" in phases else None
        over = b.phase_overload() if "overload" in phases else None
    finally:
        b.stop()
    text, data = report(a, fixed, lite, mx, streams, hold, over, rss_main, machine())
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "report.md").write_text(text)
    (a.out / "report.json").write_text(json.dumps(data, indent=1, default=str))
    print(text)
    print(f"(also in {a.out}/report.md and report.json)")


if __name__ == "__main__":
    main()
