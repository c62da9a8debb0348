/**
 * One abort signal per attempt, fed by three sources: the caller's signal, the
 * first-byte deadline and the total deadline — and remembering which one fired.
 *
 * Why not `AbortSignal.any([caller, AbortSignal.timeout(a), AbortSignal.timeout(b)])`:
 * - `AbortSignal.timeout()` cannot be cleared. At 50,000 attempts with a 15-min
 *   total deadline, finished attempts would leave tens of thousands of pending
 *   timers behind; ours are cleared in {@link AttemptSignal.dispose}.
 * - The first-byte deadline must stop counting once headers arrive, which a
 *   timeout signal inside `any()` cannot do.
 * - The caller's signal is often long-lived (a dispatcher's shutdown signal
 *   shared by every attempt); an attempt leaves it explicitly when disposed
 *   rather than rely on `any()`'s weak-ref cleanup, which leaked on some Node 20
 *   releases.
 * - We need the cause (caller vs which deadline) without comparing reasons.
 * Timers are plain `setTimeout`: millisecond precision, unlike undici's own
 * headersTimeout/bodyTimeout (~1 s granularity, DESIGN §8), which we disable.
 *
 * No EventTarget per attempt: the signal handed to undici is an EventEmitter
 * with `aborted` and `reason` (undici takes either), and each caller's signal
 * gets one listener for all its live attempts, not one per attempt. An
 * AbortController, and adding and removing listeners on EventTargets, cost
 * ~11 µs an attempt with 1,000 in flight (microbenchmark; ~1 µs now).
 *
 * One timer serves both deadlines (an attempt is on the dispatcher's hot
 * path): it is armed for the earlier one; when the first-byte deadline comes
 * after the headers did, it re-arms for what is left of the total.
 *
 * Modes: armed (no cause) → aborted (cause set, signal aborted, first source
 * wins) ; `dispose()` may be called in either and is idempotent.
 */

import { EventEmitter } from "node:events";

/** Which source aborted the attempt. */
export type AbortCause =
  | { kind: "caller"; reason: unknown }
  | { kind: "first_byte_timeout"; afterMs: number }
  | { kind: "total_timeout"; afterMs: number }
  /** We stopped reading on purpose (body too large, error body not worth draining). */
  | { kind: "discarded" };

/** What undici is given as an attempt's signal: it listens for "abort" and reads `reason`. */
export class AttemptAbortSignal extends EventEmitter {
  aborted = false;
  reason: unknown = undefined;
}

/** The live attempts of each caller's signal, aborted together by its one listener. */
const attemptsOf = new WeakMap<AbortSignal, Set<AttemptSignal>>();

function follow(caller: AbortSignal, attempt: AttemptSignal): void {
  const live = attemptsOf.get(caller);
  if (live !== undefined) {
    live.add(attempt);
    return;
  }
  const set = new Set([attempt]);
  attemptsOf.set(caller, set);
  caller.addEventListener(
    "abort",
    () => {
      attemptsOf.delete(caller);
      for (const a of set) a.abort({ kind: "caller", reason: caller.reason });
    },
    { once: true },
  );
}

/** The combined signal of one attempt; see the file header. */
export class AttemptSignal {
  readonly #signal = new AttemptAbortSignal();
  readonly #caller: AbortSignal | undefined;
  readonly #firstByteTimeoutMs: number;
  readonly #totalTimeoutMs: number;
  #timer: NodeJS.Timeout | undefined;
  #headers = false;
  #cause: AbortCause | undefined;

  constructor(caller: AbortSignal | undefined, firstByteTimeoutMs: number, totalTimeoutMs: number) {
    this.#caller = caller;
    this.#firstByteTimeoutMs = firstByteTimeoutMs;
    this.#totalTimeoutMs = totalTimeoutMs;
    if (caller?.aborted) {
      this.abort({ kind: "caller", reason: caller.reason });
      return;
    }
    if (caller !== undefined) follow(caller, this);
    this.#timer = setTimeout(
      this.#onDeadline,
      Math.min(firstByteTimeoutMs, totalTimeoutMs),
    ).unref();
  }

  /** The signal to hand to undici. */
  get signal(): AttemptAbortSignal {
    return this.#signal;
  }

  /** Why the attempt was aborted, or undefined while it has not been. */
  get cause(): AbortCause | undefined {
    return this.#cause;
  }

  /** Response headers are in: the first-byte deadline no longer applies. */
  headersReceived(): void {
    this.#headers = true;
  }

  /** Aborts the attempt for `cause` unless it was already aborted (first cause wins). */
  abort(cause: AbortCause): void {
    if (this.#cause !== undefined) return;
    this.#cause = cause;
    this.dispose();
    const signal = this.#signal;
    signal.aborted = true;
    signal.reason = cause.kind === "caller" ? cause.reason : new Error(`attempt ${cause.kind}`);
    signal.emit("abort");
  }

  /** Clears the timer and detaches from the caller's signal. Idempotent. */
  dispose(): void {
    clearTimeout(this.#timer);
    this.#timer = undefined;
    if (this.#caller !== undefined) attemptsOf.get(this.#caller)?.delete(this);
  }

  /** The earlier deadline passed (or the first-byte one, after the headers: re-arm for the total). */
  readonly #onDeadline = (): void => {
    const firstByte = this.#firstByteTimeoutMs;
    const total = this.#totalTimeoutMs;
    if (!this.#headers && firstByte <= total) {
      this.abort({ kind: "first_byte_timeout", afterMs: firstByte });
    } else if (total <= firstByte) {
      this.abort({ kind: "total_timeout", afterMs: total });
    } else {
      this.#timer = setTimeout(() => {
        this.abort({ kind: "total_timeout", afterMs: total });
      }, total - firstByte).unref();
    }
  };
}
