/** Reads behind GetBatchResults: a batch's terminal requests, a page at a time. */
import type { RequestState } from "../domain/states.js";
import type { Db } from "./db.js";
import {
  byteCappedPage,
  type CappedPageColumns,
  cappedPageRows,
  indexOrderedPage,
} from "./pages.js";

/** What a result line needs of a request (never the API key or the request body). */
export interface ResultRow {
  id: string;
  line: number;
  custom_id: string | null;
  state: RequestState;
  response_status: number | null;
  response_headers: Record<string, string> | null;
  response_body: Buffer | null;
  error_code: string | null;
  error_message: string | null;
}

/**
 * RequestsTerminalPage: a batch's requests in `states` (terminal ones),
 * after `afterLine`, in line order, capped by bytes (byteCappedPage: the
 * bodies past the cap are never read out of Postgres). Params: batch id,
 * states, after line, limit + 1, byte cap. Uses requests_batch_unsettled
 * (batch_id, state, line) when `states` leaves out completed, else the
 * (batch_id, line) unique index (completed rows are most of a batch); run
 * held to index scans (indexOrderedPage).
 */
const REQUESTS_TERMINAL_PAGE = byteCappedPage(
  `SELECT id, line, custom_id, state, response_status, response_headers, response_body,
     error_code, error_message
   FROM requests
   WHERE batch_id = $1 AND state = ANY($2::text[]) AND line > $3
   ORDER BY line LIMIT $4`,
  "line",
  "$5",
);

/** One page of terminal requests, whether more follow it, and its bytes (as capped). */
export interface ResultPage {
  rows: ResultRow[];
  more: boolean;
  /** The bytes of its bodies and error messages, as byteCappedPage counts them. */
  bytes: number;
}

/**
 * One page of a batch's requests in `states`, after line `afterLine`, in
 * line order: at most `limit` rows whose bodies and error messages add up
 * to at most `maxBytes` (always at least one row, however large).
 */
export async function terminalRequestsPage(
  db: Pick<Db, "tx">,
  batchId: string,
  states: readonly RequestState[],
  afterLine: number,
  limit: number,
  maxBytes: number,
): Promise<ResultPage> {
  const { rows } = await indexOrderedPage<ResultRow & CappedPageColumns & { page_bytes: string }>(
    db,
    REQUESTS_TERMINAL_PAGE,
    [batchId, states, afterLine, limit + 1, maxBytes],
  );
  const { page, more } = cappedPageRows(rows, limit);
  // A sum over Postgres integers comes back as text.
  return { rows: page, more, bytes: Number(page[page.length - 1]?.page_bytes ?? 0) };
}
