/**
 * The claim intake (src/dispatcher/claim-intake.ts) on its own: what a call
 * asks for per model, and where the claims and holds of its answer go. A real
 * slot book, lease table, fence policy and settler; the runner replaced by a
 * recorder (its own tests: dispatcher-attempts.test.ts).
 */
import { performance } from "node:perf_hooks";
import { describe, expect, test } from "vitest";
import { ClaimIntake } from "../../src/dispatcher/claim-intake.js";
import { FencePolicy, TTL_UNKNOWN_MS } from "../../src/dispatcher/fencing.js";
import type { ModelSlots } from "../../src/dispatcher/model-slots.js";
import { Settler } from "../../src/dispatcher/settler.js";
import { claim, granted, RecordingSink, shared } from "./dispatcher-parts.js";

function setup() {
  const s = shared();
  const sink = new RecordingSink();
  const fencing = new FencePolicy();
  const stopping = new AbortController();
  const runner = {
    pumped: [] as string[],
    pumpedAll: 0,
    holds: [] as Array<[string, number]>,
    pump: (m: ModelSlots) => void runner.pumped.push(m.model),
    pumpAll: () => void runner.pumpedAll++,
    hold: (m: ModelSlots, ms: number) => void runner.holds.push([m.model, ms]),
  };
  let pokes = 0;
  const intake = new ClaimIntake(
    s,
    fencing,
    new Settler(s, sink, () => 0),
    runner,
    stopping.signal,
    () => void pokes++,
  );
  return { s, sink, fencing, stopping, runner, intake, pokes: () => pokes };
}

describe("ClaimIntake", () => {
  test("claims are held (fence armed from the send time), buffered in their model, counted; their TTL is learnt", () => {
    const { s, fencing, runner, intake } = setup();
    granted(s, "a", 4).requested = 3;
    const sentAt = performance.now() - 10;
    const claims = [claim("a", 9_000), claim("a", 9_000)];
    expect(fencing.ttlMs).toBe(TTL_UNKNOWN_MS);
    intake.take({ claims, holds: [] }, new Map([["a", 3]]), sentAt);
    const m = s.book.get("a");
    expect(m.queue.map((e) => e.ref)).toEqual(claims.map((c) => c.ref));
    expect(m.queue[0]!.deadline).toBe(sentAt + 9_000);
    expect(s.table.size).toBe(2);
    expect(intake.counts.acquired).toBe(2);
    expect(fencing.ttlMs).toBe(9_000);
    // Fewer than asked: no backlog for us now.
    expect(m.requested).toBe(0);
    expect(m.starved).toBe(true);
    expect(runner.pumped).toEqual(["a"]);
  });

  test("as many as asked: not starved; holds go to the runner; a model that got nothing is not pumped", () => {
    const { s, runner, intake } = setup();
    granted(s, "a", 4).requested = 1;
    granted(s, "b", 4).requested = 2;
    intake.take(
      { claims: [claim("a")], holds: [{ model: "b", remainingMs: 700 }] },
      new Map([
        ["a", 1],
        ["b", 2],
      ]),
      performance.now(),
    );
    expect(s.book.get("a").starved).toBe(false);
    expect(s.book.get("b").starved).toBe(true);
    expect(runner.holds).toEqual([["b", 700]]);
    expect(runner.pumped).toEqual(["a"]);
  });

  test("once stopping, claims that arrive go straight back unsent and are never buffered", async () => {
    const { s, sink, stopping, intake } = setup();
    granted(s, "a", 4);
    stopping.abort();
    const c = claim("a");
    intake.take({ claims: [c], holds: [] }, new Map(), performance.now());
    expect(s.book.get("a").queue).toEqual([]);
    await sink.until(1);
    expect(sink.submitted[0]!.report).toEqual({
      ref: c.ref,
      kind: "release",
      reason: "shutting down",
      unsent: true,
    });
    expect(intake.refill()).toEqual([]);
  });

  test("refill asks each model's room (not a starved one's) and books it; a failed call un-books it", () => {
    const { s, intake } = setup();
    const a = granted(s, "a", 4); // room 4 + 2
    const b = granted(s, "b", 2);
    b.starved = true;
    const asked = intake.refill();
    expect(asked).toEqual([{ model: "a", room: 6 }]);
    expect(a.requested).toBe(6);
    expect(intake.refill()).toEqual([]); // booked: no room left
    intake.onRefillFailed(asked);
    expect(a.requested).toBe(0);
  });

  test("a report answer's claims: taken as asked, then every model pumped and the sync loop poked", () => {
    const { s, runner, intake, pokes } = setup();
    granted(s, "a", 4).requested = 2;
    intake.onClaims([claim("a"), claim("a")], [], [{ model: "a", room: 2 }], performance.now());
    expect(s.book.get("a").queue).toHaveLength(2);
    expect(s.book.get("a").starved).toBe(false);
    expect(runner.pumpedAll).toBe(1);
    expect(pokes()).toBe(1);
  });
});
