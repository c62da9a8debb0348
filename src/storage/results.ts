/** Reads behind GetBatchResults: a batch's terminal requests, a page at a time. */
import type { RequestState } from "../domain/states.js";
import type { Db } from "./db.js";

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
 * after `afterLine`, in line order. Params: batch id, states, after line,
 * limit. Uses requests_batch_state (batch_id, state, line).
 */
const REQUESTS_TERMINAL_PAGE = `
  SELECT id, line, custom_id, state, response_status, response_headers, response_body,
    error_code, error_message
  FROM requests
  WHERE batch_id = $1 AND state = ANY($2::text[]) AND line > $3
  ORDER BY line LIMIT $4`;

/** One page of a batch's requests in `states`, after line `afterLine`, in line order. */
export async function terminalRequestsPage(
  db: Db,
  batchId: string,
  states: readonly RequestState[],
  afterLine: number,
  limit: number,
): Promise<ResultRow[]> {
  const { rows } = await db.query<ResultRow>(REQUESTS_TERMINAL_PAGE, [
    batchId,
    states,
    afterLine,
    limit,
  ]);
  return rows;
}
