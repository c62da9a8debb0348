import { once } from "node:events";
import { performance } from "node:perf_hooks";
import { describe, expect, it } from "vitest";
import { AttemptSignal } from "../../src/http/attempt-signal.js";

/** Waits for the attempt's abort; the cause and how long it took. */
async function aborted(a: AttemptSignal, started: number) {
  await once(a.signal, "abort");
  return { cause: a.cause, ms: performance.now() - started };
}

describe("AttemptSignal: one timer for both deadlines", () => {
  it("no headers: the first-byte deadline aborts", async () => {
    const t0 = performance.now();
    const a = new AttemptSignal(undefined, 60, 5_000);
    const { cause, ms } = await aborted(a, t0);
    expect(cause).toEqual({ kind: "first_byte_timeout", afterMs: 60 });
    expect(ms).toBeGreaterThanOrEqual(50);
    a.dispose();
  });

  it("headers in time: the first-byte deadline passes and the total one aborts", async () => {
    const t0 = performance.now();
    const a = new AttemptSignal(undefined, 60, 250);
    a.headersReceived();
    const { cause, ms } = await aborted(a, t0);
    expect(cause).toEqual({ kind: "total_timeout", afterMs: 250 });
    expect(ms).toBeGreaterThanOrEqual(240);
  });

  it("a total deadline before the first-byte one aborts at the total", async () => {
    const t0 = performance.now();
    const a = new AttemptSignal(undefined, 5_000, 60);
    const { cause, ms } = await aborted(a, t0);
    expect(cause).toEqual({ kind: "total_timeout", afterMs: 60 });
    expect(ms).toBeLessThan(2_000);
  });

  it("the caller's abort wins and leaves no listener behind once disposed", async () => {
    const caller = new AbortController();
    const a = new AttemptSignal(caller.signal, 5_000, 5_000);
    const b = new AttemptSignal(caller.signal, 5_000, 5_000);
    b.dispose();
    caller.abort(new Error("lease lost"));
    expect(a.cause).toMatchObject({ kind: "caller" });
    expect(a.signal.aborted).toBe(true);
    expect(b.cause).toBeUndefined();
  });

  it("a caller's abort reaches each of its live attempts, and only them; a later attempt aborts at once", async () => {
    const one = new AbortController();
    const other = new AbortController();
    const ours = Array.from({ length: 50 }, () => new AttemptSignal(one.signal, 5_000, 5_000));
    const theirs = new AttemptSignal(other.signal, 5_000, 5_000);
    const heard = ours.map((a) => once(a.signal, "abort"));
    const reason = new Error("shutting down");
    one.abort(reason);
    await Promise.all(heard);
    for (const a of ours) {
      expect(a.cause).toEqual({ kind: "caller", reason });
      expect(a.signal.aborted).toBe(true);
      expect(a.signal.reason).toBe(reason);
    }
    expect(theirs.cause).toBeUndefined();
    expect(theirs.signal.aborted).toBe(false);
    const late = new AttemptSignal(one.signal, 5_000, 5_000);
    expect(late.cause).toEqual({ kind: "caller", reason });
    theirs.dispose();
  });
});
