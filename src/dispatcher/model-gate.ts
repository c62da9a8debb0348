/**
 * Where a per-model pacer plugs in: the attempt runner (./attempt-runner.ts)
 * asks the model's gate before it starts each attempt, after the slot, fence
 * and 429-hold checks, and tells it how every admitted attempt ended. A rate
 * budget (requests or tokens per interval) or an adaptive concurrency limit
 * (a 429 lowers it, successes raise it) is a `ModelGate`; its state lives in
 * the gate object, one per model, kept on the model's `ModelSlots` entry for
 * as long as the dispatcher knows the model.
 *
 * The default gate, {@link ADMIT_ALL}, admits every attempt and keeps nothing:
 * with it the dispatcher starts exactly what its slots allow.
 *
 * Contract:
 * - `admit` is called on the hot path (once per attempt start, in the same
 *   tick as the previous attempt's end): no I/O, no allocation it can avoid.
 *   An attempt that `admit` answered 0 for starts at once and is counted by
 *   the gate as in flight until its `done`.
 * - A positive answer leaves the attempt buffered: the runner asks again after
 *   that many milliseconds, and whenever an attempt of the model ends (so
 *   `Infinity`, "not until something ends", is fine when one runs).
 * - `done` is called once per admitted attempt, after the attempt ended and
 *   before its report is queued, with how it ended (see {@link attemptVerdict}).
 */
import type { PacingView } from "../domain/capacity.js";
import type { AttemptOutcome } from "../domain/outcome.js";
import type { DispatchLease } from "./lease-client.js";

/** How an admitted attempt ended, as the gate hears it. */
export interface AttemptResult {
  outcome: AttemptOutcome;
  /** We aborted it ourselves (fenced, lost, shutdown): says nothing about the upstream. */
  aborted: boolean;
  /** From start to outcome, on the monotonic clock. */
  elapsedMs: number;
}

/** One model's pacer; see the file header. */
export interface ModelGate {
  /**
   * May `lease`'s attempt start now, with `running` attempts of the model
   * running (`now`: `performance.now()`)? 0: yes (it starts at once); > 0:
   * not before that many ms have passed (`Infinity`: until an attempt ends).
   */
  admit(lease: DispatchLease, running: number, now: number): number;
  /** An attempt that `admit` let start has ended. */
  done(lease: DispatchLease, result: AttemptResult): void;
  /**
   * Claims worth holding now: about what the gate would let start within a round trip and a
   * second (a rate share, a cut concurrency). The model's usable slots, and with them its
   * buffer and its slot demand, are kept to it, so a paced dispatcher does not sit on work
   * that another one could send. Infinity (or absent): no bound of the gate's.
   */
  useful?(now: number): number;
  /**
   * What the model's holder would send with `held` claims and no backlog (a starved model):
   * requests and tokens a minute, the Sync's `rate_want` / `token_want`. Undefined: as much
   * as it is given.
   */
  demand?(held: number): { rateWant: number; tokenWant: bigint } | undefined;
  /** How the model is paced now (for the control plane's views); undefined: nothing to say. */
  view?(now: number): PacingView | undefined;
}

/** What a gate may read of its model's grant, live (the model's ModelSlots). */
export interface GrantView {
  /** The slots held (and within the fair share target); 0 without a grant. */
  readonly granted: number;
  /** This dispatcher's share of the model's requests / tokens per minute; undefined: none. */
  readonly rpm: number | undefined;
  readonly tpm: number | undefined;
}

/** Makes the gate of a model the dispatcher meets for the first time. */
export type GateFactory = (model: string, grant: GrantView) => ModelGate;

/** The default: every attempt the slots allow starts; nothing is kept. */
export const ADMIT_ALL: ModelGate = Object.freeze({
  admit: () => 0,
  done: () => undefined,
});

/** The default factory: {@link ADMIT_ALL} for every model. */
export const admitAll: GateFactory = () => ADMIT_ALL;

/**
 * What an attempt's end says about the upstream's capacity:
 * - `success`: a 2xx;
 * - `throttled`: a 429, or a 503 that carried a Retry-After ("slow down";
 *   `outcome.retryAfterMs` and the `x-ratelimit-*` headers are in the outcome);
 * - `error`: any other failure (the upstream or the network);
 * - `aborted`: we gave the attempt up; not evidence either way.
 */
export function attemptVerdict(r: AttemptResult): "success" | "throttled" | "error" | "aborted" {
  if (r.aborted) return "aborted";
  const o = r.outcome;
  if (o.kind === "completion") return "success";
  if (o.statusCode === 429 || (o.statusCode === 503 && o.retryAfterMs !== undefined))
    return "throttled";
  return "error";
}
