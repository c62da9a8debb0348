/**
 * The limit is global (DESIGN §3.3) and used (§3.4): three dispatcher
 * processes against one control plane, model A limited to 5 and B to 20,
 * 1,000 requests. Measured at the upstream.
 */
import pg from "pg";
import { afterAll, beforeAll, expect, test } from "vitest";
import { startTestControlPlane, type TestControlPlane } from "../helpers/control-plane.js";
import {
  createTestBatch,
  type FusilladeProcess,
  items,
  startDispatcherProcess,
  stateCounts,
  waitForBatch,
} from "../helpers/dispatcher-process.js";
import { startUpstream, type Upstream } from "../helpers/upstream.js";

let t: TestControlPlane;
let sql: pg.Pool;
let upstream: Upstream;
const children: FusilladeProcess[] = [];

beforeAll(async () => {
  t = await startTestControlPlane();
  sql = new pg.Pool({ connectionString: t.database.url, max: 2 });
  upstream = await startUpstream();
  // 20–50 ms per answer: 1,000 requests take seconds, and an answer takes
  // longer than a slot's turnover (report → grant → next request: ~30 ms on
  // a loaded 2-core machine), so the limits are reached, not just approached.
  upstream.respond = () => ({ delayMs: 20 + Math.floor(Math.random() * 30) });
  children.push(
    ...(await Promise.all(
      ["d1", "d2", "d3"].map((id) =>
        startDispatcherProcess({ controlPlane: t.url, id, capacity: 16 }),
      ),
    )),
  );
});
afterAll(async () => {
  await Promise.all(children.map((c) => c.stop("SIGKILL")));
  await upstream?.close();
  await sql?.end();
  await t?.close();
});

test("three dispatcher processes: peak in flight ≤ 5 for A and ≤ 20 for B, both reached; every request completed once", async () => {
  await t.admin.setModelLimit({ model: "A", limit: 5 });
  await t.admin.setModelLimit({ model: "B", limit: 20 });
  const list = [...items("A", 250), ...items("B", 750)];
  const started = Date.now();
  const batchId = await createTestBatch(t.batch, upstream.url, list);
  const status = await waitForBatch(t.batch, batchId, 50_000);
  const wallMs = Date.now() - started;

  const a = upstream.gauge("A");
  const b = upstream.gauge("B");
  // Use of the limit while the model had work left: from its first arrival to its last.
  const use = (model: string) => {
    const ds = upstream.deliveries.filter((d) => d.model === model);
    return upstream.averageInFlight(model, ds[0]!.arrivedAt, ds[ds.length - 1]!.arrivedAt);
  };
  const useA = use("A");
  const useB = use("B");
  console.log(
    `1,000 requests in ${wallMs} ms; peak in flight A=${a.peak} B=${b.peak}; ` +
      `mean in flight while work was left A=${useA.toFixed(2)} B=${useB.toFixed(2)}; ` +
      `deliveries ${upstream.deliveries.length}`,
  );
  for (const m of ["A", "B"]) {
    const g = upstream.turnoverGaps(m);
    const q = (p: number) => g[Math.min(g.length - 1, Math.floor(g.length * p))];
    console.log(`${m}: a freed slot stays empty p50 ${q(0.5)} ms, p90 ${q(0.9)} ms`);
  }
  expect(a.peak).toBeLessThanOrEqual(5);
  expect(b.peak).toBeLessThanOrEqual(20);
  expect(a.peak).toBe(5);
  expect(b.peak).toBe(20);

  // Every custom id completed exactly once, counted in the database.
  const rows = await sql.query<{ custom_id: string; state: string; n: number }>(
    `SELECT custom_id, state, count(*)::int AS n FROM requests WHERE batch_id = $1 GROUP BY custom_id, state`,
    [batchId],
  );
  const completed = new Map(
    rows.rows.filter((r) => r.state === "completed").map((r) => [r.custom_id, r.n]),
  );
  expect(completed.size).toBe(1000);
  for (const it of list) expect(completed.get(it.customId), it.customId).toBe(1);
  expect(await stateCounts(sql, batchId)).toEqual({ completed: 1000 });
  expect(Number(status.counts!.completed)).toBe(1000);

  // Each recorded response is one the upstream gave to that very request.
  const bodies = await sql.query<{ id: string; response_body: string }>(
    "SELECT id, convert_from(response_body, 'UTF8') AS response_body FROM requests WHERE batch_id = $1",
    [batchId],
  );
  for (const r of bodies.rows) expect(JSON.parse(r.response_body).request_id).toBe(r.id);
  // Every dispatcher took part.
  for (const c of children) expect(c.stderr()).toContain('"msg":"dispatcher started"');
});
