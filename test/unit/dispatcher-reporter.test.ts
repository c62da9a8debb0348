/**
 * The Reporter (src/dispatcher/reporter.ts): batching, linger, the failing
 * mode, rejected calls, and the refill each call carries.
 */
import { performance } from "node:perf_hooks";
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { describe, expect, test } from "vitest";
import {
  ControlPlaneError,
  controlPlaneError,
  type DispatchLease,
  type Disposition,
  fromProtoClaim,
  type LeaseClient,
  type ModelHold,
  type Report,
  refKey,
} from "../../src/dispatcher/lease-client.js";
import {
  MAX_CALLS,
  MAX_REJECTIONS,
  type Refill,
  type RefillHooks,
  Reporter,
} from "../../src/dispatcher/reporter.js";
import { ClaimSchema } from "../../src/gen/fusillade/v1/dispatch_service_pb.js";
import { makeLogger } from "../../src/logger.js";

/*
 * Errors as the lease client builds them (src/dispatcher/lease-client.ts),
 * never by hand: a status the control plane answered carries its code; a
 * transport failure (the error has a cause) carries none.
 */
/** The control plane answered ReportResults with `code`. */
const answered = (code: Code, message = "scripted") =>
  controlPlaneError(new ConnectError(message, code), "ReportResults");
/** The call never got an answer (connection refused). */
const unreachable = () =>
  controlPlaneError(
    new ConnectError(
      "connect ECONNREFUSED",
      Code.Unavailable,
      undefined,
      undefined,
      new Error("ECONNREFUSED"),
    ),
    "ReportResults",
  );
/** The answer came but the client cannot read it (a claim without its ref). */
function unreadable(): ControlPlaneError {
  try {
    fromProtoClaim(create(ClaimSchema, {}));
  } catch (e) {
    if (e instanceof ControlPlaneError) return e;
  }
  throw new Error("a claim without a ref was read");
}

/** A report client whose calls the test answers one by one. */
function fakeClient() {
  const calls: Array<{
    reports: Report[];
    refill: Refill[];
    answer: (d?: Disposition, claims?: DispatchLease[], holds?: ModelHold[]) => void;
    fail: (e: Error) => void;
  }> = [];
  let arrived: (() => void) | undefined;
  const client: LeaseClient = {
    sync: () => Promise.reject(new Error("not used")),
    waitForWork: () => Promise.reject(new Error("not used")),
    report: (reports, refill) =>
      new Promise((resolve, reject) => {
        calls.push({
          reports,
          refill,
          answer: (d = "recorded", claims = [], holds = []) =>
            resolve({
              dispositions: new Map(reports.map((r) => [refKey(r.ref), d])),
              claims,
              holds,
            }),
          fail: reject,
        });
        arrived?.();
      }),
    close: () => {},
  };
  /** Resolves when call number `n` (1-based) has been made. */
  const call = (n: number) =>
    new Promise<(typeof calls)[number]>((resolve) => {
      const check = () => {
        if (calls.length >= n) {
          arrived = undefined;
          resolve(calls[n - 1]!);
        } else arrived = check;
      };
      check();
    });
  return { client, calls, call };
}

const release = (i: number): Report => ({
  ref: { requestId: `r${i}`, token: BigInt(i) },
  kind: "release",
  reason: "test",
  unsent: false,
});

function claim(model: string, i: number): DispatchLease {
  return {
    ref: { requestId: `c${i}`, token: BigInt(100 + i) },
    batchId: "b",
    customId: `c${i}`,
    model,
    attempt: 1,
    request: { method: "POST", url: "http://127.0.0.1:9/", headers: [], body: "" },
    ttlMs: 30_000,
  };
}

/** Refill hooks that hand out `rooms` (one list per call) and record what they hear. */
function hooks(rooms: Refill[][]) {
  const heard: Array<
    | {
        kind: "claims";
        claims: DispatchLease[];
        holds: ModelHold[];
        asked: Refill[];
        sentAt: number;
      }
    | { kind: "failed"; asked: Refill[] }
  > = [];
  let asks = 0;
  const h: RefillHooks = {
    refill: () => {
      asks++;
      return rooms.shift() ?? [];
    },
    onClaims: (claims, holds, asked, sentAt) =>
      heard.push({ kind: "claims", claims, holds, asked, sentAt }),
    onRefillFailed: (asked) => heard.push({ kind: "failed", asked }),
  };
  return { h, heard, asks: () => asks };
}
const log = makeLogger("silent");
const options = { batchSize: 4, maxBytes: 1 << 20, lingerMs: 20, rpcTimeoutMs: 1000 };

describe("Reporter", () => {
  test("sends at once when idle; what arrives during a call goes together after it", async () => {
    const { client, calls, call } = fakeClient();
    const r = new Reporter(client, { ...options, lingerMs: 60_000 }, log);
    const first = r.submit(release(1));
    const c1 = await call(1);
    expect(c1.reports).toHaveLength(1);
    const rest = [2, 3].map((i) => r.submit(release(i)));
    expect(calls).toHaveLength(1); // lingering: the first call is still out
    c1.answer();
    expect(await first).toBe("recorded");
    const c2 = await call(2);
    expect(c2.reports.map((x) => x.ref.requestId)).toEqual(["r2", "r3"]);
    c2.answer("requeued");
    expect(await Promise.all(rest)).toEqual(["requeued", "requeued"]);
  });

  test(`a full batch goes without waiting, up to ${MAX_CALLS} calls at once`, async () => {
    const { client, calls, call } = fakeClient();
    const r = new Reporter(client, { ...options, lingerMs: 60_000 }, log);
    // The first goes alone (idle); each further 4 fill a batch: a call each, up to MAX_CALLS.
    const n = 1 + 4 * MAX_CALLS;
    const all = Array.from({ length: n }, (_, i) => r.submit(release(i)));
    await call(MAX_CALLS);
    const full = [1, ...Array(MAX_CALLS - 1).fill(4)];
    expect(calls.map((c) => c.reports.length)).toEqual(full);
    calls[0]!.answer();
    await call(MAX_CALLS + 1);
    expect(calls.map((c) => c.reports.length)).toEqual([...full, 4]);
    for (const c of calls.slice(1)) c.answer();
    expect(await Promise.all(all)).toEqual(Array(n).fill("recorded"));
  });

  // Regression: `pending` added the calls in flight, not the reports they carry.
  test("pending counts the reports queued and in flight", async () => {
    const { client, call } = fakeClient();
    const r = new Reporter(client, { ...options, lingerMs: 60_000 }, log);
    const all = Array.from({ length: 5 }, (_, i) => r.submit(release(i)));
    await call(2); // 1 alone, then a full batch of 4
    expect(r.pending).toBe(5);
    void all;
  });

  test("after the linger time a second call goes even if the batch is not full", async () => {
    const { client, calls, call } = fakeClient();
    const r = new Reporter(client, { ...options, lingerMs: 20 }, log);
    void r.submit(release(1));
    await call(1);
    const started = performance.now();
    void r.submit(release(2));
    const c2 = await call(2);
    expect(performance.now() - started).toBeGreaterThanOrEqual(15);
    expect(c2.reports).toHaveLength(1);
    for (const c of calls) c.answer();
  });

  test("a retriable failure keeps the reports, turns failing, and retries until it gets through", async () => {
    const { client, call } = fakeClient();
    const r = new Reporter(client, options, log);
    const answers = [1, 2].map((i) => r.submit(release(i)));
    (await call(1)).fail(unreachable());
    await r.changed();
    expect(r.failing).toBe(true);
    expect(r.pending).toBe(2);
    const c2 = await call(2);
    expect(c2.reports.map((x) => x.ref.requestId)).toEqual(["r1", "r2"]);
    c2.fail(unreachable());
    const c3 = await call(3);
    c3.answer();
    expect(await Promise.all(answers)).toEqual(["recorded", "recorded"]);
    expect(r.failing).toBe(false);
  });

  test("a call the control plane rejects is split; a report rejected alone again becomes a report_rejected failure; the others are recorded", async () => {
    const { client, call } = fakeClient();
    const r = new Reporter(client, { ...options, lingerMs: 60_000 }, log);
    const tooBig = (m: string) => answered(Code.ResourceExhausted, m);
    const poison: Report = {
      ref: { requestId: "big", token: 7n },
      kind: "outcome",
      outcome: {
        kind: "completion",
        statusCode: 200,
        headers: { a: "b" },
        body: new Uint8Array(1000),
      },
    };
    const first = r.submit(release(1)); // goes at once, alone
    const rest = [r.submit(poison), r.submit(release(2)), r.submit(release(3))];
    (await call(1)).answer();
    expect(await first).toBe("recorded");
    const c2 = await call(2);
    expect(c2.reports.map((x) => x.ref.requestId)).toEqual(["big", "r2", "r3"]);
    c2.fail(tooBig("message larger than 64 KiB"));
    // One by one now, the poison first; it goes to the back after each rejection.
    const c3 = await call(3);
    expect(c3.reports.map((x) => x.ref.requestId)).toEqual(["big"]);
    c3.fail(tooBig("again"));
    const c4 = await call(4);
    expect(c4.reports.map((x) => x.ref.requestId)).toEqual(["r2"]);
    c4.answer();
    const c5 = await call(5);
    expect(c5.reports.map((x) => x.ref.requestId)).toEqual(["r3"]);
    c5.answer();
    const c6 = await call(6);
    expect(c6.reports.map((x) => x.ref.requestId)).toEqual(["big"]);
    c6.fail(tooBig("and again"));
    // Rejected alone MAX_REJECTIONS times: the stand-in failure goes instead.
    const c7 = await call(7);
    expect(c7.reports).toHaveLength(1);
    const stand = c7.reports[0]!;
    expect(stand.ref).toEqual(poison.ref);
    expect(stand.kind === "outcome" && stand.outcome).toMatchObject({
      kind: "failure",
      code: "report_rejected",
      statusCode: 200,
      retriable: false,
      headers: {},
    });
    expect(
      stand.kind === "outcome" &&
        stand.outcome.kind === "failure" &&
        stand.outcome.bodyExcerpt.length,
    ).toBe(0);
    expect(
      stand.kind === "outcome" && stand.outcome.kind === "failure" && stand.outcome.message,
    ).toMatch(/could not record.*ResourceExhausted/);
    c7.answer();
    expect(await Promise.all(rest)).toEqual(["recorded", "recorded", "recorded"]);
    expect(r.failing).toBe(false);
    expect(MAX_REJECTIONS).toBe(2);
  });

  test("a stand-in that is rejected too is dropped: its lease expires, nothing is retried forever", async () => {
    const { client, call } = fakeClient();
    const r = new Reporter(client, options, log);
    const bad = () => answered(Code.Internal);
    const p = r.submit({
      ref: { requestId: "x", token: 1n },
      kind: "outcome",
      outcome: { kind: "completion", statusCode: 200, headers: {}, body: new Uint8Array(1) },
    });
    for (let n = 1; n <= MAX_REJECTIONS; n++) (await call(n)).fail(bad());
    // The stand-in gets as many tries.
    for (let n = MAX_REJECTIONS + 1; n <= 2 * MAX_REJECTIONS; n++) {
      const stand = await call(n);
      expect(stand.reports[0]!.kind === "outcome" && stand.reports[0]!.outcome.kind).toBe(
        "failure",
      );
      stand.fail(bad());
    }
    expect(await p).toBeUndefined();
    expect(r.pending).toBe(0);
  });

  test("while the control plane is unreachable, reports whose claims expired are dropped as LOST; the rest wait", async () => {
    const { client, call } = fakeClient();
    const r = new Reporter(client, options, log);
    let expiry = performance.now() + 60_000;
    const expiring = r.submit(release(1), () => expiry);
    const lasting = r.submit(release(2), () => performance.now() + 60_000);
    const c1 = await call(1);
    expect(c1.reports).toHaveLength(1);
    expiry = performance.now() - 1; // its claim was not renewed in time
    c1.fail(unreachable()); // transport: no code
    expect(await expiring).toBe("lost");
    const c2 = await call(2);
    expect(c2.reports.map((x) => x.ref.requestId)).toEqual(["r2"]);
    c2.answer();
    expect(await lasting).toBe("recorded");
  });

  test("a call answered InvalidArgument is split like any rejected call: its reports go one by one, none is dropped", async () => {
    const { client, call } = fakeClient();
    const r = new Reporter(client, { ...options, lingerMs: 60_000 }, log);
    const first = r.submit(release(1)); // goes at once, alone
    const rest = [r.submit(release(2)), r.submit(release(3))];
    (await call(1)).answer();
    await first;
    const c2 = await call(2);
    expect(c2.reports).toHaveLength(2);
    c2.fail(answered(Code.InvalidArgument, "outcomes[1].ref: missing"));
    for (const n of [3, 4]) {
      const alone = await call(n);
      expect(alone.reports).toHaveLength(1);
      alone.answer();
    }
    expect(await Promise.all(rest)).toEqual(["recorded", "recorded"]);
  });

  test("an answer the client cannot read drops its reports (their leases expire); stop() drops the queue", async () => {
    const { client, call } = fakeClient();
    const r = new Reporter(client, options, log);
    const rejected = r.submit(release(1));
    (await call(1)).fail(unreadable());
    expect(await rejected).toBeUndefined();
    expect(r.failing).toBe(false);
    const inFlight = r.submit(release(2));
    const queued = r.submit(release(3));
    r.stop();
    expect(await queued).toBeUndefined();
    (await call(2)).answer();
    expect(await inFlight).toBe("recorded");
    expect(await r.submit(release(4))).toBeUndefined();
  });

  test("each call carries the rooms the refill hook gives as it is sent; the answer's claims reach onClaims with what was asked", async () => {
    const { client, call } = fakeClient();
    const rooms = [
      [{ model: "a", room: 3 }],
      [
        { model: "a", room: 1 },
        { model: "b", room: 2 },
      ],
    ];
    const { h, heard, asks } = hooks(rooms);
    const r = new Reporter(client, { ...options, lingerMs: 60_000 }, log, h);
    const before = performance.now();
    const first = r.submit(release(1));
    const c1 = await call(1);
    expect(asks()).toBe(1);
    expect(c1.refill).toEqual([{ model: "a", room: 3 }]);
    const claims = [claim("a", 1), claim("a", 2)];
    const holds = [{ model: "a", remainingMs: 500 }];
    c1.answer("recorded", claims, holds);
    expect(await first).toBe("recorded");
    expect(heard).toEqual([
      {
        kind: "claims",
        claims,
        holds,
        asked: [{ model: "a", room: 3 }],
        sentAt: expect.any(Number),
      },
    ]);
    const sentAt = (heard[0] as { sentAt: number }).sentAt;
    expect(sentAt).toBeGreaterThanOrEqual(before);
    // The second call asks again, with the rooms of its own moment.
    const second = r.submit(release(2));
    const c2 = await call(2);
    expect(c2.refill).toEqual([
      { model: "a", room: 1 },
      { model: "b", room: 2 },
    ]);
    c2.answer("recorded", [claim("b", 3)]);
    await second;
    expect(heard[1]).toMatchObject({ kind: "claims", asked: c2.refill, claims: [{ model: "b" }] });
  });

  test("a failed call tells onRefillFailed what it asked; while failing, calls ask for nothing", async () => {
    const { client, call } = fakeClient();
    const { h, heard, asks } = hooks([[{ model: "a", room: 2 }], [{ model: "a", room: 5 }]]);
    const r = new Reporter(client, options, log, h);
    const answered = r.submit(release(1));
    (await call(1)).fail(unreachable());
    await r.changed();
    expect(heard).toEqual([{ kind: "failed", asked: [{ model: "a", room: 2 }] }]);
    // The retry (failing) carries no refill and does not consult the hook.
    const c2 = await call(2);
    expect(c2.refill).toEqual([]);
    expect(asks()).toBe(1);
    c2.answer();
    expect(await answered).toBe("recorded");
    expect(heard[1]).toMatchObject({ kind: "claims", asked: [], claims: [] });
    // Healthy again: the next call asks.
    const next = r.submit(release(2));
    const c3 = await call(3);
    expect(c3.refill).toEqual([{ model: "a", room: 5 }]);
    c3.answer();
    await next;
  });

  test("an unreadable answer also tells onRefillFailed", async () => {
    const { client, call } = fakeClient();
    const { h, heard } = hooks([[{ model: "a", room: 4 }]]);
    const r = new Reporter(client, options, log, h);
    const dropped = r.submit(release(1));
    (await call(1)).fail(unreadable());
    expect(await dropped).toBeUndefined();
    expect(heard).toEqual([{ kind: "failed", asked: [{ model: "a", room: 4 }] }]);
  });

  test("a report the answer does not name resolves lost", async () => {
    const { client, call } = fakeClient();
    const r = new Reporter(client, options, log);
    const p = r.submit(release(1));
    const c = await call(1);
    expect(c.refill).toEqual([]); // no hooks: asks for nothing
    // Answer with dispositions for another ref only.
    c.reports.splice(0, 1, release(99));
    c.answer();
    expect(await p).toBe("lost");
  });
});

describe("failing mode ends when nothing is left to report", () => {
  test("a lone report whose claim expired while the control plane was away: dropped as LOST, the reporter healthy again, buffered work told to start", async () => {
    const { client, call } = fakeClient();
    let healthy = 0;
    const r = new Reporter(client, options, makeLogger("silent"), {
      refill: () => [],
      onClaims: () => undefined,
      onRefillFailed: () => undefined,
      onHealthy: () => {
        healthy++;
      },
    });
    let expiry = performance.now() + 60_000;
    const only = r.submit(release(1), () => expiry);
    const c1 = await call(1);
    c1.fail(unreachable());
    await r.changed();
    expect(r.failing).toBe(true);
    expiry = performance.now() - 1; // the claim expires while we wait to retry
    expect(await only).toBe("lost");
    // Dropped and healed in the same turn of the retry timer.
    expect(r.failing).toBe(false);
    expect(healthy).toBe(1);
    expect(r.pending).toBe(0);
  });
});
