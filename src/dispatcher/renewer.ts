/**
 * The renewal loop: every interval, one RenewLeases call for every held lease
 * that is still wanted (running, or awaiting its report). Renewed leases get
 * a later fence (measured from the call's send time, see ./fencing.ts); lost
 * ones are handed to `onLost`, which aborts them.
 *
 * Modes: stopped → running (ticks; a tick with nothing held sends nothing) →
 * stopped. Ticks never overlap: the next starts one interval after the last
 * started, or when it ended if that was later. A failed call changes nothing:
 * the fences fire on their own if the control plane stays away.
 */
import { performance } from "node:perf_hooks";
import type { Logger } from "../logger.js";
import type { LeaseClient, LeaseRef, LossReason } from "./lease-client.js";
import type { HeldLease, LeaseTable } from "./lease-table.js";

/** Most leases in one RenewLeases call. */
const MAX_REFS_PER_CALL = 1000;

export class Renewer {
  #timer: NodeJS.Timeout | undefined;
  /** `performance.now()` of the next tick. */
  #due = Number.POSITIVE_INFINITY;
  #running = false;
  #tick: Promise<void> = Promise.resolve();
  #failures = 0;

  constructor(
    private readonly table: LeaseTable,
    private readonly client: LeaseClient,
    /** The current renewal period (it follows the leases' TTL). */
    private readonly intervalMs: () => number,
    private readonly rpcTimeoutMs: number,
    private readonly onLost: (entry: HeldLease, reason: LossReason) => void,
    private readonly log: Logger,
  ) {}

  start(): void {
    this.#running = true;
    this.#schedule(this.intervalMs());
  }

  /** Stops ticking; waits for a tick in progress. */
  async stop(): Promise<void> {
    this.#running = false;
    clearTimeout(this.#timer);
    await this.#tick;
  }

  /** Leases were added: brings the next tick forward if it is further away than one interval. */
  nudge(): void {
    if (!this.#running || this.#timer === undefined) return;
    const interval = this.intervalMs();
    if (this.#due > performance.now() + interval) {
      clearTimeout(this.#timer);
      this.#schedule(interval);
    }
  }

  /** Renews now (also used by tests). */
  async renewOnce(): Promise<void> {
    // Lost leases are gone for good; every other one must outlive its report.
    const wanted = this.table.all().filter((e) => e.gaveUp?.reason !== "lost");
    for (let i = 0; i < wanted.length; i += MAX_REFS_PER_CALL) {
      await this.#renew(wanted.slice(i, i + MAX_REFS_PER_CALL).map((e) => e.ref));
    }
  }

  #schedule(delay: number): void {
    if (!this.#running) return;
    this.#due = performance.now() + delay;
    this.#timer = setTimeout(() => {
      // No timer while a tick runs: nudge() leaves it alone.
      this.#timer = undefined;
      const started = performance.now();
      this.#tick = this.renewOnce().finally(() => {
        this.#schedule(Math.max(0, started + this.intervalMs() - performance.now()));
      });
    }, delay);
    this.#timer.unref();
  }

  async #renew(refs: LeaseRef[]): Promise<void> {
    if (refs.length === 0) return;
    const sentAt = performance.now();
    let res: Awaited<ReturnType<LeaseClient["renew"]>>;
    try {
      res = await this.client.renew(refs, this.rpcTimeoutMs);
    } catch (e) {
      this.#failures++;
      if (this.#failures === 1 || this.#failures % 10 === 0) {
        this.log.warn(
          { err: e, leases: refs.length, failures: this.#failures },
          "could not renew leases",
        );
      }
      return;
    }
    if (this.#failures > 0)
      this.log.info({ failures: this.#failures }, "lease renewals are getting through again");
    this.#failures = 0;
    for (const r of res.renewed) this.table.extend(r.ref, sentAt, r.ttlMs);
    for (const l of res.lost) {
      const entry = this.table.get(l.ref);
      if (entry) this.onLost(entry, l.reason);
    }
  }
}
