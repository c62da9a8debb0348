/** Encrypted upstream API keys (api_keys; src/auth/secrets.ts, docs/trust.md). */
import { type Keyring, PLAIN_KEY_ID, type Sealed, SecretKeyError } from "../auth/secrets.js";
import type { Db, Queryable } from "./db.js";

interface KeyRow {
  id: string;
  key_id: string;
  iv: Buffer;
  sealed: Buffer;
}

const sealedOf = (r: KeyRow): Sealed => ({ keyId: r.key_id, iv: r.iv, sealed: r.sealed });

/**
 * Stores `plaintext` of file `fileId` (null: of a model route) encrypted under
 * the current key, under `id` when given (else a new one); returns its id.
 */
export async function storeKey(
  q: Queryable,
  keyring: Keyring,
  fileId: string | null,
  plaintext: string,
  id: string | null = null,
): Promise<string> {
  const s = keyring.encrypt(plaintext);
  const { rows } = await q.query<{ id: string }>(
    `INSERT INTO api_keys (id, file_id, key_id, iv, sealed)
     VALUES (coalesce($5::uuid, gen_random_uuid()), $1, $2, $3, $4) RETURNING id`,
    [fileId, s.keyId, s.iv, s.sealed, id],
  );
  return rows[0]!.id;
}

/**
 * Deletes the stored keys of file `fileId` once nothing can use them: the
 * file is gone and no batch of it is left (batches keep their file id).
 */
export async function dropUnusedKeys(q: Queryable, fileId: string | null): Promise<void> {
  if (fileId === null) return;
  await q.query(
    `DELETE FROM api_keys WHERE file_id = $1
       AND NOT EXISTS (SELECT 1 FROM files WHERE id = $1)
       AND NOT EXISTS (SELECT 1 FROM batches WHERE file_id = $1)`,
    [fileId],
  );
}

/**
 * The plaintexts of `ids` (those that decrypt); `failed` names the ones
 * whose key this process does not have, with why.
 */
export async function loadKeys(
  q: Queryable,
  keyring: Keyring,
  ids: readonly string[],
): Promise<{ keys: Map<string, string>; failed: Map<string, string> }> {
  const keys = new Map<string, string>();
  const failed = new Map<string, string>();
  if (ids.length === 0) return { keys, failed };
  const { rows } = await q.query<KeyRow>(
    `SELECT id, key_id, iv, sealed FROM api_keys WHERE id = ANY($1::uuid[])`,
    [ids],
  );
  for (const r of rows) {
    try {
      keys.set(r.id, keyring.decrypt(sealedOf(r)));
    } catch (e) {
      if (!(e instanceof SecretKeyError)) throw e;
      failed.set(r.id, e.message);
    }
  }
  for (const id of ids) if (!keys.has(id) && !failed.has(id)) failed.set(id, "the API key is gone");
  return { keys, failed };
}

/** Rows re-encrypted per statement by {@link reencrypt}. */
const REENCRYPT_CHUNK = 500;

/**
 * Re-encrypts under the current key every stored key that is not (all of
 * them, or only plaintext ones with `onlyPlain`). Returns how many changed;
 * throws SecretKeyError (changing nothing more) at a key this process cannot read.
 */
export async function reencrypt(db: Db, keyring: Keyring, onlyPlain = false): Promise<number> {
  let changed = 0;
  for (;;) {
    const n = await db.tx(async (q) => {
      const { rows } = await q.query<KeyRow>(
        `SELECT id, key_id, iv, sealed FROM api_keys
         WHERE ${onlyPlain ? "key_id = $1" : "key_id <> $1"}
         ORDER BY id LIMIT ${REENCRYPT_CHUNK} FOR UPDATE SKIP LOCKED`,
        [onlyPlain ? PLAIN_KEY_ID : keyring.currentId],
      );
      for (const r of rows) {
        const s = keyring.encrypt(keyring.decrypt(sealedOf(r)));
        await q.query(`UPDATE api_keys SET key_id = $2, iv = $3, sealed = $4 WHERE id = $1`, [
          r.id,
          s.keyId,
          s.iv,
          s.sealed,
        ]);
      }
      return rows.length;
    });
    changed += n;
    if (n < REENCRYPT_CHUNK) return changed;
  }
}

/** How many stored keys each key id encrypts (for `secrets status`). */
export async function keyCounts(db: Db): Promise<Array<{ keyId: string; count: number }>> {
  const { rows } = await db.query<{ key_id: string; n: number }>(
    `SELECT key_id, count(*)::int AS n FROM api_keys GROUP BY key_id ORDER BY key_id`,
  );
  return rows.map((r) => ({ keyId: r.key_id, count: r.n }));
}
