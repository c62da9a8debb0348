import { describe, expect, it } from "vitest";
import { allocateClaims, type ShareEntry } from "../../src/leases/fair-share.js";

let clock = 0;
function batch(id: string, o: Partial<ShareEntry> = {}): ShareEntry {
  return {
    batchId: id,
    tenant: "t",
    priority: 0,
    weight: 1,
    claims: 0,
    ready: true,
    createdAt: ++clock,
    ...o,
  };
}
const obj = (m: Map<string, number>) => Object.fromEntries([...m].sort());

/**
 * Runs a model with `limit` slots: every step one claim finishes (the one of
 * the batch holding most, so shares are what the allocation made them) and
 * the freed slot is given by allocateClaims. Returns claims per batch after `steps`.
 */
function steady(limit: number, entries: ShareEntry[], steps: number): Record<string, number> {
  const held = new Map(entries.map((e) => [e.batchId, e.claims]));
  let total = [...held.values()].reduce((a, b) => a + b, 0);
  const seen = new Map<string, number>();
  for (let s = 0; s < steps; s++) {
    const list = entries.map((e) => ({ ...e, claims: held.get(e.batchId)! }));
    for (const [id, n] of allocateClaims(limit - total, list)) {
      held.set(id, held.get(id)! + n);
      total += n;
    }
    for (const [id, n] of held) seen.set(id, (seen.get(id) ?? 0) + n);
    // A random running request ends: pick in proportion to what each holds.
    let r = (s * 7919) % total;
    for (const [id, n] of held) {
      if (r < n) {
        held.set(id, n - 1);
        total--;
        break;
      }
      r -= n;
    }
  }
  return Object.fromEntries([...seen].map(([id, n]) => [id, n / steps]));
}

describe("allocateClaims", () => {
  it("gives a lone batch the whole room (work-conserving)", () => {
    expect(obj(allocateClaims(10, [batch("a")]))).toEqual({ a: 10 });
  });

  it("gives nothing with no room or no ready batch", () => {
    expect(allocateClaims(0, [batch("a")]).size).toBe(0);
    expect(allocateClaims(5, [batch("a", { ready: false, claims: 3 })]).size).toBe(0);
  });

  it("sends a newcomer the freed slots until it holds as many as the running batch", () => {
    const big = batch("big", { claims: 9 });
    const small = batch("small");
    expect(obj(allocateClaims(1, [big, small]))).toEqual({ small: 1 });
    expect(obj(allocateClaims(4, [big, small]))).toEqual({ small: 4 });
    // 9 + 0 + 11 = 20: the newcomer reaches 10, then they alternate.
    expect(obj(allocateClaims(11, [big, small]))).toEqual({ big: 1, small: 10 });
  });

  it("splits equally among tenants first, then among a tenant's batches", () => {
    const entries = [
      batch("a1", { tenant: "A" }),
      batch("a2", { tenant: "A" }),
      batch("a3", { tenant: "A" }),
      batch("b1", { tenant: "B" }),
    ];
    // 12 slots: tenant B's one batch gets 6, tenant A's three get 2 each.
    expect(obj(allocateClaims(12, entries))).toEqual({ a1: 2, a2: 2, a3: 2, b1: 6 });
  });

  it("weights tenants: 3 to 1 gives 75 % / 25 %", () => {
    const entries = [batch("a", { tenant: "A", weight: 3 }), batch("b", { tenant: "B" })];
    expect(obj(allocateClaims(20, entries))).toEqual({ a: 15, b: 5 });
    // In a steady state where one claim ends at a time, the shares stay there.
    const s = steady(20, entries, 2000);
    expect(s.a! / 20).toBeCloseTo(0.75, 1);
    expect(s.b! / 20).toBeCloseTo(0.25, 1);
  });

  it("counts the claims of a tenant's batches that have no ready work against the tenant", () => {
    const entries = [
      batch("a-done", { tenant: "A", ready: false, claims: 6 }),
      batch("a-more", { tenant: "A" }),
      batch("b", { tenant: "B" }),
    ];
    // A already holds 6; B catches up to 6 first, then they alternate: 6 + 0 + 0 + 8 = 14 → 7 / 7.
    expect(obj(allocateClaims(8, entries))).toEqual({ "a-more": 1, b: 7 });
  });

  it("serves the highest priority class first; lower classes get only what it cannot take", () => {
    const low = batch("low", { claims: 0 });
    const high = batch("high", { priority: 5 });
    expect(obj(allocateClaims(10, [low, high]))).toEqual({ high: 10 });
    const cap = new Map([["high", 3]]);
    expect(obj(allocateClaims(10, [low, high], "fair", cap))).toEqual({ high: 3, low: 7 });
  });

  it("respects capacities and re-offers what a short batch cannot take", () => {
    const entries = [batch("a"), batch("b"), batch("c")];
    const cap = new Map([
      ["a", 1],
      ["b", 0],
    ]);
    expect(obj(allocateClaims(9, entries, "fair", cap))).toEqual({ a: 1, c: 8 });
  });

  it("fifo: everything to the oldest ready batch, then the next", () => {
    const entries = [batch("old"), batch("new")];
    expect(obj(allocateClaims(5, entries, "fifo"))).toEqual({ old: 5 });
    expect(obj(allocateClaims(5, entries, "fifo", new Map([["old", 2]])))).toEqual({
      old: 2,
      new: 3,
    });
  });

  it("breaks ties by age: with equal claims the older batch is first", () => {
    const entries = [batch("first"), batch("second"), batch("third")];
    expect(obj(allocateClaims(1, entries))).toEqual({ first: 1 });
    expect(obj(allocateClaims(2, entries))).toEqual({ first: 1, second: 1 });
  });
});
