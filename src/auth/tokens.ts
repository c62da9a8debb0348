/**
 * API tokens (docs/trust.md): `fus_` + 32 random bytes, base64url. Only the
 * SHA-256 is stored; the token is shown once, when it is made.
 */
import { createHash, randomBytes } from "node:crypto";
import type { Queryable } from "../storage/db.js";
import type { Role } from "./principal.js";

const PREFIX = "fus_";

/** A new random token. */
export function newToken(): string {
  return PREFIX + randomBytes(32).toString("base64url");
}

/** The stored form of a token. */
export function tokenHash(token: string): Buffer {
  return createHash("sha256").update(token, "utf8").digest();
}

export interface TokenRecord {
  id: string;
  name: string;
  role: Role;
  tenant: string | null;
  createdAt: Date;
  revokedAt: Date | null;
}

interface TokenRow {
  id: string;
  name: string;
  role: Role;
  tenant: string | null;
  created_at: Date;
  revoked_at: Date | null;
}

const COLUMNS = "id, name, role, tenant, created_at, revoked_at";

function toRecord(r: TokenRow): TokenRecord {
  return {
    id: r.id,
    name: r.name,
    role: r.role,
    tenant: r.tenant,
    createdAt: r.created_at,
    revokedAt: r.revoked_at,
  };
}

/** Stores a new token; returns it (the only time it is seen) and its record. */
export async function createToken(
  db: Queryable,
  t: { name: string; role: Role; tenant: string | null },
): Promise<{ token: string; record: TokenRecord }> {
  const token = newToken();
  const { rows } = await db.query<TokenRow>(
    `INSERT INTO api_tokens (name, role, tenant, hash) VALUES ($1, $2, $3, $4) RETURNING ${COLUMNS}`,
    [t.name, t.role, t.tenant, tokenHash(token)],
  );
  return { token, record: toRecord(rows[0]!) };
}

/** The live (not revoked) token whose secret hashes to `hash` ({@link tokenHash}), if any. */
export async function findTokenByHash(
  db: Queryable,
  hash: Buffer,
): Promise<TokenRecord | undefined> {
  const { rows } = await db.query<TokenRow>(
    `SELECT ${COLUMNS} FROM api_tokens WHERE hash = $1 AND revoked_at IS NULL`,
    [hash],
  );
  return rows[0] ? toRecord(rows[0]) : undefined;
}

/** Every token, newest first (never the secret). */
export async function listTokens(db: Queryable): Promise<TokenRecord[]> {
  const { rows } = await db.query<TokenRow>(
    `SELECT ${COLUMNS} FROM api_tokens ORDER BY created_at DESC, id DESC`,
  );
  return rows.map(toRecord);
}

/**
 * Revokes a token and tells every control plane to forget cached lookups
 * (NOTIFY in the same transaction). Undefined when no token has that id.
 */
export async function revokeToken(db: Queryable, id: string): Promise<TokenRecord | undefined> {
  const { rows } = await db.query<TokenRow>(
    `WITH r AS (
       UPDATE api_tokens SET revoked_at = coalesce(revoked_at, now()) WHERE id = $1
       RETURNING ${COLUMNS}
     ), n AS (SELECT pg_notify('fusillade_tokens', '') FROM r)
     SELECT r.* FROM r LEFT JOIN n ON true`,
    [id],
  );
  return rows[0] ? toRecord(rows[0]) : undefined;
}
