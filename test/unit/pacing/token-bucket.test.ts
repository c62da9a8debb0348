/** The rate bucket: burst of one second, exact minute, debts and corrections. */
import { describe, expect, test } from "vitest";
import { TokenBucket } from "../../../src/dispatcher/pacing/token-bucket.js";
import { maxIn } from "../../helpers/metered-upstream.js";

/** Takes one token whenever the bucket allows, stepping the clock 1 ms, for `ms`; returns the take times. */
function drain(b: TokenBucket, fromMs: number, ms: number): number[] {
  const at: number[] = [];
  for (let t = fromMs; t < fromMs + ms; t++) {
    while (b.take(t, 1) === 0) at.push(t);
  }
  return at;
}

describe("TokenBucket", () => {
  test("3,000/min: a burst of 50, never more than 3,000 in any minute, about 100 in any second", () => {
    const b = new TokenBucket(3000, 0);
    expect(b.capacity).toBe(50);
    const times = drain(b, 0, 180_000);
    expect(times.filter((t) => t === 0)).toHaveLength(50);
    expect(maxIn(times, 60_000)).toBeLessThanOrEqual(3000);
    expect(maxIn(times, 60_000)).toBeGreaterThanOrEqual(2990);
    expect(maxIn(times, 1000)).toBeLessThanOrEqual(100);
    // Three minutes at the rate, less the 1/60 given up for the exact minute.
    expect(times.length).toBeGreaterThan(0.98 * 9000);
  });

  test("a low rate: 30/min gets a burst of one and one every ~2 s", () => {
    const b = new TokenBucket(30, 0);
    expect(b.capacity).toBe(1);
    const times = drain(b, 0, 120_000);
    expect(maxIn(times, 60_000)).toBeLessThanOrEqual(30);
    expect(times.length).toBeGreaterThanOrEqual(58);
  });

  test("a refused take says when it will fit", () => {
    const b = new TokenBucket(600, 0); // 10 per second burst, 590/min refill
    expect(b.take(0, 10)).toBe(0);
    const wait = b.take(0, 1);
    expect(wait).toBe(Math.ceil(60_000 / 590));
    expect(b.take(wait - 1, 1)).toBeGreaterThan(0);
    expect(b.take(wait, 1)).toBe(0);
  });

  test("a take larger than the capacity goes when full and leaves a debt", () => {
    const b = new TokenBucket(60_000, 0); // 1,000 tokens a second
    expect(b.take(0, 4000)).toBe(0);
    expect(b.level(0)).toBe(-3000);
    expect(b.take(0, 1)).toBeGreaterThan(3000);
    expect(b.take(1, 4000)).toBeGreaterThan(0);
  });

  test("corrections: a refund never fills past the capacity; a late debit goes below zero", () => {
    const b = new TokenBucket(6000, 0); // capacity 100
    expect(b.take(0, 80)).toBe(0);
    b.adjust(0, 500);
    expect(b.level(0)).toBe(100);
    b.adjust(0, -150);
    expect(b.level(0)).toBe(-50);
  });

  test("a lower rate cuts the level to the new capacity at once", () => {
    const b = new TokenBucket(6000, 0);
    b.setRate(600, 0);
    expect(b.capacity).toBe(10);
    expect(b.level(0)).toBe(10);
  });
});
