/**
 * The dispatchers a control plane hears from: a dispatcher joins with its
 * first Sync or WaitForWork (logged), and has left when it made no call for
 * `goneAfterMs` (logged; a dispatcher waiting for work calls at least once
 * per long poll). `fusillade_dispatchers` counts those present. Each replica
 * knows the dispatchers that call it.
 */
import { performance } from "node:perf_hooks";
import type { Logger } from "../logger.js";

/** Most dispatcher names remembered (a misbehaving caller inventing names stays bounded). */
const MAX_KNOWN = 10_000;

export class Fleet {
  readonly #lastSeen = new Map<string, number>();
  readonly #timer: NodeJS.Timeout;

  constructor(
    private readonly log: Logger,
    private readonly goneAfterMs: number,
    sweepMs = Math.max(50, Math.min(goneAfterMs / 2, 5_000)),
  ) {
    this.#timer = setInterval(() => this.#sweep(), sweepMs);
    this.#timer.unref();
  }

  /** Dispatchers present now. */
  get size(): number {
    return this.#lastSeen.size;
  }

  /** `dispatcher` made a call now. */
  seen(dispatcher: string): void {
    if (!this.#lastSeen.has(dispatcher)) {
      if (this.#lastSeen.size >= MAX_KNOWN) return;
      this.log.info({ dispatcher }, "dispatcher joined");
    }
    this.#lastSeen.set(dispatcher, performance.now());
  }

  #sweep(): void {
    const now = performance.now();
    for (const [dispatcher, at] of this.#lastSeen) {
      if (now - at < this.goneAfterMs) continue;
      this.#lastSeen.delete(dispatcher);
      this.log.info(
        { dispatcher, silentMs: Math.round(now - at) },
        "dispatcher left (no call since)",
      );
    }
  }

  close(): void {
    clearInterval(this.#timer);
  }
}
