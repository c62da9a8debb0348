/**
 * A dispatcher on its own thread (`serve` runs one this way): the control
 * plane and the dispatcher then have an event loop each, and a 2-core machine
 * uses both. The dispatcher still talks to the control plane over its port,
 * exactly as a separate process would; only `stats()` and `stop()` cross the
 * thread boundary, as messages.
 *
 * Measured (bench dispatch, 20,000 requests, 2 × 500 slots, 50 ms upstream,
 * everything in one process): see bench/RESULTS.md, 2026-12-01.
 */
import { Worker } from "node:worker_threads";
import type { DispatcherConfig } from "../config/dispatcher-config.js";
import type { Logger } from "../logger.js";
import { type Dispatcher, type DispatcherStats, zeroCounts } from "./dispatcher.js";

/** Messages from the dispatcher's thread. */
export type FromThread =
  | { type: "stats"; stats: DispatcherStats }
  | { type: "stopped"; stats: DispatcherStats }
  | { type: "error"; message: string };

/** Messages to it. */
export type ToThread = { type: "stop"; graceMs?: number };

/** How often the thread sends its counters (stats() answers the latest). */
export const STATS_INTERVAL_MS = 250;

const EMPTY_STATS: DispatcherStats = {
  held: 0,
  slots: {},
  running: 0,
  reportsPending: 0,
  reportsFailing: false,
  ...zeroCounts(),
};

/**
 * Starts a dispatcher with `config` on a worker thread. `onCrash` hears of a
 * thread that failed or exited before it was told to stop.
 */
export function startDispatcherThread(
  config: Readonly<DispatcherConfig>,
  log: Logger,
  onCrash: (e: Error) => void = () => undefined,
): Dispatcher {
  // From the TypeScript sources (tests run them through a loader the thread inherits) or from dist/.
  const ext = import.meta.url.endsWith(".ts") ? ".ts" : ".js";
  const worker = new Worker(new URL(`./thread-main${ext}`, import.meta.url), {
    workerData: {
      config: { ...config, models: [...config.models] },
      readableLogs: process.stderr.isTTY === true,
    },
  });
  let last = EMPTY_STATS;
  let resolveStopped: () => void = () => undefined;
  const stopped = new Promise<void>((resolve) => {
    resolveStopped = resolve;
  });
  worker.on("message", (m: FromThread) => {
    if (m.type === "error")
      log.error({ dispatcher: config.id, err: m.message }, "dispatcher thread failed");
    else last = m.stats;
    if (m.type === "stopped") resolveStopped();
  });
  worker.on("error", (e) =>
    log.error({ err: e, dispatcher: config.id }, "dispatcher thread crashed"),
  );
  worker.on("exit", () => resolveStopped());
  let stopping: Promise<void> | undefined;
  return {
    id: config.id,
    stats: () => last,
    stop(graceMs?: number) {
      stopping ??= (async () => {
        worker.postMessage({ type: "stop", graceMs } satisfies ToThread);
        await stopped;
        await worker.terminate();
      })();
      return stopping;
    },
  };
}
