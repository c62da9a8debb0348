/**
 * How a model's pacing reads, the same in the CLI (`limits list`, `status`, `watch`) and
 * on the dashboard (docs/pacing.md, "What is visible where"). No imports: the dashboard
 * bundles it.
 */

/** The fields it reads (ModelPacing, or a dispatcher's view). */
export interface PacingFigures {
  mode: string;
  concurrency: number;
  callsLastMinute: number;
  throttledLastMinute: number;
  /** The span the counts cover, in seconds (0 or absent: a minute). */
  windowSeconds?: number;
}

/**
 * "paced: 2,950/min, 0 % 429, 3 at once", "backing off: 1,180/min, 12 % 429, 8 at once",
 * "held (meter empty)".
 */
export function pacingText(p: PacingFigures): string {
  if (p.mode === "held") return "held (meter empty)";
  const calls = p.callsLastMinute;
  const window = p.windowSeconds !== undefined && p.windowSeconds > 0 ? p.windowSeconds : 60;
  const perMinute = Math.round((calls * 60) / Math.max(1, window));
  const share = calls > 0 ? Math.round((100 * p.throttledLastMinute) / calls) : 0;
  const mode = p.mode.replace("_", " ");
  return `${mode}: ${perMinute.toLocaleString("en-US")}/min, ${share} % 429, ${p.concurrency} at once`;
}
