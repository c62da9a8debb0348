/**
 * Waits between calls to a control plane that is not answering: exponential
 * from 100 ms to 5 s with equal jitter, so a fleet of dispatchers does not
 * reconnect in lockstep after a control-plane restart.
 */

/** Exponential backoff with equal jitter; `reset()` after a success. */
export class Backoff {
  #failures = 0;

  constructor(
    private readonly initialMs = 100,
    private readonly maxMs = 5_000,
  ) {}

  /** The wait before the next try (and counts a failure). */
  next(): number {
    const ceiling = Math.min(this.initialMs * 2 ** this.#failures, this.maxMs);
    this.#failures++;
    return Math.round(ceiling / 2 + (Math.random() * ceiling) / 2);
  }

  /** Failures since the last reset. */
  get failures(): number {
    return this.#failures;
  }

  reset(): void {
    this.#failures = 0;
  }
}

/** Resolves after `ms`, or at once when `signal` aborts. Never rejects. */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal?.aborted) return resolve();
    const done = () => {
      clearTimeout(timer);
      signal?.removeEventListener("abort", done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    signal?.addEventListener("abort", done, { once: true });
  });
}

/** A level-less wake-up: `wait()` resolves at the next `notify()` (or when `signal` aborts). */
export class Wakeup {
  #waiters: Array<() => void> = [];

  notify(): void {
    const waiters = this.#waiters;
    this.#waiters = [];
    for (const w of waiters) w();
  }

  wait(signal?: AbortSignal, timeoutMs?: number): Promise<void> {
    return new Promise((resolve) => {
      if (signal?.aborted) return resolve();
      let timer: NodeJS.Timeout | undefined;
      const done = () => {
        clearTimeout(timer);
        signal?.removeEventListener("abort", done);
        const i = this.#waiters.indexOf(done);
        if (i >= 0) this.#waiters.splice(i, 1);
        resolve();
      };
      if (timeoutMs !== undefined) timer = setTimeout(done, Math.max(0, timeoutMs));
      signal?.addEventListener("abort", done, { once: true });
      this.#waiters.push(done);
    });
  }
}
