import { describe, expect, it } from "vitest";
import {
  backoffMs,
  DEFAULT_RETRIABLE_STATUSES,
  DEFAULT_RETRY_POLICY,
  decideRetry,
  isBackpressure,
  isRetriableFailure,
  isRetriableStatus,
  MAX_RETRY_AFTER_MS,
  parseRetryAfter,
  type RetryPolicy,
  resolveRetryPolicy,
} from "../../src/domain/retry-policy.js";

const NOW = new Date("2025-03-01T12:00:00.000Z");
const POLICY: RetryPolicy = { maxRetries: 5, initialBackoffMs: 1000, maxBackoffMs: 60_000 };
const low = () => 0;
const high = () => 0.999999;

describe("retriable statuses and failure codes", () => {
  it("retries 408, 429 and 5xx by default, nothing else", () => {
    for (const s of [408, 429, 500, 502, 503, 504, 599]) expect(isRetriableStatus(s)).toBe(true);
    for (const s of [200, 301, 400, 401, 403, 404, 409, 422, 600]) {
      expect(isRetriableStatus(s)).toBe(false);
    }
    expect(DEFAULT_RETRIABLE_STATUSES.size).toBe(102);
  });

  it("honours a custom table", () => {
    const table = new Set([409]);
    expect(isRetriableStatus(409, table)).toBe(true);
    expect(isRetriableStatus(500, table)).toBe(false);
  });

  it("classifies failure codes by the table", () => {
    expect(isRetriableFailure("timeout", 0)).toBe(true);
    expect(isRetriableFailure("network_error", 0)).toBe(true);
    expect(isRetriableFailure("response_too_large", 200)).toBe(false);
    expect(isRetriableFailure("aborted", 0)).toBe(false);
    expect(isRetriableFailure("http_error", 503)).toBe(true);
    expect(isRetriableFailure("http_error", 400)).toBe(false);
  });
});

describe("parseRetryAfter", () => {
  it("reads delta-seconds", () => {
    expect(parseRetryAfter("1", NOW)).toBe(1000);
    expect(parseRetryAfter(" 30 ", NOW)).toBe(30_000);
    expect(parseRetryAfter("0", NOW)).toBe(0);
    expect(parseRetryAfter("1.5", NOW)).toBe(1500);
  });

  it("reads HTTP-dates relative to now (IMF-fixdate, RFC 850, asctime)", () => {
    expect(parseRetryAfter("Sat, 01 Mar 2025 12:00:10 GMT", NOW)).toBe(10_000);
    expect(parseRetryAfter("Saturday, 01-Mar-25 12:01:00 GMT", NOW)).toBe(60_000);
    expect(parseRetryAfter("Sat Mar  1 12:00:05 2025", NOW)).toBe(5000);
  });

  it("clamps negative and past values to 0", () => {
    expect(parseRetryAfter("-5", NOW)).toBe(0);
    expect(parseRetryAfter("Sat, 01 Mar 2025 11:00:00 GMT", NOW)).toBe(0);
  });

  it("caps absurd values", () => {
    expect(parseRetryAfter("86400", NOW)).toBe(MAX_RETRY_AFTER_MS);
    expect(parseRetryAfter("1".repeat(400), NOW)).toBe(MAX_RETRY_AFTER_MS);
    expect(parseRetryAfter("Fri, 01 Mar 2030 12:00:00 GMT", NOW)).toBe(MAX_RETRY_AFTER_MS);
  });

  it("returns undefined for missing or garbage values", () => {
    for (const v of [
      undefined,
      "",
      "   ",
      "soon",
      "1s",
      "12abc",
      "1 2",
      "0x10",
      "NaN",
      "Mon, 99",
      "Infinity",
      "2025-03-01T12:00:10Z",
    ]) {
      expect(parseRetryAfter(v, NOW), String(v)).toBeUndefined();
    }
  });
});

describe("backoffMs", () => {
  it("grows exponentially from initialBackoffMs with equal jitter in [base/2, base]", () => {
    const expected = [1000, 2000, 4000, 8000, 16_000, 32_000];
    expected.forEach((base, i) => {
      expect(backoffMs(i + 1, POLICY, undefined, low)).toBe(base / 2);
      expect(backoffMs(i + 1, POLICY, undefined, high)).toBe(base);
    });
  });

  it("stays within jitter bounds for arbitrary random values", () => {
    for (let attempt = 1; attempt <= 10; attempt++) {
      const base = Math.min(1000 * 2 ** (attempt - 1), 60_000);
      for (let k = 0; k < 20; k++) {
        const d = backoffMs(attempt, POLICY);
        expect(d).toBeGreaterThanOrEqual(base / 2);
        expect(d).toBeLessThanOrEqual(base);
      }
    }
  });

  it("caps at maxBackoffMs, even for huge attempt numbers", () => {
    expect(backoffMs(7, POLICY, undefined, high)).toBe(60_000);
    expect(backoffMs(5000, POLICY, undefined, high)).toBe(60_000);
    expect(backoffMs(5000, POLICY, undefined, low)).toBe(30_000);
  });

  it("lets Retry-After win, unjittered, up to its own cap", () => {
    expect(backoffMs(1, POLICY, 7000, high)).toBe(7000);
    expect(backoffMs(6, POLICY, 0, high)).toBe(0);
    expect(backoffMs(1, POLICY, 120_000, low)).toBe(120_000); // beyond maxBackoffMs: still honoured
    expect(backoffMs(1, POLICY, 10 * MAX_RETRY_AFTER_MS, low)).toBe(MAX_RETRY_AFTER_MS);
  });
});

describe("decideRetry", () => {
  const base = { policy: POLICY, retriable: true, now: NOW, random: low };

  it("refuses non-retriable failures", () => {
    expect(decideRetry({ ...base, attempt: 1, retriable: false })).toEqual({
      retry: false,
      reason: "not_retriable",
    });
  });

  it("allows at most maxRetries + 1 attempts", () => {
    for (let attempt = 1; attempt <= POLICY.maxRetries; attempt++) {
      expect(decideRetry({ ...base, attempt }).retry, `attempt ${attempt}`).toBe(true);
    }
    expect(decideRetry({ ...base, attempt: POLICY.maxRetries + 1 })).toEqual({
      retry: false,
      reason: "retries_exhausted",
    });
    expect(decideRetry({ ...base, attempt: 1, policy: { ...POLICY, maxRetries: 0 } })).toEqual({
      retry: false,
      reason: "retries_exhausted",
    });
  });

  it("schedules notBefore from the backoff or Retry-After", () => {
    expect(decideRetry({ ...base, attempt: 3 })).toEqual({
      retry: true,
      notBefore: new Date(NOW.getTime() + 2000),
    });
    expect(decideRetry({ ...base, attempt: 3, retryAfterMs: 1000 })).toEqual({
      retry: true,
      notBefore: new Date(NOW.getTime() + 1000),
    });
  });

  it("does not schedule a retry at or past the deadline", () => {
    const at = (ms: number) => new Date(NOW.getTime() + ms);
    expect(decideRetry({ ...base, attempt: 1, deadline: at(501) }).retry).toBe(true);
    expect(decideRetry({ ...base, attempt: 1, deadline: at(500) })).toEqual({
      retry: false,
      reason: "deadline",
    });
    expect(
      decideRetry({ ...base, attempt: 1, retryAfterMs: 30_000, deadline: at(10_000) }),
    ).toEqual({ retry: false, reason: "deadline" });
    expect(decideRetry({ ...base, attempt: 1, deadline: null }).retry).toBe(true);
  });

  it("backpressure (429, 503 + Retry-After) never exhausts the retries; only the deadline stops it", () => {
    expect(isBackpressure(429, undefined)).toBe(true);
    expect(isBackpressure(503, 1000)).toBe(true);
    expect(isBackpressure(503, undefined)).toBe(false);
    expect(isBackpressure(500, 1000)).toBe(false);
    const throttled = { ...base, backpressure: true, retryAfterMs: 1000 };
    expect(decideRetry({ ...throttled, attempt: 50, throttledAttempts: 49 })).toEqual({
      retry: true,
      notBefore: new Date(NOW.getTime() + 1000),
    });
    expect(
      decideRetry({ ...throttled, attempt: 50, deadline: new Date(NOW.getTime() + 999) }),
    ).toEqual({ retry: false, reason: "deadline" });
  });

  it("throttled attempts do not count against maxRetries, nor in the backoff's exponent", () => {
    // Attempt 8, 5 of the 7 before it throttled: 3 spent of 5.
    expect(decideRetry({ ...base, attempt: 8, throttledAttempts: 5 })).toEqual({
      retry: true,
      notBefore: new Date(NOW.getTime() + 2000), // the exponent of attempt 3
    });
    expect(decideRetry({ ...base, attempt: 11, throttledAttempts: 5 })).toEqual({
      retry: false,
      reason: "retries_exhausted",
    });
  });

  it("checks exhaustion before the deadline", () => {
    const d = decideRetry({ ...base, attempt: 6, deadline: new Date(NOW.getTime() - 1) });
    expect(d).toEqual({ retry: false, reason: "retries_exhausted" });
  });
});

describe("resolveRetryPolicy", () => {
  it("fills defaults and freezes", () => {
    const p = resolveRetryPolicy({ maxRetries: 2, initialBackoffMs: undefined });
    expect(p).toEqual({ ...DEFAULT_RETRY_POLICY, maxRetries: 2 });
    expect(Object.isFrozen(p)).toBe(true);
    expect(DEFAULT_RETRY_POLICY).toEqual({
      maxRetries: 5,
      initialBackoffMs: 1000,
      maxBackoffMs: 60_000,
    });
  });

  it("rejects invalid values naming the field", () => {
    expect(() => resolveRetryPolicy({ maxRetries: -1 })).toThrow(/maxRetries/);
    expect(() => resolveRetryPolicy({ initialBackoffMs: 1.5 })).toThrow(/initialBackoffMs/);
    expect(() => resolveRetryPolicy({ initialBackoffMs: 5000, maxBackoffMs: 10 })).toThrow(
      /maxBackoffMs/,
    );
  });
});
