/**
 * SIGTERM to a dispatcher process: it stops taking leases, lets running
 * requests finish within the grace period, aborts and releases the rest (they
 * go straight back to pending, no waiting for the lease TTL), reports, and
 * exits 0. Nothing is lost: another dispatcher finishes the batch.
 */
import pg from "pg";
import { afterAll, beforeAll, expect, test } from "vitest";
import type { Dispatcher } from "../../src/dispatcher/dispatcher.js";
import { startTestControlPlane, type TestControlPlane } from "../helpers/control-plane.js";
import {
  createTestBatch,
  type FusilladeProcess,
  items,
  startDispatcherProcess,
  startTestDispatcher,
  stateCounts,
  waitForBatch,
} from "../helpers/dispatcher-process.js";
import { startUpstream, type Upstream } from "../helpers/upstream.js";

const GRACE_MS = 1000;
let t: TestControlPlane;
let sql: pg.Pool;
let upstream: Upstream;
let child: FusilladeProcess | undefined;
let successor: Dispatcher | undefined;

beforeAll(async () => {
  // A long TTL: were the released requests not released, nothing would
  // happen to them for a minute.
  t = await startTestControlPlane({ leaseTtlMs: 60_000, reapIntervalMs: 200 });
  sql = new pg.Pool({ connectionString: t.database.url, max: 2 });
  upstream = await startUpstream();
});
afterAll(async () => {
  await child?.stop("SIGKILL");
  await successor?.stop(0);
  await upstream?.close();
  await sql?.end();
  await t?.close();
});

test("SIGTERM: running requests finish within the grace or are released; exit 0; nothing lost", async () => {
  await t.admin.setModelLimit({ model: "S", limit: 6 });
  // S-0..S-3 answer after 300 ms (within the grace); S-4, S-5 hang on their
  // first delivery; the rest are never reached by the child.
  for (let i = 0; i < 4; i++) upstream.script(`S-${i}`, [{ delayMs: 300 }]);
  upstream.script("S-4", [{ hang: true }, { delayMs: 10 }]);
  upstream.script("S-5", [{ hang: true }, { delayMs: 10 }]);
  upstream.respond = () => ({ delayMs: 10 });
  child = await startDispatcherProcess({
    controlPlane: t.url,
    id: "terminated",
    capacity: 6,
    args: ["--shutdown-grace", `${GRACE_MS}ms`],
  });
  const batchId = await createTestBatch(t.batch, upstream.url, items("S", 20));
  await upstream.until(() => upstream.gauge("S").current === 6, 10_000, "6 requests in flight");

  const termAt = Date.now();
  child.child.kill("SIGTERM");
  const exit = await child.exited;
  const exitedAfter = Date.now() - termAt;
  console.log(`dispatcher exited ${exitedAfter} ms after SIGTERM (grace ${GRACE_MS} ms)`);
  expect(exit).toEqual({ code: 0, signal: null });
  expect(exitedAfter).toBeLessThan(GRACE_MS + 3000);

  // Nothing new was taken after the signal.
  expect(upstream.deliveries.filter((d) => d.arrivedAt > termAt)).toHaveLength(0);
  // The quick ones finished and were recorded; the hanging ones were cut at the grace.
  for (let i = 0; i < 4; i++) expect(upstream.of(`S-${i}`)[0]!.end).toBe("answered");
  for (const id of ["S-4", "S-5"]) {
    const d = upstream.of(id)[0]!;
    expect(d.end).toBe("closed");
    expect(d.endedAt! - termAt).toBeGreaterThanOrEqual(GRACE_MS - 50);
  }
  const after = await stateCounts(sql, batchId);
  expect(after).toEqual({ completed: 4, pending: 16 });
  const stopped = JSON.parse(
    child
      .stderr()
      .split("\n")
      .find((l) => l.includes('"msg":"dispatcher stopped"'))!,
  );
  // Released: the 2 cut at the grace, and the 3 buffered claims (prefetch
  // 0.5 × 6 slots) given back unsent at the signal.
  expect(stopped).toMatchObject({ held: 0, completions: 4, releases: 5, shutdownAborts: 2 });
  expect(stopped.dispositions).toMatchObject({ recorded: 4, requeued: 5, lost: 0, unreported: 0 });

  successor = startTestDispatcher(t.url, { id: "successor" });
  const status = await waitForBatch(t.batch, batchId, 20_000);
  expect(Number(status.counts!.completed)).toBe(20);
  expect(upstream.of("S-4").map((d) => d.attempt)).toEqual([1, 2]);
  expect(upstream.of("S-0")).toHaveLength(1);
});
