/**
 * Slots shared by demand (docs/capacity-leases.md): a dispatcher alone holds
 * a model's whole limit; a second one that joins gets its fair share as the
 * first hands slots back when requests finish; when the first stops, the
 * second grows back to the whole limit. The limit is measured at the upstream
 * throughout; the slots each holds, in its stats.
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

const LIMIT = 10;
/** Renewals (which carry hand-backs and growth when nothing else does) every 300 ms. */
const RENEW_MS = 300;

let t: TestControlPlane;
let upstream: Upstream;
const dispatchers: Dispatcher[] = [];

beforeAll(async () => {
  t = await startTestControlPlane();
  upstream = await startUpstream();
  upstream.respond = () => ({ delayMs: 30 + Math.floor(Math.random() * 20) });
});
afterAll(async () => {
  await Promise.all(dispatchers.map((d) => d.stop(0)));
  await upstream?.close();
  await t?.close();
});

/** Resolves when `check` holds, polling the dispatchers' own counters every 20 ms. */
async function until(check: () => boolean, what: string, timeoutMs = 10_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > end) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

test("a second dispatcher gets half the slots; the survivor gets them all back; never above the limit", async () => {
  await t.admin.setModelLimit({ model: "R", limit: LIMIT });
  const a = startTestDispatcher(
    t.url,
    { id: "ra", capacity: 100, renewIntervalMs: RENEW_MS },
    "ra",
  );
  dispatchers.push(a);
  const N = 1500;
  const batchId = await createTestBatch(t.batch, upstream.url, items("R", N));
  await upstream.until(() => upstream.gauge("R").current === LIMIT, 10_000, "A at the limit");
  expect(a.stats().slots).toEqual({ R: LIMIT });

  const b = startTestDispatcher(
    t.url,
    { id: "rb", capacity: 100, renewIntervalMs: RENEW_MS },
    "rb",
  );
  dispatchers.push(b);
  await until(
    () => a.stats().slots.R === LIMIT / 2 && b.stats().slots.R === LIMIT / 2,
    "A and B at half the limit each",
  );
  // Both send requests now: the upstream sees some from each.
  const arrivalsBefore = upstream.deliveries.length;
  const sentSince = (sender: string) =>
    upstream.deliveries.slice(arrivalsBefore).filter((d) => d.sender === sender).length;
  await upstream.until(
    () => sentSince("ra") > 0 && sentSince("rb") > 0,
    10_000,
    "deliveries from both A and B",
  );
  expect(upstream.gauge("R").peak).toBeLessThanOrEqual(LIMIT);

  // A leaves (gracefully: its slots are handed back at once); B takes the whole limit.
  await a.stop(5_000);
  await until(() => b.stats().slots.R === LIMIT, "B at the whole limit");
  await upstream.until(() => upstream.gauge("R").current === LIMIT, 10_000, "B at the limit");

  const status = await waitForBatch(t.batch, batchId, 60_000);
  expect(Number(status.counts!.completed)).toBe(N);
  expect(upstream.gauge("R").peak).toBe(LIMIT);
  expect(new Set(upstream.deliveries.map((d) => d.customId)).size).toBe(N);
});
