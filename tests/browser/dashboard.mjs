// The dashboard in a real browser: Debian's chromium driven by playwright-core (never a
// browser download). Run by tests/dashboard.rs, which starts the gateway, two simulated
// providers and client traffic, and passes them here through the environment:
//   CANDOR_URL        the gateway, e.g. http://127.0.0.1:PORT
//   CANDOR_TOKEN      its admin token
//   CANDOR_FAULT_URL  the /sim/faults endpoint of the provider to break
//   CANDOR_FAULTY     that provider's id;  CANDOR_HEALTHY: the other one
//   CANDOR_BOUND_S    seconds the deadlock may take to show as an incident on the page
//   CANDOR_ARTIFACTS  where screenshots go
//   CHROMIUM          the browser (default /usr/bin/chromium)
import { chromium } from "playwright-core";
import { mkdirSync } from "node:fs";
import { join } from "node:path";

const env = (k, d) => {
  const v = process.env[k] ?? d;
  if (v === undefined) throw new Error(`${k} is not set`);
  return v;
};
const url = env("CANDOR_URL");
const token = env("CANDOR_TOKEN");
const faultUrl = env("CANDOR_FAULT_URL");
const faulty = env("CANDOR_FAULTY");
const healthy = env("CANDOR_HEALTHY");
const boundS = Number(env("CANDOR_BOUND_S", "20"));
const artifacts = env("CANDOR_ARTIFACTS");
mkdirSync(artifacts, { recursive: true });

const results = {};
function check(cond, message) {
  if (!cond) throw new Error(message);
}

const browser = await chromium.launch({
  executablePath: env("CHROMIUM", "/usr/bin/chromium"),
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
const page = await browser.newPage({ viewport: { width: 1440, height: 1000 } });
page.setDefaultTimeout(30000);
const pageErrors = [];
page.on("pageerror", (e) => pageErrors.push(e.message));
page.on("console", (m) => {
  if (m.type() === "error" && !/status of 401/.test(m.text())) pageErrors.push(m.text());
});
const shot = (name, fullPage = true) => page.screenshot({ path: join(artifacts, name), fullPage });

async function step(name, fn) {
  const t0 = Date.now();
  try {
    await fn();
    console.log(`ok   ${name} (${((Date.now() - t0) / 1000).toFixed(1)} s)`);
  } catch (e) {
    console.log(`FAIL ${name}: ${e.message}`);
    await shot("failure.png").catch(() => {});
    await browser.close();
    process.exit(1);
  }
}

await step("without the token the API answers 401 and the page asks for it", async () => {
  const r = await fetch(url + "/api/health");
  check(r.status === 401, `GET /api/health without a token: ${r.status}`);
  const body = await r.json();
  check(body?.error?.code === "invalid_admin_token", `401 body: ${JSON.stringify(body)}`);
  await page.goto(url + "/");
  await page.locator("#login").waitFor({ state: "visible" });
  check((await page.locator("#providers .card").count()) === 0, "provider cards shown without a token");
  await shot("01-login.png");
  await page.fill("#token", "not-the-token");
  await page.click("#login-form button[type=submit]");
  await page.locator("#login-error", { hasText: "refused" }).waitFor();
  await page.fill("#token", token);
  await page.click("#login-form button[type=submit]");
  await page.locator("#login").waitFor({ state: "hidden" });
  const stored = await page.evaluate(() => ({
    session: sessionStorage.getItem("candor.admin_token"),
    local: Object.keys(localStorage).length,
    cookies: document.cookie,
  }));
  check(stored.session === token, "the token is not in session storage");
  check(stored.local === 0 && stored.cookies === "", "the token leaked into local storage or a cookie");
});

await step("provider cards appear with live figures", async () => {
  for (const id of [faulty, healthy]) {
    const card = page.locator(`#providers .card[data-provider="${id}"]`);
    await card.waitFor();
    // P95 TTFT, decode now and traffic share carry measured numbers.
    await page.waitForFunction((id) => {
      const c = document.querySelector(`#providers .card[data-provider="${id}"]`);
      if (!c) return false;
      const values = [...c.querySelectorAll(".metric .value")].map((v) => v.textContent);
      return /\d+(\.\d+)? (ms|s)\b/.test(values[0]) && /\d+ tok\/s/.test(values[1]) && /\d+ %/.test(values[3]);
    }, id, { timeout: 30000 });
    check((await card.getAttribute("data-state")) === "healthy", `${id} is not healthy before the fault`);
  }
  await page.locator("#chart-share canvas").waitFor();
  await page.locator("#chart-sla canvas").waitFor();
  await page.waitForFunction(() => /\d/.test(document.querySelector("#cpm-value").textContent));
  const first = await page.textContent("#updated");
  await page.waitForFunction((first) => document.querySelector("#updated").textContent !== first, first, { timeout: 5000 });
  // The canary grid fills in once the first round has run.
  await page.locator("#canaries .canary-grid td.cell-pass").first().waitFor({ timeout: 30000 });
  await shot("02-live.png");
});

await step(`a deadlock injected into ${faulty} turns its card and opens an incident within ${boundS} s`, async () => {
  const r = await fetch(faultUrl, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ kind: "deadlock" }) });
  check(r.ok, `injecting the fault: HTTP ${r.status}`);
  const t0 = Date.now();
  await page.waitForFunction(({ faulty }) => {
    const c = document.querySelector(`#providers .card[data-provider="${faulty}"]`);
    return c && c.dataset.state !== "healthy"
      && document.querySelector('#incidents .incident[data-mode="batch_queue_deadlock"]')
      && [...document.querySelectorAll("#timeline .tl-label")].some((l) => l.textContent.includes(faulty));
  }, { faulty }, { timeout: boundS * 1000 });
  results.deadlock_named_after_s = (Date.now() - t0) / 1000;
  const card = page.locator(`#providers .card[data-provider="${faulty}"]`);
  const evidence = (await card.locator(".evidence li").allTextContents()).join(" | ");
  check(!/No evidence against it/.test(evidence), `no evidence on ${faulty}'s card: ${evidence}`);
  const incident = await page.locator('#incidents .incident[data-mode="batch_queue_deadlock"]').first().textContent();
  check(incident.includes(faulty) && /open/.test(incident), `incident text: ${incident}`);
  results.faulty_state = await card.getAttribute("data-state");
  results.evidence = evidence.replace(/\s+/g, " ");
  check((await page.locator(`#providers .card[data-provider="${healthy}"]`).getAttribute("data-state")) === "healthy", `${healthy} left healthy`);
  await page.waitForTimeout(3000); // let the traffic chart show the shift
  await shot("03-fault.png");
  await fetch(faultUrl, { method: "DELETE" });
});

await step("the request explorer filters and opens a request", async () => {
  await page.selectOption('#filters select[name="provider"]', healthy);
  await page.selectOption('#filters select[name="status"]', "ok");
  await page.waitForFunction((healthy) => {
    const rows = [...document.querySelectorAll("#requests tbody tr[data-id]")];
    return rows.length > 0 && rows.every((r) => r.children[2].textContent === healthy && r.children[3].textContent.startsWith("2"));
  }, healthy);
  const rows = await page.locator("#requests tbody tr[data-id]").count();
  results.explorer_rows = rows;
  // Read the id from the row clicked, in one turn of the page: the explorer refreshes every
  // 5 s, and a refresh between reading the first row and clicking it would open another.
  const id = await page.evaluate(() => {
    const row = document.querySelector("#requests tbody tr[data-id]");
    row.click();
    return row.dataset.id;
  });
  await page.locator("#detail").waitFor({ state: "visible" });
  await page.locator("#detail-body h3", { hasText: "Routing decision" }).waitFor();
  const detail = await page.textContent("#detail-body");
  check(detail.includes(id), "the detail does not show the request id");
  check(/Attempts/.test(detail) && detail.includes(healthy), "no attempt on the chosen provider in the detail");
  check(/chosen/.test(detail), "the routing decision does not say which provider was chosen");
  check(!detail.includes(token), "the admin token appears in the request detail");
  await shot("04-request.png", false);
  await page.keyboard.press("Escape");
  await page.locator("#detail").waitFor({ state: "hidden" });
});

await step("no script errors and no secret on the page", async () => {
  const html = await page.content();
  check(!html.includes(token), "the admin token appears in the page");
  check(pageErrors.length === 0, `errors in the page: ${pageErrors.join(" | ")}`);
});

console.log("RESULTS " + JSON.stringify(results));
await browser.close();
