/**
 * The reads the OpenAI-compatible API needs beyond BatchService's
 * (docs/openai-api.md): a batch's endpoint, an input file's lines, the page
 * position of an `after` id, and whether a file's urls match an endpoint.
 */
import { type TenantScope, tenantParam } from "../auth/principal.js";
import type { Db } from "./db.js";
import { encodePageToken, isId } from "./pages.js";

/**
 * BatchEndpoints: the url (path) of each batch's first request, which every
 * request of an OpenAI batch shares. Params: batch ids. Uses the (batch_id,
 * line) unique index, one probe per batch.
 */
const BATCH_ENDPOINTS = `
  SELECT b.id, r.path FROM unnest($1::uuid[]) AS b(id)
  CROSS JOIN LATERAL (
    SELECT path FROM requests WHERE batch_id = b.id ORDER BY line LIMIT 1
  ) r`;

/** The endpoint (first request's url) of each of `ids`. */
export async function batchEndpoints(db: Db, ids: readonly string[]): Promise<Map<string, string>> {
  if (ids.length === 0) return new Map();
  const { rows } = await db.query<{ id: string; path: string }>(BATCH_ENDPOINTS, [ids]);
  return new Map(rows.map((r) => [r.id, r.path]));
}

/**
 * The first line of file `fileId` whose url is not `path`, or undefined
 * (OpenAI requires every line's url to be the batch's endpoint).
 */
export async function firstOtherUrl(
  db: Db,
  fileId: string,
  path: string,
): Promise<{ line: number; url: string } | undefined> {
  const { rows } = await db.query<{ line: number; path: string }>(
    `SELECT line, path FROM request_templates WHERE file_id = $1 AND path <> $2 ORDER BY line LIMIT 1`,
    [fileId, path],
  );
  return rows[0] && { line: rows[0].line, url: rows[0].path };
}

/**
 * The page token that lists rows of `table` after row `id` (newest first),
 * as BatchService's tokens do; undefined when `scope` cannot see the row.
 */
export async function pageTokenAfter(
  db: Db,
  table: "files" | "batches",
  scope: TenantScope,
  id: string,
): Promise<string | undefined> {
  if (!isId(id)) return undefined;
  const { rows } = await db.query<{ ts: string }>(
    `SELECT created_at::text AS ts FROM ${table} WHERE id = $1 AND ($2::text IS NULL OR tenant = $2)`,
    [id, tenantParam(scope)],
  );
  return rows[0] && encodePageToken([rows[0].ts, id]);
}

/** A stored template as an OpenAI batch line needs it. */
export interface TemplateLineRow {
  line: number;
  custom_id: string | null;
  method: string;
  path: string;
  body: string;
}

/**
 * TemplatesPage: a file's templates after `afterLine`, in line order.
 * Params: file id, after line, limit. Uses the (file_id, line) primary key.
 */
const TEMPLATES_PAGE = `
  SELECT line, custom_id, method, path, body FROM request_templates
  WHERE file_id = $1 AND line > $2 ORDER BY line LIMIT $3`;

/** One page of file `fileId`'s templates (the caller checked the file is visible). */
export async function templatesPage(
  db: Db,
  fileId: string,
  afterLine: number,
  limit: number,
): Promise<TemplateLineRow[]> {
  const { rows } = await db.query<TemplateLineRow>(TEMPLATES_PAGE, [fileId, afterLine, limit]);
  return rows;
}
