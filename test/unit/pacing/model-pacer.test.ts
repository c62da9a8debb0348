/**
 * The model pacer: its gate decisions one by one, then the scenarios
 * simulated on an injected clock against a simulated metered upstream (a
 * bucket of one second's worth, refilled at its rate, 429 + Retry-After when
 * empty): the figures the control law is meant to reach.
 */
import { describe, expect, test } from "vitest";
import type { AttemptEnd } from "../../../src/dispatcher/pacing/gate.js";
import { ModelPacer } from "../../../src/dispatcher/pacing/model-pacer.js";
import { rng } from "../../helpers/metered-upstream.js";

const end = (nowMs: number, status: number, more: Partial<AttemptEnd> = {}): AttemptEnd => ({
  nowMs,
  admittedAtMs: 0,
  estimatedTokens: 1,
  status,
  headers: {},
  ...more,
});

describe("ModelPacer gate", () => {
  test("concurrency: refuses past the slots until an attempt ends", () => {
    const p = new ModelPacer(0, { concurrency: 2 }, { initial: 2 });
    expect(p.tryAdmit(0, 1)).toEqual({ ok: true });
    expect(p.tryAdmit(0, 1)).toEqual({ ok: true });
    expect(p.tryAdmit(0, 1)).toEqual({
      ok: false,
      retryAtMs: Number.POSITIVE_INFINITY,
      reason: "concurrency",
    });
    p.onOutcome(end(5, 200));
    expect(p.tryAdmit(5, 1)).toEqual({ ok: true });
  });

  test("a rate grant: one second's burst, then the next when the bucket refills", () => {
    const p = new ModelPacer(0, { concurrency: 100, rpm: 600 }, { initial: 100 });
    for (let i = 0; i < 10; i++) expect(p.tryAdmit(0, 1).ok).toBe(true);
    const r = p.tryAdmit(0, 1);
    expect(r).toMatchObject({ ok: false, reason: "requests" });
    const at = (r as { retryAtMs: number }).retryAtMs;
    expect(p.tryAdmit(at - 1, 1).ok).toBe(false);
    expect(p.tryAdmit(at, 1).ok).toBe(true);
    expect(p.snapshot(at).mode).toBe("paced");
  });

  test("claims worth holding: a round trip and a second of the rate share; after a cut, twice the limit", () => {
    const p = new ModelPacer(0, { concurrency: 500, rpm: 600 });
    // 10 a second; no round trip known yet (a second assumed): 2 s of the share.
    expect(p.useful(0)).toBe(20);
    expect(p.tryAdmit(0, 1).ok).toBe(true);
    p.onOutcome(end(100, 200));
    expect(p.useful(100)).toBe(11);
    const free = new ModelPacer(0, { concurrency: 500 }, { initial: 10 });
    expect(free.useful(0)).toBe(Number.POSITIVE_INFINITY);
    for (let i = 0; i < 10; i++) free.tryAdmit(0, 1);
    free.onOutcome(end(5, 429));
    expect(free.useful(5)).toBe(2 * 9);
  });

  test("demand with no backlog: what the held claims send per round trip, and their tokens", () => {
    const p = new ModelPacer(0, { concurrency: 50, tpm: 600_000 });
    expect(p.demand(5)).toBeUndefined(); // no round trip known
    expect(p.tryAdmit(0, 300).ok).toBe(true);
    p.onOutcome(end(100, 200, { estimatedTokens: 300 }));
    // 5 held, 100 ms each: 50 a second, 3,000 a minute, at 300 tokens each.
    expect(p.demand(5)).toEqual({ rateWant: 3000, tokenWant: 900_000n });
  });

  test("no rate set: the rate a response's headers name paces the model before any 429", () => {
    const p = new ModelPacer(0, { concurrency: 100 }, { initial: 100 });
    expect(p.tryAdmit(0, 1).ok).toBe(true);
    p.onOutcome(end(10, 200, { headers: { "x-ratelimit-limit-requests": "600" } }));
    // 600 a minute: a bucket of one second's 10 (the first is spent by the next ten).
    let admitted = 0;
    while (p.tryAdmit(10, 1).ok) admitted++;
    expect(admitted).toBe(10);
    expect(p.tryAdmit(10, 1)).toMatchObject({ ok: false, reason: "requests" });
    expect(p.snapshot(10).mode).toBe("paced");
    expect(p.useful(10)).toBe(Math.ceil(10 * 1.01));
  });

  test("a token grant refuses a request its bucket cannot hold, and usage corrects it", () => {
    const p = new ModelPacer(0, { concurrency: 100, tpm: 60_000 }, { initial: 100 }); // 1,000 a second
    expect(p.tryAdmit(0, 900).ok).toBe(true);
    expect(p.tryAdmit(0, 200)).toMatchObject({ ok: false, reason: "tokens" });
    // It used 100, not 900: 800 come back, and the 200 fits at once.
    p.onOutcome(end(0, 200, { estimatedTokens: 900, usedTokens: 100 }));
    expect(p.tryAdmit(0, 200).ok).toBe(true);
  });

  test("a refusal for tokens gives the request's token back", () => {
    // 100 requests a second of burst, one token.
    const p = new ModelPacer(0, { concurrency: 1000, rpm: 6000, tpm: 60 }, { initial: 1000 });
    expect(p.tryAdmit(0, 1).ok).toBe(true);
    // Refused for tokens 150 times: had each spent a request, the 101st would say "requests".
    for (let i = 0; i < 150; i++) expect(p.tryAdmit(0, 1)).toMatchObject({ reason: "tokens" });
  });

  test("a 429 without meter headers cuts the concurrency and holds nothing", () => {
    const p = new ModelPacer(0, { concurrency: 10 }, { initial: 10 });
    for (let i = 0; i < 10; i++) p.tryAdmit(0, 1);
    p.onOutcome(end(30, 429, { retryAfterMs: 5000 }));
    expect(p.snapshot(30)).toMatchObject({ concurrency: 9, mode: "backing_off", heldUntilMs: 0 });
    // Nine still run: the tenth waits for one of them, not for the Retry-After.
    expect(p.tryAdmit(31, 1)).toMatchObject({ ok: false, reason: "concurrency" });
    p.onOutcome(end(40, 200));
    expect(p.tryAdmit(41, 1).ok).toBe(true);
  });

  test("a model with a rate reads paced after a cut, unless the cut concurrency is what holds it back", () => {
    // 600/min set; 200 ms a call; a 429 cuts the concurrency from 20 to 18. 18 at once
    // start 5,400 a minute: the rate, not the concurrency, holds the model.
    const rated = new ModelPacer(0, { concurrency: 20, rpm: 600 }, { initial: 20 });
    rated.tryAdmit(0, 1);
    rated.onOutcome(end(200, 200));
    rated.tryAdmit(200, 1);
    rated.tryAdmit(200, 1);
    rated.onOutcome(end(201, 429, { admittedAtMs: 200 }));
    expect(rated.snapshot(201)).toMatchObject({ mode: "paced", concurrency: 18 });
    // 60,000/min set: 18 at once (5,400/min) is below it, so the cut is why it is slow.
    const fast = new ModelPacer(0, { concurrency: 20, rpm: 60_000 }, { initial: 20 });
    fast.tryAdmit(0, 1);
    fast.onOutcome(end(200, 200));
    fast.tryAdmit(200, 1);
    fast.onOutcome(end(201, 429, { admittedAtMs: 200 }));
    expect(fast.snapshot(201)).toMatchObject({ mode: "backing_off", concurrency: 18 });
  });

  test("a 429 whose headers read the meter empty holds the model until the reset", () => {
    const p = new ModelPacer(0, { concurrency: 10 }, { initial: 10 });
    p.tryAdmit(0, 1);
    p.onOutcome(
      end(30, 429, {
        retryAfterMs: 20_000,
        headers: { "x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "1.5s" },
      }),
    );
    expect(p.tryAdmit(31, 1)).toEqual({ ok: false, retryAtMs: 1530, reason: "meter_empty" });
    expect(p.snapshot(31).mode).toBe("held");
    expect(p.tryAdmit(1530, 1).ok).toBe(true);
  });

  test("a success reading the meter nearly empty paces before any 429: what is left, then wait", () => {
    const p = new ModelPacer(0, { concurrency: 100 }, { initial: 100 });
    p.tryAdmit(0, 1);
    p.onOutcome(
      end(10, 200, {
        headers: { "x-ratelimit-remaining-requests": "3", "x-ratelimit-reset-requests": "500ms" },
      }),
    );
    expect([1, 2, 3, 4].map(() => p.tryAdmit(11, 1).ok)).toEqual([true, true, true, false]);
    expect(p.tryAdmit(11, 1)).toEqual({ ok: false, retryAtMs: 510, reason: "meter_empty" });
    expect(p.tryAdmit(510, 1).ok).toBe(true);
  });

  test("Anthropic's token meter read empty holds until its RFC 3339 reset", () => {
    const wall = Date.parse("2026-12-04T12:00:00Z");
    const p = new ModelPacer(0, { concurrency: 10 }, { wallNow: () => wall });
    p.tryAdmit(0, 1);
    p.onOutcome(
      end(0, 429, {
        headers: {
          "anthropic-ratelimit-tokens-remaining": "0",
          "anthropic-ratelimit-tokens-reset": "2026-12-04T12:00:02Z",
        },
      }),
    );
    expect(p.tryAdmit(1, 1)).toEqual({ ok: false, retryAtMs: 2000, reason: "meter_empty" });
  });

  test("no answer (network error, abort) frees the slot and says nothing about the meter", () => {
    const p = new ModelPacer(0, { concurrency: 1 }, { initial: 1 });
    p.tryAdmit(0, 1);
    p.onOutcome(end(10, 0));
    expect(p.snapshot(10)).toMatchObject({ inFlight: 0, answered: 0, throttled: 0 });
  });
});

// --- Simulation -----------------------------------------------------------

interface SimOptions {
  requests: number;
  slots: number;
  latencyMs: number;
  /** The upstream's meter, requests per minute (none: unmetered). */
  meterRpm?: number;
  /** Share of calls answered 429 at random. */
  randomP?: number;
  /** The rate grant given to the pacer. */
  grantRpm?: number;
  seed?: number;
}

/**
 * One dispatcher holding `slots` of a model, its pacer gating every start,
 * against a simulated upstream; a 429'd request waits its Retry-After (1 s)
 * alone, as the control plane's not_before makes it. 1 ms steps.
 */
function simulate(o: SimOptions) {
  const random = rng(o.seed ?? 1);
  const pacer = new ModelPacer(0, { concurrency: o.slots, rpm: o.grantRpm });
  const cap = o.meterRpm === undefined ? 0 : o.meterRpm / 60;
  let meter = cap;
  let ready: number[] = Array.from({ length: o.requests }, () => 0);
  const running: Array<{ at: number; admitted: number; status: number }> = [];
  let done = 0;
  let calls = 0;
  let throttled = 0;
  let t = 0;
  for (; done < o.requests && t < 600_000; t++) {
    if (o.meterRpm !== undefined) meter = Math.min(cap, meter + o.meterRpm / 60_000);
    for (let i = running.length - 1; i >= 0; i--) {
      const r = running[i]!;
      if (r.at > t) continue;
      running.splice(i, 1);
      pacer.onOutcome({
        nowMs: t,
        admittedAtMs: r.admitted,
        estimatedTokens: 1,
        status: r.status,
        headers: {},
        retryAfterMs: r.status === 429 ? 1000 : undefined,
      });
      if (r.status === 200) done++;
      else ready.push(t + 1000);
    }
    const later: number[] = [];
    for (const at of ready) {
      if (at > t || !pacer.tryAdmit(t, 1).ok) {
        later.push(at);
        continue;
      }
      calls++;
      let status = 200;
      if (o.meterRpm !== undefined) {
        if (meter >= 1) meter -= 1;
        else status = 429;
      }
      if (status === 200 && o.randomP !== undefined && random() < o.randomP) status = 429;
      if (status === 429) throttled++;
      // A meter answers 429 at once; everything else after the latency.
      running.push({ at: t + (status === 429 ? 1 : o.latencyMs), admitted: t, status });
    }
    ready = later;
  }
  return { elapsedMs: t, calls, throttled, done, rpm: (done / t) * 60_000 };
}

describe("ModelPacer against a simulated upstream (the issue's cases)", () => {
  test("known meter: rpm granted = the meter's 3,000, 500 slots: ≥ 95 % of the rate, ≤ 2 % 429s", () => {
    const r = simulate({
      requests: 1200,
      slots: 500,
      latencyMs: 50,
      meterRpm: 3000,
      grantRpm: 3000,
    });
    expect(r.done).toBe(1200);
    expect(r.rpm).toBeGreaterThanOrEqual(0.95 * 3000);
    expect(r.throttled / r.calls).toBeLessThanOrEqual(0.02);
  });

  test("unknown meter: 500 slots on a 3,000/min meter: ≥ 85 % of the rate, ≤ 10 % 429s", () => {
    const r = simulate({ requests: 1200, slots: 500, latencyMs: 50, meterRpm: 3000 });
    expect(r.done).toBe(1200);
    expect(r.rpm).toBeGreaterThanOrEqual(0.85 * 3000);
    expect(r.throttled / r.calls).toBeLessThanOrEqual(0.1);
  });

  test("a meter below one request per round trip (600/min at 20 ms): ≥ 85 % of the rate, ≤ 15 % 429s", () => {
    // One slot sends 50 a second; the meter takes 10: the limit must go below 1.
    const r = simulate({ requests: 600, slots: 200, latencyMs: 20, meterRpm: 600 });
    expect(r.done).toBe(600);
    expect(r.rpm).toBeGreaterThanOrEqual(0.85 * 600);
    expect(r.throttled / r.calls).toBeLessThanOrEqual(0.15);
  });

  test("3 % random 429s, 500 slots, 50 ms: a stray 429 does not end slow start", () => {
    // When the first 429 ended slow start, the limit grew one slot a round trip from where
    // it was cut (~10): 0.04 of the throughput without them.
    const clean = simulate({ requests: 20_000, slots: 500, latencyMs: 50 });
    const noisy = simulate({ requests: 20_000, slots: 500, latencyMs: 50, randomP: 0.03 });
    expect(noisy.done).toBe(20_000);
    expect(clean.elapsedMs / noisy.elapsedMs).toBeGreaterThanOrEqual(0.4);
  });

  test("3 % random 429s, 10 slots, 30 ms: ≥ 70 % of the throughput without them", () => {
    const clean = simulate({ requests: 2000, slots: 10, latencyMs: 30 });
    const noisy = simulate({ requests: 2000, slots: 10, latencyMs: 30, randomP: 0.03 });
    expect(noisy.done).toBe(2000);
    expect(clean.elapsedMs / noisy.elapsedMs).toBeGreaterThanOrEqual(0.7);
  });
});
