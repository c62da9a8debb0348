/**
 * The batch methods through the API on a real socket: snapshots, counts
 * that match the rows, completion windows, cancel, retry, pagination, and
 * API keys that never come back out.
 */
import { type DescMessage, type MessageShape, toJsonString } from "@bufbuild/protobuf";
import { timestampMs } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, test } from "vitest";
import {
  CancelBatchResponseSchema,
  CreateBatchResponseSchema,
  CreateFileResponseSchema,
  GetBatchResponseSchema,
  GetBatchStatusResponseSchema,
  GetFileResponseSchema,
  ListBatchesResponseSchema,
  ListBatchRequestsResponseSchema,
  ListFilesResponseSchema,
  RetryBatchResponseSchema,
} from "../../src/gen/fusillade/v1/batch_service_pb.js";
import {
  BatchState,
  type RequestCounts,
  RequestState,
} from "../../src/gen/fusillade/v1/resources_pb.js";
import { startTestControlPlane, type TestControlPlane } from "../helpers/control-plane.js";

let t: TestControlPlane;
let sql: pg.Pool;

beforeAll(async () => {
  t = await startTestControlPlane();
  sql = new pg.Pool({ connectionString: t.database.url, max: 2 });
});
afterAll(async () => {
  await sql?.end();
  await t?.close();
});

const enc = new TextEncoder();
const ENDPOINT = "http://upstream.test";
const HOUR_MS = 3600 * 1000;
const UNKNOWN_ID = "00000000-0000-4000-8000-000000000000";

let fileSeq = 0;

/** A file of `n` lines (custom ids `<prefix>-1` … `<prefix>-n`); returns its id. */
async function fileOf(n: number, prefix = `f${++fileSeq}`, apiKey = ""): Promise<string> {
  const lines = Array.from({ length: n }, (_, i) =>
    JSON.stringify({
      custom_id: `${prefix}-${i + 1}`,
      method: "POST",
      url: "/v1/chat/completions",
      body: { model: "m-batches", i },
    }),
  );
  const { file } = await t.batch.createFile({
    filename: `${prefix}.jsonl`,
    jsonl: enc.encode(lines.join("\n")),
    endpoint: ENDPOINT,
    apiKey,
  });
  return file!.id;
}

/** A new batch of an `n`-line file; returns its id. */
async function batchOf(n: number, prefix?: string): Promise<string> {
  const { batch } = await t.batch.createBatch({ fileId: await fileOf(n, prefix) });
  return batch!.id;
}

/** What `p` rejected with; it must be a ConnectError. */
async function rejection(p: Promise<unknown>): Promise<ConnectError> {
  const e = await p.then(
    () => undefined,
    (err: unknown) => err,
  );
  expect(e, "the call should have failed").toBeInstanceOf(ConnectError);
  return e as ConnectError;
}

/** The batch's requests counted by state, straight from the table. */
async function sqlCounts(batchId: string): Promise<Record<string, number>> {
  const { rows } = await sql.query<{ state: string; n: number }>(
    `SELECT state, count(*)::int AS n FROM requests WHERE batch_id = $1 GROUP BY state`,
    [batchId],
  );
  return Object.fromEntries(rows.map((r) => [r.state, r.n]));
}

/** The API's counts in the table's state names, zeros left out. */
function apiCounts(c: RequestCounts | undefined): Record<string, number> {
  const named: Record<string, bigint> = {
    pending: c?.pending ?? 0n,
    leased: c?.inProgress ?? 0n,
    completed: c?.completed ?? 0n,
    failed: c?.failed ?? 0n,
    canceled: c?.canceled ?? 0n,
    expired: c?.expired ?? 0n,
  };
  return Object.fromEntries(
    Object.entries(named)
      .filter(([, v]) => v !== 0n)
      .map(([k, v]) => [k, Number(v)]),
  );
}

/** GetBatchStatus agrees with `SELECT state, count(*) … GROUP BY state`; returns the status. */
async function expectCountsTrue(batchId: string) {
  const status = await t.batch.getBatchStatus({ batchId });
  const fromSql = await sqlCounts(batchId);
  expect(apiCounts(status.counts)).toEqual(fromSql);
  const total = Object.values(fromSql).reduce((a, b) => a + b, 0);
  expect(status.counts?.total).toBe(BigInt(total));
  return status;
}

/** Finishes lines of a batch in SQL as a dispatcher would have: `state` for the given lines. */
async function finish(batchId: string, state: "completed" | "failed" | "expired", lines: number[]) {
  const done =
    state === "completed"
      ? `response_status = 200, response_body = '{"ok":true}'`
      : `error_code = '${state === "failed" ? "http_error" : "batch_expired"}', error_message = 'test'`;
  await sql.query(
    `UPDATE requests SET state = $2, ${done}, finished_at = now(), attempt = 3, updated_at = now()
     WHERE batch_id = $1 AND line = ANY($3::int[])`,
    [batchId, state, lines],
  );
}

describe("creating batches", () => {
  test("two batches from one file: each its own pending requests, counts true", async () => {
    const fileId = await fileOf(7, "twice");
    const a = (await t.batch.createBatch({ fileId })).batch!;
    const b = (await t.batch.createBatch({ fileId })).batch!;
    expect(a.id).not.toBe(b.id);
    for (const batch of [a, b]) {
      expect(batch.fileId).toBe(fileId);
      expect(batch.state).toBe(BatchState.IN_PROGRESS);
      expect(batch.counts?.total).toBe(7n);
      expect(batch.counts?.pending).toBe(7n);
      const status = await expectCountsTrue(batch.id);
      expect(status.state).toBe(BatchState.IN_PROGRESS);
      expect(await sqlCounts(batch.id)).toEqual({ pending: 7 });
    }
    const { rows } = await sql.query<{ batch_id: string; n: number; lines: number; ids: number }>(
      `SELECT batch_id, count(*)::int AS n, count(DISTINCT line)::int AS lines,
              count(DISTINCT custom_id)::int AS ids
       FROM requests WHERE batch_id = ANY($1::uuid[]) GROUP BY batch_id ORDER BY batch_id`,
      [[a.id, b.id]],
    );
    expect(rows.map((r) => [r.n, r.lines, r.ids])).toEqual([
      [7, 7, 7],
      [7, 7, 7],
    ]);
    // Changing one batch's requests leaves the other's alone.
    await finish(a.id, "completed", [1, 2]);
    expect(await sqlCounts(b.id)).toEqual({ pending: 7 });
    await expectCountsTrue(a.id);
    await expectCountsTrue(b.id);
  });

  test('completion_window defaults to "24h": expire_time is create_time + 24h', async () => {
    const { batch } = await t.batch.createBatch({ fileId: await fileOf(1) });
    expect(batch?.completionWindow).toBe("24h");
    const created = timestampMs(batch!.createTime!);
    expect(Math.abs(created - Date.now())).toBeLessThan(60_000);
    expect(timestampMs(batch!.expireTime!) - created).toBe(24 * HOUR_MS);

    const custom = (
      await t.batch.createBatch({ fileId: await fileOf(1), completionWindow: "1h30m" })
    ).batch!;
    expect(custom.completionWindow).toBe("1h30m");
    expect(timestampMs(custom.expireTime!) - timestampMs(custom.createTime!)).toBe(1.5 * HOUR_MS);
  });

  test.each(["soon", "24", "0s", "-1h", "31d", "24 h"])(
    "a bad completion_window (%j) is INVALID_ARGUMENT naming it, and makes no batch",
    async (completionWindow) => {
      const fileId = await fileOf(2);
      const e = await rejection(t.batch.createBatch({ fileId, completionWindow }));
      expect(e.code).toBe(Code.InvalidArgument);
      expect(e.rawMessage).toContain("completion_window");
      const { rows } = await sql.query(`SELECT 1 FROM batches WHERE file_id = $1`, [fileId]);
      expect(rows).toHaveLength(0);
    },
  );

  test("metadata and the retry policy are kept", async () => {
    const metadata = { team: "search", "run-id": "2025-03-01/7", empty: "" };
    const { batch } = await t.batch.createBatch({
      fileId: await fileOf(1),
      metadata,
      retryPolicy: { maxRetries: 2, initialBackoff: { seconds: 0n, nanos: 250_000_000 } },
    });
    expect(batch?.metadata).toEqual(metadata);
    expect(batch?.retryPolicy?.maxRetries).toBe(2);
    expect(batch?.retryPolicy?.initialBackoff).toMatchObject({ seconds: 0n, nanos: 250_000_000 });
    expect(batch?.retryPolicy?.maxBackoff).toMatchObject({ seconds: 60n, nanos: 0 });
    const got = await t.batch.getBatch({ batchId: batch!.id });
    expect(got.batch?.metadata).toEqual(metadata);
    expect(got.batch?.retryPolicy).toEqual(batch?.retryPolicy);
    // Unset max_retries takes the default.
    const dflt = await t.batch.createBatch({ fileId: await fileOf(1) });
    expect(dflt.batch?.retryPolicy?.maxRetries).toBe(5);
  });

  test.each([
    ["a 65-character metadata key", { metadata: { ["k".repeat(65)]: "v" } }, "metadata"],
    ["a 513-character metadata value", { metadata: { k: "v".repeat(513) } }, "metadata.k"],
    ["101 retries", { retryPolicy: { maxRetries: 101 } }, "retry_policy.max_retries"],
    ["-1 retries", { retryPolicy: { maxRetries: -1 } }, "retry_policy.max_retries"],
    [
      "17 metadata keys",
      { metadata: Object.fromEntries(Array.from({ length: 17 }, (_, i) => [`k${i}`, "v"])) },
      "metadata",
    ],
    ["a NUL in a metadata value", { metadata: { k: "a\0b" } }, "metadata.k"],
    ["a NUL in a metadata key", { metadata: { "k\0": "v" } }, "metadata"],
    ["a NUL in request_id", { requestId: "r\0" }, "request_id"],
    [
      "max_backoff below initial_backoff",
      { retryPolicy: { initialBackoff: { seconds: 10n }, maxBackoff: { seconds: 1n } } },
      "retry_policy.max_backoff",
    ],
  ])("%s is INVALID_ARGUMENT naming %s", async (_name, patch, field) => {
    const e = await rejection(t.batch.createBatch({ fileId: await fileOf(1), ...patch }));
    expect(e.code).toBe(Code.InvalidArgument);
    expect(e.rawMessage).toContain(field);
  });

  test("the same request_id gives the same batch and no second snapshot", async () => {
    const fileId = await fileOf(3);
    const a = await t.batch.createBatch({ fileId, requestId: "batch-idem-1" });
    const b = await t.batch.createBatch({ fileId, requestId: "batch-idem-1" });
    expect(b.batch?.id).toBe(a.batch?.id);
    const { rows } = await sql.query<{ n: number }>(
      `SELECT count(*)::int AS n FROM requests r JOIN batches b ON b.id = r.batch_id
       WHERE b.file_id = $1`,
      [fileId],
    );
    expect(rows[0]?.n).toBe(3);
  });

  test("an unknown, malformed or missing file_id", async () => {
    for (const fileId of [UNKNOWN_ID, "file-123"]) {
      const e = await rejection(t.batch.createBatch({ fileId }));
      expect(e.code).toBe(Code.NotFound);
    }
    const e = await rejection(t.batch.createBatch({ fileId: "" }));
    expect(e.code).toBe(Code.InvalidArgument);
    expect(e.rawMessage).toContain("file_id");
  });
});

describe("cancel", () => {
  test("cancels pending requests at once: CANCELLED, counts add up", async () => {
    const batchId = await batchOf(6);
    const { batch } = await t.batch.cancelBatch({ batchId });
    expect(batch?.state).toBe(BatchState.CANCELLED);
    expect(batch?.openaiStatus).toBe("cancelled");
    expect(batch?.counts).toMatchObject({ total: 6n, pending: 0n, canceled: 6n });
    expect(batch?.cancellingTime).toBeDefined();
    expect(batch?.cancelTime).toBeDefined();
    expect(batch?.finishTime).toBeDefined();
    expect(batch?.completeTime).toBeUndefined();
    expect(await sqlCounts(batchId)).toEqual({ canceled: 6 });
    const status = await expectCountsTrue(batchId);
    expect(status.state).toBe(BatchState.CANCELLED);
    const { requests } = await t.batch.listBatchRequests({ batchId });
    expect(requests.every((r) => r.state === RequestState.CANCELED)).toBe(true);
    expect(requests.every((r) => r.error?.code === "batch_cancelled" && r.finishTime)).toBe(true);
  });

  test("cancelling a cancelled batch again returns it unchanged (idempotent)", async () => {
    const batchId = await batchOf(2);
    const first = (await t.batch.cancelBatch({ batchId })).batch!;
    const again = (await t.batch.cancelBatch({ batchId })).batch!;
    expect(again.state).toBe(BatchState.CANCELLED);
    expect(again.cancellingTime).toEqual(first.cancellingTime);
    expect(again.counts).toEqual(first.counts);
    await expectCountsTrue(batchId);
  });

  test("with requests in flight: CANCELLING until they end, then CANCELLED", async () => {
    const batchId = await batchOf(4);
    await sql.query(
      `UPDATE requests SET state = 'leased', attempt = 1, lease_token = nextval('lease_token_seq'),
         lease_holder = 'test', lease_expires_at = now() + interval '1 hour'
       WHERE batch_id = $1 AND line IN (1, 2)`,
      [batchId],
    );
    const { batch } = await t.batch.cancelBatch({ batchId });
    expect(batch?.state).toBe(BatchState.CANCELLING);
    expect(batch?.counts).toMatchObject({ inProgress: 2n, canceled: 2n, pending: 0n });
    await expectCountsTrue(batchId);
    // Cancelling again while cancelling is fine too.
    expect((await t.batch.cancelBatch({ batchId })).batch?.state).toBe(BatchState.CANCELLING);
    // The dispatchers report the two as canceled.
    await sql.query(
      `UPDATE requests SET state = 'canceled', lease_token = NULL, lease_holder = NULL,
         lease_expires_at = NULL, finished_at = now(), error_code = 'batch_cancelled',
         error_message = 'aborted'
       WHERE batch_id = $1 AND state = 'leased'`,
      [batchId],
    );
    const status = await expectCountsTrue(batchId);
    expect(status.state).toBe(BatchState.CANCELLED);
  });

  test("cancelling a completed batch is FAILED_PRECONDITION", async () => {
    const batchId = await batchOf(3);
    await finish(batchId, "completed", [1, 2, 3]);
    const status = await expectCountsTrue(batchId);
    expect(status.state).toBe(BatchState.COMPLETED);
    const e = await rejection(t.batch.cancelBatch({ batchId }));
    expect(e.code).toBe(Code.FailedPrecondition);
    expect(e.rawMessage).toContain("completed");
    // Nothing changed.
    const after = await t.batch.getBatch({ batchId });
    expect(after.batch?.state).toBe(BatchState.COMPLETED);
    expect(after.batch?.cancellingTime).toBeUndefined();
    expect(await sqlCounts(batchId)).toEqual({ completed: 3 });
  });
});

describe("retry", () => {
  test("sends failed requests back to pending, by custom_id then all; counts follow", async () => {
    const batchId = await batchOf(6, "retry");
    await finish(batchId, "completed", [1, 2]);
    await finish(batchId, "failed", [3, 4, 5, 6]);
    expect((await expectCountsTrue(batchId)).state).toBe(BatchState.COMPLETED);

    const one = await t.batch.retryBatch({ batchId, customIds: ["retry-4"] });
    expect(one.retriedCount).toBe(1n);
    expect(one.batch?.state).toBe(BatchState.IN_PROGRESS);
    expect(one.batch?.counts).toMatchObject({ completed: 2n, failed: 3n, pending: 1n });
    expect(one.batch?.finishTime).toBeUndefined();
    expect(await sqlCounts(batchId)).toEqual({ completed: 2, failed: 3, pending: 1 });
    const { rows } = await sql.query(
      `SELECT line, attempt, error_code, finished_at FROM requests WHERE batch_id = $1 AND state = 'pending'`,
      [batchId],
    );
    expect(rows).toEqual([{ line: 4, attempt: 0, error_code: null, finished_at: null }]);

    const { requests } = await t.batch.listBatchRequests({
      batchId,
      states: [RequestState.FAILED],
    });
    const byId = await t.batch.retryBatch({ batchId, requestIds: [requests[0]!.id] });
    expect(byId.retriedCount).toBe(1n);
    expect(await sqlCounts(batchId)).toEqual({ completed: 2, failed: 2, pending: 2 });

    const rest = await t.batch.retryBatch({ batchId });
    expect(rest.retriedCount).toBe(2n);
    expect(await sqlCounts(batchId)).toEqual({ completed: 2, pending: 4 });
    await expectCountsTrue(batchId);
    // Completed requests are never retried.
    expect((await t.batch.retryBatch({ batchId })).retriedCount).toBe(0n);
  });

  test("an expired batch gets a new window and its expired requests go back", async () => {
    const batchId = await batchOf(3);
    await sql.query("BEGIN");
    try {
      await finish(batchId, "completed", [1]);
      await finish(batchId, "expired", [2, 3]);
      await sql.query(
        `UPDATE batches SET created_at = now() - interval '25 hours',
           expires_at = now() - interval '1 hour', finished_at = now() - interval '1 hour'
         WHERE id = $1`,
        [batchId],
      );
      await sql.query("COMMIT");
    } catch (e) {
      await sql.query("ROLLBACK");
      throw e;
    }
    const expired = await expectCountsTrue(batchId);
    expect(expired.state).toBe(BatchState.EXPIRED);

    const { batch, retriedCount } = await t.batch.retryBatch({ batchId });
    expect(retriedCount).toBe(2n);
    expect(batch?.state).toBe(BatchState.IN_PROGRESS);
    // The batch's own window (24h) again, from now.
    const expiresIn = timestampMs(batch!.expireTime!) - Date.now();
    expect(expiresIn).toBeGreaterThan(23 * HOUR_MS);
    expect(expiresIn).toBeLessThanOrEqual(24 * HOUR_MS);
    expect(await sqlCounts(batchId)).toEqual({ completed: 1, pending: 2 });
  });

  test("retrying with a completion_window sets the new window; a bad one is named", async () => {
    const batchId = await batchOf(2);
    await finish(batchId, "expired", [1, 2]);
    await sql.query(`UPDATE batches SET expires_at = now() - interval '1 minute' WHERE id = $1`, [
      batchId,
    ]);
    const bad = await rejection(t.batch.retryBatch({ batchId, completionWindow: "later" }));
    expect(bad.code).toBe(Code.InvalidArgument);
    expect(bad.rawMessage).toContain("completion_window");
    const { batch } = await t.batch.retryBatch({ batchId, completionWindow: "2h" });
    const expiresIn = timestampMs(batch!.expireTime!) - Date.now();
    expect(expiresIn).toBeGreaterThan(1.9 * HOUR_MS);
    expect(expiresIn).toBeLessThanOrEqual(2 * HOUR_MS);
  });

  test("a NUL in a retried custom_id is INVALID_ARGUMENT naming it", async () => {
    const batchId = await batchOf(1);
    const e = await rejection(t.batch.retryBatch({ batchId, customIds: ["ok", "x\0"] }));
    expect(e.code).toBe(Code.InvalidArgument);
    expect(e.rawMessage).toContain("custom_ids[1]");
  });

  test("a cancelled batch cannot be retried, but it can be resumed", async () => {
    const batchId = await batchOf(4);
    await finish(batchId, "completed", [1]);
    await finish(batchId, "failed", [2]);
    await t.batch.cancelBatch({ batchId });
    expect(await sqlCounts(batchId)).toEqual({ completed: 1, failed: 1, canceled: 2 });
    const e = await rejection(t.batch.retryBatch({ batchId }));
    expect(e.code).toBe(Code.FailedPrecondition);
    expect(e.rawMessage).toContain("resume");
    expect(await sqlCounts(batchId)).toEqual({ completed: 1, failed: 1, canceled: 2 });

    // Resume: cancelled and failed requests run again, with a fresh window.
    await sql.query(`UPDATE batches SET expires_at = now() + interval '1 minute' WHERE id = $1`, [
      batchId,
    ]);
    const { batch, retriedCount } = await t.batch.retryBatch({ batchId, resume: true });
    expect(retriedCount).toBe(3n);
    expect(batch?.state).toBe(BatchState.IN_PROGRESS);
    expect(batch?.cancellingTime).toBeUndefined();
    expect(batch?.cancelTime).toBeUndefined();
    expect(timestampMs(batch!.expireTime!) - Date.now()).toBeGreaterThan(23 * HOUR_MS);
    expect(await sqlCounts(batchId)).toEqual({ completed: 1, pending: 3 });
    await expectCountsTrue(batchId);
    // The claim query sees it as running again.
    const { rows } = await sql.query(
      `SELECT 1 FROM batches WHERE id = $1 AND cancelling_at IS NULL AND finished_at IS NULL`,
      [batchId],
    );
    expect(rows).toHaveLength(1);
  });

  test("an expired batch is resumed with the window asked for", async () => {
    const batchId = await batchOf(2);
    await finish(batchId, "expired", [1, 2]);
    await sql.query(`UPDATE batches SET expires_at = now() - interval '1 minute' WHERE id = $1`, [
      batchId,
    ]);
    const { batch, retriedCount } = await t.batch.retryBatch({
      batchId,
      resume: true,
      completionWindow: "3h",
    });
    expect(retriedCount).toBe(2n);
    expect(batch?.completionWindow).toBe("3h");
    const expiresIn = timestampMs(batch!.expireTime!) - Date.now();
    expect(expiresIn).toBeGreaterThan(2.9 * HOUR_MS);
    expect(expiresIn).toBeLessThanOrEqual(3 * HOUR_MS);
  });

  test("a cancelling batch is refused with the reason", async () => {
    const batchId = await batchOf(2);
    await sql.query(
      `UPDATE requests SET state = 'leased', lease_holder = 'd', lease_token = 1,
         lease_expires_at = now() + interval '1 hour', attempt = 1 WHERE batch_id = $1 AND line = 1`,
      [batchId],
    );
    await t.batch.cancelBatch({ batchId });
    const e = await rejection(t.batch.retryBatch({ batchId, resume: true }));
    expect(e.code).toBe(Code.FailedPrecondition);
    expect(e.rawMessage).toContain("cancelling");
  });

  test("a completion_window on a running batch moves its deadline, even with nothing to retry", async () => {
    const batchId = await batchOf(2);
    const before = (await t.batch.getBatch({ batchId })).batch!;
    expect(timestampMs(before.expireTime!) - Date.now()).toBeGreaterThan(23 * HOUR_MS);
    const { batch, retriedCount } = await t.batch.retryBatch({ batchId, completionWindow: "48h" });
    expect(retriedCount).toBe(0n);
    expect(batch?.completionWindow).toBe("48h");
    expect(timestampMs(batch!.expireTime!) - Date.now()).toBeGreaterThan(47 * HOUR_MS);
    const again = (await t.batch.getBatch({ batchId })).batch!;
    expect(timestampMs(again.expireTime!)).toBe(timestampMs(batch!.expireTime!));
  });

  test("a completion_window for a finished batch with nothing to retry is refused; nothing changes", async () => {
    const batchId = await batchOf(1);
    await finish(batchId, "completed", [1]);
    const before = (await t.batch.getBatch({ batchId })).batch!;
    const e = await rejection(t.batch.retryBatch({ batchId, completionWindow: "1h" }));
    expect(e.code).toBe(Code.FailedPrecondition);
    expect(e.rawMessage).toMatch(/completed and has no failed or expired requests/);
    const after = (await t.batch.getBatch({ batchId })).batch!;
    expect(after.completionWindow).toBe(before.completionWindow);
    expect(timestampMs(after.expireTime!)).toBe(timestampMs(before.expireTime!));
  });

  test("a custom_id or request id the batch does not have is NOT_FOUND; nothing changes", async () => {
    const batchId = await batchOf(2, "nf");
    await finish(batchId, "failed", [1, 2]);
    const e = await rejection(t.batch.retryBatch({ batchId, customIds: ["nf-1", "nonexistent"] }));
    expect(e.code).toBe(Code.NotFound);
    expect(e.rawMessage).toContain("custom_ids[1]");
    expect(e.rawMessage).toContain('"nonexistent"');
    const byId = await rejection(t.batch.retryBatch({ batchId, requestIds: [UNKNOWN_ID] }));
    expect(byId.code).toBe(Code.NotFound);
    expect(byId.rawMessage).toContain("request_ids[0]");
    expect(await sqlCounts(batchId)).toEqual({ failed: 2 });
  });
});

describe("breakdown", () => {
  test("GetBatchBreakdown: counts per model, holds, and the commonest errors", async () => {
    const lines = ["a", "a", "a", "b"].map((m, i) =>
      JSON.stringify({
        custom_id: `bd-${i + 1}`,
        method: "POST",
        url: "/v1/x",
        body: { model: `bd-${m}` },
      }),
    );
    const { file } = await t.batch.createFile({
      jsonl: enc.encode(lines.join("\n")),
      endpoint: ENDPOINT,
    });
    const batchId = (await t.batch.createBatch({ fileId: file!.id })).batch!.id;
    await sql.query(
      `UPDATE requests SET state = 'failed', finished_at = now(), response_status = 404,
         error_code = 'http_error', error_message = 'upstream answered 404'
       WHERE batch_id = $1 AND line IN (1, 2)`,
      [batchId],
    );
    await sql.query(
      `UPDATE requests SET not_before = now() + interval '1 hour', error_code = 'network_error',
         error_message = 'connect ECONNREFUSED' WHERE batch_id = $1 AND line = 3`,
      [batchId],
    );
    await sql.query(
      `UPDATE model_limits SET hold_until = now() + interval '1 hour' WHERE model = 'bd-b'`,
    );
    const res = await t.batch.getBatchBreakdown({ batchId });
    expect(
      res.models.map((m) => [m.model, apiCounts(m.counts), m.holdUntilTime !== undefined]),
    ).toEqual([
      ["bd-a", { failed: 2, pending: 1 }, false],
      ["bd-b", { pending: 1 }, true],
    ]);
    expect(res.errors).toMatchObject([
      { code: "http_error", statusCode: 404, failed: 2n, retrying: 0n },
      { code: "network_error", statusCode: 0, failed: 0n, retrying: 1n },
    ]);
    expect(res.errors[0]!.exampleMessage).toBe("upstream answered 404");
    const missing = await rejection(t.batch.getBatchBreakdown({ batchId: UNKNOWN_ID }));
    expect(missing.code).toBe(Code.NotFound);
  });
});

describe("one request", () => {
  test("ListBatchRequests filters by model; GetRequest shows a request's attempts", async () => {
    const lines = ["a", "b", "a"].map((m, i) =>
      JSON.stringify({
        custom_id: `gr-${i + 1}`,
        method: "POST",
        url: "/v1/x",
        body: { model: `gr-${m}` },
      }),
    );
    const { file } = await t.batch.createFile({
      jsonl: enc.encode(lines.join("\n")),
      endpoint: ENDPOINT,
    });
    const batchId = (await t.batch.createBatch({ fileId: file!.id })).batch!.id;
    const onlyA = await t.batch.listBatchRequests({ batchId, models: ["gr-a"] });
    expect(onlyA.requests.map((r) => r.customId)).toEqual(["gr-1", "gr-3"]);

    // Two attempts: the first a retriable failure, the second still running.
    const id = onlyA.requests[0]!.id;
    const lease = `UPDATE requests SET state = 'leased', lease_holder = 'd', lease_token = $2,
        lease_expires_at = now() + interval '1 hour', attempt = attempt + 1, updated_at = now()
      WHERE id = $1`;
    await sql.query(lease, [id, 1]);
    await sql.query(
      `UPDATE requests SET state = 'pending', lease_holder = NULL, lease_expires_at = NULL,
         error_code = 'http_error', error_message = 'upstream answered 503' WHERE id = $1`,
      [id],
    );
    await sql.query(lease, [id, 2]);
    const got = await t.batch.getRequest({ requestId: id });
    expect(got.request?.customId).toBe("gr-1");
    expect(got.attempts.map((a) => [a.attempt, a.outcome, a.endTime === undefined])).toEqual([
      [1, RequestState.PENDING, false],
      [2, RequestState.UNSPECIFIED, true],
    ]);
    const byCustomId = await t.batch.getRequest({ batchId, customId: "gr-3" });
    expect(byCustomId.request?.model).toBe("gr-a");
    expect(byCustomId.attempts).toEqual([]);
    const missing = await rejection(t.batch.getRequest({ batchId, customId: "nope" }));
    expect(missing.code).toBe(Code.NotFound);
    const noKey = await rejection(t.batch.getRequest({}));
    expect(noKey.code).toBe(Code.InvalidArgument);
    expect(noKey.rawMessage).toContain("batch_id");
  });
});

describe("listing", () => {
  test("ListBatches pages through a file's batches, newest first", async () => {
    const fileId = await fileOf(1, "listing");
    const ids: string[] = [];
    for (let i = 0; i < 5; i++) ids.push((await t.batch.createBatch({ fileId })).batch!.id);
    const pages: string[][] = [];
    let token = "";
    do {
      const page = await t.batch.listBatches({ fileId, pageSize: 2, pageToken: token });
      expect(page.batches.every((b) => b.fileId === fileId)).toBe(true);
      pages.push(page.batches.map((b) => b.id));
      token = page.nextPageToken;
    } while (token !== "");
    expect(pages.map((p) => p.length)).toEqual([2, 2, 1]);
    expect(pages.flat()).toEqual([...ids].reverse());
  });

  test("ListBatches without a filter: every batch once, in the table's newest-first order", async () => {
    const seen: string[] = [];
    let token = "";
    do {
      const page = await t.batch.listBatches({ pageSize: 3, pageToken: token });
      seen.push(...page.batches.map((b) => b.id));
      token = page.nextPageToken;
    } while (token !== "");
    const { rows } = await sql.query<{ id: string }>(
      `SELECT id FROM batches ORDER BY created_at DESC, id DESC`,
    );
    expect(seen).toEqual(rows.map((r) => r.id));
    expect(new Set(seen).size).toBe(seen.length);
  });

  test("ListBatches: an unknown or malformed file_id lists nothing; a bad token is INVALID_ARGUMENT", async () => {
    expect((await t.batch.listBatches({ fileId: UNKNOWN_ID })).batches).toEqual([]);
    expect((await t.batch.listBatches({ fileId: "nope" })).batches).toEqual([]);
    const forged = Buffer.from(JSON.stringify(["then", UNKNOWN_ID])).toString("base64url");
    for (const pageToken of ["garbage", forged]) {
      const e = await rejection(t.batch.listBatches({ pageToken }));
      expect(e.code).toBe(Code.InvalidArgument);
      expect(e.rawMessage).toContain("page_token");
    }
  });

  test("ListBatchRequests: page_size 3 over 10 lines gives every line once, in order", async () => {
    const batchId = await batchOf(10, "lbr");
    const pages: number[][] = [];
    let token = "";
    do {
      const page = await t.batch.listBatchRequests({ batchId, pageSize: 3, pageToken: token });
      pages.push(page.requests.map((r) => r.line));
      for (const r of page.requests) {
        expect(r.customId).toBe(`lbr-${r.line}`);
        expect(r.batchId).toBe(batchId);
        expect(r.state).toBe(RequestState.PENDING);
        expect(r.url).toBe(`${ENDPOINT}/v1/chat/completions`);
        expect(r.method).toBe("POST");
        expect(r.model).toBe("m-batches");
      }
      token = page.nextPageToken;
    } while (token !== "");
    expect(pages).toEqual([[1, 2, 3], [4, 5, 6], [7, 8, 9], [10]]);
  });

  test("ListBatchRequests filters by state", async () => {
    const batchId = await batchOf(10);
    await finish(batchId, "failed", [2, 5, 9]);
    await finish(batchId, "completed", [3]);
    const failed = await t.batch.listBatchRequests({ batchId, states: [RequestState.FAILED] });
    expect(failed.requests.map((r) => r.line)).toEqual([2, 5, 9]);
    expect(failed.requests.every((r) => r.error?.code === "http_error")).toBe(true);
    const done = await t.batch.listBatchRequests({ batchId, states: [RequestState.COMPLETED] });
    expect(done.requests.map((r) => [r.line, r.response?.statusCode])).toEqual([[3, 200]]);
    const pages: number[][] = [];
    let token = "";
    do {
      const page = await t.batch.listBatchRequests({
        batchId,
        states: [RequestState.FAILED, RequestState.COMPLETED],
        pageSize: 2,
        pageToken: token,
      });
      pages.push(page.requests.map((r) => r.line));
      token = page.nextPageToken;
    } while (token !== "");
    expect(pages).toEqual([
      [2, 3],
      [5, 9],
    ]);
    const none = await t.batch.listBatchRequests({ batchId, states: [RequestState.LEASED] });
    expect(none.requests).toEqual([]);

    const e = await rejection(
      t.batch.listBatchRequests({ batchId, states: [RequestState.UNSPECIFIED] }),
    );
    expect(e.code).toBe(Code.InvalidArgument);
    expect(e.rawMessage).toContain("states");
    const forged = Buffer.from(JSON.stringify(["x"])).toString("base64url");
    const tooBig = Buffer.from(JSON.stringify([2 ** 40])).toString("base64url");
    for (const pageToken of ["zzz", forged, tooBig]) {
      const bad = await rejection(t.batch.listBatchRequests({ batchId, pageToken }));
      expect(bad.code, bad.rawMessage).toBe(Code.InvalidArgument);
      expect(bad.rawMessage).toContain("page_token");
    }
  });
});

describe("delete", () => {
  const keysOf = async (fileId: string) =>
    (await sql.query("SELECT count(*)::int AS n FROM api_keys WHERE file_id = $1", [fileId]))
      .rows[0].n as number;
  const rowsOf = async (batchId: string) => {
    const r = await sql.query(
      `SELECT (SELECT count(*)::int FROM requests WHERE batch_id = $1) AS requests,
              (SELECT count(*)::int FROM request_events WHERE batch_id = $1) AS events`,
      [batchId],
    );
    return r.rows[0] as { requests: number; events: number };
  };

  test("a running batch is FAILED_PRECONDITION and keeps everything", async () => {
    const batchId = await batchOf(3);
    const e = await rejection(t.batch.deleteBatch({ batchId }));
    expect(e.code).toBe(Code.FailedPrecondition);
    expect(e.rawMessage).toMatch(/running.*cancel it first/);
    expect((await rowsOf(batchId)).requests).toBe(3);
  });

  test("a finished batch goes with its requests and events; its file's keys go with the file's last batch", async () => {
    const fileId = await fileOf(2, "del", "sk-delete-me-0123456789");
    const batchId = (await t.batch.createBatch({ fileId })).batch!.id;
    const second = (await t.batch.createBatch({ fileId })).batch!.id;
    await finish(batchId, "completed", [1, 2]);
    await t.batch.cancelBatch({ batchId: second });
    expect((await rowsOf(batchId)).events).toBeGreaterThan(0);
    expect(await keysOf(fileId)).toBe(1);

    await t.batch.deleteBatch({ batchId });
    expect(await rowsOf(batchId)).toEqual({ requests: 0, events: 0 });
    expect((await rejection(t.batch.getBatch({ batchId }))).code).toBe(Code.NotFound);
    expect((await rejection(t.batch.deleteBatch({ batchId }))).code).toBe(Code.NotFound);
    expect(await keysOf(fileId)).toBe(1); // the file and a batch of it remain

    await t.batch.deleteFile({ fileId });
    expect(await keysOf(fileId)).toBe(1); // the cancelled batch still holds its requests
    await t.batch.deleteBatch({ batchId: second });
    expect(await keysOf(fileId)).toBe(0);
  });
});

describe("unknown and malformed batch ids are NOT_FOUND", () => {
  test.each([UNKNOWN_ID, "batch_abc", ""])("%j", async (batchId) => {
    const calls = [
      () => t.batch.getBatch({ batchId }),
      () => t.batch.getBatchStatus({ batchId }),
      () => t.batch.cancelBatch({ batchId }),
      () => t.batch.retryBatch({ batchId }),
      () => t.batch.listBatchRequests({ batchId }),
    ];
    for (const call of calls) {
      const e = await rejection(call());
      expect(e.code, e.rawMessage).toBe(Code.NotFound);
    }
  });
});

describe("API keys never come back out", () => {
  const KEY = "sk-test-SECRET";

  function expectNoSecret<D extends DescMessage>(schema: D, msg: MessageShape<D>) {
    const json = toJsonString(schema, msg, { alwaysEmitImplicit: true });
    expect(json.length).toBeGreaterThan(2);
    expect(json).not.toContain("SECRET");
  }

  test("no read or create response carries the key", async () => {
    const jsonlFile = await t.batch.createFile({
      filename: "keyed.jsonl",
      jsonl: enc.encode(
        JSON.stringify({ custom_id: "k1", method: "POST", url: "/v1/x", body: { model: "m-key" } }),
      ),
      endpoint: ENDPOINT,
      apiKey: KEY,
    });
    expectNoSecret(CreateFileResponseSchema, jsonlFile);
    const listFile = await t.batch.createFile({
      filename: "keyed-templates",
      templates: [
        {
          customId: "k2",
          endpoint: ENDPOINT,
          path: "/v1/x",
          body: '{"model":"m-key"}',
          apiKey: KEY,
        },
      ],
    });
    expectNoSecret(CreateFileResponseSchema, listFile);
    const uploaded = await t.batch.uploadFile(
      (async function* () {
        yield { part: { case: "header" as const, value: { endpoint: ENDPOINT, apiKey: KEY } } };
        yield {
          part: {
            case: "chunk" as const,
            value: enc.encode(
              '{"custom_id":"k2","method":"POST","url":"/v1/x","body":{"model":"m-key"}}\n',
            ),
          },
        };
      })(),
    );

    for (const file of [jsonlFile.file!, listFile.file!, uploaded.file!]) {
      // The key is stored (so the test means something), encrypted, once …
      const { rows } = await sql.query(
        `SELECT k.key_id, k.sealed FROM request_templates t JOIN api_keys k ON k.id = t.api_key_id
         WHERE t.file_id = $1`,
        [file.id],
      );
      expect(rows).toHaveLength(1);
      expect(rows[0].key_id).toMatch(/^[0-9a-f]{16}$/);
      expect(Buffer.from(rows[0].sealed).includes(KEY)).toBe(false);
      const plain = await sql.query(
        `SELECT count(*)::int AS n FROM request_templates WHERE file_id = $1 AND row_to_json(request_templates)::text LIKE '%' || $2 || '%'`,
        [file.id, KEY],
      );
      expect(plain.rows[0].n).toBe(0);
      // … and never returned.
      expectNoSecret(GetFileResponseSchema, await t.batch.getFile({ fileId: file.id }));
      const created = await t.batch.createBatch({
        fileId: file.id,
        metadata: { note: "keyed" },
      });
      expectNoSecret(CreateBatchResponseSchema, created);
      const batchId = created.batch!.id;
      // Requests point at the same stored key: not a copy per row.
      const stored = await sql.query(
        `SELECT r.api_key_id = t.api_key_id AS same FROM requests r
         JOIN request_templates t ON t.file_id = $2 AND t.line = r.line WHERE r.batch_id = $1`,
        [batchId, file.id],
      );
      expect(stored.rows).toEqual([{ same: true }]);
      expectNoSecret(GetBatchResponseSchema, await t.batch.getBatch({ batchId }));
      expectNoSecret(GetBatchStatusResponseSchema, await t.batch.getBatchStatus({ batchId }));
      const requests = await t.batch.listBatchRequests({ batchId });
      expect(requests.requests).toHaveLength(1);
      expectNoSecret(ListBatchRequestsResponseSchema, requests);
      expectNoSecret(ListBatchesResponseSchema, await t.batch.listBatches({ fileId: file.id }));
      expectNoSecret(CancelBatchResponseSchema, await t.batch.cancelBatch({ batchId }));
      expectNoSecret(
        RetryBatchResponseSchema,
        await t.batch.retryBatch({
          batchId: (await t.batch.createBatch({ fileId: file.id })).batch!.id,
        }),
      );
    }
    expectNoSecret(ListFilesResponseSchema, await t.batch.listFiles({ pageSize: 1000 }));
    expectNoSecret(ListBatchesResponseSchema, await t.batch.listBatches({ pageSize: 1000 }));
  });

  test("nor does an error about a keyed file", async () => {
    const e = await rejection(
      t.batch.createFile({
        jsonl: enc.encode(
          '{"custom_id":"a","method":"POST","url":"/v1/x","body":{"model":"m"}}\n{"custom_id":"b","method":"POST","url":"/v1/x","body":{}}',
        ),
        endpoint: ENDPOINT,
        apiKey: KEY,
      }),
    );
    expect(e.code).toBe(Code.InvalidArgument);
    expect(e.rawMessage).not.toContain("SECRET");
    expect(JSON.stringify(e.metadata)).not.toContain("SECRET");
  });
});
