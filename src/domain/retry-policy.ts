/**
 * Retry policy (DESIGN §5): which failures are retried, how long to wait, and
 * when to stop. Pure: time and randomness come in as arguments.
 */

import { MINUTE, SECOND } from "./duration.js";
import { InvalidArgumentError } from "./errors.js";
import type { FailureCode } from "./outcome.js";

/**
 * Statuses retried by default: 408 Request Timeout, 429 Too Many Requests and
 * every 5xx. All other statuses (the rest of 4xx, and 1xx/3xx that reach us as
 * non-2xx) fail at once: repeating the same request would get the same answer.
 */
export const DEFAULT_RETRIABLE_STATUSES: ReadonlySet<number> = new Set([
  408,
  429,
  ...Array.from({ length: 100 }, (_, i) => 500 + i),
]);

/**
 * Retriability of every failure code other than `http_error` (which depends on
 * the status, see {@link isRetriableStatus}).
 * - timeout, network_error: the upstream may well answer next time.
 * - response_too_large, response_unstorable, report_rejected: the same
 *   request would produce the same body, and the same report.
 * - aborted: the caller stopped the attempt on purpose (lease lost, shutdown,
 *   cancel); whoever aborted decides what happens to the request next.
 */
export const FAILURE_CODE_RETRIABLE: Readonly<Record<Exclude<FailureCode, "http_error">, boolean>> =
  Object.freeze({
    timeout: true,
    network_error: true,
    response_too_large: false,
    response_unstorable: false,
    aborted: false,
    report_rejected: false,
    secret_unavailable: false,
  });

/** Whether an upstream status is worth retrying, per `table` (default: 408, 429, 5xx). */
export function isRetriableStatus(
  status: number,
  table: ReadonlySet<number> = DEFAULT_RETRIABLE_STATUSES,
): boolean {
  return table.has(status);
}

/** Whether a failure with this code (and status, for `http_error`) is worth retrying. */
export function isRetriableFailure(
  code: FailureCode,
  status: number,
  table: ReadonlySet<number> = DEFAULT_RETRIABLE_STATUSES,
): boolean {
  return code === "http_error" ? isRetriableStatus(status, table) : FAILURE_CODE_RETRIABLE[code];
}

/**
 * Upper bound on any wait taken from `Retry-After`. Providers' rate-limit
 * windows are seconds to a minute; a larger value usually means a daily quota
 * or a misconfigured proxy, where sleeping for hours would stall the batch with
 * no visible error. Past 10 minutes we retry anyway and let `maxRetries` turn
 * the request into a failure that carries the upstream's message (a 429's
 * retries are bounded by the batch's deadline instead).
 */
export const MAX_RETRY_AFTER_MS = 10 * MINUTE;

const DELTA_SECONDS = /^-?\d+(?:\.\d+)?$/;
/**
 * The three HTTP-date forms of RFC 9110 §5.6.7, matched before `Date.parse`
 * because V8's parser accepts nearly anything ("Mon, 99" is 1999).
 */
const IMF_FIXDATE = /^[a-z]{3},\s+\d{1,2}\s+[a-z]{3}\s+\d{4}\s+\d{2}:\d{2}:\d{2}\s+GMT$/i;
const RFC850_DATE = /^[a-z]{6,9},\s+\d{2}-[a-z]{3}-\d{2}\s+\d{2}:\d{2}:\d{2}\s+GMT$/i;
const ASCTIME_DATE = /^[a-z]{3}\s+[a-z]{3}\s+\d{1,2}\s+\d{2}:\d{2}:\d{2}\s+\d{4}$/i;

/** Epoch ms of an HTTP-date, or NaN. asctime carries no zone: it is GMT by definition. */
function parseHttpDate(text: string): number {
  if (IMF_FIXDATE.test(text) || RFC850_DATE.test(text)) return Date.parse(text);
  if (ASCTIME_DATE.test(text)) return Date.parse(`${text} GMT`);
  return Number.NaN;
}

/**
 * Parses a `Retry-After` value into milliseconds from `now`.
 * Accepts delta-seconds (RFC 9110; decimals tolerated) and HTTP-dates.
 * Garbage → undefined; negative or past → 0; capped at {@link MAX_RETRY_AFTER_MS}.
 */
export function parseRetryAfter(value: string | undefined, now: Date): number | undefined {
  if (value === undefined) return undefined;
  const text = value.trim();
  if (text === "") return undefined;
  let ms: number;
  if (DELTA_SECONDS.test(text)) {
    ms = Number(text) * SECOND;
  } else {
    const at = parseHttpDate(text);
    if (Number.isNaN(at)) return undefined;
    ms = at - now.getTime();
  }
  if (!Number.isFinite(ms)) return MAX_RETRY_AFTER_MS;
  return Math.min(Math.max(0, Math.ceil(ms)), MAX_RETRY_AFTER_MS);
}

/** How many times and how patiently a failed request is tried again. */
export interface RetryPolicy {
  /**
   * Retries after the first attempt; a request is tried at most `maxRetries + 1` times.
   * @default 5
   */
  maxRetries: number;
  /**
   * Base delay before the first retry; doubles with every further attempt.
   * @default 1_000
   */
  initialBackoffMs: number;
  /**
   * Cap on the exponential delay (before jitter; `Retry-After` has its own cap).
   * @default 60_000
   */
  maxBackoffMs: number;
}

/**
 * Longest backoff a policy may set, in ms: the batch's columns are Postgres
 * `integer` (2^31 - 1 ms, about 24.8 days; a batch's completion window is
 * shorter anyway).
 */
export const MAX_BACKOFF_MS = 2_147_483_647;

/** The policy used when a batch does not set its own. */
export const DEFAULT_RETRY_POLICY: Readonly<RetryPolicy> = Object.freeze({
  maxRetries: 5,
  initialBackoffMs: 1 * SECOND,
  maxBackoffMs: 60 * SECOND,
});

/**
 * Fills a partial policy from the defaults, validates it, and freezes it.
 * Throws InvalidArgumentError naming the offending field.
 */
export function resolveRetryPolicy(partial: Partial<RetryPolicy> = {}): Readonly<RetryPolicy> {
  const policy = { ...DEFAULT_RETRY_POLICY, ...definedOnly(partial) };
  for (const key of ["maxRetries", "initialBackoffMs", "maxBackoffMs"] as const) {
    const v = policy[key];
    if (!Number.isSafeInteger(v) || v < 0) {
      throw new InvalidArgumentError(key, `must be a non-negative integer, got ${v}`);
    }
  }
  if (policy.maxBackoffMs < policy.initialBackoffMs) {
    throw new InvalidArgumentError(
      "maxBackoffMs",
      `must be >= initialBackoffMs (${policy.initialBackoffMs}), got ${policy.maxBackoffMs}`,
    );
  }
  return Object.freeze(policy);
}

/**
 * Delay before the next attempt, after `attempt` (1-based) failed.
 *
 * Exponential: `initialBackoffMs * 2^(attempt-1)`, capped at `maxBackoffMs`,
 * then "equal jitter": a uniform pick in [cap/2, cap]. Full jitter ([0, cap])
 * spreads load slightly better (AWS "Exponential Backoff and Jitter"), but it
 * can pick ~0 ms: with only 5 retries by default, an upstream outage could eat
 * the whole budget within seconds. Equal jitter guarantees at least half the
 * exponential schedule (≥ 15.5 s over the 5 default retries) and still
 * de-synchronises requests that failed together. Herd size is bounded anyway
 * by the fleet-wide per-model limit.
 *
 * When the upstream sent `Retry-After`, it wins (capped at {@link MAX_RETRY_AFTER_MS}),
 * without jitter: the upstream told us when it will have room.
 */
export function backoffMs(
  attempt: number,
  policy: RetryPolicy,
  retryAfterMs?: number,
  random: () => number = Math.random,
): number {
  if (retryAfterMs !== undefined && Number.isFinite(retryAfterMs)) {
    return Math.min(Math.max(0, Math.ceil(retryAfterMs)), MAX_RETRY_AFTER_MS);
  }
  const exponent = Math.max(0, Math.floor(attempt) - 1);
  // 2 ** 1024 is Infinity, which Math.min turns into the cap: no overflow concerns.
  const ceiling = Math.min(policy.initialBackoffMs * 2 ** exponent, policy.maxBackoffMs);
  const half = ceiling / 2;
  return Math.round(half + clamp01(random()) * half);
}

/**
 * Whether a failure is the upstream saying "slow down" rather than "this
 * failed" (DESIGN §5): a 429, or a 503 with Retry-After. Such attempts are
 * backpressure: they do not use up `maxRetries`, only the batch's deadline
 * bounds them.
 */
export function isBackpressure(status: number, retryAfterMs: number | undefined): boolean {
  return status === 429 || (status === 503 && retryAfterMs !== undefined);
}

/** Everything {@link decideRetry} needs to know about the attempt that just failed. */
export interface RetryInput {
  /** 1-based number of the attempt that just failed. */
  attempt: number;
  /** Earlier attempts of the request that were backpressure: not counted against `maxRetries`. */
  throttledAttempts?: number;
  /** This attempt was backpressure ({@link isBackpressure}): only the deadline bounds its retries. */
  backpressure?: boolean;
  policy: RetryPolicy;
  /** From the outcome (see {@link isRetriableFailure}). */
  retriable: boolean;
  retryAfterMs?: number | undefined;
  now: Date;
  /** The batch deadline (end of its completion window); none when undefined/null. */
  deadline?: Date | null | undefined;
  /** Injectable for tests; defaults to Math.random. */
  random?: () => number;
}

/** Why a failed request will not be tried again. */
export type NoRetryReason = "not_retriable" | "retries_exhausted" | "deadline";

/** Retry at or after `notBefore`, or stop for `reason`. */
export type RetryDecision =
  | { retry: true; notBefore: Date }
  | { retry: false; reason: NoRetryReason };

/**
 * Decides whether a failed attempt is retried and when. Checked in order:
 * retriable at all, attempts left (the attempts spent, `attempt` less the
 * throttled ones, above `maxRetries` is exhausted; never for backpressure),
 * and a retry that would start at or after the batch deadline is not
 * scheduled. The backoff's exponent counts the attempts spent (a throttled
 * attempt without Retry-After: all of them).
 */
export function decideRetry(input: RetryInput): RetryDecision {
  const { attempt, policy, retriable, retryAfterMs, now, deadline } = input;
  if (!retriable) return { retry: false, reason: "not_retriable" };
  const spent = attempt - (input.throttledAttempts ?? 0);
  if (!input.backpressure && spent > policy.maxRetries) {
    return { retry: false, reason: "retries_exhausted" };
  }
  const delay = backoffMs(input.backpressure ? attempt : spent, policy, retryAfterMs, input.random);
  const notBefore = new Date(now.getTime() + delay);
  if (deadline != null && notBefore.getTime() >= deadline.getTime()) {
    return { retry: false, reason: "deadline" };
  }
  return { retry: true, notBefore };
}

function clamp01(x: number): number {
  return Number.isFinite(x) ? Math.min(Math.max(x, 0), 1) : 0;
}

function definedOnly<T extends object>(o: T): Partial<T> {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as Partial<T>;
}
