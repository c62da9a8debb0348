/**
 * API tokens as stored (docs/trust.md): only the SHA-256 of a token is kept.
 * Plain CRUD through the `api_tokens` entity; the authenticator reaches it
 * through the {@link TokenStore} it declares ({@link tokenStore}).
 */
import { IsNull } from "typeorm";
import type { TokenStore } from "../auth/authenticator.js";
import type { Role } from "../auth/principal.js";
import { newToken, type TokenRecord, tokenHash } from "../auth/tokens.js";
import type { Db } from "./db.js";
import { ApiTokenEntity } from "./entities/index.js";
import { type Notifications, TOKENS_CHANNEL } from "./notifications.js";

/** The record of a row: never its hash (the column is not selected anyway). */
function toRecord(e: ApiTokenEntity): TokenRecord {
  return {
    id: e.id,
    name: e.name,
    role: e.role as Role,
    tenant: e.tenant,
    createdAt: e.createdAt,
    revokedAt: e.revokedAt,
  };
}

/** Stores a new token; returns it (the only time it is seen) and its record. */
export async function createToken(
  db: Db,
  t: { name: string; role: Role; tenant: string | null },
): Promise<{ token: string; record: TokenRecord }> {
  const token = newToken();
  const tokens = db.orm.getRepository(ApiTokenEntity);
  const { identifiers } = await tokens.insert({ ...t, hash: tokenHash(token) });
  const record = await tokens.findOneByOrFail({ id: identifiers[0]!.id as string });
  return { token, record: toRecord(record) };
}

/** The live (not revoked) token whose secret hashes to `hash` (auth's `tokenHash`), if any. */
export async function findTokenByHash(db: Db, hash: Buffer): Promise<TokenRecord | undefined> {
  const e = await db.orm.getRepository(ApiTokenEntity).findOneBy({ hash, revokedAt: IsNull() });
  return e === null ? undefined : toRecord(e);
}

/** Every token, newest first (never the secret). */
export async function listTokens(db: Db): Promise<TokenRecord[]> {
  const rows = await db.orm
    .getRepository(ApiTokenEntity)
    .find({ order: { createdAt: "DESC", id: "DESC" } });
  return rows.map(toRecord);
}

/**
 * Revokes a token (a second revocation keeps the first time) and tells every
 * control plane to forget cached lookups: the NOTIFY is sent at the commit of
 * the same transaction. Undefined when no token has that id.
 */
export function revokeToken(db: Db, id: string): Promise<TokenRecord | undefined> {
  return db.orm.transaction(async (m) => {
    const tokens = m.getRepository(ApiTokenEntity);
    await tokens.update({ id, revokedAt: IsNull() }, { revokedAt: () => "now()" });
    const e = await tokens.findOneBy({ id });
    if (e === null) return undefined;
    await m.query("SELECT pg_notify($1, '')", [TOKENS_CHANNEL]);
    return toRecord(e);
  });
}

/** The authenticator's view of the tokens: lookups in `db`, revocations from NOTIFY. */
export function tokenStore(db: Db, notifications: Notifications): TokenStore {
  return {
    findByHash: (hash) => findTokenByHash(db, hash),
    // A revocation anywhere, or a LISTEN reconnect ("*": notifications may have been missed).
    onRevoked: (fn) => notifications.on(TOKENS_CHANNEL, () => fn()),
  };
}
