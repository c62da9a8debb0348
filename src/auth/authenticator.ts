/**
 * Turns a call's credentials into a principal (docs/trust.md): the bootstrap
 * admin token, the credential `serve` gives its own dispatcher, a stored
 * token (cached; dropped on NOTIFY fusillade_tokens), or, in local mode, no
 * credential at all from a loopback Host.
 *
 * src/auth/ owns who a call runs as: principals and roles, tokens (pure:
 * making and hashing them), the keyring that seals upstream keys, and this
 * authenticator. It imports nothing of ours: what it needs of stored tokens
 * it declares ({@link TokenStore}), src/storage implements it, and the
 * control plane wires the two.
 */
import { timingSafeEqual } from "node:crypto";
import { isLoopbackHost } from "../domain/loopback.js";
import { DEFAULT_TENANT, type Principal } from "./principal.js";
import { type TokenRecord, tokenHash } from "./tokens.js";

/** Cached lookups expire after this, in case a revocation's notification is missed. */
const CACHE_TTL_MS = 10_000;
/** Most cached lookups (unknown tokens are cached too: a flood of bad ones stays cheap). */
const CACHE_MAX = 10_000;

/**
 * What the authenticator asks of stored tokens. Declared here, implemented
 * by storage (src/storage/api-tokens.ts) and wired by the control plane, so
 * that auth imports nothing above it.
 */
export interface TokenStore {
  /** The live (not revoked) token whose secret hashes to `hash` ({@link tokenHash}), if any. */
  findByHash(hash: Buffer): Promise<TokenRecord | undefined>;
  /**
   * Calls `fn` whenever a token may have been revoked (on any control plane,
   * or notifications may have been missed); returns the unsubscribe.
   */
  onRevoked(fn: () => void): () => void;
}

export interface AuthenticatorOptions {
  /** The bootstrap admin token; undefined: local mode (when listening on loopback). */
  adminToken: string | undefined;
  /** Whether calls without a credential are let in (local mode on a loopback listener). */
  localMode: boolean;
}

/** Why a call was refused: UNAUTHENTICATED, or PERMISSION_DENIED for a Host outside loopback. */
export class AuthError extends Error {
  constructor(
    message: string,
    readonly kind: "unauthenticated" | "permission_denied",
  ) {
    super(message);
    this.name = "AuthError";
  }
}

/** Whether a listen address is loopback only. */
export function isLoopbackListen(host: string): boolean {
  return host === "localhost" || host === "::1" || /^127(\.\d{1,3}){3}$/.test(host);
}

export class Authenticator {
  readonly #cache = new Map<string, { p: Principal | undefined; at: number }>();
  /** In-memory credentials (serve's dispatcher thread), by the SHA-256 of their secret. */
  readonly #extra: Array<{ hash: Buffer; p: Principal }> = [];
  /** The SHA-256 of the bootstrap admin token. */
  readonly #adminHash: Buffer | undefined;
  readonly #unsubscribe: () => void;

  constructor(
    private readonly tokens: TokenStore,
    private readonly options: AuthenticatorOptions,
  ) {
    this.#unsubscribe = tokens.onRevoked(() => this.forget());
    this.#adminHash = options.adminToken === undefined ? undefined : tokenHash(options.adminToken);
  }

  get localMode(): boolean {
    return this.options.localMode;
  }

  /** Drops every cached lookup (a token was revoked). */
  forget(): void {
    this.#cache.clear();
  }

  /** Accepts `secret` as `p` in this process only (not stored). */
  addCredential(secret: string, p: Principal): void {
    this.#extra.push({ hash: tokenHash(secret), p });
  }

  /**
   * The principal of a call with `authorization` and `host` headers; throws
   * {@link AuthError} when there is none.
   */
  async authenticate(authorization: string | null, host: string | null): Promise<Principal> {
    if (authorization === null || authorization === "") {
      if (!this.options.localMode) {
        throw new AuthError(
          "this call needs a token: send `authorization: Bearer <token>` (CLI and dispatcher: --token or FUSILLADE_TOKEN)",
          "unauthenticated",
        );
      }
      if (host === null || !isLoopbackHost(host)) {
        throw new AuthError(
          `the server runs without tokens and accepts calls addressed to a loopback name only, not ${JSON.stringify(host ?? "")}`,
          "permission_denied",
        );
      }
      return { role: "admin", tenant: DEFAULT_TENANT, source: "local" };
    }
    const m = /^Bearer\s+(\S+)\s*$/i.exec(authorization);
    if (!m) {
      throw new AuthError("the authorization header must be `Bearer <token>`", "unauthenticated");
    }
    // One hash per call: compared in constant time, and the key of the stored tokens.
    const hash = tokenHash(m[1]!);
    if (this.#adminHash !== undefined && timingSafeEqual(hash, this.#adminHash)) {
      return { role: "admin", tenant: null, source: "admin-token" };
    }
    for (const e of this.#extra) if (timingSafeEqual(hash, e.hash)) return e.p;
    const p = await this.#lookup(hash);
    if (p === undefined)
      throw new AuthError("the token is not valid (unknown or revoked)", "unauthenticated");
    return p;
  }

  async #lookup(hash: Buffer): Promise<Principal | undefined> {
    const key = hash.toString("base64");
    const now = Date.now();
    const hit = this.#cache.get(key);
    if (hit && now - hit.at < CACHE_TTL_MS) return hit.p;
    const record = await this.tokens.findByHash(hash);
    const p: Principal | undefined = record && {
      role: record.role,
      tenant: record.tenant,
      source: `token ${record.id}`,
    };
    if (this.#cache.size >= CACHE_MAX) this.#cache.clear();
    this.#cache.set(key, { p, at: now });
    return p;
  }

  close(): void {
    this.#unsubscribe();
  }
}
