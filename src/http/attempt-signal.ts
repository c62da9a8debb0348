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
 *   shared by every attempt); we remove our listener from it explicitly rather
 *   than rely on `any()`'s weak-ref cleanup, which leaked on some Node 20 releases.
 * - We need the cause (caller vs which deadline) without comparing reasons.
 * Timers are plain `setTimeout`: millisecond precision, unlike undici's own
 * headersTimeout/bodyTimeout (~1 s granularity, DESIGN §8), which we disable.
 *
 * One timer serves both deadlines (an attempt is on the dispatcher's hot
 * path): it is armed for the earlier one; when the first-byte deadline comes
 * after the headers did, it re-arms for what is left of the total.
 *
 * Modes: armed (no cause) → aborted (cause set, signal aborted, first source
 * wins) ; `dispose()` may be called in either and is idempotent.
 */

/** Which source aborted the attempt. */
export type AbortCause =
  | { kind: "caller"; reason: unknown }
  | { kind: "first_byte_timeout"; afterMs: number }
  | { kind: "total_timeout"; afterMs: number }
  /** We stopped reading on purpose (body too large, error body not worth draining). */
  | { kind: "discarded" };

/** The combined signal of one attempt; see the file header. */
export class AttemptSignal {
  readonly #controller = new AbortController();
  readonly #caller: AbortSignal | undefined;
  readonly #onCallerAbort: () => void;
  readonly #firstByteTimeoutMs: number;
  readonly #totalTimeoutMs: number;
  #timer: NodeJS.Timeout | undefined;
  #headers = false;
  #cause: AbortCause | undefined;

  constructor(caller: AbortSignal | undefined, firstByteTimeoutMs: number, totalTimeoutMs: number) {
    this.#caller = caller;
    this.#firstByteTimeoutMs = firstByteTimeoutMs;
    this.#totalTimeoutMs = totalTimeoutMs;
    this.#onCallerAbort = () => this.abort({ kind: "caller", reason: caller?.reason });
    if (caller?.aborted) {
      this.#onCallerAbort();
      return;
    }
    caller?.addEventListener("abort", this.#onCallerAbort, { once: true });
    this.#timer = setTimeout(
      this.#onDeadline,
      Math.min(firstByteTimeoutMs, totalTimeoutMs),
    ).unref();
  }

  /** The signal to hand to undici. */
  get signal(): AbortSignal {
    return this.#controller.signal;
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
    const reason = cause.kind === "caller" ? cause.reason : new Error(`attempt ${cause.kind}`);
    this.#controller.abort(reason);
  }

  /** Clears the timer and detaches from the caller's signal. Idempotent. */
  dispose(): void {
    clearTimeout(this.#timer);
    this.#timer = undefined;
    this.#caller?.removeEventListener("abort", this.#onCallerAbort);
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
