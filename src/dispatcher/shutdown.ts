/**
 * A dispatcher's stop, in order: draining (nothing new starts, the sync loop
 * ends, buffered claims go back unsent; running requests get `graceMs` to
 * finish) → releasing (the rest are aborted and released; reports flushed for
 * up to `flushMs`; then the reporter stops and the slots are handed back) →
 * stopped (timers cleared, connections closed).
 *
 * The only holder of the stop switch: the parts see its signal.
 * Owns the count of requests aborted at shutdown.
 */
import { performance } from "node:perf_hooks";
import type { AttemptRunner } from "./attempt-runner.js";
import type { Shared } from "./parts.js";
import type { Reporter } from "./reporter.js";
import type { Settler } from "./settler.js";
import type { SyncLoop } from "./sync-loop.js";

/** What a stop acts on. */
export interface ShutdownParts {
  settler: Pick<Settler, "releaseUnsent">;
  sync: Pick<SyncLoop, "stop" | "release">;
  reporter: Pick<Reporter, "stop">;
  runner: Pick<AttemptRunner, "stop">;
  /** Closes the connections (the control plane's and the upstreams'). */
  close(): Promise<void>;
}

export class Shutdown {
  readonly counts = { shutdownAborts: 0 };
  #stopped: Promise<void> | undefined;

  constructor(
    private readonly stopping: AbortController,
    private readonly shared: Shared,
    private readonly parts: ShutdownParts,
    /** Most time to wait for reports once running requests ended or were aborted. */
    private readonly flushMs: number,
  ) {}

  /** Stops once; later calls get the same promise. */
  stop(graceMs: number): Promise<void> {
    this.#stopped ??= this.#run(graceMs);
    return this.#stopped;
  }

  async #run(graceMs: number): Promise<void> {
    const { book, table, log } = this.shared;
    const { settler, sync, reporter, runner } = this.parts;
    log.info({ graceMs, running: table.running().length }, "dispatcher stopping");
    this.stopping.abort();
    await sync.stop();
    for (const m of book.all()) {
      for (const e of m.queue.splice(0)) {
        table.giveUp(e, "shutdown", "dispatcher shutting down");
        void settler.releaseUnsent(e, "dispatcher shutting down");
      }
    }
    await this.#until(() => table.running().length === 0, graceMs);
    for (const e of table.running()) {
      if (table.giveUp(e, "shutdown", "dispatcher shutting down")) this.counts.shutdownAborts++;
    }
    await this.#until(() => table.size === 0, this.flushMs);
    if (table.size > 0) {
      log.warn(
        { unreported: table.size },
        "stopping with unreported outcomes; their claims will expire",
      );
    }
    reporter.stop();
    // Let settle() see its report dropped and let go of the claim.
    while (table.size > 0) await table.changed(undefined, 100);
    await sync.release();
    for (const m of book.all()) clearTimeout(m.fenceTimer);
    runner.stop();
    await this.parts.close();
  }

  /** Waits on the lease table until `done()` or `ms` have passed. */
  async #until(done: () => boolean, ms: number): Promise<void> {
    const end = performance.now() + ms;
    while (!done() && performance.now() < end) {
      await this.shared.table.changed(undefined, end - performance.now());
    }
  }
}
