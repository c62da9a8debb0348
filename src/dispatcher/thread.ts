/**
 * A dispatcher on its own thread (`serve` runs one this way): the control
 * plane and the dispatcher then have an event loop each, and a 2-core machine
 * uses both. Given a port of its control plane (`serve` gives one:
 * ControlPlane.internalDispatcherPort()), the dispatcher calls DispatchService
 * over it (./port-transport.ts); otherwise over HTTP/2, as a separate process
 * would. `stats()`, `metrics()` and `stop()` cross the thread boundary as
 * messages of their own.
 *
 * Measured (bench dispatch, 20,000 requests, 2 × 500 slots, 50 ms upstream,
 * everything in one process): see bench/RESULTS.md, 2026-12-01.
 */
import { type MessagePort, Worker } from "node:worker_threads";
import type { DispatcherConfig } from "../config/dispatcher-config.js";
import type { Logger } from "../logger.js";
import { type Dispatcher, type DispatcherStats, zeroCounts } from "./dispatcher.js";

/** Messages from the dispatcher's thread. */
export type FromThread =
  | { type: "stats"; stats: DispatcherStats }
  | { type: "stopped"; stats: DispatcherStats }
  | { type: "error"; message: string }
  | { type: "metrics"; id: number; text: string };

/** Messages to it. */
export type ToThread = { type: "stop"; graceMs?: number } | { type: "metrics"; id: number };

/** Longest wait for the thread's metrics; a busy or stopped thread adds nothing to a scrape. */
const METRICS_TIMEOUT_MS = 2000;

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

/** The thread's module: from the TypeScript sources (tests run them through a loader the thread inherits) or from dist/. */
function defaultEntry(): URL {
  const ext = import.meta.url.endsWith(".ts") ? ".ts" : ".js";
  return new URL(`./thread-main${ext}`, import.meta.url);
}

export interface ThreadOptions {
  /** Hears, once, of a thread that failed or exited before it was told to stop. @default ignored */
  onCrash?: (e: Error) => void;
  /** The thread's module. @default ./thread-main */
  entry?: URL;
  /**
   * A port of the control plane's DispatchService (transferred to the thread): calls go
   * over it instead of HTTP/2 to `config.controlPlaneUrl`. @default none
   */
  controlPlanePort?: MessagePort;
}

/** The data a dispatcher thread starts with. */
export interface ThreadData {
  config: DispatcherConfig;
  readableLogs: boolean;
  controlPlanePort: MessagePort | undefined;
}

/** Starts a dispatcher with `config` on a worker thread. */
export function startDispatcherThread(
  config: Readonly<DispatcherConfig>,
  log: Logger,
  opts: ThreadOptions = {},
): Dispatcher {
  const { onCrash = () => undefined, entry = defaultEntry(), controlPlanePort } = opts;
  const worker = new Worker(entry, {
    workerData: {
      config: { ...config, models: [...config.models] },
      readableLogs: process.stderr.isTTY === true,
      controlPlanePort,
    } satisfies ThreadData,
    transferList: controlPlanePort === undefined ? [] : [controlPlanePort],
  });
  let last = EMPTY_STATS;
  let resolveStopped: () => void = () => undefined;
  const stopped = new Promise<void>((resolve) => {
    resolveStopped = resolve;
  });
  let stopping: Promise<void> | undefined;
  let crashed = false;
  /** Tells `onCrash` once, unless the thread was told to stop. */
  const crash = (e: Error) => {
    if (stopping !== undefined || crashed) return;
    crashed = true;
    onCrash(e);
  };
  let nextMetricsId = 0;
  const metricsWaiters = new Map<number, (text: string) => void>();
  worker.on("message", (m: FromThread) => {
    if (m.type === "metrics") {
      metricsWaiters.get(m.id)?.(m.text);
      metricsWaiters.delete(m.id);
    } else if (m.type === "error")
      log.error({ dispatcher: config.id, err: m.message }, "dispatcher thread failed");
    else last = m.stats;
    if (m.type === "stopped") {
      resolveStopped();
      for (const w of metricsWaiters.values()) w("");
      metricsWaiters.clear();
    }
  });
  worker.on("error", (e) => {
    log.error({ err: e, dispatcher: config.id }, "dispatcher thread crashed");
    crash(e);
  });
  worker.on("exit", (code) => {
    resolveStopped();
    crash(new Error(`the dispatcher thread exited with code ${code}`));
  });
  return {
    id: config.id,
    stats: () => last,
    metrics() {
      if (stopping !== undefined || crashed) return Promise.resolve("");
      const id = nextMetricsId++;
      return new Promise<string>((resolve) => {
        const timer = setTimeout(() => {
          metricsWaiters.delete(id);
          resolve("");
        }, METRICS_TIMEOUT_MS);
        metricsWaiters.set(id, (text) => {
          clearTimeout(timer);
          resolve(text);
        });
        worker.postMessage({ type: "metrics", id } satisfies ToThread);
      });
    },
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
