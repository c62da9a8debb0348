/**
 * Follows a batch with WatchBatch until it is terminal, drawing progress:
 * a cli-progress bar fitted to the terminal's width on a terminal, or a
 * plain line at most every few seconds otherwise (logs, CI). Every few
 * seconds it also asks for the batch's breakdown (GetBatchBreakdown): the
 * per-model work left (the ETA), models held after a 429, and why
 * requests fail. When the connection drops it says so at once, reconnects
 * for up to RECONNECT_FOR_MS, and ends with how to re-attach.
 */
import { setTimeout as sleep } from "node:timers/promises";
import { create } from "@bufbuild/protobuf";
import { DurationSchema, timestampDate } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";
import cliProgress from "cli-progress";
import type { Batch } from "../../gen/fusillade/v1/resources_pb.js";
import { CliError, type Connection, describeRpcError, isTransient } from "./connection.js";
import {
  type ErrorSummary,
  errorsText,
  etaSeconds,
  fitLine,
  holdsText,
  type LineParts,
  type ModelProgress,
  plainParts,
  RateMeter,
  sharesText,
} from "./progress-line.js";
import { countsView, doneCount, isTerminal, runView, shareView, stateName } from "./views.js";

export interface ProgressOptions {
  /** Draw a live bar (a terminal) rather than plain lines. */
  tty: boolean;
  /** Where progress goes (stderr: stdout stays for results and --json). */
  stream: NodeJS.WritableStream;
  /** Plain mode: least time between two lines. */
  plainEveryMs: number;
  /** Aborts the watch (Ctrl-C). */
  signal: AbortSignal;
  /** What the interrupted message suggests for the results (submit's --output/--errors). */
  resultsHint?: { output?: string; errors?: string };
  /** How long to keep reconnecting after the server went away. */
  reconnectForMs?: number;
}

/** Messages a second asked of the server: the bar redraws that often. */
const TTY_INTERVAL_MS = 200;
/** How often the breakdown (per-model counts, errors, holds) is asked for. */
const BREAKDOWN_EVERY_MS = 3_000;
/** How long to keep reconnecting after the server went away, and the backoff bounds. */
export const RECONNECT_FOR_MS = 60_000;
const RECONNECT_MIN_MS = 250;
const RECONNECT_MAX_MS = 5_000;
/** Attempts before giving up on a server never reached in this watch (a wrong --server). */
const FIRST_CONNECT_ATTEMPTS = 3;

/** What the breakdown added: per-model rates, errors and holds. */
class Diagnosis {
  private readonly meters = new Map<string, RateMeter>();
  private models: Array<{ model: string; remaining: number }> = [];
  errors: ErrorSummary[] = [];
  holds: Array<{ model: string; until: Date }> = [];
  /** False once the server said it has no GetBatchBreakdown. */
  supported = true;

  async refresh(conn: Connection, batchId: string, signal: AbortSignal): Promise<void> {
    if (!this.supported) return;
    try {
      const res = await conn.batch.getBatchBreakdown({ batchId }, { signal });
      const now = Date.now();
      this.models = res.models.map((m) => {
        const c = countsView(m.counts);
        let meter = this.meters.get(m.model);
        if (!meter) {
          meter = new RateMeter();
          this.meters.set(m.model, meter);
        }
        meter.add(now, doneCount(c));
        return { model: m.model, remaining: c.total - doneCount(c) };
      });
      this.errors = res.errors.map((e) => ({
        code: e.code,
        statusCode: e.statusCode,
        failed: Number(e.failed),
        retrying: Number(e.retrying),
      }));
      this.holds = res.models
        .filter((m) => m.holdUntilTime !== undefined)
        .map((m) => ({ model: m.model, until: timestampDate(m.holdUntilTime!) }));
    } catch (e) {
      if (e instanceof ConnectError && e.code === Code.Unimplemented) this.supported = false;
      // Otherwise the next refresh tries again; the watch stream reports lost connections.
    }
  }

  perModel(): ModelProgress[] {
    return this.models.map((m) => ({ ...m, rate: this.meters.get(m.model)?.rate() }));
  }
}

/** Draws progress for successive batch messages. */
class Display {
  private readonly rate = new RateMeter();
  private bar: cliProgress.SingleBar | undefined;
  private lastPlain = 0;
  private parts: LineParts | undefined;

  constructor(
    private readonly opts: ProgressOptions,
    private readonly diagnosis: Diagnosis,
  ) {}

  private last: Batch | undefined;
  private lastDiagnosis = "";

  /** Draws the last batch again when the diagnosis changed (no watch message comes for that). */
  redraw(): void {
    const text = errorsText(this.diagnosis.errors, 0) + holdsText(this.diagnosis.holds);
    if (text === this.lastDiagnosis || this.last === undefined) return;
    this.lastDiagnosis = text;
    if (!this.opts.tty) this.lastPlain = 0; // news: a line now, not at the next interval
    this.update(this.last, false);
  }

  update(b: Batch, final: boolean): void {
    this.last = b;
    const c = countsView(b.counts);
    const done = doneCount(c);
    const now = Date.now();
    this.rate.add(now, done);
    const r = this.rate.rate();
    const shares = b.shares.map(shareView);
    this.parts = {
      counts: c,
      run: runView(c, shares),
      rate: r,
      eta: etaSeconds(c.total - done, r, this.diagnosis.perModel()),
      errors: errorsText(this.diagnosis.errors, c.failed),
      holds: holdsText(this.diagnosis.holds.filter((h) => h.until.getTime() > now)),
      shares: sharesText(shares),
    };
    if (!this.opts.tty) {
      if (final || this.lastPlain === 0 || now - this.lastPlain >= this.opts.plainEveryMs) {
        this.lastPlain = now;
        this.opts.stream.write(`${progressLine(b, this.parts)}\n`);
      }
      return;
    }
    if (!this.bar) {
      this.bar = new cliProgress.SingleBar(
        {
          // A function: the line is fitted to the terminal's width here.
          format: (options, params) =>
            this.parts
              ? ` ${fitLine(this.parts, params.maxWidth - 1, (size) => barText(options, params.progress, size))}`
              : "",
          stream: this.opts.stream,
          hideCursor: true,
          fps: 10,
        },
        cliProgress.Presets.shades_classic,
      );
      this.bar.start(c.total, done);
    } else {
      this.bar.setTotal(c.total);
      this.bar.update(done);
    }
    if (final) this.stop();
  }

  /** A line between updates ("reconnecting…"): above the bar, which is redrawn at the next update. */
  note(text: string): void {
    this.stop();
    this.opts.stream.write(`${text}\n`);
  }

  stop(): void {
    this.bar?.stop();
    this.bar = undefined;
  }
}

function barText(
  options: { barCompleteString?: string; barIncompleteString?: string; barGlue?: string },
  progress: number,
  size: number,
): string {
  const complete = Math.round(Math.min(1, Math.max(0, progress)) * size);
  return (
    (options.barCompleteString ?? "").slice(0, complete) +
    (options.barGlue ?? "") +
    (options.barIncompleteString ?? "").slice(0, size - complete)
  );
}

/** One plain progress line. */
export function progressLine(b: Batch, parts: LineParts): string {
  const c = parts.counts;
  const done = doneCount(c);
  const pct = c.total === 0 ? 100 : Math.floor((done * 100) / c.total);
  return `batch ${b.id} ${stateName(b.state)}: ${done}/${c.total} done (${pct}%) | ${plainParts(parts).join(" | ")}`;
}

/** How to pick the batch up again, for the messages that end a watch early. */
function reattachHint(batchId: string, results: ProgressOptions["resultsHint"]): string {
  const files = [
    results?.output === undefined ? "" : ` --output ${results.output}`,
    results?.errors === undefined ? "" : ` --errors ${results.errors}`,
  ].join("");
  const target = files === "" ? " --output output.jsonl --errors errors.jsonl" : files;
  return `follow it again with \`fusillade watch ${batchId}${files}\`, or download its results when it is done with \`fusillade results ${batchId}${target}\``;
}

/**
 * Watches `batchId` until it is terminal; returns the final batch. Throws
 * CliError on errors that reconnecting does not cure (or that outlast
 * reconnectForMs), and (exit 130) when `signal` aborts.
 */
export async function followBatch(
  conn: Connection,
  batchId: string,
  opts: ProgressOptions,
): Promise<Batch> {
  const diagnosis = new Diagnosis();
  const display = new Display(opts, diagnosis);
  const interval = opts.tty ? TTY_INTERVAL_MS : Math.min(opts.plainEveryMs, 1_000);
  const reconnectFor = opts.reconnectForMs ?? RECONNECT_FOR_MS;
  const stopDiagnosis = new AbortController();
  const signal = AbortSignal.any([opts.signal, stopDiagnosis.signal]);
  const diagnosing = (async () => {
    while (!signal.aborted) {
      await diagnosis.refresh(conn, batchId, signal);
      if (!signal.aborted) display.redraw();
      await sleep(BREAKDOWN_EVERY_MS, undefined, { signal }).catch(() => undefined);
    }
  })();
  let lostSince: number | undefined;
  let failures = 0;
  let connected = false;
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
          if (lostSince !== undefined) display.note(`reconnected to ${conn.server}`);
          lostSince = undefined;
          failures = 0;
          connected = true;
          const b = m.batch!;
          const final = isTerminal(b.state);
          // The last line is the final breakdown, not the one asked for up to
          // BREAKDOWN_EVERY_MS ago (it showed errors still retrying, or too few).
          if (final) await diagnosis.refresh(conn, batchId, opts.signal);
          display.update(b, final);
          if (final) return b;
        }
        // The stream ended without a terminal state (server restarting): watch again.
      } catch (e) {
        if (opts.signal.aborted) break;
        // A dropped HTTP/2 connection ends the stream as CANCELED (RST_STREAM CANCEL)
        // though nobody here cancelled it.
        const dropped = e instanceof ConnectError && e.code === Code.Canceled;
        if (
          !(isTransient(e) || dropped) ||
          (!connected && failures + 1 >= FIRST_CONNECT_ATTEMPTS)
        ) {
          throw describeRpcError(e, conn.server);
        }
        const now = Date.now();
        if (lostSince === undefined) {
          lostSince = now;
          display.note(
            `lost the connection to ${conn.server} (${(e as ConnectError).rawMessage}); reconnecting…`,
          );
        } else if (now - lostSince >= reconnectFor) {
          throw new CliError(
            `gave up reconnecting to ${conn.server} after ${Math.round((now - lostSince) / 1000)}s; batch ${batchId} keeps running on the server: ${reattachHint(batchId, opts.resultsHint)}`,
            1,
            { cause: e },
          );
        }
        failures++;
        const wait = Math.min(RECONNECT_MAX_MS, RECONNECT_MIN_MS * 2 ** (failures - 1));
        await sleep(wait, undefined, { signal: opts.signal }).catch(() => undefined);
      }
      if (opts.signal.aborted) break;
    }
  } finally {
    stopDiagnosis.abort();
    await diagnosing;
    display.stop();
  }
  throw new CliError(
    `stopped watching; batch ${batchId} keeps running: ${reattachHint(batchId, opts.resultsHint)}`,
    130,
  );
}
