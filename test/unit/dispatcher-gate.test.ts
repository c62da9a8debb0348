/**
 * The model gate's contract pieces (src/dispatcher/model-gate.ts): the
 * default admits everything, and how an attempt's end is classified for a
 * pacer. The runner's use of a gate: dispatcher-attempts.test.ts.
 */
import { describe, expect, test } from "vitest";
import { ADMIT_ALL, admitAll, attemptVerdict } from "../../src/dispatcher/model-gate.js";
import { abortedOutcome, claim, completion, failure } from "./dispatcher-parts.js";

describe("model gate", () => {
  test("the default admits every attempt at once, whatever runs", () => {
    const gate = admitAll("any-model", { granted: 1, rpm: undefined, tpm: undefined });
    expect(gate).toBe(ADMIT_ALL);
    expect(gate.admit(claim("m"), 0, 0)).toBe(0);
    expect(gate.admit(claim("m"), 1_000_000, 1e9)).toBe(0);
  });

  test("verdicts: 2xx success; 429 and 503-with-Retry-After throttled; other failures error; our own abort aborted", () => {
    const r = (outcome: ReturnType<typeof completion>, aborted = false) =>
      attemptVerdict({ outcome, aborted, elapsedMs: 1 });
    expect(r(completion())).toBe("success");
    expect(r(failure(429))).toBe("throttled");
    expect(r(failure(429, { retryAfterMs: 1_000 }))).toBe("throttled");
    expect(r(failure(503, { retryAfterMs: 1_000 }))).toBe("throttled");
    expect(r(failure(503))).toBe("error");
    expect(r(failure(500))).toBe("error");
    expect(r(failure(0))).toBe("error");
    // Aborted by us: not evidence about the upstream, whatever came back.
    expect(r(abortedOutcome(), true)).toBe("aborted");
    expect(r(failure(429), true)).toBe("aborted");
  });
});
