import { performance } from "node:perf_hooks";
import { describe, expect, test } from "vitest";
import {
  FencePolicy,
  fenceMarginMs,
  renewIntervalMs,
  TTL_UNKNOWN_MS,
} from "../../src/dispatcher/fencing.js";
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

describe("FencePolicy", () => {
  test("renews for the TTL the claims carry (the default until one came); an unknown TTL (0) changes nothing", () => {
    const p = new FencePolicy();
    expect(p.renewIntervalMs()).toBe(
      renewIntervalMs(TTL_UNKNOWN_MS, fenceMarginMs(TTL_UNKNOWN_MS)),
    );
    p.observeTtl(3_000);
    expect(p.renewIntervalMs()).toBe(750);
    p.observeTtl(0);
    expect(p.ttlMs).toBe(3_000);
    expect(p.margin(5_000)).toBe(2_000);
  });

  test("configured margin and renewal period win over the derived ones", () => {
    const p = new FencePolicy(500, 1_234);
    p.observeTtl(3_000);
    expect(p.margin(3_000)).toBe(500);
    expect(p.renewIntervalMs()).toBe(1_234);
    const { margin } = p; // passed around as a callback
    expect(margin(30_000)).toBe(500);
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

/**
 * How late a timer may fire on a loaded 2-core machine (event-loop lag), for
 * the one bound that is the behaviour: a fence must fire, and not at the
 * lease's expiry. The moment it is armed for is asserted exactly (the
 * deadline); this only bounds the lag.
 */
const TIMER_LAG_MS = 2_000;

describe("LeaseTable", () => {
  test("a running request is aborted at receive time + ttl − margin", async () => {
    const { t, fenced } = table(100);
    const received = performance.now();
    const e = t.add(lease("a", 300), received);
    expect(e.deadline).toBe(received + 200);
    const at = await aborted(e);
    expect(at).toBeGreaterThanOrEqual(e.deadline);
    expect(at - e.deadline).toBeLessThan(TIMER_LAG_MS);
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
    expect(at).toBeGreaterThanOrEqual(e.deadline);
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
    // A witness added after `done` with a later deadline: once its fence has
    // fired, `done`'s would have too (timers fire in deadline order).
    const witness = t.add(lease("witness", 60), performance.now());
    await aborted(witness);
    expect(done.deadline).toBeLessThan(witness.deadline);
    expect(done.signal.aborted).toBe(false);
    expect(fenced).toEqual([witness]);
    expect(t.running().map((e) => e.key)).toEqual(["lost/1"]);
    t.remove(done);
    t.remove(lost);
    t.remove(queued);
    t.remove(witness);
    expect(t.size).toBe(0);
  });

  test("a queued claim is fenced at its deadline too, and stays queued for the caller to release", async () => {
    const { t, fenced } = table(100);
    const received = performance.now();
    const e = t.add(lease("q", 300), received);
    const at = await aborted(e);
    expect(at).toBeGreaterThanOrEqual(received + 200);
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
