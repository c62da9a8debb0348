/**
 * The per-model gate a dispatcher asks before an attempt starts and tells
 * each attempt's outcome (docs/pacing.md). Times are milliseconds on a
 * monotonic clock (`performance.now()` in the dispatcher; injected in tests).
 */

/** Why a gate refused an attempt (shown in status and metrics). */
export type RefusalReason = "concurrency" | "requests" | "tokens" | "meter_empty";

/**
 * The gate's answer. Refused: try again at `retryAtMs`, or, for
 * `concurrency` (`retryAtMs` = Infinity), when a running attempt ends.
 */
export type Admission = { ok: true } | { ok: false; retryAtMs: number; reason: RefusalReason };

/** How an admitted attempt ended, as far as pacing cares. */
export interface AttemptEnd {
  nowMs: number;
  /** When the gate admitted it: outcomes of attempts sent before a cut do not cut again. */
  admittedAtMs: number;
  /** What `tryAdmit` was told. */
  estimatedTokens: number;
  /** HTTP status; 0 when no response came (network error, timeout, abort). */
  status: number;
  /** Response headers, names lowercased (the rate-limit ones are read). */
  headers: Readonly<Record<string, string>>;
  /** Parsed `Retry-After`, when the response had one. */
  retryAfterMs?: number | undefined;
  /** Tokens the response's `usage` says were used, when it said. */
  usedTokens?: number | undefined;
}

/** What the control plane lets this dispatcher use of the model now. */
export interface GateLimits {
  /** Slots held (the concurrency ceiling). */
  concurrency: number;
  /** Requests per minute of this dispatcher's rate grant; undefined: no rate set. */
  rpm?: number | undefined;
  /** Tokens per minute of its rate grant; undefined: no token rate set. */
  tpm?: number | undefined;
}

/** A model's pacer, as the dispatcher uses it. */
export interface PacingGate {
  /** Whether an attempt of about `estimatedTokens` tokens may start now; admitting counts it. */
  tryAdmit(nowMs: number, estimatedTokens: number): Admission;
  /** An admitted attempt ended (every admitted attempt must end exactly once). */
  onOutcome(end: AttemptEnd): void;
  /** A new grant (slots and rate shares). */
  setLimits(nowMs: number, limits: GateLimits): void;
}
