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
 * Skips, loudly, where no Chromium is installed; with FUSILLADE_REQUIRE_BROWSER=1
 * (.ci/run installs it) a missing browser fails instead.
 * UPDATE_SCREENSHOT=1 writes docs/dashboard.png (the README's picture).
 */
import { execFileSync } from "node:child_process";
import { existsSync } from "node:fs";
import { chmod, mkdtemp, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { type Browser, chromium } from "playwright-core";
import { afterAll, beforeAll, expect, test } from "vitest";
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
    serve = spawnFusillade(
      ["serve", "--listen", "127.0.0.1:0", "--data-dir", dataDir, "--default-limit", "4"],
      { FUSILLADE_LOG_LEVEL: "warn", DATABASE_URL: "", FUSILLADE_WEB_DIR: webDir },
    );
    const [, url] = await serve.waitFor(/serving on (http:\/\/\S+)/, 60_000);
    const page = await browser!.newPage({ viewport: { width: 1280, height: 800 } });
    const errors: string[] = [];
    page.on("pageerror", (e) => errors.push(String(e)));
    page.on("console", (m) => {
      if (m.type() === "error") errors.push(m.text());
    });
    await page.goto(url!);
    await page.getByRole("heading", { name: "Batches" }).waitFor();

    // A batch the page has not seen: two requests fail (400), the rest take 100 ms each.
    upstream.respond = () => ({ delayMs: 100 });
    for (const id of ["M-3", "M-7"]) {
      upstream.script(id, [{ status: 400, body: '{"error":{"message":"bad prompt"}}' }]);
    }
    const { batch } = clients(url!, "connect-h1");
    const batchId = await createTestBatch(batch, upstream.url, items("M", 40));

    const row = page.locator(`tr[data-batch-id="${batchId}"]`);
    await row.waitFor({ timeout: 20_000 });
    if (process.env.UPDATE_SCREENSHOT === "1") {
      // The README's picture: the batch on its way (best effort: it runs for about a second).
      await expect
        .poll(async () => Number.parseInt((await row.locator(".pct").textContent()) ?? "0", 10), {
          timeout: 30_000,
          interval: 20,
        })
        .toBeGreaterThanOrEqual(30);
      await page.screenshot({ path: path.join(ROOT, "docs/dashboard.png") });
    }
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
    if (process.env.UPDATE_SCREENSHOT === "1") {
      await page.screenshot({ path: path.join(ROOT, "docs/dashboard-batch.png"), fullPage: true });
    }

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
    // runs, its page shows the priority and its share: its claims beside the model's, the
    // limit, the two batches sharing the model; once finished, no share.
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
    expect(cells[2]).toMatch(new RegExp(`^${all} / 4$`));
    expect(cells[3]).toBe("2");
    await expect
      .poll(() => page.locator('dd[data-count="completed"]').textContent(), { timeout: 30_000 })
      .toBe("8");
    await expect.poll(() => page.locator("section.shares").isHidden()).toBe(true);

    // Tenants, on the models page (local mode is admin): the weight set, and the default.
    const { admin } = clients(url!, "connect-h1");
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
  "with tokens, the page asks for one, keeps it in memory only, and works with it",
  async () => {
    const adminToken = "dashboard-test-admin-token-0123456789";
    const cp = await startTestControlPlane({ adminToken, webDir });
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
      await page.close();
    } finally {
      await cp.close();
    }
  },
  60_000,
);
