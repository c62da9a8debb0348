/**
 * Files and their templates. A file is checked whole before anything is
 * written (./template-spool.ts), then written in one transaction: a rejected
 * line changes nothing (invariant 6).
 */
import { createReadStream } from "node:fs";
import { pipeline } from "node:stream/promises";
import type { PoolClient } from "pg";
import copyStreams from "pg-copy-streams";
import { type TenantScope, tenantParam } from "../auth/principal.js";
import type { Keyring } from "../auth/secrets.js";
import { NotFoundError } from "../domain/errors.js";
import { dropUnusedKeys, storeKey } from "./api-keys.js";
import { CopyLane } from "./copy-lane.js";
import type { Db } from "./db.js";
import { decodeTimeIdToken, encodePageToken, isId, pageQuery } from "./pages.js";
import { SPOOL_COLUMNS, type TemplateSpool } from "./template-spool.js";

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

const COPY_TEMPLATES = `COPY request_templates (${SPOOL_COLUMNS}) FROM STDIN`;

/**
 * A lane (./copy-lane.ts) for the upload of file `fileId`: its row is
 * inserted first (the templates' foreign key needs it), with its counts set
 * at commit. It does not open when `meta`'s idempotency key is taken.
 */
export function uploadLane(db: Db, meta: NewFile, fileId: string): CopyLane {
  return new CopyLane(
    db.pool,
    async (q) => {
      const { rowCount } = await q.query(
        `INSERT INTO files (id, filename, template_count, size_bytes, idempotency_key, tenant)
         VALUES ($1, $2, 0, 0, $3, $4) ON CONFLICT (tenant, idempotency_key) DO NOTHING`,
        [fileId, meta.filename, meta.idempotencyKey, meta.tenant],
      );
      return rowCount === 1;
    },
    COPY_TEMPLATES,
  );
}

/**
 * Stores a spooled file (./template-spool.ts) in one transaction: its row,
 * its API keys (encrypted), and its templates through COPY; or commits
 * `lane`, when it is open and holds them all already. With an idempotency key
 * already used, returns the earlier file and stores nothing; once `signal`
 * has aborted, throws its reason and stores nothing.
 */
export async function createFile(
  db: Db,
  keyring: Keyring,
  meta: NewFile,
  spool: TemplateSpool,
  sizeBytes: number,
  signal?: AbortSignal,
  lane?: CopyLane,
): Promise<{ file: FileRecord; created: boolean }> {
  if (lane?.isOpen) {
    const file = await lane.commit(async (q) => {
      await storeKeys(q, keyring, spool);
      const { rows } = await q.query<FileRow>(
        `UPDATE files SET template_count = $2, size_bytes = $3, models = $4
         WHERE id = $1 RETURNING ${FILE_COLUMNS}`,
        [spool.fileId, spool.rows, sizeBytes, spool.models],
      );
      signal?.throwIfAborted();
      return toFile(rows[0]!);
    });
    if (file !== undefined) return { file, created: true };
  }
  if (meta.idempotencyKey !== null) {
    const existing = await fileByKey(db, meta.tenant, meta.idempotencyKey);
    if (existing) return { file: existing, created: false };
  }
  try {
    return await db.tx(async (q) => {
      const { rows } = await q.query<FileRow>(
        `INSERT INTO files (id, filename, template_count, size_bytes, models, idempotency_key, tenant)
         VALUES ($1, $2, $3, $4, $5, $6, $7)
         ON CONFLICT (tenant, idempotency_key) DO NOTHING RETURNING ${FILE_COLUMNS}`,
        [
          spool.fileId,
          meta.filename,
          spool.rows,
          sizeBytes,
          spool.models,
          meta.idempotencyKey,
          meta.tenant,
        ],
      );
      // A concurrent request with the same key won the race and committed.
      if (rows[0] === undefined) throw new KeyTaken();
      await storeKeys(q, keyring, spool);
      await pipeline(createReadStream(spool.path), q.query(copyStreams.from(COPY_TEMPLATES)));
      // Checked last, before COMMIT: a client that went away while its rows
      // were being stored gets no file it was told failed.
      signal?.throwIfAborted();
      return { file: toFile(rows[0]), created: true };
    });
  } catch (e) {
    if (!(e instanceof KeyTaken)) throw e;
    const existing = await fileByKey(db, meta.tenant, meta.idempotencyKey!);
    if (!existing) throw new Error("idempotency key conflict without a file");
    return { file: existing, created: false };
  }
}

/** The spool's API keys, encrypted, under the ids its rows carry. */
async function storeKeys(q: PoolClient, keyring: Keyring, spool: TemplateSpool): Promise<void> {
  for (const [plaintext, id] of spool.keys) {
    await storeKey(q, keyring, spool.fileId, plaintext, id);
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
