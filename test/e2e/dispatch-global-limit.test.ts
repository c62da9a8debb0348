/**
 * The limit is global (DESIGN §3.3) and reached: three dispatcher processes
 * against one control plane, model A limited to 5 and B to 20, 1,000
 * requests. Measured at the upstream. How fully the limit is used (§3.4) is a
 * speed, measured by `npm run bench` (bench/dispatch.ts), not here.
 */
import pg from "pg";
import { afterAll, beforeAll, expect, test } from "vitest";
import { tcpPortsOf } from "../faults/procfs.js";
import { startTestControlPlane, type TestControlPlane } from "../helpers/control-plane.js";
import {
  createTestBatch,
  type FusilladeProcess,
  items,
  startDispatcherProcesses,
  stateCounts,
  waitForBatch,
} from "../helpers/dispatcher-process.js";
import { startUpstream, type Upstream } from "../helpers/upstream.js";

let t: TestControlPlane;
let sql: pg.Pool;
let upstream: Upstream;
const children: FusilladeProcess[] = [];
/** Limits the test sets, and how many requests of each model it sends. */
const LIMIT = { A: 5, B: 20 } as const;
const COUNT = { A: 250, B: 750 } as const;
const TOTAL = COUNT.A + COUNT.B;

beforeAll(async () => {
  t = await startTestControlPlane();
  sql = new pg.Pool({ connectionString: t.database.url, max: 2 });
  upstream = await startUpstream();
  // 100–150 ms per answer: 1,000 requests take seconds, and an answer takes
  // much longer than a slot's turnover (report → grant → next request: ~30 ms
  // on a 2-core machine, more under load: with 20–50 ms answers B peaked at 18
  // of 20 at load average 15), so the limits are reached, not just approached.
  upstream.respond = () => ({ delayMs: 100 + Math.floor(Math.random() * 50) });
  children.push(
    ...(await startDispatcherProcesses(
      ["d1", "d2", "d3"].map((id) => ({ controlPlane: t.url, id, capacity: 16 })),
    )),
  );
});
afterAll(async () => {
  await Promise.all(children.map((c) => c.stop("SIGKILL")));
  await upstream?.close();
  await sql?.end();
  await t?.close();
});

test("three dispatcher processes: peak in flight ≤ 5 for A and ≤ 20 for B, both reached, every dispatcher sending; every request completed once", async () => {
  await t.admin.setModelLimit({ model: "A", limit: LIMIT.A });
  await t.admin.setModelLimit({ model: "B", limit: LIMIT.B });
  const list = [...items("A", COUNT.A), ...items("B", COUNT.B)];
  // Halfway through, the local ports of each dispatcher's sockets (they stay open between
  // requests): the upstream's deliveries from them say who sent what.
  const portsHalfway = upstream
    .until(() => upstream.deliveries.length >= TOTAL / 2, 50_000, "half the batch delivered")
    .then(() => Promise.all(children.map((c) => tcpPortsOf(c.pid))));
  const batchId = await createTestBatch(t.batch, upstream.url, list);
  const status = await waitForBatch(t.batch, batchId, 50_000);

  const a = upstream.gauge("A");
  const b = upstream.gauge("B");
  expect(a.peak).toBeLessThanOrEqual(LIMIT.A);
  expect(b.peak).toBeLessThanOrEqual(LIMIT.B);
  expect(a.peak).toBe(LIMIT.A);
  expect(b.peak).toBe(LIMIT.B);

  // Every custom id completed exactly once, counted in the database.
  const rows = await sql.query<{ custom_id: string; state: string; n: number }>(
    `SELECT custom_id, state, count(*)::int AS n FROM requests WHERE batch_id = $1 GROUP BY custom_id, state`,
    [batchId],
  );
  const completed = new Map(
    rows.rows.filter((r) => r.state === "completed").map((r) => [r.custom_id, r.n]),
  );
  expect(completed.size).toBe(TOTAL);
  for (const it of list) expect(completed.get(it.customId), it.customId).toBe(1);
  expect(await stateCounts(sql, batchId)).toEqual({ completed: TOTAL });
  expect(Number(status.counts!.completed)).toBe(TOTAL);

  // Each recorded response is one the upstream gave to that very request.
  const bodies = await sql.query<{ id: string; response_body: string }>(
    "SELECT id, convert_from(response_body, 'UTF8') AS response_body FROM requests WHERE batch_id = $1",
    [batchId],
  );
  for (const r of bodies.rows) expect(JSON.parse(r.response_body).request_id).toBe(r.id);
  // Every dispatcher took part: the upstream had requests from each one's sockets.
  const sent = (await portsHalfway).map(
    (ports) => upstream.deliveries.filter((d) => ports.has(d.remotePort)).length,
  );
  for (const [i, n] of sent.entries()) expect(n, `deliveries from d${i + 1}`).toBeGreaterThan(0);
});
