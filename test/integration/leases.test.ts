/**
 * Request claims, reports and WaitForWork through the API, with test code
 * acting as dispatchers (slot grants: ./slot-grants.test.ts). Two replicas on
 * one database: `t` hands out 60 s claims, `short` 1.5 s ones (to see claims
 * expire and be reaped).
 */

import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { DurationSchema } from "@bufbuild/protobuf/wkt";
import { createHandlerContext } from "@connectrpc/connect";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, test } from "vitest";
import { dispatchMethods } from "../../src/api/dispatch.js";
import { Keyring, parseKey } from "../../src/auth/secrets.js";
import { CONTROL_PLANE_DEFAULTS } from "../../src/config/config.js";
import { OPEN_POLICY } from "../../src/domain/endpoints.js";
import {
  type Claim,
  ClaimLossReason,
  DispatchService,
  ReportResult_Disposition as Disposition,
  type FailureSchema,
  type OutcomeSchema,
  SyncRequestSchema,
} from "../../src/gen/fusillade/v1/dispatch_service_pb.js";
import { LeaseService } from "../../src/leases/lease-service.js";
import * as leaseSql from "../../src/leases/sql.js";
import { makeLogger } from "../../src/logger.js";
import { Notifications } from "../../src/storage/notifications.js";
import {
  startTestControlPlane,
  type TestControlPlane,
  testSecretKey,
} from "../helpers/control-plane.js";

let t: TestControlPlane;
let short: TestControlPlane;
/** The TTL of `short`'s claims. */
const SHORT_TTL_MS = 1500;
let sql: pg.Pool;

beforeAll(async () => {
  t = await startTestControlPlane({ leaseTtlMs: 60_000, reapIntervalMs: 100, defaultLimit: 10 });
  short = await startTestControlPlane(
    { leaseTtlMs: SHORT_TTL_MS, reapIntervalMs: 100 },
    t.database,
  );
  sql = new pg.Pool({ connectionString: t.database.url, max: 2 });
});
afterAll(async () => {
  await sql?.end();
  await short?.stop();
  await t?.close();
});

const ms = (n: number) =>
  create(DurationSchema, { seconds: BigInt(Math.floor(n / 1000)), nanos: (n % 1000) * 1e6 });
const enc = (s: string) => new TextEncoder().encode(s);
const sleep = (n: number) => new Promise((r) => setTimeout(r, n));

/** A batch of `n` requests of `model`; returns its id. */
async function batchOf(
  model: string,
  n: number,
  policy?: { maxRetries?: number; backoffMs?: number },
  tag = model,
) {
  const lines = Array.from({ length: n }, (_, i) =>
    JSON.stringify({ custom_id: `${tag}-${i}`, method: "POST", url: "/v1/x", body: { model, i } }),
  ).join("\n");
  const file = await t.batch.createFile({
    jsonl: enc(lines),
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

/** A new grant of `model` (token 0) with `room` claims, as `holder`. */
async function take(holder: string, model: string, room: number, client = t.dispatch) {
  const res = await client.sync({
    dispatcherId: holder,
    slots: [{ model, token: 0n, keep: 0, want: Math.max(1, room), room }],
  });
  return { token: res.grants[0]?.token ?? 0n, claims: res.claims, holds: res.holds };
}

const completion = (c: Claim) => ({
  ref: c.ref,
  result: {
    case: "completion" as const,
    value: { statusCode: 200, body: enc('{"ok":true}'), headers: {} },
  },
});
const failure = (c: Claim, f: MessageInitShape<typeof FailureSchema>) => ({
  ref: c.ref,
  result: {
    case: "failure" as const,
    value: { statusCode: 503, code: "http_error", message: "busy", retriable: true, ...f },
  },
});
const release = (c: Claim, unsent: boolean) => ({
  ref: c.ref,
  result: { case: "release" as const, value: { reason: "test", unsent } },
});

async function report(
  outcome: MessageInitShape<typeof OutcomeSchema>,
  refill: Array<{ model: string; room: number }> = [],
) {
  const res = await t.dispatch.reportResults({ dispatcherId: "test", outcomes: [outcome], refill });
  return { disposition: res.results[0]!.disposition, claims: res.claims, holds: res.holds };
}

async function row(id: string) {
  const r = await sql.query(
    `SELECT state, attempt, lease_token, lease_holder, lease_expires_at, response_status,
       error_code, error_message, extract(epoch FROM not_before) * 1000 AS not_before_ms
     FROM requests WHERE id = $1`,
    [id],
  );
  return r.rows[0];
}

/** Resolves when `model` has a ready pending request (e.g. after the reaper's pass). */
async function untilReady(model: string) {
  const res = await t.dispatch.waitForWork({
    dispatcherId: "watcher",
    models: [model],
    hungry: [model],
    wait: ms(10_000),
  });
  expect(res.models).toEqual([model]);
}

const ids = (cs: Claim[]) => cs.map((c) => c.customId).sort();

describe("hostile responses", () => {
  test("a body with a NUL byte or bytes that are not UTF-8 is recorded as sent; a header Postgres cannot store fails its own request only", async () => {
    await batchOf("nul", 5);
    const { claims } = await take("nul-d", "nul", 5);
    expect(claims).toHaveLength(5);
    const [ok, nulBody, binary, nulHeader, failed] = claims as [Claim, Claim, Claim, Claim, Claim];
    const binaryBytes = new Uint8Array([0x00, 0xff, 0xfe, 0x80, 0x7b]);
    const res = await t.dispatch.reportResults({
      dispatcherId: "nul-d",
      outcomes: [
        completion(ok),
        {
          ref: nulBody.ref,
          result: {
            case: "completion",
            value: { statusCode: 200, body: enc('{"a":"x\u0000y"}'), headers: {} },
          },
        },
        {
          ref: binary.ref,
          result: {
            case: "completion",
            value: { statusCode: 200, body: binaryBytes, headers: { "content-type": "image/png" } },
          },
        },
        {
          ref: nulHeader.ref,
          result: {
            case: "completion",
            value: { statusCode: 200, body: enc("{}"), headers: { "x-odd": "a\u0000b" } },
          },
        },
        failure(failed, { statusCode: 400, retriable: false, bodyExcerpt: enc("bad\u0000input") }),
      ],
    });
    expect(res.results.map((r) => r.disposition)).toEqual(Array(5).fill(Disposition.RECORDED));
    const body = async (id: string) =>
      (await sql.query("SELECT response_body FROM requests WHERE id = $1", [id])).rows[0]
        .response_body as Buffer;
    expect(await row(ok.ref!.requestId)).toMatchObject({
      state: "completed",
      response_status: 200,
    });
    expect(await row(nulBody.ref!.requestId)).toMatchObject({ state: "completed" });
    expect((await body(nulBody.ref!.requestId)).toString("utf8")).toBe('{"a":"x\u0000y"}');
    expect(await row(binary.ref!.requestId)).toMatchObject({ state: "completed" });
    expect([...(await body(binary.ref!.requestId))]).toEqual([...binaryBytes]);
    const r = await row(nulHeader.ref!.requestId);
    expect(r).toMatchObject({
      state: "failed",
      error_code: "response_unstorable",
      response_status: 200,
    });
    expect(r.error_message).toMatch(/cannot be stored/);
    expect(await row(failed.ref!.requestId)).toMatchObject({
      state: "failed",
      error_code: "http_error",
    });
    expect((await body(failed.ref!.requestId)).toString("utf8")).toBe("bad\u0000input");

    // The API hands the bytes back: text when it is UTF-8, exact bytes beside it when not.
    const got = new Map<string, { body: string; bodyBytes: Uint8Array }>();
    for await (const m of t.batch.streamBatchRequests({ batchId: ok.batchId })) {
      if (m.request?.response) got.set(m.request.id, m.request.response);
    }
    expect(got.get(nulBody.ref!.requestId)!.body).toBe('{"a":"x\u0000y"}');
    expect(got.get(nulBody.ref!.requestId)!.bodyBytes).toHaveLength(0);
    expect([...got.get(binary.ref!.requestId)!.bodyBytes]).toEqual([...binaryBytes]);
    expect(got.get(binary.ref!.requestId)!.body).toBe("\u0000\uFFFD\uFFFD\uFFFD{");
  });
});

describe("claims", () => {
  test("an answer's claims stop at the byte cap, shared among the models; one claim always fits", async () => {
    const CAP = 2000;
    const capped = await startTestControlPlane({ maxClaimBytes: CAP }, t.database);
    try {
      const pad = "x".repeat(400); // each body is ~430 bytes
      const lines = ["big1", "big2"].flatMap((model) =>
        Array.from({ length: 6 }, (_, i) =>
          JSON.stringify({
            custom_id: `${model}-${i}`,
            method: "POST",
            url: "/v1/x",
            body: { model, pad },
          }),
        ),
      );
      lines.push(
        JSON.stringify({
          custom_id: "huge-0",
          method: "POST",
          url: "/v1/x",
          body: { model: "huge", pad: "y".repeat(5000) },
        }),
      );
      const file = await t.batch.createFile({
        jsonl: enc(lines.join("\n")),
        endpoint: "http://127.0.0.1:9",
      });
      await t.batch.createBatch({ fileId: file.file!.id });
      const one = await capped.dispatch.sync({
        dispatcherId: "cap-1",
        slots: [{ model: "big1", token: 0n, keep: 0, want: 6, room: 6 }],
      });
      // The stored bodies' sizes, in claim order: a claim is taken while the bytes before
      // it are below the cap (so the first always is).
      const fitting = async (model: string, cap: number) => {
        const { rows } = await sql.query<{ len: number }>(
          "SELECT octet_length(body)::int AS len FROM requests WHERE model = $1 ORDER BY line",
          [model],
        );
        let before = 0;
        return rows
          .filter(({ len }) => {
            const fits = before < cap;
            before += len;
            return fits;
          })
          .map((_, i) => `${model}-${i}`);
      };
      const oneFits = await fitting("big1", CAP);
      expect(oneFits.length).toBeGreaterThan(1); // the cap, not the room (6), ends the answer
      expect(oneFits.length).toBeLessThan(6);
      expect(ids(one.claims)).toEqual(oneFits);
      const two = await capped.dispatch.sync({
        dispatcherId: "cap-2",
        slots: [
          { model: "big2", token: 0n, keep: 0, want: 6, room: 6 },
          { model: "huge", token: 0n, keep: 0, want: 1, room: 1 },
        ],
      });
      // Two models share the cap (half each); a body above it is still claimed alone.
      const twoFits = await fitting("big2", CAP / 2);
      expect(twoFits.length).toBeLessThan(oneFits.length);
      expect(ids(two.claims)).toEqual([...twoFits, "huge-0"]);
    } finally {
      await capped.stop();
    }
  });

  test("Sync claims up to room, shared between the model's batches, each oldest first; a report's refill claims the next ones", async () => {
    await batchOf("c1", 4, undefined, "old");
    await batchOf("c1", 3, undefined, "new"); // a later batch of the same model
    const first = await take("c", "c1", 3);
    expect(first.claims).toHaveLength(3); // room 3, though it holds 1 slot: claims are a buffer
    // Fair share (docs/fair-share.md): both batches have none, the older one goes first.
    expect(ids(first.claims)).toEqual(["new-0", "old-0", "old-1"]);
    const c = first.claims.find((x) => x.customId === "old-0")!;
    const headers = Object.fromEntries(c.headers.map((h) => [h.name, h.value]));
    expect(headers.authorization).toBe("Bearer sk-lease-test");
    expect(headers["x-fusillade-request-id"]).toBe(c.ref!.requestId);
    expect(headers["x-fusillade-custom-id"]).toBe("old-0");
    expect(c.url).toBe("http://127.0.0.1:9/v1/x");
    expect(JSON.parse(new TextDecoder().decode(c.body))).toEqual({ model: "c1", i: 0 });
    expect(c.attempt).toBe(1);
    expect(Number(c.ttl!.seconds)).toBeGreaterThan(50);
    const next = await t.dispatch.sync({
      dispatcherId: "c",
      slots: [{ model: "c1", token: first.token, keep: 1, want: 1, room: 3 }],
    });
    // The later batch catches up (it held one claim to the other's two), then they alternate.
    expect(ids(next.claims)).toEqual(["new-1", "new-2", "old-2"]);
    const rows = await Promise.all(next.claims.map((x) => row(x.ref!.requestId)));
    expect(rows.map((r) => [r.state, r.lease_holder])).toEqual(Array(3).fill(["leased", "c"]));
    const refilled = await report(completion(c), [{ model: "c1", room: 5 }]);
    expect(refilled.disposition).toBe(Disposition.RECORDED);
    expect(ids(refilled.claims)).toEqual(["old-3"]); // the only one left
  });

  test("a batch created while another runs alone gets the next claims at once", async () => {
    await batchOf("ln1", 10, undefined, "first");
    const one = await take("ln", "ln1", 2);
    expect(ids(one.claims)).toEqual(["first-0", "first-1"]);
    // The model has one ready batch: the control plane remembers it (docs/fair-share.md)…
    const sync = (room: number) =>
      t.dispatch.sync({
        dispatcherId: "ln",
        slots: [{ model: "ln1", token: one.token, keep: 4, want: 4, room }],
      });
    expect(ids((await sync(2)).claims)).toEqual(["first-2", "first-3"]);
    // …and forgets it when a batch of the model is created: the newcomer, holding none, is next.
    await batchOf("ln1", 3, undefined, "second");
    expect(ids((await sync(2)).claims)).toEqual(["second-0", "second-1"]);
  });

  test("a request waiting for its backoff holds no share; once due it competes like the rest", async () => {
    // The window in which X's retries wait (1–2 s: equal jitter): longer than the reports
    // and the Sync below take on a loaded 2-core machine (a 400 ms backoff did not suffice
    // at load average 20); the test then waits for it to pass.
    const BACKOFF_MS = 2000;
    await batchOf("bk1", 2, { backoffMs: BACKOFF_MS }, "x");
    await batchOf("bk1", 10, undefined, "y");
    const first = await take("bk", "bk1", 4);
    expect(ids(first.claims)).toEqual(["x-0", "x-1", "y-0", "y-1"]);
    for (const c of first.claims.filter((x) => x.customId!.startsWith("x-"))) {
      expect((await report(failure(c, {}))).disposition).toBe(Disposition.REQUEUED);
    }
    // X's two requests wait for their backoff: every claim goes to Y, though X holds none.
    const during = await t.dispatch.sync({
      dispatcherId: "bk",
      slots: [{ model: "bk1", token: first.token, keep: 4, want: 4, room: 4 }],
    });
    expect(ids(during.claims)).toEqual(["y-2", "y-3", "y-4", "y-5"]);
    // Until both retries are due (the moment is known: their not_before).
    const due = await sql.query(
      `SELECT extract(epoch FROM max(not_before) - now()) * 1000 AS ms FROM requests
       WHERE custom_id LIKE 'x-%' AND model = 'bk1'`,
    );
    expect(Number(due.rows[0].ms)).toBeGreaterThan(0);
    await sleep(Number(due.rows[0].ms) + 20);
    // Y holds 6 claims and has ready work, X none: X's retries come first, then Y takes the rest.
    const after = await t.dispatch.sync({
      dispatcherId: "bk",
      slots: [{ model: "bk1", token: first.token, keep: 4, want: 4, room: 3 }],
    });
    expect(ids(after.claims)).toEqual(["x-0", "x-1", "y-6"]);
    expect(after.claims.filter((c) => c.customId!.startsWith("x-")).map((c) => c.attempt)).toEqual([
      2, 2,
    ]);
  });

  test("a 429 hold (the meter read empty): no claims while it lasts, the hold is in `holds`, WaitForWork names the model only when it ends", async () => {
    await batchOf("h1", 4);
    const h = await take("h", "h1", 1);
    const empty = { "x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "1.2s" };
    const held = await report(failure(h.claims[0]!, { statusCode: 429, headers: empty }), [
      { model: "h1", room: 3 },
    ]);
    expect(held.disposition).toBe(Disposition.REQUEUED);
    expect(held.claims).toHaveLength(0);
    expect(held.holds.map((x) => x.model)).toEqual(["h1"]);
    const s = await t.dispatch.sync({
      dispatcherId: "h",
      slots: [{ model: "h1", token: h.token, keep: 1, want: 4, room: 3 }],
    });
    expect(s.claims).toHaveLength(0);
    expect(s.grants[0]?.slots).toBe(1); // renewed, not grown
    expect(s.holds[0]?.model).toBe("h1");
    const left = Number(s.holds[0]!.remaining!.seconds) * 1000 + s.holds[0]!.remaining!.nanos / 1e6;
    expect(left).toBeGreaterThan(500);
    expect((await take("h-new", "h1", 3)).claims).toHaveLength(0);
    const until = await sql.query(
      "SELECT extract(epoch FROM hold_until) * 1000 AS at FROM model_limits WHERE model = 'h1'",
    );
    const holdEnd = Number(until.rows[0].at);
    const POLL_MS = 10_000;
    const wait = (n: number) =>
      t.dispatch.waitForWork({ dispatcherId: "h", hungry: ["h1"], known: ["h1"], wait: ms(n) });
    // A poll that ends just before the hold does names nothing (the window is the hold's
    // remaining time less HOLD_EDGE_MS, so a slow machine shortens it, never overruns it).
    const HOLD_EDGE_MS = 100;
    expect(
      (await wait(Math.max(0, Math.floor(holdEnd - Date.now() - HOLD_EDGE_MS)))).models,
    ).toEqual([]);
    expect((await wait(POLL_MS)).models).toEqual(["h1"]);
    // Woken by the hold's end: not before it, and well before the poll's own deadline.
    expect(Date.now()).toBeGreaterThanOrEqual(holdEnd - 20);
    expect(Date.now()).toBeLessThan(holdEnd + POLL_MS / 2);
    expect((await take("h", "h1", 3)).claims.length).toBeGreaterThanOrEqual(2);
  });

  test("a claim of a cancelled batch is lost on renewal with BATCH_CANCELLED", async () => {
    const batchId = await batchOf("cx", 5);
    const { claims } = await take("cx", "cx", 2);
    const { batch } = await t.batch.cancelBatch({ batchId });
    expect(batch!.counts).toMatchObject({ canceled: 3n, inProgress: 2n });
    const renew = await t.dispatch.sync({ dispatcherId: "cx", claims: claims.map((c) => c.ref!) });
    expect(renew.renewed).toHaveLength(0);
    expect(renew.lost.map((l) => l.reason)).toEqual([
      ClaimLossReason.BATCH_CANCELLED,
      ClaimLossReason.BATCH_CANCELLED,
    ]);
    for (const c of claims)
      expect((await report(release(c, false))).disposition).toBe(Disposition.RECORDED);
    const status = await t.batch.getBatchStatus({ batchId });
    expect(status.counts).toMatchObject({ total: 5n, canceled: 5n, pending: 0n, inProgress: 0n });
  });

  test("renewal extends a claim past its original expiry", async () => {
    await batchOf("rn", 1);
    const [c] = (await take("rn", "rn", 1, short.dispatch)).claims;
    const original: Date = (await row(c!.ref!.requestId)).lease_expires_at;
    // Time has to pass the original expiry for the test to mean anything; a renewal every
    // third of the TTL keeps the claim while it does, with two thirds of it to spare for a
    // slow machine.
    const RENEW_EVERY_MS = SHORT_TTL_MS / 3;
    const dbNow = async () => (await sql.query("SELECT now() AS now")).rows[0].now as Date;
    let renewals = 0;
    while ((await dbNow()).getTime() <= original.getTime()) {
      await sleep(RENEW_EVERY_MS);
      const res = await short.dispatch.sync({ dispatcherId: "rn", claims: [c!.ref!] });
      expect(res.renewed).toHaveLength(1);
      expect(res.lost).toHaveLength(0);
      renewals++;
    }
    expect(renewals).toBeGreaterThan(1);
    // Past its original expiry and the reaper's passes: still ours, and due later.
    expect(await row(c!.ref!.requestId)).toMatchObject({ state: "leased", lease_holder: "rn" });
    expect((await row(c!.ref!.requestId)).lease_expires_at.getTime()).toBeGreaterThan(
      original.getTime(),
    );
    expect((await report(completion(c!))).disposition).toBe(Disposition.RECORDED);
  });

  /** One Sync straight into the handler, with the call's and the server's signals given. */
  async function handlerSync(model: string, signals: { callGone?: boolean; stopping?: boolean }) {
    const notifications = new Notifications(t.database.url);
    await notifications.start();
    try {
      const config = { ...CONTROL_PLANE_DEFAULTS, leaseTtlMs: 60_000 };
      const aborted = new AbortController();
      aborted.abort();
      const live = new AbortController().signal;
      const shutdownSignal = signals.stopping ? aborted.signal : live;
      // The control plane's own key: the claims' API keys must decrypt.
      const keyring = new Keyring(parseKey(testSecretKey(t.database), "test key"));
      const leases = new LeaseService(t.cp.db, notifications, config, keyring);
      const deps = {
        db: t.cp.db,
        config,
        log: makeLogger("silent"),
        notifications,
        shutdownSignal,
        endpointPolicy: () => OPEN_POLICY,
        keyring,
        authenticate: undefined as never, // no streams here
      };
      return await dispatchMethods(deps, leases).sync(
        create(SyncRequestSchema, {
          dispatcherId: "gone",
          slots: [{ model, token: 0n, keep: 0, want: 3, room: 3 }],
        }),
        // As connect-node builds it: ctx.signal aborts with the call or the server's shutdown.
        createHandlerContext({
          service: DispatchService,
          method: DispatchService.method.sync,
          protocolName: "connect",
          requestMethod: "POST",
          url: "http://test/",
          requestSignal: signals.callGone ? aborted.signal : live,
          shutdownSignal,
        }),
      );
    } finally {
      await notifications.close();
    }
  }

  test("a Sync whose caller went away strands nothing: its claims are given back at once", async () => {
    await batchOf("s1", 3);
    await handlerSync("s1", { callGone: true });
    const states = await sql.query(
      "SELECT state, attempt, count(*)::int AS n FROM requests WHERE model = 's1' GROUP BY 1, 2",
    );
    expect(states.rows).toEqual([{ state: "pending", attempt: 0, n: 3 }]);
    expect((await take("live", "s1", 3)).claims).toHaveLength(3);
  });

  // connect-node aborts ctx.signal on server shutdown too, and then still writes the
  // handler's answer: a claim in it would be run by a dispatcher that no longer holds it.
  test("a Sync answered while the server is stopping hands out no claims and gives back the ones it took", async () => {
    await batchOf("s2", 3);
    const res = await handlerSync("s2", { stopping: true });
    expect(res.claims).toEqual([]);
    const states = await sql.query(
      "SELECT state, attempt, count(*)::int AS n FROM requests WHERE model = 's2' GROUP BY 1, 2",
    );
    expect(states.rows).toEqual([{ state: "pending", attempt: 0, n: 3 }]);
  });
});

describe("reports", () => {
  test("completions reported together each keep their own body, status and headers (the bodies travel as one parameter)", async () => {
    await batchOf("many", 6);
    const { claims } = await take("many-d", "many", 6);
    expect(claims).toHaveLength(6);
    // Lengths that differ, an empty body and bytes that are not UTF-8, in claim order.
    const bodies = [
      enc('{"n":0}'),
      new Uint8Array(0),
      enc(`{"pad":"${"é".repeat(3000)}"}`),
      new Uint8Array([0xff, 0x00, 0x80]),
      enc("{}"),
      enc(`{"n":5,"s":"\\"quoted\\" and \\\\ back"}`),
    ];
    const res = await t.dispatch.reportResults({
      dispatcherId: "many-d",
      outcomes: claims.map((c, i) => ({
        ref: c.ref,
        result: {
          case: "completion" as const,
          value: {
            statusCode: 200 + i,
            body: bodies[i]!,
            headers: { "x-i": String(i), "x-q": `"${i}",\\{}` },
          },
        },
      })),
    });
    expect(res.results.map((r) => r.disposition)).toEqual(Array(6).fill(Disposition.RECORDED));
    const { rows } = await sql.query<{
      id: string;
      response_status: number;
      response_headers: Record<string, string>;
      response_body: Buffer;
    }>(
      "SELECT id, response_status, response_headers, response_body FROM requests WHERE id = ANY($1::uuid[])",
      [claims.map((c) => c.ref!.requestId)],
    );
    const byId = new Map(rows.map((r) => [r.id, r]));
    claims.forEach((c, i) => {
      const r = byId.get(c.ref!.requestId)!;
      expect(r.response_status).toBe(200 + i);
      expect(r.response_headers).toEqual({ "x-i": String(i), "x-q": `"${i}",\\{}` });
      expect([...r.response_body]).toEqual([...bodies[i]!]);
    });
  });
  test("a stale report or release after the claim expired and was claimed again is LOST; the newer outcome stands", async () => {
    await batchOf("r1", 1);
    const [old] = (await take("old", "r1", 1, short.dispatch)).claims;
    await untilReady("r1"); // expired (1.5 s) and reaped
    const [fresh] = (await take("new", "r1", 1)).claims;
    expect(fresh!.ref!.requestId).toBe(old!.ref!.requestId);
    expect(fresh!.ref!.token).toBeGreaterThan(old!.ref!.token);
    expect(fresh!.attempt).toBe(2);
    const renew = await t.dispatch.sync({ dispatcherId: "old", claims: [old!.ref!] });
    expect(renew.lost.map((l) => l.reason)).toEqual([ClaimLossReason.EXPIRED]);
    const stale = failure(old!, { statusCode: 400, message: "stale", retriable: false });
    expect((await report(stale)).disposition).toBe(Disposition.LOST);
    // The release race, in sequence: an old token's release does not free the new claim.
    expect((await report(release(old!, true))).disposition).toBe(Disposition.LOST);
    expect(await row(fresh!.ref!.requestId)).toMatchObject({
      state: "leased",
      lease_token: String(fresh!.ref!.token),
      lease_holder: "new",
      attempt: 2,
    });
    expect((await report(completion(fresh!))).disposition).toBe(Disposition.RECORDED);
    expect((await report(completion(fresh!))).disposition).toBe(Disposition.LOST);
    expect(await row(fresh!.ref!.requestId)).toMatchObject({
      state: "completed",
      response_status: 200,
    });
  });

  test("retriable failures are re-queued with backoff until attempts run out, then failed", async () => {
    await batchOf("r2", 1, { maxRetries: 1, backoffMs: 200 });
    const [a1] = (await take("r2", "r2", 1)).claims;
    const failedAt = Date.now();
    expect((await report(failure(a1!, {}))).disposition).toBe(Disposition.REQUEUED);
    const pending = await row(a1!.ref!.requestId);
    expect(pending).toMatchObject({ state: "pending", attempt: 1 });
    expect(pending.not_before_ms).not.toBeNull();
    await untilReady("r2");
    expect(Date.now() - failedAt).toBeGreaterThanOrEqual(95); // equal jitter: ≥ half of 200 ms
    const [a2] = (await take("r2", "r2", 1)).claims;
    expect(a2!.attempt).toBe(2);
    expect((await report(failure(a2!, {}))).disposition).toBe(Disposition.RECORDED);
    const failed = await row(a2!.ref!.requestId);
    expect(failed).toMatchObject({
      state: "failed",
      response_status: 503,
      error_code: "http_error",
    });
    expect(failed.error_message).toContain("gave up after 2 attempts");
  });

  test('with no retries, one retriable failure fails the request: "gave up after 1 attempt"', async () => {
    await batchOf("r2b", 1, { maxRetries: 0 });
    const [a1] = (await take("r2b", "r2b", 1)).claims;
    expect((await report(failure(a1!, {}))).disposition).toBe(Disposition.RECORDED);
    const failed = await row(a1!.ref!.requestId);
    expect(failed.error_message).toMatch(/\(gave up after 1 attempt\)$/);
  });

  test("a release gives the attempt back when unsent, keeps it when sent", async () => {
    await batchOf("r3", 2);
    const { claims } = await take("r3", "r3", 2);
    const [unsent, sent] = claims.sort((a, b) => a.customId.localeCompare(b.customId));
    expect((await report(release(unsent!, true))).disposition).toBe(Disposition.REQUEUED);
    expect((await report(release(sent!, false))).disposition).toBe(Disposition.REQUEUED);
    expect(await row(unsent!.ref!.requestId)).toMatchObject({ state: "pending", attempt: 0 });
    expect(await row(sent!.ref!.requestId)).toMatchObject({ state: "pending", attempt: 1 });
    const again = (await take("r3", "r3", 2)).claims;
    const attempts = Object.fromEntries(again.map((c) => [c.customId, c.attempt]));
    expect(attempts).toEqual({ "r3-0": 1, "r3-1": 2 });
  });
});

describe("the release race: an old token never frees a newer claim", () => {
  // The reap and the new claim commit while the old holder's statement waits for the row
  // lock: its snapshot still shows the old token (READ COMMITTED re-reads only the row).
  test.each(["release", "completion", "failure"] as const)(
    "an old %s blocked behind a reap and a new claim changes nothing",
    async (kind) => {
      const model = `rr-${kind}`;
      await batchOf(model, 1);
      const [old] = (await take("A", model, 1)).claims;
      const id = old!.ref!.requestId;
      const tx = await sql.connect();
      try {
        await tx.query("BEGIN");
        await tx.query("SELECT 1 FROM requests WHERE id = $1 FOR UPDATE", [id]);
        const outcome =
          kind === "release"
            ? release(old!, true)
            : kind === "completion"
              ? completion(old!)
              : failure(old!, {});
        const stale = report(outcome);
        for (;;) {
          const w = await sql.query(
            `SELECT count(*)::int AS n FROM pg_stat_activity
             WHERE datname = current_database() AND wait_event_type = 'Lock'`,
          );
          if (w.rows[0].n > 0) break;
          await sleep(10);
        }
        await tx.query(
          "UPDATE requests SET lease_expires_at = now() - interval '1 second' WHERE id = $1",
          [id],
        );
        expect((await tx.query(leaseSql.REQUESTS_REAP_EXPIRED, [model])).rowCount).toBe(1);
        const { batch_id } = (await tx.query("SELECT batch_id FROM requests WHERE id = $1", [id]))
          .rows[0];
        const claimed = await tx.query(leaseSql.REQUESTS_CLAIM, [
          [model],
          [batch_id],
          [1],
          "B",
          60_000,
          [1 << 20],
        ]);
        expect(claimed.rows).toHaveLength(1);
        await tx.query("COMMIT");
        expect((await stale).disposition).toBe(Disposition.LOST);
        expect(await row(id)).toMatchObject({
          state: "leased",
          lease_holder: "B",
          lease_token: claimed.rows[0].lease_token,
        });
      } finally {
        await tx.query("ROLLBACK").catch(() => undefined);
        tx.release();
      }
    },
  );
});

describe("WaitForWork", () => {
  test("new models are named to a holder that may take them, not to one that knows them and is full", async () => {
    const waitFor = (n: number, w: { hungry?: string[]; known?: string[]; newModels?: boolean }) =>
      t.dispatch.waitForWork({ dispatcherId: "w", models: ["w1"], wait: ms(n), ...w });
    const POLL_MS = 20_000;
    const started = Date.now();
    const woken = waitFor(POLL_MS, { newModels: true });
    await batchOf("w1", 2);
    expect((await woken).models).toEqual(["w1"]);
    // Woken by the new batch, well before the poll's own deadline.
    expect(Date.now() - started).toBeLessThan(POLL_MS / 2);
    const full = Date.now();
    expect((await waitFor(400, { known: ["w1"], newModels: true })).models).toEqual([]);
    expect(Date.now() - full).toBeGreaterThanOrEqual(350);
    expect((await waitFor(400, { known: ["w1"], newModels: false })).models).toEqual([]);
    expect((await waitFor(5000, { known: ["w1"], hungry: ["w1"] })).models).toEqual(["w1"]);
  });

  // Previously a retry's not_before passing between two statements made the long poll
  // sleep to its deadline.
  test("a long poll returns a model whose only request becomes ready in a few ms, every time", async () => {
    await batchOf("st", 1, { maxRetries: 40 });
    const late: string[] = [];
    const poll = () =>
      t.dispatch.waitForWork({
        dispatcherId: "st",
        models: ["st"],
        hungry: ["st"],
        known: ["st"],
        wait: ms(10_000),
      });
    for (let i = 0; i < 30 && late.length === 0; i++) {
      const d = 2 + (i % 20) * 5;
      const [c] = (await take("st", "st", 1)).claims;
      expect(c).toBeDefined();
      if (i < 20) {
        // A retry through the API (Retry-After wins: not_before = now + d).
        await report(failure(c!, { retryAfter: ms(d) }));
      } else {
        // Or the moment set behind the server's back: no NOTIFY at all.
        await report(release(c!, true));
        await sql.query(
          "UPDATE requests SET not_before = now() + $1 * interval '1 millisecond' WHERE id = $2",
          [d, c!.ref!.requestId],
        );
      }
      const notBefore = Number((await row(c!.ref!.requestId)).not_before_ms);
      const res = await poll();
      const at = Date.now();
      if (res.models[0] !== "st" || at > notBefore + 1000) {
        late.push(`d=${d} ms: ${res.models} after not_before + ${at - notBefore} ms`);
      }
    }
    expect(late).toEqual([]);
  });
});
