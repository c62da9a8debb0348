/**
 * Lifecycle logs and counters of batches (docs/observability.md): created
 * and cancelled are told by the API handlers; finished, cancelled-and-done
 * and expired are seen here, from `fusillade_batch` notifications (one per
 * statement that changes a batch's requests), by reading the named batches'
 * rows (primary-key lookups, a few per second at most).
 *
 * The same reads feed the requests finished per model (finished-requests.ts).
 *
 * Every control plane replica hears every notification, so each logs a
 * batch's end (the logs carry the batch id: a pipeline can de-duplicate).
 * Never an API key or a body: ids, counts, durations.
 */
import type { Logger } from "../logger.js";
import { BATCH_COLUMNS, type BatchRecord, toBatch } from "../storage/batches.js";
import type { Db } from "../storage/db.js";
import { BATCH_CHANNEL, type Notifications } from "../storage/notifications.js";
import type { ControlPlaneMetrics } from "./control-plane-metrics.js";
import { FinishedRequests } from "./finished-requests.js";

/** Notifications are read in groups: at most one lookup per this. */
const FLUSH_MS = 100;
/** A batch that finished longer ago than this is not logged (a late notification). */
const RECENT_MS = 60_000;
/** Ends remembered (so that one is logged once); the oldest are forgotten first. */
const REMEMBER = 10_000;

type Row = Parameters<typeof toBatch>[0];

export class BatchLifecycle {
  readonly #pending = new Set<string>();
  readonly #ended = new Set<string>();
  #timer: NodeJS.Timeout | undefined;
  #unsubscribe: () => void = () => undefined;
  #closed = false;
  readonly #finished: FinishedRequests | undefined;

  constructor(
    private readonly db: Db,
    private readonly log: Logger,
    private readonly metrics?: ControlPlaneMetrics,
  ) {
    this.#finished =
      metrics &&
      new FinishedRequests(db, (model, outcome, n) => metrics.finished(model, outcome, n));
  }

  /** Starts listening for batch changes. */
  start(notifications: Notifications): void {
    this.#unsubscribe = notifications.on(BATCH_CHANNEL, (payload) => {
      if (payload === "*" || this.#closed) return; // a reconnect: nothing named
      this.#pending.add(payload);
      this.#timer ??= setTimeout(() => void this.#flush(), FLUSH_MS);
    });
  }

  /** A batch was created (`traceId`: from the caller's traceparent, when it sent one). */
  created(b: BatchRecord, traceId?: string): void {
    this.metrics?.batchCreated();
    this.log.info(
      {
        batchId: b.id,
        fileId: b.fileId,
        requests: b.counts.total,
        completionWindow: b.completionWindow,
        expiresAt: b.expiresAt.toISOString(),
        traceId,
      },
      "batch created",
    );
  }

  /** A batch was cancelled by a caller (its running requests finish or are released). */
  cancelled(b: BatchRecord): void {
    this.log.info({ batchId: b.id, state: b.state, counts: b.counts }, "batch cancelled");
  }

  async #flush(): Promise<void> {
    this.#timer = undefined;
    const ids = [...this.#pending].filter((id) => /^[0-9a-f-]{36}$/i.test(id));
    this.#pending.clear();
    if (ids.length === 0 || this.#closed) return;
    let rows: Row[];
    try {
      rows = (
        await this.db.query<Row>(
          `SELECT ${BATCH_COLUMNS} FROM batches WHERE id = ANY($1::uuid[])`,
          [ids],
        )
      ).rows;
    } catch (e) {
      this.log.debug({ err: e }, "batch lifecycle read failed");
      return;
    }
    for (const r of rows) this.#seen(toBatch(r));
    await this.#finished?.observe(ids).catch((e: unknown) => {
      this.log.debug({ err: e }, "finished requests read failed");
    });
  }

  #seen(b: BatchRecord): void {
    if (b.finishedAt === null) {
      this.#ended.delete(b.id); // reopened by a retry: its next end is logged again
      return;
    }
    if (this.#ended.has(b.id) || Date.now() - b.finishedAt.getTime() > RECENT_MS) return;
    this.#ended.add(b.id);
    if (this.#ended.size > REMEMBER) {
      const oldest = this.#ended.values().next().value;
      if (oldest !== undefined) this.#ended.delete(oldest);
    }
    this.metrics?.batchFinished(b.state);
    const fields = {
      batchId: b.id,
      state: b.state,
      counts: b.counts,
      durationMs: b.finishedAt.getTime() - b.createdAt.getTime(),
    };
    if (b.state === "expired") {
      this.log.info(fields, "batch expired: its completion window closed first");
    } else {
      this.log.info(fields, "batch finished");
    }
  }

  close(): void {
    this.#closed = true;
    this.#unsubscribe();
    clearTimeout(this.#timer);
  }
}
