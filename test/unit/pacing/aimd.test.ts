/** The effective-concurrency controller: slow start, cuts by the evidence, one cut per moment. */
import { describe, expect, test } from "vitest";
import { AimdLimit } from "../../../src/dispatcher/pacing/aimd.js";

/** `n` attempts admitted at `t`, answered at `t + rtt` (`thr` of them throttled), the limit in use. */
function round(a: AimdLimit, t: number, n: number, thr = 0, rtt = 50) {
  for (let i = 0; i < n; i++) a.onAdmit(t);
  for (let i = 0; i < n; i++) {
    if (i < thr) a.onThrottle(t + rtt, t);
    else a.onSuccess(t + rtt, t, n);
  }
}

describe("AimdLimit", () => {
  test("slow start grows the limit by half per round trip while it is in use, up to the max", () => {
    const a = new AimdLimit({ max: 50, initial: 8 });
    const seen = [a.limit];
    for (let t = 0; t < 400; t += 50) {
      round(a, t, a.limit);
      seen.push(a.limit);
    }
    expect(seen).toEqual([8, 12, 18, 27, 40, 50, 50, 50, 50]);
  });

  test("slow start without answers: a limit all in use doubles each idle period, not otherwise", () => {
    const a = new AimdLimit({ max: 40, initial: 4, idleGrowthMs: 100 });
    for (let i = 0; i < 4; i++) a.onAdmit(0);
    // Not due yet: answers when to ask again.
    expect(a.growIdle(50, 4)).toBe(100);
    expect(a.limit).toBe(4);
    // Less than the limit in use: nothing to grow for.
    expect(a.growIdle(100, 3)).toBe(Number.POSITIVE_INFINITY);
    expect(a.growIdle(100, 4)).toBe(100);
    expect(a.limit).toBe(8);
    expect(a.growIdle(150, 8)).toBe(200);
    a.growIdle(200, 8);
    a.growIdle(300, 16);
    a.growIdle(400, 32);
    expect(a.limit).toBe(40);
    // After a cut, only answers move the limit.
    a.onAdmit(401);
    a.onThrottle(402, 401);
    expect(a.growIdle(10_000, a.limit)).toBe(Number.POSITIVE_INFINITY);
  });

  test("a meter below one request per round trip takes the limit below 1: starts spaced by round trip / limit", () => {
    const a = new AimdLimit({ max: 1, initial: 1 });
    round(a, 0, 20, 0, 20); // 20 answered in 20 ms: the round trip is known
    a.setMax(100);
    // 40 sent one at a time, 8 accepted: a meter taking 0.2 of what one slot sends.
    for (let i = 0; i < 40; i++) a.onAdmit(100 + i);
    a.onAdmit(200); // the next cohort begins, so the first is judged once answered
    for (let i = 0; i < 40; i++) {
      if (i < 8) a.onSuccess(121 + i, 100 + i, 1);
      else a.onThrottle(101 + i, 100 + i);
    }
    expect(a.limit).toBe(1);
    expect(a.rawLimit).toBeLessThan(1);
    expect(a.rawLimit).toBeGreaterThan(0.1);
    // One start every round trip / limit: a fifth of what one slot would send.
    expect(a.startIntervalMs(300)).toBeGreaterThan(20 / 0.3);
  });

  test("no growth while less than half the limit runs", () => {
    const a = new AimdLimit({ max: 50, initial: 10 });
    for (let t = 0; t < 1000; t += 50) {
      a.onAdmit(t);
      a.onSuccess(t + 50, t, 4);
    }
    expect(a.limit).toBe(10);
  });

  test("a throttle cuts by 10 % at once; the other throttles of that moment do not cut again", () => {
    const a = new AimdLimit({ max: 100, initial: 100 });
    for (let i = 0; i < 100; i++) a.onAdmit(0);
    expect(a.onThrottle(10, 0)).toBe(true);
    expect(a.limit).toBe(90);
    for (let i = 0; i < 5; i++) expect(a.onThrottle(11, 0)).toBe(false);
    expect(a.limit).toBe(90);
    // An attempt sent after the cut and throttled: a new moment.
    a.onAdmit(12);
    expect(a.onThrottle(20, 12)).toBe(true);
    expect(a.limit).toBe(81);
  });

  test("after a cut, growth is one per round trip (+1/limit a success)", () => {
    const a = new AimdLimit({ max: 100, initial: 20 });
    // 3 of 20 refused: more than stray 429s (slow start ends), less than a meter.
    round(a, 0, 20, 3, 30); // 18
    for (let t = 100; t < 400; t += 100) round(a, t, a.limit, 0, 30);
    expect(a.slowStart).toBe(false);
    expect(a.limit).toBe(20); // 18 → ~19 → ~19.9 → ~20.9
  });

  test("a stray 429 in slow start: growth waits for its cohort's verdict, then slow start goes on", () => {
    const a = new AimdLimit({ max: 500, initial: 40 });
    round(a, 0, 40, 0, 50); // 40 → 60
    expect(a.limit).toBe(60);
    // One of 60 refused (random 429s): a 10 % cut, and no growth until the cohort is judged.
    for (let i = 0; i < 60; i++) a.onAdmit(100);
    a.onThrottle(101, 100);
    expect(a.limit).toBe(54);
    expect(a.slowStart).toBe(false);
    for (let i = 0; i < 59; i++) a.onSuccess(150, 100, 59);
    // Attempts sent before the cut do not grow it; judged (1 of 60): a stray 429.
    a.judge(150);
    expect(a.slowStart).toBe(true);
    round(a, 200, 54, 0, 50);
    expect(a.limit).toBe(81); // × 1.5 per round trip again
    expect(a.startIntervalMs(250)).toBe(0);
  });

  test("a cohort refusing a quarter or more shows a meter: cut to the share accepted, then a slow probe", () => {
    const a = new AimdLimit({ max: 500, initial: 64 });
    // 64 sent at 0, then one more cohort begun at 60 (so the first is judged once answered).
    for (let i = 0; i < 64; i++) a.onAdmit(0);
    a.onAdmit(60);
    // Answered at 70: 32 refused, then 32 accepted (a meter answers 429 at once).
    a.onThrottle(70, 0);
    expect(a.limit).toBe(57); // the first throttle: × 0.9 at once, once
    for (let i = 1; i < 32; i++) a.onThrottle(70, 0);
    // Refused past a quarter: the meter shows before the successes come; at most the half
    // not refused can be accepted.
    expect(a.limit).toBe(32);
    for (let i = 0; i < 32; i++) a.onSuccess(70, 0, 64);
    expect(a.limit).toBe(32); // the cohort judged: half accepted
    expect(a.startIntervalMs(70)).toBeCloseTo(70 / 32);
    // The probe: ~10 % of the limit a second, not one per round trip.
    for (let t = 100; t < 1100; t += 50) round(a, t, 32, 0, 50);
    expect(a.limit).toBeGreaterThanOrEqual(34);
    expect(a.limit).toBeLessThanOrEqual(36);
    // Ten seconds on, the meter is forgotten: no spacing.
    expect(a.startIntervalMs(11_000)).toBe(0);
  });

  test("the last cohort, closed and all answered, is judged before the next start, not at the next answer", () => {
    const a = new AimdLimit({ max: 500, initial: 29 });
    // A round trip of 50 ms is known (answers with few in flight: no growth).
    for (let i = 0; i < 20; i++) a.onAdmit(0);
    for (let i = 0; i < 20; i++) a.onSuccess(50, 0, 1);
    // 29 sent at 100: 7 refused (under a quarter: no evidence yet), 5 never answered, 17
    // accepted: 17 of 24 answers, under 75 %.
    for (let i = 0; i < 29; i++) a.onAdmit(100);
    for (let i = 0; i < 7; i++) a.onThrottle(101, 100);
    for (let i = 0; i < 5; i++) a.onNoAnswer(120, 100);
    for (let i = 0; i < 17; i++) a.onSuccess(150, 100, 17);
    expect(a.limit).toBe(26); // one 10 % cut for the 429s
    // Nothing else was sent: no later answer judges it. The pacer asks before each start.
    a.judge(150);
    expect(a.limit).toBe(20); // the cohort's 29 × 17/24
    expect(a.startIntervalMs(150)).toBeGreaterThan(0);
  });

  test("a cohort refused past what its other answers could make up shows a meter at once", () => {
    const a = new AimdLimit({ max: 500, initial: 40 });
    for (let i = 0; i < 40; i++) a.onAdmit(0);
    for (let i = 0; i < 10; i++) a.onThrottle(1, 0);
    expect(a.startIntervalMs(1)).toBe(0); // a quarter refused: could still be 75 % accepted
    a.onThrottle(1, 0);
    expect(a.limit).toBe(29); // 40 × 29/40: what may still be accepted
    a.onSuccess(50, 0, 29); // the first round trip is known: starts are spaced
    expect(a.startIntervalMs(50)).toBeGreaterThan(0);
  });

  test("a cohort still open (under a round trip, or too few attempts) is not judged early", () => {
    const a = new AimdLimit({ max: 500, initial: 29 });
    round(a, 0, 20, 0, 50);
    for (let i = 0; i < 19; i++) a.onAdmit(100);
    for (let i = 0; i < 15; i++) a.onThrottle(101, 100);
    for (let i = 0; i < 4; i++) a.onSuccess(150, 100, 4);
    a.judge(200);
    expect(a.startIntervalMs(200)).toBe(0); // 19 < MIN_COHORT: no evidence yet
  });

  test("a meter that keeps refusing stays in evidence past its memory; one that stops is forgotten", () => {
    const kept = new AimdLimit({ max: 500, initial: 64 });
    const quiet = new AimdLimit({ max: 500, initial: 64 });
    for (const a of [kept, quiet]) {
      for (let i = 0; i < 64; i++) a.onAdmit(0);
      for (let i = 0; i < 32; i++) a.onThrottle(1, 0);
      for (let i = 0; i < 32; i++) a.onSuccess(50, 0, 32);
      a.judge(60);
      expect(a.startIntervalMs(60)).toBeGreaterThan(0);
    }
    // A 429 now and then, as a meter answers a probe that went too far.
    for (let t = 1000; t <= 15_000; t += 2500) {
      kept.onAdmit(t);
      kept.onThrottle(t + 1, t);
    }
    expect(kept.startIntervalMs(16_000)).toBeGreaterThan(0);
    expect(quiet.startIntervalMs(16_000)).toBe(0);
  });

  test("3 % random 429s show no meter: a cohort of 20 with one refused cuts by 10 % only", () => {
    const a = new AimdLimit({ max: 10, initial: 10 });
    for (let t = 0; t < 3000; t += 30) round(a, t, 20, t % 300 === 0 ? 1 : 0, 30);
    expect(a.startIntervalMs(3000)).toBe(0);
    expect(a.limit).toBe(10);
  });

  test("never below 1; a smaller max (fewer slots) lowers the limit at once", () => {
    const a = new AimdLimit({ max: 100, initial: 80 });
    round(a, 0, 40, 40);
    a.onAdmit(100);
    a.onThrottle(150, 100); // judges the first cohort: nothing accepted
    expect(a.limit).toBe(1);
    a.setMax(0);
    expect(a.limit).toBe(1);
    const b = new AimdLimit({ max: 100, initial: 80 });
    b.setMax(20);
    expect(b.limit).toBe(20);
  });
});
