/**
 * Batches: creation (one set-based snapshot of the file's templates),
 * reads, cancel and retry. Counters and events are kept by the requests
 * trigger; every statement here that touches both tables updates
 * `requests` first, then `batches` (the trigger's lock order).
 */

import { type TenantScope, tenantParam } from "../auth/principal.js";
import { parseDuration } from "../domain/duration.js";
import { FailedPreconditionError, NotFoundError } from "../domain/errors.js";
import { type BatchState, batchState, isBatchTerminal } from "../domain/states.js";
import { dropUnusedKeys } from "./api-keys.js";
import type { Db, Queryable } from "./db.js";
import { decodeTimeIdToken, encodePageToken, isId, pageQuery } from "./pages.js";

export interface BatchCounts {
  total: number;
  pending: number;
  inProgress: number;
  completed: number;
  failed: number;
  canceled: number;
  expired: number;
}

export interface BatchRecord {
  id: string;
  fileId: string | null;
  state: BatchState;
  metadata: Record<string, string>;
  completionWindow: string;
  maxRetries: number;
  initialBackoffMs: number;
  maxBackoffMs: number;
  counts: BatchCounts;
  /** Last change sequence number of the batch's request events. */
  eventSeq: bigint;
  createdAt: Date;
  updatedAt: Date;
  expiresAt: Date;
  cancellingAt: Date | null;
  finishedAt: Date | null;
  /** Priority class (docs/fair-share.md). */
  priority: number;
  /** Its own retention after it finishes (null: the server's; 0: kept until deleted). */
  retentionMs: number | null;
  /** Events with seq ≤ this may have been dropped (src/storage/retention.ts). */
  eventsPrunedThrough: bigint;
}

interface BatchRow {
  id: string;
  file_id: string | null;
  metadata: Record<string, string>;
  completion_window: string;
  max_retries: number;
  initial_backoff_ms: number;
  max_backoff_ms: number;
  total_count: number;
  pending_count: number;
  leased_count: number;
  completed_count: number;
  failed_count: number;
  canceled_count: number;
  expired_count: number;
  event_seq: string;
  created_at: Date;
  updated_at: Date;
  expires_at: Date;
  cancelling_at: Date | null;
  finished_at: Date | null;
  priority: number;
  retention_ms: string | null;
  events_pruned_through: string;
  cursor_ts?: string;
}

export const BATCH_COLUMNS = `id, file_id, metadata, completion_window, max_retries,
  initial_backoff_ms, max_backoff_ms, total_count, pending_count, leased_count, completed_count,
  failed_count, canceled_count, expired_count, event_seq, created_at, updated_at, expires_at,
  cancelling_at, finished_at, priority, retention_ms, events_pruned_through`;

/** Maps a batches row to a record. */
export function toBatch(r: BatchRow): BatchRecord {
  return {
    id: r.id,
    fileId: r.file_id,
    state: batchState({
      cancellingAt: r.cancelling_at,
      finishedAt: r.finished_at,
      expiresAt: r.expires_at,
      expiredCount: r.expired_count,
    }),
    metadata: r.metadata,
    completionWindow: r.completion_window,
    maxRetries: r.max_retries,
    initialBackoffMs: r.initial_backoff_ms,
    maxBackoffMs: r.max_backoff_ms,
    counts: {
      total: r.total_count,
      pending: r.pending_count,
      inProgress: r.leased_count,
      completed: r.completed_count,
      failed: r.failed_count,
      canceled: r.canceled_count,
      expired: r.expired_count,
    },
    eventSeq: BigInt(r.event_seq),
    createdAt: r.created_at,
    updatedAt: r.updated_at,
    expiresAt: r.expires_at,
    cancellingAt: r.cancelling_at,
    finishedAt: r.finished_at,
    priority: r.priority,
    retentionMs: r.retention_ms === null ? null : Number(r.retention_ms),
    eventsPrunedThrough: BigInt(r.events_pruned_through),
  };
}

export interface NewBatch {
  fileId: string;
  /** Who may see the file; the batch belongs to the file's tenant (docs/trust.md). */
  scope: TenantScope;
  idempotencyKey: string | null;
  completionWindow: string;
  completionWindowMs: number;
  metadata: Record<string, string>;
  maxRetries: number;
  initialBackoffMs: number;
  maxBackoffMs: number;
  /** Priority class, -100..100 (docs/fair-share.md). */
  priority: number;
  /** Retention after it finishes (null: the server's; 0: kept until deleted). */
  retentionMs: number | null;
}

/**
 * RequestsSnapshotFile: one request per template of the file, in one
 * statement. Params: batch id, file id.
 */
const REQUESTS_SNAPSHOT_FILE = `
  INSERT INTO requests (batch_id, line, custom_id, endpoint, method, path, body, model, api_key_id,
    tenant)
  SELECT $1, line, custom_id, endpoint, method, path, body, model, api_key_id, $3
  FROM request_templates WHERE file_id = $2`;

/**
 * Starts a batch from a file. With an idempotency key already used, returns
 * the earlier batch and creates nothing.
 */
export async function createBatch(
  db: Db,
  b: NewBatch,
): Promise<{ batch: BatchRecord; created: boolean; models: string[] }> {
  if (!isId(b.fileId)) throw new NotFoundError("file", b.fileId);
  const owner = await db.query<{ tenant: string }>(
    `SELECT tenant FROM files WHERE id = $1 AND ($2::text IS NULL OR tenant = $2)`,
    [b.fileId, tenantParam(b.scope)],
  );
  const tenant = owner.rows[0]?.tenant;
  if (tenant === undefined) throw new NotFoundError("file", b.fileId);
  if (b.idempotencyKey !== null) {
    const existing = await batchByKey(db, tenant, b.idempotencyKey);
    if (existing) return { batch: existing, created: false, models: [] };
  }
  const created = await db.tx(async (q) => {
    // FOR SHARE: a concurrent DeleteFile waits until the snapshot is taken. A file
    // that retention has begun to delete is gone already (src/storage/retention.ts).
    const file = await q.query<{ template_count: number; models: string[] }>(
      `SELECT template_count, models FROM files
       WHERE id = $1 AND tenant = $2 AND purging_at IS NULL FOR SHARE`,
      [b.fileId, tenant],
    );
    const f = file.rows[0];
    if (!f) throw new NotFoundError("file", b.fileId);
    const inserted = await q.query<BatchRow>(
      `INSERT INTO batches (file_id, metadata, completion_window, max_retries, initial_backoff_ms,
         max_backoff_ms, idempotency_key, total_count, pending_count, expires_at, tenant, priority,
         retention_ms)
       VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8, now() + $9 * interval '1 millisecond', $10, $11,
         $12)
       ON CONFLICT (tenant, idempotency_key) DO NOTHING
       RETURNING ${BATCH_COLUMNS}`,
      [
        b.fileId,
        JSON.stringify(b.metadata),
        b.completionWindow,
        b.maxRetries,
        b.initialBackoffMs,
        b.maxBackoffMs,
        b.idempotencyKey,
        f.template_count,
        b.completionWindowMs,
        tenant,
        b.priority,
        b.retentionMs,
      ],
    );
    const row = inserted.rows[0];
    if (!row) return undefined;
    await q.query(REQUESTS_SNAPSHOT_FILE, [row.id, b.fileId, tenant]);
    // Every model with work appears in ListModelLimits, at the default limit.
    await q.query(
      `INSERT INTO model_limits (model) SELECT unnest($1::text[]) ON CONFLICT DO NOTHING`,
      [f.models],
    );
    await q.query(`SELECT pg_notify('fusillade_work', m) FROM unnest($1::text[]) m`, [f.models]);
    return { batch: toBatch(row), models: f.models };
  });
  if (created) return { ...created, created: true };
  // A concurrent request with the same key committed first.
  const existing = await batchByKey(db, tenant, b.idempotencyKey!);
  if (!existing) throw new Error("idempotency key conflict without a batch");
  return { batch: existing, created: false, models: [] };
}

async function batchByKey(db: Db, tenant: string, key: string): Promise<BatchRecord | undefined> {
  const { rows } = await db.query<BatchRow>(
    `SELECT ${BATCH_COLUMNS} FROM batches WHERE tenant = $1 AND idempotency_key = $2`,
    [tenant, key],
  );
  return rows[0] && toBatch(rows[0]);
}

/** One batch `scope` may see, or NotFoundError (the same for another tenant's). */
export async function getBatch(
  db: Queryable,
  scope: TenantScope,
  id: string,
): Promise<BatchRecord> {
  if (!isId(id)) throw new NotFoundError("batch", id);
  const { rows } = await db.query<BatchRow>(
    `SELECT ${BATCH_COLUMNS} FROM batches WHERE id = $1 AND ($2::text IS NULL OR tenant = $2)`,
    [id, tenantParam(scope)],
  );
  if (!rows[0]) throw new NotFoundError("batch", id);
  return toBatch(rows[0]);
}

/** Batches, newest first, optionally only those of one file. */
export async function listBatches(
  db: Db,
  scope: TenantScope,
  opts: { limit: number; pageToken: string; fileId: string },
): Promise<{ batches: BatchRecord[]; nextPageToken: string }> {
  const after = decodeTimeIdToken(opts.pageToken);
  if (opts.fileId !== "" && !isId(opts.fileId)) return { batches: [], nextPageToken: "" };
  const { rows } = await pageQuery(() =>
    db.query<BatchRow>(
      `SELECT ${BATCH_COLUMNS}, created_at::text AS cursor_ts FROM batches
       WHERE ($1::timestamptz IS NULL OR (created_at, id) < ($1::timestamptz, $2::uuid))
         AND ($3::uuid IS NULL OR file_id = $3::uuid)
         AND ($5::text IS NULL OR tenant = $5)
       ORDER BY created_at DESC, id DESC LIMIT $4`,
      [
        after?.[0] ?? null,
        after?.[1] ?? null,
        opts.fileId === "" ? null : opts.fileId,
        opts.limit + 1,
        tenantParam(scope),
      ],
    ),
  );
  const page = rows.slice(0, opts.limit);
  const last = page[page.length - 1];
  return {
    batches: page.map(toBatch),
    nextPageToken:
      rows.length > opts.limit && last ? encodePageToken([last.cursor_ts!, last.id]) : "",
  };
}

/**
 * Cancels a batch: pending requests become canceled at once; leased ones
 * stay counted against their model's limit until their dispatcher, told by
 * the renewal in its next Sync, aborts them and reports (or their claim expires).
 * Idempotent: cancelling a cancelling or cancelled batch returns it as it is
 * (a client retrying a cancel whose answer it lost must not see an error);
 * a completed or expired batch is FailedPrecondition.
 */
export async function cancelBatch(db: Db, scope: TenantScope, id: string): Promise<BatchRecord> {
  const before = await getBatch(db, scope, id);
  if (before.state === "cancelling" || before.state === "cancelled") return before;
  if (isBatchTerminal(before.state)) {
    throw new FailedPreconditionError(`batch ${id} is already ${before.state}`);
  }
  const batch = await db.tx(async (q) => {
    const canceled = await q.query(
      `UPDATE requests SET state = 'canceled', not_before = NULL, finished_at = now(),
         updated_at = now(), error_code = 'batch_cancelled',
         error_message = 'the batch was cancelled before this request ran'
       WHERE batch_id = $1 AND state = 'pending'`,
      [id],
    );
    // If the batch finished on its own meanwhile and we changed nothing, it
    // is not ours to call cancelled.
    const { rows } = await q.query<BatchRow>(
      `UPDATE batches SET cancelling_at = now(), updated_at = now()
       WHERE id = $1 AND cancelling_at IS NULL AND (finished_at IS NULL OR $2)
       RETURNING ${BATCH_COLUMNS}`,
      [id, (canceled.rowCount ?? 0) > 0],
    );
    // Watchers see "cancelling" at once, even when no request changed state.
    if (rows[0]) await q.query(`SELECT pg_notify('fusillade_batch', $1)`, [id]);
    return rows[0] && toBatch(rows[0]);
  });
  if (batch) return batch;
  const after = await getBatch(db, scope, id);
  if (after.state === "cancelling" || after.state === "cancelled") return after;
  throw new FailedPreconditionError(`batch ${id} is already ${after.state}`);
}

export interface RetrySelection {
  requestIds: string[];
  customIds: string[];
  /**
   * A new completion window, from now: it replaces the batch's deadline
   * whenever the batch runs after the retry (a running batch's window is
   * extended or shortened). Null keeps the deadline, except that a batch
   * reopened after it ended gets its own window again, from now.
   */
  completionWindow: { text: string; ms: number } | null;
  /**
   * Also run cancelled requests again, and reopen a cancelled batch: the
   * way to finish a batch that was cancelled (or expired) part way.
   */
  resume: boolean;
}

/** States a retry sends back to pending. */
const RETRIED_STATES = ["failed", "expired"];
const RESUMED_STATES = ["failed", "expired", "canceled"];

/**
 * RequestsNotInBatch: which of the named ids ($2 request ids, $3 custom
 * ids) match no request of batch $1. Uses requests_batch_custom_id and the
 * primary key.
 */
const REQUESTS_NOT_IN_BATCH = `
  SELECT 'request_ids' AS field, i - 1 AS index, v AS value
  FROM unnest($2::text[]) WITH ORDINALITY AS u(v, i)
  WHERE NOT EXISTS (SELECT 1 FROM requests r WHERE r.batch_id = $1 AND r.id::text = u.v)
  UNION ALL
  SELECT 'custom_ids', i - 1, v FROM unnest($3::text[]) WITH ORDINALITY AS u(v, i)
  WHERE NOT EXISTS (SELECT 1 FROM requests r WHERE r.batch_id = $1 AND r.custom_id = u.v)
  ORDER BY 1 DESC, 2 LIMIT 1`;

/**
 * RequestsRetry: requests of batch $1 in states $5 (all, or those named by
 * $3 ids / $4 custom ids when $2 is false) back to pending with a fresh
 * attempt budget. Result: row count.
 */
const REQUESTS_RETRY = `
  UPDATE requests SET state = 'pending', attempt = 0, throttled_attempts = 0, not_before = NULL,
    finished_at = NULL,
    updated_at = now(), error_code = NULL, error_message = NULL, response_status = NULL,
    response_headers = NULL, response_body = NULL
  WHERE batch_id = $1 AND state = ANY($5::text[])
    AND ($2 OR id::text = ANY($3::text[]) OR custom_id = ANY($4::text[]))`;

/**
 * Sends a batch's failed and expired requests (all, or those selected; with
 * \`resume\`, cancelled ones too) back to pending with a fresh attempt budget.
 * The batch reopens. A named request the batch does not have is
 * NotFoundError; a window change for a batch that will not run is
 * FailedPreconditionError (nothing changes in either case).
 */
export async function retryBatch(
  db: Db,
  scope: TenantScope,
  id: string,
  sel: RetrySelection,
): Promise<{ batch: BatchRecord; retried: number }> {
  const before = await getBatch(db, scope, id);
  if (before.state === "cancelling") {
    throw new FailedPreconditionError(
      `batch ${id} is cancelling; wait until its running requests have stopped, then resume it`,
    );
  }
  if (before.state === "cancelled" && !sel.resume) {
    throw new FailedPreconditionError(
      `batch ${id} is cancelled; it cannot be retried, but it can be resumed (resume: its cancelled, failed and expired requests run again)`,
    );
  }
  const missing = await db.query<{ field: string; index: number; value: string }>(
    REQUESTS_NOT_IN_BATCH,
    [id, sel.requestIds, sel.customIds],
  );
  const m = missing.rows[0];
  if (m) {
    const what = m.field === "request_ids" ? "id" : "custom_id";
    throw new NotFoundError(`${m.field}[${m.index}]: request of batch ${id} with ${what}`, m.value);
  }
  const ownWindowMs =
    parseDuration(before.completionWindow) ??
    before.expiresAt.getTime() - before.createdAt.getTime();
  // The requests trigger notifies lease waiters of the new pending work.
  const result = await db.tx(async (q) => {
    // The batch row first (the lock its trigger takes anyway): a batch that
    // retention has begun to delete stays finished (src/storage/retention.ts).
    const lock = await q.query<{ purging: boolean }>(
      `SELECT purging_at IS NOT NULL AS purging FROM batches WHERE id = $1 FOR NO KEY UPDATE`,
      [id],
    );
    if (lock.rows[0]?.purging !== false) {
      throw new FailedPreconditionError(`batch ${id} is past its retention and is being deleted`);
    }
    const all = sel.requestIds.length === 0 && sel.customIds.length === 0;
    const retried = await q.query(REQUESTS_RETRY, [
      id,
      all,
      sel.requestIds,
      sel.customIds,
      sel.resume ? RESUMED_STATES : RETRIED_STATES,
    ]);
    const count = retried.rowCount ?? 0;
    const reopened = count > 0 && isBatchTerminal(before.state);
    const runs = count > 0 || !isBatchTerminal(before.state);
    if (sel.completionWindow !== null && !runs) return undefined;
    // An explicit window always applies. A reopened batch needs a deadline
    // in the future, or its requests would expire again at once: a resumed
    // one, or one whose deadline has passed, gets its own window from now.
    const { rows } = await q.query<BatchRow>(
      `UPDATE batches SET updated_at = now(),
         expires_at = CASE
           WHEN $2::double precision IS NOT NULL THEN now() + $2 * interval '1 millisecond'
           WHEN $4 AND ($5 OR expires_at <= now()) THEN now() + $6 * interval '1 millisecond'
           ELSE expires_at END,
         completion_window = coalesce($3, completion_window),
         cancelling_at = CASE WHEN $4 AND $5 THEN NULL ELSE cancelling_at END
       WHERE id = $1 RETURNING ${BATCH_COLUMNS}`,
      [
        id,
        sel.completionWindow?.ms ?? null,
        sel.completionWindow?.text ?? null,
        reopened,
        sel.resume,
        ownWindowMs,
      ],
    );
    if (sel.completionWindow !== null || reopened) {
      await q.query(`SELECT pg_notify('fusillade_batch', $1)`, [id]);
    }
    return { batch: toBatch(rows[0]!), retried: count };
  });
  if (result) return result;
  throw new FailedPreconditionError(
    `batch ${id} is ${before.state} and has no ${sel.resume ? "cancelled, failed or expired" : "failed or expired"} requests${all(sel) ? "" : " among those named"} to run again; a completion window applies only to a batch that runs`,
  );
}

function all(sel: RetrySelection): boolean {
  return sel.requestIds.length === 0 && sel.customIds.length === 0;
}

/**
 * Deletes a finished batch: its requests go with it (ON DELETE CASCADE), its
 * events too (the trigger batches_after_delete: the log has no foreign key), then its file's stored API keys if the file is gone and this was
 * its last batch.
 * A batch still running is FailedPreconditionError.
 */
export async function deleteBatch(db: Db, scope: TenantScope, id: string): Promise<void> {
  if (!isId(id)) throw new NotFoundError("batch", id);
  await db.tx(async (q) => {
    const { rows } = await q.query<{
      finished: boolean;
      cancelling: boolean;
      file_id: string | null;
    }>(
      `SELECT finished_at IS NOT NULL AS finished, cancelling_at IS NOT NULL AS cancelling, file_id
       FROM batches WHERE id = $1 AND ($2::text IS NULL OR tenant = $2) FOR UPDATE`,
      [id, tenantParam(scope)],
    );
    const b = rows[0];
    if (!b) throw new NotFoundError("batch", id);
    if (!b.finished) {
      throw new FailedPreconditionError(
        `batch ${id} is ${b.cancelling ? "cancelling" : "running"}; only a finished batch can be deleted${b.cancelling ? " (wait until its running requests have stopped)" : " (cancel it first)"}`,
      );
    }
    await q.query(`DELETE FROM batches WHERE id = $1`, [id]);
    await dropUnusedKeys(q, b.file_id);
  });
}
