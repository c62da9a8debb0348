/** Retention: when a finished batch goes (docs/operations.md). */
import { parseDuration } from "./duration.js";

/**
 * A retention as given ("7d", "12h", "10s"; "0" = kept until deleted) in ms;
 * undefined when it is not one.
 */
export function parseRetention(text: string): number | undefined {
  return text.trim() === "0" ? 0 : parseDuration(text);
}

/**
 * When retention deletes a batch that finished at `finishedAt`: its own
 * retention, else the server's; undefined while it runs or when it is kept
 * (a retention of 0).
 */
export function deleteTime(
  finishedAt: Date | null,
  ownMs: number | null,
  serverMs: number,
): Date | undefined {
  const ms = ownMs ?? serverMs;
  if (finishedAt === null || ms === 0) return undefined;
  return new Date(finishedAt.getTime() + ms);
}
