/**
 * The one place domain errors become gRPC status codes. Handlers are
 * wrapped by `mapErrors`; nothing below the API throws ConnectError.
 */
import { Code, ConnectError } from "@connectrpc/connect";
import {
  AlreadyExistsError,
  FailedPreconditionError,
  InvalidArgumentError,
  NotFoundError,
  ResourceExhaustedError,
  UnavailableError,
} from "../domain/errors.js";

/**
 * Postgres SQLSTATEs that mean "try again": the database is not reachable
 * now, has no connection slot, or the transaction lost a serialization or
 * deadlock race (nothing was written).
 */
const UNAVAILABLE_SQLSTATES = new Set([
  "57P01",
  "57P02",
  "57P03",
  "08000",
  "08003",
  "08006",
  "53300",
  "40001",
  "40P01",
]);
/**
 * SQLSTATEs of client text Postgres cannot store (U+0000 in text or jsonb).
 * Handlers reject it first, naming the field; this is the net under them.
 */
const BAD_TEXT_SQLSTATES = new Set(["22021", "22P05"]);
/** SQLSTATE query_canceled: a statement ran past statement_timeout (FUSILLADE_DB_STATEMENT_TIMEOUT). */
const STATEMENT_TIMEOUT_SQLSTATE = "57014";
/** Node socket errors that mean the same. */
const UNAVAILABLE_ERRNOS = new Set(["ECONNREFUSED", "ECONNRESET", "EPIPE", "ETIMEDOUT"]);

/** Each domain error's gRPC code (checked in order; subclasses before their bases). */
const DOMAIN_ERROR_CODES: ReadonlyArray<readonly [abstract new (...args: never[]) => Error, Code]> =
  [
    [InvalidArgumentError, Code.InvalidArgument],
    [NotFoundError, Code.NotFound],
    [FailedPreconditionError, Code.FailedPrecondition],
    [AlreadyExistsError, Code.AlreadyExists],
    [ResourceExhaustedError, Code.ResourceExhausted],
    [UnavailableError, Code.Unavailable],
  ];

/** Maps any error thrown by a handler to a ConnectError, keeping the cause. */
export function toConnectError(e: unknown, log?: (err: unknown) => void): ConnectError {
  if (e instanceof ConnectError) return e;
  for (const [kind, code] of DOMAIN_ERROR_CODES) {
    if (e instanceof kind) return new ConnectError(e.message, code, undefined, undefined, e);
  }
  const code = (e as { code?: unknown } | null)?.code;
  if (typeof code === "string" && BAD_TEXT_SQLSTATES.has(code)) {
    return new ConnectError(
      "a text field holds a character that cannot be stored (U+0000)",
      Code.InvalidArgument,
      undefined,
      undefined,
      e,
    );
  }
  if (code === STATEMENT_TIMEOUT_SQLSTATE) {
    return new ConnectError(
      "a database statement ran past its time limit (FUSILLADE_DB_STATEMENT_TIMEOUT)",
      Code.DeadlineExceeded,
      undefined,
      undefined,
      e,
    );
  }
  if (
    typeof code === "string" &&
    (UNAVAILABLE_SQLSTATES.has(code) || UNAVAILABLE_ERRNOS.has(code))
  ) {
    return new ConnectError(
      "the database is unavailable; try again",
      Code.Unavailable,
      undefined,
      undefined,
      e,
    );
  }
  if (
    e instanceof Error &&
    /Connection terminated|timeout exceeded when trying to connect/.test(e.message)
  ) {
    return new ConnectError(
      "the database is unavailable; try again",
      Code.Unavailable,
      undefined,
      undefined,
      e,
    );
  }
  log?.(e);
  return new ConnectError("internal error", Code.Internal, undefined, undefined, e);
}
