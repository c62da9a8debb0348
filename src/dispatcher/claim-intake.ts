/**
 * The intake of claims: what each call asks for, per model, and what happens
 * to the claims and holds its answer brings. Both calls that carry claims go
 * through here: a Sync (./sync-loop.ts calls `take`) and a report call (the
 * reporter calls the {@link RefillHooks}, which this implements).
 *
 * A claim that arrives is held in the lease table (its fence armed from the
 * call's send time) and buffered in its model's queue, or, once the
 * dispatcher is stopping, given back unsent at once. A model that got fewer
 * claims than asked is marked starved (no backlog for us now; WaitForWork
 * says when there is).
 *
 * Owns the count of claims received.
 */

import type { AttemptRunner } from "./attempt-runner.js";
import type { FencePolicy } from "./fencing.js";
import type { DispatchLease, ModelHold } from "./lease-client.js";
import type { Shared } from "./parts.js";
import type { Refill, RefillHooks } from "./reporter.js";
import type { Settler } from "./settler.js";

/** A call's answer, as far as claims go. */
export interface ClaimAnswer {
  claims: DispatchLease[];
  holds: ModelHold[];
}

/** Where the sync loop hands the claims of a Sync answer. */
export interface ClaimSink {
  /** Claims arrived from a call sent at `sentAt` that asked `asked` (room per model). */
  take(answer: ClaimAnswer, asked: Map<string, number>, sentAt: number): void;
}

export class ClaimIntake implements ClaimSink, RefillHooks {
  readonly counts = { acquired: 0 };

  constructor(
    private readonly shared: Shared,
    private readonly fencing: Pick<FencePolicy, "observeTtl">,
    private readonly settler: Pick<Settler, "releaseUnsent">,
    private readonly runner: Pick<AttemptRunner, "pump" | "pumpAll" | "hold">,
    /** Aborted when the dispatcher stops: claims then go straight back. */
    private readonly stopping: AbortSignal,
    /** Something changed that the sync loop may act on. */
    private readonly poke: () => void,
  ) {}

  take(answer: ClaimAnswer, asked: Map<string, number>, sentAt: number): void {
    const got = new Map<string, number>();
    this.shared.metrics.claims("acquired", answer.claims.length);
    for (const c of answer.claims) {
      this.counts.acquired++;
      this.fencing.observeTtl(c.ttlMs);
      const entry = this.shared.table.add(c, sentAt);
      got.set(c.model, (got.get(c.model) ?? 0) + 1);
      if (this.stopping.aborted) {
        this.shared.table.giveUp(entry, "shutdown", "claimed while shutting down");
        void this.settler.releaseUnsent(entry, "shutting down");
        continue;
      }
      this.shared.book.get(c.model).queue.push(entry);
    }
    for (const [model, n] of asked) {
      const m = this.shared.book.get(model);
      m.requested -= n;
      // Fewer than asked: no backlog now; WaitForWork tells us when there is.
      m.starved = (got.get(model) ?? 0) < n;
    }
    for (const h of answer.holds) this.runner.hold(this.shared.book.get(h.model), h.remainingMs);
    for (const model of got.keys()) this.runner.pump(this.shared.book.get(model));
  }

  /** The room per model as a report call is sent; booked as requested. */
  refill(): Refill[] {
    // Stopping: claims would only go back again (and their release's report would ask again).
    if (this.stopping.aborted) return [];
    const out: Refill[] = [];
    for (const m of this.shared.book.all()) {
      const room = m.starved ? 0 : this.shared.book.room(m);
      if (room <= 0) continue;
      m.requested += room;
      out.push({ model: m.model, room });
    }
    return out;
  }

  onClaims(claims: DispatchLease[], holds: ModelHold[], asked: Refill[], sentAt: number): void {
    this.take({ claims, holds }, new Map(asked.map((a) => [a.model, a.room])), sentAt);
    // Every model, not only those that got claims: a reporter that was
    // failing held back work that is buffered already.
    this.runner.pumpAll();
    this.poke();
  }

  onRefillFailed(asked: Refill[]): void {
    for (const a of asked) this.shared.book.get(a.model).requested -= a.room;
  }

  onHealthy(): void {
    this.runner.pumpAll();
  }

  onCall(size: number): void {
    this.shared.metrics.reportBatch(size);
  }
}
