/**
 * Retention: what the passes delete, in bounded chunks (docs/operations.md).
 *
 * A pass runs on one connection holding a session advisory lock, so one
 * replica at a time does the work and the others skip it (a try-lock: no
 * replica ever waits for another). It does, in order:
 *
 * 1. **Events** of batches finished longer ago than the events window: the
 *    batch's `events_pruned_through` is set to its `event_seq` first (a stream
 *    whose cursor is older then restarts from the snapshot), then the events
 *    go, `chunkRows` at a time.
 * 2. **Batches** finished longer ago than their retention (their own, else
 *    the server's): marked `purging_at` (RetryBatch then refuses them), then
 *    events, requests and the row itself, chunk by chunk, then the file's
 *    stored API keys when nothing uses them any more.
 * 3. **Files** older than the server's retention that no batch came from:
 *    marked (CreateBatch then refuses them), then templates, then the row.
 *
 * Each chunk is one short statement that skips rows another transaction
 * holds (a DeleteBatch or DeleteFile at the same time): the pass never waits
 * on a row lock, so it can neither deadlock nor hold anyone up for long. A
 * chunk of 1,000 rows takes a few ms to ~50 ms (bench/RESULTS.md, "Soak").
 * Between chunks the pass rests `pace` (by default as long as the chunk
 * took): at most half of one connection's time goes to deleting.
 */
import { setTimeout as delay } from "node:timers/promises";
import type { PoolClient } from "pg";
import { dropUnusedKeys } from "./api-keys.js";
import type { Db } from "./db.js";

/** Advisory lock key of the retention pass ("fusillade retention"). */
export const RETENTION_LOCK_KEY = 0x66757372;

/** What the pass keeps; durations in ms. */
export interface RetentionSettings {
  /** A finished batch (unless it has its own) and an unused file are kept this long; 0 = forever. */
  retentionMs: number;
  /** A finished batch's change log is kept this long (streams resume from it); 0 = until the batch goes. */
  eventRetentionMs: number;
  /** Rows per DELETE statement. @default 1000 */
  chunkRows?: number;
  /** Batches or files looked at per pass step. @default 100 */
  scanLimit?: number;
}

/** What one pass deleted. */
export interface RetentionCounts {
  batches: number;
  requests: number;
  events: number;
  files: number;
  templates: number;
}

/** Options of one pass. */
export interface PassOptions {
  /** Stops the pass between chunks. */
  signal?: AbortSignal;
  /** How long to rest after a chunk that took `ms`. @default ms (half the time deleting) */
  pace?: (ms: number) => number;
}

/**
 * BatchesEventsDue: finished batches past the events window whose events are
 * not all dropped yet. Params: window ms, limit. Uses batches_finished.
 */
const BATCHES_EVENTS_DUE = `
  SELECT id FROM batches
  WHERE finished_at IS NOT NULL AND finished_at < now() - $1 * interval '1 millisecond'
    AND events_pruned_through < event_seq
  ORDER BY finished_at LIMIT $2`;

/**
 * BatchesMarkEventsPruned: records that the events of batch $1 up to its
 * current event_seq are going, if it is still finished past window $2.
 * Result: the seq through which events may be deleted.
 */
const BATCHES_MARK_EVENTS_PRUNED = `
  UPDATE batches SET events_pruned_through = event_seq
  WHERE id = $1 AND finished_at IS NOT NULL AND finished_at < now() - $2 * interval '1 millisecond'
  RETURNING events_pruned_through AS through`;

/**
 * BatchesRetentionDue: finished batches past their retention (their own,
 * else $1; 0 = kept), oldest first, and those whose deletion began. Params:
 * server retention ms, limit. Uses batches_finished.
 */
const BATCHES_RETENTION_DUE = `
  SELECT id FROM batches
  WHERE purging_at IS NOT NULL OR (finished_at IS NOT NULL
    AND coalesce(retention_ms, $1::bigint) > 0
    AND finished_at < now() - coalesce(retention_ms, $1::bigint) * interval '1 millisecond')
  ORDER BY finished_at LIMIT $2`;

/**
 * BatchesMarkPurging: batch $1 is going, if it is still finished and past
 * its retention (server retention $2). Result: its file id. A RetryBatch
 * that reopened it first wins (the batch is then no longer finished).
 */
const BATCHES_MARK_PURGING = `
  UPDATE batches SET purging_at = coalesce(purging_at, now())
  WHERE id = $1 AND (purging_at IS NOT NULL OR (finished_at IS NOT NULL
    AND coalesce(retention_ms, $2::bigint) > 0
    AND finished_at < now() - coalesce(retention_ms, $2::bigint) * interval '1 millisecond'))
  RETURNING file_id`;

/**
 * RequestEventsDeleteChunk: up to $3 events of batch $1 with seq ≤ $2,
 * skipping locked rows. Uses the primary key (batch_id, seq).
 */
const REQUEST_EVENTS_DELETE_CHUNK = `
  DELETE FROM request_events WHERE batch_id = $1 AND seq IN (
    SELECT seq FROM request_events WHERE batch_id = $1 AND seq <= $2
    ORDER BY seq LIMIT $3 FOR UPDATE SKIP LOCKED)`;

/**
 * RequestsDeleteChunk: up to $2 requests of batch $1 (a finished batch's
 * requests are terminal: no claim, report or reaper touches them), skipping
 * locked rows. Uses the (batch_id, line) unique index.
 */
const REQUESTS_DELETE_CHUNK = `
  DELETE FROM requests WHERE id IN (
    SELECT id FROM requests WHERE batch_id = $1 ORDER BY line LIMIT $2 FOR UPDATE SKIP LOCKED)`;

/** BatchesDeletePurged: the emptied batch row (ON DELETE CASCADE finds nothing left). */
const BATCHES_DELETE_PURGED = `DELETE FROM batches WHERE id = $1 AND purging_at IS NOT NULL`;

/**
 * FilesRetentionDue: files older than $1 (0: none) that no batch came from,
 * and those whose deletion began. Params: retention ms, limit. Uses files_created and
 * batches_file.
 */
const FILES_RETENTION_DUE = `
  SELECT f.id FROM files f
  WHERE f.purging_at IS NOT NULL OR ($1::bigint > 0 AND f.created_at < now() - $1 * interval '1 millisecond'
    AND NOT EXISTS (SELECT 1 FROM batches b WHERE b.file_id = f.id))
  ORDER BY f.created_at LIMIT $2`;

/** FilesMarkPurging: file $1 is going if still due (retention $2); CreateBatch then refuses it. */
const FILES_MARK_PURGING = `
  UPDATE files f SET purging_at = coalesce(purging_at, now())
  WHERE f.id = $1 AND (f.purging_at IS NOT NULL OR ($2::bigint > 0
    AND f.created_at < now() - $2 * interval '1 millisecond' AND NOT EXISTS (SELECT 1 FROM batches b WHERE b.file_id = f.id)))
  RETURNING f.id`;

/** RequestTemplatesDeleteChunk: up to $2 templates of file $1, skipping locked rows. Uses the primary key. */
const REQUEST_TEMPLATES_DELETE_CHUNK = `
  DELETE FROM request_templates WHERE file_id = $1 AND line IN (
    SELECT line FROM request_templates WHERE file_id = $1 ORDER BY line LIMIT $2
    FOR UPDATE SKIP LOCKED)`;

/** FilesDeletePurged: the emptied file row. */
const FILES_DELETE_PURGED = `DELETE FROM files WHERE id = $1 AND purging_at IS NOT NULL`;

/**
 * Runs one retention pass; undefined when another replica's pass holds the
 * lock. Stops between chunks when `signal` aborts (what is marked is
 * finished by a later pass).
 */
export async function retentionPass(
  db: Db,
  settings: Readonly<RetentionSettings>,
  options: PassOptions = {},
): Promise<RetentionCounts | undefined> {
  const client = await db.pool.connect();
  let broken = false;
  try {
    const { rows } = await client.query<{ ok: boolean }>("SELECT pg_try_advisory_lock($1) AS ok", [
      RETENTION_LOCK_KEY,
    ]);
    if (!rows[0]?.ok) return undefined;
    try {
      return await new Pass(client, settings, options).run();
    } finally {
      await client.query("SELECT pg_advisory_unlock($1)", [RETENTION_LOCK_KEY]);
    }
  } catch (e) {
    broken = true; // a lost connection must not go back to the pool with the lock
    throw e;
  } finally {
    client.release(broken);
  }
}

/** One pass's state: its connection, settings and counts. */
class Pass {
  readonly counts: RetentionCounts = { batches: 0, requests: 0, events: 0, files: 0, templates: 0 };
  readonly #chunk: number;
  readonly #scan: number;

  constructor(
    private readonly q: PoolClient,
    private readonly settings: Readonly<RetentionSettings>,
    private readonly options: PassOptions,
  ) {
    this.#chunk = settings.chunkRows ?? 1000;
    this.#scan = settings.scanLimit ?? 100;
  }

  async run(): Promise<RetentionCounts> {
    const { retentionMs, eventRetentionMs } = this.settings;
    const eventsDue = eventRetentionMs > 0 ? [eventRetentionMs, this.#scan] : undefined;
    for (const id of eventsDue ? await this.#ids(BATCHES_EVENTS_DUE, eventsDue) : []) {
      const { rows } = await this.q.query<{ through: string }>(BATCHES_MARK_EVENTS_PRUNED, [
        id,
        eventRetentionMs,
      ]);
      if (rows[0]) await this.#pruneEvents(id, Number(rows[0].through));
    }
    for (const id of await this.#ids(BATCHES_RETENTION_DUE, [retentionMs, this.#scan])) {
      const { rows } = await this.q.query<{ file_id: string | null }>(BATCHES_MARK_PURGING, [
        id,
        retentionMs,
      ]);
      if (rows[0]) await this.#purgeBatch(id, rows[0].file_id);
    }
    for (const id of await this.#ids(FILES_RETENTION_DUE, [retentionMs, this.#scan])) {
      const { rows } = await this.q.query(FILES_MARK_PURGING, [id, retentionMs]);
      if (rows[0]) await this.#purgeFile(id);
    }
    return this.counts;
  }

  async #ids(sql: string, params: unknown[]): Promise<string[]> {
    const { rows } = await this.q.query<{ id: string }>(sql, params);
    return rows.map((r) => r.id);
  }

  /** Runs a chunk statement until it deletes fewer rows than a chunk; the rows deleted. */
  async #drain(sql: string, params: unknown[]): Promise<number> {
    let total = 0;
    for (;;) {
      this.options.signal?.throwIfAborted();
      const started = performance.now();
      const n = (await this.q.query(sql, params)).rowCount ?? 0;
      total += n;
      const rest = (this.options.pace ?? ((ms) => ms))(performance.now() - started);
      if (n < this.#chunk) return total;
      if (rest > 0) await delay(rest, undefined, { signal: this.options.signal });
    }
  }

  async #pruneEvents(batchId: string, through: number): Promise<void> {
    this.counts.events += await this.#drain(REQUEST_EVENTS_DELETE_CHUNK, [
      batchId,
      through,
      this.#chunk,
    ]);
  }

  async #purgeBatch(batchId: string, fileId: string | null): Promise<void> {
    await this.#pruneEvents(batchId, Number.MAX_SAFE_INTEGER);
    this.counts.requests += await this.#drain(REQUESTS_DELETE_CHUNK, [batchId, this.#chunk]);
    this.counts.batches += await this.#deleteLast(BATCHES_DELETE_PURGED, batchId, fileId);
  }

  async #purgeFile(fileId: string): Promise<void> {
    this.counts.templates += await this.#drain(REQUEST_TEMPLATES_DELETE_CHUNK, [
      fileId,
      this.#chunk,
    ]);
    this.counts.files += await this.#deleteLast(FILES_DELETE_PURGED, fileId, fileId);
  }

  /** Deletes the emptied row `id` by `sql`, and the file's stored keys if nothing uses them now. */
  async #deleteLast(sql: string, id: string, fileId: string | null): Promise<number> {
    await this.q.query("BEGIN");
    try {
      const res = await this.q.query(sql, [id]);
      await dropUnusedKeys(this.q, fileId);
      await this.q.query("COMMIT");
      return res.rowCount ?? 0;
    } catch (e) {
      await this.q.query("ROLLBACK").catch(() => undefined);
      throw e;
    }
  }
}
