/**
 * A report the control plane cannot take (here: a response larger than the
 * control plane's message limit, RESOURCE_EXHAUSTED) fails its own request
 * with `report_rejected`, once; the other outcomes of the same reports are
 * recorded, and the batch finishes instead of holding its slots while the
 * same call is retried forever.
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

let t: TestControlPlane;
let sql: pg.Pool;
let upstream: Upstream;
let dispatcher: Dispatcher;

beforeAll(async () => {
  t = await startTestControlPlane({ maxMessageBytes: 64 * 1024 });
  sql = new pg.Pool({ connectionString: t.database.url, max: 2 });
  upstream = await startUpstream();
  dispatcher = startTestDispatcher(t.url, { id: "rejected" });
});
afterAll(async () => {
  await dispatcher?.stop(0);
  await upstream?.close();
  await sql?.end();
  await t?.close();
});

test("a response too large for the control plane fails alone with report_rejected; the rest complete; nothing stays leased", async () => {
  const big = `{"pad":"${"x".repeat(200 * 1024)}"}`;
  upstream.script("huge", [{ status: 200, body: big }]);
  const items = [
    { customId: "huge", model: "rr" },
    ...Array.from({ length: 30 }, (_, i) => ({ customId: `ok-${i}`, model: "rr" })),
  ];
  const batchId = await createTestBatch(t.batch, upstream.url, items, { maxRetries: 3 });
  const status = await waitForBatch(t.batch, batchId, 30_000);
  expect(status.counts).toMatchObject({ completed: 30n, failed: 1n });
  const rows = await sql.query(
    `SELECT custom_id, state, attempt, response_status, error_code, error_message
     FROM requests WHERE batch_id = $1`,
    [batchId],
  );
  const huge = rows.rows.find((r) => r.custom_id === "huge");
  expect(huge).toMatchObject({
    state: "failed",
    attempt: 1, // not run again: the same response would be rejected again
    response_status: 200,
    error_code: "report_rejected",
  });
  expect(huge.error_message).toMatch(/ResourceExhausted/);
  expect(upstream.of("huge")).toHaveLength(1);
  for (const r of rows.rows.filter((x) => x.custom_id !== "huge")) {
    expect(r).toMatchObject({ state: "completed", attempt: 1 });
  }
});
