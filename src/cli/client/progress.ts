/**
 * Follows a batch with WatchBatch until it is terminal, drawing progress:
 * a cli-progress bar on a terminal (done/total, per-state counts, rate,
 * ETA), or a plain line at most every few seconds otherwise (logs, CI).
 * Reconnects when the server restarts or the connection drops.
 */
import { setTimeout as sleep } from "node:timers/promises";
import { create } from "@bufbuild/protobuf";
import { DurationSchema } from "@bufbuild/protobuf/wkt";
import cliProgress from "cli-progress";
import type { Batch } from "../../gen/fusillade/v1/resources_pb.js";
import { CliError, type Connection, describeRpcError, isTransient } from "./connection.js";
import {
  type CountsView,
  countsView,
  doneCount,
  formatDuration,
  isTerminal,
  stateName,
} from "./views.js";

export interface ProgressOptions {
  /** Draw a live bar (a terminal) rather than plain lines. */
  tty: boolean;
  /** Where progress goes (stderr: stdout stays for results and --json). */
  stream: NodeJS.WritableStream;
  /** Plain mode: least time between two lines. */
  plainEveryMs: number;
  /** Aborts the watch (Ctrl-C). */
  signal: AbortSignal;
}

/** Messages a second asked of the server: the bar redraws that often. */
const TTY_INTERVAL_MS = 200;
/** Rate is measured over this window, so the ETA follows changes in speed. */
const RATE_WINDOW_MS = 30_000;
/** Reconnect attempts in a row before giving up, and their backoff bounds. */
const MAX_RECONNECTS = 8;
const RECONNECT_MIN_MS = 250;
const RECONNECT_MAX_MS = 5_000;

/** Requests finished per second over a sliding window. */
class RateMeter {
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

function statesText(c: CountsView): string {
  const parts = [`ok ${c.completed}`];
  if (c.failed > 0) parts.push(`failed ${c.failed}`);
  if (c.expired > 0) parts.push(`expired ${c.expired}`);
  if (c.canceled > 0) parts.push(`cancelled ${c.canceled}`);
  parts.push(`running ${c.in_progress}`, `pending ${c.pending}`);
  return parts.join(" · ");
}

function rateText(rate: number | undefined): string {
  if (rate === undefined) return "– req/s";
  return `${rate >= 10 ? rate.toFixed(0) : rate.toFixed(1)} req/s`;
}

function etaText(c: CountsView, rate: number | undefined): string {
  const left = c.total - doneCount(c);
  if (left === 0) return "0s";
  if (rate === undefined || rate <= 0) return "?";
  return formatDuration(left / rate);
}

/** One plain progress line. */
export function progressLine(b: Batch, rate: number | undefined): string {
  const c = countsView(b.counts);
  const done = doneCount(c);
  const pct = c.total === 0 ? 100 : Math.floor((done * 100) / c.total);
  return `batch ${b.id} ${stateName(b.state)}: ${done}/${c.total} done (${pct}%) | ${statesText(c)} | ${rateText(rate)} | ETA ${etaText(c, rate)}`;
}

/** Draws progress for successive batch messages. */
class Display {
  private readonly rate = new RateMeter();
  private bar: cliProgress.SingleBar | undefined;
  private lastPlain = 0;

  constructor(private readonly opts: ProgressOptions) {}

  update(b: Batch, final: boolean): void {
    const c = countsView(b.counts);
    const done = doneCount(c);
    const now = Date.now();
    this.rate.add(now, done);
    const r = this.rate.rate();
    if (!this.opts.tty) {
      if (final || this.lastPlain === 0 || now - this.lastPlain >= this.opts.plainEveryMs) {
        this.lastPlain = now;
        this.opts.stream.write(`${progressLine(b, r)}\n`);
      }
      return;
    }
    const payload = {
      states: statesText(c),
      rate: rateText(r),
      // Not {eta}: cli-progress fills that one with its own estimate.
      remaining: etaText(c, r),
    };
    if (!this.bar) {
      this.bar = new cliProgress.SingleBar(
        {
          format: " {bar} {percentage}% | {value}/{total} | {states} | {rate} | ETA {remaining} ",
          stream: this.opts.stream,
          hideCursor: true,
          barsize: 30,
          fps: 10,
          etaBuffer: 50,
        },
        cliProgress.Presets.shades_classic,
      );
      this.bar.start(c.total, done, payload);
    } else {
      this.bar.setTotal(c.total);
      this.bar.update(done, payload);
    }
    if (final) this.stop();
  }

  stop(): void {
    this.bar?.stop();
    this.bar = undefined;
  }
}

/**
 * Watches `batchId` until it is terminal; returns the final batch. Throws
 * CliError on errors that reconnecting does not cure, and (exit 130) when
 * `signal` aborts.
 */
export async function followBatch(
  conn: Connection,
  batchId: string,
  opts: ProgressOptions,
): Promise<Batch> {
  const display = new Display(opts);
  const interval = opts.tty ? TTY_INTERVAL_MS : Math.min(opts.plainEveryMs, 1_000);
  let failures = 0;
  try {
    for (;;) {
      try {
        for await (const m of conn.batch.watchBatch(
          {
            batchId,
            minInterval: create(DurationSchema, {
              nanos: (interval % 1000) * 1e6,
              seconds: BigInt(Math.floor(interval / 1000)),
            }),
          },
          { signal: opts.signal },
        )) {
          failures = 0;
          const b = m.batch!;
          const final = isTerminal(b.state);
          display.update(b, final);
          if (final) return b;
        }
        // The stream ended without a terminal state (server restarting): watch again.
      } catch (e) {
        if (opts.signal.aborted) break;
        if (!isTransient(e) || ++failures > MAX_RECONNECTS) throw describeRpcError(e, conn.server);
        const wait = Math.min(RECONNECT_MAX_MS, RECONNECT_MIN_MS * 2 ** (failures - 1));
        await sleep(wait, undefined, { signal: opts.signal }).catch(() => undefined);
      }
      if (opts.signal.aborted) break;
    }
  } finally {
    display.stop();
  }
  throw new CliError(
    `stopped watching; batch ${batchId} keeps running (follow it again with \`fusillade watch ${batchId}\`)`,
    130,
  );
}
