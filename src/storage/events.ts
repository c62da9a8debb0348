/**
 * Reads behind StreamBatchRequests: consistent snapshot pages (the batch row
 * and a page of its requests from one MVCC snapshot) and pages of the
 * per-batch change log `request_events`. Nothing here holds a connection
 * between pages, so a slow stream costs no pool slot while it waits.
 * docs/streaming.md explains why these two reads make a gap-free stream.
 */
import { InvalidArgumentError } from "../domain/errors.js";
import { type RequestState, TERMINAL_REQUEST_STATES } from "../domain/states.js";
import { BATCH_COLUMNS, type BatchRecord, toBatch } from "./batches.js";
import type { Db } from "./db.js";
import {
  byteCappedPage,
  type CappedPageColumns,
  cappedPageRows,
  INDEX_SCANS_ONLY,
} from "./pages.js";
import { REQUEST_COLUMNS, type RequestRecord, type RequestRow, toRequest } from "./requests.js";

type BatchRow = Parameters<typeof toBatch>[0];

/** A page of the snapshot and the batch as of the same instant. */
export interface SnapshotPage {
  /** The batch, including `eventSeq`: every event ≤ it is reflected in `requests`. */
  batch: BatchRecord;
  requests: RequestRecord[];
  /** More requests follow (the page was cut by rows or by bytes). */
  more: boolean;
}

/**
 * RequestsSnapshotPage: requests of a batch after `afterLine`, in line
 * order, optionally only those in `states`, capped by bytes (byteCappedPage).
 * Params: batch id, after line, states (empty = all), limit (rows), max
 * bytes. Filtered on states among pending, failed, canceled and expired it
 * uses requests_batch_unsettled; otherwise the (batch_id, line) unique index
 * (claimed and completed rows are in no per-batch state index: see
 * docs/architecture.md, "What the hot path writes").
 */
const REQUESTS_SNAPSHOT_PAGE = byteCappedPage(
  `SELECT ${REQUEST_COLUMNS} FROM requests
   WHERE batch_id = $1 AND line > $2 AND (cardinality($3::text[]) = 0 OR state = ANY($3::text[]))
   ORDER BY line LIMIT $4`,
  "line",
  "$5",
);

/**
 * Reads the batch row and the next page of its requests in one REPEATABLE
 * READ transaction: both come from one snapshot, so the page shows exactly
 * the events up to `batch.eventSeq` (the trigger bumps `event_seq` in the
 * transaction that changes the requests). Undefined when the batch is gone.
 */
export async function snapshotPage(
  db: Db,
  batchId: string,
  afterLine: number,
  states: readonly RequestState[],
  limit: number,
  maxBytes: number,
): Promise<SnapshotPage | undefined> {
  return db.tx(async (q) => {
    await q.query(
      `SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY; ${INDEX_SCANS_ONLY}`,
    );
    const b = await q.query<BatchRow>(`SELECT ${BATCH_COLUMNS} FROM batches WHERE id = $1`, [
      batchId,
    ]);
    if (!b.rows[0]) return undefined;
    const r = await q.query<RequestRow & CappedPageColumns>(REQUESTS_SNAPSHOT_PAGE, [
      batchId,
      afterLine,
      states,
      limit + 1,
      maxBytes,
    ]);
    const { page, more } = cappedPageRows(r.rows, limit);
    return { batch: toBatch(b.rows[0]), requests: page.map(toRequest), more };
  });
}

/** One entry of the change log, as a client sees it. */
export interface ChangeRecord {
  /** The batch's change sequence number of this transition. */
  seq: number;
  /** The request as of this transition (see requestAtEvent). */
  request: RequestRecord;
}

interface EventRow extends RequestRow {
  ev_seq: string;
  ev_state: RequestState;
  ev_attempt: number;
  ev_at: Date;
  /** The row's response/error were written by this event's transaction. */
  ev_outcome_current: boolean;
  /** The row has not changed since this event. */
  ev_row_current: boolean;
}

/**
 * RequestEventsPage: a batch's events with afterSeq < seq ≤ upToSeq, in
 * seq order, joined with their requests; optionally only events of
 * requests at line ≤ maxLine and only transitions into `states`, capped by
 * bytes (byteCappedPage). Params: batch id, after seq, up-to seq, max line
 * (null = any), states (empty = all), limit (rows), max bytes. Uses the
 * primary key (batch_id, seq).
 */
const REQUEST_EVENTS_PAGE = byteCappedPage(
  `
  SELECT e.seq AS ev_seq, e.state AS ev_state, e.attempt AS ev_attempt, e.created_at AS ev_at,
    (r.state = e.state AND r.finished_at IS NOT DISTINCT FROM e.created_at) AS ev_outcome_current,
    (r.state = e.state AND r.updated_at = e.created_at) AS ev_row_current,
    ${REQUEST_COLUMNS.split(",")
      .map((c) => `r.${c.trim()}`)
      .join(", ")}
  FROM request_events e JOIN requests r ON r.id = e.request_id
  WHERE e.batch_id = $1 AND e.seq > $2 AND e.seq <= $3
    AND ($4::integer IS NULL OR r.line <= $4::integer)
    AND (cardinality($5::text[]) = 0 OR e.state = ANY($5::text[]))
  ORDER BY e.seq LIMIT $6`,
  "ev_seq",
  "$7",
);

/** One page of a batch's change log; see REQUEST_EVENTS_PAGE. */
export async function changesPage(
  db: Db,
  opts: {
    batchId: string;
    afterSeq: number;
    upToSeq: number;
    maxLine: number | null;
    states: readonly RequestState[];
    limit: number;
    maxBytes: number;
  },
): Promise<{ changes: ChangeRecord[]; more: boolean }> {
  const { rows } = await db.query<EventRow & CappedPageColumns>(REQUEST_EVENTS_PAGE, [
    opts.batchId,
    opts.afterSeq,
    opts.upToSeq,
    opts.maxLine,
    opts.states,
    opts.limit + 1,
    opts.maxBytes,
  ]);
  const { page, more } = cappedPageRows(rows, opts.limit);
  return {
    changes: page.map((e) => ({
      seq: Number(e.ev_seq),
      request: requestAtEvent(toRequest(e), e),
    })),
    more,
  };
}

/**
 * The request as it was right after an event: the event gives the state,
 * attempt and time; the row gives the fields that never change (custom_id,
 * line, model, url, …). The row's outcome (response, error) and not_before
 * belong to the event only while the row is still at that event — every
 * writer stamps `finished_at`/`updated_at` with `now()`, the same
 * transaction timestamp the trigger gives the event. An outcome that was
 * since cleared by RetryBatch is gone: the change then carries none.
 */
function requestAtEvent(row: RequestRecord, e: EventRow): RequestRecord {
  const terminal = TERMINAL_REQUEST_STATES.has(e.ev_state);
  const outcomeIsThis = terminal && e.ev_outcome_current;
  const waitIsThis = e.ev_state === "pending" && e.ev_row_current;
  return {
    ...row,
    state: e.ev_state,
    attempt: e.ev_attempt,
    updatedAt: e.ev_at,
    finishedAt: terminal ? e.ev_at : null,
    notBefore: waitIsThis ? row.notBefore : null,
    responseStatus: outcomeIsThis ? row.responseStatus : null,
    responseHeaders: outcomeIsThis ? row.responseHeaders : null,
    responseBody: outcomeIsThis ? row.responseBody : null,
    errorCode: outcomeIsThis ? row.errorCode : null,
    errorMessage: outcomeIsThis ? row.errorMessage : null,
  };
}

/**
 * Where a stream stands. `snapshot`: the client has every request at line
 * ≤ `line` (that passes the filter) as of change `seq`, and nothing beyond
 * `line`. `changes`: the snapshot is complete and every change ≤ `seq` was
 * sent. See docs/streaming.md.
 */
export type StreamCursor =
  | { phase: "snapshot"; seq: number; line: number }
  | { phase: "changes"; seq: number };

/** The position of a new stream: nothing sent yet. */
export const STREAM_START: StreamCursor = { phase: "snapshot", seq: 0, line: 0 };

interface CursorWire {
  v: 1;
  /** Batch id and states filter the cursor was issued for. */
  b: string;
  f: string;
  p: "s" | "c";
  s: number;
  l?: number;
}

/** The filter as a cursor component: sorted, comma-separated. */
function filterKey(states: readonly RequestState[]): string {
  return [...new Set(states)].sort().join(",");
}

/** Encodes a cursor as an opaque token bound to its batch and filter. */
export function encodeStreamCursor(
  c: StreamCursor,
  batchId: string,
  states: readonly RequestState[],
): string {
  const wire: CursorWire =
    c.phase === "snapshot"
      ? { v: 1, b: batchId, f: filterKey(states), p: "s", s: c.seq, l: c.line }
      : { v: 1, b: batchId, f: filterKey(states), p: "c", s: c.seq };
  return Buffer.from(JSON.stringify(wire)).toString("base64url");
}

/**
 * Decodes a token made by encodeStreamCursor; InvalidArgumentError when it
 * is malformed or was issued for another batch or another filter.
 */
export function decodeStreamCursor(
  token: string,
  batchId: string,
  states: readonly RequestState[],
): StreamCursor {
  let w: Partial<CursorWire> | undefined;
  try {
    w = JSON.parse(Buffer.from(token, "base64url").toString("utf8")) as Partial<CursorWire>;
  } catch {
    w = undefined;
  }
  const count = (n: unknown): n is number => Number.isSafeInteger(n) && (n as number) >= 0;
  if (w?.v !== 1 || typeof w.b !== "string" || !count(w.s)) {
    throw new InvalidArgumentError("cursor", "is not a cursor returned by StreamBatchRequests");
  }
  if (w.b !== batchId) {
    throw new InvalidArgumentError("cursor", "was issued for another batch");
  }
  if (w.f !== filterKey(states)) {
    throw new InvalidArgumentError("cursor", "was issued for another states filter");
  }
  if (w.p === "c") return { phase: "changes", seq: w.s };
  if (w.p === "s" && count(w.l)) return { phase: "snapshot", seq: w.s, line: w.l };
  throw new InvalidArgumentError("cursor", "is not a cursor returned by StreamBatchRequests");
}
