/**
 * What the dispatcher does when it loses the right to run (DESIGN §3.3,
 * docs/dispatcher.md "Self-fencing"):
 * - a model's slot grant was not renewed in time, or the control plane named
 *   it lost: every running request of the model is aborted, and its buffer
 *   goes back unsent (without a grant it cannot run);
 * - one claim's own fence passed: a buffered claim goes back unsent, a
 *   running one is aborted (the attempt runner reports it as a release);
 * - a renewal named a claim lost: the same, and it is never renewed again.
 * The timers that decide "in time" are in ./lease-table.ts (claims) and
 * ./sync-loop.ts (grants); the arithmetic in ./fencing.ts.
 *
 * Owns the counts of claims fenced and lost.
 */
import type { LossReason } from "./lease-client.js";
import type { HeldLease } from "./lease-table.js";
import type { ModelSlots } from "./model-slots.js";
import type { Shared } from "./parts.js";
import type { Settler } from "./settler.js";

/** The fencer as the sync loop and the lease table call it. */
export interface LossHandler {
  /** A grant's renewal came too late or it was lost: abort the model's running requests. */
  grantGone(m: ModelSlots, why: "fenced" | "lost"): void;
  /** The control plane said a claim is gone. */
  claimLost(entry: HeldLease, reason: LossReason): void;
}

export class Fencer implements LossHandler {
  readonly counts = { fenced: 0, lost: 0 };

  constructor(
    private readonly shared: Shared,
    private readonly settler: Pick<Settler, "releaseUnsent">,
  ) {}

  grantGone(m: ModelSlots, why: "fenced" | "lost"): void {
    const { table, metrics, log } = this.shared;
    const wasRunning = m.running;
    if (m.token !== 0n) metrics.grants(why);
    m.dropGrant();
    let aborted = 0;
    for (const e of table.running()) {
      if (e.lease.model === m.model && table.giveUp(e, "fenced", `slot grant ${why}`)) aborted++;
    }
    this.counts.fenced += aborted;
    metrics.claims("fenced", aborted);
    // Without a grant the buffer cannot run: give it back (unsent) for others
    // to take rather than hold it until a new grant comes, if ever.
    for (const e of m.queue.splice(0)) {
      if (table.giveUp(e, "fenced", `slot grant ${why}`))
        void this.settler.releaseUnsent(e, `slot grant ${why}`);
    }
    if (wasRunning > 0 || why === "lost") {
      log.warn({ model: m.model, aborted, why }, "slot grant lost: the model's requests aborted");
    }
  }

  /** The lease table gave `entry` up at its own fence (it is aborted already). */
  claimFenced(entry: HeldLease): void {
    const { book, metrics, log } = this.shared;
    if (entry.phase === "queued") {
      // Never started: out of the buffer, back to the control plane unsent.
      book.find(entry.lease.model)?.unqueue(entry);
      void this.settler.releaseUnsent(entry, "claim not renewed in time");
      return;
    }
    this.counts.fenced++;
    metrics.claims("fenced");
    log.warn(
      { requestId: entry.ref.requestId, model: entry.lease.model },
      "claim not renewed in time: request aborted (self-fenced)",
    );
  }

  claimLost(entry: HeldLease, reason: LossReason): void {
    const { book, table, metrics, log } = this.shared;
    // An attempt already over keeps its report: the control plane judges it
    // (LOST for an expired claim; recorded for a cancelled batch's request).
    const wasQueued = entry.phase === "queued";
    if (!table.giveUp(entry, "lost", `claim lost: ${reason}`)) return;
    this.counts.lost++;
    metrics.claims("lost");
    if (wasQueued) {
      book.find(entry.lease.model)?.unqueue(entry);
      void this.settler.releaseUnsent(entry, `claim lost: ${reason}`);
      return;
    }
    const fields = { requestId: entry.ref.requestId, model: entry.lease.model, reason };
    // Expired while still running means the fence came too late: the
    // request may have overlapped with its next claim. Worth a loud line.
    if (reason === "expired")
      log.warn(fields, "claim expired while its request ran (fence margin too small?)");
    else log.info(fields, "claim lost: request aborted");
  }
}
