/**
 * Cancel mid-batch: the next renewal names the in-flight leases lost (batch
 * cancelled), the dispatcher aborts them — their sockets close at the
 * upstream within one renewal interval — and releases them; the counts add up.
 */
import pg from "pg";
import { afterAll, beforeAll, expect, test } from "vitest";
import type { Dispatcher } from "../../src/dispatcher/dispatcher.js";
import { BatchState } from "../../src/gen/fusillade/v1/resources_pb.js";
import { startTestControlPlane, type TestControlPlane } from "../helpers/control-plane.js";
import {
  createTestBatch,
  items,
  startTestDispatcher,
  stateCounts,
  waitForBatch,
} from "../helpers/dispatcher-process.js";
import { startUpstream, type Upstream } from "../helpers/upstream.js";

const RENEW_INTERVAL_MS = 300;
let t: TestControlPlane;
let sql: pg.Pool;
let upstream: Upstream;
let dispatcher: Dispatcher;

beforeAll(async () => {
  t = await startTestControlPlane({ reapIntervalMs: 200 });
  sql = new pg.Pool({ connectionString: t.database.url, max: 2 });
  upstream = await startUpstream();
  dispatcher = startTestDispatcher(t.url, { id: "cancel", renewIntervalMs: RENEW_INTERVAL_MS });
});
afterAll(async () => {
  await dispatcher?.stop(0);
  await upstream?.close();
  await sql?.end();
  await t?.close();
});

test("in-flight requests are aborted at the upstream within the renewal interval; the counts add up", async () => {
  await t.admin.setModelLimit({ model: "C", limit: 10 });
  // The first 10 answer; the next never do.
  upstream.respond = (d) => (d.seq <= 10 ? { delayMs: 20 } : { hang: true });
  const batchId = await createTestBatch(t.batch, upstream.url, items("C", 40));
  await upstream.until(
    () => upstream.deliveries.length === 20 && upstream.gauge("C").current === 10,
    20_000,
    "10 answered and 10 hanging",
  );
  const hanging = upstream.deliveries.slice(10);

  const cancelAt = Date.now();
  await t.batch.cancelBatch({ batchId });
  await upstream.until(
    () => hanging.every((d) => d.end === "closed"),
    5_000,
    "the hanging sockets to close",
  );
  const slowest = Math.max(...hanging.map((d) => d.endedAt! - cancelAt));
  console.log(
    `in-flight requests aborted ${slowest} ms after the cancel (renewal interval ${RENEW_INTERVAL_MS} ms)`,
  );
  // One interval until the renewal that sees the cancel, plus its round trip.
  expect(slowest).toBeLessThan(RENEW_INTERVAL_MS + 500);

  const status = await waitForBatch(t.batch, batchId, 10_000);
  expect(status.state).toBe(BatchState.CANCELLED);
  const c = status.counts!;
  expect(Number(c.completed)).toBe(10);
  expect(Number(c.canceled)).toBe(30);
  expect(c.completed + c.failed + c.canceled + c.expired + c.pending + c.inProgress).toBe(c.total);
  expect(Number(c.total)).toBe(40);
  // The counters are the truth (DESIGN §3.5).
  expect(await stateCounts(sql, batchId)).toEqual({ completed: 10, canceled: 30 });
  // Nothing was sent after the cancel.
  expect(upstream.deliveries.every((d) => d.arrivedAt <= cancelAt)).toBe(true);
  const s = dispatcher.stats();
  // The 10 running and the 5 buffered claims (prefetch 0.5 × 10 slots) were
  // all named lost by the renewal that saw the cancel, and all released.
  expect(s.lost).toBe(15);
  expect(s.releases).toBe(15);
});
