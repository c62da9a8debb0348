/**
 * The web dashboard in a real browser: `fusillade serve` runs a batch against
 * a loopback upstream while headless Chromium (Debian's package, driven by
 * playwright-core; nothing downloaded) shows the batch appear and reach 100 %,
 * then the batch's own page (live counters, the model, the failed requests and
 * one request's attempts). serve's /metrics carries its dispatcher thread's
 * metrics beside the control plane's. Then a slow batch of priority 5 beside
 * another of its model shows its priority and its share while it runs, and
 * the models page lists the tenants.
 *
 * Then: a batch's buttons by state (cancel confirmed, resume), the list's
 * failed counts and badges; a running model's running requests against the
 * limit with its buffered claims as queued, and the charts of the last
 * minutes; model routes (admins only).
 *
 * Skips, loudly, where no Chromium is installed; with FUSILLADE_REQUIRE_BROWSER=1
 * (.ci/run installs it) a missing browser fails instead.
 * Screenshots for review go to test-results/dashboard/ on every run;
 * UPDATE_SCREENSHOT=1 also writes the docs' pictures (docs/dashboard*.png).
 */
import { execFileSync } from "node:child_process";
import { existsSync } from "node:fs";
import { chmod, mkdir, mkdtemp, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { type Browser, chromium, type Page } from "playwright-core";
import { afterAll, beforeAll, expect, test } from "vitest";
import { CONTROL_PLANE_DEFAULTS } from "../../src/config/config.js";
import { parseAllowList } from "../../src/domain/endpoints.js";
import { TokenRole } from "../../src/gen/fusillade/v1/admin_service_pb.js";
import { BatchState } from "../../src/gen/fusillade/v1/resources_pb.js";
import { stopStaleServer } from "../../src/storage/embedded-postgres.js";
import { clients, startTestControlPlane } from "../helpers/control-plane.js";
import {
  createTestBatch,
  type FusilladeProcess,
  items,
  spawnFusillade,
} from "../helpers/dispatcher-process.js";
import { startUpstream, type Upstream } from "../helpers/upstream.js";

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
const CHROMIUM = [process.env.CHROMIUM_PATH, "/usr/bin/chromium", "/usr/bin/chromium-browser"].find(
  (p): p is string => p !== undefined && p !== "" && existsSync(p),
);

if (CHROMIUM === undefined) {
  if (process.env.FUSILLADE_REQUIRE_BROWSER === "1") {
    throw new Error(
      "FUSILLADE_REQUIRE_BROWSER=1 but no Chromium is installed (apt-get install chromium)",
    );
  }
  console.warn(
    "\n*** SKIPPING the dashboard browser test: no Chromium found (apt-get install -y chromium, or set CHROMIUM_PATH) ***\n",
  );
}

let dataDir: string;
let webDir: string;
let upstream: Upstream;
let serve: FusilladeProcess | undefined;
let browser: Browser | undefined;
let serveUrl: Promise<string> | undefined;

/** `fusillade serve` (local mode: the page is an admin's), started by the first test that needs it. */
function startServe(): Promise<string> {
  serveUrl ??= (async () => {
    serve = spawnFusillade(
      ["serve", "--listen", "127.0.0.1:0", "--data-dir", dataDir, "--default-limit", "4"],
      { FUSILLADE_LOG_LEVEL: "warn", DATABASE_URL: "", FUSILLADE_WEB_DIR: webDir },
    );
    const [, url] = await serve.waitFor(/serving on (http:\/\/\S+)/, 60_000);
    return url!;
  })();
  return serveUrl;
}

const ARTIFACTS = path.join(ROOT, "test-results", "dashboard");

/** Keeps a screenshot of the page for review; with UPDATE_SCREENSHOT=1, also as docs/`doc`. */
async function keepScreenshot(page: Page, name: string, doc?: string): Promise<void> {
  await mkdir(ARTIFACTS, { recursive: true });
  await page.screenshot({ path: path.join(ARTIFACTS, `${name}.png`), fullPage: true });
  if (doc !== undefined && process.env.UPDATE_SCREENSHOT === "1") {
    await page.screenshot({ path: path.join(ROOT, "docs", doc), fullPage: true });
  }
}

/** A page of the dashboard at `url` that collects the page's errors. */
async function openPage(url: string): Promise<{ page: Page; errors: string[] }> {
  const page = await browser!.newPage({ viewport: { width: 1280, height: 800 } });
  const errors: string[] = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  page.on("console", (m) => {
    if (m.type() === "error") errors.push(m.text());
  });
  await page.goto(url);
  return { page, errors };
}

beforeAll(async () => {
  if (CHROMIUM === undefined) return;
  dataDir = await mkdtemp(path.join(os.tmpdir(), "fusillade-test-dashboard-"));
  // The page from the current sources, into a folder of this test's own: dist/web is
  // rebuilt by `prepare` whenever a parallel test installs the package.
  webDir = path.join(dataDir, "web");
  execFileSync(
    "npx",
    ["vite", "build", "--config", "web/vite.config.ts", "--outDir", webDir, "--emptyOutDir"],
    { cwd: ROOT },
  );
  // As root, Postgres runs as `nobody`, which must get through mkdtemp's 0700.
  await chmod(dataDir, 0o755);
  upstream = await startUpstream();
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    // Root has no user namespace sandbox here.
    args: ["--no-sandbox", "--disable-dev-shm-usage"],
  });
});

afterAll(async () => {
  await browser?.close();
  if (serve) {
    serve.child.kill("SIGTERM");
    const timer = setTimeout(() => serve?.child.kill("SIGKILL"), 10_000);
    await serve.exited;
    clearTimeout(timer);
  }
  if (dataDir) {
    await stopStaleServer(path.join(dataDir, "pg")).catch(() => {});
    await rm(dataDir, { recursive: true, force: true });
  }
  await upstream?.close();
});

test.skipIf(CHROMIUM === undefined)(
  "the dashboard shows a batch appear and reach 100 %, then its details",
  async () => {
    const url = await startServe();
    const { page, errors } = await openPage(url);
    await page.getByRole("heading", { name: "Batches" }).waitFor();

    // A batch the page has not seen: two requests fail (400), the rest take 100 ms each.
    upstream.respond = () => ({ delayMs: 100 });
    for (const id of ["M-3", "M-7"]) {
      upstream.script(id, [{ status: 400, body: '{"error":{"message":"bad prompt"}}' }]);
    }
    const { batch } = clients(url, "connect-h1");
    const batchId = await createTestBatch(batch, upstream.url, items("M", 40));

    const row = page.locator(`tr[data-batch-id="${batchId}"]`);
    await row.waitFor({ timeout: 20_000 });
    await expect
      .poll(() => row.locator(".pct").textContent(), { timeout: 30_000, interval: 100 })
      .toBe("100%");
    await expect
      .poll(() => row.locator(".badge").textContent(), { timeout: 10_000 })
      .toBe("completed");

    // One batch: live counters (WatchBatch over HTTP/1.1), the model, the failures, attempts.
    await row.locator("a").click();
    await expect
      .poll(() => page.locator('dd[data-count="completed"]').textContent(), { timeout: 10_000 })
      .toBe("38");
    await expect(page.locator('dd[data-count="failed"]').textContent()).resolves.toBe("2");
    await page.locator('tr[data-model="M"]').waitFor();
    const failedRows = page.locator("tr.clickable");
    await expect.poll(() => failedRows.count(), { timeout: 10_000 }).toBe(2);
    await expect(failedRows.first().textContent()).resolves.toContain("400");
    await failedRows.first().click();
    await page.getByRole("heading", { name: /^Request M-3/ }).waitFor();
    await expect(page.locator(".attempts tbody tr").count()).resolves.toBe(1);

    // Models: the limit, editable (local mode is admin).
    await page.goto(`${url}/#/models`);
    const limit = page.locator('tr[data-model="M"] input.limit');
    await limit.waitFor();
    await expect(limit.inputValue()).resolves.toBe("4");
    expect(errors).toEqual([]);

    // serve's one /metrics: the control plane's and the dispatcher thread's.
    const text = await (await fetch(`${url}/metrics`)).text();
    expect(text).toMatch(/^fusillade_batches_created_total 1$/m);
    expect(text).toMatch(
      /^fusillade_dispatcher_attempts_total\{model="M",status_class="2xx",code="ok"\} 38$/m,
    );
    expect(text).toMatch(/^process_cpu_user_seconds_total /m);
    expect(text.match(/^# TYPE process_cpu_user_seconds_total /gm)).toHaveLength(1);

    // Fair share: two slow batches of one model (limit 4), the first of priority 5. While it
    // runs, its page shows the priority and its share: its running requests beside the
    // model's, the model's against the limit, the two batches sharing it; once finished, none.
    upstream.respond = (d) => ({ delayMs: d.model === "S" ? 1_000 : 100 });
    const sBatch = async (prefix: string, priority: number) => {
      const jsonl = items("S", 8, prefix)
        .map((it) =>
          JSON.stringify({
            custom_id: it.customId,
            method: "POST",
            url: "/v1/chat/completions",
            body: { model: it.model, messages: [] },
          }),
        )
        .join("\n");
      const { file } = await batch.createFile({
        jsonl: new TextEncoder().encode(jsonl),
        endpoint: upstream.url,
      });
      return (await batch.createBatch({ fileId: file!.id, priority })).batch!.id;
    };
    const urgent = await sBatch("U", 5);
    await sBatch("L", 0);
    await page.goto(`${url}/#/batch/${urgent}`);
    await expect
      .poll(() => page.locator(".batch-head .priority").textContent(), { timeout: 10_000 })
      .toBe(" · priority 5");
    const share = page.locator('tr[data-share="S"]');
    await share.waitFor({ timeout: 10_000 });
    // The first message may come before the dispatcher's first claim: wait for one.
    let cells: string[] = [];
    await expect
      .poll(
        async () => {
          cells = await share.locator("td").allTextContents();
          return cells[1];
        },
        { timeout: 10_000 },
      )
      .toMatch(/^ ?[1-9]\d* of \d+$/);
    expect(cells[0]).toBe("S");
    const [, mine, all] = /^ ?(\d+) of (\d+)$/.exec(cells[1]!) ?? [];
    expect(Number(mine)).toBeGreaterThan(0);
    expect(Number(mine)).toBeLessThanOrEqual(Number(all));
    // The model's running requests against the limit (never its claims: they include the
    // ones buffered at the dispatcher, and read "6 / 4").
    expect(cells[2]).toMatch(/^ [1-4] \/ 4 running$/);
    expect(cells[3]).toBe("2");
    await expect
      .poll(() => page.locator('dd[data-count="completed"]').textContent(), { timeout: 30_000 })
      .toBe("8");
    await expect.poll(() => page.locator("section.shares").isHidden()).toBe(true);

    // Tenants, on the models page (local mode is admin): the weight set, and the default.
    const { admin } = clients(url, "connect-h1");
    await admin.setTenantWeight({ tenant: "batch-team", weight: 3 });
    await page.goto(`${url}/#/models`);
    const tenant = page.locator('tr[data-tenant="batch-team"]');
    await tenant.waitFor();
    await expect(tenant.locator("td").allTextContents()).resolves.toEqual([
      "batch-team",
      "3",
      "0",
      "0",
    ]);
    expect(errors).toEqual([]);
  },
  120_000,
);

test.skipIf(CHROMIUM === undefined)(
  "a batch's buttons follow its state: cancel asks first, a cancelled batch resumes; the list shows failures",
  async () => {
    const url = await startServe();
    const { batch } = clients(url, "connect-h1");
    // F: every request fails (400). C: slow, to be cancelled while it runs, then resumed.
    let slowMs = 2_000;
    upstream.respond = (d) =>
      d.model === "F"
        ? { status: 400, body: '{"error":{"message":"bad prompt"}}' }
        : { delayMs: d.model === "C" ? slowMs : 50 };
    const allFailed = await createTestBatch(batch, upstream.url, items("F", 3));
    const { page, errors } = await openPage(url);

    // The list: a failed count, and a batch that failed whole is not green "completed".
    const row = page.locator(`tr[data-batch-id="${allFailed}"]`);
    await expect
      .poll(() => row.locator(".badge").textContent(), { timeout: 20_000 })
      .toBe("failed");
    await expect(row.locator(".badge").getAttribute("class")).resolves.toBe("badge failed");
    await expect(row.locator("td[data-failed]").textContent()).resolves.toBe("3");

    // A finished batch: no Cancel; Retry failed.
    await page.goto(`${url}/#/batch/${allFailed}`);
    await expect
      .poll(() => page.locator(".batch-head .badge").textContent(), { timeout: 20_000 })
      .toBe("failed");
    await expect(page.locator("#cancel").isDisabled()).resolves.toBe(true);
    await expect(page.locator("#retry").isVisible()).resolves.toBe(true);
    await expect(page.locator("#resume").isVisible()).resolves.toBe(false);

    // A running batch: Cancel asks first; "Keep" keeps it running.
    const slow = await createTestBatch(batch, upstream.url, items("C", 12));
    await page.goto(`${url}/#/batch/${slow}`);
    await expect.poll(() => page.locator("#cancel").isEnabled(), { timeout: 10_000 }).toBe(true);
    await expect(page.locator("#resume").isVisible()).resolves.toBe(false);
    await page.locator("#cancel").click();
    const dialog = page.locator("dialog.confirm");
    await dialog.waitFor();
    await expect(dialog.textContent()).resolves.toContain(`Cancel batch ${slow.slice(0, 8)}?`);
    await keepScreenshot(page, "cancel-confirmation");
    await dialog.getByRole("button", { name: "Keep" }).click();
    await dialog.waitFor({ state: "detached" });
    expect((await batch.getBatch({ batchId: slow })).batch!.state).toBe(BatchState.IN_PROGRESS);
    // Confirmed: cancelled; then no Cancel, and Resume.
    await page.locator("#cancel").click();
    await page.locator("dialog.confirm").getByRole("button", { name: "Cancel batch" }).click();
    await expect
      .poll(() => page.locator(".batch-head .badge").textContent(), { timeout: 20_000 })
      .toBe("cancelled");
    await expect(page.locator("#cancel").isDisabled()).resolves.toBe(true);
    await expect(page.locator("#resume").isVisible()).resolves.toBe(true);
    await expect(page.locator("#retry").isVisible()).resolves.toBe(false);
    // The model's row: cancelled requests are not counted as completed; one spelling.
    const count = async (k: string) =>
      Number(await page.locator(`dd[data-count="${k}"]`).textContent());
    const cancelled = await count("cancelled");
    const completed = await count("completed");
    expect(cancelled).toBeGreaterThan(0);
    expect(cancelled + completed).toBe(12);
    const cRow = page.locator('tr[data-model="C"]');
    await expect
      .poll(async () => (await cRow.locator("td").allTextContents()).slice(0, 7), {
        timeout: 10_000,
      })
      .toEqual(["C", "0", "0", String(completed), "0", String(cancelled), "0"]);
    expect(await page.locator("main").textContent()).not.toContain("canceled");
    await keepScreenshot(page, "cancelled-batch");

    // Resume: the batch runs again and the page follows it to the end.
    slowMs = 50;
    await page.locator("#resume").click();
    await expect
      .poll(() => page.locator('dd[data-count="completed"]').textContent(), { timeout: 30_000 })
      .toBe("12");
    await expect.poll(() => page.locator(".batch-head .badge").textContent()).toBe("completed");
    await expect(page.locator("#resume").isVisible()).resolves.toBe(false);
    expect(errors).toEqual([]);
    await page.close();
  },
  120_000,
);

test.skipIf(CHROMIUM === undefined)(
  "a running model reads as running against its limit, buffered claims as queued, with charts of the last minutes",
  async () => {
    const url = await startServe();
    const { batch } = clients(url, "connect-h1");
    // L: 400 ms each, 120 of them at limit 4 (about 12 s); two fail.
    upstream.respond = (d) => ({ delayMs: d.model === "L" ? 400 : 50 });
    for (const id of ["L-5", "L-9"]) {
      upstream.script(id, [{ status: 400, body: '{"error":{"message":"bad prompt"}}' }]);
    }
    const id = await createTestBatch(batch, upstream.url, items("L", 120));
    const { page, errors } = await openPage(url);
    // The README's picture: the list, this batch on its way beside the earlier tests' batches.
    const row = page.locator(`tr[data-batch-id="${id}"]`);
    await expect
      .poll(async () => Number.parseInt((await row.locator(".pct").textContent()) ?? "0", 10), {
        timeout: 20_000,
        interval: 50,
      })
      .toBeGreaterThanOrEqual(10);
    await keepScreenshot(page, "batches", "dashboard.png");
    await row.locator("a").click();

    // The dispatcher holds 4 slots and buffers claims beyond them (prefetch): running never
    // reads above the limit, the buffered claims and the pending requests read as queued.
    const model = page.locator('tr[data-model="L"] .usage');
    const share = page.locator('tr[data-share="L"] .usage');
    const attr = async (l: typeof model, a: string) => Number(await l.getAttribute(a));
    await expect
      .poll(async () => (await attr(model, "data-running")) * (await attr(model, "data-queued")), {
        timeout: 20_000,
        interval: 100,
      })
      .toBeGreaterThan(0);
    expect(await attr(model, "data-running")).toBeLessThanOrEqual(4);
    await expect(model.textContent()).resolves.toMatch(/^ [1-4] \/ 4 running · \d+ queued$/);
    await expect(share.textContent()).resolves.toMatch(/^ [0-4] \/ 4 running$/);
    // The batch's counters: running within the limit, and every request counted once.
    const [total, completed, failed, running, queued, cancelled, expired] = (
      await page.locator("dd[data-count]").allTextContents()
    ).map(Number);
    expect(running).toBeGreaterThan(0);
    expect(running).toBeLessThanOrEqual(4);
    expect(completed! + failed! + running! + queued! + cancelled! + expired!).toBe(total);

    // Charts: the batch's throughput, the model's running and queued, its upstream latency.
    const points = (chart: string, series: string) =>
      page
        .locator(`figure[data-chart="${chart}"] polyline[data-series="${series}"]`)
        .getAttribute("points", { timeout: 1_000 })
        .then((p) => (p ?? "").split(" ").length)
        .catch(() => 0);
    await expect.poll(() => points("finished", "finished"), { timeout: 20_000 }).toBeGreaterThan(2);
    // The batch's samples began on the list page; the model's begin on this page, one a
    // refresh (a second after the last one ended), so its third can come seconds after the
    // batch's: with Vitest's default of one second, this failed on a busy machine at 2 points.
    await expect
      .poll(() => points("L: running / 4", "running"), { timeout: 20_000 })
      .toBeGreaterThan(2);
    const latency = page.locator('figure[data-chart="L: latency"] [data-last="mean"]');
    await expect.poll(() => latency.textContent(), { timeout: 20_000 }).toMatch(/^mean \d+ ms$/);
    const meanMs = Number(/(\d+) ms/.exec((await latency.textContent()) ?? "")?.[1]);
    expect(meanMs).toBeGreaterThanOrEqual(400);
    expect(meanMs).toBeLessThan(2_000);
    const rate = await page
      .locator('figure[data-chart="finished"] [data-last="finished"]')
      .textContent();
    expect(Number(/([\d.]+)\/s/.exec(rate ?? "")?.[1])).toBeGreaterThan(0);
    await keepScreenshot(page, "running-batch", "dashboard-batch.png");

    // The models page: the same reading, and the model's charts.
    await page.goto(`${url}/#/models`);
    const usage = page.locator('tr[data-model="L"] .usage');
    await usage.waitFor();
    expect(Number(await usage.getAttribute("data-running"))).toBeLessThanOrEqual(4);
    await expect(usage.textContent()).resolves.toMatch(/^ \d \/ 4 running( · \d+ queued)?$/);
    // Pacing: what the dispatcher said in its Sync after its first attempt. Nothing has said
    // "slow down" and no rate is set: free, with at most the limit at once.
    await expect
      .poll(() => page.locator('tr[data-model="L"] td.pacing').textContent(), { timeout: 20_000 })
      .toMatch(/^free: [\d,]+\/min, 0 % 429, [1-4] at once$/);
    await expect.poll(() => points("L: running / 4", "running")).toBeGreaterThan(2);
    await page.locator('figure[data-chart="L: latency"]').waitFor();
    await keepScreenshot(page, "models", "dashboard-models.png");
    await expect
      .poll(async () => (await batch.getBatch({ batchId: id })).batch!.state, { timeout: 30_000 })
      .toBe(BatchState.COMPLETED);
    expect(errors).toEqual([]);
    await page.close();
  },
  120_000,
);

test.skipIf(CHROMIUM === undefined)(
  "routes: each model's endpoint, whether a key is set (never the key), the '*' route; set and delete",
  async () => {
    const url = await startServe();
    const { admin } = clients(url, "connect-h1");
    const secret = "sk-route-secret-0123456789";
    await admin.setRoute({ model: "gpt-x", endpoint: upstream.url, apiKey: secret });
    await admin.setRoute({ model: "*", endpoint: `${upstream.url}/any` });
    await admin.setRoute({ tenant: "team-a", model: "gpt-x", endpoint: `${upstream.url}/a` });
    const { page, errors } = await openPage(`${url}/#/routes`);
    const row = (tenant: string, model: string) =>
      page.locator(`tr[data-route="${model}"][data-tenant="${tenant}"]`);
    await row("", "gpt-x").waitFor();
    const cells = async (tenant: string, model: string) =>
      (await row(tenant, model).locator("td").allTextContents()).slice(0, 4);
    await expect(cells("", "gpt-x")).resolves.toEqual([
      "all tenants",
      "gpt-x",
      upstream.url,
      "set",
    ]);
    await expect(cells("", "*")).resolves.toEqual([
      "all tenants",
      "* default: every other model",
      `${upstream.url}/any`,
      "none",
    ]);
    await expect(cells("team-a", "gpt-x")).resolves.toEqual([
      "team-a",
      "gpt-x",
      `${upstream.url}/a`,
      "none",
    ]);
    expect(await page.content()).not.toContain(secret);

    // Set one from the page, then delete it: "Keep" keeps it, "Delete route" deletes it.
    await page.locator('input[name="model"]').fill("gpt-y");
    await page.locator('input[name="endpoint"]').fill(`${upstream.url}/y`);
    await page.locator('input[name="api_key"]').fill("sk-typed-key-987");
    await page.locator("#set-route").click();
    await row("", "gpt-y").waitFor();
    await expect(row("", "gpt-y").locator("td.key").textContent()).resolves.toBe("set");
    await expect(page.locator('input[name="api_key"]').inputValue()).resolves.toBe("");
    await keepScreenshot(page, "routes", "dashboard-routes.png");
    await row("", "gpt-y").getByRole("button", { name: "Delete…" }).click();
    const dialog = page.locator("dialog.confirm");
    await expect(dialog.textContent()).resolves.toContain("Delete the route of gpt-y");
    await keepScreenshot(page, "route-delete-confirmation");
    await dialog.getByRole("button", { name: "Keep" }).click();
    await dialog.waitFor({ state: "detached" });
    expect((await admin.listRoutes({})).routes.map((r) => r.model)).toContain("gpt-y");
    await row("", "gpt-y").getByRole("button", { name: "Delete…" }).click();
    await dialog.getByRole("button", { name: "Delete route" }).click();
    await row("", "gpt-y").waitFor({ state: "detached" });
    expect((await admin.listRoutes({})).routes.map((r) => r.model)).not.toContain("gpt-y");
    expect(errors).toEqual([]);
    await page.close();
  },
  60_000,
);

test.skipIf(CHROMIUM === undefined)(
  "with tokens, the page asks for one, keeps it in memory only, and works with it",
  async () => {
    const adminToken = "dashboard-test-admin-token-0123456789";
    const cp = await startTestControlPlane({
      adminToken,
      webDir,
      allowedEndpoints: parseAllowList("http://127.0.0.1:*", "test"),
    });
    try {
      const page = await browser!.newPage();
      await page.goto(cp.url);
      const form = page.locator("#token-form");
      await form.waitFor({ state: "visible" });
      await expect(page.locator("#conn").textContent()).resolves.toContain("Unauthenticated");
      await page.locator("#token").fill(adminToken);
      await page.locator("#token-form button").click();
      await form.waitFor({ state: "hidden" });
      await page.getByText("no batches").waitFor();
      // Memory only: nothing stored, and a reload asks again.
      // (A string: this file is compiled without the DOM's types.)
      const stored = await page.evaluate(
        "[localStorage.length, sessionStorage.length, document.cookie]",
      );
      expect(stored).toEqual([0, 0, ""]);
      await page.reload();
      await form.waitFor({ state: "visible" });

      // A client token: the routes page says they are for admins, and lists none.
      const { admin } = clients(cp.url, "connect-h1", adminToken);
      const { secret } = await admin.createToken({
        role: TokenRole.CLIENT,
        tenant: "team-a",
        name: "dashboard test client",
      });
      await page.locator("#token").fill(secret);
      await page.locator("#token-form button").click();
      await page.getByText("no batches").waitFor();
      await page.goto(`${cp.url}/#/routes`);
      await expect
        .poll(() => page.locator("main .note").textContent())
        .toBe("Routes are for admins only: this token is not an admin's.");
      await expect(page.locator("table.routes tbody tr").count()).resolves.toBe(0);
      await expect(page.locator("#set-route").count()).resolves.toBe(0);
      await keepScreenshot(page, "routes-client-token");

      // The models page, read-only: the limit and use of the models of its unfinished batch
      // (no dispatcher runs here: its 3 requests stay pending, queued), no Set, no tenants.
      const client = clients(cp.url, "connect-h1", secret);
      await createTestBatch(client.batch, upstream.url, items("Q", 3));
      await page.goto(`${cp.url}/#/models`);
      const q = page.locator('tr[data-model="Q"]');
      await q.waitFor();
      await expect(q.locator("td.limit").textContent()).resolves.toBe(
        `${CONTROL_PLANE_DEFAULTS.defaultLimit} default`,
      );
      await expect(q.locator(".usage").textContent()).resolves.toBe(
        ` 0 / ${CONTROL_PLANE_DEFAULTS.defaultLimit} running · 3 queued`,
      );
      await expect(page.locator("input.limit, tr[data-model] button").count()).resolves.toBe(0);
      await expect(page.getByRole("heading", { name: "Tenants" }).isVisible()).resolves.toBe(false);
      await expect(page.locator("main > .note").first().textContent()).resolves.toContain(
        "Read-only: the models of this token's unfinished batches",
      );
      await keepScreenshot(page, "models-client-token");
      await page.close();
    } finally {
      await cp.close();
    }
  },
  60_000,
);
