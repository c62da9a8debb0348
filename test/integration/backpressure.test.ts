/**
 * "Slow down" is backpressure, not failure (DESIGN §3.7, §5), through the
 * real report path (ReportResults → LeaseService.report → REQUESTS_FAIL),
 * with test code acting as the dispatcher: a 429, or a 503 with
 * Retry-After, is an attempt in the history but spends no retry; it is
 * retried until the batch's window ends, then expired with the 429 in its
 * error. Only a 429 whose headers read the meter empty holds the model.
 */

import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { DurationSchema } from "@bufbuild/protobuf/wkt";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, test } from "vitest";
import {
  type Claim,
  ReportResult_Disposition as Disposition,
  type FailureSchema,
} from "../../src/gen/fusillade/v1/dispatch_service_pb.js";
import * as leaseSql from "../../src/leases/sql.js";
import { startTestControlPlane, type TestControlPlane } from "../helpers/control-plane.js";

let t: TestControlPlane;
let sql: pg.Pool;

beforeAll(async () => {
  t = await startTestControlPlane({ leaseTtlMs: 60_000, defaultLimit: 10 });
  sql = new pg.Pool({ connectionString: t.database.url, max: 2 });
});
afterAll(async () => {
  await sql?.end();
  await t?.close();
});

const ms = (n: number) =>
  create(DurationSchema, { seconds: BigInt(Math.floor(n / 1000)), nanos: (n % 1000) * 1e6 });
const enc = (s: string) => new TextEncoder().encode(s);

/** A batch of `n` requests of `model` with `maxRetries` and a 1 ms backoff; returns its id. */
async function batchOf(model: string, n: number, maxRetries: number) {
  const lines = Array.from({ length: n }, (_, i) =>
    JSON.stringify({ custom_id: `${model}-${i}`, method: "POST", url: "/v1/x", body: { model } }),
  ).join("\n");
  const file = await t.batch.createFile({ jsonl: enc(lines), endpoint: "http://127.0.0.1:9" });
  const { batch } = await t.batch.createBatch({
    fileId: file.file!.id,
    retryPolicy: { maxRetries, initialBackoff: ms(1), maxBackoff: ms(1) },
  });
  return batch!.id;
}

/** Claims up to `room` ready requests of `model` as `holder` (a new grant each time). */
async function take(holder: string, model: string, room: number) {
  const res = await t.dispatch.sync({
    dispatcherId: holder,
    slots: [{ model, token: 0n, keep: 0, want: room, room }],
  });
  return res.claims;
}

/** Reports one failure of `c`; returns its disposition and the holds answered. */
async function fail(c: Claim, f: MessageInitShape<typeof FailureSchema>, refill = 0) {
  const res = await t.dispatch.reportResults({
    dispatcherId: "bp",
    outcomes: [
      {
        ref: c.ref,
        result: {
          case: "failure",
          value: { code: "http_error", retriable: true, ...f },
        },
      },
    ],
    refill: refill > 0 ? [{ model: c.model, room: refill }] : [],
  });
  return { disposition: res.results[0]!.disposition, holds: res.holds, claims: res.claims };
}

const TOO_MANY = {
  statusCode: 429,
  message: "POST http://127.0.0.1:9/v1/x answered 429 Too Many Requests",
  bodyExcerpt: enc('{"error":"rate limited"}'),
};

async function row(id: string) {
  const r = await sql.query(
    `SELECT state, attempt, throttled_attempts, response_status, error_code, error_message,
       not_before, convert_from(response_body, 'UTF8') AS body
     FROM requests WHERE id = $1`,
    [id],
  );
  return r.rows[0];
}

/** Makes the request ready again at once (its retry's not_before passed). */
async function readyNow(id: string) {
  await sql.query(`UPDATE requests SET not_before = NULL WHERE id = $1`, [id]);
}

describe("429 and 503 + Retry-After are backpressure", () => {
  test("five 429s with max_retries 1: still pending, each an attempt; then one 500 spends the one retry, the next fails", async () => {
    await batchOf("bp-a", 1, 1);
    let claim = (await take("bp", "bp-a", 1))[0]!;
    const id = claim.ref!.requestId;
    for (let i = 1; i <= 5; i++) {
      expect(claim.attempt).toBe(i);
      expect((await fail(claim, { ...TOO_MANY, retryAfter: ms(10) })).disposition).toBe(
        Disposition.REQUEUED,
      );
      expect(await row(id)).toMatchObject({ state: "pending", attempt: i, throttled_attempts: i });
      await readyNow(id);
      claim = (await take("bp", "bp-a", 1))[0]!;
    }
    // Attempt 6: a 500 — the first attempt that spends the budget (1 retry).
    expect((await fail(claim, { statusCode: 500, message: "boom" })).disposition).toBe(
      Disposition.REQUEUED,
    );
    await readyNow(id);
    claim = (await take("bp", "bp-a", 1))[0]!;
    expect(claim.attempt).toBe(7);
    expect((await fail(claim, { statusCode: 500, message: "boom" })).disposition).toBe(
      Disposition.RECORDED,
    );
    const r = await row(id);
    expect(r).toMatchObject({ state: "failed", attempt: 7, throttled_attempts: 5 });
    expect(r.error_message).toBe("boom (gave up after 7 attempts)");
    // The history shows every attempt, throttled or not.
    const events = await sql.query(
      `SELECT state, attempt FROM request_events WHERE request_id = $1 AND state = 'leased' ORDER BY seq`,
      [id],
    );
    expect(events.rows.map((e) => e.attempt)).toEqual([1, 2, 3, 4, 5, 6, 7]);
  });

  test("a 503 with Retry-After is backpressure; a 503 without spends a retry", async () => {
    await batchOf("bp-b", 1, 0);
    let claim = (await take("bp", "bp-b", 1))[0]!;
    const id = claim.ref!.requestId;
    const unavailable = { statusCode: 503, message: "answered 503 Service Unavailable" };
    expect((await fail(claim, { ...unavailable, retryAfter: ms(10) })).disposition).toBe(
      Disposition.REQUEUED,
    );
    expect(await row(id)).toMatchObject({ state: "pending", throttled_attempts: 1 });
    await readyNow(id);
    claim = (await take("bp", "bp-b", 1))[0]!;
    // max_retries 0: the first attempt that counts is the last.
    expect((await fail(claim, unavailable)).disposition).toBe(Disposition.RECORDED);
    expect(await row(id)).toMatchObject({ state: "failed", attempt: 2, throttled_attempts: 1 });
  });

  test("a 429 the dispatcher calls not retriable (a configured table) fails at once", async () => {
    await batchOf("bp-c", 1, 5);
    const claim = (await take("bp", "bp-c", 1))[0]!;
    await fail(claim, { ...TOO_MANY, retriable: false });
    expect(await row(claim.ref!.requestId)).toMatchObject({
      state: "failed",
      throttled_attempts: 0,
    });
  });

  test("throttled past the window's end: waits for it, then expired with the 429 in its error", async () => {
    const batchId = await batchOf("bp-d", 1, 0);
    await sql.query(`UPDATE batches SET expires_at = now() + interval '30 seconds' WHERE id = $1`, [
      batchId,
    ]);
    const claim = (await take("bp", "bp-d", 1))[0]!;
    const id = claim.ref!.requestId;
    // Retry-After 5 min, past the window: no retry can start in time.
    expect((await fail(claim, { ...TOO_MANY, retryAfter: ms(300_000) })).disposition).toBe(
      Disposition.REQUEUED,
    );
    const waiting = await row(id);
    expect(waiting.state).toBe("pending");
    const window = await sql.query(`SELECT expires_at FROM batches WHERE id = $1`, [batchId]);
    expect(waiting.not_before.getTime()).toBe(window.rows[0].expires_at.getTime());
    // The window closes; the reaper's pass ends the request with the batch.
    await sql.query(`UPDATE batches SET expires_at = now() - interval '1 ms' WHERE id = $1`, [
      batchId,
    ]);
    await sql.query(leaseSql.REQUESTS_END_WITH_BATCH);
    const r = await row(id);
    expect(r).toMatchObject({
      state: "expired",
      error_code: "batch_expired",
      response_status: 429,
      body: '{"error":"rate limited"}',
    });
    expect(r.error_message).toBe(
      "the batch's completion window closed before this request finished (last attempt: POST http://127.0.0.1:9/v1/x answered 429 Too Many Requests)",
    );
  });

  test("reported after the window closed: expired at once, the 429 in its error", async () => {
    const batchId = await batchOf("bp-e", 1, 0);
    const claim = (await take("bp", "bp-e", 1))[0]!;
    await sql.query(`UPDATE batches SET expires_at = now() - interval '1 ms' WHERE id = $1`, [
      batchId,
    ]);
    expect((await fail(claim, { ...TOO_MANY, retryAfter: ms(10) })).disposition).toBe(
      Disposition.RECORDED,
    );
    const r = await row(claim.ref!.requestId);
    expect(r.state).toBe("expired");
    expect(r.error_message).toContain("(last attempt: POST http://127.0.0.1:9/v1/x answered 429");
  });
});

describe("a 429 holds the model only on evidence of an empty meter", () => {
  test("a 429 without meter headers: its request waits, the rest of the model is claimed", async () => {
    await batchOf("bp-f", 4, 5);
    const [first] = await take("bp", "bp-f", 1);
    const res = await fail(first!, { ...TOO_MANY, retryAfter: ms(60_000) }, 3);
    expect(res.holds).toEqual([]);
    expect(res.claims.map((c) => c.customId).sort()).toEqual(["bp-f-1", "bp-f-2", "bp-f-3"]);
    const held = await sql.query(`SELECT hold_until FROM model_limits WHERE model = 'bp-f'`);
    expect(held.rows[0]?.hold_until ?? null).toBeNull();
  });

  test("a 429 reading the requests meter empty holds the model until the meter's reset", async () => {
    await batchOf("bp-g", 4, 5);
    const [first] = await take("bp", "bp-g", 1);
    const res = await fail(
      first!,
      {
        ...TOO_MANY,
        retryAfter: ms(60_000),
        headers: { "x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "1.5s" },
      },
      3,
    );
    expect(res.claims).toEqual([]);
    expect(res.holds.map((h) => h.model)).toEqual(["bp-g"]);
    const left =
      Number(res.holds[0]!.remaining!.seconds) * 1000 + res.holds[0]!.remaining!.nanos / 1e6;
    // The meter's reset (1.5 s), not the Retry-After (60 s).
    expect(left).toBeGreaterThan(1000);
    expect(left).toBeLessThanOrEqual(1500);
  });
});
