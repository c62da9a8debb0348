/**
 * The dispatcher's loops against a fake control plane (no Postgres) and a
 * loopback upstream: capacity, lost leases, failing reports, stop(grace).
 */
import { afterAll, afterEach, beforeAll, describe, expect, test } from "vitest";
import { resolveDispatcherConfig } from "../../src/config/dispatcher-config.js";
import { type Dispatcher, startDispatcher } from "../../src/dispatcher/dispatcher.js";
import {
  ControlPlaneError,
  type DispatchLease,
  type LeaseClient,
  type LeaseRef,
  type Report,
  refKey,
} from "../../src/dispatcher/lease-client.js";
import { makeLogger } from "../../src/logger.js";
import { startUpstream, type Upstream } from "../helpers/upstream.js";

/** An in-memory DispatchService: leases the test hands it, reports it keeps. */
class FakeControlPlane implements LeaseClient {
  readonly offered: DispatchLease[] = [];
  readonly acquires: number[] = [];
  readonly reports: Report[] = [];
  readonly lost = new Set<string>();
  reportsFail = false;
  reportCalls = 0;
  /** A poll is waiting. */
  polling = false;
  #wake: (() => void) | undefined;
  #next = 0;

  constructor(private readonly upstream: Upstream) {}

  /** Offers a lease for custom id `customId`. */
  offer(customId: string, ttlMs = 30_000): DispatchLease {
    const id = `req-${++this.#next}`;
    const l: DispatchLease = {
      ref: { requestId: id, token: BigInt(this.#next) },
      batchId: "b",
      customId,
      model: "m",
      attempt: 1,
      request: {
        method: "POST",
        url: `${this.upstream.url}/v1/x`,
        headers: [
          ["content-type", "application/json"],
          ["x-fusillade-request-id", id],
          ["x-fusillade-custom-id", customId],
        ],
        body: JSON.stringify({ model: "m" }),
      },
      ttlMs,
    };
    this.offered.push(l);
    this.#wake?.();
    return l;
  }

  async acquire({ max, waitMs, signal }: { max: number; waitMs: number; signal: AbortSignal }) {
    this.acquires.push(max);
    if (this.offered.length === 0) {
      this.polling = true;
      await new Promise<void>((resolve) => {
        const done = () => {
          clearTimeout(timer);
          signal.removeEventListener("abort", done);
          this.#wake = undefined;
          resolve();
        };
        const timer = setTimeout(done, waitMs);
        signal.addEventListener("abort", done);
        this.#wake = done;
      });
      this.polling = false;
    }
    return this.offered.splice(0, max);
  }

  async renew(refs: LeaseRef[]) {
    return {
      renewed: refs
        .filter((r) => !this.lost.has(r.requestId))
        .map((ref) => ({ ref, ttlMs: 30_000 })),
      lost: refs
        .filter((r) => this.lost.has(r.requestId))
        .map((ref) => ({ ref, reason: "batch_cancelled" as const })),
    };
  }

  async report(reports: Report[]) {
    this.reportCalls++;
    if (this.reportsFail)
      throw new ControlPlaneError("ReportResults: Unavailable: connection refused", true);
    this.reports.push(...reports);
    return new Map(reports.map((r) => [refKey(r.ref), "recorded" as const]));
  }

  close() {}

  /** The report for `customId`'s lease, once there is one. */
  reportOf(l: DispatchLease): Report | undefined {
    return this.reports.find((r) => r.ref.requestId === l.ref.requestId);
  }
}

let upstream: Upstream;
let cp: FakeControlPlane;
let dispatcher: Dispatcher | undefined;

beforeAll(async () => {
  upstream = await startUpstream();
});
afterAll(async () => {
  await upstream.close();
});
afterEach(async () => {
  await dispatcher?.stop(0);
  dispatcher = undefined;
});

function start(
  options: Parameters<typeof resolveDispatcherConfig>[0] extends infer O ? Partial<O> : never,
) {
  cp = new FakeControlPlane(upstream);
  const config = resolveDispatcherConfig({
    controlPlaneUrl: "http://127.0.0.1:1",
    id: "unit",
    acquireWaitMs: 200,
    logLevel: "silent",
    ...options,
  });
  dispatcher = startDispatcher(config, makeLogger("silent"), { client: cp });
  return dispatcher;
}

/** Polls `predicate` every 5 ms (the fake has no events to await). */
async function until(predicate: () => boolean, what: string, timeoutMs = 5000) {
  const end = Date.now() + timeoutMs;
  while (!predicate()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

describe("dispatcher loops", () => {
  test("asks only for free slots and never holds more than its capacity", async () => {
    start({ capacity: 3 });
    upstream.script("cap-slow", [{ hang: true }]);
    for (let i = 0; i < 5; i++) cp.offer(i < 3 ? "cap-slow" : `cap-${i}`);
    await upstream.until(() => upstream.of("cap-slow").length === 3, 5000, "3 hanging");
    expect(dispatcher!.stats()).toMatchObject({ held: 3, running: 3 });
    expect(cp.acquires[0]).toBe(3);
    expect(cp.offered).toHaveLength(2);
    expect(Math.max(...cp.acquires)).toBe(3);
  });

  test("a lease named lost by a renewal is aborted at the upstream and released", async () => {
    start({ renewIntervalMs: 50 });
    upstream.script("lost-1", [{ hang: true }]);
    const l = cp.offer("lost-1");
    await upstream.until(() => upstream.of("lost-1").length === 1, 5000, "the request");
    cp.lost.add(l.ref.requestId);
    await upstream.until(
      () => upstream.of("lost-1")[0]!.end === "closed",
      2000,
      "its socket to close",
    );
    await until(() => cp.reportOf(l) !== undefined, "its report");
    expect(cp.reportOf(l)).toMatchObject({
      kind: "release",
      reason: "lost: lease lost: batch_cancelled",
    });
    expect(dispatcher!.stats()).toMatchObject({ lost: 1, releases: 1, held: 0 });
  });

  test("while reports fail it keeps the outcomes and takes no new work", async () => {
    start({});
    cp.reportsFail = true;
    const a = cp.offer("fail-a");
    await until(() => cp.reportCalls >= 2, "a retried report");
    expect(dispatcher!.stats()).toMatchObject({ reportsFailing: true, held: 1, reportsPending: 1 });
    // A poll already out when reports began to fail may still bring work; wait it out.
    await until(() => !cp.polling, "the last poll to end");
    const polls = cp.acquires.length;
    const b = cp.offer("fail-b");
    // A negative: nothing may happen for a while. 300 ms spans several retries.
    await new Promise((r) => setTimeout(r, 300));
    expect(cp.acquires.length).toBe(polls);
    expect(upstream.of("fail-b")).toHaveLength(0);

    cp.reportsFail = false;
    await until(() => cp.reportOf(b) !== undefined, "the second request's report", 10_000);
    expect(cp.reportOf(a)).toMatchObject({
      kind: "outcome",
      outcome: { kind: "completion", statusCode: 200 },
    });
    expect(upstream.of("fail-a")).toHaveLength(1);
  });

  test("stop(grace): running requests get the grace, the rest are aborted and released", async () => {
    start({});
    upstream.script("grace-quick", [{ delayMs: 150 }]);
    upstream.script("grace-hang", [{ hang: true }]);
    const quick = cp.offer("grace-quick");
    const hang = cp.offer("grace-hang");
    await upstream.until(
      () => upstream.of("grace-quick").length === 1 && upstream.of("grace-hang").length === 1,
      5000,
      "both requests",
    );
    const stopping = dispatcher!.stop(400);
    const stoppedAt = Date.now();
    await stopping;
    expect(cp.reportOf(quick)).toMatchObject({ kind: "outcome", outcome: { kind: "completion" } });
    expect(cp.reportOf(hang)).toMatchObject({ kind: "release" });
    const cut = upstream.of("grace-hang")[0]!;
    expect(cut.end).toBe("closed");
    expect(cut.endedAt! - stoppedAt).toBeGreaterThanOrEqual(350);
    expect(dispatcher!.stats()).toMatchObject({
      held: 0,
      shutdownAborts: 1,
      completions: 1,
      releases: 1,
    });
    // No poll after the stop.
    const polls = cp.acquires.length;
    cp.offer("after-stop");
    await new Promise((r) => setTimeout(r, 50));
    expect(cp.acquires.length).toBe(polls);
  });
});
