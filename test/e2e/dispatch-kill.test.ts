/**
 * A dispatcher process killed with SIGKILL mid-batch (DESIGN §3.1–3.3): its
 * requests' sockets close at once, its leases hold their slots until they
 * expire, then go to another dispatcher; every request ends terminal, none is
 * recorded twice, and the limit holds throughout.
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

const LIMIT = 6;
const N = 60;
/**
 * Leases of 10 s: renewed every 3.3 s and fenced 8 s after the last renewal
 * (src/dispatcher/fencing.ts), the survivor (which shares this process with the control
 * plane and the upstream) has 4.7 s of stall to spare before it fences itself; 4 s leases
 * left it 1 s, and a loaded 2-core machine (load average 17) took more. The price: the
 * victim's work comes back after 10 s.
 */
const LEASE_TTL_MS = 10_000;
/**
 * Claims the victim buffers beyond its slots (the default prefetch's share of them, at
 * least one): claimed, never sent.
 */
const BUFFERED = bufferedClaims(LIMIT);
let t: TestControlPlane;
let sql: pg.Pool;
let upstream: Upstream;
let victim: FusilladeProcess | undefined;
let survivor: Dispatcher | undefined;

beforeAll(async () => {
  t = await startTestControlPlane({ leaseTtlMs: LEASE_TTL_MS, reapIntervalMs: 200 });
  sql = new pg.Pool({ connectionString: t.database.url, max: 2 });
  upstream = await startUpstream();
  // Started here, idle until the batch exists: a process start takes seconds under load,
  // and need not count against the test's own time.
  victim = await startDispatcherProcess({ controlPlane: t.url, id: "victim", capacity: LIMIT });
});
afterAll(async () => {
  await victim?.stop("SIGKILL");
  await survivor?.stop(0);
  await upstream?.close();
  await sql?.end();
  await t?.close();
});

test("SIGKILL mid-batch: leases re-granted only after they expire; every request terminal, none recorded twice", async () => {
  await t.admin.setModelLimit({ model: "K", limit: LIMIT });
  // The first request of each custom id hangs (the victim never sees an
  // answer); later deliveries answer after 50–100 ms.
  upstream.respond = (d) =>
    d.attempt === 1 && d.seq <= LIMIT
      ? { hang: true }
      : { delayMs: 50 + Math.floor(Math.random() * 50) };
  const batchId = await createTestBatch(t.batch, upstream.url, items("K", N));

  await upstream.until(
    () => upstream.gauge("K").current === LIMIT,
    20_000,
    "the victim's requests",
  );
  // The survivor can take nothing while the victim holds every slot.
  survivor = startTestDispatcher(t.url, { id: "survivor", capacity: 16 });
  const held = upstream.deliveries.slice(0, LIMIT);

  victim!.child.kill("SIGKILL");
  const killedAt = Date.now();
  await victim!.exited;
  await upstream.until(
    () => held.every((d) => d.end === "closed"),
    5_000,
    "the victim's sockets to close",
  );
  const expiry = await sql.query<{ id: string; lease_holder: string; expires: number }>(
    `SELECT id, lease_holder, extract(epoch FROM lease_expires_at) * 1000 AS expires
     FROM requests WHERE batch_id = $1 AND state = 'leased'`,
    [batchId],
  );
  expect(expiry.rows.map((r) => r.lease_holder)).toEqual(Array(LIMIT + BUFFERED).fill("victim"));
  const expiresAt = new Map(expiry.rows.map((r) => [r.id, Number(r.expires)]));
  for (const d of held) expect(expiresAt.has(d.requestId)).toBe(true);

  const status = await waitForBatch(t.batch, batchId);
  expect(Number(status.counts!.completed)).toBe(N);
  expect(await stateCounts(sql, batchId)).toEqual({ completed: N });

  // The victim's requests were sent again, each only after its lease expired.
  for (const d of held) {
    const again = upstream.deliveries.filter((x) => x.requestId === d.requestId);
    expect(again.map((x) => x.attempt)).toEqual([1, 2]);
    // 1 ms: Date.now() is whole milliseconds, Postgres keeps microseconds.
    expect(again[1]!.arrivedAt).toBeGreaterThanOrEqual(expiresAt.get(d.requestId)! - 1);
    expect(again[1]!.arrivedAt).toBeGreaterThan(killedAt);
  }
  // The counts below assume the survivor never fenced itself (see LEASE_TTL_MS); this
  // check first, so that a slow machine fails with its reason.
  expect(survivor.stats().fenced, "the survivor fenced itself (renewals too late)").toBe(0);
  const attempts = await sql.query<{ attempt: number; n: number }>(
    "SELECT attempt, count(*)::int AS n FROM requests WHERE batch_id = $1 GROUP BY attempt ORDER BY attempt",
    [batchId],
  );
  // A claim counts an attempt: the victim's buffered claims, reaped unsent,
  // count one too (the control plane cannot tell that they never left).
  expect(attempts.rows).toEqual([
    { attempt: 1, n: N - LIMIT - BUFFERED },
    { attempt: 2, n: LIMIT + BUFFERED },
  ]);
  // Everything else was delivered exactly once: recorded once, executed once.
  const perRequest = new Map<string, number>();
  for (const d of upstream.deliveries)
    perRequest.set(d.requestId, (perRequest.get(d.requestId) ?? 0) + 1);
  expect(perRequest.size).toBe(N);
  expect([...perRequest.values()].filter((n) => n === 2)).toHaveLength(LIMIT);
  expect(upstream.gauge("K").peak).toBe(LIMIT);
  expect(survivor.stats().dispositions).toMatchObject({ recorded: N, lost: 0 });
});
