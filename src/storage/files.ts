/**
 * Files and their templates. A file is written in one transaction: a
 * rejected line rolls everything back (invariant 6).
 */
import type { PoolClient } from "pg";
import { type TenantScope, tenantParam } from "../auth/principal.js";
import type { Keyring } from "../auth/secrets.js";
import { InvalidArgumentError, NotFoundError } from "../domain/errors.js";
import type { TemplateRow } from "../domain/templates.js";
import { dropUnusedKeys, storeKey } from "./api-keys.js";
import type { Db } from "./db.js";
import { decodeTimeIdToken, encodePageToken, isId, pageQuery } from "./pages.js";

export interface FileRecord {
  id: string;
  filename: string;
  templateCount: number;
  sizeBytes: number;
  models: string[];
  createdAt: Date;
}

interface FileRow {
  id: string;
  filename: string;
  template_count: number;
  size_bytes: string;
  models: string[];
  created_at: Date;
  cursor_ts?: string;
}

const FILE_COLUMNS = "id, filename, template_count, size_bytes, models, created_at";

function toFile(r: FileRow): FileRecord {
  return {
    id: r.id,
    filename: r.filename,
    templateCount: r.template_count,
    sizeBytes: Number(r.size_bytes),
    models: r.models,
    createdAt: r.created_at,
  };
}

/**
 * Rows per INSERT. 1,000 rows of unnest() arrays: 50,000 templates insert in
 * about a second; larger chunks gained nothing measurable.
 */
const INSERT_CHUNK_ROWS = 1000;
/** Flush earlier when the chunk's bodies pass this many bytes. */
const INSERT_CHUNK_BYTES = 8 * 1024 * 1024;

/** TemplatesInsertMany: appends rows to a file. Params: file id, then one array per column. */
const TEMPLATES_INSERT_MANY = `
  INSERT INTO request_templates (file_id, line, custom_id, endpoint, method, path, body, model,
    api_key_id)
  SELECT $1, * FROM unnest($2::int[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[], $9::uuid[])`;

async function insertChunk(
  q: PoolClient,
  fileId: string,
  rows: TemplateRow[],
  keyIds: (string | null)[],
): Promise<void> {
  await q.query(TEMPLATES_INSERT_MANY, [
    fileId,
    rows.map((r) => r.line),
    rows.map((r) => r.customId),
    rows.map((r) => r.endpoint),
    rows.map((r) => r.method),
    rows.map((r) => r.path),
    rows.map((r) => r.body),
    rows.map((r) => r.model),
    keyIds,
  ]);
}

export interface NewFile {
  filename: string;
  idempotencyKey: string | null;
  /** The tenant it belongs to (docs/trust.md). */
  tenant: string;
}

/** The file `tenant` created with `key`, if any. */
async function fileByKey(db: Db, tenant: string, key: string): Promise<FileRecord | undefined> {
  const { rows } = await db.query<FileRow>(
    `SELECT ${FILE_COLUMNS} FROM files WHERE tenant = $1 AND idempotency_key = $2`,
    [tenant, key],
  );
  return rows[0] && toFile(rows[0]);
}

/**
 * Stores a file from a stream of validated templates, in one transaction.
 * `sizeBytes` is read once the stream is drained. With an idempotency key
 * already used, returns the earlier file and reads nothing.
 */
export async function createFile(
  db: Db,
  keyring: Keyring,
  meta: NewFile,
  templates: AsyncIterable<TemplateRow>,
  sizeBytes: () => number,
): Promise<{ file: FileRecord; created: boolean }> {
  if (meta.idempotencyKey !== null) {
    const existing = await fileByKey(db, meta.tenant, meta.idempotencyKey);
    if (existing) return { file: existing, created: false };
  }
  try {
    return await db.tx(async (q) => {
      const inserted = await q.query<{ id: string }>(
        `INSERT INTO files (filename, template_count, size_bytes, idempotency_key, tenant)
         VALUES ($1, 0, 0, $2, $3) ON CONFLICT (tenant, idempotency_key) DO NOTHING RETURNING id`,
        [meta.filename, meta.idempotencyKey, meta.tenant],
      );
      const fileId = inserted.rows[0]?.id;
      // A concurrent request with the same key won the race and committed.
      if (fileId === undefined) throw new KeyTaken();
      const customIds = new Map<string, number>();
      const models = new Set<string>();
      let chunk: TemplateRow[] = [];
      let keyIds: (string | null)[] = [];
      let chunkBytes = 0;
      let count = 0;
      // Each distinct API key of the file is stored once, encrypted.
      const storedKeys = new Map<string, string>();
      for await (const row of templates) {
        if (row.customId !== null) {
          const first = customIds.get(row.customId);
          if (first !== undefined) {
            throw new InvalidArgumentError(
              "custom_id",
              `${JSON.stringify(row.customId)} is already used on line ${first}`,
              row.line,
            );
          }
          customIds.set(row.customId, row.line);
        }
        models.add(row.model);
        chunk.push(row);
        let keyId: string | null = null;
        if (row.apiKey !== null) {
          keyId = storedKeys.get(row.apiKey) ?? null;
          if (keyId === null) {
            keyId = await storeKey(q, keyring, fileId, row.apiKey);
            storedKeys.set(row.apiKey, keyId);
          }
        }
        keyIds.push(keyId);
        chunkBytes += row.body.length;
        count++;
        if (chunk.length >= INSERT_CHUNK_ROWS || chunkBytes >= INSERT_CHUNK_BYTES) {
          await insertChunk(q, fileId, chunk, keyIds);
          chunk = [];
          keyIds = [];
          chunkBytes = 0;
        }
      }
      if (chunk.length > 0) await insertChunk(q, fileId, chunk, keyIds);
      if (count === 0) throw new InvalidArgumentError("content", "the file holds no requests");
      const { rows } = await q.query<FileRow>(
        `UPDATE files SET template_count = $2, size_bytes = $3, models = $4
         WHERE id = $1 RETURNING ${FILE_COLUMNS}`,
        [fileId, count, sizeBytes(), [...models].sort()],
      );
      return { file: toFile(rows[0]!), created: true };
    });
  } catch (e) {
    if (!(e instanceof KeyTaken)) throw e;
    const existing = await fileByKey(db, meta.tenant, meta.idempotencyKey!);
    if (!existing) throw new Error("idempotency key conflict without a file");
    return { file: existing, created: false };
  }
}

/** Thrown inside the transaction when another request holds the idempotency key. */
class KeyTaken extends Error {}

/** One file `scope` may see, or NotFoundError (the same for another tenant's). */
export async function getFile(db: Db, scope: TenantScope, id: string): Promise<FileRecord> {
  if (!isId(id)) throw new NotFoundError("file", id);
  const { rows } = await db.query<FileRow>(
    `SELECT ${FILE_COLUMNS} FROM files WHERE id = $1 AND ($2::text IS NULL OR tenant = $2)`,
    [id, tenantParam(scope)],
  );
  if (!rows[0]) throw new NotFoundError("file", id);
  return toFile(rows[0]);
}

/** Files `scope` may see, newest first. */
export async function listFiles(
  db: Db,
  scope: TenantScope,
  limit: number,
  pageToken: string,
): Promise<{ files: FileRecord[]; nextPageToken: string }> {
  const after = decodeTimeIdToken(pageToken);
  const { rows } = await pageQuery(() =>
    db.query<FileRow>(
      `SELECT ${FILE_COLUMNS}, created_at::text AS cursor_ts FROM files
       WHERE ($1::timestamptz IS NULL OR (created_at, id) < ($1::timestamptz, $2::uuid))
         AND ($4::text IS NULL OR tenant = $4)
       ORDER BY created_at DESC, id DESC LIMIT $3`,
      [after?.[0] ?? null, after?.[1] ?? null, limit + 1, tenantParam(scope)],
    ),
  );
  const page = rows.slice(0, limit);
  const last = page[page.length - 1];
  return {
    files: page.map(toFile),
    nextPageToken: rows.length > limit && last ? encodePageToken([last.cursor_ts!, last.id]) : "",
  };
}

/** Deletes a file and its templates; its batches keep their own copies. */
export async function deleteFile(db: Db, scope: TenantScope, id: string): Promise<void> {
  if (!isId(id)) throw new NotFoundError("file", id);
  const rowCount = await db.tx(async (q) => {
    const res = await q.query(
      `DELETE FROM files WHERE id = $1 AND ($2::text IS NULL OR tenant = $2)`,
      [id, tenantParam(scope)],
    );
    // Its API keys stay while a batch of it does.
    await dropUnusedKeys(q, id);
    return res.rowCount;
  });
  if (rowCount === 0) throw new NotFoundError("file", id);
}
