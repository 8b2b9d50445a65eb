// Candor dashboard: reads only the admin JSON API (/api/*) and redraws every POLL_MS.
// No framework; uPlot (vendored) draws the charts.
"use strict";

const POLL_MS = 1500;
const EXPLORER_MS = 5000;
const TOKEN_KEY = "candor.admin_token";
// Okabe–Ito, in the order providers get them.
const PALETTE = ["#56b4e9", "#e69f00", "#009e73", "#cc79a7", "#f0e442", "#d55e00", "#0072b2", "#bbbbbb"];
const STATE_SHAPE = { healthy: "●", degraded: "▲", ejected: "■", recovering: "◆" };
const MODE_TITLE = {
  silent_quality_degradation: "Silent quality degradation",
  kv_cache_thrashing: "KV-cache thrashing",
  batch_queue_deadlock: "Batch-queue deadlock",
  hardware_degradation: "Hardware degradation",
  cascading_timeouts: "Cascading timeouts",
  error_burst: "Error burst",
  rate_limited: "Rate limited",
  connection_failures: "Connection failures",
  mid_stream_resets: "Mid-stream resets",
  slo_burn: "SLO error budget burning",
  completions_drop: "Completions per minute dropped",
};

const $ = (id) => document.getElementById(id);
const state = {
  span: "5m",
  health: null,
  providers: null,
  series: null,
  incidents: [],
  charts: {},
  sparks: {},
  colours: {},
  requestsTimer: null,
  openRequest: null,
};

// ---------- formatting ----------
function esc(v) {
  return String(v ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}
const isNum = (v) => typeof v === "number" && Number.isFinite(v);
function fmtMs(v) {
  if (!isNum(v)) return "–";
  if (v < 1) return v.toFixed(2) + " ms";
  if (v < 1000) return v.toFixed(0) + " ms";
  if (v < 60000) return (v / 1000).toFixed(v < 10000 ? 2 : 1) + " s";
  return (v / 60000).toFixed(1) + " min";
}
const fmtTps = (v) => (isNum(v) ? v.toFixed(v < 10 ? 1 : 0) + " tok/s" : "–");
const fmtPct = (v, digits = 1) => (isNum(v) ? (v * 100).toFixed(digits) + " %" : "–");
function fmtUsd(v) {
  if (!isNum(v)) return "–";
  if (v === 0) return "$0";
  if (v < 0.01) return "$" + v.toFixed(5);
  if (v < 10) return "$" + v.toFixed(3);
  return "$" + v.toFixed(2);
}
function fmtTime(ms) {
  if (!isNum(ms)) return "–";
  return new Date(ms).toLocaleTimeString([], { hour12: false });
}
function fmtClock(ms) {
  const d = new Date(ms);
  const two = (n) => String(n).padStart(2, "0");
  return `${two(d.getHours())}:${two(d.getMinutes())}` + (state.span === "1h" ? "" : `:${two(d.getSeconds())}`);
}
function fmtDur(ms) {
  if (!isNum(ms) || ms < 0) return "–";
  const s = Math.round(ms / 1000);
  if (s < 60) return s + " s";
  if (s < 3600) return Math.floor(s / 60) + " min " + (s % 60) + " s";
  return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min";
}
const ago = (ms, now) => (isNum(ms) ? fmtDur(now - ms) + " ago" : "–");
const modeTitle = (m) => MODE_TITLE[m] || String(m).replace(/_/g, " ");

// ---------- the admin API ----------
class AuthError extends Error {}
async function api(path) {
  const headers = { Accept: "application/json" };
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers.Authorization = "Bearer " + token;
  const r = await fetch(path, { headers, cache: "no-store" });
  if (r.status === 401) throw new AuthError("the admin token was refused");
  let body = null;
  try {
    body = await r.json();
  } catch (_) {
    throw new Error(`${path}: HTTP ${r.status}, not JSON`);
  }
  if (!r.ok) throw new Error(body?.error?.message || `${path}: HTTP ${r.status}`);
  return body;
}

// Every call that meets a 401 lands here; a token already stored was refused.
function showLogin() {
  $("login").hidden = false;
  $("login-error").textContent = sessionStorage.getItem(TOKEN_KEY) ? "That token was refused. Try again." : "";
  $("token").focus();
}

$("login-form").addEventListener("submit", (e) => {
  e.preventDefault();
  sessionStorage.setItem(TOKEN_KEY, $("token").value.trim());
  $("token").value = "";
  $("login").hidden = true;
  $("login-error").textContent = "";
  poll();
  loadRequests();
});
$("logout").addEventListener("click", () => {
  sessionStorage.removeItem(TOKEN_KEY);
  location.reload();
});

// ---------- charts ----------
function chartWidth(el) {
  return Math.max(160, Math.floor(el.getBoundingClientRect().width || el.parentElement.clientWidth || 300));
}
const AXIS = { stroke: "#98a2b3", grid: { stroke: "#2a313c", width: 1 }, ticks: { stroke: "#2a313c" } };

function lineChart(key, el, { height, series, yFmt, yRange }) {
  const opts = {
    width: chartWidth(el),
    height,
    // Names only (values show on hover in the cursor's tooltip-free legend would flicker).
    legend: { show: series.length > 2, live: false },
    cursor: { points: { size: 6 } },
    scales: { x: { time: true }, y: yRange ? { range: yRange } : { auto: true } },
    axes: [
      { ...AXIS, space: 70, values: (u, vals) => vals.map((v) => fmtClock(v * 1000)) },
      { ...AXIS, size: 74, values: (u, vals) => vals.map((v) => yFmt(v)) },
    ],
    series: [{ label: "time", value: (u, v) => (isNum(v) ? fmtTime(v * 1000) : "") }, ...series.map((s) => ({ spanGaps: false, width: 2, points: { show: false }, value: (u, v) => (isNum(v) ? yFmt(v) : "–"), ...s }))],
  };
  const chart = new uPlot(opts, [[], ...series.map(() => [])], el);
  state.charts[key] = { chart, el, sig: series.map((s) => s.label).join("|") };
  return chart;
}

function setChart(key, el, config, data) {
  const sig = config.series.map((s) => s.label).join("|");
  let c = state.charts[key];
  if (c && c.sig !== sig) {
    c.chart.destroy();
    delete state.charts[key];
    c = null;
  }
  const chart = c ? c.chart : lineChart(key, el, config);
  chart.setData(data);
}

function emptyState(el, text) {
  for (const [key, c] of Object.entries(state.charts)) {
    if (c.el === el) {
      c.chart.destroy();
      delete state.charts[key];
    }
  }
  el.innerHTML = `<div class="empty">${esc(text)}</div>`;
}

function clearEmpty(el) {
  const e = el.querySelector(".empty");
  if (e) e.remove();
}

new ResizeObserver(() => {
  for (const c of Object.values(state.charts)) c.chart.setSize({ width: chartWidth(c.el), height: c.chart.height });
}).observe(document.body);

// ---------- series helpers ----------
// Slots fully elapsed (the last one is in progress and would read low).
function completeSlots(series) {
  const n = Math.max(0, series.t_unix_ms.length - 1);
  return { n, xs: series.t_unix_ms.slice(0, n).map((t) => t / 1000) };
}
const ratio = (a, b) => a.map((x, i) => (b[i] > 0 ? x / b[i] : null));

function colourOf(id) {
  if (!state.colours[id]) state.colours[id] = PALETTE[Object.keys(state.colours).length % PALETTE.length];
  return state.colours[id];
}

// ---------- header and KPIs ----------
function renderHeader(h) {
  const v = $("verdict");
  v.dataset.verdict = h.verdict;
  const words = { within_bounds: "✓ within bounds", degraded: "▲ degraded", failing: "■ failing" };
  v.textContent = words[h.verdict] || h.verdict;
  const breaches = h.overall.breached.map((b) => `${b.bound.replace(/_/g, " ")} ${fmtBound(b.bound, b.value)} (limit ${fmtBound(b.bound, b.limit)}, ${b.window})`);
  $("breaches").textContent = breaches.length ? "Breached: " + breaches.join("; ") : h.overall.note || "";
  $("updated").textContent = "updated " + fmtTime(h.generated_at_unix_ms);
}
function fmtBound(bound, v) {
  if (bound.endsWith("_ms")) return fmtMs(v);
  if (bound.startsWith("decode")) return fmtTps(v);
  if (bound === "error_rate") return fmtPct(v, 2);
  return String(v);
}

function renderKpis(h, series) {
  const one = h.overall["1m"];
  const t = h.targets;
  $("sla-value").textContent = fmtPct(one.within_targets_share);
  $("sla-sub").textContent = one.requests
    ? `${one.within_targets} of ${one.requests} requests met TTFT ≤ ${fmtMs(t.ttft_ms)}, decode ≥ ${fmtTps(t.decode_tokens_per_s)}, total ≤ ${fmtMs(t.e2e_ms)}`
    : "no client requests in the last minute";
  $("cpm-value").textContent = isNum(one.completions_per_min) ? one.completions_per_min.toFixed(0) : "–";
  const five = h.overall["5m"];
  $("cpm-sub").textContent = `${fmtPct(one.error_rate, 2)} errors in the last minute · ${five.completions_per_min.toFixed(0)}/min over 5 minutes`;
  const { n, xs } = completeSlots(series);
  const o = series.overall;
  const slotMin = series.slot_s / 60;
  const sla = ratio(o.within_targets.slice(0, n), o.requests.slice(0, n));
  const elSla = $("chart-sla");
  if (o.requests.slice(0, n).some((x) => x > 0)) {
    clearEmpty(elSla);
    setChart("sla", elSla, { height: 110, yFmt: (v) => fmtPct(v, 0), yRange: [0, 1], series: [{ label: "within targets", stroke: PALETTE[2], fill: "rgba(0,158,115,0.12)" }] }, [xs, sla]);
  } else emptyState(elSla, "no client requests yet in this span");
  const elCpm = $("chart-cpm");
  if (n > 0) {
    clearEmpty(elCpm);
    setChart("cpm", elCpm, { height: 110, yFmt: (v) => (isNum(v) ? v.toFixed(0) : ""), series: [{ label: "completions/min", stroke: PALETTE[0], fill: "rgba(86,180,233,0.12)" }] }, [xs, o.completed.slice(0, n).map((c) => c / slotMin)]);
  } else emptyState(elCpm, "the first slot is still filling");
}

function renderOpenIncidents(h) {
  $("open-count").textContent = String(h.incidents.length);
  const ul = $("open-list");
  if (!h.incidents.length) {
    ul.innerHTML = `<li class="muted">Nothing open. Detectors are watching every provider.</li>`;
    return;
  }
  ul.innerHTML = h.incidents
    .map((i) => `<li><strong>${esc(modeTitle(i.mode))}</strong> on ${esc(i.subject)} <span class="muted">since ${fmtTime(i.onset_ms)}</span></li>`)
    .join("");
}

// ---------- provider cards ----------
function backendLines(b) {
  if (b.status === "not_configured") return { note: "no backend metrics configured (metrics_url)" };
  // The scraped figures are flattened into the backend report.
  if (b.status !== "ok") return { note: `backend metrics unavailable${isNum(b.age_s) ? ` (last scrape ${b.age_s.toFixed(0)} s ago)` : ""}` };
  return { m: b };
}

function renderProviders(h, views, series) {
  const root = $("providers");
  if (!h.providers.length) {
    root.innerHTML = `<div class="empty">No providers configured.</div>`;
    return;
  }
  const now = h.generated_at_unix_ms;
  // The provider's window figures are flattened into its report.
  const attempts = h.providers.reduce((s, p) => s + p["1m"].requests, 0);
  for (const p of h.providers) {
    const view = views.find((v) => v.id === p.id) || {};
    let card = root.querySelector(`[data-provider="${CSS.escape(p.id)}"]`);
    if (!card) {
      card = document.createElement("div");
      card.className = "card";
      card.dataset.provider = p.id;
      card.innerHTML = `<div class="card-body"></div><div class="metric wide"><span class="label">Decode rate per stream, against its baseline</span><div class="spark"></div></div>`;
      root.appendChild(card);
    }
    card.dataset.state = p.state;
    const one = p["1m"];
    const routing = view.routing || {};
    const share = attempts > 0 ? one.requests / attempts : null;
    const priceIn = view.price_input_per_million || 0;
    const priceOut = view.price_output_per_million || 0;
    const costPerHour = ((one.tokens_in * priceIn + one.tokens_out * priceOut) / 1e6) * 60;
    const { note, m } = backendLines(p.backend);
    const weight = p.state === "degraded" ? ` · weight ${p.weight.toFixed(2)}` : "";
    // What the detectors name first (current findings, then open incidents not found this
    // tick), then the routing evidence they do not already say.
    const incidents = h.incidents.filter((i) => i.provider === p.id && !p.findings.some((f) => f.mode === i.mode));
    const named = new Set([...p.findings.map((f) => f.mode), ...incidents.map((i) => i.mode)]);
    const evidence = [
      ...p.findings.map((f) => `<li class="finding"><strong>${esc(modeTitle(f.mode))}</strong>: ${esc(f.summary)}</li>`),
      ...incidents.map((i) => `<li class="finding"><strong>Open incident, ${esc(modeTitle(i.mode))}</strong> since ${fmtTime(i.onset_ms)}: ${esc(i.summary)}</li>`),
      ...p.evidence.filter((e) => !named.has(e.signal)).map((e) => `<li>${esc(e.detail)}</li>`),
    ];
    const baseTtft = isNum(p.baseline_ttft_ms) ? ` <span class="muted">baseline ${fmtMs(p.baseline_ttft_ms)}</span>` : "";
    const baseDecode = isNum(p.baseline_decode_tokens_per_s) ? ` <span class="muted">baseline ${fmtTps(p.baseline_decode_tokens_per_s)}</span>` : ` <span class="muted">no baseline yet</span>`;
    const backend = m
      ? `<div class="metric"><span class="label">Queue depth (waiting)</span><span class="value">${isNum(m.queue) ? m.queue.toFixed(0) : "–"} <span class="muted">${isNum(m.running) ? m.running.toFixed(0) + " running" : ""}</span></span></div>
         <div class="metric"><span class="label">KV cache use</span><span class="value">${fmtPct(m.kv_usage)}${isNum(m.preemptions_per_s) && m.preemptions_per_s > 0 ? ` <span class="muted">${m.preemptions_per_s.toFixed(1)} preemptions/s</span>` : ""}</span></div>
         <div class="metric"><span class="label">GPU memory</span><span class="value">${isNum(m.gpu_memory_used) ? fmtPct(m.gpu_memory_used) : '<span class="muted">no GPU metrics configured</span>'}${isNum(m.gpu_util) ? ` <span class="muted">${fmtPct(m.gpu_util, 0)} busy</span>` : ""}${isNum(m.gpu_temp_c) ? ` <span class="muted">${m.gpu_temp_c.toFixed(0)} °C</span>` : ""}</span></div>
         <div class="metric"><span class="label">Engine</span><span class="value">${esc(m.engine || "–")}${isNum(m.sm_clock_mhz) ? ` <span class="muted">${m.sm_clock_mhz.toFixed(0)} MHz</span>` : ""}${m.throttle && m.throttle.length ? ` <span class="muted">throttled: ${esc(m.throttle.join(", "))}</span>` : ""}</span></div>`
      : `<div class="metric wide"><span class="label">Queue, KV cache, GPU</span><span class="value muted">${esc(note)}</span></div>`;
    card.querySelector(".card-body").innerHTML = `
      <div class="card-head">
        <h3>${esc(p.id)}</h3>
        <span class="state" data-state="${esc(p.state)}">${STATE_SHAPE[p.state] || ""} ${esc(p.state)}${weight}</span>
        <span class="card-models">${esc(p.models.join(", "))}</span>
      </div>
      <div class="since">${isNum(routing.since_unix_ms) ? `${esc(p.state)} since ${fmtTime(routing.since_unix_ms)} (${fmtDur(now - routing.since_unix_ms)})` : ""}${p.health_endpoint_ok === false ? " · its own /health fails" : ""}</div>
      <ul class="evidence">${evidence.length ? evidence.join("") : `<li class="none">No evidence against it.</li>`}</ul>
      <div class="metrics">
        <div class="metric"><span class="label">P95 time to first token (1 min)</span><span class="value">${fmtMs(one.ttft_ms.p95)}${baseTtft}</span></div>
        <div class="metric"><span class="label">Decode now</span><span class="value">${fmtTps(p.decode_now)}${baseDecode}</span></div>
        <div class="metric"><span class="label">Error rate (1 min)</span><span class="value">${fmtPct(one.error_rate, 2)} <span class="muted">${one.errors} of ${one.requests}</span></span></div>
        <div class="metric"><span class="label">Traffic share (1 min)</span><span class="value">${fmtPct(share, 0)} <span class="muted">${p.in_flight} in flight</span></span></div>
        <div class="metric"><span class="label">Cost</span><span class="value">${fmtUsd(costPerHour)}/h <span class="muted">at the last minute's rate</span></span></div>
        <div class="metric"><span class="label">Predicted TTFT (router)</span><span class="value">${fmtMs(routing.predicted_ttft_ms)}</span></div>
        ${backend}
      </div>`;
    renderSpark(p, series, card.querySelector(".spark"));
  }
  for (const card of [...root.children]) {
    if (!h.providers.some((p) => p.id === card.dataset.provider)) card.remove();
  }
}

function renderSpark(p, series, el) {
  const ps = series.providers.find((s) => s.id === p.id);
  const { n, xs } = completeSlots(series);
  if (!ps || !ps.decode_p50.slice(0, n).some(isNum)) {
    emptyState(el, "no decode measured yet in this span (needs streamed answers)");
    return;
  }
  clearEmpty(el);
  const base = isNum(p.baseline_decode_tokens_per_s) ? xs.map(() => p.baseline_decode_tokens_per_s) : xs.map(() => null);
  setChart("spark:" + p.id, el, {
    height: 80,
    yFmt: (v) => (isNum(v) ? v.toFixed(0) : ""),
    series: [
      { label: "decode tok/s", stroke: colourOf(p.id) },
      { label: "baseline", stroke: "#98a2b3", dash: [4, 4], width: 1 },
    ],
  }, [xs, ps.decode_p50.slice(0, n), base]);
}

// ---------- traffic share and cost ----------
function renderShareAndCost(series) {
  const { n, xs } = completeSlots(series);
  const elShare = $("chart-share");
  const elCost = $("chart-cost");
  const totals = xs.map((_, i) => series.providers.reduce((s, p) => s + p.requests[i], 0));
  if (!series.providers.length || !totals.some((t) => t > 0)) {
    emptyState(elShare, "no traffic yet in this span");
    emptyState(elCost, "no traffic yet in this span");
    return;
  }
  clearEmpty(elShare);
  clearEmpty(elCost);
  const provSeries = series.providers.map((p) => ({ label: p.id, stroke: colourOf(p.id) }));
  setChart("share", elShare, { height: 190, yFmt: (v) => fmtPct(v, 0), yRange: [0, 1], series: provSeries },
    [xs, ...series.providers.map((p) => ratio(p.requests.slice(0, n), totals))]);
  const perHour = 3600 / series.slot_s;
  setChart("cost", elCost, { height: 190, yFmt: (v) => (isNum(v) ? "$" + (v >= 1 ? v.toFixed(2) : v.toPrecision(2)) + "/h" : ""), series: provSeries },
    [xs, ...series.providers.map((p) => p.cost_usd.slice(0, n).map((c) => c * perHour))]);
}

// ---------- incidents ----------
function mergeIncidents(stored, open) {
  const byId = new Map(stored.map((i) => [i.id, i]));
  for (const o of open) byId.set(o.id, { ...byId.get(o.id), ...o });
  // Open first, then newest first.
  return [...byId.values()].sort((a, b) => (b.state === "open") - (a.state === "open") || b.onset_ms - a.onset_ms);
}

function renderIncidents(h, series) {
  const now = h.generated_at_unix_ms;
  // The same span as the charts: from the oldest slot (the gateway's start, when younger).
  const from = Math.min(series.t_unix_ms.length ? series.t_unix_ms[0] : now - 300000, now - 1000);
  const list = mergeIncidents(state.incidents, h.incidents);
  const inSpan = list.filter((i) => i.state === "open" || (i.resolved_ms ?? now) >= from);
  const tl = $("timeline");
  if (!inSpan.length) {
    tl.innerHTML = "";
    $("incidents").innerHTML = `<div class="empty">No incidents in this span. When a detector names a failure mode, it appears here with its evidence.</div>`;
    return;
  }
  const pos = (t) => Math.max(0, Math.min(100, ((t - from) / (now - from)) * 100));
  tl.innerHTML =
    inSpan
      .map((i) => {
        const end = i.resolved_ms ?? now;
        const left = pos(i.onset_ms);
        const width = Math.max(0.4, pos(end) - left);
        return `<div class="tl-row"><div class="tl-label" title="${esc(i.summary)}">${esc(modeTitle(i.mode))} · ${esc(i.subject)}</div>
          <div class="tl-track"><div class="tl-bar" data-severity="${esc(i.severity)}" data-open="${i.state === "open"}" style="left:${left}%;width:${width}%" title="${esc(fmtTime(i.onset_ms))} – ${i.resolved_ms ? esc(fmtTime(i.resolved_ms)) : "now"}"></div></div></div>`;
      })
      .join("") + `<div class="tl-axis"><div></div><div><span>${fmtTime(from)}</span><span>${fmtTime((from + now) / 2)}</span><span>now</span></div></div>`;
  $("incidents").innerHTML = inSpan.map((i) => incidentCard(i, now)).join("");
}

function incidentCard(i, now) {
  const facts = i.evidence?.facts || i.facts || [];
  const root = i.evidence?.root_cause ?? i.root_cause;
  const open = i.state === "open";
  const duration = open ? `open for ${fmtDur(now - i.onset_ms)}` : `lasted ${fmtDur((i.resolved_ms ?? now) - i.onset_ms)}, resolved ${fmtTime(i.resolved_ms)}`;
  return `<details class="incident" data-severity="${esc(i.severity)}" data-mode="${esc(i.mode)}" ${open ? "open" : ""}>
    <summary><div class="inc-head">
      <span class="inc-mode">${esc(modeTitle(i.mode))}</span>
      <span class="inc-tag ${open ? "open" : ""}">${open ? "open" : "resolved"}</span>
      <span class="inc-tag">${esc(i.severity)}</span>
      <span>${esc(i.subject)}</span>
      <span class="muted">onset ${fmtTime(i.onset_ms)} · ${esc(duration)}</span>
    </div>
    <div class="inc-summary">${esc(i.summary)}</div></summary>
    ${facts.length ? `<ul class="facts">${facts.map((f) => `<li>${esc(f.detail)}</li>`).join("")}</ul>` : ""}
    ${root ? `<div class="inc-root"><strong>Root cause:</strong> ${esc(typeof root === "string" ? root : root.detail || root.summary || JSON.stringify(root))}</div>` : ""}
    ${i.action ? `<div class="inc-action"><strong>Action:</strong> ${esc(i.action)}</div>` : ""}
  </details>`;
}

// ---------- canaries ----------
function renderCanaries(h) {
  const rows = new Map();
  const probes = new Set();
  for (const p of h.providers) {
    for (const c of p.canaries) {
      probes.add(c.probe);
      const key = `${p.id}\u0000${c.model}`;
      if (!rows.has(key)) rows.set(key, { provider: p.id, model: c.model, cells: {} });
      rows.get(key).cells[c.probe] = c;
    }
  }
  const el = $("canaries");
  if (!rows.size) {
    el.innerHTML = `<div class="empty">No canary results yet: the first round runs one canary interval after start (or canaries are off: [canaries] enabled = false).</div>`;
    return;
  }
  const cols = [...probes].sort();
  const now = h.generated_at_unix_ms;
  el.innerHTML = `<div class="canary-grid"><table><thead><tr><th>provider</th><th>model</th>${cols.map((c) => `<th>${esc(c.replace(/_/g, " "))}</th>`).join("")}</tr></thead><tbody>${[...rows.values()]
    .map(
      (r) => `<tr data-provider="${esc(r.provider)}"><td>${esc(r.provider)}</td><td class="muted">${esc(r.model)}</td>${cols
        .map((c) => {
          const x = r.cells[c];
          if (!x) return `<td class="muted">not run</td>`;
          const title = `${x.reason}${x.answer ? "\nanswer: " + x.answer : ""}`;
          return x.pass
            ? `<td class="cell-pass" title="${esc(title)}">✓ pass <span class="muted">${fmtMs(x.latency_ms)} · ${ago(x.at_unix_ms, now)}</span></td>`
            : `<td class="cell-fail" title="${esc(title)}">✗ ${esc((x.signal || "fail").replace(/_/g, " "))} <span class="muted">${esc(x.reason)} · ${ago(x.at_unix_ms, now)}</span>${x.counted ? "" : ' <span class="counted">(not counted: never passed here or on a peer)</span>'}</td>`;
        })
        .join("")}</tr>`,
    )
    .join("")}</tbody></table></div>`;
}

// ---------- dependencies ----------
function renderDeps(h) {
  $("deps-section").hidden = !h.dependencies.length;
  $("deps").innerHTML = h.dependencies
    .map((d) => `<div class="panel"><strong>${esc(d.name)}</strong> · latency ${fmtMs(d.latency_ms)} <span class="muted">baseline ${fmtMs(d.baseline_ms)}</span>${d.failing ? ' · <span class="status-err">failing</span>' : ""}${isNum(d.anomalous_since_unix_ms) ? ` · <span class="status-err">anomalous since ${fmtTime(d.anomalous_since_unix_ms)}</span>` : ""}</div>`)
    .join("");
}

// ---------- polling ----------
let pollTimer = null;
async function poll() {
  clearTimeout(pollTimer);
  try {
    const [health, providers, series, incidents] = await Promise.all([
      api("/api/health"),
      api("/api/providers"),
      api("/api/series?span=" + state.span),
      api("/api/incidents?since=" + (state.span === "1h" ? "1h" : "10m") + "&limit=100"),
    ]);
    Object.assign(state, { health, providers, series, incidents });
    $("banner").hidden = true;
    $("logout").hidden = !sessionStorage.getItem(TOKEN_KEY);
    render();
    fillFilterOptions(providers);
  } catch (e) {
    if (e instanceof AuthError) {
      showLogin();
      return;
    }
    $("banner").hidden = false;
    $("banner").textContent = `Cannot reach the gateway's admin API (${e.message}); showing the last figures, retrying.`;
  }
  pollTimer = setTimeout(poll, POLL_MS);
}

function render() {
  const { health: h, providers, series } = state;
  renderHeader(h);
  renderKpis(h, series);
  renderOpenIncidents(h);
  renderProviders(h, providers, series);
  renderShareAndCost(series);
  renderIncidents(h, series);
  renderCanaries(h);
  renderDeps(h);
}

$("span").addEventListener("change", (e) => {
  state.span = e.target.value;
  poll();
});

// ---------- request explorer ----------
function fillFilterOptions(providers) {
  const form = $("filters");
  const fill = (name, values) => {
    const sel = form.elements[name];
    const have = new Set([...sel.options].map((o) => o.value));
    for (const v of values) if (!have.has(v)) sel.add(new Option(v, v));
  };
  fill("provider", providers.map((p) => p.id));
  fill("model", [...new Set(providers.flatMap((p) => p.models))].sort());
}

function filterQuery() {
  const f = new FormData($("filters"));
  const q = new URLSearchParams();
  for (const k of ["provider", "model", "status", "since", "source"]) if (f.get(k)) q.set(k, f.get(k));
  const slower = String(f.get("slower_than") || "").trim().replace(/\s+/g, "");
  if (slower) q.set("slower_than", /^\d+(\.\d+)?$/.test(slower) ? slower + "ms" : slower);
  q.set("limit", "200");
  return q;
}

async function loadRequests() {
  clearTimeout(state.requestsTimer);
  const form = $("filters");
  try {
    const rows = await api("/api/requests?" + filterQuery());
    $("req-error").textContent = "";
    $("req-count").textContent = `${rows.length}${rows.length === 200 ? "+" : ""} requests`;
    const body = document.querySelector("#requests tbody");
    body.innerHTML = rows.length
      ? rows.map(requestRow).join("")
      : `<tr><td colspan="10" class="empty">No request in the log matches these filters.</td></tr>`;
  } catch (e) {
    if (e instanceof AuthError) return showLogin();
    $("req-error").textContent = e.message;
  }
  if (form.elements.live.checked) state.requestsTimer = setTimeout(loadRequests, EXPLORER_MS);
}

function requestRow(r) {
  const err = r.status >= 400;
  return `<tr data-id="${esc(r.request_id)}">
    <td>${fmtTime(r.ts_ms)}</td><td>${esc(r.requested_model || "–")}</td><td>${esc(r.provider || "–")}</td>
    <td class="${err ? "status-err" : ""}">${esc(r.status)}${r.error_type ? " " + esc(r.error_type) : ""}</td>
    <td class="num">${fmtMs(r.ttft_ms)}</td><td class="num">${fmtMs(r.e2e_ms)}</td><td class="num">${fmtTps(r.decode_tps)}</td>
    <td class="num">${r.prompt_tokens ?? "–"} / ${r.completion_tokens ?? "–"}</td><td class="num">${fmtUsd(r.cost_usd)}</td>
    <td class="reason">${esc(r.route_reason || "")}</td></tr>`;
}

$("filters").addEventListener("change", () => loadRequests());
$("filters").addEventListener("submit", (e) => {
  e.preventDefault();
  loadRequests();
});
document.querySelector("#requests tbody").addEventListener("click", (e) => {
  const tr = e.target.closest("tr[data-id]");
  if (tr) openRequest(tr.dataset.id);
});
$("detail-close").addEventListener("click", () => {
  $("detail").hidden = true;
});
document.addEventListener("keydown", (e) => {
  if (e.key === "Escape") $("detail").hidden = true;
});

async function openRequest(id) {
  $("detail").hidden = false;
  $("detail-title").textContent = "Request " + id;
  $("detail-body").innerHTML = `<div class="muted">loading…</div>`;
  try {
    const r = await api("/api/requests/" + encodeURIComponent(id));
    $("detail-body").innerHTML = requestDetail(r);
  } catch (e) {
    if (e instanceof AuthError) return showLogin();
    $("detail-body").innerHTML = `<p class="error">${esc(e.message)}</p>`;
  }
}

function kv(pairs) {
  return `<div class="kv">${pairs
    .filter(([, v]) => v !== undefined)
    .map(([k, v]) => `<div>${esc(k)}</div><div>${v === null || v === "" ? '<span class="muted">–</span>' : v}</div>`)
    .join("")}</div>`;
}

function requestDetail(r) {
  const yes = (b) => (b === null || b === undefined ? null : b ? "yes" : "no");
  const candidates = r.route_candidates || [];
  const attempts = r.attempts || [];
  const q = r.quality;
  return `
    <h3>What the client got</h3>
    ${kv([
      ["time", esc(new Date(r.ts_ms).toISOString())],
      ["request id", `<code>${esc(r.request_id)}</code>`],
      ["trace id", r.trace_id ? `<code>${esc(r.trace_id)}</code>` : null],
      ["operation", esc(r.operation)],
      ["source", esc(r.source)],
      ["client key id", r.client_key_id ? esc(r.client_key_id) : null],
      ["status", `<span class="${r.status >= 400 ? "status-err" : ""}">${esc(r.status)}</span>${r.error_type ? " " + esc(r.error_type) : ""}`],
      ["error", r.error_message ? esc(r.error_message) : null],
      ["within targets", yes(r.within_targets)],
      ["stream", yes(r.stream)],
      ["time to first token", fmtMs(r.ttft_ms)],
      ["total", fmtMs(r.e2e_ms)],
      ["decode rate", fmtTps(r.decode_tps)],
      ["longest gap between chunks", fmtMs(r.max_gap_ms)],
      ["finish reason", r.finish_reason ? esc(r.finish_reason) : null],
      ["tokens in / out", `${r.prompt_tokens ?? "–"} / ${r.completion_tokens ?? "–"}${r.tokens_counted ? ' <span class="muted">(counted by Candor: the provider sent no usage)</span>' : ""}`],
      ["max_tokens", r.max_tokens ?? null],
      ["cost", fmtUsd(r.cost_usd)],
      ["client deadline", r.deadline_ms != null ? fmtMs(r.deadline_ms) : null],
    ])}
    <h3>Inference context</h3>
    ${kv([
      ["requested model", esc(r.requested_model)],
      ["served model", r.served_model ? esc(r.served_model) : null],
      ["provider", r.provider ? esc(r.provider) : null],
      ["node", r.node ? esc(r.node) : null],
      ["quantization", r.quantization ? esc(r.quantization) : null],
      ["system fingerprint", r.system_fingerprint ? esc(r.system_fingerprint) : null],
      ["in flight at start", r.in_flight ?? null],
      ["provider queue depth", isNum(r.queue_depth) ? r.queue_depth.toFixed(0) : null],
      ["provider KV cache use", isNum(r.kv_usage) ? fmtPct(r.kv_usage) : null],
    ])}
    <h3>Routing decision</h3>
    <p>${esc(r.route_reason || "–")}</p>
    ${candidates.length ? `<table><thead><tr><th>provider</th><th>state</th><th class="num">score</th><th class="num">predicted</th><th>decision</th><th>why</th></tr></thead><tbody>${candidates
      .map((c) => `<tr><td>${esc(c.provider)}</td><td>${esc(c.state)}</td><td class="num">${isNum(c.score) ? c.score.toFixed(3) : "–"}</td><td class="num">${fmtMs(c.predicted_ms)}</td><td class="${c.decision === "chosen" ? "chosen" : ""}">${esc(c.decision)}</td><td>${esc(c.reason)}</td></tr>`)
      .join("")}</tbody></table>` : ""}
    <h3>Attempts</h3>
    ${attempts.length ? `<table><thead><tr><th>provider</th><th>started</th><th>outcome</th><th>blame</th><th class="num">connect</th><th class="num">headers</th><th class="num">TTFT</th><th class="num">total</th><th class="num">decode</th></tr></thead><tbody>${attempts
      .map((a) => `<tr><td>${esc(a.provider)}</td><td>${fmtTime(a.started_unix_ms)}</td><td>${esc(a.outcome)}${a.status ? " " + esc(a.status) : ""}${a.error ? `<br><span class="muted">${esc(a.error)}</span>` : ""}</td><td>${esc(a.blame || "–")}</td><td class="num">${fmtMs(a.connect_ms)}</td><td class="num">${fmtMs(a.headers_ms)}</td><td class="num">${fmtMs(a.ttft_ms)}</td><td class="num">${fmtMs(a.e2e_ms)}</td><td class="num">${fmtTps(a.decode_tps)}</td></tr>`)
      .join("")}</tbody></table>` : `<p class="muted">No upstream attempt (rejected before routing).</p>`}
    <h3>Output descriptors</h3>
    ${q ? kv(Object.entries(q).map(([k, v]) => [k.replace(/_/g, " "), isNum(v) && !Number.isInteger(v) ? v.toFixed(3) : esc(v)])) : `<p class="muted">None (not a chat or text answer, or it failed).</p>`}
    <details><summary class="muted">The log row as JSON</summary><pre class="raw">${esc(JSON.stringify(r, null, 2))}</pre></details>`;
}

// ---------- start ----------
poll();
loadRequests();
