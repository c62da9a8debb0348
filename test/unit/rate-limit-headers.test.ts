/** Reading providers' rate-limit headers. */
import { describe, expect, test } from "vitest";
import {
  MAX_RESET_MS,
  parseRateLimitHeaders,
  parseResetDuration,
  parseResetTime,
} from "../../src/domain/rate-limit-headers.js";

const NOW = Date.parse("2026-12-04T12:00:00Z");

describe("parseResetDuration", () => {
  test.each([
    ["6m0s", 360_000],
    ["1.5s", 1500],
    ["20ms", 20],
    ["1h2m3.5s", MAX_RESET_MS],
    ["2m30s", 150_000],
    ["0s", 0],
    ["2", 2000],
    ["0.25", 250],
    ["7m12.5s", 432_500],
  ])("%s → %d ms", (text, ms) => {
    expect(parseResetDuration(text)).toBe(ms);
  });

  test.each(["", "soon", "5x", "-1s", "s", "1s garbage"])("%j is not a duration", (text) => {
    expect(parseResetDuration(text)).toBeUndefined();
  });
});

describe("parseResetTime", () => {
  test("an RFC 3339 time in the future, in the past, with an offset", () => {
    expect(parseResetTime("2026-12-04T12:00:02Z", NOW)).toBe(2000);
    expect(parseResetTime("2026-12-04T12:00:00.250Z", NOW)).toBe(250);
    expect(parseResetTime("2026-12-04T11:59:00Z", NOW)).toBe(0);
    expect(parseResetTime("2026-12-04T13:00:01+01:00", NOW)).toBe(1000);
  });
  test("anything else is not a time", () => {
    expect(parseResetTime("Fri, 04 Dec 2026 12:00:02 GMT", NOW)).toBeUndefined();
    expect(parseResetTime("2026-12-04", NOW)).toBeUndefined();
    expect(parseResetTime("2s", NOW)).toBeUndefined();
  });
});

describe("parseRateLimitHeaders", () => {
  test("OpenAI's headers", () => {
    const s = parseRateLimitHeaders(
      {
        "x-ratelimit-limit-requests": "3000",
        "x-ratelimit-remaining-requests": "2999",
        "x-ratelimit-reset-requests": "20ms",
        "x-ratelimit-remaining-tokens": "0",
        "x-ratelimit-reset-tokens": "6m0s",
      },
      NOW,
    );
    expect(s).toEqual({
      requests: { remaining: 2999, resetMs: 20 },
      tokens: { remaining: 0, resetMs: 360_000 },
      requestsPerMinute: 3000,
    });
  });

  test("Anthropic's headers: the tightest of tokens, input and output tokens", () => {
    const s = parseRateLimitHeaders(
      {
        "anthropic-ratelimit-requests-limit": "50",
        "anthropic-ratelimit-requests-remaining": "49",
        "anthropic-ratelimit-requests-reset": "2026-12-04T12:00:01Z",
        "anthropic-ratelimit-input-tokens-remaining": "1200",
        "anthropic-ratelimit-input-tokens-reset": "2026-12-04T12:00:03Z",
        "anthropic-ratelimit-output-tokens-remaining": "90000",
        "anthropic-ratelimit-output-tokens-reset": "2026-12-04T12:00:04Z",
        "retry-after": "3",
      },
      NOW,
    );
    expect(s).toEqual({
      requests: { remaining: 49, resetMs: 1000 },
      tokens: { remaining: 1200, resetMs: 3000 },
      requestsPerMinute: 50,
      retryAfterMs: 3000,
    });
  });

  test("retry-after in seconds or as an HTTP date; retry-after-ms wins", () => {
    expect(parseRateLimitHeaders({ "retry-after": "2" }, NOW)).toEqual({ retryAfterMs: 2000 });
    expect(parseRateLimitHeaders({ "retry-after": "Fri, 04 Dec 2026 12:00:05 GMT" }, NOW)).toEqual({
      retryAfterMs: 5000,
    });
    expect(parseRateLimitHeaders({ "retry-after": "2", "retry-after-ms": "150" }, NOW)).toEqual({
      retryAfterMs: 150,
    });
  });

  test("garbage is ignored, a count without a reset keeps an unknown reset", () => {
    expect(
      parseRateLimitHeaders(
        {
          "x-ratelimit-remaining-requests": "many",
          "x-ratelimit-remaining-tokens": "10",
          "x-ratelimit-reset-tokens": "later",
          "retry-after": "whenever",
        },
        NOW,
      ),
    ).toEqual({ tokens: { remaining: 10, resetMs: undefined } });
  });
});
