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
});
