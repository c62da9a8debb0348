/**
 * The outbound HTTP layer: sends one attempt of one request and classifies
 * what happened into an {@link AttemptOutcome}. The only importer of undici.
 *
 * src/http/ owns outbound HTTP (undici is its alone). It may import
 * src/domain only.
 */

import dns from "node:dns";
import { STATUS_CODES } from "node:http";
import { isIP } from "node:net";
import { setImmediate as nextMacrotask } from "node:timers/promises";
import { Agent, type Dispatcher } from "undici";
import { MINUTE, SECOND } from "../domain/duration.js";
import { isLinkLocalAddress } from "../domain/endpoints.js";
import type { AttemptFailure, AttemptOutcome, FailureCode } from "../domain/outcome.js";
import {
  DEFAULT_RETRIABLE_STATUSES,
  isRetriableStatus,
  parseRetryAfter,
} from "../domain/retry-policy.js";
import { type AbortCause, AttemptSignal } from "./attempt-signal.js";
import {
  bodyScrubber,
  classifyError,
  describeError,
  headerScrubber,
  keepHeaders,
  parseTarget,
  type Target,
} from "./classify.js";
import { readBounded } from "./read-body.js";

const KIB = 1024;
const MIB = 1024 * KIB;

/**
 * How much of a non-2xx body we read before giving up on the connection. Error
 * bodies are small JSON; reading them to the end lets the socket be reused,
 * whereas tearing it down costs a new TCP (and TLS) handshake. Anything larger
 * is not worth downloading just to keep one connection.
 */
export const ERROR_BODY_DRAIN_BYTES = 64 * KIB;

/** Limits of one attempt and of the connection pool. */
export interface ExecutorOptions {
  /**
   * Time to establish the TCP (and TLS) connection.
   * @default 10_000
   */
  connectTimeoutMs: number;
  /**
   * Time from the start of the attempt to the response headers. Includes any
   * wait for a free pooled connection. LLM calls can take minutes.
   * @default 600_000
   */
  firstByteTimeoutMs: number;
  /**
   * Time for the whole attempt, body included.
   * @default 900_000
   */
  totalTimeoutMs: number;
  /**
   * Largest 2xx body accepted; past it the attempt fails `response_too_large`.
   * @default 33_554_432 (32 MiB)
   */
  maxResponseBytes: number;
  /**
   * Bytes of the response body kept on failures.
   * @default 4096
   */
  bodyExcerptBytes: number;
  /**
   * Statuses whose `http_error` is retriable.
   * @default DEFAULT_RETRIABLE_STATUSES (408, 429, 5xx)
   */
  retriableStatuses?: ReadonlySet<number>;
  /**
   * undici pool size per origin. Requests beyond it queue inside undici (and
   * that wait counts against `firstByteTimeoutMs`), so keep it at least the
   * dispatcher's concurrency towards any single origin.
   * @default 256
   */
  connectionsPerOrigin?: number;
  /**
   * Refuse to connect to link-local addresses (cloud metadata), checked after
   * DNS, unless the host is in `allowedHosts` (docs/trust.md).
   * @default false
   */
  denyLinkLocal?: boolean;
  /** Host names (or "*.suffix" patterns) exempt from `denyLinkLocal`. @default [] */
  allowedHosts?: readonly string[];
}

/** Resolved, validated, frozen options. */
export type ExecutorConfig = Readonly<Required<ExecutorOptions>>;

/** Defaults for every {@link ExecutorOptions} field. */
export const DEFAULT_EXECUTOR_OPTIONS: ExecutorConfig = Object.freeze({
  connectTimeoutMs: 10 * SECOND,
  firstByteTimeoutMs: 10 * MINUTE,
  totalTimeoutMs: 15 * MINUTE,
  maxResponseBytes: 32 * MIB,
  bodyExcerptBytes: 4 * KIB,
  retriableStatuses: DEFAULT_RETRIABLE_STATUSES,
  connectionsPerOrigin: 256,
  denyLinkLocal: false,
  allowedHosts: [],
});

const POSITIVE_INTEGER_FIELDS = [
  "connectTimeoutMs",
  "firstByteTimeoutMs",
  "totalTimeoutMs",
  "maxResponseBytes",
  "connectionsPerOrigin",
] as const;

/** options → defaults → validate → frozen config. Throws RangeError naming the field. */
export function resolveExecutorOptions(options: Partial<ExecutorOptions> = {}): ExecutorConfig {
  const defined = Object.fromEntries(Object.entries(options).filter(([, v]) => v !== undefined));
  const config: Required<ExecutorOptions> = { ...DEFAULT_EXECUTOR_OPTIONS, ...defined };
  for (const key of POSITIVE_INTEGER_FIELDS) {
    if (!Number.isSafeInteger(config[key]) || config[key] <= 0) {
      throw new RangeError(`executor option ${key} must be a positive integer, got ${config[key]}`);
    }
  }
  if (!Number.isSafeInteger(config.bodyExcerptBytes) || config.bodyExcerptBytes < 0) {
    throw new RangeError(
      `executor option bodyExcerptBytes must be a non-negative integer, got ${config.bodyExcerptBytes}`,
    );
  }
  return Object.freeze(config);
}

/** One attempt to send. Headers may carry `Authorization`: they never appear in outcomes. */
export interface OutboundRequest {
  method: string;
  /** Absolute http(s) URL. */
  url: string;
  headers: Array<[string, string]>;
  body: Uint8Array | string;
}

const EMPTY = new Uint8Array(0);

/**
 * An upstream that echoes our request headers (a debugging proxy, an echo
 * endpoint) would put the API key into a stored body, a result line and
 * every API response showing it: secrets of the request are replaced by
 * "[redacted]" in the body and the kept headers before anything leaves
 * the executor.
 */
function redactOutcome(
  o: AttemptOutcome,
  headers: ReadonlyArray<readonly [string, string]>,
  scrub: (s: string) => string,
): AttemptOutcome {
  const redact = bodyScrubber(headers);
  const kept = Object.fromEntries(Object.entries(o.headers).map(([k, v]) => [k, scrub(v)]));
  return o.kind === "completion"
    ? { ...o, headers: kept, body: redact(o.body) }
    : { ...o, headers: kept, bodyExcerpt: redact(o.bodyExcerpt) };
}

function hostAllowed(host: string, allowed: readonly string[]): boolean {
  const h = host.toLowerCase();
  return allowed.some((p) => (p.startsWith("*.") ? h.endsWith(p.slice(1)) : h === p));
}

function isDeniedLiteral(origin: string, allowed: readonly string[]): boolean {
  const host = new URL(origin).hostname.replace(/^\[|\]$/g, "");
  return isIP(host) !== 0 && isLinkLocalAddress(host) && !hostAllowed(host, allowed);
}

/**
 * A `lookup` for net.connect that refuses names resolving to a link-local
 * address (169.254.169.254 and friends), unless the name is allowed.
 */
export function guardedLookup(
  allowed: readonly string[],
  base: typeof dns.lookup = dns.lookup,
): typeof dns.lookup {
  return ((hostname: string, options: dns.LookupOptions, callback: (...a: unknown[]) => void) => {
    base(hostname, { ...options, all: true }, (err, addresses) => {
      if (err) return callback(err);
      const bad = hostAllowed(hostname, allowed)
        ? undefined
        : addresses.find((a) => isLinkLocalAddress(a.address));
      if (bad !== undefined) {
        const e = new Error(
          `${hostname} resolves to ${bad.address}, a link-local (cloud metadata) address: refused by the outbound allow-list`,
        ) as NodeJS.ErrnoException;
        e.code = "FUSILLADE_ENDPOINT_DENIED";
        return callback(e);
      }
      if (options.all) return callback(null, addresses);
      const first = addresses[0]!;
      return callback(null, first.address, first.family);
    });
  }) as typeof dns.lookup;
}

/**
 * Sends attempts over a keep-alive undici `Agent` (one pool per origin).
 *
 * Modes: open (execute sends) → closed (after `close()`: in-flight attempts
 * finish, new ones fail `network_error`). `execute` never throws for request
 * problems; every way an attempt can end is an {@link AttemptOutcome}.
 */
export class HttpExecutor {
  readonly config: ExecutorConfig;
  readonly #agent: Agent;

  constructor(options: Partial<ExecutorOptions> = {}) {
    this.config = resolveExecutorOptions(options);
    this.#agent = new Agent({
      connections: this.config.connectionsPerOrigin,
      connectTimeout: this.config.connectTimeoutMs,
      // Disabled: our own timers (AttemptSignal) enforce first-byte and total
      // deadlines with ms precision; undici's have ~1 s granularity (DESIGN §8).
      headersTimeout: 0,
      bodyTimeout: 0,
      ...(this.config.denyLinkLocal
        ? { connect: { lookup: guardedLookup(this.config.allowedHosts) } }
        : {}),
    });
  }

  /** Sends one attempt; resolves with its outcome. Aborting `signal` ends it as `aborted`. */
  async execute(req: OutboundRequest, signal?: AbortSignal): Promise<AttemptOutcome> {
    const target = parseTarget(req.method, req.url);
    if (target === undefined) {
      return failure("network_error", false, 0, "invalid request URL: not an absolute http(s) URL");
    }
    // An address literal is never looked up: check it here.
    if (this.config.denyLinkLocal && isDeniedLiteral(target.origin, this.config.allowedHosts)) {
      return failure(
        "network_error",
        false,
        0,
        `${target.label}: a link-local (cloud metadata) address is refused [FUSILLADE_ENDPOINT_DENIED]`,
      );
    }
    const scrub = headerScrubber(req.headers);
    const attempt = new AttemptSignal(
      signal,
      this.config.firstByteTimeoutMs,
      this.config.totalTimeoutMs,
    );
    try {
      if (attempt.cause !== undefined) {
        return fromAbort(attempt.cause, target, "before sending", scrub);
      }
      let res: Dispatcher.ResponseData;
      try {
        res = await this.#agent.request({
          origin: target.origin,
          path: target.path,
          method: req.method as Dispatcher.HttpMethod,
          headers: req.headers.flat(),
          body: isEmpty(req.body) ? undefined : req.body,
          signal: attempt.signal,
        });
      } catch (err) {
        return fromError(err, attempt.cause, target, "before response headers", scrub);
      }
      attempt.headersReceived();
      const headers = keepHeaders(res.headers);
      const outcome =
        res.statusCode >= 200 && res.statusCode < 300
          ? await this.#readCompletion(res, headers, attempt, target, scrub)
          : await this.#readHttpError(res, headers, attempt, target, scrub);
      // undici hands a kept-alive socket back to its pool one macrotask after
      // the response ends (setImmediate in client-h1's onMessageComplete), and
      // a request dispatched before that opens a new connection. Waiting one
      // macrotask here (< 1 ms) means that once execute() resolves, the next
      // attempt to this origin reuses the warm connection.
      if (attempt.cause === undefined) await nextMacrotask();
      return redactOutcome(outcome, req.headers, scrub);
    } finally {
      attempt.dispose();
    }
  }

  /** Waits for in-flight attempts (abort them first for a quick exit) and closes all pools. */
  async close(): Promise<void> {
    await this.#agent.close();
  }

  async #readCompletion(
    res: Dispatcher.ResponseData,
    headers: Record<string, string>,
    attempt: AttemptSignal,
    target: Target,
    scrub: (s: string) => string,
  ): Promise<AttemptOutcome> {
    const limit = this.config.maxResponseBytes;
    const declared = Number(headerValue(res.headers["content-length"]) ?? Number.NaN);
    if (declared > limit) {
      discard(res, attempt);
      return tooLarge(res.statusCode, headers, EMPTY, limit, target, `content-length ${declared}`);
    }
    const read = await readBounded(res.body, limit, limit);
    const excerpt = read.kept.subarray(0, this.config.bodyExcerptBytes);
    if (read.overflowed) {
      discard(res, attempt);
      return tooLarge(res.statusCode, headers, excerpt, limit, target, "body kept streaming");
    }
    if (read.error !== undefined) {
      const phase = `while reading the body of a ${res.statusCode} response`;
      const f = fromError(read.error, attempt.cause, target, phase, scrub);
      return { ...f, statusCode: res.statusCode, headers, bodyExcerpt: excerpt };
    }
    return { kind: "completion", statusCode: res.statusCode, headers, body: read.kept };
  }

  async #readHttpError(
    res: Dispatcher.ResponseData,
    headers: Record<string, string>,
    attempt: AttemptSignal,
    target: Target,
    scrub: (s: string) => string,
  ): Promise<AttemptOutcome> {
    const excerptBytes = this.config.bodyExcerptBytes;
    const read = await readBounded(
      res.body,
      excerptBytes,
      Math.max(excerptBytes, ERROR_BODY_DRAIN_BYTES),
    );
    if (read.overflowed) discard(res, attempt);
    const status = res.statusCode;
    if (attempt.cause?.kind === "caller") {
      const phase = `while reading the body of a ${status} response`;
      const f = fromAbort(attempt.cause, target, phase, scrub);
      return { ...f, statusCode: status, headers, bodyExcerpt: read.kept };
    }
    // A timeout or broken connection while reading an error body does not
    // change the verdict: the upstream already answered with this status.
    const incomplete = read.error !== undefined ? " (body incomplete)" : "";
    const f = failure(
      "http_error",
      isRetriableStatus(status, this.config.retriableStatuses),
      status,
      scrub(`${target.label} answered ${status} ${STATUS_CODES[status] ?? ""}`.trim() + incomplete),
      headers,
      read.kept,
    );
    const retryAfterMs = parseRetryAfter(headerValue(res.headers["retry-after"]), new Date());
    return retryAfterMs === undefined ? f : { ...f, retryAfterMs };
  }
}

function failure(
  code: FailureCode,
  retriable: boolean,
  statusCode: number,
  message: string,
  headers: Record<string, string> = {},
  bodyExcerpt: Uint8Array = EMPTY,
): AttemptFailure {
  return { kind: "failure", statusCode, code, message, retriable, bodyExcerpt, headers };
}

/** The failure for an attempt that one of its own abort sources ended. */
function fromAbort(
  cause: AbortCause,
  target: Target,
  phase: string,
  scrub: (s: string) => string,
): AttemptFailure {
  switch (cause.kind) {
    case "caller":
      return failure(
        "aborted",
        false,
        0,
        scrub(`${target.label} aborted by caller ${phase}: ${describeError(cause.reason)}`),
      );
    case "first_byte_timeout":
      return failure(
        "timeout",
        true,
        0,
        `${target.label}: no response headers within firstByteTimeoutMs (${cause.afterMs} ms)`,
      );
    case "total_timeout":
      return failure(
        "timeout",
        true,
        0,
        `${target.label}: attempt exceeded totalTimeoutMs (${cause.afterMs} ms) ${phase}`,
      );
    case "discarded":
      return failure("network_error", true, 0, `${target.label}: response discarded ${phase}`);
  }
}

/** The failure for a thrown/stream error: our own abort if one fired first, else by error code. */
function fromError(
  err: unknown,
  cause: AbortCause | undefined,
  target: Target,
  phase: string,
  scrub: (s: string) => string,
): AttemptFailure {
  if (cause !== undefined) return fromAbort(cause, target, phase, scrub);
  const { code, retriable, errorCode } = classifyError(err);
  const tag = errorCode !== undefined ? ` [${errorCode}]` : "";
  return failure(
    code,
    retriable,
    0,
    scrub(`${target.label}: ${describeError(err)}${tag} ${phase}`),
  );
}

function tooLarge(
  statusCode: number,
  headers: Record<string, string>,
  excerpt: Uint8Array,
  limit: number,
  target: Target,
  detail: string,
): AttemptFailure {
  const message =
    `${target.label}: response body exceeds maxResponseBytes ` +
    `(${limit} bytes = ${(limit / MIB).toFixed(limit % MIB === 0 ? 0 : 2)} MiB; ${detail})`;
  return failure("response_too_large", false, statusCode, message, headers, excerpt);
}

/** Stops reading a body we do not want and makes sure its connection is torn down. */
function discard(res: Dispatcher.ResponseData, attempt: AttemptSignal): void {
  attempt.abort({ kind: "discarded" });
  res.body.on("error", () => {});
  res.body.destroy();
}

function headerValue(v: string | string[] | undefined): string | undefined {
  return Array.isArray(v) ? v[0] : v;
}

function isEmpty(body: Uint8Array | string): boolean {
  return typeof body === "string" ? body.length === 0 : body.byteLength === 0;
}
