/**
 * One request and its attempts, for clients. Attempts are read from the
 * batch's change log (`request_events`, written by the requests trigger):
 * a change to `leased` starts an attempt, the request's next change ends it.
 */

import { type TenantScope, tenantParam } from "../auth/principal.js";
import { NotFoundError } from "../domain/errors.js";
import type { RequestState } from "../domain/states.js";
import type { Db } from "./db.js";
import { isId } from "./pages.js";
import { REQUEST_COLUMNS, type RequestRecord, type RequestRow, toRequest } from "./requests.js";

/** One attempt: when it started, when it ended and the state it led to. */
export interface AttemptRecord {
  attempt: number;
  startedAt: Date;
  /** Null while it runs. */
  endedAt: Date | null;
  /** Null while it runs; "pending" for a retriable failure or a claim given back. */
  outcome: RequestState | null;
  /** The upstream status that ended it; null when none (or while it runs). */
  statusCode: number | null;
  /** The error that ended it; null when none (or while it runs). */
  errorCode: string | null;
}

/** Which request: by id, or by batch and custom_id. */
export type RequestKey = { requestId: string } | { batchId: string; customId: string };

/**
 * RequestEventsOfRequest: the request's state changes in order, each with
 * the next one's time, state, upstream status and error code. Params: batch id, request id. Uses the
 * primary key (batch_id, seq).
 */
const REQUEST_EVENTS_OF_REQUEST = `
  SELECT state, attempt, created_at,
    lead(created_at) OVER (ORDER BY seq) AS next_at,
    lead(state) OVER (ORDER BY seq) AS next_state,
    lead(response_status) OVER (ORDER BY seq) AS next_status,
    lead(error_code) OVER (ORDER BY seq) AS next_error
  FROM request_events WHERE batch_id = $1 AND request_id = $2
  ORDER BY seq`;

/** The request named by `key` with its attempts, or NotFoundError. */
export async function getRequestWithAttempts(
  db: Db,
  scope: TenantScope,
  key: RequestKey,
): Promise<{ request: RequestRecord; attempts: AttemptRecord[] }> {
  let rows: RequestRow[];
  if ("requestId" in key) {
    if (!isId(key.requestId)) throw new NotFoundError("request", key.requestId);
    ({ rows } = await db.query<RequestRow>(
      `SELECT ${REQUEST_COLUMNS} FROM requests WHERE id = $1 AND ($2::text IS NULL OR tenant = $2)`,
      [key.requestId, tenantParam(scope)],
    ));
    if (!rows[0]) throw new NotFoundError("request", key.requestId);
  } else {
    if (!isId(key.batchId)) throw new NotFoundError("batch", key.batchId);
    ({ rows } = await db.query<RequestRow>(
      `SELECT ${REQUEST_COLUMNS} FROM requests
       WHERE batch_id = $1 AND custom_id = $2 AND ($3::text IS NULL OR tenant = $3)`,
      [key.batchId, key.customId, tenantParam(scope)],
    ));
    if (!rows[0]) {
      throw new NotFoundError(`request of batch ${key.batchId} with custom_id`, key.customId);
    }
  }
  const request = toRequest(rows[0]);
  const events = await db.query<{
    state: RequestState;
    attempt: number;
    created_at: Date;
    next_at: Date | null;
    next_state: RequestState | null;
    next_status: number | null;
    next_error: string | null;
  }>(REQUEST_EVENTS_OF_REQUEST, [request.batchId, request.id]);
  const attempts = events.rows
    .filter((e) => e.state === "leased")
    .map((e) => ({
      attempt: e.attempt,
      startedAt: e.created_at,
      endedAt: e.next_at,
      outcome: e.next_state,
      // A request that completes keeps no error code of an earlier attempt.
      statusCode: e.next_state === null ? null : e.next_status,
      errorCode: e.next_state === null || e.next_state === "completed" ? null : e.next_error,
    }));
  return { request, attempts };
}
