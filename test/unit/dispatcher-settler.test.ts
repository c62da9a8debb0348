/**
 * The settler (src/dispatcher/settler.ts) on its own: a claim's report, then
 * letting go of it. A real lease table; reports answered by the test.
 */
import { performance } from "node:perf_hooks";
import { describe, expect, test } from "vitest";
import { Settler } from "../../src/dispatcher/settler.js";
import { claim, completion, RecordingSink, shared } from "./dispatcher-parts.js";

describe("Settler", () => {
  test("the claim turns reporting at once, is held until its report is answered, then let go; dispositions and releases counted", async () => {
    const s = shared();
    const sink = new RecordingSink();
    sink.auto = undefined;
    const MARGIN_MS = 700;
    const settler = new Settler(s, sink, () => MARGIN_MS);
    const done = s.table.add(claim("a", 5_000), performance.now());
    const back = s.table.add(claim("a", 5_000), performance.now());
    const p1 = settler.settle(done, { ref: done.ref, kind: "outcome", outcome: completion() });
    const p2 = settler.releaseUnsent(back, "why");
    expect(done.phase).toBe("reporting");
    expect(back.phase).toBe("reporting");
    await sink.until(2);
    // Past the claim's real expiry (its fence plus the margin) the report is worthless.
    expect(sink.submitted[0]!.expiresAt?.()).toBe(done.deadline + MARGIN_MS);
    expect(sink.submitted[1]!.report).toEqual({
      ref: back.ref,
      kind: "release",
      reason: "why",
      unsent: true,
    });
    expect(s.table.size).toBe(2);
    sink.submitted[0]!.answer("recorded");
    sink.submitted[1]!.answer(undefined);
    await Promise.all([p1, p2]);
    expect(s.table.size).toBe(0);
    expect(settler.counts).toEqual({
      releases: 1,
      dispositions: { recorded: 1, requeued: 0, lost: 0, unreported: 1 },
    });
  });
});
