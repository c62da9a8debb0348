import { describe, expect, test } from "vitest";
import {
  ControlPlaneError,
  type Disposition,
  type LeaseClient,
  type Report,
  refKey,
} from "../../src/dispatcher/lease-client.js";
import { MAX_CALLS, Reporter } from "../../src/dispatcher/reporter.js";
import { makeLogger } from "../../src/logger.js";

/** A report client whose calls the test answers one by one. */
function fakeClient() {
  const calls: Array<{
    reports: Report[];
    answer: (d?: Disposition) => void;
    fail: (e: Error) => void;
  }> = [];
  let arrived: (() => void) | undefined;
  const client: LeaseClient = {
    acquire: async () => [],
    renew: async () => ({ renewed: [], lost: [] }),
    report: (reports) =>
      new Promise((resolve, reject) => {
        calls.push({
          reports,
          answer: (d = "recorded") => resolve(new Map(reports.map((r) => [refKey(r.ref), d]))),
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
});
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
    const all = Array.from({ length: 13 }, (_, i) => r.submit(release(i)));
    // The first goes alone (idle); the fifth fills a batch: a second call.
    await call(2);
    expect(calls.map((c) => c.reports.length)).toEqual([1, 4]);
    calls[0]!.answer();
    await call(3);
    calls[1]!.answer();
    await call(4);
    calls[2]!.answer();
    calls[3]!.answer();
    expect(calls.map((c) => c.reports.length)).toEqual([1, 4, 4, 4]);
    expect(await Promise.all(all)).toEqual(Array(13).fill("recorded"));
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
    (await call(1)).fail(new ControlPlaneError("ReportResults: Unavailable", true));
    await r.changed();
    expect(r.failing).toBe(true);
    expect(r.pending).toBe(2);
    const c2 = await call(2);
    expect(c2.reports.map((x) => x.ref.requestId)).toEqual(["r1", "r2"]);
    c2.fail(new ControlPlaneError("ReportResults: Unavailable", true));
    const c3 = await call(3);
    c3.answer();
    expect(await Promise.all(answers)).toEqual(["recorded", "recorded"]);
    expect(r.failing).toBe(false);
  });

  test("a rejected call drops its reports (their leases expire); stop() drops the queue", async () => {
    const { client, call } = fakeClient();
    const r = new Reporter(client, options, log);
    const rejected = r.submit(release(1));
    (await call(1)).fail(new ControlPlaneError("ReportResults: InvalidArgument", false));
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
});
