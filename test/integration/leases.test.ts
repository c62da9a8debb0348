/**
 * The lease service through the API, with test code acting as dispatchers:
 * limits, guarded reports, renewals, long-poll wake-ups, retries, holds.
 */
import { create } from "@bufbuild/protobuf";
import { DurationSchema } from "@bufbuild/protobuf/wkt";
import { createHandlerContext } from "@connectrpc/connect";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, test } from "vitest";
import { dispatchMethods } from "../../src/api/dispatch.js";
import { CONTROL_PLANE_DEFAULTS } from "../../src/config/config.js";
import {
  AcquireLeasesRequestSchema,
  DispatchService,
  ReportResult_Disposition as Disposition,
  type Lease,
  LeaseLossReason,
} from "../../src/gen/fusillade/v1/dispatch_service_pb.js";
import { LeaseService } from "../../src/leases/lease-service.js";
import { makeLogger } from "../../src/logger.js";
import { Notifications } from "../../src/storage/notifications.js";
import { clients, startTestControlPlane, type TestControlPlane } from "../helpers/control-plane.js";

let t: TestControlPlane;
let sql: pg.Pool;

beforeAll(async () => {
  t = await startTestControlPlane({ leaseTtlMs: 1500, reapIntervalMs: 100, defaultLimit: 10 });
  sql = new pg.Pool({ connectionString: t.database.url, max: 2 });
});
afterAll(async () => {
  await sql?.end();
  await t?.close();
});

const ms = (n: number) =>
  create(DurationSchema, { seconds: BigInt(Math.floor(n / 1000)), nanos: (n % 1000) * 1e6 });

/** A batch of `n` requests for `model`; returns its id. */
async function batchOf(
  model: string,
  n: number,
  policy?: { maxRetries?: number; backoffMs?: number },
) {
  const lines = Array.from({ length: n }, (_, i) =>
    JSON.stringify({ custom_id: `${model}-${i}`, url: "/v1/x", body: { model, i } }),
  ).join("\n");
  const file = await t.batch.createFile({
    jsonl: new TextEncoder().encode(lines),
    endpoint: "http://127.0.0.1:9",
    apiKey: "sk-lease-test",
  });
  const { batch } = await t.batch.createBatch({
    fileId: file.file!.id,
    retryPolicy: {
      maxRetries: policy?.maxRetries,
      initialBackoff: ms(policy?.backoffMs ?? 50),
      maxBackoff: ms(policy?.backoffMs ?? 50),
    },
  });
  return batch!.id;
}

async function acquire(
  models: string[],
  max: number,
  waitMs = 0,
  client = t.dispatch,
): Promise<Lease[]> {
  const res = await client.acquireLeases({
    dispatcherId: "test",
    maxLeases: max,
    models,
    wait: ms(waitMs),
  });
  return res.leases;
}

async function complete(l: Lease, client = t.dispatch) {
  const res = await client.reportResults({
    dispatcherId: "test",
    outcomes: [
      {
        ref: l.ref,
        result: {
          case: "completion",
          value: { statusCode: 200, body: new TextEncoder().encode('{"ok":true}'), headers: {} },
        },
      },
    ],
  });
  return res.results[0]!.disposition;
}

async function stateOf(requestId: string) {
  const r = await sql.query(
    "SELECT state, attempt, response_status, error_code, error_message, not_before FROM requests WHERE id = $1",
    [requestId],
  );
  return r.rows[0];
}

describe("grants", () => {
  test("never exceed the model's limit, and freed capacity is granted again", async () => {
    await t.admin.setModelLimit({ model: "g1", limit: 3 });
    await batchOf("g1", 10);
    const first = await acquire(["g1"], 10);
    expect(first).toHaveLength(3);
    expect(await acquire(["g1"], 10)).toHaveLength(0);
    expect(await complete(first[0]!)).toBe(Disposition.RECORDED);
    const next = await acquire(["g1"], 10);
    expect(next).toHaveLength(1);
    const limits = await t.admin.listModelLimits({});
    const g1 = limits.modelLimits.find((m) => m.model === "g1")!;
    expect(g1).toMatchObject({ limit: 3, isDefault: false, inFlight: 3, pending: 6n });
  });

  test("a lease carries the request, the key as a bearer token, and the request id header", async () => {
    const batchId = await batchOf("g2", 1);
    const [l] = await acquire(["g2"], 1);
    expect(l).toBeDefined();
    const headers = Object.fromEntries(l!.headers.map((h) => [h.name, h.value]));
    expect(headers.authorization).toBe("Bearer sk-lease-test");
    expect(headers["x-fusillade-request-id"]).toBe(l!.ref!.requestId);
    expect(headers["x-fusillade-custom-id"]).toBe("g2-0");
    expect(l!.url).toBe("http://127.0.0.1:9/v1/x");
    expect(JSON.parse(new TextDecoder().decode(l!.body))).toEqual({ model: "g2", i: 0 });
    expect(l!.batchId).toBe(batchId);
    expect(l!.attempt).toBe(1);
    expect(Number(l!.ttl!.seconds) * 1000 + l!.ttl!.nanos / 1e6).toBeGreaterThan(1000);
  });

  test("concurrent acquirers on two replicas never overshoot the limit", async () => {
    const other = await startTestControlPlane(
      { leaseTtlMs: 5000, reapIntervalMs: 100 },
      t.database,
    );
    try {
      await t.admin.setModelLimit({ model: "g3", limit: 7 });
      await batchOf("g3", 200);
      const c2 = clients(other.url);
      const calls = Array.from({ length: 30 }, (_, i) =>
        acquire(["g3"], 3, 0, i % 2 ? c2.dispatch : t.dispatch),
      );
      const granted = (await Promise.all(calls)).flat();
      expect(granted).toHaveLength(7);
      expect(new Set(granted.map((l) => l.ref!.requestId)).size).toBe(7);
      const held = await sql.query(
        "SELECT count(*)::int AS n FROM requests WHERE model = 'g3' AND state = 'leased'",
      );
      expect(held.rows[0].n).toBe(7);
    } finally {
      await other.stop();
    }
  });

  test("lowering a limit stops grants at once; raising it wakes a waiting acquirer", async () => {
    await t.admin.setModelLimit({ model: "g4", limit: 4 });
    await batchOf("g4", 20);
    const held = await acquire(["g4"], 10);
    expect(held).toHaveLength(4);
    await t.admin.setModelLimit({ model: "g4", limit: 2 });
    await complete(held[0]!);
    await complete(held[1]!);
    expect(await acquire(["g4"], 10)).toHaveLength(0); // 2 held, limit 2
    const waiting = acquire(["g4"], 10, 10_000);
    const started = Date.now();
    await t.admin.setModelLimit({ model: "g4", limit: 5 });
    const got = await waiting;
    expect(got).toHaveLength(3);
    expect(Date.now() - started).toBeLessThan(5000);
  });

  test("a long poll wakes when work arrives, not at its deadline", async () => {
    const waiting = acquire(["g5"], 5, 20_000);
    const started = Date.now();
    await batchOf("g5", 2);
    const got = await waiting;
    expect(got).toHaveLength(2);
    expect(Date.now() - started).toBeLessThan(5000);
  });
});

describe("reports", () => {
  test("a stale report after the lease expired and was granted again is LOST; the newer outcome stands", async () => {
    await batchOf("r1", 1);
    const [old] = await acquire(["r1"], 1);
    // The lease (1.5 s) lapses; the reaper returns the request to pending; it is granted again.
    const [fresh] = await acquire(["r1"], 1, 10_000);
    expect(fresh).toBeDefined();
    expect(fresh!.ref!.requestId).toBe(old!.ref!.requestId);
    expect(fresh!.ref!.token).toBeGreaterThan(old!.ref!.token);
    expect(fresh!.attempt).toBe(2);
    const renew = await t.dispatch.renewLeases({ dispatcherId: "test", leases: [old!.ref!] });
    expect(renew.lost[0]?.reason).toBe(LeaseLossReason.EXPIRED);
    const stale = await t.dispatch.reportResults({
      dispatcherId: "old",
      outcomes: [
        {
          ref: old!.ref,
          result: {
            case: "failure",
            value: { statusCode: 400, code: "http_error", message: "stale", retriable: false },
          },
        },
      ],
    });
    expect(stale.results[0]!.disposition).toBe(Disposition.LOST);
    expect(await complete(fresh!)).toBe(Disposition.RECORDED);
    expect(await complete(fresh!)).toBe(Disposition.LOST); // first terminal outcome wins
    expect(await stateOf(fresh!.ref!.requestId)).toMatchObject({
      state: "completed",
      response_status: 200,
    });
  });

  test("retriable failures are re-queued with backoff until attempts run out; then failed", async () => {
    await batchOf("r2", 1, { maxRetries: 1, backoffMs: 200 });
    const fail = (l: Lease) =>
      t.dispatch.reportResults({
        dispatcherId: "test",
        outcomes: [
          {
            ref: l.ref,
            result: {
              case: "failure",
              value: {
                statusCode: 503,
                code: "http_error",
                message: "upstream 503",
                retriable: true,
                bodyExcerpt: new TextEncoder().encode("busy"),
              },
            },
          },
        ],
      });
    const [a1] = await acquire(["r2"], 1);
    const failedAt = Date.now();
    expect((await fail(a1!)).results[0]!.disposition).toBe(Disposition.REQUEUED);
    const pending = await stateOf(a1!.ref!.requestId);
    expect(pending.state).toBe("pending");
    expect(pending.not_before).not.toBeNull();
    const [a2] = await acquire(["r2"], 1, 5000);
    expect(a2!.attempt).toBe(2);
    expect(Date.now() - failedAt).toBeGreaterThanOrEqual(100); // equal jitter: at least half of 200 ms
    expect((await fail(a2!)).results[0]!.disposition).toBe(Disposition.RECORDED);
    expect(await stateOf(a2!.ref!.requestId)).toMatchObject({
      state: "failed",
      response_status: 503,
      error_code: "http_error",
    });
    expect((await stateOf(a2!.ref!.requestId)).error_message).toContain("gave up after 2 attempts");
  });

  test("a 429 with Retry-After holds the model back fleet-wide", async () => {
    await batchOf("r3", 3);
    const [l] = await acquire(["r3"], 1);
    await t.dispatch.reportResults({
      dispatcherId: "test",
      outcomes: [
        {
          ref: l!.ref,
          result: {
            case: "failure",
            value: {
              statusCode: 429,
              code: "http_error",
              message: "slow down",
              retriable: true,
              retryAfter: ms(1000),
            },
          },
        },
      ],
    });
    const heldAt = Date.now();
    expect(await acquire(["r3"], 3)).toHaveLength(0);
    const limits = await t.admin.listModelLimits({});
    expect(limits.modelLimits.find((m) => m.model === "r3")!.holdUntilTime).toBeDefined();
    const after = await acquire(["r3"], 3, 5000);
    expect(after.length).toBeGreaterThan(0);
    expect(Date.now() - heldAt).toBeGreaterThanOrEqual(900);
  });

  test("cancel: pending requests end at once, leased ones are told on renewal and released as canceled", async () => {
    const batchId = await batchOf("r4", 5);
    const held = await acquire(["r4"], 2);
    const { batch } = await t.batch.cancelBatch({ batchId });
    expect(batch!.openaiStatus).toBe("cancelling");
    expect(batch!.counts).toMatchObject({ canceled: 3n, inProgress: 2n });
    const renew = await t.dispatch.renewLeases({
      dispatcherId: "test",
      leases: held.map((l) => l.ref!),
    });
    expect(renew.renewed).toHaveLength(0);
    expect(renew.lost.map((l) => l.reason)).toEqual([
      LeaseLossReason.BATCH_CANCELLED,
      LeaseLossReason.BATCH_CANCELLED,
    ]);
    const rel = await t.dispatch.reportResults({
      dispatcherId: "test",
      outcomes: held.map((l) => ({
        ref: l.ref,
        result: { case: "release" as const, value: { reason: "batch cancelled" } },
      })),
    });
    expect(rel.results.map((r) => r.disposition)).toEqual([
      Disposition.RECORDED,
      Disposition.RECORDED,
    ]);
    const status = await t.batch.getBatchStatus({ batchId });
    expect(status.openaiStatus).toBe("cancelled");
    expect(status.counts).toMatchObject({ total: 5n, canceled: 5n, pending: 0n, inProgress: 0n });
  });

  test("renewal extends a live lease past its original expiry", async () => {
    await batchOf("r5", 1);
    const [l] = await acquire(["r5"], 1);
    for (let i = 0; i < 4; i++) {
      await new Promise((r) => setTimeout(r, 500));
      const res = await t.dispatch.renewLeases({ dispatcherId: "test", leases: [l!.ref!] });
      expect(res.renewed).toHaveLength(1);
    }
    // 2 s after the grant, past the 1.5 s TTL: still ours.
    expect(await complete(l!)).toBe(Disposition.RECORDED);
  });
});

describe("a dispatcher that goes away mid-grant", () => {
  test("gets nothing and strands nothing: every request stays grantable at once", async () => {
    await batchOf("s1", 3);
    const notifications = new Notifications(t.database.url);
    await notifications.start();
    try {
      const config = { ...CONTROL_PLANE_DEFAULTS, leaseTtlMs: 60_000 };
      const leases = new LeaseService(t.cp.db, notifications, config);
      const gone = new AbortController();
      gone.abort(); // the call ended before (or while) the grant ran
      const methods = dispatchMethods(
        {
          db: t.cp.db,
          config,
          log: makeLogger("silent"),
          notifications,
          shutdownSignal: new AbortController().signal,
        },
        leases,
      );
      const method = DispatchService.method.acquireLeases;
      const res = await methods.acquireLeases(
        create(AcquireLeasesRequestSchema, { dispatcherId: "gone", maxLeases: 3, models: ["s1"] }),
        createHandlerContext({
          service: DispatchService,
          method,
          protocolName: "connect",
          requestMethod: "POST",
          url: "http://test/",
          requestSignal: gone.signal,
        }),
      );
      expect(res.leases).toHaveLength(0);
      const held = await sql.query(
        "SELECT state, count(*)::int AS n FROM requests WHERE model = 's1' GROUP BY state",
      );
      expect(held.rows).toEqual([{ state: "pending", n: 3 }]);
      // …and a live dispatcher gets all three without waiting for a lease to expire.
      expect(await acquire(["s1"], 3)).toHaveLength(3);
    } finally {
      await notifications.close();
    }
  });
});
