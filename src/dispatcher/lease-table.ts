/**
 * The claims a dispatcher holds, each with its abort switch and its
 * self-fencing deadline (see ./fencing.ts). Times are `performance.now()`
 * milliseconds: monotonic, unaffected by wall-clock steps.
 *
 * Modes of a held claim:
 * - queued: claimed, waiting in its model's buffer for a slot; a timer fires
 *   at its deadline and gives it up ("fenced": it is then never started);
 * - running: its request is being sent; the same timer gives it up (aborts
 *   it) unless a renewal moved the deadline first;
 * - reporting: the attempt is over (finished, or given up and aborted); its
 *   report is queued or in flight. Still renewed (the lease must outlive the
 *   report), never fenced (nothing runs upstream any more);
 * - removed: the control plane answered the report (or we stopped trying).
 * Giving up (lost, fenced, shutdown) aborts the request; the first reason wins.
 */
import { performance } from "node:perf_hooks";
import { Wakeup } from "./backoff.js";
import type { DispatchLease, LeaseRef } from "./lease-client.js";
import { refKey } from "./lease-client.js";

/** Why the dispatcher stopped a running request itself. */
export type GiveUpReason = "lost" | "fenced" | "shutdown";

/** One held lease. */
export class HeldLease {
  readonly key: string;
  phase: "queued" | "running" | "reporting" = "queued";
  /** Set when we gave the request up; its outcome is then reported as a release. */
  gaveUp: { reason: GiveUpReason; detail: string } | undefined;
  /** `performance.now()` at which it is fenced unless renewed. */
  deadline: number;
  readonly #controller = new AbortController();
  timer: NodeJS.Timeout | undefined;

  constructor(
    readonly lease: DispatchLease,
    deadline: number,
  ) {
    this.key = refKey(lease.ref);
    this.deadline = deadline;
  }

  get ref(): LeaseRef {
    return this.lease.ref;
  }

  /** Aborted when the request is given up. */
  get signal(): AbortSignal {
    return this.#controller.signal;
  }

  /** @internal used by the table */
  abort(reason: GiveUpReason, detail: string): boolean {
    if (this.gaveUp !== undefined || this.phase === "reporting") return false;
    this.gaveUp = { reason, detail };
    this.#controller.abort(new Error(detail));
    return true;
  }
}

/** The table of held leases; see the file header. */
export class LeaseTable {
  readonly #entries = new Map<string, HeldLease>();
  readonly #changed = new Wakeup();

  /**
   * @param marginFor the fencing margin for a lease of ttl ms
   * @param onFenced called after a queued or running claim was given up at its deadline
   */
  constructor(
    private readonly marginFor: (ttlMs: number) => number,
    private readonly onFenced: (entry: HeldLease) => void,
  ) {}

  /**
   * Holds a claim (queued) from a call sent at `sentAt`; arms its fence. The
   * control plane set its expiry after that moment, so `sentAt + ttl` is never
   * later than the real expiry.
   */
  add(lease: DispatchLease, sentAt: number): HeldLease {
    const entry = new HeldLease(lease, sentAt + lease.ttlMs - this.marginFor(lease.ttlMs));
    this.#entries.set(entry.key, entry);
    this.#arm(entry);
    return entry;
  }

  /** A renewal sent at `sentAt` extended the lease by `ttlMs`: moves its fence (never earlier). */
  extend(ref: LeaseRef, sentAt: number, ttlMs: number): void {
    const entry = this.#entries.get(refKey(ref));
    if (!entry) return;
    const deadline = sentAt + ttlMs - this.marginFor(ttlMs);
    if (deadline <= entry.deadline) return;
    entry.deadline = deadline;
    if (entry.phase !== "reporting" && entry.gaveUp === undefined) this.#arm(entry);
  }

  /**
   * Gives up a claim whose fencing deadline has passed although its timer has not fired yet
   * (a busy event loop runs timers late): as the timer would. True when it was given up.
   */
  fenceIfDue(entry: HeldLease, now: number): boolean {
    if (now < entry.deadline || entry.phase === "reporting" || entry.gaveUp !== undefined) {
      return false;
    }
    clearTimeout(entry.timer);
    if (entry.abort("fenced", "lease not renewed before its fencing deadline")) {
      this.onFenced(entry);
    }
    return true;
  }

  /** A queued claim's request starts. */
  start(entry: HeldLease): void {
    entry.phase = "running";
  }

  /** Gives up a queued or running claim (aborts its request). False when its attempt was over or it was already given up. */
  giveUp(entry: HeldLease, reason: GiveUpReason, detail: string): boolean {
    clearTimeout(entry.timer);
    return entry.abort(reason, detail);
  }

  /** The attempt is over; from now on only its report is pending. */
  toReporting(entry: HeldLease): void {
    clearTimeout(entry.timer);
    entry.phase = "reporting";
    this.#changed.notify();
  }

  /** Forgets a lease (its report was answered or abandoned). */
  remove(entry: HeldLease): void {
    clearTimeout(entry.timer);
    if (this.#entries.get(entry.key) === entry) this.#entries.delete(entry.key);
    this.#changed.notify();
  }

  get(ref: LeaseRef): HeldLease | undefined {
    return this.#entries.get(refKey(ref));
  }

  /** Leases held (running or reporting). */
  get size(): number {
    return this.#entries.size;
  }

  /** Every held lease. */
  all(): HeldLease[] {
    return [...this.#entries.values()];
  }

  /** Requests still being sent. */
  running(): HeldLease[] {
    return this.all().filter((e) => e.phase === "running");
  }

  /** Resolves at the next change (a lease moved to reporting or was removed), on abort, or after `timeoutMs`. */
  changed(signal?: AbortSignal, timeoutMs?: number): Promise<void> {
    return this.#changed.wait(signal, timeoutMs);
  }

  #arm(entry: HeldLease): void {
    clearTimeout(entry.timer);
    const delay = Math.max(0, entry.deadline - performance.now());
    entry.timer = setTimeout(() => {
      if (entry.phase === "reporting" || entry.gaveUp !== undefined) return;
      // A renewal may have moved the deadline while this timer waited in the queue.
      if (performance.now() < entry.deadline) return this.#arm(entry);
      if (entry.abort("fenced", "lease not renewed before its fencing deadline"))
        this.onFenced(entry);
    }, delay);
    entry.timer.unref();
  }
}
