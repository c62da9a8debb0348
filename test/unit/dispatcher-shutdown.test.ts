/**
 * A dispatcher's stop (src/dispatcher/shutdown.ts) on its own: the order of
 * its steps, the grace for running requests, what is aborted and counted. A
 * real lease table and settler; the loops replaced by recorders. The whole
 * dispatcher's stop against a control plane: dispatcher-loops.test.ts.
 */
import { describe, expect, test } from "vitest";
import type { HeldLease } from "../../src/dispatcher/lease-table.js";
import { Settler } from "../../src/dispatcher/settler.js";
import { Shutdown } from "../../src/dispatcher/shutdown.js";
import { buffer, claim, completion, granted, RecordingSink, shared } from "./dispatcher-parts.js";

function setup() {
  const s = shared();
  const steps: string[] = [];
  const sink = new RecordingSink();
  sink.on("submit", () => {
    const last = sink.submitted.at(-1)!.report;
    steps.push(`report ${last.kind}${last.kind === "release" && last.unsent ? " unsent" : ""}`);
  });
  const settler = new Settler(s, sink, () => 0);
  const stopping = new AbortController();
  stopping.signal.addEventListener("abort", () => steps.push("stopping"));
  const parts = {
    settler,
    sync: {
      stop: async () => void steps.push("sync stopped"),
      release: async () => void steps.push("slots handed back"),
    },
    reporter: { stop: () => void steps.push("reporter stopped") },
    runner: { stop: () => void steps.push("timers cleared") },
    close: async () => void steps.push("closed"),
  };
  const shutdown = new Shutdown(stopping, s, parts, 60_000);
  granted(s, "a", 4);
  return { s, steps, settler, stopping, shutdown };
}

/** Starts `entries` as the runner would; an abort ends each as the runner reports it. */
function running(s: ReturnType<typeof setup>["s"], settler: Settler, entries: HeldLease[]) {
  for (const e of entries) {
    s.book.get(e.lease.model).unqueue(e);
    s.table.start(e);
    e.signal.addEventListener("abort", () => {
      void settler.settle(e, { ref: e.ref, kind: "release", reason: "aborted", unsent: false });
    });
  }
}

describe("Shutdown", () => {
  test("buffered claims go back unsent at once; with no grace the running ones are aborted and counted; then reports flush, the reporter stops, slots go back, connections close", async () => {
    const { s, steps, settler, stopping, shutdown } = setup();
    const [run1, run2] = buffer(s, claim("a"), claim("a"), claim("a"));
    running(s, settler, [run1!, run2!]);
    const stopped = shutdown.stop(0);
    expect(shutdown.stop(0)).toBe(stopped);
    await stopped;
    expect(stopping.signal.aborted).toBe(true);
    expect(steps).toEqual([
      "stopping",
      "sync stopped",
      "report release unsent",
      "report release",
      "report release",
      "reporter stopped",
      "slots handed back",
      "timers cleared",
      "closed",
    ]);
    expect(shutdown.counts.shutdownAborts).toBe(2);
    expect(s.table.size).toBe(0);
  });

  test("running requests that finish within the grace are not aborted, and the stop goes on as soon as they have", async () => {
    const { s, steps, settler, shutdown } = setup();
    const [run1] = buffer(s, claim("a"));
    running(s, settler, [run1!]);
    // A grace far beyond the test's timeout: the stop must wait on the
    // request's end, not on the clock.
    const stopped = shutdown.stop(600_000);
    // Finishes during the grace (its outcome reported as the runner would).
    await Promise.resolve();
    void settler.settle(run1!, { ref: run1!.ref, kind: "outcome", outcome: completion() });
    await stopped;
    expect(run1!.signal.aborted).toBe(false);
    expect(shutdown.counts.shutdownAborts).toBe(0);
    expect(steps).toContain("report outcome");
    expect(steps.at(-1)).toBe("closed");
  });
});
