/**
 * The result of one attempt at one request, as the HTTP layer reports it to
 * the dispatcher. Pure data: no classes, no undici types, safe to serialize.
 */

/**
 * Why an attempt failed.
 * - `http_error`: the upstream answered with a non-2xx status.
 * - `timeout`: no connection, no response headers or no complete body in time.
 * - `network_error`: the connection failed or broke (refused, reset, DNS…).
 * - `response_too_large`: a 2xx body exceeded the configured byte limit.
 * - `aborted`: the caller cancelled the attempt (lease lost, shutdown, cancel).
 * - `report_rejected`: the control plane rejected the attempt's report itself
 *   (e.g. too large to receive); the dispatcher reports this instead, once.
 */
export type FailureCode =
  | "http_error"
  | "timeout"
  | "network_error"
  | "response_too_large"
  | "aborted"
  | "report_rejected"
  /** Set by the control plane: the request's API key cannot be decrypted here. */
  | "secret_unavailable"
  /** Set by the control plane: a response whose text Postgres cannot store (a NUL byte). */
  | "response_unstorable";

/** A finished attempt: either a 2xx with its full body, or a classified failure. */
export type AttemptOutcome =
  | {
      kind: "completion";
      statusCode: number;
      /** Allowlisted response headers, names lowercased. */
      headers: Record<string, string>;
      body: Uint8Array;
    }
  | {
      kind: "failure";
      /** Upstream status; 0 when no response headers were received. */
      statusCode: number;
      code: FailureCode;
      /** Human-readable; never contains request headers (they carry API keys). */
      message: string;
      retriable: boolean;
      /** From the upstream's `Retry-After`, already parsed and capped. */
      retryAfterMs?: number;
      /** The first bytes of the response body (bounded); empty when there was none. */
      bodyExcerpt: Uint8Array;
      /** Allowlisted response headers, names lowercased. */
      headers: Record<string, string>;
    };

/** The failure arm of {@link AttemptOutcome}. */
export type AttemptFailure = Extract<AttemptOutcome, { kind: "failure" }>;

/** The completion arm of {@link AttemptOutcome}. */
export type AttemptCompletion = Extract<AttemptOutcome, { kind: "completion" }>;
