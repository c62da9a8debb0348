/**
 * The executor's attempt lifecycle: start a buffered claim while its model has
 * a free slot (and its gate admits it), send it upstream, and when it ends
 * start the next one in the same tick (no round trip between them), then hand
 * the outcome to the settler for reporting.
 *
 * Per model it owns one wake-up timer: a hold's end, or the moment the
 * model's gate (./model-gate.ts) asked to be asked again, whichever is first.
 * It also owns the endpoints' error streaks and the counts of completions and
 * failures.
 *
 * Order of the checks before an attempt starts: not paused (stopping, or
 * reports failing) → a slot free under the grant's fence and no 429 hold
 * (`ModelSlots.canStart`) → the gate admits it.
 */
import { performance } from "node:perf_hooks";
import type { AttemptOutcome } from "../domain/outcome.js";
import type { HttpExecutor } from "../http/executor.js";
import { traceHeaders } from "../http/trace-context.js";
import { ErrorStreaks } from "./error-streaks.js";
import type { Report } from "./lease-client.js";
import type { HeldLease } from "./lease-table.js";
import type { ModelSlots } from "./model-slots.js";
import type { Shared } from "./parts.js";
import type { Settler } from "./settler.js";

/** What the runner asks of the dispatcher around it. */
export interface AttemptHost {
  /** True while nothing new may start (stopping, or reports failing). */
  paused(): boolean;
  /** An attempt ended and its report is queued (the sync loop may want a call now). */
  afterAttempt(): void;
}

export class AttemptRunner {
  readonly counts = { completions: 0, failures: 0 };
  readonly #wakes = new Map<string, { at: number; timer: NodeJS.Timeout }>();
  readonly #errorStreaks: ErrorStreaks;

  constructor(
    private readonly shared: Shared,
    private readonly settler: Pick<Settler, "settle">,
    private readonly executor: Pick<HttpExecutor, "execute">,
    private readonly host: AttemptHost,
  ) {
    this.#errorStreaks = new ErrorStreaks(shared.log);
  }

  /** Starts buffered claims of `m` while a slot is free and its gate admits them. */
  pump(m: ModelSlots): void {
    if (this.host.paused()) return;
    const now = performance.now();
    while (m.queue.length > 0 && m.canStart(now)) {
      const entry = m.queue[0]!;
      // Its fence's timer may not have fired yet on a busy event loop: a claim past its
      // deadline may have been handed to another dispatcher already. It goes back unsent.
      if (entry.gaveUp !== undefined || this.shared.table.fenceIfDue(entry, now)) {
        if (m.queue[0] === entry) m.queue.shift();
        continue;
      }
      const waitMs = m.gate.admit(entry.lease, m.running, now);
      if (waitMs > 0) {
        // Infinity: the next attempt's end pumps again.
        if (Number.isFinite(waitMs)) this.#wakeAt(m, now + waitMs);
        return;
      }
      m.queue.shift();
      this.shared.table.start(entry);
      m.running++;
      void this.#run(entry, m);
    }
  }

  /** Every model may start more now (grants changed, or reports got through). */
  pumpAll(): void {
    for (const m of this.shared.book.all()) this.pump(m);
  }

  /**
   * Nothing of `m` starts for `ms` (a hold the control plane sent: the model's meter read
   * empty fleet-wide); it restarts on its own when the hold ends.
   */
  hold(m: ModelSlots, ms: number): void {
    m.heldUntil = Math.max(m.heldUntil, performance.now() + ms);
    this.#wakeAt(m, m.heldUntil);
  }

  /** Cancels the wake-up timers (at shutdown). */
  stop(): void {
    for (const w of this.#wakes.values()) clearTimeout(w.timer);
    this.#wakes.clear();
  }

  /** Pumps `m` at `at` (or earlier, if a wake-up is due earlier already). */
  #wakeAt(m: ModelSlots, at: number): void {
    const pending = this.#wakes.get(m.model);
    if (pending !== undefined && pending.at <= at) return;
    clearTimeout(pending?.timer);
    const timer = setTimeout(
      () => {
        this.#wakes.delete(m.model);
        // Timers may fire a little before performance.now() reaches the
        // moment; and an earlier wake-up (the gate's) may come mid-hold.
        if (performance.now() < m.heldUntil) this.#wakeAt(m, m.heldUntil);
        else this.pump(m);
      },
      Math.max(0, at - performance.now()) + 1,
    );
    timer.unref();
    this.#wakes.set(m.model, { at, timer });
  }

  /** Runs one claim: send; the slot starts the next buffered claim at once; then report. */
  async #run(entry: HeldLease, m: ModelSlots): Promise<void> {
    const started = performance.now();
    const outcome = await this.#execute(entry);
    m.running--;
    const elapsedMs = performance.now() - started;
    this.shared.metrics.attempt(m.model, outcome, elapsedMs / 1000);
    // Our own abort: no outcome, the request goes back (or ends with its batch).
    // A response that made it in before the abort is still reported.
    const aborted = entry.gaveUp !== undefined && outcome.kind === "failure";
    m.gate.done(entry.lease, { outcome, aborted, elapsedMs });
    if (entry.gaveUp === undefined)
      this.#errorStreaks.note(entry.lease.request.url, m.model, outcome);
    // A 429 holds nothing here by itself: the model's gate (its pacer) cuts the concurrency,
    // and holds the model only when the upstream's headers read its meter empty; the
    // request that got it waits its own Retry-After (the control plane's not_before).
    let report: Report;
    if (aborted) {
      const gaveUp = entry.gaveUp!;
      report = {
        ref: entry.ref,
        kind: "release",
        reason: `${gaveUp.reason}: ${gaveUp.detail}`,
        unsent: false,
      };
    } else {
      report = { ref: entry.ref, kind: "outcome", outcome };
      if (outcome.kind === "completion") this.counts.completions++;
      else this.counts.failures++;
    }
    this.pump(m);
    // After the report is queued: its call, when it goes at once, takes the
    // buffer's room, and then no Sync is needed for it.
    const settled = this.settler.settle(entry, report);
    this.host.afterAttempt();
    await settled;
  }

  async #execute(entry: HeldLease): Promise<AttemptOutcome> {
    try {
      // A new span per attempt in the request's trace (docs/observability.md).
      const request = entry.lease.request;
      const headers = [
        ...request.headers,
        ...traceHeaders(entry.ref.requestId, entry.lease.batchId),
      ];
      return await this.executor.execute({ ...request, headers }, entry.signal);
    } catch (e) {
      // execute() does not throw; should it ever, give the request back.
      this.shared.log.error({ err: e, requestId: entry.ref.requestId }, "executor threw");
      this.shared.table.giveUp(entry, "shutdown", "executor error");
      return {
        kind: "failure",
        statusCode: 0,
        code: "aborted",
        message: String(e),
        retriable: false,
        bodyExcerpt: new Uint8Array(0),
        headers: {},
      };
    }
  }
}
