/**
 * Reports outcomes to the control plane in batches, and refills the claim
 * buffers: each call asks, per model, for the room its buffer has when the
 * call is sent (`refill`), and hands the claims in the answer to `onClaims`.
 *
 * An idle reporter sends at once; while a call is in flight, new outcomes
 * wait for a full batch or `lingerMs`, then a second call goes (at most
 * {@link MAX_CALLS} at once). Group commit, in effect.
 *
 * Modes: healthy ⇄ failing. A call that fails transiently (control plane
 * unreachable, deadline) puts its reports back at the front of the queue and
 * the reporter turns failing: one call at a time, after a backoff, until one
 * succeeds. The dispatcher takes no new work while failing. A report whose
 * claim has expired meanwhile can only be LOST: it is dropped (its request
 * runs again elsewhere), so retries end with the lease.
 *
 * A call the control plane answers with an error that would likely come back the
 * same (RESOURCE_EXHAUSTED for a message too large, INVALID_ARGUMENT, an
 * INTERNAL statement failure) is split: each of its reports goes alone, so
 * one bad outcome never holds up the others. A report rejected alone
 * {@link MAX_REJECTIONS} times is replaced by a failure without body or
 * headers (`report_rejected`, not retried: the same response would be
 * rejected again), which records the request as failed with the reason; if
 * that is rejected as often, it is dropped and its lease expires.
 */
import { performance } from "node:perf_hooks";
import type { Logger } from "../logger.js";
import { Backoff, Wakeup } from "./backoff.js";
import {
  ControlPlaneError,
  type DispatchLease,
  type Disposition,
  type LeaseClient,
  type ModelHold,
  type Report,
  refKey,
  reportBytes,
} from "./lease-client.js";

/** Claims wanted for one model. */
export interface Refill {
  model: string;
  room: number;
}

/** How the reporter refills buffers; the default asks for nothing. */
export interface RefillHooks {
  /** The room per model now; called as a call is sent (the asker books it as requested). */
  refill(): Refill[];
  /**
   * A call got through: its claims and holds, with what was asked (`sentAt`
   * is the call's send time). Called on every answer, with or without claims.
   */
  onClaims(claims: DispatchLease[], holds: ModelHold[], asked: Refill[], sentAt: number): void;
  /** The call failed: nothing of `asked` will come. */
  onRefillFailed(asked: Refill[]): void;
  /** The reporter left failing mode without a call (nothing left to report): start buffered work. */
  onHealthy?(): void;
  /** A call carrying `size` reports is sent (metrics). */
  onCall?(size: number): void;
}

const NO_REFILL: RefillHooks = {
  refill: () => [],
  onClaims: () => undefined,
  onRefillFailed: () => undefined,
};

/** Report calls in flight at once while healthy. */
export const MAX_CALLS = 4;

/** Times a report is rejected on its own before it is replaced by a `report_rejected` failure. */
export const MAX_REJECTIONS = 2;

interface Queued {
  report: Report;
  /** undefined: dropped without an answer (rejected, or the reporter stopped). */
  resolve: (d: Disposition | undefined) => void;
  /** `performance.now()` past which its claim has expired (undefined: unknown). */
  expiresAt?: () => number;
  /** Sent in a call of its own (a call it was in was rejected). */
  alone: boolean;
  rejections: number;
  /** It is the `report_rejected` stand-in of a rejected report. */
  substitute: boolean;
}

export interface ReporterOptions {
  batchSize: number;
  maxBytes: number;
  lingerMs: number;
  rpcTimeoutMs: number;
}

/** Batches reports; see the file header. */
export class Reporter {
  #queue: Queued[] = [];
  #calls = 0;
  /** Reports in the calls in flight. */
  #inFlight = 0;
  #failing = false;
  #retryTimer: NodeJS.Timeout | undefined;
  #lingerTimer: NodeJS.Timeout | undefined;
  #stopped = false;
  readonly #backoff = new Backoff();
  readonly #changed = new Wakeup();

  constructor(
    private readonly client: LeaseClient,
    private readonly options: ReporterOptions,
    private readonly log: Logger,
    private readonly hooks: RefillHooks = NO_REFILL,
  ) {}

  /**
   * Queues a report; resolves with the control plane's answer. `expiresAt`:
   * when its claim expires unless renewed (reports are dropped past it).
   */
  submit(report: Report, expiresAt?: () => number): Promise<Disposition | undefined> {
    if (this.#stopped) return Promise.resolve(undefined);
    return new Promise((resolve) => {
      this.#queue.push({
        report,
        resolve,
        expiresAt,
        alone: false,
        rejections: 0,
        substitute: false,
      });
      this.#pump();
    });
  }

  /** True while reports cannot be delivered. */
  get failing(): boolean {
    return this.#failing;
  }

  /** Reports queued or in flight. */
  get pending(): number {
    return this.#queue.length + this.#inFlight;
  }

  /** Resolves at the next change of state (a call ended, a report was queued or dropped). */
  changed(signal?: AbortSignal, timeoutMs?: number): Promise<void> {
    return this.#changed.wait(signal, timeoutMs);
  }

  /** Stops sending; queued reports resolve `undefined`. Calls in flight finish on their own. */
  stop(): void {
    this.#stopped = true;
    clearTimeout(this.#retryTimer);
    clearTimeout(this.#lingerTimer);
    for (const q of this.#queue.splice(0)) q.resolve(undefined);
    this.#changed.notify();
  }

  #pump(): void {
    if (this.#stopped || this.#queue.length === 0) return;
    if (this.#failing) {
      // One probe at a time, on the backoff's schedule.
      if (this.#calls === 0 && this.#retryTimer === undefined) this.#send();
      return;
    }
    if (this.#calls >= MAX_CALLS) return;
    if (this.#calls === 0 || this.#queue.length >= this.options.batchSize) {
      this.#send();
      return;
    }
    this.#lingerTimer ??= setTimeout(() => {
      this.#lingerTimer = undefined;
      if (!this.#failing && this.#calls < MAX_CALLS) this.#send();
    }, this.options.lingerMs);
  }

  #take(): Queued[] {
    if (this.#queue[0]?.alone) return this.#queue.splice(0, 1);
    let bytes = 0;
    let n = 0;
    while (n < this.#queue.length && n < this.options.batchSize && !this.#queue[n]!.alone) {
      bytes += reportBytes(this.#queue[n]!.report);
      if (n > 0 && bytes > this.options.maxBytes) break;
      n++;
    }
    return this.#queue.splice(0, n);
  }

  #send(): void {
    clearTimeout(this.#lingerTimer);
    this.#lingerTimer = undefined;
    const batch = this.#take();
    if (batch.length === 0) return;
    this.#calls++;
    this.#inFlight += batch.length;
    void this.#call(batch);
  }

  async #call(batch: Queued[]): Promise<void> {
    let answer: Awaited<ReturnType<LeaseClient["report"]>> | undefined;
    let error: unknown;
    // No refill while stopping or failing: nothing new would be started.
    const asked = this.#stopped || this.#failing ? [] : this.hooks.refill();
    const sentAt = performance.now();
    this.hooks.onCall?.(batch.length);
    try {
      answer = await this.client.report(
        batch.map((q) => q.report),
        asked,
        this.options.rpcTimeoutMs,
      );
    } catch (e) {
      error = e;
      this.hooks.onRefillFailed(asked);
    }
    // Book-keeping before anyone hears back, so that a report submitted in
    // reaction to an answer sees this call as finished.
    this.#calls--;
    this.#inFlight -= batch.length;
    if (answer !== undefined) {
      if (this.#failing) this.log.info("reports are getting through again");
      this.#failing = false;
      this.#backoff.reset();
      // After `failing` is cleared: the hook starts buffered work, which a
      // failing reporter holds back.
      this.hooks.onClaims(answer.claims, answer.holds, asked, sentAt);
      for (const q of batch) q.resolve(answer.dispositions.get(refKey(q.report.ref)) ?? "lost");
    } else {
      this.#failed(batch, error);
    }
    this.#changed.notify();
    this.#pump();
  }

  #failed(batch: Queued[], e: unknown): void {
    if (this.#stopped) {
      for (const q of batch) q.resolve(undefined);
      return;
    }
    if (e instanceof ControlPlaneError && e.rejected) {
      this.#rejected(batch, e);
      return;
    }
    const retriable = !(e instanceof ControlPlaneError) || e.retriable;
    if (!retriable) {
      this.log.error(
        { err: e, reports: batch.length },
        "the control plane rejected reports; dropping them (their leases will expire)",
      );
      for (const q of batch) q.resolve(undefined);
      return;
    }
    this.#queue.unshift(...batch);
    this.#dropExpired();
    if (this.#queue.length === 0 && this.#calls === 0) {
      // Nothing left to deliver: failing mode would hold back buffered work
      // with no report to clear it (seen after a control-plane kill: claims
      // renewed by every Sync and never run).
      this.#leaveFailing();
      return;
    }
    const wait = this.#backoff.next();
    if (!this.#failing || this.#backoff.failures % 10 === 1) {
      this.log.warn(
        { err: e, queued: this.#queue.length, retryInMs: wait },
        "could not report outcomes; retrying",
      );
    }
    this.#failing = true;
    this.#retryAfter(wait);
  }

  /** The control plane answered with an error the same call would get again. */
  #rejected(batch: Queued[], e: ControlPlaneError): void {
    // It answered: whatever made us fail before is over.
    this.#leaveFailing();
    if (batch.length > 1) {
      this.log.warn(
        { err: e, reports: batch.length },
        "the control plane rejected a report call; sending its reports one by one",
      );
      for (const q of batch) q.alone = true;
      this.#queue.unshift(...batch);
      return; // the caller pumps: no backoff, the control plane is answering
    }
    const q = batch[0]!;
    q.alone = true;
    q.rejections++;
    if (q.rejections < MAX_REJECTIONS) {
      this.#queue.push(q); // behind the others: they are not held up by it
      return;
    }
    const r = q.report;
    if (r.kind === "outcome" && !q.substitute) {
      this.log.error(
        { err: e, requestId: r.ref.requestId, status: r.outcome.statusCode },
        "the control plane cannot record this outcome; reporting the request as failed instead",
      );
      const stand: Queued = {
        ...q,
        rejections: 0,
        substitute: true,
        report: {
          ref: r.ref,
          kind: "outcome",
          outcome: {
            kind: "failure",
            statusCode: r.outcome.statusCode,
            code: "report_rejected",
            message: `the control plane could not record the outcome (${r.outcome.kind === "completion" ? `a ${r.outcome.statusCode} response` : r.outcome.code}): ${e.message}`,
            retriable: false,
            bodyExcerpt: new Uint8Array(),
            headers: {},
          },
        },
      };
      this.#queue.unshift(stand);
      return;
    }
    this.log.error(
      { err: e, requestId: r.ref.requestId },
      "the control plane rejected a report again; dropping it (its lease will expire)",
    );
    q.resolve(undefined);
  }

  /** Resolves queued reports whose claims have expired: the answer could only be LOST. */
  #dropExpired(): void {
    const now = performance.now();
    const keep: Queued[] = [];
    let dropped = 0;
    for (const q of this.#queue) {
      if (q.expiresAt !== undefined && q.expiresAt() < now) {
        dropped++;
        q.resolve("lost");
      } else keep.push(q);
    }
    if (dropped === 0) return;
    this.#queue = keep;
    this.log.warn(
      { dropped },
      "dropped reports whose claims expired before the control plane could be reached",
    );
  }

  #retryAfter(wait: number): void {
    clearTimeout(this.#retryTimer);
    this.#retryTimer = setTimeout(() => {
      this.#retryTimer = undefined;
      if (this.#failing) {
        this.#dropExpired();
        if (this.#queue.length === 0 && this.#calls === 0) {
          this.#leaveFailing();
          return;
        }
      }
      this.#changed.notify();
      this.#pump();
    }, wait);
  }

  /** Back to healthy without a call: nothing is left to report. Buffered work may start. */
  #leaveFailing(): void {
    const was = this.#failing;
    this.#failing = false;
    this.#backoff.reset();
    clearTimeout(this.#retryTimer);
    this.#retryTimer = undefined;
    this.#changed.notify();
    if (was) this.hooks.onHealthy?.();
  }
}
