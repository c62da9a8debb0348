/** Reads of a batch's requests, for clients. */
import type { RequestState } from "../domain/states.js";
import type { Db } from "./db.js";
import {
  byteCappedPage,
  type CappedPageColumns,
  cappedPageRows,
  decodeLineToken,
  encodePageToken,
  indexOrderedPage,
  isId,
} from "./pages.js";

export interface RequestRecord {
  id: string;
  batchId: string;
  line: number;
  customId: string | null;
  model: string;
  state: RequestState;
  attempt: number;
  method: string;
  url: string;
  responseStatus: number | null;
  responseHeaders: Record<string, string> | null;
  /** The body as the upstream sent it (pg reads bytea as a Buffer). */
  responseBody: Uint8Array | null;
  errorCode: string | null;
  errorMessage: string | null;
  notBefore: Date | null;
  createdAt: Date;
  updatedAt: Date;
  finishedAt: Date | null;
}

export interface RequestRow {
  id: string;
  batch_id: string;
  line: number;
  custom_id: string | null;
  model: string;
  state: RequestState;
  attempt: number;
  method: string;
  endpoint: string;
  path: string;
  response_status: number | null;
  response_headers: Record<string, string> | null;
  response_body: Buffer | null;
  error_code: string | null;
  error_message: string | null;
  not_before: Date | null;
  created_at: Date;
  updated_at: Date;
  finished_at: Date | null;
}

/** The columns clients may see: never api_key. */
export const REQUEST_COLUMNS = `id, batch_id, line, custom_id, model, state, attempt, method,
  endpoint, path, response_status, response_headers, response_body, error_code, error_message,
  not_before, created_at, updated_at, finished_at`;

/** Maps a requests row to a record. */
export function toRequest(r: RequestRow): RequestRecord {
  return {
    id: r.id,
    batchId: r.batch_id,
    line: r.line,
    customId: r.custom_id,
    model: r.model,
    state: r.state,
    attempt: r.attempt,
    method: r.method,
    url: r.endpoint + r.path,
    responseStatus: r.response_status,
    responseHeaders: r.response_headers,
    responseBody: r.response_body,
    errorCode: r.error_code,
    errorMessage: r.error_message,
    notBefore: r.not_before,
    createdAt: r.created_at,
    updatedAt: r.updated_at,
    finishedAt: r.finished_at,
  };
}

/**
 * A batch's requests in line order, optionally only those in `states` and
 * of `models`; see byteCappedPage.
 */
export async function listRequests(
  db: Db,
  opts: {
    batchId: string;
    states: RequestState[];
    /** Only these models, when not empty. */
    models?: string[];
    limit: number;
    maxBytes: number;
    pageToken: string;
  },
): Promise<{ requests: RequestRecord[]; nextPageToken: string }> {
  const after = decodeLineToken(opts.pageToken);
  if (!isId(opts.batchId)) return { requests: [], nextPageToken: "" };
  const { rows } = await indexOrderedPage<RequestRow & CappedPageColumns>(
    db,
    byteCappedPage(
      `SELECT ${REQUEST_COLUMNS} FROM requests
       WHERE batch_id = $1 AND line > $2 AND (cardinality($3::text[]) = 0 OR state = ANY($3::text[]))
         AND (cardinality($6::text[]) = 0 OR model = ANY($6::text[]))
       ORDER BY line LIMIT $4`,
      "line",
      "$5",
    ),
    [opts.batchId, after ?? 0, opts.states, opts.limit + 1, opts.maxBytes, opts.models ?? []],
  );
  const { page, more } = cappedPageRows(rows, opts.limit);
  const last = page[page.length - 1];
  return {
    requests: page.map(toRequest),
    nextPageToken: more && last ? encodePageToken([last.line]) : "",
  };
}
