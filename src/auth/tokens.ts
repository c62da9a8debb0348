/**
 * API tokens (docs/trust.md): `fus_` + 32 random bytes, base64url. Only the
 * SHA-256 is stored (src/storage/api-tokens.ts); the token is shown once,
 * when it is made. Pure: no I/O.
 */
import { createHash, randomBytes } from "node:crypto";
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

/** A stored token as the authenticator and AdminService see it (never its secret nor hash). */
export interface TokenRecord {
  id: string;
  name: string;
  role: Role;
  tenant: string | null;
  createdAt: Date;
  revokedAt: Date | null;
}
