/** Durations: named constants and the parser for "24h"-style strings. */

export const SECOND = 1000;
export const MINUTE = 60 * SECOND;
export const HOUR = 60 * MINUTE;
export const DAY = 24 * HOUR;

const UNITS: Record<string, number> = { ms: 1, s: SECOND, m: MINUTE, h: HOUR, d: DAY };

/**
 * Parses "24h", "90m", "1h30m", "3600s", "500ms" into milliseconds;
 * undefined when the text is not such a duration (or too large to be exact).
 */
export function parseDuration(text: string): number | undefined {
  const trimmed = text.trim();
  if (trimmed === "") return undefined;
  let total = 0;
  let rest = trimmed;
  while (rest.length > 0) {
    const m = /^(\d+(?:\.\d+)?)(ms|s|m|h|d)/.exec(rest);
    if (!m) return undefined;
    total += Number(m[1]) * (UNITS[m[2]!] ?? 0);
    rest = rest.slice(m[0].length);
  }
  const ms = Math.round(total);
  // "999…9d" would otherwise be Infinity, which every caller's range check lets through.
  return Number.isSafeInteger(ms) ? ms : undefined;
}
