/**
 * The fencer (src/dispatcher/fencer.ts) on its own: grants fenced or lost,
 * claims fenced or lost. A real slot book, lease table and settler; reports
 * recorded by a sink.
 */
import { once } from "node:events";
import { performance } from "node:perf_hooks";
import { describe, expect, test } from "vitest";
import { Fencer } from "../../src/dispatcher/fencer.js";
import type { HeldLease } from "../../src/dispatcher/lease-table.js";
import { Settler } from "../../src/dispatcher/settler.js";
import { buffer, claim, granted, RecordingSink, shared } from "./dispatcher-parts.js";

function setup() {
  // The table's own fence calls the fencer, as the dispatcher wires it.
  let fencer: Fencer | undefined;
  const s = shared({ onFenced: (e) => fencer?.claimFenced(e) });
  const sink = new RecordingSink();
  fencer = new Fencer(s, new Settler(s, sink, () => 0));
  return { s, sink, fencer };
}

/** Marks `entries` running, as the runner does when it starts them. */
function run(s: ReturnType<typeof setup>["s"], ...entries: HeldLease[]) {
  for (const e of entries) {
    const m = s.book.get(e.lease.model);
    m.unqueue(e);
    s.table.start(e);
    m.running++;
  }
}

describe("Fencer", () => {
  test("a grant gone aborts the model's running requests (not another model's), gives its buffer back unsent, and drops the grant", async () => {
    const { s, sink, fencer } = setup();
    const a = granted(s, "a", 2);
    granted(s, "b", 2);
    const [runA, queuedA] = buffer(s, claim("a"), claim("a"));
    const [runB] = buffer(s, claim("b"));
    run(s, runA!, runB!);
    fencer.grantGone(a, "fenced");
    expect(runA!.signal.aborted).toBe(true);
    expect(runA!.gaveUp?.reason).toBe("fenced");
    expect(runB!.signal.aborted).toBe(false);
    expect(a.queue).toEqual([]);
    expect([a.token, a.slots, a.target]).toEqual([0n, 0, 0]);
    expect(fencer.counts).toEqual({ fenced: 1, lost: 0 });
    await sink.until(1);
    expect(sink.submitted.map((x) => x.report)).toEqual([
      { ref: queuedA!.ref, kind: "release", reason: "slot grant fenced", unsent: true },
    ]);
  });

  test("a buffered claim whose own fence passes leaves the buffer and goes back unsent (not counted as fenced); a running one is counted", async () => {
    const { s, sink, fencer } = setup();
    granted(s, "a", 2);
    const now = performance.now();
    const queued = s.table.add(claim("a", 50), now);
    s.book.get("a").queue.push(queued);
    const running = s.table.add(claim("a", 50), now);
    run(s, running);
    await sink.until(1);
    expect(s.book.get("a").queue).toEqual([]);
    expect(sink.submitted[0]!.report).toEqual({
      ref: queued.ref,
      kind: "release",
      reason: "claim not renewed in time",
      unsent: true,
    });
    if (!running.signal.aborted) await once(running.signal, "abort");
    expect(running.gaveUp?.reason).toBe("fenced");
    expect(fencer.counts.fenced).toBe(1);
  });

  test("a claim named lost: a buffered one goes back unsent, a running one is aborted, one already reporting is left to its report", async () => {
    const { s, sink, fencer } = setup();
    granted(s, "a", 3);
    const [queued, running, over] = buffer(s, claim("a"), claim("a"), claim("a"));
    run(s, running!, over!);
    s.table.toReporting(over!);
    fencer.claimLost(queued!, "batch_cancelled");
    fencer.claimLost(running!, "expired");
    fencer.claimLost(over!, "not_current");
    expect(running!.gaveUp).toEqual({ reason: "lost", detail: "claim lost: expired" });
    expect(over!.gaveUp).toBeUndefined();
    expect(fencer.counts).toEqual({ fenced: 0, lost: 2 });
    await sink.until(1);
    expect(sink.submitted.map((x) => x.report)).toEqual([
      {
        ref: queued!.ref,
        kind: "release",
        reason: "claim lost: batch_cancelled",
        unsent: true,
      },
    ]);
    expect(s.book.get("a").queue).toEqual([]);
  });
});
