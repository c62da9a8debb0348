/**
 * What an upstream's rate-limit headers say about its meter (docs/pacing.md):
 * OpenAI's `x-ratelimit-{remaining,reset}-{requests,tokens}` (resets in its
 * duration format: "6m0s", "1.5s", "20ms"), Anthropic's
 * `anthropic-ratelimit-{requests,tokens,input-tokens,output-tokens}-{remaining,reset}`
 * (resets as RFC 3339 times), and `retry-after` / `retry-after-ms`. Pure:
 * the wall-clock "now" (for dates) comes in as an argument.
 */
import { parseRetryAfter } from "./retry-policy.js";

/** One dimension of a meter: how much is left, and in how many ms it is full again. */
export interface MeterReading {
  remaining: number;
  /** Undefined when the reset was absent or unreadable. */
  resetMs: number | undefined;
}

/** What the headers of one response say; a field is absent when no header said it. */
export interface RateLimitState {
  requests?: MeterReading;
  tokens?: MeterReading;
  /**
   * The meter's requests a minute (OpenAI's `x-ratelimit-limit-requests`, Anthropic's
   * `anthropic-ratelimit-requests-limit`): what a dispatcher with no rate set paces to.
   */
  requestsPerMinute?: number;
  retryAfterMs?: number;
}

/** Longest reset believed: a longer one is a daily quota, not a meter to pace on. */
export const MAX_RESET_MS = 10 * 60_000;

const DURATION_PART = /(\d+(?:\.\d+)?)(ms|h|m|s)/y;
const UNIT_MS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 };

/**
 * Parses OpenAI's reset durations ("6m0s", "1.5s", "20ms", "1h2m3.5s") and
 * bare seconds ("2", "0.5") into ms; undefined for anything else.
 */
export function parseResetDuration(text: string): number | undefined {
  const t = text.trim();
  if (t === "") return undefined;
  if (/^\d+(?:\.\d+)?$/.test(t)) return capped(Number(t) * 1000);
  let total = 0;
  DURATION_PART.lastIndex = 0;
  while (DURATION_PART.lastIndex < t.length) {
    const at = DURATION_PART.lastIndex;
    const m = DURATION_PART.exec(t);
    if (!m || m.index !== at) return undefined;
    total += Number(m[1]) * UNIT_MS[m[2]!]!;
  }
  return capped(total);
}

const RFC3339 = /^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:[Zz]|[+-]\d{2}:\d{2})$/;

/** Ms from `nowEpochMs` to an RFC 3339 time (0 when past); undefined for anything else. */
export function parseResetTime(text: string, nowEpochMs: number): number | undefined {
  const t = text.trim();
  if (!RFC3339.test(t)) return undefined;
  const at = Date.parse(t);
  return Number.isNaN(at) ? undefined : capped(at - nowEpochMs);
}

function capped(ms: number): number | undefined {
  if (!Number.isFinite(ms)) return undefined;
  return Math.min(Math.max(0, Math.ceil(ms)), MAX_RESET_MS);
}

function count(text: string | undefined): number | undefined {
  if (text === undefined || !/^\s*\d+\s*$/.test(text)) return undefined;
  return Number(text);
}

function reading(
  remaining: string | undefined,
  reset: number | undefined,
): MeterReading | undefined {
  const n = count(remaining);
  return n === undefined ? undefined : { remaining: n, resetMs: reset };
}

/** The tighter of two readings of one dimension (the one with less left). */
function tighter(a: MeterReading | undefined, b: MeterReading | undefined) {
  if (a === undefined) return b;
  if (b === undefined) return a;
  return b.remaining < a.remaining ? b : a;
}

/** Reads the rate-limit headers of one response (names lowercased). */
export function parseRateLimitHeaders(
  headers: Readonly<Record<string, string>>,
  nowEpochMs: number,
): RateLimitState {
  const h = (name: string) => headers[name];
  const dur = (name: string) => {
    const v = h(name);
    return v === undefined ? undefined : parseResetDuration(v);
  };
  const time = (name: string) => {
    const v = h(name);
    return v === undefined ? undefined : parseResetTime(v, nowEpochMs);
  };
  const state: RateLimitState = {};
  const requests = tighter(
    reading(h("x-ratelimit-remaining-requests"), dur("x-ratelimit-reset-requests")),
    reading(
      h("anthropic-ratelimit-requests-remaining"),
      time("anthropic-ratelimit-requests-reset"),
    ),
  );
  let tokens = reading(h("x-ratelimit-remaining-tokens"), dur("x-ratelimit-reset-tokens"));
  for (const kind of ["tokens", "input-tokens", "output-tokens"]) {
    const r = reading(
      h(`anthropic-ratelimit-${kind}-remaining`),
      time(`anthropic-ratelimit-${kind}-reset`),
    );
    tokens = tighter(tokens, r);
  }
  const limits = [h("x-ratelimit-limit-requests"), h("anthropic-ratelimit-requests-limit")]
    .map(count)
    .filter((n): n is number => n !== undefined && n > 0);
  if (limits.length > 0) state.requestsPerMinute = Math.min(...limits);
  if (requests) state.requests = requests;
  if (tokens) state.tokens = tokens;
  const ms = h("retry-after-ms");
  const retryAfter =
    ms !== undefined && /^\s*\d+(?:\.\d+)?\s*$/.test(ms)
      ? capped(Number(ms))
      : parseRetryAfter(h("retry-after"), new Date(nowEpochMs));
  if (retryAfter !== undefined) state.retryAfterMs = retryAfter;
  return state;
}

/**
 * How long the meter stays empty, when a dimension reads nothing left: the
 * longest such reset (a reading without one: the Retry-After, else
 * `fallbackMs`). Undefined when no dimension reads empty: then there is no
 * evidence that anything but the request that got a 429 should wait.
 */
export function meterEmptyForMs(state: RateLimitState, fallbackMs: number): number | undefined {
  const empty = [state.requests, state.tokens].filter((r) => r !== undefined && r.remaining <= 0);
  if (empty.length === 0) return undefined;
  return Math.max(...empty.map((r) => r!.resetMs ?? state.retryAfterMs ?? fallbackMs));
}
