/**
 * A stale report (DESIGN §3.2), with real dispatchers: D1 finishes a request
 * but cannot report it (its control-plane replica is down) until after the
 * lease expired and D2, on the other replica, did the request again and
 * recorded it. D1's late report is LOST (dropped by D1 itself once its claim
 * has expired, or answered LOST by the control plane if it gets through
 * first: either way never recorded); D2's outcome stands.
 */
import pg from "pg";
import { afterAll, beforeAll, expect, test } from "vitest";
import type { Dispatcher } from "../../src/dispatcher/dispatcher.js";
import { startTestControlPlane, type TestControlPlane } from "../helpers/control-plane.js";
import {
  createTestBatch,
  startTestDispatcher,
  waitForBatch,
} from "../helpers/dispatcher-process.js";
import { startUpstream, type Upstream } from "../helpers/upstream.js";

const CONFIG = { leaseTtlMs: 2000, reapIntervalMs: 100 };
let cp1: TestControlPlane;
let cp2: TestControlPlane;
let cp2again: TestControlPlane | undefined;
let sql: pg.Pool;
let upstream: Upstream;
const dispatchers: Dispatcher[] = [];

beforeAll(async () => {
  cp1 = await startTestControlPlane(CONFIG);
  cp2 = await startTestControlPlane(CONFIG, cp1.database);
  sql = new pg.Pool({ connectionString: cp1.database.url, max: 2 });
  upstream = await startUpstream();
});
afterAll(async () => {
  await Promise.all(dispatchers.map((d) => d.stop(0)));
  await upstream?.close();
  await sql?.end();
  await cp2again?.stop();
  await cp2?.stop();
  await cp1?.close();
});

test("a report that arrives after the lease was granted again is LOST; the newer outcome is stored", async () => {
  await cp1.admin.setModelLimit({ model: "X", limit: 1 });
  upstream.script("stale", [
    { delayMs: 300, body: '{"from":"first"}' },
    { body: '{"from":"second"}' },
  ]);
  const d1 = startTestDispatcher(cp2.url, { id: "d1", shutdownFlushMs: 0 });
  dispatchers.push(d1);
  const batchId = await createTestBatch(cp1.batch, upstream.url, [
    { customId: "stale", model: "X" },
  ]);
  await upstream.until(() => upstream.of("stale").length === 1, 10_000, "the first delivery");
  const port2 = Number(new URL(cp2.url).port);
  await cp2.stop();
  dispatchers.push(startTestDispatcher(cp1.url, { id: "d2" }));

  // D1's request completes (not running: nothing to fence), its report waits;
  // the lease expires, the request is granted to D2 and recorded.
  await waitForBatch(cp1.batch, batchId, 15_000);
  const [first, second] = upstream.of("stale");
  expect(first!.end).toBe("answered");
  expect(second!.arrivedAt).toBeGreaterThan(first!.endedAt!);
  // D1 finished it and has not had it recorded.
  expect(d1.stats()).toMatchObject({ completions: 1 });
  expect(d1.stats().dispositions.recorded).toBe(0);

  cp2again = await startTestControlPlane({ ...CONFIG, port: port2 }, cp1.database);
  await new Promise<void>((resolve, reject) => {
    const end = Date.now() + 10_000;
    const poll = () => {
      if (d1.stats().held === 0) return resolve();
      if (Date.now() > end) return reject(new Error("d1's report never got through"));
      setTimeout(poll, 20);
    };
    poll();
  });
  expect(d1.stats().dispositions).toMatchObject({ lost: 1, recorded: 0 });
  const row = await sql.query(
    "SELECT state, attempt, convert_from(response_body, 'UTF8') AS response_body FROM requests WHERE batch_id = $1",
    [batchId],
  );
  expect(row.rows).toEqual([
    { state: "completed", attempt: 2, response_body: '{"from":"second"}' },
  ]);
});
