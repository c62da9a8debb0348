/**
 * Stand-ins for the unit tests of the dispatcher's parts, one at a time (not
 * a test file itself). The parts themselves are real (the slot book, the
 * lease table, the settler); what stands in is what lies outside a part:
 *
 * - {@link ScriptedExecutor}: each attempt waits until the test answers it
 *   (or it is aborted, answered as the HTTP executor answers an abort);
 * - {@link RecordingSink}: the reporter's `submit`, recording each report and
 *   answering it when the test says (or at once);
 * - {@link RecordingGate}: a model gate that logs every question and outcome
 *   and answers `admit` with a function the test sets.
 */
import { EventEmitter, once } from "node:events";
import { performance } from "node:perf_hooks";
import type { DispatchLease, Disposition, Report } from "../../src/dispatcher/lease-client.js";
import { LeaseTable } from "../../src/dispatcher/lease-table.js";
import type { AttemptResult, ModelGate } from "../../src/dispatcher/model-gate.js";
import { type ModelSlots, SlotBook } from "../../src/dispatcher/model-slots.js";
import type { Shared } from "../../src/dispatcher/parts.js";
import type { ReportSink } from "../../src/dispatcher/settler.js";
import type { AttemptOutcome } from "../../src/domain/outcome.js";
import type { OutboundRequest } from "../../src/http/executor.js";
import { makeLogger } from "../../src/logger.js";
import { DispatcherMetrics } from "../../src/metrics/dispatcher-metrics.js";

/** Long enough that no fence fires during a test unless the test sets a short one. */
export const NO_FENCE_MS = 600_000;

let nextId = 0;

/** A claim of `model` with a ttl (default: never fenced in a test). */
export function claim(model: string, ttlMs = NO_FENCE_MS): DispatchLease {
  const id = `r${++nextId}`;
  return {
    ref: { requestId: id, token: BigInt(nextId) },
    batchId: "b",
    customId: id,
    model,
    attempt: 1,
    request: {
      method: "POST",
      url: "http://127.0.0.1:9/v1/x",
      headers: [["x-fusillade-request-id", id]],
      body: "{}",
    },
    ttlMs,
  };
}

/** A book and table of the given fence margin, with silent logs and fresh metrics. */
export function shared(
  options: { marginMs?: number; onFenced?: ConstructorParameters<typeof LeaseTable>[1] } = {},
  book = new SlotBook(100, 0.5),
): Shared {
  const table = new LeaseTable(
    () => options.marginMs ?? 0,
    (e) => options.onFenced?.(e),
  );
  return { book, table, metrics: new DispatcherMetrics(), log: makeLogger("silent") };
}

/** Gives `model` a grant of `slots` in `s`'s book, fenced far in the future. */
export function granted(s: Shared, model: string, slots: number): ModelSlots {
  const m = s.book.get(model);
  m.token = 1n;
  m.slots = slots;
  m.target = slots;
  m.fenceAt = performance.now() + NO_FENCE_MS;
  return m;
}

/** Holds `claims` in the table and buffers them in their model's queue. */
export function buffer(s: Shared, ...claims: DispatchLease[]) {
  return claims.map((c) => {
    const e = s.table.add(c, performance.now());
    s.book.get(c.model).queue.push(e);
    return e;
  });
}

export const completion = (): AttemptOutcome => ({
  kind: "completion",
  statusCode: 200,
  headers: {},
  body: new Uint8Array(0),
});

export const failure = (
  statusCode: number,
  extra: { retryAfterMs?: number; headers?: Record<string, string> } = {},
): AttemptOutcome => ({
  kind: "failure",
  statusCode,
  code: statusCode === 0 ? "network_error" : "http_error",
  message: `status ${statusCode}`,
  retriable: true,
  bodyExcerpt: new Uint8Array(0),
  headers: extra.headers ?? {},
  ...(extra.retryAfterMs === undefined ? {} : { retryAfterMs: extra.retryAfterMs }),
});

/** How the HTTP executor answers an attempt aborted through its signal. */
export const abortedOutcome = (): AttemptOutcome => ({
  kind: "failure",
  statusCode: 0,
  code: "aborted",
  message: "aborted",
  retriable: true,
  bodyExcerpt: new Uint8Array(0),
  headers: {},
});

interface Call {
  req: OutboundRequest;
  /** `performance.now()` when the attempt started. */
  at: number;
  signal: AbortSignal | undefined;
  answer(o: AttemptOutcome): void;
}

/** An executor whose attempts wait for the test; see the file header. */
export class ScriptedExecutor extends EventEmitter {
  readonly calls: Call[] = [];

  execute(req: OutboundRequest, signal?: AbortSignal): Promise<AttemptOutcome> {
    return new Promise((resolve) => {
      signal?.addEventListener("abort", () => resolve(abortedOutcome()));
      this.calls.push({ req, at: performance.now(), signal, answer: resolve });
      this.emit("call");
    });
  }

  /** The attempts started so far, by request id. */
  get started(): string[] {
    return this.calls.map((c) => requestIdOf(c.req));
  }

  /** Answers the attempt of `requestId` (the first one not answered yet). */
  answer(requestId: string, o: AttemptOutcome): void {
    const i = this.calls.findIndex((c) => requestIdOf(c.req) === requestId);
    if (i < 0) throw new Error(`${requestId} never started`);
    this.calls[i]!.answer(o);
  }

  /** Resolves once `n` attempts have started. */
  async until(n: number): Promise<void> {
    while (this.calls.length < n) await once(this, "call");
  }
}

/** The request id of a request the runner sent. */
function requestIdOf(req: OutboundRequest): string {
  return req.headers.find(([k]) => k === "x-fusillade-request-id")?.[1] ?? "";
}

/** The reporter's submit; see the file header. */
export class RecordingSink extends EventEmitter implements ReportSink {
  readonly submitted: Array<{
    report: Report;
    expiresAt: (() => number) | undefined;
    answer(d: Disposition | undefined): void;
  }> = [];
  /** Answer every report at once with this; undefined: wait for the test. */
  auto: Disposition | undefined = "recorded";

  submit(report: Report, expiresAt?: () => number): Promise<Disposition | undefined> {
    return new Promise((resolve) => {
      this.submitted.push({ report, expiresAt, answer: resolve });
      if (this.auto !== undefined) resolve(this.auto);
      this.emit("submit");
    });
  }

  /** Resolves once `n` reports were submitted. */
  async until(n: number): Promise<void> {
    while (this.submitted.length < n) await once(this, "submit");
  }
}

/** A gate that records; see the file header. */
export class RecordingGate implements ModelGate {
  readonly asked: Array<{ requestId: string; running: number }> = [];
  readonly ended: Array<{ requestId: string; result: AttemptResult }> = [];
  answer: (running: number, now: number) => number = () => 0;

  admit(lease: DispatchLease, running: number, now: number): number {
    this.asked.push({ requestId: lease.ref.requestId, running });
    return this.answer(running, now);
  }

  done(lease: DispatchLease, result: AttemptResult): void {
    this.ended.push({ requestId: lease.ref.requestId, result });
  }
}
