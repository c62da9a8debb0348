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
  bufferedClaims,
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
/**
 * How long after the grace the process may take to exit: it flushes its reports and
 * closes its connections, slower on a loaded 2-core machine. The deadline is the grace:
 * two of its requests hang forever, so without it the process would never exit.
 */
const EXIT_SLACK_MS = 10_000;
const LIMIT = 6;
/** Requests that answer within the grace, and the ones that hang past it. */
const QUICK = ["S-0", "S-1", "S-2", "S-3"];
const HANGING = ["S-4", "S-5"];
const N = 20;
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
  await t.admin.setModelLimit({ model: "S", limit: LIMIT });
  // The quick ones answer after 300 ms (within the grace); the hanging ones hang on their
  // first delivery; the rest are never reached by the child.
  for (const id of QUICK) upstream.script(id, [{ delayMs: 300 }]);
  for (const id of HANGING) upstream.script(id, [{ hang: true }, { delayMs: 10 }]);
  upstream.respond = () => ({ delayMs: 10 });
  child = await startDispatcherProcess({
    controlPlane: t.url,
    id: "terminated",
    capacity: LIMIT,
    args: ["--shutdown-grace", `${GRACE_MS}ms`],
  });
  const batchId = await createTestBatch(t.batch, upstream.url, items("S", N));
  await upstream.until(
    () => upstream.gauge("S").current === LIMIT,
    10_000,
    "the limit's worth of requests in flight",
  );

  const termAt = Date.now();
  child.child.kill("SIGTERM");
  const exit = await child.exited;
  const exitedAfter = Date.now() - termAt;
  console.log(`dispatcher exited ${exitedAfter} ms after SIGTERM (grace ${GRACE_MS} ms)`);
  expect(exit).toEqual({ code: 0, signal: null });
  expect(exitedAfter).toBeLessThan(GRACE_MS + EXIT_SLACK_MS);

  // Nothing new was taken after the signal.
  expect(upstream.deliveries.filter((d) => d.arrivedAt > termAt)).toHaveLength(0);
  // The quick ones finished and were recorded; the hanging ones were cut at the grace.
  for (const id of QUICK) expect(upstream.of(id)[0]!.end).toBe("answered");
  for (const id of HANGING) {
    const d = upstream.of(id)[0]!;
    expect(d.end).toBe("closed");
    expect(d.endedAt! - termAt).toBeGreaterThanOrEqual(GRACE_MS - 50);
  }
  const after = await stateCounts(sql, batchId);
  expect(after).toEqual({ completed: QUICK.length, pending: N - QUICK.length });
  const stopped = JSON.parse(
    child
      .stderr()
      .split("\n")
      .find((l) => l.includes('"msg":"dispatcher stopped"'))!,
  );
  // Released: the ones cut at the grace, and the buffered claims (the default prefetch's
  // share of the slots, at least one) given back unsent at the signal.
  const buffered = bufferedClaims(LIMIT);
  const released = HANGING.length + buffered;
  expect(stopped).toMatchObject({
    held: 0,
    completions: QUICK.length,
    releases: released,
    shutdownAborts: HANGING.length,
  });
  expect(stopped.dispositions).toMatchObject({
    recorded: QUICK.length,
    requeued: released,
    lost: 0,
    unreported: 0,
  });

  successor = startTestDispatcher(t.url, { id: "successor" });
  const status = await waitForBatch(t.batch, batchId, 20_000);
  expect(Number(status.counts!.completed)).toBe(N);
  for (const id of HANGING) expect(upstream.of(id).map((d) => d.attempt)).toEqual([1, 2]);
  for (const id of QUICK) expect(upstream.of(id)).toHaveLength(1);
});
