/**
 * Retries end to end: control plane, one dispatcher, a scripted upstream.
 * 500,500,200 → completed on attempt 3; 400 → failed at once with the body
 * excerpt; 429 + Retry-After: 1 → the next attempt no sooner than 1 s later.
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
  t = await startTestControlPlane({ reapIntervalMs: 200 });
  sql = new pg.Pool({ connectionString: t.database.url, max: 2 });
  upstream = await startUpstream();
  dispatcher = startTestDispatcher(t.url, { id: "retries" });
});
afterAll(async () => {
  await dispatcher?.stop(0);
  await upstream?.close();
  await sql?.end();
  await t?.close();
});

async function row(batchId: string, customId: string) {
  const r = await sql.query(
    `SELECT state, attempt, response_status, convert_from(response_body, 'UTF8') AS response_body, error_code, error_message
     FROM requests WHERE batch_id = $1 AND custom_id = $2`,
    [batchId, customId],
  );
  return r.rows[0];
}

test("500, 500, 200 → completed on attempt 3, with the same request id on every attempt", async () => {
  upstream.script("flaky", [{ status: 500 }, { status: 500 }, { status: 200, body: '{"ok":3}' }]);
  const batchId = await createTestBatch(
    t.batch,
    upstream.url,
    [{ customId: "flaky", model: "r1" }],
    {
      initialBackoffMs: 50,
    },
  );
  await waitForBatch(t.batch, batchId);
  const r = await row(batchId, "flaky");
  expect(r).toMatchObject({
    state: "completed",
    attempt: 3,
    response_status: 200,
    response_body: '{"ok":3}',
  });
  const seen = upstream.of("flaky");
  expect(seen.map((d) => d.status)).toEqual([500, 500, 200]);
  expect(new Set(seen.map((d) => d.requestId)).size).toBe(1);
  expect(seen.every((d) => d.authorization === "Bearer sk-dispatch-test")).toBe(true);
});

test("400 → failed at once, the body excerpt kept", async () => {
  upstream.script("bad", [{ status: 400, body: '{"error":{"message":"model does not exist"}}' }]);
  const batchId = await createTestBatch(t.batch, upstream.url, [{ customId: "bad", model: "r2" }]);
  await waitForBatch(t.batch, batchId);
  const r = await row(batchId, "bad");
  expect(r).toMatchObject({
    state: "failed",
    attempt: 1,
    response_status: 400,
    error_code: "http_error",
  });
  expect(r.response_body).toContain("model does not exist");
  expect(r.error_message).toContain("400");
  expect(upstream.of("bad")).toHaveLength(1);
});

test("429 with Retry-After: 1 → the next attempt arrives no sooner than 1 s later", async () => {
  upstream.script("limited", [{ status: 429, headers: { "retry-after": "1" } }, { status: 200 }]);
  const batchId = await createTestBatch(
    t.batch,
    upstream.url,
    [{ customId: "limited", model: "r3" }],
    {
      initialBackoffMs: 10,
    },
  );
  await waitForBatch(t.batch, batchId);
  expect(await row(batchId, "limited")).toMatchObject({ state: "completed", attempt: 2 });
  const [first, second] = upstream.of("limited");
  // The 429 was answered at first.endedAt; Retry-After counts from there.
  const gap = second!.arrivedAt - first!.endedAt!;
  expect(gap).toBeGreaterThanOrEqual(1000);
});

test("the dispatcher's counters agree with what the upstream answered", async () => {
  upstream.script("count-retry", [{ status: 500 }, { status: 200 }]);
  upstream.script("count-fail", [{ status: 400 }]);
  const list = ["count-ok", "count-retry", "count-fail"].map((customId) => ({
    customId,
    model: "r4",
  }));
  const before = dispatcher.stats();
  const batchId = await createTestBatch(t.batch, upstream.url, list, { initialBackoffMs: 10 });
  await waitForBatch(t.batch, batchId);
  // The batch is done in Postgres; the dispatcher counts a disposition when the answer to
  // its report arrives, a moment later (its state has no event: poll it).
  while (dispatcher.stats().held > 0 || dispatcher.stats().reportsPending > 0) {
    await new Promise((r) => setTimeout(r, 10));
  }
  const after = dispatcher.stats();
  const answers = list.flatMap((it) => upstream.of(it.customId));
  const ok = answers.filter((d) => d.status! < 300).length;
  const notOk = answers.length - ok;
  expect(after.completions - before.completions).toBe(ok);
  expect(after.failures - before.failures).toBe(notOk);
  const delta = (k: keyof typeof after.dispositions) =>
    after.dispositions[k] - before.dispositions[k];
  // One terminal outcome per request; every other answer was a retry.
  expect(delta("recorded")).toBe(list.length);
  expect(delta("requeued")).toBe(answers.length - list.length);
  expect([delta("lost"), delta("unreported")]).toEqual([0, 0]);
  expect(after.fenced - before.fenced).toBe(0);
});
