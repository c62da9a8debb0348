/**
 * What the CLI prints: plain JSON views of API messages for --json (snake
 * case like the proto, enums as lower-case names, int64 as numbers,
 * timestamps as ISO 8601 or null), and the human one-liners.
 */
import { type Timestamp, timestampDate } from "@bufbuild/protobuf/wkt";
import { pacingText } from "../../domain/pacing-text.js";
import {
  type Batch,
  BatchState,
  type File,
  type ModelLimit,
  type ModelPacing,
  type ModelShare,
  type RequestCounts,
} from "../../gen/fusillade/v1/resources_pb.js";

const iso = (t: Timestamp | undefined): string | null =>
  t ? timestampDate(t).toISOString() : null;
const ms = (d: { seconds: bigint; nanos: number } | undefined): number | null =>
  d ? Number(d.seconds) * 1000 + Math.round(d.nanos / 1e6) : null;

/** A batch state as its short name ("in_progress", "completed", …). */
export function stateName(s: BatchState): string {
  return (BatchState[s] ?? "unspecified").toLowerCase();
}

/** Whether no request of the batch will change again. */
export function isTerminal(s: BatchState): boolean {
  return s === BatchState.COMPLETED || s === BatchState.CANCELLED || s === BatchState.EXPIRED;
}

/** Counts with plain numbers. */
export function countsView(c: RequestCounts | undefined) {
  return {
    total: Number(c?.total ?? 0n),
    pending: Number(c?.pending ?? 0n),
    in_progress: Number(c?.inProgress ?? 0n),
    completed: Number(c?.completed ?? 0n),
    failed: Number(c?.failed ?? 0n),
    canceled: Number(c?.canceled ?? 0n),
    expired: Number(c?.expired ?? 0n),
  };
}
export type CountsView = ReturnType<typeof countsView>;

/** Requests that reached a terminal state. */
export function doneCount(c: CountsView): number {
  return c.completed + c.failed + c.canceled + c.expired;
}

/** A batch for --json. */
export function batchView(b: Batch) {
  return {
    id: b.id,
    file_id: b.fileId,
    state: stateName(b.state),
    openai_status: b.openaiStatus,
    completion_window: b.completionWindow,
    metadata: b.metadata,
    counts: countsView(b.counts),
    priority: b.priority,
    shares: b.shares.map(shareView),
    retry_policy: {
      max_retries: b.retryPolicy?.maxRetries ?? null,
      initial_backoff_ms: ms(b.retryPolicy?.initialBackoff),
      max_backoff_ms: ms(b.retryPolicy?.maxBackoff),
    },
    create_time: iso(b.createTime),
    expire_time: iso(b.expireTime),
    complete_time: iso(b.completeTime),
    cancelling_time: iso(b.cancellingTime),
    cancel_time: iso(b.cancelTime),
    expired_time: iso(b.expiredTime),
    finish_time: iso(b.finishTime),
    // When retention deletes it; null while it runs or when it is kept.
    delete_time: iso(b.deleteTime),
  };
}

/** A running batch's share of one model, for --json (docs/fair-share.md). */
export function shareView(s: ModelShare) {
  return {
    model: s.model,
    running: s.running,
    model_running: s.modelRunning,
    limit: s.limit,
    in_flight: s.inFlight,
    model_in_flight: s.modelInFlight,
    active_batches: s.activeBatches,
    pacing: pacingView(s.pacing),
  };
}
export type ShareView = ReturnType<typeof shareView>;

/**
 * "gpt-x 8/10 running (this batch 5, 2 batches)": the model's requests
 * running against its limit, this batch's part of them and how many batches
 * share the model. Claims buffered at a dispatcher are queued, not running
 * (they are in the counts' "queued"). The same text on `status` and `watch`.
 * A model paced or backing off says why it runs below its limit:
 * "gpt-x 3/500 running (1 batch) · paced: 2,950/min, 0 % 429, 3 at once".
 */
export function shareText(s: ShareView): string {
  const batches =
    s.active_batches <= 1 ? "1 batch" : `this batch ${s.running}, ${s.active_batches} batches`;
  const why = s.pacing && s.pacing.mode !== "free" ? ` · ${pacingLine(s.pacing)}` : "";
  return `${s.model} ${s.model_running}/${s.limit} running (${batches})${why}`;
}

/**
 * Requests of a batch running now, and those waiting to run (pending, and
 * claims buffered at a dispatcher): from its shares while it runs; without
 * shares (an older server, a finished batch), its claims count as running.
 */
export function runView(c: CountsView, shares: ShareView[]): { running: number; queued: number } {
  const running =
    shares.length === 0
      ? c.in_progress
      : Math.min(
          c.in_progress,
          shares.reduce((n, s) => n + s.running, 0),
        );
  return { running, queued: c.pending + c.in_progress - running };
}
export type RunView = ReturnType<typeof runView>;

/** A file for --json. */
export function fileView(f: File) {
  return {
    id: f.id,
    filename: f.filename,
    template_count: Number(f.templateCount),
    size_bytes: Number(f.sizeBytes),
    models: f.models,
    create_time: iso(f.createTime),
  };
}

/** A model limit for --json. */
export function limitView(l: ModelLimit) {
  return {
    model: l.model,
    limit: l.limit,
    is_default: l.isDefault,
    running: l.running,
    queued: Number(l.queued),
    in_flight: l.inFlight,
    slots_granted: l.slotsGranted,
    pending: Number(l.pending),
    hold_until_time: iso(l.holdUntilTime),
    rpm: l.rpm ?? null,
    tpm: l.tpm ?? null,
    pacing: pacingView(l.pacing),
  };
}

/** How the fleet paces a model, for --json; null when no dispatcher has said. */
export function pacingView(p: ModelPacing | undefined) {
  return p
    ? {
        mode: p.mode,
        concurrency: p.concurrency,
        calls_last_minute: p.callsLastMinute,
        throttled_last_minute: p.throttledLastMinute,
        window_seconds: p.windowSeconds,
        running: p.running,
        dispatchers: p.dispatchers,
      }
    : null;
}

/**
 * Why a model runs as it does (docs/pacing.md): "paced: 2,950/min, 0 % 429, 3 at once",
 * "backing off: 1,180/min, 12 % 429, 8 at once", "held (meter empty)"; "" before any call.
 */
export function pacingLine(p: ReturnType<typeof pacingView>): string {
  if (p === null) return "";
  return pacingText({
    mode: p.mode,
    concurrency: p.concurrency,
    callsLastMinute: p.calls_last_minute,
    throttledLastMinute: p.throttled_last_minute,
    windowSeconds: p.window_seconds,
  });
}

/** "500 total: 490 completed, 2 failed, 4 running, 4 queued" — only the non-zero states after the total. */
export function countsLine(c: CountsView, run: RunView): string {
  const parts: string[] = [];
  const add = (n: number, label: string) => {
    if (n > 0) parts.push(`${n} ${label}`);
  };
  add(c.completed, "completed");
  add(c.failed, "failed");
  add(c.expired, "expired");
  add(c.canceled, "cancelled");
  add(run.running, "running");
  add(run.queued, "queued");
  return `${c.total} total${parts.length > 0 ? `: ${parts.join(", ")}` : ""}`;
}

/** A batch's counts line, its claims split by its shares (runView). */
export function batchCountsLine(b: Batch): string {
  const c = countsView(b.counts);
  return countsLine(c, runView(c, b.shares.map(shareView)));
}

/** A human description of a batch (the `status` output). */
export function batchText(b: Batch): string {
  const v = batchView(b);
  const rows: Array<[string, string | null]> = [
    ["state", `${v.state} (OpenAI: ${v.openai_status})`],
    ["file", v.file_id || "(deleted)"],
    ["requests", countsLine(v.counts, runView(v.counts, v.shares))],
    ["priority", v.priority === 0 ? null : String(v.priority)],
    // One line per model while the batch runs.
    ["shares", v.shares.length === 0 ? null : v.shares.map(shareText).join(`\n${" ".repeat(13)}`)],
    ["created", v.create_time],
    ["expires", v.expire_time],
    ["cancelling", v.cancelling_time],
    ["finished", v.finish_time],
    ["deleted at", v.delete_time],
    [
      "metadata",
      Object.keys(v.metadata).length === 0
        ? null
        : Object.entries(v.metadata)
            .map(([k, val]) => `${k}=${val}`)
            .join(" "),
    ],
  ];
  const lines = rows.filter(([, val]) => val !== null).map(([k, val]) => `  ${k.padEnd(11)}${val}`);
  return `batch ${v.id}\n${lines.join("\n")}\n`;
}

/** Left-aligned columns, for lists. */
export function table(header: string[], rows: string[][]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? "").length)));
  const fmt = (r: string[]) =>
    r
      .map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i]!)))
      .join("  ")
      .trimEnd();
  return `${[fmt(header), ...rows.map(fmt)].join("\n")}\n`;
}

/** Bytes as "12.3 MB". */
export function formatBytes(n: number): string {
  if (n < 1000) return `${n} B`;
  const units = ["kB", "MB", "GB", "TB"];
  let v = n;
  let i = -1;
  do {
    v /= 1000;
    i++;
  } while (v >= 1000 && i < units.length - 1);
  return `${v.toFixed(v < 10 ? 1 : 0)} ${units[i]}`;
}

/** "1 request", "2 requests". */
export function plural(n: number | bigint, word: string): string {
  return `${n} ${word}${n === 1 || n === 1n ? "" : "s"}`;
}

/** Seconds as "1h02m", "3m05s", "42s". */
export function formatDuration(seconds: number): string {
  if (!Number.isFinite(seconds) || seconds < 0) return "?";
  const s = Math.round(seconds);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, "0")}s`;
  return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, "0")}m`;
}

/** Writes `text` to stdout as one or more whole lines. */
export function print(text: string): void {
  process.stdout.write(text.endsWith("\n") ? text : `${text}\n`);
}

/** Writes `value` as indented JSON (--json output). */
export function printJson(value: unknown): void {
  print(JSON.stringify(value, null, 2));
}
