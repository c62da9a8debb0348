/**
 * A model's limit raised and lowered while a batch runs (DESIGN §4): raising
 * it is used at once (the waiting long polls wake); lowering it stops new
 * requests within one renewal interval — requests already running finish,
 * and nothing new starts until the model is under its new limit. Measured at
 * the upstream.
 */
import { afterAll, beforeAll, expect, test } from "vitest";
import type { Dispatcher } from "../../src/dispatcher/dispatcher.js";
import { startTestControlPlane, type TestControlPlane } from "../helpers/control-plane.js";
import {
  createTestBatch,
  items,
  startTestDispatcher,
  waitForBatch,
} from "../helpers/dispatcher-process.js";
import { startUpstream, type Upstream } from "../helpers/upstream.js";

/**
 * A lowered limit takes slots back through each holder's next Sync: at once
 * when the change's notification reaches its WaitForWork, at the latest at
 * its next renewal.
 */
const RENEW_MS = 300;

let t: TestControlPlane;
let upstream: Upstream;
const dispatchers: Dispatcher[] = [];

beforeAll(async () => {
  t = await startTestControlPlane();
  upstream = await startUpstream();
  dispatchers.push(
    startTestDispatcher(t.url, { id: "l1", capacity: 16, renewIntervalMs: RENEW_MS }),
    startTestDispatcher(t.url, { id: "l2", capacity: 16, renewIntervalMs: RENEW_MS }),
  );
});
afterAll(async () => {
  await Promise.all(dispatchers.map((d) => d.stop(0)));
  await upstream?.close();
  await t?.close();
});

/** Arrivals after `since` with the count they brought the model to. */
function arrivalsAfter(since: number): number[] {
  // A +1 step in the timeline is an arrival; its value is the count after it.
  const out: number[] = [];
  let last = 0;
  for (const [at, model, n] of upstream.timeline) {
    if (model !== "L") continue;
    if (n > last && at >= since) out.push(n);
    last = n;
  }
  return out;
}

test("raised: the new limit is reached; lowered: no new request starts until under it", async () => {
  await t.admin.setModelLimit({ model: "L", limit: 3 });
  upstream.respond = () => ({ delayMs: 40 + Math.floor(Math.random() * 40) });
  const batchId = await createTestBatch(t.batch, upstream.url, items("L", 400));
  const count = () => upstream.deliveries.length;

  await upstream.until(() => count() >= 30, 20_000, "30 deliveries at limit 3");
  expect(upstream.gauge("L").peak).toBe(3);

  await t.admin.setModelLimit({ model: "L", limit: 12 });
  upstream.resetPeak("L");
  await upstream.until(
    () => upstream.gauge("L").current === 12,
    10_000,
    "12 in flight after raising the limit",
  );
  const atRaise = count();
  await upstream.until(() => count() >= atRaise + 60, 20_000, "60 more deliveries at limit 12");
  expect(upstream.gauge("L").peak).toBe(12);

  const loweredAt = Date.now();
  await t.admin.setModelLimit({ model: "L", limit: 2 });
  // Both dispatchers have read the lowered share and handed their slots back
  // (at once when the change's notification reached their WaitForWork, by
  // their next renewal otherwise), and the requests above it have finished.
  const slotsHeld = () => dispatchers.reduce((n, d) => n + (d.stats().slots.L ?? 0), 0);
  const drainedBy = Date.now() + 10_000;
  while (slotsHeld() > 2) {
    if (Date.now() > drainedBy) throw new Error(`slots held: ${slotsHeld()}, expected ≤ 2`);
    await new Promise((r) => setTimeout(r, 20));
  }
  await upstream.until(
    () => upstream.gauge("L").current <= 2,
    10_000,
    "the running requests to drain",
  );
  upstream.resetPeak("L");
  const atLower = count();
  await upstream.until(() => count() >= atLower + 30, 20_000, "30 more deliveries at limit 2");
  expect(upstream.gauge("L").peak).toBeLessThanOrEqual(2);
  expect(upstream.gauge("L").peak).toBe(2);
  // From one renewal interval after the change on (plus 100 ms for the Sync's
  // round trip), no arrival took the model above 2.
  const after = arrivalsAfter(loweredAt + RENEW_MS + 100);
  expect(Math.max(...after)).toBeLessThanOrEqual(2);

  // Back up, to finish quickly.
  await t.admin.setModelLimit({ model: "L", limit: 20 });
  const status = await waitForBatch(t.batch, batchId);
  expect(Number(status.counts!.completed)).toBe(400);
  expect(upstream.gauge("L").peak).toBe(20);
});
