/**
 * Requests finished per model and outcome (fusillade_requests_finished_total),
 * counted from the batches named by `fusillade_batch` notifications (one per
 * statement that changes a batch's requests): for a batch whose file has one
 * model, from the growth of its counter columns (the row is read anyway); for
 * a batch of several models, from its change log (`request_events`, the seq
 * range not yet counted, joined to the requests for their model: work in
 * proportion to the changes). Nothing on the report path changes.
 *
 * Every replica hears every notification and counts every request: aggregate
 * replicas with `max`, not `sum`. A batch first seen more than RECENT_MS
 * after its creation (a restart) is counted from that moment on.
 *
 * A batch is remembered after it finishes (up to REMEMBER of them, the least
 * recently changed forgotten first): a notification that arrives after the one
 * whose reading saw the end (two statements, two flushes) must count nothing,
 * and a batch retried after it finished goes on from where it was. Forgotten
 * on finishing, such a batch was counted again from its start (seen: 4
 * completions for 2). A reading older than the one already counted (two
 * flushes at once) counts nothing and changes nothing.
 */
import type { Queryable } from "../storage/db.js";

/** A batch created longer ago than this, seen for the first time, is counted from now on. */
const RECENT_MS = 60_000;
/** Batches remembered; beyond this, the least recently changed is forgotten. */
const REMEMBER = 10_000;

/** Outcomes by their CLI names (the batches' counter columns in brackets). */
export const OUTCOMES = ["completed", "failed", "cancelled", "expired"] as const;
export type Outcome = (typeof OUTCOMES)[number];

interface BatchRow {
  id: string;
  event_seq: string;
  models: string[] | null;
  created_at: Date;
  completed_count: number;
  failed_count: number;
  canceled_count: number;
  expired_count: number;
}

/**
 * FinishedBatchesNow: the named batches' change-log position, terminal
 * counters and models. Params: batch ids. Primary-key lookups.
 */
const BATCHES_NOW = `
  SELECT b.id, b.event_seq, f.models, b.created_at,
    b.completed_count, b.failed_count, b.canceled_count, b.expired_count
  FROM batches b LEFT JOIN files f ON f.id = b.file_id WHERE b.id = ANY($1::uuid[])`;

/**
 * TerminalEventsByModel: the terminal changes of batch $1 with seq in
 * ($2, $3], per model and state. Uses request_events' primary key (batch_id,
 * seq) and the requests' (id).
 */
const TERMINAL_EVENTS_BY_MODEL = `
  SELECT r.model, e.state, count(*)::int AS n
  FROM request_events e JOIN requests r ON r.id = e.request_id
  WHERE e.batch_id = $1 AND e.seq > $2 AND e.seq <= $3
    AND e.state IN ('completed', 'failed', 'canceled', 'expired')
  GROUP BY r.model, e.state`;

const OUTCOME_OF_STATE: Record<string, Outcome> = {
  completed: "completed",
  failed: "failed",
  canceled: "cancelled",
  expired: "expired",
};

interface Seen {
  seq: bigint;
  counts: Record<Outcome, number>;
}

const countsOf = (r: BatchRow): Record<Outcome, number> => ({
  completed: r.completed_count,
  failed: r.failed_count,
  cancelled: r.canceled_count,
  expired: r.expired_count,
});
const zero = (): Record<Outcome, number> => ({ completed: 0, failed: 0, cancelled: 0, expired: 0 });

/** Counts requests finished per model and outcome, from the batches it is told changed. */
export class FinishedRequests {
  readonly #seen = new Map<string, Seen>();

  constructor(
    private readonly db: Queryable,
    private readonly count: (model: string, outcome: Outcome, n: number) => void,
  ) {}

  /** Reads the named batches and counts what finished since they were last read. */
  async observe(batchIds: string[]): Promise<void> {
    const { rows } = await this.db.query<BatchRow>(BATCHES_NOW, [batchIds]);
    for (const r of rows) await this.#batch(r);
  }

  async #batch(r: BatchRow): Promise<void> {
    const seq = BigInt(r.event_seq);
    const now = countsOf(r);
    const seen = this.#seen.get(r.id);
    if (seen === undefined && Date.now() - r.created_at.getTime() > RECENT_MS) {
      // First seen long after its creation (a restart): counted from this reading on.
      this.#remember(r.id, { seq, counts: now });
      return;
    }
    const before = seen ?? { seq: 0n, counts: zero() };
    if (seq <= before.seq) return;
    this.#remember(r.id, { seq, counts: now });
    const [only, ...more] = r.models ?? [];
    if (only !== undefined && more.length === 0) {
      // One model: the counters' growth (a retry lowers one; it counts again when it ends).
      for (const o of OUTCOMES) {
        if (now[o] > before.counts[o]) this.count(only, o, now[o] - before.counts[o]);
      }
      return;
    }
    const events = await this.db.query<{ model: string; state: string; n: number }>(
      TERMINAL_EVENTS_BY_MODEL,
      [r.id, before.seq.toString(), seq.toString()],
    );
    for (const e of events.rows) {
      const o = OUTCOME_OF_STATE[e.state];
      if (o !== undefined) this.count(e.model, o, e.n);
    }
  }

  /** Records where batch `id` was counted to; it becomes the most recently changed. */
  #remember(id: string, at: Seen): void {
    this.#seen.delete(id);
    this.#seen.set(id, at);
    if (this.#seen.size > REMEMBER) {
      const oldest = this.#seen.keys().next().value;
      if (oldest !== undefined) this.#seen.delete(oldest);
    }
  }
}
