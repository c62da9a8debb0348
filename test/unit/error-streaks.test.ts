/**
 * The dispatcher's error-streak warning (src/dispatcher/error-streaks.ts): one warning for
 * an endpoint that answers only errors, none for backpressure (429, or 503 with
 * Retry-After), which a paced batch meets by the dozen against a busy meter.
 */
import { describe, expect, test } from "vitest";
import { ERROR_STREAK_WARN, ErrorStreaks } from "../../src/dispatcher/error-streaks.js";
import type { Logger } from "../../src/logger.js";
import { completion, failure } from "./dispatcher-parts.js";

/** A logger that keeps the messages it is given, by level. */
function keeper() {
  const said: Array<{ level: string; msg: string }> = [];
  const at = (level: string) => (_o: unknown, msg: string) => said.push({ level, msg });
  return { said, log: { warn: at("warn"), info: at("info") } as unknown as Logger };
}

const URL_A = "http://127.0.0.1:9/v1/chat/completions";

describe("error streaks", () => {
  test("errors in a row: one warning at the threshold, one line when the endpoint answers again", () => {
    const { said, log } = keeper();
    const s = new ErrorStreaks(log);
    for (let i = 0; i < ERROR_STREAK_WARN + 5; i++) s.note(URL_A, "m", failure(400));
    s.note(URL_A, "m", completion());
    expect(said).toEqual([
      {
        level: "warn",
        msg: `endpoint answered only errors for ${ERROR_STREAK_WARN} requests in a row`,
      },
      { level: "info", msg: "endpoint answers again" },
    ]);
  });

  test("429s and 503s with Retry-After are backpressure: no streak, and they do not end one", () => {
    const { said, log } = keeper();
    const s = new ErrorStreaks(log);
    for (let i = 0; i < 3 * ERROR_STREAK_WARN; i++) {
      s.note(URL_A, "m", failure(429));
      s.note(URL_A, "m", failure(503, { retryAfterMs: 1_000 }));
    }
    expect(said).toEqual([]);
    // A streak of real errors goes on across them.
    for (let i = 0; i < ERROR_STREAK_WARN - 1; i++) s.note(URL_A, "m", failure(500));
    s.note(URL_A, "m", failure(429));
    s.note(URL_A, "m", failure(500));
    expect(said.map((l) => l.level)).toEqual(["warn"]);
  });
});
