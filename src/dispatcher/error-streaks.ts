/**
 * Per endpoint origin, the failures since its last success: an endpoint that
 * answered only errors ERROR_STREAK_WARN times in a row is one warning (and
 * its recovery one info line), not one line per request. "Slow down" (429, or
 * 503 with Retry-After) is not an error here: it is backpressure, paced by the
 * model's gate (docs/pacing.md), and a paced batch against a busy meter meets
 * it by the dozen; it neither counts nor ends a streak.
 */

import type { AttemptOutcome } from "../domain/outcome.js";
import { isBackpressure } from "../domain/retry-policy.js";
import type { Logger } from "../logger.js";

/** Failures in a row that make a warning. */
export const ERROR_STREAK_WARN = 20;

/** The origin of a URL (scheme, host, port: no credentials, no path), for logs. */
function originOf(url: string): string {
  try {
    return new URL(url).origin;
  } catch {
    return "(invalid url)";
  }
}

export class ErrorStreaks {
  readonly #streaks = new Map<string, number>();

  constructor(private readonly log: Logger) {}

  /** One attempt of `model` to `url` ended with `outcome`. */
  note(url: string, model: string, outcome: AttemptOutcome): void {
    const origin = originOf(url);
    if (outcome.kind === "completion") {
      const streak = this.#streaks.get(origin) ?? 0;
      if (streak === 0) return;
      this.#streaks.delete(origin);
      if (streak >= ERROR_STREAK_WARN)
        this.log.info({ endpoint: origin, failures: streak }, "endpoint answers again");
      return;
    }
    if (isBackpressure(outcome.statusCode, outcome.retryAfterMs)) return;
    const streak = (this.#streaks.get(origin) ?? 0) + 1;
    this.#streaks.set(origin, streak);
    if (streak === ERROR_STREAK_WARN) {
      this.log.warn(
        {
          endpoint: origin,
          model,
          failures: streak,
          last: { status: outcome.statusCode, code: outcome.code },
        },
        `endpoint answered only errors for ${streak} requests in a row`,
      );
    }
  }
}
