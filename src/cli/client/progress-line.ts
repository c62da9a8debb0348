/**
 * What a progress line says, as pure functions: rates per model, an ETA
 * from the slowest model's remaining work (not the batch's overall rate),
 * why requests fail, which models are held, and a terminal line that fits
 * its width by dropping the least useful parts first.
 */
import {
  type CountsView,
  doneCount,
  formatDuration,
  type RunView,
  type ShareView,
  shareText,
} from "./views.js";

/** Rate is measured over this window, so the ETA follows changes in speed. */
export const RATE_WINDOW_MS = 30_000;

/** Requests finished per second over a sliding window. */
export class RateMeter {
  private samples: Array<{ at: number; done: number }> = [];

  add(at: number, done: number): void {
    this.samples.push({ at, done });
    while (this.samples.length > 2 && at - this.samples[0]!.at > RATE_WINDOW_MS)
      this.samples.shift();
  }

  /** Per second; undefined until there are two samples apart in time. */
  rate(): number | undefined {
    const first = this.samples[0];
    const last = this.samples[this.samples.length - 1];
    if (!first || !last || last.at - first.at < 500) return undefined;
    return ((last.done - first.done) * 1000) / (last.at - first.at);
  }
}

/** One model's remaining work and its measured rate. */
export interface ModelProgress {
  model: string;
  remaining: number;
  rate: number | undefined;
}

/**
 * Seconds until the batch is done: each model runs under its own limit, so
 * the batch ends when its slowest model does. With one model the bottleneck,
 * the overall rate (fed by the fast models that are already done) gave an
 * ETA about half the real one. Falls back to the overall rate while a model
 * with work left has no rate yet; undefined when nothing can be said.
 */
export function etaSeconds(
  remaining: number,
  overallRate: number | undefined,
  models: ModelProgress[],
): number | undefined {
  if (remaining === 0) return 0;
  const left = models.filter((m) => m.remaining > 0);
  if (left.length > 0 && left.every((m) => m.rate !== undefined && m.rate > 0)) {
    return Math.max(...left.map((m) => m.remaining / m.rate!));
  }
  if (overallRate === undefined || overallRate <= 0) return undefined;
  return remaining / overallRate;
}

/** An error kind and how many requests it holds. */
export interface ErrorSummary {
  code: string;
  statusCode: number;
  failed: number;
  retrying: number;
}

/**
 * "http_error 404 ×120, network_error ×3 retrying": the commonest first, at
 * most `max` kinds; the failed requests of the kinds left out (or not yet in
 * the breakdown) as "other ×N", so the failures shown add up to `failed`.
 */
export function errorsText(errors: ErrorSummary[], failed: number, max = 3): string {
  const shown = errors.slice(0, max);
  const parts = shown.map((e) => {
    const what = `${e.code}${e.statusCode ? ` ${e.statusCode}` : ""}`;
    const counts =
      e.failed > 0 && e.retrying > 0
        ? `×${e.failed} failed, ×${e.retrying} retrying`
        : e.failed > 0
          ? `×${e.failed}`
          : `×${e.retrying} retrying`;
    return `${what} ${counts}`;
  });
  const other = failed - shown.reduce((n, e) => n + e.failed, 0);
  if (other > 0) parts.push(`other ×${other}`);
  return parts.join(", ");
}

/** "gpt-a held until 12:03:05 (429)". */
export function holdsText(holds: Array<{ model: string; until: Date }>): string {
  return holds
    .map((h) => `${h.model} held until ${h.until.toISOString().slice(11, 19)} (429)`)
    .join(", ");
}

/**
 * "gpt-a 8/10 running (this batch 5, 2 batches), …": per model with work
 * left, what runs against its limit (shareText, as on `status`).
 */
export function sharesText(shares: ShareView[]): string {
  return shares.map(shareText).join(", ");
}

/** Per-state counts: "ok 298 · failed 2 · running 4 · queued 10" (queued: pending and buffered). */
export function statesText(c: CountsView, run: RunView): string {
  const parts = [`ok ${c.completed}`];
  if (c.failed > 0) parts.push(`failed ${c.failed}`);
  if (c.expired > 0) parts.push(`expired ${c.expired}`);
  if (c.canceled > 0) parts.push(`cancelled ${c.canceled}`);
  parts.push(`running ${run.running}`, `queued ${run.queued}`);
  return parts.join(" · ");
}

/** "12 req/s", or "– req/s" before there is a rate. */
export function rateText(rate: number | undefined): string {
  if (rate === undefined) return "– req/s";
  return `${rate >= 10 ? rate.toFixed(0) : rate.toFixed(1)} req/s`;
}

/** "ETA 1m35s", or "ETA ?" when nothing can be said. */
export function etaText(seconds: number | undefined): string {
  return seconds === undefined ? "ETA ?" : `ETA ${formatDuration(seconds)}`;
}

/** Everything a progress line may show. */
export interface LineParts {
  counts: CountsView;
  /** The counts' claims split into running and queued (runView). */
  run: RunView;
  rate: number | undefined;
  eta: number | undefined;
  errors: string;
  holds: string;
  /** The batch's share of its models (sharesText); "" or unset for none. */
  shares?: string;
}

/** The plain line's tail (logs and CI: no width limit). */
export function plainParts(p: LineParts): string[] {
  const parts = [statesText(p.counts, p.run), rateText(p.rate), etaText(p.eta)];
  if (p.holds !== "") parts.push(p.holds);
  if (p.errors !== "") parts.push(`errors: ${p.errors}`);
  if (p.shares !== undefined && p.shares !== "") parts.push(p.shares);
  return parts;
}

const BAR_MAX = 30;
const BAR_MIN = 10;

/**
 * A terminal line of at most `width` columns: bar, percent, done/total, ETA,
 * rate, then the holds, errors, per-state counts and shares while they fit.
 * The bar shrinks first (to 10 columns); then parts are dropped whole, least
 * useful first (the shares, the per-state counts, the errors, the holds, the
 * rate); then the bar goes. Percent, done/total and the ETA always stay.
 */
export function fitLine(p: LineParts, width: number, bar: (size: number) => string): string {
  const done = doneCount(p.counts);
  const pct = p.counts.total === 0 ? 100 : Math.floor((done * 100) / p.counts.total);
  const head = `${pct}% | ${done}/${p.counts.total}`;
  // In the order they are dropped.
  const optional = [
    p.shares ?? "",
    statesText(p.counts, p.run),
    p.errors === "" ? "" : `errors: ${p.errors}`,
    p.holds,
    rateText(p.rate),
  ];
  const eta = etaText(p.eta);
  const render = (barSize: number, kept: string[]) =>
    [`${barSize > 0 ? `${bar(barSize)} ` : ""}${head}`, eta, ...kept].join(" | ");
  // Shown left to right: rate, holds, errors, states, shares.
  let kept = [...optional].reverse().filter((s) => s !== "");
  const max = Math.max(20, width - 1); // the last column would wrap on some terminals
  for (;;) {
    for (let size = BAR_MAX; size >= BAR_MIN; size--) {
      const line = render(size, kept);
      if (line.length <= max) return line;
    }
    if (kept.length === 0) break;
    const drop = optional.find((s) => s !== "" && kept.includes(s));
    kept = kept.filter((s) => s !== drop);
  }
  const bare = render(0, []);
  return bare.length <= max ? bare : bare.slice(0, max);
}
