/**
 * Request and batch states, and the transitions between them. The same
 * table is enforced by CHECK constraints (migrations/) and drawn in
 * docs/state-machine.md.
 *
 * src/domain/ owns the pure core: states and transitions, templates, retry
 * policy, results, endpoint rules, errors. It imports nothing of ours and
 * does no I/O (docs/architecture.md, layers).
 */

export const REQUEST_STATES = [
  "pending",
  "leased",
  "completed",
  "failed",
  "canceled",
  "expired",
] as const;
export type RequestState = (typeof REQUEST_STATES)[number];

export const TERMINAL_REQUEST_STATES: ReadonlySet<RequestState> = new Set([
  "completed",
  "failed",
  "canceled",
  "expired",
]);

/** Allowed request transitions: from → the states it may move to. */
export const REQUEST_TRANSITIONS: Readonly<Record<RequestState, readonly RequestState[]>> = {
  // granted a lease; cancelled or expired with its batch
  pending: ["leased", "canceled", "expired"],
  // outcome reported, retriable failure or released (back to pending), reaped
  leased: ["completed", "failed", "pending", "canceled", "expired"],
  completed: [],
  // RetryBatch sends failed and expired requests back; with resume, canceled ones too
  failed: ["pending"],
  canceled: ["pending"],
  expired: ["pending"],
};

/** Whether a request may move from `from` to `to`. */
export function canTransition(from: RequestState, to: RequestState): boolean {
  return REQUEST_TRANSITIONS[from].includes(to);
}

export type BatchState = "in_progress" | "completed" | "cancelling" | "cancelled" | "expired";

/** The facts a batch's state is derived from. */
export interface BatchFacts {
  cancellingAt: Date | null;
  finishedAt: Date | null;
  expiresAt: Date;
  expiredCount: number;
}

/**
 * A batch's state, derived rather than stored: the requests trigger keeps
 * `finishedAt` (all requests terminal), CancelBatch sets `cancellingAt`.
 */
export function batchState(b: BatchFacts): BatchState {
  if (b.finishedAt === null) return b.cancellingAt === null ? "in_progress" : "cancelling";
  if (b.cancellingAt !== null) return "cancelled";
  if (b.expiredCount > 0 && b.expiresAt <= b.finishedAt) return "expired";
  return "completed";
}

/** Whether no request of the batch will change again (barring RetryBatch). */
export function isBatchTerminal(state: BatchState): boolean {
  return state === "completed" || state === "cancelled" || state === "expired";
}

/** The batch state in OpenAI Batch API terms. */
export function openAiStatus(state: BatchState): string {
  return state;
}
