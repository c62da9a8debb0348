import { performance } from "node:perf_hooks";
import { describe, expect, test } from "vitest";
import { fenceMarginMs, renewIntervalMs } from "../../src/dispatcher/fencing.js";
import type { DispatchLease } from "../../src/dispatcher/lease-client.js";
import { type HeldLease, LeaseTable } from "../../src/dispatcher/lease-table.js";

describe("fencing arithmetic", () => {
  test("the derived margin is max(2 s, ttl/5), at most ttl/2", () => {
    expect(fenceMarginMs(30_000)).toBe(6_000);
    expect(fenceMarginMs(5_000)).toBe(2_000);
    expect(fenceMarginMs(2_000)).toBe(1_000);
    expect(fenceMarginMs(120_000)).toBe(24_000);
  });

  test("a configured margin is used, capped at ttl/2", () => {
    expect(fenceMarginMs(30_000, 500)).toBe(500);
    expect(fenceMarginMs(30_000, 0)).toBe(0);
    expect(fenceMarginMs(3_000, 10_000)).toBe(1_500);
  });

  test("the renewal period gives two tries before the fence", () => {
    for (const ttl of [1_000, 2_000, 3_000, 30_000, 300_000]) {
      const margin = fenceMarginMs(ttl);
      const every = renewIntervalMs(ttl, margin);
      expect(2 * every).toBeLessThanOrEqual(ttl - margin);
      expect(every).toBeLessThanOrEqual(ttl / 3);
    }
    expect(renewIntervalMs(30_000, 6_000)).toBe(10_000);
    expect(renewIntervalMs(30_000, 6_000, 1234)).toBe(1234);
  });
});

function lease(id: string, ttlMs: number): DispatchLease {
  return {
    ref: { requestId: id, token: 1n },
    batchId: "b",
    customId: id,
    model: "m",
    attempt: 1,
    request: { method: "POST", url: "http://127.0.0.1:9/", headers: [], body: "" },
    ttlMs,
  };
}

function table(marginMs: number) {
  const fenced: HeldLease[] = [];
  const t = new LeaseTable(
    () => marginMs,
    (e) => fenced.push(e),
  );
  return { t, fenced };
}

const aborted = (e: HeldLease) =>
  new Promise<number>((resolve) =>
    e.signal.addEventListener("abort", () => resolve(performance.now())),
  );

describe("LeaseTable", () => {
  test("a running request is aborted at receive time + ttl − margin", async () => {
    const { t, fenced } = table(100);
    const received = performance.now();
    const e = t.add(lease("a", 300), received);
    const at = await aborted(e);
    expect(at - received).toBeGreaterThanOrEqual(199);
    expect(at - received).toBeLessThan(400);
    expect(e.gaveUp?.reason).toBe("fenced");
    expect(fenced).toEqual([e]);
  });

  test("a renewal moves the fence to its send time + ttl − margin, never earlier", async () => {
    const { t } = table(100);
    const start = performance.now();
    const e = t.add(lease("a", 300), start);
    t.extend(e.ref, start + 150, 300);
    expect(e.deadline).toBeCloseTo(start + 350, 5);
    t.extend(e.ref, start, 100); // earlier: ignored
    expect(e.deadline).toBeCloseTo(start + 350, 5);
    const at = await aborted(e);
    expect(at - start).toBeGreaterThanOrEqual(349);
  });

  test("an attempt that is over is never fenced; giving up is first-reason-wins", async () => {
    const { t, fenced } = table(0);
    const done = t.add(lease("done", 50), performance.now());
    t.toReporting(done);
    const lost = t.add(lease("lost", 10_000), performance.now());
    t.start(lost);
    const queued = t.add(lease("queued", 10_000), performance.now());
    expect(t.giveUp(lost, "lost", "renewal said so")).toBe(true);
    expect(t.giveUp(lost, "shutdown", "later")).toBe(false);
    expect(lost.gaveUp).toEqual({ reason: "lost", detail: "renewal said so" });
    expect(lost.signal.aborted).toBe(true);
    await new Promise((r) => setTimeout(r, 100));
    expect(done.signal.aborted).toBe(false);
    expect(fenced).toEqual([]);
    expect(t.running().map((e) => e.key)).toEqual(["lost/1"]);
    t.remove(done);
    t.remove(lost);
    t.remove(queued);
    expect(t.size).toBe(0);
  });

  test("a queued claim is fenced at its deadline too, and stays queued for the caller to release", async () => {
    const { t, fenced } = table(100);
    const received = performance.now();
    const e = t.add(lease("q", 300), received);
    const at = await aborted(e);
    expect(at - received).toBeGreaterThanOrEqual(199);
    expect(fenced).toEqual([e]);
    expect(e.phase).toBe("queued");
    expect(t.running()).toEqual([]);
  });

  test("changed() resolves when a lease moves on", async () => {
    const { t } = table(0);
    const e = t.add(lease("a", 10_000), performance.now());
    const waiting = t.changed();
    t.toReporting(e);
    await waiting;
    t.remove(e);
  });
});
