/**
 * Self-fencing (DESIGN §3.3): a dispatcher that cannot renew its leases —
 * the control plane is gone — aborts its requests before the leases expire,
 * so the upstream sees them end (sockets closed) before the control plane
 * could grant them again. The leases' expiry is read from Postgres, which
 * outlives the control plane here; both clocks are this machine's.
 */
import pg from "pg";
import { afterAll, beforeAll, expect, test } from "vitest";
import type { Dispatcher } from "../../src/dispatcher/dispatcher.js";
import { startTestControlPlane, type TestControlPlane } from "../helpers/control-plane.js";
import {
  createTestBatch,
  items,
  startTestDispatcher,
  stateCounts,
  waitForBatch,
} from "../helpers/dispatcher-process.js";
import { startUpstream, type Upstream } from "../helpers/upstream.js";

const TTL_MS = 3000;
const LIMIT = 4;
const CONFIG = { leaseTtlMs: TTL_MS, reapIntervalMs: 200 };
let first: TestControlPlane;
let second: TestControlPlane | undefined;
let sql: pg.Pool;
let upstream: Upstream;
let dispatcher: Dispatcher;

beforeAll(async () => {
  first = await startTestControlPlane(CONFIG);
  sql = new pg.Pool({ connectionString: first.database.url, max: 2 });
  upstream = await startUpstream();
  // Defaults: margin min(max(2 s, ttl/5), ttl/2) = 1.5 s, renewal every 750 ms.
  dispatcher = startTestDispatcher(first.url, { id: "fenced" });
});
afterAll(async () => {
  await dispatcher?.stop(0);
  await upstream?.close();
  await sql?.end();
  await second?.stop();
  await first?.close();
});

test("control plane unreachable: requests aborted before their leases expire, then given back and sent again", async () => {
  await first.admin.setModelLimit({ model: "F", limit: LIMIT });
  // First deliveries hang; later ones answer.
  upstream.respond = (d) => (d.attempt === 1 ? { hang: true } : { delayMs: 10 });
  const batchId = await createTestBatch(first.batch, upstream.url, items("F", LIMIT));
  await upstream.until(() => upstream.gauge("F").current === LIMIT, 10_000, "hanging requests");
  // Wait for a renewal of every claim (its expiry in Postgres moves later), so the fence
  // is set by a renewal, not the grant.
  const expiries = () =>
    sql.query<{ id: string; expires: number }>(
      `SELECT id, extract(epoch FROM lease_expires_at) * 1000 AS expires FROM requests
       WHERE batch_id = $1 AND state = 'leased'`,
      [batchId],
    );
  const granted = new Map((await expiries()).rows.map((r) => [r.id, Number(r.expires)]));
  expect(granted.size).toBe(LIMIT);
  for (;;) {
    const now = (await expiries()).rows;
    // Still the same claims (a dispatcher that fenced itself meanwhile would fail here).
    expect(now.map((r) => r.id).sort()).toEqual([...granted.keys()].sort());
    if (now.every((r) => Number(r.expires) > granted.get(r.id)!)) break;
    await new Promise((r) => setTimeout(r, 50));
  }

  const port = Number(new URL(first.url).port);
  await first.stop();
  const stoppedAt = Date.now();
  const leases = await expiries();
  expect(leases.rows).toHaveLength(LIMIT);
  const expiresAt = new Map(leases.rows.map((r) => [r.id, Number(r.expires)]));

  await upstream.until(
    () => upstream.gauge("F").current === 0,
    TTL_MS + 2000,
    "the requests to be aborted",
  );
  const first4 = upstream.deliveries.slice(0, LIMIT);
  for (const d of first4) {
    expect(d.end).toBe("closed");
    const early = expiresAt.get(d.requestId)! - d.endedAt!;
    console.log(
      `request ${d.customId}: aborted ${d.endedAt! - stoppedAt} ms after the stop, ${early.toFixed(0)} ms before its lease expired`,
    );
    expect(early).toBeGreaterThan(0);
  }
  expect(dispatcher.stats().fenced).toBe(LIMIT);

  // Back up on the same port: the releases land (or are LOST, if the reaper
  // got there first) and the requests are granted again. A release may land
  // before the old lease's expiry: that is fine, the request was aborted first.
  second = await startTestControlPlane({ ...CONFIG, port }, first.database);
  await waitForBatch(second.batch, batchId, 20_000);
  expect(await stateCounts(sql, batchId)).toEqual({ completed: LIMIT });
  for (const d of first4) {
    const again = upstream.deliveries.filter((x) => x.requestId === d.requestId);
    expect(again.map((x) => x.attempt)).toEqual([1, 2]);
    expect(again[1]!.arrivedAt).toBeGreaterThanOrEqual(d.endedAt!);
  }
  // Fenced requests come back as releases: never recorded as failures.
  expect(dispatcher.stats().releases).toBe(LIMIT);
  expect(upstream.gauge("F").peak).toBe(LIMIT);
});
