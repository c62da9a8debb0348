/**
 * A token bucket sized so that what it lets through keeps to a per-minute
 * rate in every one-minute window (docs/pacing.md, "Why a grant never
 * overshoots"). Holds `capacity` tokens (one second's worth of the rate, at
 * least 1) and refills `(rate − capacity)` per minute: in any window of W
 * seconds it admits at most `capacity + (rate − capacity)·W/60`, which is the
 * rate for W = 60 and about two seconds' worth for W = 1 (what a provider's
 * one-second meter accepts). The ~1/60 of the rate given up is the price of
 * an exact minute. Pure: "now" comes in as an argument (monotonic ms).
 */

/** A bucket's burst: this many seconds of its rate. */
const BURST_SECONDS = 1;

export class TokenBucket {
  #capacity = 1;
  #perMs = 0;
  #level: number;
  #at: number;

  /** A bucket for `perMinute` (≥ 1), full at `nowMs`. */
  constructor(perMinute: number, nowMs: number) {
    this.#at = nowMs;
    this.#size(perMinute);
    this.#level = this.#capacity;
  }

  /** Most tokens it holds (its burst). */
  get capacity(): number {
    return this.#capacity;
  }

  /** Tokens available at `nowMs` (negative while a large take's debt is paid). */
  level(nowMs: number): number {
    this.#refill(nowMs);
    return this.#level;
  }

  /**
   * Takes `n` tokens if it holds them, and answers 0; otherwise takes
   * nothing and answers the ms until it will (Infinity if never). A take
   * larger than the capacity goes when the bucket is full and leaves a debt,
   * so one large request is never refused for ever.
   */
  take(nowMs: number, n: number): number {
    this.#refill(nowMs);
    const need = Math.min(n, this.#capacity);
    if (this.#level >= need) {
      this.#level -= n;
      return 0;
    }
    if (this.#perMs <= 0) return Number.POSITIVE_INFINITY;
    return Math.max(1, Math.ceil((need - this.#level) / this.#perMs));
  }

  /**
   * Corrects an earlier take by `delta` tokens: positive gives back (an
   * over-estimate; never above the capacity), negative takes more (an
   * under-estimate found afterwards; the level may go below zero).
   */
  adjust(nowMs: number, delta: number): void {
    this.#refill(nowMs);
    this.#level = Math.min(this.#capacity, this.#level + delta);
  }

  /** A new rate from `nowMs`; the level is kept, cut to the new capacity. */
  setRate(perMinute: number, nowMs: number): void {
    this.#refill(nowMs);
    this.#size(perMinute);
    this.#level = Math.min(this.#level, this.#capacity);
  }

  #size(perMinute: number): void {
    const rate = Math.max(1, perMinute);
    this.#capacity = Math.max(1, (rate * BURST_SECONDS) / 60);
    // Below two per minute the capacity is all the rate: refill at the rate
    // itself (one more than the rate can then fall in a closed minute).
    this.#perMs = Math.max(rate - this.#capacity, Math.min(rate, 1)) / 60_000;
  }

  #refill(nowMs: number): void {
    if (nowMs > this.#at) {
      this.#level = Math.min(this.#capacity, this.#level + (nowMs - this.#at) * this.#perMs);
      this.#at = nowMs;
    }
  }
}
