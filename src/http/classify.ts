/**
 * Response and error classification for the executor: which thrown errors mean
 * what (a table, per STYLE §4), which response headers we keep, and how a
 * request is named in messages without leaking its secrets.
 */

import type { FailureCode } from "../domain/outcome.js";

/** What a transport error means for the attempt. */
export interface ErrorClass {
  code: Extract<FailureCode, "timeout" | "network_error">;
  retriable: boolean;
}

const NETWORK_RETRIABLE: ErrorClass = { code: "network_error", retriable: true };
const NETWORK_FATAL: ErrorClass = { code: "network_error", retriable: false };
const TIMEOUT: ErrorClass = { code: "timeout", retriable: true };

/**
 * Node (libuv, DNS, TLS) and undici error codes. Unknown codes fall back to
 * {@link UNKNOWN_ERROR_CLASS}. "Fatal" rows are problems with the request or
 * our configuration that another attempt would hit the same way.
 */
export const ERROR_CODE_TABLE: Readonly<Record<string, ErrorClass>> = Object.freeze({
  // connection could not be made or broke
  ECONNREFUSED: NETWORK_RETRIABLE,
  ECONNRESET: NETWORK_RETRIABLE,
  ECONNABORTED: NETWORK_RETRIABLE,
  EPIPE: NETWORK_RETRIABLE,
  EHOSTUNREACH: NETWORK_RETRIABLE,
  EHOSTDOWN: NETWORK_RETRIABLE,
  ENETUNREACH: NETWORK_RETRIABLE,
  ENETDOWN: NETWORK_RETRIABLE,
  EPROTO: NETWORK_RETRIABLE,
  ETIMEDOUT: TIMEOUT, // kernel-level TCP timeout
  // DNS: NXDOMAIN is usually permanent, but resolvers also return it briefly
  // during record changes; retries are bounded, so treat it as transient.
  ENOTFOUND: NETWORK_RETRIABLE,
  EAI_AGAIN: NETWORK_RETRIABLE,
  // undici
  UND_ERR_SOCKET: NETWORK_RETRIABLE, // "other side closed" and friends
  UND_ERR_CLOSED: NETWORK_RETRIABLE, // the pool was closed under us (shutdown)
  UND_ERR_DESTROYED: NETWORK_RETRIABLE,
  UND_ERR_INFO: NETWORK_RETRIABLE,
  UND_ERR_RES_CONTENT_LENGTH_MISMATCH: NETWORK_RETRIABLE,
  UND_ERR_CONNECT_TIMEOUT: TIMEOUT,
  UND_ERR_HEADERS_TIMEOUT: TIMEOUT,
  UND_ERR_BODY_TIMEOUT: TIMEOUT,
  UND_ERR_HEADERS_OVERFLOW: NETWORK_FATAL,
  UND_ERR_INVALID_ARG: NETWORK_FATAL,
  UND_ERR_NOT_SUPPORTED: NETWORK_FATAL,
  UND_ERR_REQ_CONTENT_LENGTH_MISMATCH: NETWORK_FATAL,
  ERR_INVALID_URL: NETWORK_FATAL,
  ERR_INVALID_ARG_TYPE: NETWORK_FATAL,
  // TLS verification: a configuration problem, not a transient one
  CERT_HAS_EXPIRED: NETWORK_FATAL,
  DEPTH_ZERO_SELF_SIGNED_CERT: NETWORK_FATAL,
  SELF_SIGNED_CERT_IN_CHAIN: NETWORK_FATAL,
  UNABLE_TO_VERIFY_LEAF_SIGNATURE: NETWORK_FATAL,
  ERR_TLS_CERT_ALTNAME_INVALID: NETWORK_FATAL,
  // ours: the endpoint resolves to an address the outbound allow-list refuses
  FUSILLADE_ENDPOINT_DENIED: NETWORK_FATAL,
});

/** An error we cannot place: most likely transport trouble; retries are bounded. */
export const UNKNOWN_ERROR_CLASS: ErrorClass = NETWORK_RETRIABLE;

/** The first known error code in `err`, its `cause` chain, or an AggregateError's members. */
export function findErrorCode(err: unknown, depth = 0): string | undefined {
  if (depth > 5 || typeof err !== "object" || err === null) return undefined;
  const code = (err as { code?: unknown }).code;
  if (typeof code === "string" && code in ERROR_CODE_TABLE) return code;
  const inner = [(err as { cause?: unknown }).cause];
  if (err instanceof AggregateError) inner.push(...err.errors);
  for (const e of inner) {
    const found = findErrorCode(e, depth + 1);
    if (found !== undefined) return found;
  }
  return typeof code === "string" ? code : undefined;
}

/** Classifies a thrown transport error by its code. */
export function classifyError(err: unknown): ErrorClass & { errorCode: string | undefined } {
  const errorCode = findErrorCode(err);
  const cls = (errorCode !== undefined && ERROR_CODE_TABLE[errorCode]) || UNKNOWN_ERROR_CLASS;
  return { ...cls, errorCode };
}

/** A one-line description of an error: its message, or each member's for an AggregateError. */
export function describeError(err: unknown): string {
  if (err instanceof AggregateError && err.errors.length > 0) {
    return err.errors.map(describeError).join("; ");
  }
  if (err instanceof Error) return err.message || err.name;
  return String(err);
}

const KEPT_HEADERS: ReadonlySet<string> = new Set([
  "content-type",
  "x-request-id",
  "request-id",
  "retry-after",
  "retry-after-ms",
]);
const KEPT_HEADER_PREFIXES: readonly string[] = ["openai-", "x-ratelimit-", "anthropic-ratelimit-"];

/** Response headers worth storing with an outcome (ids, rate-limit state); names lowercased. */
export function keepHeaders(
  headers: Record<string, string | string[] | undefined>,
): Record<string, string> {
  const kept: Record<string, string> = {};
  for (const [rawName, value] of Object.entries(headers)) {
    if (value === undefined) continue;
    const name = rawName.toLowerCase();
    if (KEPT_HEADERS.has(name) || KEPT_HEADER_PREFIXES.some((p) => name.startsWith(p))) {
      kept[name] = Array.isArray(value) ? value.join(", ") : value;
    }
  }
  return kept;
}

/** Where a request goes, split for undici, plus a printable name free of query and userinfo. */
export interface Target {
  origin: string;
  /** Path and query, as sent. */
  path: string;
  /** `METHOD origin/path`, without the query string (which may carry keys). */
  label: string;
}

/** Parses the request URL; undefined when it is not an absolute http(s) URL. */
export function parseTarget(method: string, url: string): Target | undefined {
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    return undefined;
  }
  if (parsed.protocol !== "http:" && parsed.protocol !== "https:") return undefined;
  return {
    origin: parsed.origin,
    path: `${parsed.pathname}${parsed.search}`,
    label: `${method} ${parsed.origin}${parsed.pathname}`,
  };
}

/** Shortest secret-looking fragment we scrub; shorter values are not credentials. */
const MIN_SCRUB_LENGTH = 8;
/** Request headers whose values are never secret (and common in messages). */
const NON_SECRET_HEADERS: ReadonlySet<string> = new Set([
  "accept",
  "content-length",
  "content-type",
  "user-agent",
  // ours: ids the upstream may echo back on purpose
  "x-fusillade-request-id",
  "x-fusillade-custom-id",
  "x-fusillade-batch-id",
  "traceparent",
]);

/**
 * Returns a function that removes request header values (and their
 * whitespace-separated parts, e.g. the token of `Bearer <token>`) from a
 * message. Error texts from lower layers should never contain them; this makes
 * sure an API key cannot reach a stored error or a log line even if one did.
 */
export function headerScrubber(
  headers: ReadonlyArray<readonly [string, string]>,
): (s: string) => string {
  const ordered = secretsOf(headers);
  return (s) => ordered.reduce((acc, secret) => acc.split(secret).join("[redacted]"), s);
}

const REDACTED = Buffer.from("[redacted]");

/** {@link headerScrubber} for bytes (bodies); returns `b` itself when it holds no secret. */
export function bodyScrubber(
  headers: ReadonlyArray<readonly [string, string]>,
): (b: Uint8Array) => Uint8Array {
  const secrets = secretsOf(headers).map((s) => Buffer.from(s));
  return (b) => {
    let buf = Buffer.from(b.buffer, b.byteOffset, b.byteLength);
    let changed = false;
    for (const secret of secrets) {
      let at = buf.indexOf(secret);
      if (at < 0) continue;
      const parts: Buffer[] = [];
      let from = 0;
      while (at >= 0) {
        parts.push(buf.subarray(from, at), REDACTED);
        from = at + secret.length;
        at = buf.indexOf(secret, from);
      }
      parts.push(buf.subarray(from));
      buf = Buffer.concat(parts);
      changed = true;
    }
    return changed ? new Uint8Array(buf.buffer, buf.byteOffset, buf.byteLength) : b;
  };
}

/** Header values (and their words) worth hiding, longest first. */
function secretsOf(headers: ReadonlyArray<readonly [string, string]>): string[] {
  const secrets = new Set<string>();
  for (const [name, value] of headers) {
    if (NON_SECRET_HEADERS.has(name.toLowerCase())) continue;
    for (const part of [value, ...value.split(/\s+/)]) {
      if (part.length >= MIN_SCRUB_LENGTH) secrets.add(part);
    }
  }
  return [...secrets].sort((a, b) => b.length - a.length);
}
