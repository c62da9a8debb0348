/**
 * Self-fencing arithmetic (DESIGN §3.3): when a running request must be given
 * up if its lease was not renewed, and how often to renew.
 *
 * The control plane's expiry of a lease is `T + ttl`, where T is the moment
 * its grant (or renewal) statement ran. We measure on our own monotonic clock:
 * - a renewal: T is after we sent the call (S), so `S + ttl` is never later
 *   than the real expiry. We fence at `S + ttl − margin`.
 * - a grant: a long poll may wait many seconds, so the send time says nothing;
 *   T is before we received the answer (R). `R + ttl` is later than the real
 *   expiry by R − T (the grant's commit, the answer's one-way trip, our event
 *   loop's lag), which the margin must cover. We fence at `R + ttl − margin`.
 * The margin also covers the time an abort needs to reach the upstream (a
 * socket close: well under a millisecond on loopback) and clock-rate drift.
 * Only durations cross the wire (the lease's `ttl`), so clock offsets between
 * hosts do not matter.
 */
import { SECOND } from "../domain/duration.js";

/** Smallest derived margin: covers a grant's commit + transit + GC pauses. */
export const MIN_FENCE_MARGIN_MS = 2 * SECOND;

/**
 * The safety margin for leases of `ttlMs`: `configured` when given, else
 * max(2 s, ttl/5); in both cases at most ttl/2, so that a lease always has
 * time to run (a margin ≥ ttl would fence every request at once).
 */
export function fenceMarginMs(ttlMs: number, configured?: number): number {
  const wanted = configured ?? Math.max(MIN_FENCE_MARGIN_MS, Math.floor(ttlMs / 5));
  return Math.max(0, Math.min(wanted, Math.floor(ttlMs / 2)));
}

/**
 * The renewal period for leases of `ttlMs`: `configured` when given, else
 * min(ttl/3, (ttl − margin)/2): a lease fenced at ttl − margin after its last
 * renewal gets two renewal calls before that. At least 50 ms.
 */
export function renewIntervalMs(ttlMs: number, marginMs: number, configured?: number): number {
  if (configured !== undefined) return configured;
  return Math.max(50, Math.floor(Math.min(ttlMs / 3, (ttlMs - marginMs) / 2)));
}

/** TTL assumed until the first claim tells us (only the renewal period depends on it). */
export const TTL_UNKNOWN_MS = 30 * SECOND;

/**
 * A dispatcher's fencing settings and the lease TTL the control plane uses,
 * learnt from the claims it hands out: the margin for any TTL, and the
 * renewal period for the TTL seen last.
 */
export class FencePolicy {
  #ttlMs = TTL_UNKNOWN_MS;

  constructor(
    /** `--fence-margin`; undefined: derived from the TTL. */
    private readonly configuredMarginMs?: number,
    /** `--renew-interval`; undefined: derived from the TTL. */
    private readonly configuredRenewMs?: number,
  ) {}

  /** The fence margin for a lease of `ttlMs` (a bound function: pass it as a callback). */
  readonly margin = (ttlMs: number): number => fenceMarginMs(ttlMs, this.configuredMarginMs);

  /** A claim came with `ttlMs` (0: unknown, ignored). */
  observeTtl(ttlMs: number): void {
    if (ttlMs > 0) this.#ttlMs = ttlMs;
  }

  /** The lease TTL seen last. */
  get ttlMs(): number {
    return this.#ttlMs;
  }

  /** How often to renew now. */
  renewIntervalMs(): number {
    return renewIntervalMs(this.#ttlMs, this.margin(this.#ttlMs), this.configuredRenewMs);
  }
}
